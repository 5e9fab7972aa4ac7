"""WebSocket upgrades: judged as a GET on their path, then relayed as raw bytes.

The upgrade request goes upstream on its own connection (not the pool), with
the same header rules as any request. Only when the upstream answers
``101 Switching Protocols`` is the client connection taken over and the two
connected byte for byte, with backpressure both ways. Any other answer ends
the exchange with a 502: the client connection never turns into an
unjudged tunnel.
"""
from __future__ import annotations

import time

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger

from hoopy.http.checks import Refusal
from hoopy.http.record import write_record
from hoopy.http.response_body import reason_text
from hoopy.http.websocket import (SUBPROTOCOL, offered_subprotocols, websocket_accept, websocket_key,
                                  with_subprotocol_answer)
from hoopy.session import IN, OUT
from hoopy.transport import stream

log = Logger()

MAX_HEAD = 64 * 1024


def request_head(method: bytes, target: bytes, headers) -> bytes:
    """The request head of ``headers`` ((name, value) pairs)."""
    lines = [method + b" " + target + b" HTTP/1.1"]
    for name, v in headers:
        lines.append(name + b": " + v)
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def relay(ex):
    """A judged WebSocket upgrade: relayed byte for byte once the upstream says 101."""

    up = UpstreamSide(request_head(b"GET", ex.target(), ex.upstream_headers(upgrade=True)))
    result = None
    for d in (ex.site.raw_endpoint().connect(OneConnection(up)), up.answered):
        ex.arm_timer(d)
        try:
            result = await ex.wait(d, cancel=True)
        except Exception as e:
            if up.transport is not None:
                up.transport.abortConnection()
            if ex.gone:
                raise defer.CancelledError()
            if ex.timed_out:
                raise Refusal(504, f"the upstream did not answer within {ex.settings.upstream_timeout:g}s", "error")
            raise Refusal(502, f"the upstream could not be reached: {reason_text(e)}", "error")
        finally:
            ex.disarm_timer()
    status, head, rest = result
    ex.record.status = status
    if status != 101:
        up.transport.abortConnection()
        raise Refusal(502, f"the upstream answered the WebSocket upgrade with {status}, not 101", "error")
    said = [ln.partition(b":")[2].strip().lower() for ln in head.split(b"\r\n")[1:]
            if ln.partition(b":")[0].strip().lower() == b"upgrade"]
    if said != [b"websocket"]:
        up.transport.abortConnection()
        raise Refusal(502, "the upstream switched to another protocol than WebSocket: no tunnel", "error")
    accept = [ln.partition(b":")[2].strip() for ln in head.split(b"\r\n")[1:]
              if ln.partition(b":")[0].strip().lower() == b"sec-websocket-accept"]
    if accept != [websocket_accept(websocket_key(ex.hdrs) or b"")]:
        # A 101 from an app that never switched (a route that reflects a status) would make the
        # tunnel a channel for raw requests to any path, none judged: the handshake must be proven.
        up.transport.abortConnection()
        raise Refusal(502, "the upstream's 101 does not carry the Sec-WebSocket-Accept of the handshake: "
                           "no tunnel", "error")
    session, timer, site, channel = ex.session, Timer(), ex.site, ex.channel

    def lost():
        session.event("websocket.closed", "ok", path=ex.path, duration_ms=timer.ms(),
                      bytes_from_upstream=up.bytes_in + len(rest), bytes_to_upstream=client.bytes_out
                      ).addErrback(_not_recorded)
        session.count_bytes(OUT, up.bytes_in + len(rest))
        session.count_bytes(IN, client.bytes_out)
        site.channel_closed(channel)

    head = with_subprotocol_answer(head, SUBPROTOCOL in offered_subprotocols(ex.hdrs))
    head = site.scrub_header(head)  # an injected credential echoed in the 101 stays here
    client = ex.sink.take_over(up, head + rest, lost)
    ex.record.response_bytes = len(head) + len(rest)
    ex.finished = True
    ex.record.outcome = "upgraded"
    write_record(ex)


def _not_recorded(f):
    log.error("websocket close not recorded: {e}", e=f.getErrorMessage())


class UpstreamSide(Protocol):
    """The upstream end: sends the upgrade request, waits for 101, then relays."""

    def __init__(self, head: bytes):
        self.head = head
        self.buf = b""
        self.answered: defer.Deferred[tuple[int, bytes, bytes]] = defer.Deferred()  # (status, head bytes, rest)
        self.client: ClientSide | None = None  # once relaying
        self.bytes_in = 0
        self.closed: defer.Deferred[str] = defer.Deferred()  # fires with why

    def connectionMade(self):
        self.transport.write(self.head)

    def dataReceived(self, data):
        if self.client is not None:
            self.bytes_in += len(data)
            self.client.transport.write(data)
            return
        if self.answered.called:
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self.answered.errback(ValueError("the upstream's answer head is too large"))
                self.transport.abortConnection()
            return
        head, rest = self.buf[:end + 4], self.buf[end + 4:]
        self.buf = b""
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            self.answered.errback(ValueError("the upstream's answer is not HTTP"))
            self.transport.abortConnection()
            return
        self.answered.callback((status, head, rest))

    def connectionLost(self, reason):
        if not self.answered.called:
            self.answered.errback(ConnectionError("the upstream closed before answering the upgrade"))
        if self.client is not None and self.client.transport is not None:
            self.client.transport.loseConnection()
        if not self.closed.called:
            self.closed.callback("upstream closed")


class ClientSide(Protocol):
    """The client end, after the HTTP channel was handed over to the relay."""

    def __init__(self, upstream: UpstreamSide, on_lost):
        self.upstream = upstream
        self.on_lost = on_lost
        self.bytes_out = 0

    def dataReceived(self, data):
        self.bytes_out += len(data)
        if self.upstream.transport is not None:
            self.upstream.transport.write(data)

    def connectionLost(self, reason=None):
        if self.upstream.transport is not None:
            self.upstream.transport.loseConnection()
        self.on_lost()


def take_over(channel, upstream: UpstreamSide, answer: bytes, on_lost) -> ClientSide:
    """Turn an HTTP channel into one end of a raw relay to ``upstream``."""
    client = ClientSide(upstream, on_lost)
    transport = channel.transport
    # The channel stops being HTTP: its bytes (those sent before we answered too) and its end
    # now belong to the relay.
    try:
        early = channel.hand_over(client)
    except RuntimeError:
        stream(upstream.transport).abortConnection()
        raise
    client.makeConnection(transport)
    transport.unregisterProducer()
    upstream.client = client
    transport.write(answer)
    # Backpressure both ways: each side pauses the other's reading.
    transport.registerProducer(upstream.transport, True)
    stream(upstream.transport).registerProducer(transport, True)
    transport.resumeProducing()
    if early:
        client.dataReceived(early)
    return client


class OneConnection(Factory):
    """Connects one given protocol (as connectProtocol does, without a log line each time)."""

    noisy = False

    def __init__(self, protocol):
        self.protocol_instance = protocol

    def buildProtocol(self, addr):
        return self.protocol_instance


class Timer:
    def __init__(self):
        self.start = time.monotonic()

    def ms(self) -> float:
        return round((time.monotonic() - self.start) * 1000, 3)
