"""Twisted's Deferreds awaited from asyncssh's asyncio code, the SSH gateway's one bridge."""
from __future__ import annotations

import asyncio

from twisted.logger import Logger

log = Logger()


async def wait(d):
    """Await a Twisted Deferred from asyncio code."""
    return await d.asFuture(asyncio.get_running_loop())


async def quiet(aw):
    """Await an event's recording where a failure must not stop what comes after (closing)."""
    try:
        await aw
    except Exception as e:  # the store is down: logged there; the channel still closes
        log.error("ssh: event not recorded: {e}", e=e)
