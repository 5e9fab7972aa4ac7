"""Attacks on the postgresql:// store's writer (hoopy/audit/pgstore.py): the locked way's lost
COMMIT reply, what is taken off the queue while the chain lock is awaited, and a stop while the
store cannot write. Against the real server, as tests/test_pgstore.py (HOOPY_TEST_PG); each test
gets its own database (named with HOOPY_TEST_DB_PREFIX, default hoopy_test_), dropped after."""
import os
import secrets
import time

import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer

from hoopy.audit.events import Event
from hoopy.audit.pgstore import CHAIN_LOCK, PostgresEventStore
from tests.test_pgstore import SERVER, admin_sql, sql
from tests.test_pgstore_pipeline import chain, verify

PREFIX = os.environ.get("HOOPY_TEST_DB_PREFIX", "hoopy_test_")


@pytest.fixture
def pg():
    name = f"{PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    admin_sql(f'CREATE DATABASE "{name}"')
    yield f"{SERVER}/{name}"
    admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class CommitReplyLost:
    """The writer's connection: its next COMMIT is executed by the server, then the connection is
    lost before the reply (the server killed or the network cut at that moment)."""

    def __init__(self, conn):
        self.conn = conn
        self.broken = self.closed = False

    def cursor(self):
        return _Cursor(self, self.conn.cursor())

    def execute(self, query, params=None):
        return self.conn.execute(query, params)

    def close(self):
        self.closed = True
        self.conn.close()


class _Cursor:
    def __init__(self, owner, cur):
        self.owner, self.cur = owner, cur

    def execute(self, query, params=None):
        if query.strip().upper() == "COMMIT":
            self.cur.execute(query)
            self.owner.broken = True
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return self.cur.execute(query, params)

    def __getattr__(self, name):
        return getattr(self.cur, name)


@pytest_twisted.ensureDeferred
async def test_a_locked_batch_whose_commit_reply_was_lost_is_not_refused_when_committed(pg, tmp_path):
    """The locked way's COMMIT reached the server and was committed; only its reply was lost. The
    batch is in the chain (with the session row and what was taken while the lock was awaited):
    its operations must not be refused (the chain would hold decisions for operations the gateway
    refused, trailing events logged "not recorded" that are), and nothing written twice."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    a = PostgresEventStore(pg, "node-a", reactor)
    a.start()
    holder = psycopg.connect(pg, autocommit=True)
    try:
        assert (await a.append(Event("test", "ok", data={"i": 0}))).seq == 1
        a._conn = CommitReplyLost(a._conn)
        holder.execute("SELECT pg_advisory_lock(%s)", (CHAIN_LOCK,))
        # A session row: the locked way whatever the cache.
        first = a.append(Event("test", "ok", data={"i": 1}), session={"id": "s1", "started_us": 1})
        await deferLater(reactor, 0.3, lambda: None)  # (the writer waits for the lock)
        a.append_trailing(Event("trail", "ok", data={"i": 2}))
        more = a.append(Event("test", "ok", data={"i": 3}))
        await deferLater(reactor, 0.1, lambda: None)
        holder.execute("SELECT pg_advisory_unlock(%s)", (CHAIN_LOCK,))
        stored = await defer.gatherResults([first, more])
        assert [s.seq for s in stored] == [2, 4]
        assert a.healthy
        assert (await a.append(Event("test", "ok", data={"i": 4}))).seq == 5
    finally:
        holder.close()
        await a.stop()
    assert sql(pg, "SELECT seq, data FROM hoopy.events ORDER BY seq") == [
        (i + 1, f'{{"i":{i}}}') for i in range(5)]
    chain(pg)
    verify(tmp_path, pg, 5)


@pytest_twisted.ensureDeferred
async def test_a_stop_while_the_store_cannot_write_ends_within_a_timeout_or_two(pg):
    """Another holder keeps the chain lock; thousands of appends wait. The stop refuses them all
    (none is written, none lost silently), but must not try them batch after batch, each waiting
    the lock timeout: with the defaults (5 s, max_pending 50,000, 512 a batch) that is a shutdown
    of eight minutes. (The batch under way, then two more tried: about three timeouts.)"""
    from twisted.internet import reactor

    a = PostgresEventStore(pg, "node-a", reactor, busy_timeout=0.3)
    a.start()
    holder = psycopg.connect(pg, autocommit=True)
    try:
        await a.append(Event("test", "ok"))
        holder.execute("SELECT pg_advisory_lock(%s)", (CHAIN_LOCK,))
        ds = [a.append(Event("test", "ok", data={"i": i})) for i in range(10 * a.max_batch)]
        outcome = defer.DeferredList(ds, consumeErrors=True)
        t0 = time.monotonic()
        await a.stop()
        took = time.monotonic() - t0
        results = await outcome
    finally:
        holder.close()
    assert all(not ok for ok, _ in results)  # every one refused, none left waiting
    assert sql(pg, "SELECT count(*) FROM hoopy.events") == [(1,)]
    assert took < 5 * a.busy_timeout, f"the stop took {took:.1f} s"


class ReplyLostAfterOthersAppend:
    """The writer's connection: its next statement is committed, then another node appends after
    it, then the connection is lost before the reply reaches this one."""

    def __init__(self, conn, other):
        self.conn, self.other = conn, other
        self.broken = self.closed = False

    def cursor(self):
        return self

    def execute(self, query, params=None):
        import threading

        from twisted.internet import reactor

        self.conn.execute(query, params)
        done = threading.Event()
        reactor.callFromThread(lambda: self.other().addBoth(lambda _: done.set()))
        assert done.wait(10)
        self.broken = True
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    def close(self):
        self.closed = True
        self.conn.close()


@pytest_twisted.ensureDeferred
async def test_a_lost_reply_after_which_another_node_appended_is_written_once(pg, tmp_path):
    """The one-statement way committed; another node's batch follows it before the reply is lost.
    The same statement sent again writes nothing (the head moved), the batch's last row is found:
    acknowledged at its seq, never written again after the other node's."""
    from twisted.internet import reactor

    a = PostgresEventStore(pg, "node-a", reactor)
    b = PostgresEventStore(pg, "node-b", reactor)
    a.start()
    b.start()
    try:
        assert (await a.append(Event("test", "ok", data={"i": 0}))).seq == 1
        a._conn = ReplyLostAfterOthersAppend(a._conn, lambda: b.append(Event("test", "ok", data={"b": 1})))
        stored = await a.append(Event("test", "ok", data={"i": 1}))
        assert stored.seq == 2 and a.healthy
        assert (await a.append(Event("test", "ok", data={"i": 2}))).seq == 4
    finally:
        await a.stop()
        await b.stop()
    assert [r[0] for r in sql(pg, "SELECT data FROM hoopy.events ORDER BY seq")] == [
        '{"i":0}', '{"i":1}', '{"b":1}', '{"i":2}']
    chain(pg)
    verify(tmp_path, pg, 4)
