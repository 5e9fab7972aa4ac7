"""The PostgreSQL state store against the real server at 127.0.0.1:5432 (override with
HOOPY_TEST_PG): one chain written by several nodes, tamper detection, the CLI on a
postgresql:// state, approvals that cross nodes (a real `twistd -n hoopy` as the other
node, the real `hoopy approve --admin`), and fail-closed writes that recover.

Each test gets its own freshly created database, dropped afterwards."""
import json
import os
import secrets
import subprocess
import sys
import tarfile
import time

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from hoopy import config as cm
from hoopy.audit.events import Event
from hoopy.audit.pgstore import PostgresEventStore
from hoopy.audit.store import StateConflict, StoreError
from hoopy.gateway import Gateway
from hoopy.policy.approvals import ApprovalError
from hoopy.policy.service import STORE_DOWN, Allow, Deny, Hold
from tests.gateway_fixtures import AGENT, ALICE, BOB, hoopy_cli, request, write_config
from tests.support import HoopyProcess

SERVER = os.environ.get("HOOPY_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def admin_sql(statement, *args):
    return sql(f"{SERVER}/postgres", statement, *args)


@pytest.fixture
def pg(request):
    """A uniquely named database; its URL. Dropped (with any lingering backends) after."""
    name = f"hoopy_test_{os.getpid()}_{secrets.token_hex(4)}"
    admin_sql(f'CREATE DATABASE "{name}"')
    yield f"{SERVER}/{name}"
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sql(url, statement, *args):
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as c:
        cur = c.execute(statement, args or None)
        return cur.fetchall() if cur.description else cur.rowcount


def pg_config(tmp_path, url, node, **kw):
    """The core fixtures' config, on the PostgreSQL state, as gateway node ``node``."""
    d = tmp_path / node
    d.mkdir(exist_ok=True)
    p = write_config(d, **kw)
    text = p.read_text().replace('state = "hoopy.db"', f'state = "{url}"\nname = "{node}"', 1)
    p.write_text(text)
    return p


def start_node(tmp_path, url, node, **kw) -> Gateway:
    from twisted.internet import reactor

    gw = Gateway(cm.load(pg_config(tmp_path, url, node, **kw)), reactor)
    gw.add_admin()
    gw.startService()
    return gw


def admin_of(gw) -> str:
    return f"http://127.0.0.1:{gw.config.gateway.admin_listen.split(':')[1]}"


def run(config, *args, token=None):
    env = {k: v for k, v in os.environ.items() if k != "HOOPY_TOKEN"}
    if token:
        env["HOOPY_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "hoopy", *args, "-c", str(config)],
                          capture_output=True, text=True, timeout=60, env=env)


async def held(gw, who="agent"):
    s = gw.new_session(who, gw.config.connections["api"], "127.0.0.1:40000")
    await s.start()
    v = await gw.policy.decide(s, request("POST", "/v1/refunds"))
    assert isinstance(v, Hold)
    return s, v


# --- one chain, several writers ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_two_nodes_append_concurrently_to_one_chain(pg, tmp_path):
    from twisted.internet import reactor

    a = PostgresEventStore(pg, "node-a", reactor)
    b = PostgresEventStore(pg, "node-b", reactor)
    a.start()
    b.start()
    try:
        # Rounds of concurrent appends from both writer threads; each round is
        # awaited so batches of the two nodes interleave in the chain.
        for r in range(10):
            ds = [a.append(Event("test", "ok", data={"node": "a", "r": r, "i": i})) for i in range(30)]
            ds += [b.append(Event("test", "ok", data={"node": "b", "r": r, "i": i})) for i in range(30)]
            stored = await defer.gatherResults(ds)
            assert len({s.seq for s in stored}) == 60
    finally:
        await a.stop()
        await b.stop()
    rows = sql(pg, "SELECT seq, gateway FROM hoopy.events ORDER BY seq")
    assert [r[0] for r in rows] == list(range(1, 601))
    switches = sum(1 for x, y in zip(rows, rows[1:]) if x[1] != y[1])
    assert switches >= 2, "the two nodes' batches did not interleave"
    cfg = pg_config(tmp_path, pg, "node-a")
    r = run(cfg, "audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok: 600 events, chain intact up to event 600")


# --- the CLI and tampering -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cli_and_tampering_on_a_postgres_state(pg, tmp_path):
    gw = start_node(tmp_path, pg, "node-a")
    try:
        s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40001")
        await s.start()
        await s.attribute(model="claude-x", tool_call="call_1")
        for i in range(3):
            assert isinstance(await gw.policy.decide(s, request("GET", f"/v1/c{i}")), Allow)
        assert isinstance(await gw.policy.decide(s, request("DELETE", "/v1/c1")), Deny)
        await s.end()
    finally:
        await gw.stopService()
    cfg = gw.config.path

    def cli(*args):
        return deferToThread(run, cfg, *args)

    r = await cli("sessions", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [x["id"] for x in rows] == [s.id] and rows[0]["model"] == "claude-x" and rows[0]["end"]
    r = await cli("show", s.id)
    assert r.returncode == 0 and "GET /v1/c2" in r.stdout and "refused" in r.stdout
    r = await cli("show", "nope")
    assert r.returncode == 1 and "no session nope" in r.stderr
    out = tmp_path / "evidence.tar.gz"
    r = await cli("evidence", "export", "-o", str(out))
    assert r.returncode == 0, r.stderr
    with tarfile.open(out) as tar:
        events = [json.loads(x) for x in tar.extractfile("hoopy-evidence/events.jsonl").read().splitlines()]
        verification = json.loads(tar.extractfile("hoopy-evidence/verification.json").read())
    assert [e["kind"] for e in events] == ["session.start", "session.attribution", "operation", "operation",
                                           "operation", "operation", "session.end"]
    assert verification["ok"] and verification["events"] == 7
    r = await cli("audit", "verify")
    assert r.returncode == 0 and r.stdout.startswith("ok: 7 events"), r.stdout + r.stderr

    # Tamper through SQL, check, then put the original rows back.
    sql(pg, "CREATE TABLE hoopy.events_saved AS SELECT * FROM hoopy.events")

    def restore():
        sql(pg, "DELETE FROM hoopy.events")
        sql(pg, "INSERT INTO hoopy.events SELECT * FROM hoopy.events_saved")

    cases = [
        (["UPDATE hoopy.events SET data = replace(data, '/v1/c1', '/v1/c9') WHERE seq = 4"],
         "broken: event 4: its content does not match its hash (edited)"),
        (["UPDATE hoopy.events SET outcome = 'allowed' WHERE outcome = 'refused'"],
         "event 6: its content does not match its hash"),
        (["DELETE FROM hoopy.events WHERE seq = 4"],
         "event 4: missing: the chain jumps from event 3 to 5 (removed)"),
        # (renumbered through negatives: a unique key is checked row by row, in no set order)
        (["DELETE FROM hoopy.events WHERE seq = 4", "UPDATE hoopy.events SET seq = -seq WHERE seq > 4",
          "UPDATE hoopy.events SET seq = -seq - 1 WHERE seq < 0"],
         "event 4: its link to the event before does not match"),
        (["UPDATE hoopy.events SET seq = -1 WHERE seq = 4", "UPDATE hoopy.events SET seq = 4 WHERE seq = 5",
          "UPDATE hoopy.events SET seq = 5 WHERE seq = -1"],
         "event 4: its link to the event before does not match"),
    ]
    for statements, expected in cases:
        for st in statements:
            sql(pg, st)
        r = await cli("audit", "verify")
        assert r.returncode == 1 and expected in r.stdout, (statements, r.stdout, r.stderr)
        restore()
    r = await cli("audit", "verify")
    assert r.returncode == 0, r.stdout


def test_check_names_bad_postgres_state(tmp_path):
    for url, expected in [
        ("postgresql://postgres:secret@127.0.0.1/db", "no password in the state URL"),
        ("postgresql:///db", "names no host or socket directory"),
        ("postgresql://h/db?nosuchparam=1", "not a valid PostgreSQL URL"),
    ]:
        cfg = pg_config(tmp_path, url, "node-a")
        r = subprocess.run([sys.executable, "-m", "hoopy", "check", "-c", str(cfg)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "gateway.state:" in r.stdout and expected in r.stdout, r.stdout
        assert "secret" not in r.stdout + r.stderr


def test_missing_database_or_schema_is_refused(pg, tmp_path):
    cfg = pg_config(tmp_path, pg, "node-a")
    r = run(cfg, "sessions")  # the database exists, hoopy never wrote to it
    assert r.returncode == 1 and "no hoopy state store" in r.stderr
    gone = pg + "_gone"
    with pytest.raises(StoreError, match="cannot connect"):
        PostgresEventStore(gone, "node-a").start()


# --- approvals across nodes ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_approval_held_on_one_node_is_decided_on_another(pg, tmp_path):
    # Node B: a real `twistd -n hoopy` on the same PostgreSQL state.
    text = pg_config(tmp_path, pg, "node-b").read_text()
    port = int(text.split('admin_listen = "tcp:')[1].split(":")[0])
    other = HoopyProcess(tmp_path / "node-b", "", admin_port=port)
    other.config.write_text(text)  # HoopyProcess writes a SQLite config: ours replaces it
    await deferToThread(other.start)
    # Node A: an in-process gateway holding the operations.
    gw = start_node(tmp_path, pg, "node-a")
    a_admin, b_admin = admin_of(gw), other.admin
    cfg = gw.config.path
    try:
        s, hold = await held(gw)
        resolved_at = []
        hold.resolution.addCallback(lambda v: resolved_at.append(time.monotonic()) or v)
        # Node B lists it (shared store) and refuses a non-reviewer.
        r = await hoopy_cli(cfg, "approvals")
        assert hold.id in r.stdout
        r = await hoopy_cli(cfg, "approve", hold.id, "--admin", b_admin, token=AGENT.token)
        assert r.returncode == 1 and "not a reviewer" in r.stderr, r.stderr
        assert not hold.resolution.called

        r = await hoopy_cli(cfg, "approve", hold.id, "--admin", b_admin, token=ALICE.token)
        done = time.monotonic()
        assert r.returncode == 0, r.stderr
        assert f"{hold.id} approved by alice" in r.stdout
        verdict = await hold.resolution
        assert verdict == Allow("POST /v1/refunds", hold.id)
        assert resolved_at[0] - done < 1.0, "node A resumed more than a second after node B decided"
        assert gw.approvals.get(hold.id) is None

        # A second decision, on either node, is refused.
        for admin in (a_admin, b_admin):
            r = await hoopy_cli(cfg, "deny", hold.id, "--admin", admin, token=BOB.token)
            assert r.returncode == 1 and "already approved" in r.stderr, (admin, r.stderr)

        # The requester cannot decide its own request on another node either.
        s2, hold2 = await held(gw, who="bob")
        r = await hoopy_cli(cfg, "approve", hold2.id, "--admin", b_admin, token=BOB.token)
        assert r.returncode == 1 and "cannot decide its own request" in r.stderr, r.stderr
        r = await hoopy_cli(cfg, "deny", hold2.id, "--admin", b_admin, "--reason", "too large",
                            token=ALICE.token)
        assert r.returncode == 0, r.stderr
        v = await hold2.resolution
        assert isinstance(v, Deny) and "denied by alice: too large" in v.reason

        # Both nodes at once: exactly one decision wins, and the holder follows it.
        s3, hold3 = await held(gw)
        results = await defer.gatherResults([
            hoopy_cli(cfg, "approve", hold3.id, "--admin", a_admin, token=ALICE.token),
            hoopy_cli(cfg, "deny", hold3.id, "--admin", b_admin, token=BOB.token),
        ])
        ok = [x for x in results if x.returncode == 0]
        assert len(ok) == 1 and all("already" in x.stderr for x in results if x.returncode), \
            [(x.returncode, x.stdout, x.stderr) for x in results]
        v = await hold3.resolution
        assert isinstance(v, Allow) == ("approved" in ok[0].stdout)

        def decided(aid):
            return sql(pg, "SELECT gateway, outcome FROM hoopy.events WHERE kind = 'approval.decided'"
                           " AND data::jsonb->>'approval' = %s", aid)

        assert decided(hold.id) == [("node-b", "approved")]
        assert decided(hold2.id) == [("node-b", "denied")]
        assert len(decided(hold3.id)) == 1
        rows = {r["id"]: r for r in gw.store.reader().approvals()}
        assert rows[hold.id]["state"] == "approved" and rows[hold.id]["gateway"] == "node-a"
        assert rows[hold.id]["reviewer"] == "alice" and rows[hold2.id]["reviewer"] == "alice"
    finally:
        await gw.stopService()
        await deferToThread(other.stop)
    r = await hoopy_cli(cfg, "audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest_twisted.ensureDeferred
async def test_a_conditional_update_never_decides_twice(pg, tmp_path):
    """The store primitive under the cross-node rule, on both stores."""
    from twisted.internet import reactor

    from hoopy.audit.store import SQLiteEventStore

    for store in (PostgresEventStore(pg, "n", reactor), SQLiteEventStore(tmp_path / "s.db", "n", reactor)):
        store.start()
        try:
            row = {"id": "ap-1", "requester": "agent", "operation": "x", "state": "pending", "created_us": 1}
            await store.append(Event("operation", "held"), approval=row)
            first = store.append(Event("approval.decided", "approved"),
                                 approval={"id": "ap-1", "state": "approved", "reviewer": "alice"},
                                 expect_state="pending")
            second = store.append(Event("approval.decided", "denied"),
                                  approval={"id": "ap-1", "state": "denied", "reviewer": "bob"},
                                  expect_state="pending")
            stored = await first
            with pytest.raises(StateConflict, match="already approved"):
                await second
            after = await store.append(Event("test"))
            assert after.seq == stored.seq + 1  # the refused one took no place in the chain
            r = store.reader()
            assert r.approval("ap-1")["reviewer"] == "alice" and r.approval("ap-1")["gateway"] == "n"
            r.close()
        finally:
            await store.stop()


# --- fail closed, then recover ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_server_gone_refuses_operations_and_the_store_recovers(pg, tmp_path):
    a = start_node(tmp_path, pg, "node-a", busy="1s")
    b = start_node(tmp_path, pg, "node-b", busy="1s")
    dbname = pg.rsplit("/", 1)[1]
    try:
        s = a.new_session("agent", a.config.connections["api"], "127.0.0.1:40002")
        await s.start()
        assert isinstance(await a.policy.decide(s, request("GET", "/v1/x")), Allow)

        # The server drops every connection and accepts no new ones.
        admin_sql(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        admin_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", dbname)
        for _ in range(2):  # each batch tries to reconnect, fails, and is refused
            assert await a.policy.decide(s, request("GET", "/v1/x")) == Deny(STORE_DOWN)
        assert not a.store.healthy
        r = await hoopy_cli(a.config.path, "audit", "verify")
        assert r.returncode == 1 and "cannot" in r.stderr

        admin_sql(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        assert isinstance(await a.policy.decide(s, request("GET", "/v1/y")), Allow)
        assert a.store.healthy
        # A connection the server closed while it sat idle (a restart, a failover)
        # is replaced before the batch is sent: nothing is refused for it.
        admin_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", dbname)
        assert isinstance(await a.policy.decide(s, request("GET", "/v1/z")), Allow)

        # The listener came back too: a decision on B still resumes A.
        _, hold = await held(a)
        decision = await b.approvals.decide(hold.id, "alice", True)
        assert decision.state == "approved"
        t0 = time.monotonic()
        assert isinstance(await hold.resolution, Allow)
        assert time.monotonic() - t0 < 3.0
        with pytest.raises(ApprovalError, match="already approved"):
            await a.approvals.decide(hold.id, "bob", False)
    finally:
        await a.stopService()
        await b.stopService()
    r = await hoopy_cli(a.config.path, "audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    allowed = sql(pg, "SELECT count(*) FROM hoopy.events WHERE kind = 'operation' AND outcome = 'allowed'")
    assert allowed == [(3,)]  # the refused ones were never recorded as allowed


# --- signatures on a shared chain; a read-only role for readers ------------------------------------


def signing_node(tmp_path, url, node, **kw) -> Gateway:
    from twisted.internet import reactor

    p = pg_config(tmp_path, url, node, **kw)
    p.write_text(p.read_text().replace(f'name = "{node}"', f'name = "{node}"\nsigning_key = "file:{node}.key"'))
    gw = Gateway(cm.load(p), reactor)
    gw.add_admin()
    gw.startService()
    return gw


@pytest_twisted.ensureDeferred
async def test_each_node_signs_the_shared_chain_with_its_own_key(pg, tmp_path):
    a = signing_node(tmp_path, pg, "node-a")
    b = signing_node(tmp_path, pg, "node-b")
    try:
        for gw in (a, b, a, b):
            s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40009")
            await s.start()
            assert isinstance(await gw.policy.decide(s, request("GET", "/v1/x")), Allow)
            await s.end()
    finally:
        await a.stopService()
        await b.stopService()
    key_a = (tmp_path / "node-a" / "node-a.key.pub").read_text().strip()
    key_b = (tmp_path / "node-b" / "node-b.key.pub").read_text().strip()
    signers = sql(pg, "SELECT DISTINCT gateway, split_part(signature, ':', 2) FROM hoopy.events"
                      " WHERE signature IS NOT NULL")
    assert len(signers) == 2 and len({k for _, k in signers}) == 2
    cfg = a.config.path
    r = await hoopy_cli(cfg, "audit", "verify", "--key", key_a)
    assert r.returncode == 1 and "not among the keys given" in r.stdout, r.stdout
    r = await hoopy_cli(cfg, "audit", "verify", "--key", key_a, "--key", key_b)
    assert r.returncode == 0 and "0 event(s) after it unsigned" in r.stdout, r.stdout + r.stderr
    # Delete an event and recompute every link after it: the chain holds, the signatures do not.
    from hoopy.audit.chain import link

    rows = sql(pg, "SELECT seq, time_us, gateway, session, identity, connection, protocol, peer, kind, outcome,"
                   " data, writes, prev, hash, signature FROM hoopy.events ORDER BY seq")
    cols = ["seq", "time_us", "gateway", "session", "identity", "connection", "protocol", "peer", "kind",
            "outcome", "data", "writes", "prev", "hash", "signature"]
    rows = [dict(zip(cols, r)) for r in rows]
    victim = next(i for i, r in enumerate(rows) if r["kind"] == "operation")
    kept = rows[:victim] + rows[victim + 1:]
    prev = rows[victim]["prev"]
    for i, r in enumerate(kept[victim:], victim):
        r.update(seq=i + 1, prev=prev)
        r["hash"] = link(prev, r)
        prev = r["hash"]
    sql(pg, "DELETE FROM hoopy.events")
    for r in kept:
        sql(pg, f"INSERT INTO hoopy.events ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
            *[r[c] for c in cols])
    assert (await hoopy_cli(cfg, "audit", "verify")).returncode == 0  # unkeyed: fooled
    r = await hoopy_cli(cfg, "audit", "verify", "--key", key_a, "--key", key_b)
    assert r.returncode == 1 and "signature does not verify" in r.stdout, r.stdout


@pytest_twisted.ensureDeferred
async def test_readers_use_a_read_only_role_and_never_the_writers(pg, tmp_path):
    role = f"hoopy_ro_{secrets.token_hex(4)}"
    dbname = pg.rsplit("/", 1)[1]
    gw = start_node(tmp_path, pg, "node-a")
    try:
        s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40010")
        await s.start()
        await gw.policy.decide(s, request("GET", "/v1/x"))
        await s.end()
    finally:
        await gw.stopService()
    admin_sql(f'CREATE ROLE "{role}" LOGIN')
    try:
        sql(pg, f'GRANT USAGE ON SCHEMA hoopy TO "{role}"')
        sql(pg, f'GRANT SELECT ON ALL TABLES IN SCHEMA hoopy TO "{role}"')
        host = SERVER.split("@", 1)[1]
        writer = f"postgresql://no_such_role_{secrets.token_hex(3)}@{host}/{dbname}"
        reader = f"postgresql://{role}@{host}/{dbname}"
        cfg = gw.config.path
        text = cfg.read_text().replace(f'state = "{pg}"', f'state = "{writer}"\nstate_reader = "{reader}"')
        cfg.write_text(text)
        for args in (("sessions",), ("show", s.id[:6]), ("events", "--type", "operation"), ("audit", "verify"),
                     ("approvals", "--all")):
            r = await hoopy_cli(cfg, *args)
            assert r.returncode == 0, (args, r.stdout, r.stderr)
        r = await hoopy_cli(cfg, "evidence", "export", "-o", str(tmp_path / "e.tar.gz"))
        assert r.returncode == 0, r.stderr
        # The reader's role cannot change the record.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            sql(reader, "UPDATE hoopy.sessions SET model = 'x'")
        # `hoopy check` (the gateway's view) still names the writer's URL as the state.
        r = await hoopy_cli(cfg, "check")
        assert r.returncode == 0, r.stdout
    finally:
        admin_sql(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin_sql(f'DROP ROLE IF EXISTS "{role}"')
