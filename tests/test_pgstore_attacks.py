"""Attacks on the PostgreSQL store (hoopy/audit/pgstore.py) with a real server: lost connections at
chosen moments, a node frozen mid-batch, a server that stops answering, a crash after an
acknowledgement. What must hold: the chain never forks, gaps or duplicates; an acknowledged event is
committed, durably, exactly once; a failure refuses (never hangs, never acknowledges); one node's
trouble does not stop the others for longer than its timeouts.

Databases on the shared server are named hoopy_attackpgs_*; the tests that stop, freeze or crash
the server use a cluster of their own (initdb into /tmp, a free port), never the shared one.

Findings (each test says what it shows): a connection found closed after a missed one-round-trip
batch refused the locked way's batch (fixed); a node stalled mid-batch held the chain lock for
ever (fixed: idle_in_transaction_session_timeout); synchronous_commit = off lost acknowledged
events in a crash (fixed: raised to on); a batch over 1 GB of data was refused whole (fixed:
several statements); a server that stops answering hung the writer, healthy still True (fixed: a
watchdog cuts a batch's connection past stuck_after)."""
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer, task

from hoopy.audit.events import Event
from hoopy.audit.pgstore import CHAIN_LOCK, PostgresEventStore, PostgresReader
from hoopy.audit.store import StoreError
from hoopy.audit.verify import verify
from tests.support import free_port

SERVER = os.environ.get("HOOPY_TEST_PG", "postgresql://postgres@127.0.0.1:5432")


def sql(url, statement, *args):
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as c:
        cur = c.execute(statement, args or None)
        return cur.fetchall() if cur.description else cur.rowcount


@pytest.fixture
def pg():
    name = f"hoopy_attackpgs_{os.getpid()}_{secrets.token_hex(4)}"
    sql(f"{SERVER}/postgres", f'CREATE DATABASE "{name}"')
    yield f"{SERVER}/{name}"
    sql(f"{SERVER}/postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Cluster:
    """A PostgreSQL cluster of this test's own (initdb, pg_ctl), so it may be stopped, crashed and
    frozen. As root, run as the postgres user (initdb refuses root)."""

    def __init__(self, where: Path):
        self.bin = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip())
        self.where = where
        self.data = where / "data"
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        where.mkdir(parents=True, exist_ok=True)
        if self.as_user:
            shutil.chown(where, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool, *args):
        r = subprocess.run(self.as_user + [str(self.bin / tool), *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    def pg_ctl(self, *args):
        return self._run("pg_ctl", "-D", str(self.data), "-l", str(self.where / "log"), "-w",
                         "-o", f"-p {self.port} -k {self.where} -c listen_addresses=127.0.0.1", *args)

    def start(self):
        self.pg_ctl("start")

    def crash(self):
        self.pg_ctl("stop", "-m", "immediate")


@pytest.fixture(scope="module")
def cluster():
    if not shutil.which("pg_config"):
        pytest.skip("no pg_config: PostgreSQL's server binaries are needed")
    import tempfile

    where = Path(tempfile.mkdtemp(prefix="hoopy-attackpgs-"))  # (in /tmp: the postgres user must reach it)
    try:
        c = Cluster(where)
        c.start()
        yield c
        try:
            c.pg_ctl("stop", "-m", "immediate")
        except AssertionError:
            pass
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def own(cluster):
    """A fresh database on the test's own cluster (which is running)."""
    name = f"hoopy_attackpgs_{secrets.token_hex(4)}"
    sql(cluster.url, f'CREATE DATABASE "{name}"')
    yield cluster.url.rsplit("/", 1)[0] + f"/{name}"
    try:
        sql(cluster.url, "ALTER SYSTEM RESET ALL")
        sql(cluster.url, "SELECT pg_reload_conf()")
        sql(cluster.url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except psycopg.Error:
        pass


def chain_ok(url, n=None):
    rows = sql(url, "SELECT seq, prev, hash FROM hoopy.events ORDER BY seq")
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), "a gap in the chain"
    for before, after in zip(rows, rows[1:]):
        assert after[1] == before[2], f"event {after[0]} is not linked to event {before[0]}"
    reader = PostgresReader(url)
    try:
        res = verify(reader, Path("/nonexistent"))
    finally:
        reader.close()
    assert res.ok, res.problem
    if n is not None:
        assert len(rows) == n
    return rows


async def sleep(seconds):
    from twisted.internet import reactor

    await task.deferLater(reactor, seconds, lambda: None)


async def outcome(d, within: float):
    """What ``d`` fired with, or "no answer" after ``within`` seconds."""
    got = []
    d.addBoth(got.append)
    t0 = time.monotonic()
    while not got and time.monotonic() - t0 < within:
        await sleep(0.05)
    return got[0] if got else "no answer"


def terminate_and_notice(admin_url, conn):
    """The server ends ``conn``'s backend, and libpq reads that (as it does when the FATAL comes in
    with the reply before it): the connection is then closed, before anything else is sent on it."""
    sql(admin_url, "SELECT pg_terminate_backend(%s)", conn.info.backend_pid)
    deadline = time.monotonic() + 5
    while not conn.closed and time.monotonic() < deadline:
        try:
            conn.pgconn.consume_input()
        except psycopg.OperationalError:
            pass
        time.sleep(0.01)
    assert conn.closed


# --- findings -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_locked_way_after_a_miss_replaces_a_connection_lost_meanwhile(pg):
    """Found by 3 nodes appending while their writer backends were terminated at random (3 of 240
    kills): the one-round-trip way misses (another node appended), its connection is lost right
    after its reply (libpq has read the FATAL: the connection is closed), and the locked way takes
    ``self._conn`` as it is: "the connection is closed", the batch refused though nothing of it
    was sent. A dead idle connection is replaced before a batch is sent (as the retry for
    _IdleConnectionLost does); this one must be too."""
    from twisted.internet import reactor

    a = PostgresEventStore(pg, "node-a", reactor)
    b = PostgresEventStore(pg, "node-b", reactor)
    a.start()
    b.start()
    real = a._optimistic

    def miss_then_lose(batch, sign):
        done = real(batch, sign)
        assert done is None  # (b appended: the cached head is stale)
        terminate_and_notice(f"{SERVER}/postgres", a._conn)
        return done

    try:
        assert (await a.append(Event("test", "ok"))).seq == 1
        assert (await b.append(Event("test", "ok"))).seq == 2
        a._optimistic = miss_then_lose
        got = await outcome(a.append(Event("test", "ok", data={"x": 1})), 10)
        a._optimistic = real
        assert not isinstance(got, str), got
        assert not isinstance(got, Exception) and not hasattr(got, "value"), f"refused: {got.value}"
        assert got.seq == 3 and a.healthy
    finally:
        await a.stop()
        await b.stop()
    chain_ok(pg, 3)


@pytest_twisted.ensureDeferred
async def test_a_node_frozen_mid_batch_does_not_stop_the_others_for_ever(pg):
    """A node stalls between its locked batch's head read and its COMMIT (the gateway process
    stopped, its host paused, a thread starved): its connection sits idle in a transaction
    holding the chain lock, and nothing on the server ever ends it (no
    idle_in_transaction_session_timeout; the server's TCP keepalive defaults to two hours).
    Every other node refuses every operation (lock timeout) until someone kills that node.
    Expected: the server ends the stalled transaction within the store's own timeouts; the
    stalled node's batch is then refused (never acknowledged), the others write again."""
    from twisted.internet import reactor

    a = PostgresEventStore(pg, "node-a", reactor, busy_timeout=0.5)
    b = PostgresEventStore(pg, "node-b", reactor, busy_timeout=0.5)
    a.start()
    b.start()
    stalled, release = threading.Event(), threading.Event()
    real_upsert = a.dialect.upsert

    class Stall(type(a.dialect)):
        def upsert(self, cur, *args):
            stalled.set()
            release.wait(30)  # (the writer thread stalls here, the chain lock held)
            return real_upsert(cur, *args)

    a.dialect = Stall("%s", "hoopy.")
    try:
        assert (await b.append(Event("test", "ok"))).seq == 1
        held = a.append(Event("session.start", "ok", session="s1"), session={"id": "s1", "identity": "x"})
        while not stalled.is_set():
            await sleep(0.02)
        t0 = time.monotonic()
        wrote = None
        while time.monotonic() - t0 < 12:
            try:
                wrote = await b.append(Event("test", "ok", data={"b": 1}))
                break
            except StoreError:
                await sleep(0.2)
        waited = time.monotonic() - t0
        release.set()
        got = await outcome(held, 10)
        assert wrote is not None, f"node-b refused every operation for {waited:.0f}s while node-a stalled"
        assert hasattr(got, "value"), f"the stalled batch was acknowledged after its lock was taken away: {got}"
    finally:
        release.set()
        await a.stop()
        await b.stop()
    chain_ok(pg)


@pytest_twisted.ensureDeferred
async def test_a_server_that_stops_answering_refuses_within_the_timeouts(own):
    """The server's backend for the writer stops answering while its host's TCP stack still does
    (SIGSTOP here; in production a disk that hangs under COMMIT, where statement_timeout does not
    fire): keepalives and tcp_user_timeout see a live peer, statement_timeout is the frozen
    server's to enforce. The writer waits for ever, the appends with it, and the store still says
    healthy (so /health says 200 and a balancer keeps sending work to a node that answers none).
    CONNECT_DEFAULTS says: "a dead server ... must turn into a refusal within seconds, not a
    writer stuck forever". Expected: refused within a few statement_timeouts."""
    from twisted.internet import reactor

    a = PostgresEventStore(own, "node-a", reactor, busy_timeout=0.5)  # statement_timeout 1 s
    a.start()
    pid = None
    try:
        assert (await a.append(Event("test", "ok"))).seq == 1
        pid = a._conn.info.backend_pid
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        got = await outcome(a.append(Event("test", "ok")), 10)
        took = time.monotonic() - t0
        healthy = a.healthy
        os.kill(pid, signal.SIGCONT)
        pid = None
        assert got != "no answer", f"no answer after 10 s; the store says healthy={a.healthy}"
        # Answered once the watchdog cut the stopped backend's connection: refused (fail closed, and
        # /health 503), or written by the retry on a new connection (the stopped backend held no
        # lock here): then durably in the chain, checked below.
        assert a.stuck_after - 0.5 <= took <= a.stuck_after + 3, took
        if isinstance(got, Exception) or hasattr(got, "value"):
            assert isinstance(getattr(got, "value", got), StoreError), got
            assert not healthy
        else:
            assert sql(own, "SELECT count(*) FROM hoopy.events WHERE seq = %s AND hash = %s",
                       got.seq, got.hash) == [(1,)]
        # and the store writes on once the server answers
        assert (await a.append(Event("test", "ok"))).seq >= 2
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGCONT)
        await a.stop()
    chain_ok(own)


def _cluster_pids(cluster) -> list:
    """The postmaster of ``cluster`` and every process it started."""
    main = int((cluster.data / "postmaster.pid").read_text().split()[0])
    kids = subprocess.run(["pgrep", "-P", str(main)], capture_output=True, text=True).stdout.split()
    return [main] + [int(k) for k in kids]


@pytest_twisted.ensureDeferred
async def test_a_whole_server_that_stops_answering_refuses_and_is_written_to_again(own, cluster):
    """The whole server stopped (every process: as a host that hangs on its disk): the batch in
    flight cannot be retried anywhere. Refused within stuck_after and the connect timeout, never
    acknowledged, /health 503 meanwhile; once the server answers again the store writes on, and
    the chain is whole."""
    from twisted.internet import reactor

    a = PostgresEventStore(own, "node-a", reactor, busy_timeout=0.5)
    a.start()
    pids = []
    try:
        assert (await a.append(Event("test", "ok"))).seq == 1
        pids = _cluster_pids(cluster)
        for p in pids:
            os.kill(p, signal.SIGSTOP)
        t0 = time.monotonic()
        got = await outcome(a.append(Event("test", "ok")), 20)
        took = time.monotonic() - t0
        healthy = a.healthy
        for p in pids:
            os.kill(p, signal.SIGCONT)
        pids = []
        assert got != "no answer", f"no answer after 20 s; the store says healthy={a.healthy}"
        assert isinstance(getattr(got, "value", None), StoreError), got
        assert not healthy
        assert took <= a.stuck_after + 8, took  # (the cut, then a reconnection's connect_timeout, 5 s)
        deadline = time.monotonic() + 20
        while True:  # (the server's backends wake and end the cut connections; then it writes)
            try:
                assert (await a.append(Event("test", "ok"))).seq >= 2
                break
            except StoreError:
                assert time.monotonic() < deadline, "the store did not write again"
                await sleep(0.5)
        assert a.healthy
    finally:
        for p in pids:
            os.kill(p, signal.SIGCONT)
        await a.stop()
    chain_ok(own)


@pytest_twisted.ensureDeferred
async def test_an_acknowledged_event_survives_a_server_crash_whatever_its_synchronous_commit(own, cluster):
    """An operator (or a role, or a database) with synchronous_commit = off: COMMIT returns before
    the WAL is flushed, the store acknowledges, the operation is forwarded, the server crashes:
    the event is gone (the chain is whole, only shorter). Durable before forwarding must not
    depend on a server default the store can override for its own session (it sets lock_timeout
    and statement_timeout already)."""
    from twisted.internet import reactor

    sql(own, "ALTER SYSTEM SET wal_writer_delay = '10s'")  # (the WAL writer flushes late: no luck involved)
    sql(own, "SELECT pg_reload_conf()")
    dbname = own.rsplit("/", 1)[1]
    sql(own, f'ALTER DATABASE "{dbname}" SET synchronous_commit = off')
    a = PostgresEventStore(own, "node-a", reactor)
    a.start()
    acked = []
    try:
        acked.append(await a.append(Event("test", "ok")))
        for i in range(5):
            acked.append(await a.append(Event("test", "ok", data={"i": i})))
        await deferToThread(cluster.crash)
    finally:
        await a.stop()
        cluster.start()
    rows = chain_ok(own)
    assert len(rows) >= len(acked), f"{len(acked)} events acknowledged, {len(rows)} after the crash"


def deferToThread(f, *args):
    from twisted.internet.threads import deferToThread as d

    return d(f, *args)


@pytest_twisted.ensureDeferred
async def test_a_batch_of_more_than_a_gigabyte_of_event_data_is_written(own, monkeypatch):
    """Found with max_batch 512 and large events (about 2.2 MB each, a statement's parameters
    recorded, say): the whole batch went as one statement of arrays, and a protocol message is at
    most 1 GB: the server closed the connection, all 511 operations were refused (and the next batch
    as large too). Before the rewrite (109101e) the rows went 64 to a statement and the same batch
    was written. Now a batch past _STATEMENT_CHARS of data goes in several statements. (Shown here
    with the bound made 1 MiB and 16 events of 300 kB: the same path as 1.1 GB against the real
    bound, which took 30-60 s and over a gigabyte of memory.)"""
    from twisted.internet import reactor

    from hoopy.audit import pgstore

    assert pgstore._STATEMENT_CHARS * 4 < 1 << 30  # (4 bytes at most a character, under the 1 GB cap)
    monkeypatch.setattr(pgstore, "_STATEMENT_CHARS", 1 << 20)
    sizes = []  # the data characters of each statement's arrays
    arrays = pgstore._arrays

    def counted(rows):
        sizes.append(sum(len(r[pgstore._DATA]) for r in rows))
        return arrays(rows)

    monkeypatch.setattr(pgstore, "_arrays", counted)
    a = PostgresEventStore(own, "node-a", reactor, busy_timeout=60)
    a.start()
    holder = psycopg.connect(own, autocommit=True)
    big = "y" * 300_000
    try:
        assert (await a.append(Event("test", "ok"))).seq == 1
        # The chain lock held elsewhere while they are appended: the writer waits with the first,
        # the others are then one batch.
        holder.execute("SELECT pg_advisory_lock(%s)", (CHAIN_LOCK,))
        ds = [a.append(Event("test", "ok", data={"i": i, "big": big})) for i in range(16)]
        await sleep(0.5)
        holder.execute("SELECT pg_advisory_unlock(%s)", (CHAIN_LOCK,))
        results = await defer.DeferredList(ds, consumeErrors=True)
        refused = [v.value for ok, v in results if not ok]
        assert not refused, f"{len(refused)} refused: {refused[0]}"
        # and again on the one-statement way (no lock wait: a batch over the bound from the start)
        ds = [a.append(Event("test", "ok", data={"j": i, "big": big})) for i in range(8)]
        results = await defer.DeferredList(ds, consumeErrors=True)
        assert all(ok for ok, _ in results), [v for ok, v in results if not ok]
    finally:
        holder.close()
        await a.stop()
    assert sql(own, "SELECT count(*) FROM hoopy.events") == [(25,)]
    chain_ok(own)
    # never a statement past the bound (one row alone may be: it cannot be split)
    assert max(sizes) <= 1 << 20 and len(sizes) >= 7, sizes


# --- what held (kept as guards) ---------------------------------------------------------------------


def cut_client_side(conn):
    """The client's end of ``conn`` shut (a network that drops the reply): the server's backend
    lives on, and carries on with what it was sent, until it next writes to the socket."""
    s = socket.socket(fileno=os.dup(conn.pgconn.socket))
    try:
        s.shutdown(socket.SHUT_RDWR)
    finally:
        s.close()


@pytest.mark.parametrize("holder_appends", [False, True], ids=["lock-freed", "another-node-appends"])
@pytest_twisted.ensureDeferred
async def test_a_lost_reply_whose_statement_is_still_running_is_written_once(pg, holder_appends):
    """The one-round-trip statement is waiting for the chain lock when its reply is lost: its
    backend lives on, still queued for the lock, while the writer sends the same statement again
    on a new connection (queued behind it). Then the lock is freed (or another node appends and
    frees it): the old backend's statement runs after the new one was sent. Whatever the order,
    the batch is in the chain once, acknowledged only if there, and never after another node's
    events it was not linked to."""
    from twisted.internet import reactor

    a = PostgresEventStore(pg, "node-a", reactor, busy_timeout=5)
    b = PostgresEventStore(pg, "node-b", reactor, busy_timeout=5)
    a.start()
    b.start()
    holder = psycopg.connect(pg, autocommit=True)
    try:
        assert (await a.append(Event("test", "ok"))).seq == 1
        if holder_appends:
            assert (await b.append(Event("test", "ok"))).seq == 2
            assert (await a.append(Event("test", "ok"))).seq == 3  # (a's cache right again)
            assert (await a.append(Event("test", "ok"))).seq == 4
        holder.execute("SELECT pg_advisory_lock(%s)", (CHAIN_LOCK,))
        old_pid = a._conn.info.backend_pid
        d = a.append(Event("test", "ok", data={"once": 1}))
        # (the statement is at the server, waiting for the lock)
        while not sql(pg, "SELECT 1 FROM pg_locks WHERE pid = %s AND NOT granted", old_pid):
            await sleep(0.02)
        cut_client_side(a._conn)
        while not sql(pg, "SELECT 1 FROM pg_locks l JOIN pg_stat_activity s USING (pid)"
                          " WHERE NOT granted AND pid <> %s AND s.application_name = 'hoopy'", old_pid):
            await sleep(0.02)  # (the same statement sent again, queued behind the old one)
        if holder_appends:
            # Another node's events while the lock is held for it (its batch: the locked way).
            with holder.transaction():
                head = holder.execute("SELECT seq, hash FROM hoopy.events ORDER BY seq DESC LIMIT 1").fetchone()
            from hoopy.audit.writer import write_batch
            from hoopy.audit.pgstore import PgDialect

            with holder.transaction():
                cur = holder.cursor()
                write_batch(PgDialect("%s", "hoopy."), cur, [(Event("test", "ok", data={"holder": 1}), '{"holder":1}',
                                                              None, None, None, None)], head, "node-h")
        holder.execute("SELECT pg_advisory_unlock(%s)", (CHAIN_LOCK,))
        got = await outcome(d, 20)
        assert got != "no answer"
        if hasattr(got, "value"):
            acked = None
        else:
            acked = got
        assert (await a.append(Event("test", "ok"))).seq  # (the node writes on)
    finally:
        holder.close()
        await a.stop()
        await b.stop()
    rows = chain_ok(pg)
    once = sql(pg, "SELECT seq, hash FROM hoopy.events WHERE data = %s", '{"once":1}')
    assert len(once) <= 1, f"the batch is in the chain twice: {once}"
    if acked is not None:
        assert once == [(acked.seq, acked.hash)]
    assert len(rows) == len(set(r[0] for r in rows))


@pytest.mark.parametrize("mode", ["fast", "immediate"])
@pytest_twisted.ensureDeferred
async def test_a_server_restart_under_two_nodes_and_signing_leaves_every_acknowledged_event_once(own, cluster, mode):
    """Two signing nodes append (events only, and session rows: both ways) while the server is
    restarted (a fast shutdown, or a crash): refusals while it is down, then both write on; every
    acknowledged event is in the chain exactly once, the chain whole and its signatures good."""
    from twisted.internet import reactor

    from hoopy.audit.signing import Keyring, Signer

    nodes = [PostgresEventStore(own, f"node-{n}", reactor, busy_timeout=1) for n in "ab"]
    for s in nodes:
        s.signer = Signer.generate()
        s.sign_interval = 0.05
        s.start()
    acked, refused = {}, 0
    restart = None
    try:
        for r in range(60):
            if r == 15:
                restart = deferToThread(lambda: (cluster.pg_ctl("stop", "-m", mode), cluster.start()))
            ds = []
            for k, s in enumerate(nodes):
                for i in range(20):
                    tag = f"{k}:{r}:{i}"
                    ev = Event("test", "ok", data={"tag": tag})
                    ds.append((tag, s.append(ev, session={"id": tag, "identity": "x"}) if i == 7 else s.append(ev)))
            for tag, d in ds:
                try:
                    got = await d
                    acked[tag] = (got.seq, got.hash)
                except StoreError:
                    refused += 1
            if restart is not None and restart.called and r > 30:
                break
            await sleep(0.02)
        await restart
        for s in nodes:  # both write again
            assert (await s.append(Event("test", "ok"))).seq
    finally:
        for s in nodes:
            await s.stop()
    rows = chain_ok(own)
    assert refused and acked
    tags = {}
    for seq, h, data in sql(own, "SELECT seq, hash, data FROM hoopy.events WHERE data LIKE '{\"tag\"%'"):
        tags.setdefault(data, []).append((seq, h))
    assert all(len(v) == 1 for v in tags.values()), "an event in the chain twice"
    for tag, where in acked.items():
        assert tags.get(f'{{"tag":"{tag}"}}') == [where], f"acknowledged event {tag} is not in the chain"
    reader = PostgresReader(own)
    try:
        res = verify(reader, Path("/nonexistent"), keyring=Keyring(s.signer.public for s in nodes))
    finally:
        reader.close()
    assert res.ok and res.signatures, res.problem
    assert len(rows) > len(acked)
