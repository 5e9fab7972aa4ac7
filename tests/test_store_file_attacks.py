"""Attacks on the SQLite store's watch over its file (tests/test_store_file_moved.py is the fix they
attack): the variants of a file moved, replaced or cut from its WAL under a running gateway, and the
``max_pending`` bound. Each names what it defends; the holes it found are fixed in
hoopy/audit/store.py and hoopy/audit/writer.py (see docs/operators.md)."""
from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from hoopy.audit.store import SQLiteEventStore
from tests.test_store_file_moved import chained, ev, refused, rows


def texts(path) -> list:
    """The events' data, without the ``audit.store.moved`` event that ends a file the store lost
    (tests/test_store_file_attacks.py::test_the_file_written_says_which_events_were_refused)."""
    db = sqlite3.connect(path)
    try:
        return [d for d, in db.execute("SELECT data FROM events WHERE kind != 'audit.store.moved' ORDER BY seq")]
    finally:
        db.close()


def noted(path) -> bool:
    """The file's last event says the store lost it."""
    return last_event(path)[1] == "audit.store.moved"


def want(n, start=0) -> list:
    return [f'{{"text":"SELECT {i}"}}' for i in range(start, n)]


def wait(seconds):
    return task.deferLater(reactor, seconds, lambda: None)


def started(path) -> SQLiteEventStore:
    s = SQLiteEventStore(str(path), "gw", reactor)
    s.start()
    return s


def stop(s):
    if s._stopped is None:
        pytest_twisted.blockon(s.stop())


@pytest.fixture
def stores():
    made: list = []
    yield made
    for s in made:
        stop(s)


# --- a file moved while no batch comes: seen at the stop -----------------------------------------

@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("how", ["renamed away", "directory renamed"])
async def test_a_file_moved_while_idle_takes_its_wal_at_the_stop(tmp_path, stores, how):
    """Hole: SQLite's close skips the checkpoint of a moved file and leaves its WAL at the path. The
    moved file held nothing (not even the tables); the next store opened at the path deleted that
    WAL (an empty file) or would have taken it: three events acknowledged durable, lost."""
    path = tmp_path / "state" / "hoopy.db"
    s = started(path)
    stores.append(s)
    for i in range(3):
        await s.append(ev(i))
    if how == "renamed away":
        os.rename(path, tmp_path / "state" / "moved.db")
        moved = tmp_path / "state" / "moved.db"
    else:
        os.rename(tmp_path / "state", tmp_path / "state.old")
        moved = tmp_path / "state.old" / "hoopy.db"
    await s.stop()  # no append came between the move and the stop
    assert texts(moved) == want(3) and chained(moved) and noted(moved)
    wal = str(path) + "-wal"
    assert not os.path.exists(wal) or os.path.getsize(wal) == 0  # nothing left for the next file at the path
    again = started(path)  # a restart: a new, empty store at the path (not the old events)
    stores.append(again)
    await again.append(ev(9))
    await again.stop()
    assert texts(path) == ['{"text":"SELECT 9"}'] and chained(path)
    assert texts(moved) == want(3)


# --- the WAL or its index deleted or replaced, the main file left --------------------------------

@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("which", ["-wal", "-shm"])
@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_the_wal_or_its_index_cut_away_is_seen(tmp_path, stores, which, how):
    path = tmp_path / "hoopy.db"
    s = started(path)
    stores.append(s)
    for i in range(3):
        await s.append(ev(i))
    side = str(path) + which
    if how == "deleted":
        os.unlink(side)
    else:
        shutil.copyfile(side, side + ".new")
        os.replace(side + ".new", side)
    why = await refused(s.append(ev(3)))
    assert which in why and "restart" in why and not s.healthy
    assert "restart" in await refused(s.append(ev(4)))
    await s.stop()
    # Everything written, the refused batch too (committed before it was seen), is in the file at the
    # path: the WAL its connection had open was written back into it.
    assert texts(path) == want(4) and chained(path) and noted(path)


CRASH = textwrap.dedent("""
    import os, sys
    from twisted.internet import reactor, defer
    from hoopy.audit.store import SQLiteEventStore
    from tests.test_store_file_moved import ev
    path = sys.argv[1]

    async def main():
        s = SQLiteEventStore(path, "gw", reactor)
        s.start()
        for i in range(3):
            await s.append(ev(i))
        os.unlink(path + "-wal")  # (a cleaner that took it for a temporary file)
        for i in range(3, 6):
            try:
                stored = await s.append(ev(i))
                print("durable", stored.seq, flush=True)
            except Exception as e:
                print("refused", e, flush=True)
        os._exit(0)  # the process dies: no close

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addErrback(lambda f: (f.printTraceback(), os._exit(3))))
    reactor.run()
""")


def test_events_reported_durable_after_the_wal_was_deleted_survive_a_crash(tmp_path):
    """Hole: with the -wal deleted, every later commit went into the unlinked WAL and was reported
    durable; the process died and the file at the path had no events at all (not even the tables)."""
    path = tmp_path / "hoopy.db"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", CRASH, str(path)], env=env, capture_output=True, text=True,
                         timeout=60, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr
    durable = [int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("durable")]
    db = sqlite3.connect(path)
    try:
        seqs = [r[0] for r in db.execute("SELECT seq FROM events ORDER BY seq")]
    finally:
        db.close()
    assert set(durable) <= set(seqs) and {1, 2, 3} <= set(seqs), (out.stdout, seqs)
    assert "refused" in out.stdout and "-wal" in out.stdout


# --- symbolic links ---------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_symlinked_path_writes_on(tmp_path, stores):
    """Held (and kept by the WAL check: SQLite names the -wal after the link's target, not the link)."""
    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    os.symlink(tmp_path / "real" / "t.db", tmp_path / "links" / "hoopy.db")
    os.symlink("real", tmp_path / "dirlink")  # and a directory on the way that is a link
    s = started(tmp_path / "links" / "hoopy.db")
    s2 = started(tmp_path / "dirlink" / "u.db")
    stores += [s, s2]
    for i in range(3):
        await s.append(ev(i))
        await s2.append(ev(i))
    assert s.healthy and s2.healthy
    await s.stop()
    await s2.stop()
    assert texts(tmp_path / "real" / "t.db") == want(3)
    assert texts(tmp_path / "real" / "u.db") == want(3)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("how", ["retargeted", "link's directory renamed", "target's directory renamed"])
async def test_a_symlink_changed_under_the_store(tmp_path, stores, how):
    for d in ("a", "b", "links"):
        (tmp_path / d).mkdir()
    link = tmp_path / "links" / "hoopy.db"
    os.symlink(tmp_path / "a" / "t.db", link)
    s = started(link)
    stores.append(s)
    for i in range(3):
        await s.append(ev(i))
    if how == "retargeted":
        other = started(tmp_path / "b" / "t.db")
        await other.append(ev(100))
        await other.stop()
        os.symlink(tmp_path / "b" / "t.db", tmp_path / "links" / "new")
        os.replace(tmp_path / "links" / "new", link)
    elif how == "link's directory renamed":
        os.rename(tmp_path / "links", tmp_path / "links.old")
    else:
        os.rename(tmp_path / "a", tmp_path / "a.old")
    why = await refused(s.append(ev(3)))
    assert str(link) in why and "restart" in why
    await s.stop()
    target = tmp_path / ("a.old" if how == "target's directory renamed" else "a") / "t.db"
    assert texts(target) == want(4) and chained(target) and noted(target)  # the file it wrote keeps everything
    wal = str(target) + "-wal"
    assert not os.path.exists(wal) or os.path.getsize(wal) == 0
    if how == "retargeted":
        assert texts(tmp_path / "b" / "t.db") == ['{"text":"SELECT 100"}']


# --- other files at the path ------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_a_hard_link_renamed_over_the_path_is_the_same_file(tmp_path, stores):
    """Held: the same inode put back at the path (ln, mv) is not a replacement."""
    path = tmp_path / "hoopy.db"
    s = started(path)
    stores.append(s)
    await s.append(ev(0))
    os.link(path, tmp_path / "again.db")
    os.replace(tmp_path / "again.db", path)  # (rename(2) of a link onto itself: nothing happens)
    os.link(path, tmp_path / "backup.db")  # a second name for it elsewhere
    await s.append(ev(1))
    assert s.healthy
    await s.stop()
    assert texts(path) == want(2)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("how", ["a copy put back", "a directory"])
async def test_another_file_at_the_path_is_refused(tmp_path, stores, how):
    path = tmp_path / "hoopy.db"
    s = started(path)
    stores.append(s)
    for i in range(3):
        await s.append(ev(i))
    keep = tmp_path / "keep.db"
    os.link(path, keep)  # (so the old inode can be read after)
    if how == "a copy put back":
        shutil.copyfile(path, tmp_path / "copy.db")  # same bytes (the WAL's not in them), another inode
        os.replace(tmp_path / "copy.db", path)
    else:
        os.unlink(path)
        os.mkdir(path)
    why = await refused(s.append(ev(3)))
    assert "replaced" in why and "restart" in why and not s.healthy
    await s.stop()
    assert texts(keep) == want(4) and chained(keep) and noted(keep)
    if how == "a directory":
        assert os.listdir(path) == []


@pytest_twisted.ensureDeferred
async def test_concurrent_appends_while_the_file_goes(tmp_path, stores):
    """Held: appends racing the move are each either durable in the moved file or refused; none is
    reported durable and missing from it, none written to the path after."""
    path = tmp_path / "hoopy.db"
    s = started(path)
    stores.append(s)
    await s.append(ev(0))
    outcomes: dict = {}

    def note(i):
        return lambda r: outcomes.__setitem__(i, "refused" if hasattr(r, "check") else r.seq)

    ds = []
    for i in range(1, 400):
        d = s.append(ev(i))
        d.addBoth(note(i))
        ds.append(d)
        if i == 100:
            await d  # (some written before the move, whatever the machine's load)
        if i == 150:
            os.rename(path, tmp_path / "moved.db")
        if i % 50 == 0:
            await wait(0.002)
    await wait(0.3)
    await s.stop()
    assert len(outcomes) == 399
    moved = dict(rows(tmp_path / "moved.db"))
    durable = {i: seq for i, seq in outcomes.items() if seq != "refused"}
    assert durable and any(v == "refused" for v in outcomes.values())
    for i, seq in durable.items():
        assert moved[seq] == f'{{"text":"SELECT {i}"}}'
    assert chained(tmp_path / "moved.db")
    # The record says which of its events were refused: every one not reported durable (but ev(0)),
    # no more.
    import json

    last_seq, kind, _, data = last_event(tmp_path / "moved.db")
    assert kind == "audit.store.moved"
    assert set(json.loads(data)["refused"]) == set(moved) - set(durable.values()) - {1, last_seq}
    assert not path.exists()


@pytest_twisted.ensureDeferred
async def test_the_reader_reads_where_the_store_was_opened(tmp_path, monkeypatch, stores):
    """Hole: ``reader()`` opened the relative path against the working directory of the moment."""
    monkeypatch.chdir(tmp_path)
    s = SQLiteEventStore("rel.db", "gw", reactor)
    s.start()
    stores.append(s)
    await s.append(ev(0))
    monkeypatch.chdir("/")
    r = s.reader()
    try:
        assert len(list(r._rows("SELECT seq FROM events"))) == 1
    finally:
        r.close()


# --- max_pending ------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_past_max_pending_the_operator_sees_it_and_it_recovers(tmp_path, stores):
    """Hole: past the bound appends were refused but the store stayed ``healthy`` (/health 200), the
    error was neither counted (on_error, hoopy_store_errors_total) nor logged by the store."""
    from twisted.logger import globalLogPublisher

    s = started(tmp_path / "hoopy.db")
    stores.append(s)
    s.max_pending = 5
    errors: list = []
    s.on_error = errors.append
    logged: list = []

    def observe(e):
        if e.get("log_level") is not None and e["log_level"].name == "error":
            logged.append(e)

    globalLogPublisher.addObserver(observe)
    hold = threading.Event()
    write = s._write

    def stalled(batch, sign=False):  # a disk that hangs
        hold.wait(30)
        write(batch, sign)

    s._write = stalled
    try:
        first = s.append(ev(0))
        for _ in range(400):
            if not s._items:
                break
            await wait(0.005)
        waiting = [s.append(ev(i)) for i in range(1, 6)]  # exactly max_pending wait: all taken
        assert s.healthy and not errors
        why = await refused(s.append(ev(6)))
        assert "behind" in why
        assert not s.healthy and errors
        s.append_trailing(ev(7))  # not queued, and said so
        assert len(s._items) == 5
        assert any("behind" in str(e.get("error", "")) or "behind" in str(e) for e in logged)
        assert any("trailing" in e.get("log_format", "") for e in logged)
    finally:
        globalLogPublisher.removeObserver(observe)
        hold.set()
    await first
    for d in waiting:
        await d
    assert s.healthy  # written again: healthy again
    await s.append(ev(8))
    await s.stop()
    assert texts(tmp_path / "hoopy.db") == want(6) + ['{"text":"SELECT 8"}']


# --- what the record says, and a file nothing links any more ------------------------------------

def last_event(path) -> tuple:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT seq, kind, outcome, data FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        db.close()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("how", ["renamed away", "-wal deleted"])
async def test_the_file_written_says_which_events_were_refused(tmp_path, stores, how):
    """Hole: the batch committed before the move was seen is in the file, its operations allowed
    there, but refused to their callers: nothing in the record said so."""
    import json

    path = tmp_path / "hoopy.db"
    s = started(path)
    stores.append(s)
    for i in range(3):
        await s.append(ev(i))
    if how == "renamed away":
        os.rename(path, tmp_path / "moved.db")
        written = tmp_path / "moved.db"
    else:
        os.unlink(str(path) + "-wal")
        written = path
    a, b = s.append(ev(3)), s.append(ev(4))  # one batch
    s.append_trailing(ev(5))  # (what an operation did: not refused to anyone)
    await refused(a)
    await refused(b)
    await s.stop()
    seq, kind, outcome, data = last_event(written)
    assert (kind, outcome) == ("audit.store.moved", "refused")
    data = json.loads(data)
    assert data["refused"] == [4, 5] and "restart" in data["why"]
    assert chained(written) and len(rows(written)) == 7


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("how", ["a copy put back", "deleted", "replaced by another store"])
async def test_a_moved_file_nothing_links_is_kept_beside_the_path(tmp_path, stores, how):
    """Hole: a file replaced or deleted under the gateway lived on only in its open inode: the WAL was
    written back into it and it vanished with the process. A copy put back at the path (cp, mv) lacked
    what the WAL held: after a restart the chain went on from the copy, whole to ``verify``, the
    acknowledged events gone."""
    from twisted.logger import globalLogPublisher

    path = tmp_path / "hoopy.db"
    s = started(path)
    stores.append(s)
    for i in range(3):
        await s.append(ev(i))
    if how == "a copy put back":
        shutil.copyfile(path, tmp_path / "copy.db")
        os.replace(tmp_path / "copy.db", path)
    elif how == "deleted":
        os.unlink(path)
    else:
        other = started(tmp_path / "other.db")
        await other.append(ev(100))
        await other.stop()
        os.replace(tmp_path / "other.db", path)
    logged: list = []
    globalLogPublisher.addObserver(logged.append)
    try:
        await refused(s.append(ev(3)))
        await s.stop()
    finally:
        globalLogPublisher.removeObserver(logged.append)
    kept = [n for n in os.listdir(tmp_path) if n.startswith("hoopy.db.lost-") and not n.endswith(("-wal", "-shm"))]
    assert len(kept) == 1, os.listdir(tmp_path)
    kept_path = tmp_path / kept[0]
    assert texts(kept_path) == want(4) and chained(kept_path) and noted(kept_path)
    from twisted.logger import formatEvent

    assert any(str(kept_path) in formatEvent(e) for e in logged)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("how", ["renamed away", "deleted"])
async def test_the_lost_file_verifies_signed_to_its_end(tmp_path, stores, how):
    """Held (regression): the file written last (moved, or the copy kept of one linked nowhere) is a
    whole chain whose last event, the one saying it was lost, is signed."""
    from hoopy.audit.signing import Keyring, Signer
    from hoopy.audit.store import SQLiteReader
    from hoopy.audit.verify import verify

    path = tmp_path / "hoopy.db"
    s = SQLiteEventStore(str(path), "gw", reactor)
    s.signer = Signer.generate()
    s.start()
    stores.append(s)
    for i in range(3):
        await s.append(ev(i))
    if how == "renamed away":
        os.rename(path, tmp_path / "moved.db")
        written = tmp_path / "moved.db"
    else:
        os.unlink(path)
    await refused(s.append(ev(3)))
    await s.stop()
    if how == "deleted":
        written = next(tmp_path / n for n in os.listdir(tmp_path) if n.startswith("hoopy.db.lost-")
                       and not n.endswith(("-wal", "-shm", "-journal")))
    reader = SQLiteReader(written)
    try:
        res = verify(reader, tmp_path / "recordings", Keyring([s.signer.public]))
    finally:
        reader.close()
    assert res.ok, res
    assert res.head_seq == 5 and noted(written)
    db = sqlite3.connect(written)
    try:
        assert db.execute("SELECT signature FROM events WHERE seq = 5").fetchone()[0]
    finally:
        db.close()


# --- a real gateway: what the client and the operator see -------------------------------------

@pytest.mark.parametrize("how", ["renamed away", "-wal deleted"])
def test_a_real_gateway_refuses_and_says_so(tmp_path, how):
    """Held (the client refused with the store's reason, /health 503, hoopy_store_errors_total, a log
    line) and the new parts: the file written says which operation was refused, a restart opens the
    file at the path."""
    import json

    from tests.support import HoopyProcess, free_port, ident
    from tests.wire_peers import RawUpstream, raw, statuses

    who = ident("mover")
    up = RawUpstream()
    port = free_port()
    body = who.toml(scram=False) + f"""
[connections.api]
type = "http"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up.port}"

[[grants]]
identity = "mover"
connection = "api"
allow = ["* /**"]
"""
    gw = HoopyProcess(tmp_path, body)
    gw.start()

    def get(n):
        return raw(port, b"GET /v1/x%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer %b\r\n\r\n"
                   % (n, who.token.encode()), wait_close=True)

    try:
        assert statuses(get(1)) == [200]
        for _ in range(400):  # its session's end (trailing) written, so the next batch is get(2)'s
            db = sqlite3.connect(gw.db)
            try:
                if db.execute("SELECT count(*) FROM events WHERE kind = 'session.end'").fetchone()[0]:
                    break
            finally:
                db.close()
            time.sleep(0.01)
        if how == "renamed away":
            os.rename(gw.db, tmp_path / "moved.db")
            written = tmp_path / "moved.db"
        else:
            os.unlink(str(gw.db) + "-wal")
            written = gw.db
        seen = len(up.requests)
        out = get(2)
        assert statuses(out) and statuses(out)[0] >= 500, out
        assert b"audit" in out.lower() or b"record" in out.lower(), out
        assert len(up.requests) == seen  # not forwarded
        assert statuses(get(3))[0] >= 500
        status, health = gw.get("/health")
        assert status == 503 and health["store"] == "failing"
        metrics = gw.get("/metrics")[1].decode()
        m = re.search(r"^hoopy_store_errors_total (\S+)", metrics, re.M)
        assert m and float(m.group(1)) >= 2, metrics
        for _ in range(200):  # (the log file is written as the reactor gets to it)
            log = gw.log_text()
            if "restart the gateway" in log:
                break
            time.sleep(0.025)
        assert "restart the gateway" in log and (how == "renamed away" or "-wal" in log)
    finally:
        gw.stop()
        up.stop()
    assert "Traceback" not in gw.log_text(), gw.log_text()[-3000:]
    db = sqlite3.connect(written)
    try:
        kinds = [r[0] for r in db.execute("SELECT kind FROM events ORDER BY seq")]
        note = json.loads(db.execute("SELECT data FROM events WHERE kind = 'audit.store.moved'").fetchone()[0])
    finally:
        db.close()
    assert kinds[-1] == "audit.store.moved" and len(note["refused"]) >= 1
    gw.start()  # a restart: the file at the path (new, or the one whose -wal went: its chain goes on)
    try:
        assert statuses(get(4)) == [200] and gw.get("/health")[0] == 200
    finally:
        gw.stop()
    r = gw.hoopy("audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("reader", ["SQLiteReader (verify, the console)", "another process"])
async def test_a_reader_holding_the_wal_when_the_file_moves(tmp_path, stores, reader):
    """Hole: a reader's snapshot (``hoopy audit verify`` reads in one transaction) kept the
    checkpoint from finishing; nothing looked at its result: the moved file was left "malformed",
    what its WAL held stayed at the path (for the next file there to take or delete). What it held
    is kept complete beside the path, and the log names it."""
    from twisted.logger import formatEvent, globalLogPublisher

    from hoopy.audit.store import SQLiteReader

    path = tmp_path / "hoopy.db"
    s = SQLiteEventStore(str(path), "gw", reactor, busy_timeout=0.3)
    s.start()
    stores.append(s)
    for i in range(3):
        await s.append(ev(i))
    if reader.startswith("SQLiteReader"):
        r = SQLiteReader(str(path))
        assert len(r._rows("SELECT seq FROM events")) == 3  # (its snapshot: held until closed)
        done = r.close
    else:
        p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import sqlite3, sys
            db = sqlite3.connect({str(path)!r}, isolation_level=None)
            db.execute("BEGIN"); db.execute("SELECT count(*) FROM events").fetchone()
            print("reading", flush=True); sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "reading"

        def done():
            p.stdin.close()
            p.wait(10)
    logged: list = []
    globalLogPublisher.addObserver(logged.append)
    try:
        os.rename(path, tmp_path / "moved.db")
        await refused(s.append(ev(3)))
        await s.stop()
    finally:
        globalLogPublisher.removeObserver(logged.append)
        done()
    kept = [n for n in os.listdir(tmp_path) if n.startswith("hoopy.db.lost-") and not n.endswith(("-wal", "-shm"))]
    assert len(kept) == 1, os.listdir(tmp_path)
    assert texts(tmp_path / kept[0]) == want(4) and chained(tmp_path / kept[0]) and noted(tmp_path / kept[0])
    assert any(str(tmp_path / kept[0]) in formatEvent(e) for e in logged)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("signed", [False, True])
async def test_a_file_moved_while_idle_is_seen_without_an_append(tmp_path, stores, signed):
    """Hole: an idle store (no append; unsigned, no heartbeat either) never looked: /health said ok
    for as long as nothing came, and the moved file's WAL stayed at the path, for any file opened
    there meanwhile to take. The writer looks every ``file_check`` seconds while idle."""
    from hoopy.audit.signing import Signer

    path = tmp_path / "hoopy.db"
    s = SQLiteEventStore(str(path), "gw", reactor)
    s.file_check = 0.05
    if signed:
        s.signer = Signer.generate()
        s.sign_interval = s.heartbeat = 3600.0  # (no heartbeat comes to see it)
    s.start()
    stores.append(s)
    for i in range(3):
        await s.append(ev(i))
    await wait(0.2)
    assert s.healthy  # (looking finds nothing amiss: no false alarm, no heartbeat every look)
    if signed:
        assert [k for k in kinds(path) if k == "audit.heartbeat"] == []
    os.rename(path, tmp_path / "moved.db")
    for _ in range(200):
        if not s.healthy:
            break
        await wait(0.01)
    assert not s.healthy
    wal = str(path) + "-wal"
    assert not os.path.exists(wal) or os.path.getsize(wal) == 0
    assert texts(tmp_path / "moved.db") == want(3) and noted(tmp_path / "moved.db")
    assert "restart" in await refused(s.append(ev(3)))


def kinds(path) -> list:
    db = sqlite3.connect(path)
    try:
        return [k for k, in db.execute("SELECT kind FROM events ORDER BY seq")]
    finally:
        db.close()


@pytest_twisted.ensureDeferred
async def test_refused_at_once_while_the_lost_file_is_copied(tmp_path, stores):
    """Hole: the copy of a lost file (about 6 s a GB here) ran in the writer before any refusal was
    handed back: every operation meanwhile waited for it, /health said ok. Now the refusal comes
    first, and appends are refused at once, not queued behind the copy."""
    path = tmp_path / "hoopy.db"
    s = started(path)
    stores.append(s)
    await s.append(ev(0))
    slow = threading.Event()
    keep = s._keep

    def slow_keep(db, why):
        slow.wait(20)
        keep(db, why)

    s._keep = slow_keep
    os.unlink(path)
    try:
        first = s.append(ev(1))
        t0 = reactor.seconds()
        assert "restart" in await refused(first)
        assert not s.healthy and reactor.seconds() - t0 < 10
        later = s.append(ev(2))
        assert later.called  # (refused in append itself: nothing queued behind the copy)
        assert "restart" in await refused(later)
        s.append_trailing(ev(3))
        assert not s._items
    finally:
        slow.set()
    await s.stop()
    kept = [n for n in os.listdir(tmp_path) if n.startswith("hoopy.db.lost-") and not n.endswith(("-wal", "-shm"))]
    assert len(kept) == 1 and texts(tmp_path / kept[0]) == want(2)


PERMS = textwrap.dedent("""
    import os, sys
    from twisted.internet import reactor, defer
    from hoopy.audit.store import SQLiteEventStore
    import hoopy.sockwrite  # (imported before the drop: nobody cannot read the interpreter's packages)
    from tests.test_store_file_moved import ev
    os.setgid(65534); os.setuid(65534)  # (nobody: root reads through any permission)
    folder, how = sys.argv[1], sys.argv[2]
    path = os.path.join(folder, "hoopy.db")

    async def main():
        s = SQLiteEventStore(path, "gw", reactor)
        s.start()
        for i in range(3):
            await s.append(ev(i))
        os.chmod(folder if how == "folder" else path, 0)
        try:
            stored = await s.append(ev(3))
            print("durable", stored.seq, s.healthy, flush=True)
        except Exception as e:
            print("refused", e, flush=True)
        await s.stop()
        os.chmod(folder, 0o755); os.chmod(path, 0o644)
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addErrback(
        lambda f: (sys.stderr.write(f.getTraceback()), sys.stderr.flush(), os._exit(3))))
    reactor.run()
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to nobody to test permissions")
@pytest.mark.parametrize("how", ["folder", "file"])
def test_permissions_removed_under_the_store(tmp_path, how):
    """Held: the file made unreadable changes nothing for the open store (its descriptors); the folder
    made unsearchable makes the path unreachable: refused (fail closed), the file keeps everything."""
    import tempfile
    from pathlib import Path

    top = Path(tempfile.mkdtemp(prefix="hoopy-perms-"))  # (pytest's own folder is 0700: nobody cannot pass)
    os.chmod(top, 0o755)
    folder = top / "state"
    folder.mkdir()
    os.chown(folder, 65534, 65534)
    request_cleanup = lambda: shutil.rmtree(top, ignore_errors=True)  # noqa: E731
    env = dict(os.environ, PYTHONPATH=os.getcwd(), HOME="/tmp")
    try:
        out = subprocess.run([sys.executable, "-c", PERMS, str(folder), how], env=env, capture_output=True,
                             text=True, timeout=60, cwd=os.getcwd())
        assert out.returncode == 0, out.stderr
        if how == "file":
            assert out.stdout.startswith("durable 4 True"), out.stdout
            assert texts(folder / "hoopy.db") == want(4)
        else:
            assert out.stdout.startswith("refused") and "Permission denied" in out.stdout and "restart" in out.stdout
            assert texts(folder / "hoopy.db") == want(4) and noted(folder / "hoopy.db")
    finally:
        request_cleanup()
