"""asyncpg (its own protocol implementation, binary by default) and its pool, with TLS on and off."""
from __future__ import annotations

import asyncio
import ssl
import threading

import pytest

from tests.compat import pg
from tests.compat.matrix import row

asyncpg = pytest.importorskip("asyncpg")


@pytest.fixture(scope="module")
def g(tmp_path_factory):
    gw = pg.start(tmp_path_factory.mktemp("asyncpg"))
    yield gw
    pg.stop(gw)


def run(coro_fn, timeout=60):
    """asyncpg on its own event loop in a thread (pytest-twisted runs one in this thread)."""
    box = {}

    def target():
        try:
            box["r"] = asyncio.run(asyncio.wait_for(coro_fn(), timeout))
        except BaseException as e:  # re-raised in the test's thread
            box["e"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join(timeout + 5)
    if "e" in box:
        raise box["e"]
    return box["r"]


def kw(g, tls, **extra):
    if tls:
        ctx = ssl.create_default_context(cafile=g.ca)
        extra["ssl"] = ctx
    else:
        extra["ssl"] = False
    return dict(host="127.0.0.1", port=g.port, user=g.agent.name, password=g.agent.token, database=g.db, **extra)


@row("postgres", "asyncpg", "prepared binary queries, server_settings hoopy.model, close() returns", tls=True)
def test_queries_attribution_close_tls(g):
    _queries_attribution_close(g, True)


@row("postgres", "asyncpg", "prepared binary queries, server_settings hoopy.model, close() returns", tls=False)
def test_queries_attribution_close_plain(g):
    _queries_attribution_close(g, False)


def _queries_attribution_close(g, tls):
    model = f"model-{tls}"

    async def go():
        conn = await asyncpg.connect(**kw(g, tls, server_settings={"hoopy.model": model,
                                                                    "application_name": "async-app"}))
        st = await conn.prepare("SELECT id, email, ssn, tags FROM customers c JOIN notes USING (id) WHERE id = $1")
        rows = [tuple(await st.fetchrow(i)) for i in (1, 2)]
        # never reaches the server as a setting
        leaked = await conn.fetchval("SELECT current_setting('hoopy.model', true)")
        await asyncio.wait_for(conn.close(), 5)
        return rows, leaked

    rows, leaked = run(go)
    assert rows == [(1, "[REDACTED]", "[REDACTED]", ["a", "b"]), (2, "[REDACTED]", "[REDACTED]", ["c"])]
    assert leaked in (None, "")
    s = [s for s in g.sessions() if s.get("model") == model]
    assert s and s[0]["application_name"] == "async-app", g.sessions()


@row("postgres", "asyncpg", "a pool: acquire, query, pool.close() returns", tls=True)
def test_pool_tls(g):
    _pool(g, True)


@row("postgres", "asyncpg", "a pool: acquire, query, pool.close() returns", tls=False)
def test_pool_plain(g):
    _pool(g, False)


def _pool(g, tls):
    async def go():
        pool = await asyncpg.create_pool(**kw(g, tls), min_size=2, max_size=3)
        got = await asyncio.gather(*(pool.fetchval("SELECT count(*) FROM public.notes") for _ in range(6)))
        await asyncio.wait_for(pool.close(), 5)
        return got

    assert run(go) == [2] * 6


@row("postgres", "asyncpg", "server pid, notifications from the right pid, a terminated backend closes the connection as the server does",
     tls=True)
def test_pid_notifications_and_termination(g):
    async def go():
        conn = await asyncpg.connect(**kw(g, True))
        pid = conn.get_server_pid()
        assert await conn.fetchval("SELECT pg_backend_pid()") == pid
        got = asyncio.get_running_loop().create_future()
        await conn.add_listener("compat_chan", lambda c, p, ch, payload: got.set_result((p, payload)))
        await conn.execute("NOTIFY compat_chan, 'hi'")
        note = await asyncio.wait_for(got, 5)
        other = await asyncpg.connect(**kw(g, False))
        await other.execute(f"SELECT pg_terminate_backend({pid})")
        await other.close()
        for _ in range(100):  # the server's FATAL reaches the client while it is idle
            if conn.is_closed():
                break
            await asyncio.sleep(0.05)
        try:
            await conn.fetchval("SELECT 1")
            err = None
        except Exception as e:  # the server's own error
            err = e
        await asyncio.wait_for(conn.close(), 5)
        return pid, note, err

    pid, note, err = run(go)
    assert note == (pid, "hi")
    # As directly against the server: the FATAL closed the connection, a later query is refused so.
    assert isinstance(err, asyncpg.exceptions.InterfaceError) and "connection is closed" in str(err), repr(err)
