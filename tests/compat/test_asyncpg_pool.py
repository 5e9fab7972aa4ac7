"""asyncpg's connection pool through hoopy: every release resets the connection with
``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;``, which needs no
rule of its own and leaves the search path known."""
from __future__ import annotations

import asyncio
import ssl
import threading

import pytest

from tests.compat.matrix import row
from tests.compat.pg_gateway import gateway_fixture

asyncpg = pytest.importorskip("asyncpg")

gw = gateway_fixture(["read public.*", "read pg_catalog.*"])


def in_thread(coro_fn):
    """asyncpg on its own event loop (pytest-twisted runs one in this thread)."""
    box = {}

    def target():
        try:
            box["r"] = asyncio.run(coro_fn())
        except BaseException as e:  # re-raised in the test's thread
            box["e"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join(90)
    assert not t.is_alive(), "asyncpg did not finish"
    if "e" in box:
        raise box["e"]
    return box["r"]


def pool_round(g, tls: bool):
    async def run():
        ctx = None
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        pool = await asyncpg.create_pool(host="127.0.0.1", port=g.port, user=g.agent.name,
                                         password=g.agent.token, database="x", ssl=ctx or False,
                                         min_size=1, max_size=1)
        try:
            seen = []
            for _ in range(3):
                async with pool.acquire() as conn:
                    # The same connection each time (max_size=1), reset in between.
                    seen.append(await conn.fetchval("SELECT count(*) FROM customers"))
                    seen.append(await conn.fetchval("SELECT ssn FROM customers WHERE id = $1", 1))
                    # A search path left behind is reset by the pool's RESET ALL.
                    await conn.execute("SET search_path = other, public")
                    seen.append(await conn.fetchval("SELECT count(*) FROM public.customers"))
            return seen
        finally:
            await asyncio.wait_for(pool.close(), 20)

    return in_thread(run)


@row("postgres", "asyncpg", "a pool's reset on release (RESET ALL etc.) needs no rule and leaves the search path "
     "known: unqualified names work after it", tls=False)
def test_asyncpg_pool_resets(gw):
    assert pool_round(gw, tls=False) == [2, "[REDACTED]", 2] * 3


@row("postgres", "asyncpg", "a pool's reset on release (RESET ALL etc.) needs no rule and leaves the search path "
     "known: unqualified names work after it", tls=True)
def test_asyncpg_pool_resets_tls(gw):
    assert pool_round(gw, tls=True) == [2, "[REDACTED]", 2] * 3
