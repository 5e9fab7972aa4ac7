"""Write to a TCP transport now, not on the next reactor turn.

Twisted's ``transport.write`` only buffers: it registers the socket for
writability and sends on the next loop iteration, then unregisters it. On
the asyncio reactor that is two ``epoll_ctl`` calls and a loop turn for
every small reply, about a quarter of the CPU of a request/reply proxy.
When nothing is buffered, sending right away is what the transport would
do next anyway; whatever the kernel does not take goes through the normal
path, with its backpressure. TLS transports and anything else take the
normal path.
"""
from __future__ import annotations

import errno

from twisted.internet import tcp
from twisted.internet.posixbase import PosixReactorBase
from twisted.logger import Logger

_log = Logger()

_PLAIN = (tcp.Server, tcp.Client)


def write_now(transport, data: bytes) -> None:
    if (type(transport) in _PLAIN and data and not transport.TLS and transport.connected
            and not transport.disconnecting and not transport._writeDisconnected
            and not transport.dataBuffer and not transport._tempDataBuffer):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0  # EAGAIN, or an error the transport reports on its own path
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def _fast_add_reader(self, reader):
    """AsyncioSelectorReactor.addReader, registering ``_readOrWrite`` itself: Twisted wraps every
    read in ``log.callWithLogger`` (the transport's logPrefix, a copied log context, a pushed
    context frame: a dozen Python calls per read, two reads a statement), which only names the
    ``system`` of legacy ``twisted.python.log`` messages. ``_readOrWrite`` already catches and
    logs what ``doRead`` raises and disconnects the transport, as before."""
    if reader in self._readers.keys() or reader in self._continuousPolling._readers:
        return
    fd = reader.fileno()
    try:
        self._asyncioEventloop.add_reader(fd, self._readOrWrite, reader, True)
        self._readers[reader] = fd
    except OSError as e:
        self._unregisterFDInAsyncio(fd)
        if e.errno == errno.EPERM:
            self._continuousPolling.addReader(reader)
        else:
            raise


def _call_later(self, delay, callable, *args, **kwargs):
    """AsyncioSelectorReactor.callLater, rescheduling asyncio's timer only when the new call is due
    before it. Twisted's compares ``loop.time() + self.timeout()`` (the earliest call's delay, read
    on another clock just after) with the time it scheduled: that sum comes out smaller by the
    microseconds between the two clock reads every time, so every callLater cancelled asyncio's
    TimerHandle and made a new one (two a request over HTTP: 8 us here, a tenth of the timer work).
    The new call's own due time says the same without the race: a call due later than the timer
    needs nothing, one due before it moves the timer, as before."""
    dc = PosixReactorBase.callLater(self, delay, callable, *args, **kwargs)
    at = self._scheduledAt
    if at is None or self._asyncioEventloop.time() + (delay if delay > 0.0 else 0.0) < at:
        self._reschedule()
    return dc


def install_fast_reads(reactor) -> bool:
    """Use ``_fast_add_reader`` on the asyncio reactor (for readers added from now on). False,
    and nothing changed, when the private parts it replaces are not what it was written for."""
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor) or not fast_reads_supported():
        return False
    setattr(type(reactor), "addReader", _fast_add_reader)  # the one reactor class of this process
    setattr(type(reactor), "callLater", _call_later)
    return True


def fast_reads_supported() -> bool:
    """The private names ``_fast_add_reader`` relies on are still there (tests/test_sockwrite.py
    fails loudly when a Twisted upgrade changes them)."""
    import inspect

    from twisted.internet import asyncioreactor

    cls = asyncioreactor.AsyncioSelectorReactor
    try:
        source = inspect.getsource(cls.addReader)
    except (OSError, TypeError):
        return False
    try:
        later = inspect.getsource(cls.callLater)
    except (OSError, TypeError):
        return False
    return (all(hasattr(cls, n) for n in ("_readOrWrite", "_unregisterFDInAsyncio", "_reschedule"))
            and "callWithLogger, reader, self._readOrWrite, reader, True" in source
            and "_continuousPolling" in source and "self._readers[reader] = fd" in source
            and "PosixReactorBase.callLater(self, delay, callable, *args, **kwargs)" in later
            and "abs_time < self._scheduledAt" in later and "self._reschedule()" in later
            and "self._scheduledAt = abs_time" in inspect.getsource(cls._reschedule))


def thread_caller(reactor):
    """``reactor.callFromThread`` for a hand-off made once per statement (the store's writer
    thread giving back a durable batch). On the asyncio reactor it is asyncio's own
    ``call_soon_threadsafe``: Twisted's goes through ``callLater(0)`` (a DelayedCall, the
    loop's timer rescheduled twice and one more loop turn, about 40 Python calls) for every call.
    What the callable raises is logged, as Twisted's would be."""
    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is None or not callable(getattr(loop, "call_soon_threadsafe", None)):
        return reactor.callFromThread

    _read_self_once(loop)

    def call(f, *args):
        loop.call_soon_threadsafe(_logged, f, args)

    return call


_SELF_READ = """    def _read_from_self(self):
        while True:
            try:
                data = self._ssock.recv(4096)
                if not data:
                    break
                self._process_self_data(data)
            except InterruptedError:
                continue
            except BlockingIOError:
                break
"""


def _read_self_once(loop) -> bool:
    """asyncio's wake-up socket read once per wake-up, not until EAGAIN: its ``_read_from_self``
    loops to a second ``recv`` that raises BlockingIOError, for every hand-back of a durable batch
    (a system call and an exception a statement). The selector is level-triggered (epoll, poll,
    select), so a byte left unread wakes the loop again at once. Only where ``_read_from_self`` is
    the code this was written for (tests/test_sockwrite.py); False and nothing changed otherwise."""
    import inspect
    import selectors

    if getattr(loop, "_hoopy_read_once", False):
        return True
    try:
        same = inspect.getsource(type(loop)._read_from_self) == _SELF_READ
    except (AttributeError, OSError, TypeError):
        return False
    ssock = getattr(loop, "_ssock", None)
    selector = getattr(loop, "_selector", None)
    if not same or ssock is None or type(selector) not in (getattr(selectors, "EpollSelector", None),
                                                           selectors.PollSelector, selectors.SelectSelector):
        return False
    recv, process = ssock.recv, loop._process_self_data

    def read_once():
        try:
            data = recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        if data:
            process(data)

    loop._add_reader(ssock.fileno(), read_once)  # replaces the loop's own reader of that socket
    loop._hoopy_read_once = True
    return True


def _logged(f, args):
    try:
        f(*args)
    except Exception:
        _log.failure("while handing a result from a thread to the reactor")


def retarget(call, func) -> None:
    """Point a pending DelayedCall at ``func()`` (no arguments) rather than cancel it and make
    another: one timer a request where a timeout changes hands (http/stall.Stall).
    ``func``/``args``/``kw`` are plain attributes DelayedCall calls when it fires, not documented
    API: tests/test_sockwrite.py fails if an upgrade changes that."""
    call.func, call.args, call.kw = func, (), {}
