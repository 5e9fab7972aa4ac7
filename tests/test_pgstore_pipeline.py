"""The PostgreSQL store's one-round-trip batch (hoopy/audit/pgstore.py): an events-only batch is
linked to the head this node last left and written only if that is still the head; otherwise it
goes the locked way. Against the real server, as tests/test_pgstore.py."""
import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer

from hoopy.audit import pgstore
from hoopy.audit.events import Event
from hoopy.audit.pgstore import CHAIN_LOCK, PostgresEventStore
from hoopy.audit.store import StoreError
from tests.test_pgstore import pg, pg_config, run, sql  # noqa: F401 (pg: the fixture)


def spy_optimistic(store):
    """Counts the batches the one-round-trip way wrote (and the ones it handed on)."""
    counts = {"written": 0, "missed": 0}
    real = store._optimistic

    def spy(*args):
        done = real(*args)
        counts["written" if done is not None else "missed"] += 1
        return done

    store._optimistic = spy
    return counts


def chain(url):
    rows = sql(url, "SELECT seq, prev, hash FROM hoopy.events ORDER BY seq")
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1)), "a gap in the chain"
    for before, after in zip(rows, rows[1:]):
        assert after[1] == before[2], f"event {after[0]} is not linked to event {before[0]}"
    return rows


def verify(tmp_path, url, n):
    r = run(pg_config(tmp_path, url, "node-a"), "audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"ok: {n} events, chain intact up to event {n}"), r.stdout


@pytest_twisted.ensureDeferred
async def test_a_stale_head_is_never_chained_onto(pg, tmp_path):
    from twisted.internet import reactor

    a = PostgresEventStore(pg, "node-a", reactor)
    b = PostgresEventStore(pg, "node-b", reactor)
    counts = spy_optimistic(a)
    a.start()
    b.start()
    try:
        assert (await a.append(Event("test", "ok"))).seq == 1  # (the first batch reads the head)
        assert (await a.append(Event("test", "ok"))).seq == 2
        assert counts == {"written": 1, "missed": 0}
        for _ in range(3):
            await b.append(Event("test", "ok", data={"node": "b"}))
        # A's cached head (2) is no longer the head: nothing written that way, then chained onto 5.
        stored = await a.append(Event("test", "ok"))
        assert stored.seq == 6 and counts == {"written": 1, "missed": 1}
        # Found contended, A reads the head under the lock; that it was its own lets it guess again.
        assert (await a.append(Event("test", "ok"))).seq == 7
        assert (await a.append(Event("test", "ok"))).seq == 8
        assert counts == {"written": 2, "missed": 1}
        # Many at once (one statement whatever the batch's size), both nodes.
        ds = [a.append(Event("test", "ok", data={"i": i})) for i in range(700)]
        ds += [b.append(Event("test", "ok", data={"i": i})) for i in range(300)]
        stored = await defer.gatherResults(ds)
        assert sorted(s.seq for s in stored) == list(range(9, 1009))
    finally:
        await a.stop()
        await b.stop()
    rows = chain(pg)
    assert rows[5][1] == rows[4][2]
    verify(tmp_path, pg, 1008)


@pytest_twisted.ensureDeferred
async def test_events_gone_under_the_cached_head_leave_no_gap(pg, tmp_path):
    """The head this node left is not there any more (a store restored from an older copy):
    nothing after it is not enough, it must be there too."""
    from twisted.internet import reactor

    a = PostgresEventStore(pg, "node-a", reactor)
    counts = spy_optimistic(a)
    a.start()
    try:
        for i in range(5):
            assert (await a.append(Event("test", "ok", data={"i": i}))).seq == i + 1
        sql(pg, "DELETE FROM hoopy.events WHERE seq > 3")
        assert (await a.append(Event("test", "ok"))).seq == 4
        assert counts["missed"] == 1
    finally:
        await a.stop()
    chain(pg)
    verify(tmp_path, pg, 4)


@pytest_twisted.ensureDeferred
async def test_the_chain_lock_held_elsewhere_refuses_both_ways_then_recovers(pg, tmp_path):
    from twisted.internet import reactor

    a = PostgresEventStore(pg, "node-a", reactor, busy_timeout=0.5)
    counts = spy_optimistic(a)
    a.start()
    holder = psycopg.connect(pg, autocommit=True)
    try:
        await a.append(Event("test", "ok"))
        holder.execute("SELECT pg_advisory_lock(%s)", (CHAIN_LOCK,))
        with pytest.raises(StoreError, match="lock timeout"):
            await a.append(Event("test", "ok"))  # the one-round-trip way
        assert not a.healthy
        with pytest.raises(StoreError, match="lock timeout"):
            await a.append(Event("test", "ok"))  # the head forgotten: the locked way
        assert counts == {"written": 0, "missed": 0}
        holder.execute("SELECT pg_advisory_unlock(%s)", (CHAIN_LOCK,))
        assert (await a.append(Event("test", "ok"))).seq == 2  # the refused ones took no place
        assert (await a.append(Event("test", "ok"))).seq == 3
        assert a.healthy and counts["written"] == 1
    finally:
        holder.close()
        await a.stop()
    chain(pg)
    verify(tmp_path, pg, 3)


@pytest_twisted.ensureDeferred
async def test_a_batch_committed_before_its_reply_was_lost_is_not_written_twice(pg, tmp_path):
    """A batch sent whole and committed, its connection then lost before any reply (a server
    that died just after COMMIT): the retry on a new connection finds it, and writes it once."""
    from twisted.internet import reactor

    a = PostgresEventStore(pg, "node-a", reactor)
    counts = spy_optimistic(a)
    a.start()
    real = a._pipeline
    lose = []

    def pipeline(conn, send):
        out = real(conn, send)
        if lose:
            lose.pop()
            raise pgstore._IdleConnectionLost() from psycopg.OperationalError("lost")
        return out

    a._pipeline = pipeline
    try:
        await a.append(Event("test", "ok"))
        lose.append(1)
        stored = await a.append(Event("test", "ok", data={"once": True}))
        # (the one-round-trip way raised; the retry found the batch and returned its results)
        assert stored.seq == 2 and a.healthy and counts == {"written": 0, "missed": 0}
        assert (await a.append(Event("test", "ok"))).seq == 3
        assert counts["written"] == 1  # and the head it returned was kept
    finally:
        await a.stop()
    assert sql(pg, "SELECT count(*) FROM hoopy.events WHERE data = %s", '{"once":true}') == [(1,)]
    chain(pg)
    verify(tmp_path, pg, 3)
