"""The PostgreSQL store's one-round-trip batch (hoopy/audit/pgstore.py): an events-only batch is
linked to the head this node last left and written only if that is still the head; otherwise it
goes the locked way. Against the real server, as tests/test_pgstore.py."""
import psycopg
import pytest
import pytest_twisted
from twisted.internet import defer

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


class LostReply:
    """A connection whose next statement is sent (or not) and then the connection is lost,
    the reply with it."""

    def __init__(self, conn, executes: bool):
        self.conn, self.executes = conn, executes
        self.broken = self.closed = False

    def cursor(self):
        return self

    def execute(self, query, params=None):
        if self.executes:
            self.conn.execute(query, params)
        self.broken = True
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    def close(self):
        self.closed = True
        self.conn.close()


@pytest_twisted.ensureDeferred
async def test_a_batch_whose_reply_was_lost_is_written_once(pg, tmp_path):
    """The one statement sent, its connection then lost before the reply: committed or not, it
    is sent again on a new connection, and is in the chain once."""
    from twisted.internet import reactor

    a = PostgresEventStore(pg, "node-a", reactor)
    a.start()
    try:
        await a.append(Event("test", "ok"))
        a._conn = LostReply(a._conn, executes=True)  # (committed: the server died before replying)
        stored = await a.append(Event("test", "ok", data={"once": 1}))
        assert stored.seq == 2 and a.healthy
        a._conn = LostReply(a._conn, executes=False)  # (never got there)
        stored = await a.append(Event("test", "ok", data={"once": 2}))
        assert stored.seq == 3 and a.healthy
        assert (await a.append(Event("test", "ok"))).seq == 4
    finally:
        await a.stop()
    assert sql(pg, "SELECT seq FROM hoopy.events WHERE data IN (%s, %s) ORDER BY seq",
               '{"once":1}', '{"once":2}') == [(2,), (3,)]
    chain(pg)
    verify(tmp_path, pg, 4)


def test_the_head_check_reads_the_index_however_old_the_statistics(pg):
    """The statistics lag behind the chain's end (analysed when it was short): the check still
    steps to the last seq in the index, never reads the table through (a batch's cost would grow
    with the chain)."""
    from hoopy.audit.pgstore import INSERT_AFTER, _arrays, connect, ensure_schema

    with connect(pg) as c:
        ensure_schema(c)
        c.execute("ALTER TABLE hoopy.events SET (autovacuum_enabled = false)")
        row = [1, 1, "n", "s", "i", "c", "p", "peer", "test", "ok", "{}", "{}", "0" * 64, "1" * 64, "sig"]
        c.execute("INSERT INTO hoopy.events SELECT g, 1, 'n', NULL, NULL, NULL, NULL, NULL, 'test', 'ok', '{}',"
                  " '{}', 'p', 'h' || g FROM generate_series(1, 10) g")
        c.execute("ANALYZE hoopy.events")
        c.execute("INSERT INTO hoopy.events SELECT g, 1, 'n', NULL, NULL, NULL, NULL, NULL, 'test', 'ok', '{}',"
                  " '{}', 'p', 'h' || g FROM generate_series(11, 20000) g")
        # The plan psycopg's prepared statement comes to: a generic one (the parameters unknown).
        parts = INSERT_AFTER.split("%b")
        c.execute("PREPARE after AS " + "".join(f"{p}${i}" for i, p in enumerate(parts[:-1], 1)) + parts[-1])
        c.execute("SET plan_cache_mode = force_generic_plan")
        row[0] = 20001
        args = _arrays([row]) + [20000, 20000, 20000, "h20000"]
        execute = f"EXECUTE after ({', '.join(['%s'] * len(args))})"
        cur = psycopg.ClientCursor(c)  # (EXPLAIN EXECUTE takes no bound parameters: literals)
        plan = "\n".join(r[0] for r in cur.execute("EXPLAIN " + execute, args).fetchall())
        assert "Seq Scan" not in plan, plan
        assert cur.execute(execute, args).rowcount == 1


@pytest_twisted.ensureDeferred
async def test_what_is_appended_while_the_lock_is_awaited_goes_in_with_that_turn(pg, tmp_path):
    """Nodes that take turns at the chain lock: what a node is given while it waits for its turn
    is written in the same transaction (one xmin), not in a turn of its own."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    a = PostgresEventStore(pg, "node-a", reactor)
    a.start()  # (its first batch reads the head: the locked way)
    holder = psycopg.connect(pg, autocommit=True)
    try:
        holder.execute("SELECT pg_advisory_lock(%s)", (CHAIN_LOCK,))
        first = a.append(Event("test", "ok", data={"i": 0}))
        await deferLater(reactor, 0.3, lambda: None)  # (the writer waits for the lock)
        assert not first.called
        more = [a.append(Event("test", "ok", data={"i": i})) for i in (1, 2)]
        await deferLater(reactor, 0.1, lambda: None)
        holder.execute("SELECT pg_advisory_unlock(%s)", (CHAIN_LOCK,))
        stored = await defer.gatherResults([first, *more])
        assert [s.seq for s in stored] == [1, 2, 3]
    finally:
        holder.close()
        await a.stop()
    assert len({x for (x,) in sql(pg, "SELECT xmin::text FROM hoopy.events")}) == 1
    chain(pg)
    verify(tmp_path, pg, 3)


@pytest_twisted.ensureDeferred
async def test_three_nodes_mixed_batches_one_chain(pg, tmp_path):
    """Three nodes at once, forty rounds: events, trailing events, session and approval rows, so
    batches go both ways and nodes take turns: every append durable, the chain whole, verified."""
    import random

    from twisted.internet import reactor

    stores = [PostgresEventStore(pg, f"n{i}", reactor) for i in range(3)]
    for s in stores:
        s.start()
    rnd = random.Random(7)
    total = 0
    try:
        for r in range(40):
            ds = []
            for i, s in enumerate(stores):
                for k in range(rnd.randint(1, 60)):
                    x = rnd.random()
                    if x < 0.05:
                        ds.append(s.append(Event("session.start", "ok"),
                                           session={"id": f"s{r}-{i}-{k}", "started_us": 1}))
                    elif x < 0.08:
                        aid = f"a{r}-{k}"
                        ds.append(s.append(Event("op", "held"), approval={
                            "id": aid, "requester": "x", "operation": "o", "state": "pending", "created_us": 1}))
                    else:
                        ds.append(s.append(Event("op", "ok", data={"r": r, "i": i, "k": k})))
                    if rnd.random() < 0.3:
                        s.append_trailing(Event("trail", "ok"))
                        total += 1
            got = await defer.DeferredList(ds, consumeErrors=True)
            assert all(ok for ok, _ in got), [v for ok, v in got if not ok][:3]
            total += len(ds)
    finally:
        for s in stores:
            await s.stop()
    rows = chain(pg)
    assert len(rows) == total
    verify(tmp_path, pg, total)
