"""hoopy/sockwrite.py: the private Twisted parts used for speed (immediate sends, reads registered
without callWithLogger), held to what they replace, on real loopback sockets."""
import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol

from hoopy import sockwrite


def test_the_private_parts_are_still_there():
    """A Twisted upgrade that changes addReader, _readOrWrite or tcp's write buffers must fail
    here, not slow the gateway down or break it quietly."""
    assert isinstance(reactor, AsyncioSelectorReactor)
    assert sockwrite.fast_reads_supported()


def test_a_retargeted_delayed_call_fires_the_new_callable_once_at_its_reset_time():
    """sockwrite.retarget sets DelayedCall's func/args/kw (http/stall.Stall hands the
    exchange's timer over): an upgrade that renames them or copies them at creation fails here."""
    from twisted.internet.task import Clock
    clock, fired = Clock(), []
    call = clock.callLater(5, fired.append, "old")
    sockwrite.retarget(call, lambda: fired.append("new"))
    call.reset(2)
    clock.advance(1.9)
    assert fired == []
    clock.advance(0.2)
    assert fired == ["new"] and not call.active()
    real = reactor.callLater(3600, fired.append, "old")
    try:
        assert {"func", "args", "kw"} <= set(vars(real))
        sockwrite.retarget(real, lambda: None)
        assert real.func is not None and real.args == () and real.kw == {}
    finally:
        real.cancel()


@pytest.fixture
def fast_reads(monkeypatch):
    monkeypatch.setattr(AsyncioSelectorReactor, "addReader", sockwrite._fast_add_reader)


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        if b"boom" in data:
            raise RuntimeError("a bug in a protocol")
        sockwrite.write_now(self.transport, data)


class Collect(protocol.Protocol):
    def __init__(self, want):
        self.want, self.got = want, bytearray()
        self.done, self.lost = defer.Deferred(), defer.Deferred()

    def dataReceived(self, data):
        self.got += data
        if len(self.got) >= self.want and not self.done.called:
            self.done.callback(bytes(self.got))

    def connectionLost(self, reason):
        self.lost.callback(reason.type)


async def _pair(want):
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Echo))
    client = Collect(want)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), client)
    return port, client


@pytest_twisted.ensureDeferred
async def test_bytes_relayed_with_fast_reads_and_immediate_sends_arrive_whole_and_in_order(fast_reads):
    """Small writes go out at once, a large one the kernel does not take whole continues through
    the transport's buffer: every byte, in order, on both paths."""
    payload = b"".join(i.to_bytes(4, "big") for i in range(1 << 20))  # 4 MiB: more than a send takes
    port, client = await _pair(len(payload) + 5)
    try:
        assert type(client.transport) in sockwrite._PLAIN  # else write_now would never send at once
        for name in ("dataBuffer", "_tempDataBuffer", "TLS", "connected", "disconnecting", "_writeDisconnected",
                     "socket"):
            assert hasattr(client.transport, name), name
        client.transport.write(b"hello")
        for i in range(0, len(payload), 65536):
            client.transport.write(payload[i:i + 65536])
        got = await client.done
        assert got == b"hello" + payload
    finally:
        client.transport.loseConnection()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_protocol_that_raises_is_disconnected_and_the_reactor_serves_on(fast_reads):
    """What callWithLogger did that matters: an exception in dataReceived is logged and that
    connection closed; others go on."""
    from twisted.logger import globalLogPublisher

    logged = []
    globalLogPublisher.addObserver(logged.append)
    port, bad = await _pair(1)
    port2, good = await _pair(4)
    try:
        bad.transport.write(b"boom")
        assert await bad.lost is not None
        good.transport.write(b"fine")
        assert await good.done == b"fine"
    finally:
        globalLogPublisher.removeObserver(logged.append)
        good.transport.loseConnection()
        await port.stopListening()
        await port2.stopListening()
    failures = [e["log_failure"] for e in logged if "log_failure" in e]
    assert any(f.check(RuntimeError) for f in failures)


@pytest_twisted.ensureDeferred
async def test_thread_caller_runs_on_the_reactor_in_order_and_logs_what_raises():
    import threading

    from twisted.logger import globalLogPublisher

    call = sockwrite.thread_caller(reactor)
    assert call != reactor.callFromThread  # the asyncio reactor: the direct hand-off
    seen, done = [], defer.Deferred()
    logged = []
    globalLogPublisher.addObserver(logged.append)

    def on_reactor(i):
        seen.append((i, threading.current_thread() is threading.main_thread()))
        if i == 2:
            raise RuntimeError("a bug in a callback")
        if i == 499:
            done.callback(None)

    def worker():
        for i in range(500):
            call(on_reactor, i)

    try:
        threading.Thread(target=worker).start()
        await done
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert seen == [(i, True) for i in range(500)]
    assert any(e.get("log_failure") is not None and e["log_failure"].check(RuntimeError) for e in logged)


@pytest_twisted.ensureDeferred
async def test_call_later_moves_asyncios_timer_only_for_a_sooner_call(monkeypatch):
    """Twisted's callLater on asyncio rescheduled asyncio's timer on every call (a clock-read race,
    see sockwrite._call_later); hoopy's does only when the new call is due first, and that call
    still fires on time."""
    import time

    monkeypatch.setattr(AsyncioSelectorReactor, "callLater", sockwrite._call_later)
    moved = []
    real = AsyncioSelectorReactor._reschedule
    monkeypatch.setattr(AsyncioSelectorReactor, "_reschedule", lambda self: (moved.append(1), real(self)))
    first = reactor.callLater(10, lambda: None)  # due before the ones below
    try:
        moved.clear()
        later = [reactor.callLater(30, lambda: None) for _ in range(20)]
        assert moved == []
        for c in later:
            c.cancel()
        # asyncio's timer may be set sooner than 0.05 s already: for a call another test of this
        # worker left pending, or one it cancelled (the timer is not moved back for a cancel; it
        # fires, finds nothing, and is set again). This call is made due before the timer as it is
        # (the rule under test), after waiting out a timer due within 10 ms.
        loop = reactor._asyncioEventloop
        for _ in range(100):
            at, now = reactor._scheduledAt, loop.time()
            if at is not None and at - now > 0.01:
                break
            await task.deferLater(reactor, 0.02, lambda: None)
        delay = min(0.05, (at - now) / 2)
        moved.clear()
        t0 = time.monotonic()
        d = defer.Deferred()
        reactor.callLater(delay, d.callback, None)
        assert moved == [1], (  # due first: the timer moves
            f"at {at - now:.4f} s, delay {delay:.4f}; callLater is hoopy's: "
            f"{type(reactor).callLater is sockwrite._call_later}; on the instance: "
            f"{sorted(k for k in ('callLater', '_reschedule') if k in vars(reactor))}")
        await d
        assert delay * 0.8 <= time.monotonic() - t0 < 2
    finally:
        first.cancel()


@pytest_twisted.ensureDeferred
async def test_the_wake_up_socket_is_read_once_a_wake_up_and_nothing_is_lost():
    """thread_caller reads asyncio's wake-up socket once a wake-up (no recv to EAGAIN): the loop's
    own reader was the code it replaces, and bursts larger than one read (bytes left unread) still
    wake the loop until every call ran."""
    import threading

    loop = reactor._asyncioEventloop
    sockwrite.thread_caller(reactor)
    assert loop._hoopy_read_once
    key = loop._selector.get_key(loop._ssock.fileno())
    assert key.data[0]._callback.__name__ == "read_once"
    seen, done = [], defer.Deferred()

    def on_reactor(i):
        seen.append(i)
        if i == 19_999:
            done.callback(None)

    def worker():
        call = sockwrite.thread_caller(reactor)  # (installed once: a second call changes nothing)
        for i in range(20_000):  # far more than 4096 wake-up bytes between two reads
            call(on_reactor, i)

    threading.Thread(target=worker).start()
    await done
    assert seen == list(range(20_000))
    # A byte left makes the socket readable again: the loop reads on until none is left.
    import socket as _s

    from twisted.internet import task
    for _ in range(20):
        await task.deferLater(reactor, 0.001, lambda: None)
    try:
        leftover = loop._ssock.recv(65536, _s.MSG_PEEK)
    except BlockingIOError:
        leftover = b""
    assert leftover == b""


def test_the_wake_up_read_it_replaces_is_asyncios_own():
    import asyncio.selector_events as se
    import inspect

    assert inspect.getsource(se.BaseSelectorEventLoop._read_from_self) == sockwrite._SELF_READ
