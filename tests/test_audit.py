"""The tamper-evident store: `hoopy audit verify` catches edits, removals, insertions, reorders
and changed recordings; a store that cannot write refuses operations (fail closed)."""
import json
import sqlite3
import subprocess
import sys
import tarfile
import time

import pytest
import pytest_twisted

from hoopy.audit.asciicast import AsciicastRecorder
from hoopy.policy.service import STORE_DOWN, Allow, Deny
from tests.gateway_fixtures import hoopy_cli, request, start_gateway


async def populate(gw, n=3):
    s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40001")
    await s.start()
    await s.attribute(model="claude-x", tool_call="call_1")
    for i in range(n):
        assert isinstance(await gw.policy.decide(s, request("GET", f"/v1/c{i}")), Allow)
    await gw.policy.decide(s, request("DELETE", "/v1/c1"))
    return s


def verify(config):
    return subprocess.run([sys.executable, "-m", "hoopy", "audit", "verify", "-c", str(config)],
                          capture_output=True, text=True, timeout=60)


@pytest_twisted.async_fixture
async def chain(tmp_path):
    """A stopped gateway's store with a session, a terminal recording and a few operations."""
    gw = start_gateway(tmp_path)
    s = await populate(gw)
    rec = AsciicastRecorder(gw.recordings / f"{s.id}.cast", s, 80, 24, title="t")
    rec.output(b"$ uptime\r\n 10:00 up 1 day\r\n")
    rec.input(b"exit\r")
    await rec.seal()
    await s.end()
    await gw.stopService()
    return gw, s


def db(gw):
    return sqlite3.connect(gw.config.gateway.state, isolation_level=None)


def test_intact_chain_verifies(chain):
    gw, s = chain
    r = verify(gw.config.path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok: 8 events") and "1 sealed recording(s)" in r.stdout


def test_edited_event_is_caught(chain):
    gw, _ = chain
    with db(gw) as c:
        c.execute("UPDATE events SET data = replace(data, '/v1/c1', '/v1/c9') WHERE seq = 4")
    r = verify(gw.config.path)
    assert r.returncode == 1 and r.stdout.strip() == "broken: event 4: its content does not match its hash (edited)"


def test_edited_outcome_is_caught(chain):
    gw, _ = chain
    with db(gw) as c:
        c.execute("UPDATE events SET outcome = 'allowed' WHERE kind = 'operation' AND outcome = 'refused'")
    r = verify(gw.config.path)
    assert r.returncode == 1 and "event 6: its content does not match its hash" in r.stdout


def test_removed_event_is_caught(chain):
    gw, _ = chain
    with db(gw) as c:
        c.execute("DELETE FROM events WHERE seq = 4")
    r = verify(gw.config.path)
    assert r.returncode == 1 and "event 4: missing: the chain jumps from event 3 to 5 (removed)" in r.stdout


def test_removed_and_renumbered_is_caught(chain):
    gw, _ = chain
    with db(gw) as c:
        c.execute("DELETE FROM events WHERE seq = 4")
        c.execute("UPDATE events SET seq = seq - 1 WHERE seq > 4")
    r = verify(gw.config.path)
    assert r.returncode == 1 and "event 4: its link to the event before does not match" in r.stdout


def test_reordered_events_are_caught(chain):
    gw, _ = chain
    with db(gw) as c:
        c.execute("UPDATE events SET seq = -1 WHERE seq = 4")
        c.execute("UPDATE events SET seq = 4 WHERE seq = 5")
        c.execute("UPDATE events SET seq = 5 WHERE seq = -1")
    r = verify(gw.config.path)
    assert r.returncode == 1 and "event 4: its link to the event before does not match" in r.stdout


def test_inserted_event_is_caught(chain):
    gw, _ = chain
    with db(gw) as c:
        row = c.execute("SELECT * FROM events WHERE seq = 3").fetchone()
        c.execute("UPDATE events SET seq = seq + 1000 WHERE seq > 3")
        c.execute("UPDATE events SET seq = seq - 999 WHERE seq > 1000")
        c.execute(f"INSERT INTO events VALUES ({','.join('?' * len(row))})", (4, *row[1:]))
    r = verify(gw.config.path)
    assert r.returncode == 1 and "event 4: its link to the event before does not match" in r.stdout


def test_changed_recording_is_caught(chain):
    gw, s = chain
    cast = gw.recordings / f"{s.id}.cast"
    data = bytearray(cast.read_bytes())
    i = data.index(b"uptime")
    data[i] = ord("U")
    cast.write_bytes(bytes(data))
    r = verify(gw.config.path)
    assert r.returncode == 1 and f"recording {s.id}.cast (sealed by event" in r.stdout
    assert "changed since it was sealed" in r.stdout
    cast.unlink()
    assert "missing" in verify(gw.config.path).stdout


def test_recording_is_valid_asciicast(chain):
    gw, s = chain
    lines = (gw.recordings / f"{s.id}.cast").read_text().splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2 and header["width"] == 80 and header["height"] == 24
    assert [json.loads(x)[1] for x in lines[1:]] == ["o", "i"]
    out = subprocess.run(["asciinema", "cat", str(gw.recordings / f"{s.id}.cast")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "10:00 up 1 day" in out.stdout


def test_sessions_and_show(chain):
    gw, s = chain
    r = subprocess.run([sys.executable, "-m", "hoopy", "sessions", "-c", str(gw.config.path), "--json"],
                       capture_output=True, text=True, timeout=60)
    rows = json.loads(r.stdout)
    assert rows[0]["id"] == s.id and rows[0]["model"] == "claude-x" and rows[0]["tool_call"] == "call_1"
    assert rows[0]["end"] and rows[0]["identity"] == "agent"
    r = subprocess.run([sys.executable, "-m", "hoopy", "show", s.id, "-c", str(gw.config.path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "GET /v1/c2" in r.stdout and "refused" in r.stdout and "recording.sealed" in r.stdout
    r = subprocess.run([sys.executable, "-m", "hoopy", "show", "nope", "-c", str(gw.config.path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no session nope" in r.stderr


def test_replay_plays_the_terminal(chain):
    gw, s = chain
    r = subprocess.run([sys.executable, "-m", "hoopy", "replay", s.id, "-c", str(gw.config.path),
                        "--speed", "100"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "10:00 up 1 day" in r.stdout


def test_evidence_export(chain, tmp_path):
    gw, s = chain
    out = tmp_path / "evidence.tar.gz"
    r = subprocess.run([sys.executable, "-m", "hoopy", "evidence", "export", "-c", str(gw.config.path),
                        "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    x = tmp_path / "x"
    with tarfile.open(out) as tar:
        tar.extractall(x, filter="data")
    root = x / "hoopy-evidence"
    manifest = json.loads((root / "manifest.json").read_text())
    import hashlib

    names = {f["path"] for f in manifest["files"]}
    for f in manifest["files"]:
        assert hashlib.sha256((root / f["path"]).read_bytes()).hexdigest() == f["sha256"], f["path"]
    for required in ("events.jsonl", "sessions.jsonl", "approvals.jsonl", "identities.json", "grants.json",
                     "verification.json", "controls.md", f"recordings/{s.id}.cast"):
        assert required in names
    assert json.loads((root / "verification.json").read_text())["ok"] is True
    # Tokens never leave: neither the token nor its hash nor its SCRAM verifier.
    blob = b"".join((root / n).read_bytes() for n in names)
    for ident in gw.config.identities.values():
        assert ident.token_sha256.hex().encode() not in blob
    assert b"SCRAM-SHA-256$" not in blob
    controls = (root / "controls.md").read_text()
    for c in ("AC-2", "AC-3", "AC-5", "AC-6", "AU-2", "AU-3", "AU-6", "AU-9", "AU-12", "SC-7", "SC-8"):
        assert f"| {c} |" in controls
    for ref in set(__import__("re").findall(r"`([a-z_./-]+\.(?:jsonl|json|md|py)|recordings/)`", controls)):
        assert ref in ("recordings/", "manifest.json") or ref in names, ref
    # The standalone checker recomputes the chain offline, and notices an edit.
    ok = subprocess.run([sys.executable, "verify_events.py", "events.jsonl"], cwd=root,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: 8 events")
    ev = (root / "events.jsonl").read_text().replace("/v1/c2", "/v1/c7")
    (root / "events.jsonl").write_text(ev)
    bad = subprocess.run([sys.executable, "verify_events.py", "events.jsonl"], cwd=root,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "broken" in bad.stdout
    # --since after everything: an empty but valid archive.
    r = subprocess.run([sys.executable, "-m", "hoopy", "evidence", "export", "-c", str(gw.config.path),
                        "-o", str(tmp_path / "e2.tar.gz"), "--since", "2100-01-01"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "0 events" in r.stdout


def _lock(path):
    """Another process holds the SQLite write lock: the store cannot write."""
    p = subprocess.Popen([sys.executable, "-c",
                          "import sqlite3,sys,time\n"
                          f"c=sqlite3.connect({str(path)!r},isolation_level=None)\n"
                          "c.execute('BEGIN EXCLUSIVE')\nprint('locked',flush=True)\nsys.stdin.read()"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


@pytest_twisted.ensureDeferred
async def test_operations_are_refused_when_the_store_cannot_write(tmp_path):
    from twisted.internet.threads import deferToThread

    gw = start_gateway(tmp_path, busy="0.3s")
    try:
        s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40002")
        await s.start()
        assert isinstance(await gw.policy.decide(s, request("GET", "/v1/a")), Allow)
        locker = await deferToThread(_lock, gw.config.gateway.state)
        try:
            # An operation's event alone is durable in the event log, which no lock on the file
            # holds up: allowed, and in the file once the lock goes.
            assert isinstance(await gw.policy.decide(s, request("GET", "/v1/a")), Allow)
            # What follows meets a log that cannot take a record either (a full disk).
            from hoopy.audit import eventlog

            real, log_fd = eventlog.os.pwrite, gw.store._log.fd

            def full(fd, data, offset):
                if fd == log_fd:
                    raise OSError(28, "No space left on device")
                return real(fd, data, offset)

            eventlog.os.pwrite = full
            try:
                v = await gw.policy.decide(s, request("GET", "/v1/a"))
            finally:
                eventlog.os.pwrite = real
            assert v == Deny(STORE_DOWN)  # allowed by the grant, refused because unrecorded
            assert not gw.store.healthy
            v = await gw.policy.decide(s, request("POST", "/v1/refunds"))
            assert v == Deny(STORE_DOWN)  # a hold that cannot be recorded is refused too
            assert gw.approvals.pending == {}
            s2 = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40003")
            with pytest.raises(Exception, match="cannot write"):
                await s2.start()  # a session that cannot be recorded does not start
            r = await hoopy_cli(gw.config.path, "check")
            assert r.returncode == 0
        finally:
            locker.stdin.close()
            locker.wait()
        # It recovers once the store can write again, and the chain is whole.
        assert isinstance(await gw.policy.decide(s, request("GET", "/v1/a")), Allow)
        assert gw.store.healthy
        await s.end()
    finally:
        await gw.stopService()
    r = verify(gw.config.path)
    assert r.returncode == 0, r.stdout
    ops = [e for e in gw.store.reader().events() if e["kind"] == "operation"]
    # nothing unrecorded claims to have run (the refused one left no event)
    assert [e["outcome"] for e in ops] == ["allowed", "allowed", "allowed"]


@pytest_twisted.ensureDeferred
async def test_store_batches_concurrent_appends_in_order(tmp_path):
    from twisted.internet import defer

    gw = start_gateway(tmp_path)
    try:
        s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40004")
        await s.start()
        t0 = time.monotonic()
        stored = await defer.gatherResults([s.event("test.bulk", "ok", i=i) for i in range(2000)])
        elapsed = time.monotonic() - t0
        assert [x.seq for x in stored] == list(range(2, 2002))
        assert elapsed < 10, elapsed  # batched: not one fsync per event
        await s.end()
    finally:
        await gw.stopService()
    assert verify(gw.config.path).returncode == 0


def test_edited_sessions_table_is_caught(chain):
    """`hoopy sessions` shows the sessions table: it must agree with the chained events."""
    gw, s = chain
    with db(gw) as c:
        c.execute("UPDATE sessions SET model = 'someone-else' WHERE id = ?", (s.id,))
    r = verify(gw.config.path)
    assert r.returncode == 1
    assert f"session {s.id}: the sessions table says model='someone-else', its events say 'claude-x'" in r.stdout


def test_session_row_without_events_is_caught(chain):
    gw, s = chain
    with db(gw) as c:
        c.execute("INSERT INTO sessions (id, gateway, identity) VALUES ('forged', 'g', 'agent')")
    r = verify(gw.config.path)
    assert r.returncode == 1 and "session forged is in the sessions table but no event started it" in r.stdout


@pytest_twisted.ensureDeferred
async def test_edited_approval_row_is_caught(tmp_path):
    from tests.gateway_fixtures import ALICE

    gw = start_gateway(tmp_path)
    try:
        s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40005")
        await s.start()
        hold = await gw.policy.decide(s, request("POST", "/v1/refunds"))
        await gw.approvals.decide(hold.id, "alice", False, "no")
        await s.end()
    finally:
        await gw.stopService()
    assert verify(gw.config.path).returncode == 0
    with db(gw) as c:
        c.execute("UPDATE approvals SET state = 'approved' WHERE id = ?", (hold.id,))
    r = verify(gw.config.path)
    assert r.returncode == 1 and f"approval {hold.id}: the approvals table says state='approved'" in r.stdout


@pytest_twisted.ensureDeferred
async def test_two_writers_on_one_sqlite_file_keep_one_chain(tmp_path):
    """A store keeps its chain head between batches; another writer on the same
    file (another gateway process) appending in between must not fork the chain."""
    from twisted.internet import defer

    from hoopy.audit.chain import verify_rows
    from hoopy.audit.events import Event
    from hoopy.audit.store import SQLiteEventStore

    path = tmp_path / "shared.db"
    a, b = SQLiteEventStore(path, "a"), SQLiteEventStore(path, "b")
    # (without the event log: with it, a second store on the file is refused at its start, below)
    a.event_log = b.event_log = False
    a.start()
    b.start()
    try:
        for i in range(20):
            await a.append(Event(kind="test", data={"i": i}))
            await b.append(Event(kind="test", data={"i": i}))
            a.append_trailing(Event(kind="test.trailing", data={"i": i}))
        stored = await defer.gatherResults([s.append(Event(kind="test.bulk", data={"n": n}))
                                            for n in range(400) for s in (a, b)])
        assert len({x.seq for x in stored}) == 800
    finally:
        await a.stop()
        await b.stop()
    c = sqlite3.connect(path)
    c.row_factory = sqlite3.Row
    rows = [dict(r) for r in c.execute("SELECT * FROM events ORDER BY seq")]
    count, last, _ = verify_rows(rows)
    assert count == last == 20 * 3 + 800
    assert sum(r["kind"] == "test.trailing" for r in rows) == 20


@pytest_twisted.ensureDeferred
async def test_a_second_store_on_the_file_is_refused(tmp_path):
    """The event log holds events the file has not yet: one writer a file. A second gateway on the
    same SQLite file fails to start, saying why, and the first goes on."""
    from hoopy.audit.store import SQLiteEventStore, StoreError

    path = tmp_path / "one.db"
    a = SQLiteEventStore(path, "a")
    a.start()
    try:
        b = SQLiteEventStore(path, "b")
        with pytest.raises(StoreError, match="in use by another gateway"):
            b.start()
        assert a._log is not None and a._log.fd is not None
        from hoopy.audit.events import Event

        assert (await a.append(Event(kind="test", data={}))).seq == 1
    finally:
        await a.stop()
    c = SQLiteEventStore(path, "c")  # free again once the first has stopped
    c.start()
    await c.stop()


@pytest_twisted.ensureDeferred
async def test_a_writer_that_loses_the_race_twice_still_appends(tmp_path, monkeypatch):
    """Another process appends between our head read and our INSERT whenever it can (a busy
    neighbour): the second try takes the write lock first, so the append cannot fail."""
    from hoopy.audit import store as storemod
    from hoopy.audit.events import Event

    path = tmp_path / "shared.db"
    a = storemod.SQLiteEventStore(path, "a")
    a.event_log = False  # (with the event log the file has one writer: test_a_second_store_on_the_file_is_refused)
    a.start()
    real = storemod.write_batch
    races = []

    def neighbour_first(dialect, cur, batch, head, gateway, *rest):
        if len(races) < 2 and not cur.connection.in_transaction:
            other = sqlite3.connect(path)
            with other:  # takes the seq we are about to use
                top = other.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
                other.execute("INSERT INTO events (seq, time_us, gateway, kind, data, prev, hash) "
                              "VALUES (?, 0, 'b', 'neighbour', '{}', '', '')", (top + 1,))
            other.close()
            races.append(top + 1)
        return real(dialect, cur, batch, head, gateway, *rest)

    try:
        first = await a.append(Event(kind="test", data={}))
        monkeypatch.setattr(storemod, "write_batch", neighbour_first)
        stored = await a.append(Event(kind="test", data={"after": "races"}))
    finally:
        await a.stop()
    # the neighbour won the unlocked try; the locked one it could not race
    assert races and stored.seq > max(races) > first.seq


@pytest_twisted.ensureDeferred
async def test_a_flood_of_failed_logins_is_counted_not_recorded_one_by_one(tmp_path):
    """The first failures per peer and window are events of their own; the rest
    become one summary event with the exact count, so a password-guessing loop
    cannot fill the store, and nothing goes unrecorded."""
    from twisted.internet import task

    from hoopy.audit.failures import AuthFailureLog

    gw = start_gateway(tmp_path)
    clock = task.Clock()
    gw.auth_failures = AuthFailureLog(gw.record, clock, burst=5, window=60)
    api = gw.config.connections["api"]
    try:
        for i in range(12):
            await gw.auth_failed(api, "10.0.0.7:4000", f"user{i % 3}", "bearer")
        await gw.auth_failed(api, "10.0.0.8:4000", "other", "bearer")
        await gw.auth_failed(api, "[::1]:4000", "six", "bearer")
        for i in range(2):
            await gw.auth_failed(api, "[::1]:4001", "six", "scram-sha-256")
        clock.advance(61)  # the windows close: one summary per peer that went over
        await gw.auth_failed(api, "10.0.0.7:4001", "again", "bearer")  # a new window
        for _ in range(6):
            await gw.auth_failed(api, "10.0.0.9:1", "x", "bearer")
        await defer_all(gw.auth_failures.flush())  # what stopping the gateway does
    finally:
        await gw.stopService()
    events = [e for e in gw.store.reader().events() if e["kind"] == "auth.failed"]
    refused = [e for e in events if e["outcome"] == "refused"]
    summaries = [json.loads(e["data"]) | {"peer": e["peer"]} for e in events if e["outcome"] == "suppressed"]
    assert sum(e["peer"].startswith("10.0.0.7:") for e in refused) == 5 + 1
    assert sum(e["peer"].startswith("10.0.0.9:") for e in refused) == 5
    assert len(refused) == 5 + 1 + 1 + 3 + 5
    by_peer = {s["peer"]: s for s in summaries}
    assert set(by_peer) == {"10.0.0.7", "10.0.0.9"}
    assert by_peer["10.0.0.7"]["failures"] == 7
    assert by_peer["10.0.0.7"]["users"] == {"user2": 3, "user0": 2, "user1": 2}
    assert by_peer["10.0.0.9"]["failures"] == 1
    assert verify(gw.config.path).returncode == 0


def defer_all(ds):
    from twisted.internet import defer

    return defer.gatherResults(list(ds))
