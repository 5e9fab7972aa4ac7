"""The event log (hoopy/audit/eventlog.py): an events-only batch is durable once its record is in
the log, before SQLite has it. What must hold, attacked: every acknowledged event survives a kill
and is put into the file at the next start (saying so); a reader sees what the log holds past the
file, however the writer moves on while it reads; a torn, stale or foreign log is never taken for
events; a log that cannot be written refuses the operation and leaves the chain unbroken; a second
gateway on the file is refused."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer

from hoopy.audit import eventlog
from hoopy.audit.chain import GENESIS, verify_rows
from hoopy.audit.events import Event
from hoopy.audit.eventlog import BLOCK, EventLogError, buffer_reader, decode_run, encode, log_path
from hoopy.audit.store import SQLiteEventStore, SQLiteReader, StoreError


def ev(i: int, kind: str = "operation") -> Event:
    return Event(kind, "allowed", session="s1", identity="agent", connection="db", protocol="postgres",
                 peer="127.0.0.1:1", data={"text": f"SELECT {i}", "pad": "x" * (i % 7)})


def file_rows(path) -> list[dict]:
    """The events table of the file itself (not what a reader adds from the log)."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM events ORDER BY seq")]
    finally:
        db.close()


async def started_and_stopped(path) -> list[dict]:
    """A store started on ``path`` (which recovers what its log holds) and stopped cleanly: the
    file's events then."""
    s = SQLiteEventStore(path, "gw")
    s.start()
    await s.stop()
    return file_rows(path)


def reader_rows(path) -> list[dict]:
    r = SQLiteReader(path)
    try:
        return [dict(x) for x in r.db.execute("SELECT * FROM events ORDER BY seq")]
    finally:
        r.close()


def chain(n: int, start: int = 1, prev: str = GENESIS, signed=()) -> list[list]:
    """n linked rows in EVENT_COLUMNS order, as write_batch makes them."""
    from hoopy.audit.chain import link_v2

    out = []
    for seq in range(start, start + n):
        row = [seq, 1000 + seq, "gw", "s", "agent", "db", "postgres", "p", "op", "ok", '{"i":%d}' % seq, "{}"]
        h = link_v2(prev, row)
        row += [prev, h]
        if seq in signed:
            row.append("sig")
        out.append(row)
        prev = h
    return out


def image(*batches, size=1 << 20) -> bytearray:
    """A log file's bytes with these batches written one after another from the first record."""
    buf = bytearray(size)
    buf[:len(eventlog.MAGIC)] = eventlog.MAGIC
    off = BLOCK
    for b in batches:
        rec = encode(b)
        buf[off:off + len(rec)] = rec
        off += len(rec)
    return buf


# --- the format, in memory ----------------------------------------------------------------------

def test_records_start_on_a_block_and_read_back():
    rows = chain(10, signed={4, 10})
    buf = image(rows[:4], rows[4:5], rows[5:])
    assert decode_run(buffer_reader(bytes(buf))) == rows
    assert decode_run(buffer_reader(bytes(buf)), (0, GENESIS)) == rows
    assert decode_run(buffer_reader(bytes(buf)), (4, rows[3][13])) == rows[4:]
    assert decode_run(buffer_reader(bytes(buf)), (10, rows[9][13])) == []
    assert all(len(encode(b)) % BLOCK == 0 for b in (rows[:1], rows))


def test_a_torn_record_ends_the_run_there():
    rows = chain(9)
    buf = image(rows[:3], rows[3:6], rows[6:])
    second = BLOCK + len(encode(rows[:3]))
    for where in (second + 2, second + 5, second + 12, second + 40):  # magic, length, crc, payload
        torn = bytearray(buf)
        torn[where] ^= 0xFF
        assert decode_run(buffer_reader(bytes(torn))) == rows[:3]
    # A record cut short (its length points past what was written): not taken either.
    cut = bytearray(buf)
    cut[second + 12 + 20:] = bytes(len(cut) - second - 32)
    assert decode_run(buffer_reader(bytes(cut))) == rows[:3]


def test_what_an_earlier_pass_left_behind_ends_the_run():
    old = chain(50)
    buf = image(old[:20], old[20:40], old[40:])  # pass 1: events 1-50
    new = chain(2, start=51, prev=old[-1][13])  # indexed to 50; the log started over
    rec = encode(new)
    buf[BLOCK:BLOCK + len(rec)] = rec  # pass 2 writes over the first record only
    assert decode_run(buffer_reader(bytes(buf)), (50, old[-1][13])) == new
    # Started over and killed before anything was written again: the old pass is no tail.
    assert decode_run(buffer_reader(bytes(image(old[:20], old[20:]))), (50, old[-1][13])) == []


def test_a_log_that_does_not_continue_the_store_is_refused():
    rows = chain(5)
    buf = bytes(image(rows))
    with pytest.raises(EventLogError, match="does not follow"):
        decode_run(buffer_reader(buf), (2, "f" * 64))  # another store's event 2
    later = chain(3, start=10, prev="a" * 64)
    with pytest.raises(EventLogError, match="missing"):
        decode_run(buffer_reader(bytes(image(later))), (5, rows[-1][13]))  # events 6-9 lost


def test_a_record_whose_rows_do_not_link_is_not_taken():
    rows = chain(6)
    forged = [list(r) for r in rows[3:]]
    forged[0][12] = "0" * 64  # its prev broken
    assert decode_run(buffer_reader(bytes(image(rows[:3], forged)))) == rows[:3]
    skipped = chain(3, start=5, prev=rows[3][13])  # seq jumps over 4 with a linked hash
    assert decode_run(buffer_reader(bytes(image(rows[:3], skipped)))) == rows[:3]


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=12), index_at=st.integers(0, 12),
       cut=st.integers(0, 64), flip=st.integers(0, 1 << 16))
def test_the_run_is_every_whole_record_and_nothing_else(sizes, index_at, cut, flip):
    """However the batches fall, wherever the index stands and however the last record is torn,
    the reader gets exactly the rows past the index of the records written whole."""
    rows = chain(sum(sizes), signed={3, 17, 40})
    batches, i = [], 0
    for n in sizes:
        batches.append(rows[i:i + n])
        i += n
    buf = image(*batches, size=2 << 20)
    last = BLOCK + sum(len(encode(b)) for b in batches[:-1])
    whole = rows[:len(rows) - len(batches[-1])]
    if cut:  # the last record torn somewhere in its header or payload (not in its padding)
        used = 12 + int.from_bytes(encode(batches[-1])[4:8], "little")
        pos = last + (flip % min(cut * 16, used))
        buf[pos] ^= 0x5A
    else:
        whole = rows
    k = min(index_at, len(whole))
    after = (k, whole[k - 1][13]) if k else (0, GENESIS)
    assert decode_run(buffer_reader(bytes(buf)), after) == whole[k:]


# --- a store's log ----------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    s = SQLiteEventStore(tmp_path / "state" / "hoopy.db", "gw-test")
    s.index_delay = 3600  # (nothing indexed unless a test makes it)
    s.start()
    yield s
    if s._stopped is None:
        pytest_twisted.blockon(s.stop())


@pytest_twisted.ensureDeferred
async def test_acknowledged_events_are_in_the_log_and_a_reader_sees_them(store):
    stored = [await store.append(ev(i)) for i in range(5)]
    assert [s.seq for s in stored] == [1, 2, 3, 4, 5]
    assert file_rows(store.path) == []  # not indexed yet: durable in the log alone
    seen = reader_rows(store.path)
    assert [r["seq"] for r in seen] == [1, 2, 3, 4, 5]
    assert verify_rows(seen)[0] == 5
    # The reader's queries see them too (the view is what every query reads).
    r = SQLiteReader(store.path)
    try:
        assert [e["seq"] for e in r.events(session="s1")] == [1, 2, 3, 4, 5]
    finally:
        r.close()


@pytest_twisted.ensureDeferred
async def test_a_session_row_puts_what_the_log_holds_into_the_file_first(store):
    for i in range(3):
        await store.append(ev(i))
    await store.append(Event("session.start", "ok", session="s9", data={}),
                       session={"id": "s9", "identity": "agent", "started_us": 1})
    rows = file_rows(store.path)
    assert [r["seq"] for r in rows] == [1, 2, 3, 4] and rows[-1]["kind"] == "session.start"
    assert verify_rows(rows)[0] == 4
    await store.append(ev(9))  # and the log goes on from there
    assert [r["seq"] for r in reader_rows(store.path)] == [1, 2, 3, 4, 5]


@pytest_twisted.ensureDeferred
async def test_a_clean_stop_leaves_everything_in_the_file_and_no_tail(store):
    for i in range(7):
        await store.append(ev(i))
    store.append_trailing(ev(99, "operation.result"))
    await store.stop()
    rows = file_rows(store.path)
    assert [r["seq"] for r in rows] == list(range(1, 9)) and verify_rows(rows)[0] == 8
    with open(log_path(store.path), "rb") as f:
        assert decode_run(buffer_reader(f.read())) == []  # nothing a next start would take again


@pytest_twisted.ensureDeferred
async def test_the_log_starting_over_many_times_keeps_one_chain(tmp_path):
    """A small log and a low index threshold: indexed, started over and overwritten hundreds of
    times, with batches too large for it going to SQLite directly, signed rows among them."""
    from hoopy.audit.signing import Signer

    s = SQLiteEventStore(tmp_path / "hoopy.db", "gw")
    s.index_rows = 7
    s.signer = Signer.generate()
    s.start()
    s._log.size = 6 * BLOCK  # (a record of more than five blocks never fits: SQLite directly)
    try:
        ds, got = [], []
        for i in range(600):
            ds.append(s.append(ev(i)).addCallback(got.append))
            if i % 50 == 0:
                ds.append(s.append(Event("operation", "allowed", data={"big": "y" * 30_000})).addCallback(got.append))
            if i % 3 == 0:
                await ds[-1]
        await defer.gatherResults(ds)
        stored = got
        assert len({x.seq for x in stored}) == len(ds)
        mid = reader_rows(s.path)
        assert verify_rows(mid)[0] == len(mid) and {x.seq for x in stored} <= {r["seq"] for r in mid}
    finally:
        await s.stop()
    rows = file_rows(s.path)  # (with the signer's heartbeat and key events among them)
    assert verify_rows(rows)[0] == len(rows) >= len(ds)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert sum(r["signature"] is not None for r in rows) >= 1


def _child_store(path: str, n: int, then: int = 0) -> subprocess.Popen:
    """A process that appends n events, awaits each, prints 'acked', and waits to be killed; with
    ``then``, a session row after the n (which puts them into the file) and ``then`` events more."""
    code = f"""
import sys
from twisted.internet import reactor, defer
from hoopy.audit.store import SQLiteEventStore
from hoopy.audit.events import Event
s = SQLiteEventStore({path!r}, "gw-child")
s.index_delay = 3600
s.start()
@defer.inlineCallbacks
def go():
    for i in range({n}):
        yield s.append(Event("operation", "allowed", session="s1", data={{"i": i}}))
    if {then}:
        yield s.append(Event("session.start", "ok", session="s2", data={{}}), session={{"id": "s2"}})
        for i in range({then}):
            yield s.append(Event("operation", "allowed", session="s2", data={{"i": i}}))
    print("acked", flush=True)
reactor.callWhenRunning(go)
reactor.run()
"""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.stdout.readline().strip() == "acked"
    return p


@pytest_twisted.ensureDeferred
async def test_a_killed_writer_loses_nothing_and_the_next_start_says_so(tmp_path):
    path = str(tmp_path / "hoopy.db")
    p = _child_store(path, 40)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert file_rows(path) == []  # every acknowledged event is in the log alone
    assert [r["seq"] for r in reader_rows(path)] == list(range(1, 41))  # a reader sees them meanwhile
    s = SQLiteEventStore(path, "gw-next")
    s.start()
    try:
        rows = file_rows(path)
        assert [r["seq"] for r in rows] == list(range(1, 42))
        note = rows[-1]
        assert note["kind"] == "audit.store.recovered"
        import json

        assert json.loads(note["data"]) == {"events": 40, "first": 1, "last": 40, "from": log_path(path)}
        assert verify_rows(rows)[0] == 41
        assert (await s.append(ev(1))).seq == 42
    finally:
        await s.stop()
    s2 = SQLiteEventStore(path, "gw-again")  # recovered once: not again
    s2.start()
    await s2.stop()
    assert [r["kind"] for r in file_rows(path)].count("audit.store.recovered") == 1


@pytest_twisted.ensureDeferred
async def test_a_log_left_by_a_crash_is_not_dropped_when_the_file_is_moved_away(tmp_path):
    """Moving the state file without its log after a crash would lose the log's events (or chain
    them onto another store): the start is refused, saying what to do."""
    path = str(tmp_path / "hoopy.db")
    p = _child_store(path, 5, then=4)  # events 1-6 in the file, 7-10 in the log alone
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert [r["seq"] for r in file_rows(path)] == list(range(1, 7))
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.rename(path + suffix, str(tmp_path / "moved.db") + suffix)
    s = SQLiteEventStore(path, "gw")
    with pytest.raises(StoreError, match="move both together"):
        s.start()
    # Nothing was taken: put back together, the next start recovers the log's events into the file.
    os.unlink(path)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(str(tmp_path / "moved.db") + suffix):
            os.rename(str(tmp_path / "moved.db") + suffix, path + suffix)
    rows = await started_and_stopped(path)
    assert [r["seq"] for r in rows] == list(range(1, 12)) and rows[-1]["kind"] == "audit.store.recovered"


@pytest_twisted.ensureDeferred
async def test_a_log_that_cannot_be_written_refuses_and_the_chain_goes_on(store, monkeypatch):
    await store.append(ev(0))
    real = os.pwrite

    def full(fd, data, offset):
        if fd == store._log.fd:
            raise OSError(28, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(eventlog.os, "pwrite", full)
    with pytest.raises(StoreError, match="No space left"):
        await store.append(ev(1))
    assert not store.healthy
    monkeypatch.setattr(eventlog.os, "pwrite", real)
    assert (await store.append(ev(2))).seq == 2  # the refused one took no seq
    assert store.healthy
    rows = reader_rows(store.path)
    assert [r["seq"] for r in rows] == [1, 2] and verify_rows(rows)[0] == 2
    assert '"SELECT 1"' not in "".join(r["data"] for r in rows)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("how", ["delete", "replace"])
async def test_a_log_moved_under_the_store_refuses_from_then_on(store, how):
    first = await store.append(ev(0))
    lp = store._log.path
    if how == "delete":
        os.unlink(lp)
    else:
        os.rename(lp, lp + ".old")
        with open(lp, "wb") as f:
            f.write(b"\0" * BLOCK)
    with pytest.raises(StoreError, match="event log"):
        await store.append(ev(1))
    with pytest.raises(StoreError, match="restart the gateway"):
        await store.append(ev(2))
    # What was acknowledged before, and the refused one, are in the file (nothing left to the log),
    # with the event that says the last seq was refused to its caller.
    rows = file_rows(store.path)
    assert rows[0]["seq"] == first.seq
    assert rows[-1]["kind"] == "audit.store.moved" and '"refused":[2]' in rows[-1]["data"]
    assert verify_rows(rows)[0] == len(rows)


@pytest_twisted.ensureDeferred
async def test_readers_always_see_a_whole_chain_while_the_log_starts_over(tmp_path):
    """The attack on the reader: the writer indexes and starts the log over every few batches while
    readers open; each must see every event acknowledged before it opened, linked, no gap."""
    s = SQLiteEventStore(tmp_path / "hoopy.db", "gw")
    s.index_rows = 3
    s.start()
    acked = [0]
    stop = threading.Event()
    problems: list = []

    def read():
        while not stop.is_set():
            floor = acked[0]
            try:
                rows = reader_rows(s.path)
            except StoreError as e:
                problems.append(str(e))
                continue
            seqs = [r["seq"] for r in rows]
            if seqs != list(range(1, len(seqs) + 1)) or len(seqs) < floor:
                problems.append((floor, seqs[-5:]))
            if rows and verify_rows(rows)[0] != len(rows):
                problems.append("chain")

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for i in range(1500):
            acked[0] = (await s.append(ev(i))).seq
    finally:
        stop.set()
        for t in readers:
            t.join()
        await s.stop()
    assert problems == []


@pytest_twisted.ensureDeferred
async def test_a_second_gateway_on_the_file_is_refused_and_the_first_goes_on(store):
    other = SQLiteEventStore(store.path, "gw-2")
    with pytest.raises(StoreError, match="in use by another gateway"):
        other.start()
    assert (await store.append(ev(1))).seq == 1


@pytest_twisted.ensureDeferred
async def test_an_old_log_file_of_another_size_or_none_is_made_right(tmp_path):
    path = tmp_path / "hoopy.db"
    with open(str(path) + "-eventlog", "wb") as f:
        f.write(b"not a log")  # (a stray file: no header, no records)
    s = SQLiteEventStore(path, "gw")
    s.start()
    try:
        assert (await s.append(ev(0))).seq == 1
        assert os.path.getsize(str(path) + "-eventlog") == eventlog.SIZE
    finally:
        await s.stop()
    assert [r["seq"] for r in file_rows(path)] == [1]


@pytest_twisted.ensureDeferred
async def test_without_the_log_every_batch_is_a_commit(tmp_path):
    s = SQLiteEventStore(tmp_path / "hoopy.db", "gw")
    s.event_log = False
    s.start()
    try:
        assert s._log is None and not os.path.exists(str(tmp_path / "hoopy.db") + "-eventlog")
        await s.append(ev(0))
        assert [r["seq"] for r in file_rows(s.path)] == [1]
    finally:
        await s.stop()


def test_a_reader_reads_a_full_run_quickly(tmp_path):
    """The most a reader meets: the log started over at the last index, then one event a record up
    to the index threshold; and behind it the rest of an earlier pass, which ends the run at once."""
    records = eventlog.SIZE // BLOCK - 1  # (the log full of one-event records: it is indexed then)
    old = chain(records)
    rows = chain(min(SQLiteEventStore.index_rows, records - 1), start=records + 1, prev=old[-1][13])
    buf = image(*[[r] for r in old], size=eventlog.SIZE)
    new = image(*[[r] for r in rows], size=eventlog.SIZE)
    end = BLOCK + sum(len(encode([r])) for r in rows)
    buf[:end] = new[:end]
    p = tmp_path / "x-eventlog"
    p.write_bytes(bytes(buf))
    t = time.monotonic()
    assert eventlog.read_tail(str(p), (records, old[-1][13])) == rows
    assert time.monotonic() - t < 1.0


# --- what is at the log's name: its mode, a link, a FIFO, a folder ----------------------------------

@pytest_twisted.ensureDeferred
async def test_the_log_has_the_files_permissions_so_whoever_reads_the_file_reads_it(tmp_path):
    """SQLite gives its -wal the file's permissions, so that whoever may read the file reads every
    event (an auditor's account, a console run as another user). The log holds the file's last
    events: it must be as readable as the file, or such a reader fails (or misses them)."""
    path = tmp_path / "hoopy.db"
    s = SQLiteEventStore(path, "gw")
    s.start()
    await s.stop()
    os.chmod(path, 0o640)
    s = SQLiteEventStore(path, "gw")
    s.start()
    try:
        await s.append(ev(0))
        st_db, st_log = os.stat(path), os.stat(log_path(str(path)))
        assert st_log.st_mode & 0o777 == 0o640
        assert (st_log.st_uid, st_log.st_gid) == (st_db.st_uid, st_db.st_gid)
    finally:
        await s.stop()


def test_a_reader_that_may_not_read_the_log_is_told_so(tmp_path, monkeypatch):
    """Never a traceback, never the file's events without the log's: a StoreError that says why."""
    path = str(tmp_path / "hoopy.db")
    sqlite3.connect(path).executescript("CREATE TABLE events (seq INTEGER PRIMARY KEY, hash TEXT)")
    with open(log_path(path), "wb") as f:
        f.write(bytes(image(chain(2))))
    real = os.open

    def refused(p, *a, **k):
        if str(p).endswith("-eventlog"):
            raise PermissionError(13, "Permission denied", p)
        return real(p, *a, **k)

    monkeypatch.setattr(eventlog.os, "open", refused)
    with pytest.raises(StoreError, match="event log .* cannot be read"):
        SQLiteReader(path)


@pytest.mark.parametrize("what", ["symlink", "fifo", "directory"])
def test_what_is_not_a_log_file_at_its_name_stops_the_start_and_is_left_alone(tmp_path, what):
    """A symbolic link at the log's name (the name is the file's, links resolved: a link there is
    never the log) is not followed: the start would otherwise overwrite whatever it points to with
    1 MiB of log. A FIFO or a folder: refused with a message, never a hang."""
    path = tmp_path / "hoopy.db"
    victim = tmp_path / "hoopy.toml"
    victim.write_text("important\n")
    lp = log_path(str(path))
    if what == "symlink":
        os.symlink(victim, lp)
    elif what == "fifo":
        os.mkfifo(lp)
    else:
        os.mkdir(lp)
    s = SQLiteEventStore(path, "gw")
    with pytest.raises(StoreError, match="event log"):
        s.start()
    assert victim.read_text() == "important\n"
    assert s._log is None and s._db is None


@pytest.mark.parametrize("what", ["symlink", "fifo", "directory"])
def test_a_reader_is_not_held_or_misled_by_what_is_not_a_log_file(tmp_path, what):
    path = str(tmp_path / "hoopy.db")
    sqlite3.connect(path).executescript("CREATE TABLE events (seq INTEGER PRIMARY KEY, hash TEXT)")
    lp = log_path(path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(bytes(image(chain(2))))
    if what == "symlink":
        os.symlink(elsewhere, lp)
    elif what == "fifo":
        os.mkfifo(lp)
    else:
        os.mkdir(lp)
    got: list = []

    def read():
        try:
            got.append(SQLiteReader(path))
        except StoreError as e:
            got.append(e)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "the reader hangs on the log's name"
    assert len(got) == 1 and isinstance(got[0], StoreError) and "not a regular file" in str(got[0])


@pytest_twisted.ensureDeferred
async def test_a_lock_on_the_file_does_not_hold_operations_while_the_log_has_room(tmp_path):
    """docs/operators.md: a lock on the SQLite file held by another process (a sqlite3 shell in a
    write transaction) no longer stops operations: their events are durable in the log. The index
    tried meanwhile (every index_delay) must not wait the busy timeout in the writer thread, ahead
    of every operation behind it."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    s = SQLiteEventStore(tmp_path / "hoopy.db", "gw", busy_timeout=5.0)
    s.start()
    try:
        await s.append(ev(0))
        lock = sqlite3.connect(s.path, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        worst, t0, n = 0.0, time.monotonic(), 0
        try:
            while time.monotonic() - t0 < 1.5:
                t = time.monotonic()
                await s.append(ev(n))
                worst = max(worst, time.monotonic() - t)
                n += 1
                await deferLater(reactor, 0.02, lambda: None)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert worst < 1.0, f"an operation waited {worst:.1f} s behind the index"
        assert (await s.append(ev(99))).seq == n + 2
    finally:
        await s.stop()
    rows = file_rows(s.path)
    assert [r["seq"] for r in rows] == list(range(1, n + 3)) and verify_rows(rows)[0] == n + 2


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("where", ["before the commit", "after the commit"])
async def test_a_kill_during_recovery_recovers_once(tmp_path, where):
    """Killed while recovering (before its COMMIT, or after it and before the log is emptied): the
    next start takes the log's events once, with one audit.store.recovered event, chain whole."""
    import json

    path = str(tmp_path / "hoopy.db")
    p = _child_store(path, 30)
    p.send_signal(signal.SIGKILL)
    p.wait()
    if where == "before the commit":  # (the recovery's rows inserted, then a SIGKILL of itself)
        hook = ("import os, signal\nfrom hoopy.audit import store as m\nreal = m.write_batch\n"
                "def wb(*a, **k):\n    real(*a, **k)\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                "m.write_batch = wb\n")
    else:  # (committed, then killed before the log is emptied)
        hook = ("import os, signal\nfrom hoopy.audit import store as m\n"
                "m.EventLog.clear = lambda self: os.kill(os.getpid(), signal.SIGKILL)\n")
    code = hook + f"s = m.SQLiteEventStore({path!r}, 'gw-dies')\ns.start()\nprint('started')\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": os.getcwd()}, timeout=60)
    assert "started" not in r.stdout and r.returncode != 0, r.stderr
    kinds = [x["kind"] for x in file_rows(path)]
    assert kinds.count("audit.store.recovered") == (1 if where == "after the commit" else 0)
    for _ in range(2):  # started again, twice: recovered once in all
        s = SQLiteEventStore(path, "gw")
        s.start()
        await s.stop()
    rows = file_rows(path)
    notes = [x for x in rows if x["kind"] == "audit.store.recovered"]
    assert len(notes) == 1 and json.loads(notes[0]["data"])["events"] == 30
    assert [x["seq"] for x in rows] == list(range(1, 32)) and verify_rows(rows)[0] == 31


@pytest_twisted.ensureDeferred
async def test_a_recovery_that_cannot_write_the_file_says_so_and_keeps_the_log(tmp_path):
    """A full disk (or a sqlite3 shell holding the write lock) at the start that must recover: the
    start is refused with a StoreError saying the events stay in the log (not a bare sqlite3 error),
    nothing of that start keeps the log locked, and the next start recovers them."""
    path = str(tmp_path / "hoopy.db")
    p = _child_store(path, 12)
    p.send_signal(signal.SIGKILL)
    p.wait()
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    try:
        s = SQLiteEventStore(path, "gw", busy_timeout=0.2)
        with pytest.raises(StoreError, match=r"12 event\(s\) \(1-12\).*stay in the event log"):
            s.start()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    rows = await started_and_stopped(path)  # (in this same process: no lock left behind by the refused start)
    assert [r["seq"] for r in rows] == list(range(1, 14)) and rows[-1]["kind"] == "audit.store.recovered"


@pytest_twisted.ensureDeferred
async def test_a_write_refused_with_o_direct_goes_on_into_the_same_file(store, monkeypatch):
    """A file system that takes O_DIRECT at open and refuses it at the write (EINVAL): the record
    goes on without it, into the file the store opened and locked, never into whatever is at the
    name by then."""
    import errno as errno_

    await store.append(ev(0))
    lp = store._log.path
    if not store._log._direct:
        pytest.skip("O_DIRECT not in use here")
    real = os.pwrite
    first = [True]

    def einval(fd, data, offset):
        if fd == store._log.fd and first[0]:
            first[0] = False
            os.rename(lp, lp + ".theirs")  # (the name now someone else's file: a swap raced the fallback)
            with open(lp, "wb") as f:
                f.write(b"\0" * BLOCK)
            raise OSError(errno_.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(eventlog.os, "pwrite", einval)
    with pytest.raises(StoreError, match="event log"):
        await store.append(ev(1))  # (the name was replaced: refused, as any moved log)
    with open(lp, "rb") as f:
        assert f.read() == b"\0" * BLOCK  # nothing written into the file that took the name


@pytest_twisted.ensureDeferred
async def test_a_moved_file_whose_pending_events_cannot_go_in_keeps_one_chain_with_its_log(store):
    """The file moved while events wait in the log, and they cannot be put into it (a nearly full
    disk: their many rows fail where the one row saying the file moved still fits). That row must not
    take the seq of the log's first event in the file: the file and its log would hold two chains,
    and put back together, the start is refused and the log's events are never recovered."""
    import json

    for i in range(5):
        await store.append(ev(i))  # (pending in the log: index_delay is an hour here)
    real_index = store._index

    def full(db):
        raise sqlite3.OperationalError("database or disk is full")

    store._index = full
    path = store.path
    for suffix in ("", "-wal", "-shm"):
        os.rename(path + suffix, path + ".moved" + suffix)
    with pytest.raises(StoreError, match="restart the gateway"):
        await store.append(ev(5))
    store._index = real_index
    await store.stop()
    # Put back together (the file where it was, the log beside it): the next start takes the log's
    # events, and the one saying the file moved, in one chain.
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + ".moved" + suffix):
            os.replace(path + ".moved" + suffix, path + suffix)
    rows = await started_and_stopped(path)
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1)) and verify_rows(rows)[0] == len(rows)
    kinds = [r["kind"] for r in rows]
    assert kinds[:6] == ["operation"] * 6 and "audit.store.moved" in kinds and kinds[-1] == "audit.store.recovered"
    moved = [r for r in rows if r["kind"] == "audit.store.moved"][0]
    assert json.loads(moved["data"])["refused"] == [6]


@pytest_twisted.ensureDeferred
async def test_the_log_is_indexed_once_half_full_not_when_an_operation_finds_it_full(store):
    """A batch takes a block at least: at a few thousand batches a second the log would fill before
    index_delay, and the next operation would wait for the index. It is indexed at half."""
    store.index_rows = 10 ** 6
    half = store._log.size // 2
    indexed_on_the_path = []
    real = store._index

    def watch(db):
        if not store._log.fits(bytes(BLOCK)):
            indexed_on_the_path.append(store._log.offset)
        return real(db)

    store._index = watch
    for i in range(3 * store._log.size // BLOCK):
        await store.append(ev(i))
        assert store._log.offset <= half + BLOCK
    assert indexed_on_the_path == []
    assert len(file_rows(store.path)) >= 2 * (store._log.size // BLOCK)


@pytest_twisted.ensureDeferred
async def test_a_defect_in_a_write_refuses_that_batch_and_the_writer_goes_on(store):
    """An exception the write does not handle (a bug) must not end the writer thread: every later
    append, and the stop, would wait for ever."""
    real = store._write_logged
    calls = []

    def broken(batch, sign):
        if not calls:
            calls.append(1)
            raise RuntimeError("a defect")
        return real(batch, sign)

    store._write_logged = broken
    with pytest.raises(StoreError, match="a defect"):
        await store.append(ev(0))
    assert (await store.append(ev(1))).seq == 1  # the refused one took no seq
    assert store._thread.is_alive()
    await store.stop()
    assert [r["seq"] for r in file_rows(store.path)] == [1]
