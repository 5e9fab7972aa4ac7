"""The asyncio event loop under Twisted's asyncio reactor: uvloop when it is installed, else the
standard library's.

uvloop runs the loop itself (the poll, the ready queue, timers, the wake-up from other threads)
in C on libuv; the stdlib's loop runs ``_run_once`` and its handles in Python on every turn.
Through the gateway that is about a tenth of the reactor thread's instructions a request or
statement (docs/performance.md, "The event loop round"). Twisted and asyncssh only use the loop's
public API (``add_reader``, ``call_at``, ``call_soon_threadsafe``, ...), which both loops have.

``HOOPY_EVENT_LOOP`` chooses: ``uvloop`` (required: refused if it cannot be imported),
``asyncio`` (the standard library's), or unset (uvloop if it imports, else asyncio).
"""
from __future__ import annotations

import asyncio
import os

CHOICES = ("uvloop", "asyncio")


class EventLoopError(Exception):
    """HOOPY_EVENT_LOOP names a loop this process cannot run."""


def chosen(environ=None) -> str:
    """The loop HOOPY_EVENT_LOOP asks for: "uvloop", "asyncio" or "" (the best available)."""
    want = (os.environ if environ is None else environ).get("HOOPY_EVENT_LOOP", "").strip().lower()
    if want and want not in CHOICES:
        raise EventLoopError(f"HOOPY_EVENT_LOOP={want!r}: it must be one of {', '.join(CHOICES)} (or unset)")
    return want


def new_loop(environ=None) -> asyncio.AbstractEventLoop:
    want = chosen(environ)
    if want != "asyncio":
        try:
            import uvloop
        except ImportError as e:
            if want == "uvloop":
                raise EventLoopError(f"HOOPY_EVENT_LOOP=uvloop, but uvloop cannot be imported: {e}") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def name(loop) -> str:
    """What a log line says of the loop: "uvloop" or "asyncio"."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def problem(environ=None) -> str | None:
    """Why the gateway would not start on this HOOPY_EVENT_LOOP (``hoopy check`` says so), or None."""
    try:
        if chosen(environ) == "uvloop":
            new_loop(environ).close()
    except EventLoopError as e:
        return str(e)
    return None


def install_reactor(environ=None) -> None:
    """Twisted's asyncio reactor on the chosen loop, unless a reactor is installed already (the
    choice is read all the same: a wrong one is refused whoever installed the reactor)."""
    import sys

    chosen(environ)
    if "twisted.internet.reactor" in sys.modules:
        return
    from twisted.internet import asyncioreactor

    loop = new_loop(environ)
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    if name(loop) == "uvloop":
        loop.call_soon(_reap_on_sigchld, loop)  # (runs once the loop has set its own wake-up fd)


def _reap_on_sigchld(loop) -> None:
    """Child processes reaped when SIGCHLD comes, on uvloop too.

    Twisted learns of SIGCHLD through ``signal.set_wakeup_fd`` (a byte on its own pipe, its handler
    a no-op); uvloop, once running, points the wake-up fd at its own socket, so Twisted only reaped a
    child when the child's pipes closed after it had exited, or at the next spawn. A child that
    closes its pipes and exits later (an MCP server told to stop) was never seen to end, and a
    gateway waiting on it at shutdown hung. uvloop refuses ``add_signal_handler(SIGCHLD)``; a
    Python handler is run by uvloop when its wake-up socket reads the signal, and hands the
    reaping to the loop."""
    import signal

    from twisted.internet.process import reapAllProcesses

    def on_sigchld(signum, frame):
        loop.call_soon(reapAllProcesses)

    try:
        signal.signal(signal.SIGCHLD, on_sigchld)
    except ValueError:  # (not the main thread: uvloop does not take signals there either)
        return
    signal.siginterrupt(signal.SIGCHLD, False)  # (as Twisted's: no EINTR for it elsewhere)
    reapAllProcesses()  # (a child that ended before the handler was in)
