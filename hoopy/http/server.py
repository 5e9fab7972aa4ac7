"""The client side: one connection's HTTP/1.1 requests, parsed by llhttp (httptools).

``GatewayChannel`` turns bytes into requests: each request starts an ``Exchange`` as soon as its
head is in, its body flows into a ``BodyPipe``, and the exchange answers through ``Response`` (the
``IResponseSink``), whose head goes out with the first body bytes in one send. Requests are
answered in order: what a client pipelines behind the request being answered is parsed and waits
(its head, and a bounded part of its body: past that the socket is not read), and starts only
once the answer before it is complete.

llhttp is strict; the few lenient shapes the gateway accepted before (optional whitespace at the
end of a header line, obs-fold, trailers naming Content-Length) are read as RFC 9112 allows, and
the request still goes upstream in the gateway's own framing.
"""
from __future__ import annotations

import re
from collections import deque

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser
from twisted.internet.interfaces import IProtocolNegotiationFactory, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from zope.interface import implementer

from hoopy.http.exchange import Exchange
from hoopy.http.reply import Response
from hoopy.http.upload import BodyPipe
from hoopy.sockwrite import write_now
from hoopy.transport import stream

log = Logger()

MAX_HEADERS = 500  # headers in one request head (as twisted.web allowed): more is a 400
MAX_HEAD = 16384  # bytes of target, header names and values in one head (as twisted.web)
MAX_RAW_HEAD = 64 * 1024  # bytes read while a head is still incomplete (llhttp keeps no limit)
QUEUE_BYTES = 64 * 1024  # parsed bytes waiting behind the request being answered: past this, stop reading
QUEUE_REQUESTS = 64
IDLE_TIMEOUT = 60.0  # between requests (twisted.web's default)
ABORT_TIMEOUT = 15.0  # a closing connection whose client does not read what is left is cut (as twisted.web)

_NONE, _HEAD, _IDLE = 0, 1, 2  # what the connection's deadline is for
_BY_PIPE, _BY_QUEUE = 1, 2  # why the socket is not read
_BAD = b"HTTP/1.1 %d %s\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_OWS = re.compile(rb"[ \t]+\r\n")
_FOLD = re.compile(rb"\r\n[ \t]+")


class _Refused(Exception):
    """Raised in a parser callback: the request is refused with ``status`` (llhttp stops)."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class _Request:
    """One parsed request head and, until it is answered, what arrived of its body."""

    __slots__ = ("method", "url", "version", "pairs", "hdrs", "lines", "persistent", "upgrade", "expect", "length",
                 "pipe", "chunks", "complete", "queued", "exchange", "response")

    def __init__(self, method, url, version, pairs, hdrs, lines, persistent, upgrade, expect, length):
        self.method, self.url, self.version, self.pairs, self.hdrs = method, url, version, pairs, hdrs
        self.lines = lines  # the header lines as llhttp gave them: [(name, value)], never changed
        self.persistent, self.upgrade, self.expect, self.length = persistent, upgrade, expect, length
        self.pipe: BodyPipe | None = None
        self.chunks: list = []  # body bytes that arrived while the request waited its turn
        self.complete = False
        self.queued = 0  # bytes of it counted in the channel's queue
        self.exchange: Exchange | None = None
        self.response: Response | None = None


class GatewayChannel(Protocol):
    """One client connection: parses its requests, answers them in order, holds its session."""

    session = None
    head_checks = None  # what the checks of this connection's last checked request head found (head_checks.py)
    last_token = None  # the token of this connection's last request, and whose it is: a keep-alive
    last_identity = None  # client sends it again and again (hashed once, not per request)

    def __init__(self, state):
        self.site_state = state
        self.reactor = state.reactor
        self.head_timeout = state.settings.head_timeout
        self.persistent = True
        self._parser = HttpRequestParser(self)
        self._phase = 0  # 0: between requests, 1: in a head, 2: in a body
        self._url = b""
        self._raw: list = []
        self._head_size = 0
        self._head_bytes = 0
        self._tail = b""  # the last bytes of an incomplete head (where a blank line may begin)
        self._lenient = False
        self._refusal: _Refused | None = None
        self._cur: _Request | None = None  # being parsed
        self._ready: _Request | None = None  # parsed, to start once llhttp accepts its framing
        self._active: _Request | None = None  # being answered
        self._queue: deque = deque()
        self._queued = 0
        self._bad: int | None = None  # a refusal answered once the requests before it are
        self._bad_line = False  # a request line already refused, answered when it ends (or late)
        self._early: list | None = None  # bytes after an upgrade request: the relay's, or dropped
        self._closing = False  # nothing more is read as HTTP
        self._paused = 0
        self._starting = False
        self._deadline = 0.0
        self._kind = _NONE
        self._timer = None
        self._close_timer = None
        self._abort_timer = None
        self._peer = ("unknown", "")
        self.lost = False

    # --- the connection ------------------------------------------------------------------------

    def connectionMade(self):
        transport = self.transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        addr = transport.getPeer()
        self._peer = (getattr(addr, "host", "unknown"), getattr(addr, "port", ""))
        # The first head is due head_timeout after the connection opened, the next ones after
        # their first byte: a head dripped a byte at a time (slowloris) cannot hold a connection.
        self._set_deadline(_HEAD, self.head_timeout)

    def dataReceived(self, data):
        if self._early is not None:
            self._early.append(data)  # after an upgrade request: the relay's, if it becomes one
            if sum(map(len, self._early)) > QUEUE_BYTES:
                self._pause(_BY_QUEUE)
            return
        if self._closing or self._bad is not None:
            return
        if self._bad_line:
            if b"\n" in data:
                self._refuse_now(400)
            return
        if self._phase != 2:
            self._head_bytes += len(data)
            # (find(), not ``in``: bytes' ``in`` tries the needle as an integer first, and the
            # TypeError it makes and drops costs more than the search; see hoopy/bytesearch.py)
            if (data.find(b" \r\n") != -1 or data.find(b"\t\r\n") != -1 or data.find(b"\r\n ") != -1
                    or data.find(b"\r\n\t") != -1):
                data = self._lenient_head(data)
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as e:
            # llhttp reads no further: the rest is the relay's if the upgrade is judged and
            # the upstream switches, else dropped with the connection
            self._early = [data[e.args[0]:]]
            self._phase = 0
        except HttpParserError:
            self._ready = None  # its head or its framing is refused: it never starts
            if not self._closing:  # (closing: stopped on purpose, see on_message_begin)
                self._parse_failed(data)
            return
        if self._ready is not None:
            self._start(self._ready)
        if self._phase == 1:
            if self._head_bytes > MAX_RAW_HEAD:
                self._fail(400)
                return
            self._tail = data[-3:]
            if self._active is None and self._kind != _HEAD:
                self._set_deadline(_HEAD, self.head_timeout)
        if self._queued > QUEUE_BYTES or len(self._queue) > QUEUE_REQUESTS:
            self._pause(_BY_QUEUE)

    def connectionLost(self, reason=None):
        self._closing = self.lost = True
        self._cancel_timers()
        if self._abort_timer is not None and self._abort_timer.active():
            self._abort_timer.cancel()
        req, self._active = self._active, None
        self._queue.clear()
        if req is not None and req.exchange is not None and not req.response.finished:
            req.exchange.client_gone(reason if isinstance(reason, Failure) else None)
        self.site_state.channel_closed(self)

    # --- llhttp's callbacks ----------------------------------------------------------------------

    def on_message_begin(self):
        if self._closing:
            raise _Refused(0)  # the connection closes after the answer before: nothing more is read
        self._phase = 1
        self._url = b""
        self._raw = []
        self._head_size = 0

    def on_url(self, url: bytes):
        self._url += url
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            self._refuse(400)

    def on_header(self, name: bytes, value: bytes):
        if self._phase != 1:
            return  # a trailer: neither read nor forwarded
        self._raw.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD or len(self._raw) > MAX_HEADERS:
            self._refuse(400)

    def on_headers_complete(self):
        p = self._parser
        version = p.get_http_version()
        if version != "1.1" and version != "1.0":
            self._refuse(505 if version != "0.9" else 400)
        # The headers as (name as first spelled, [values]), and the same lists by lower-case name (the
        # exchange's lookups): made once here
        hdrs: dict = {}
        pairs: list = []
        lines = self._raw
        for name, value in lines:
            key = name.lower()
            values = hdrs.get(key)
            if values is None:
                hdrs[key] = values = [value]
                pairs.append((name, values))
            else:
                values.append(value)
        self._raw = []
        length: int | None = 0
        if b"transfer-encoding" in hdrs:
            length = None
        elif b"content-length" in hdrs:
            length = int(hdrs[b"content-length"][0])  # llhttp read it: digits, one value
        expect = hdrs.get(b"expect")
        req = _Request(p.get_method(), self._url, b"HTTP/" + version.encode(), pairs, hdrs, lines,
                       version == "1.1" and p.should_keep_alive(), p.should_upgrade(),
                       expect is not None and expect[0].lower() == b"100-continue" and version == "1.1",
                       length)
        self._phase = 2
        self._head_bytes = 0
        self._cur = req
        if self._active is None and not self._queue and self._bad is None:
            # started once llhttp has checked the head's framing (it does after this callback)
            self._ready = req
        else:
            req.queued = self._head_size
            self._queued += self._head_size
            self._queue.append(req)

    def on_body(self, body: bytes):
        if self._ready is not None:
            self._start(self._ready)
        req = self._cur
        assert req is not None  # llhttp calls this between a head and its end
        if req.pipe is not None:
            req.pipe.feed(body)
        else:
            req.chunks.append(body)
            req.queued += len(body)
            self._queued += len(body)

    def on_chunk_header(self):
        # Trailers may name Content-Length (llhttp would refuse it beside chunked): nothing of
        # a trailer is read (see on_header), and the real headers were checked before this.
        if not self._lenient:
            self._lenient = True
            self._parser.set_dangerous_leniencies(lenient_chunked_length=True)

    def on_message_complete(self):
        if self._ready is not None:
            self._start(self._ready)
        req, self._cur = self._cur, None
        self._phase = 0
        if self._lenient:
            self._lenient = False
            self._parser.set_dangerous_leniencies(lenient_chunked_length=False)
        req.complete = True
        if req.pipe is not None and not req.pipe.done:
            req.pipe.end()

    def _refuse(self, status: int):
        self._refusal = _Refused(status)
        raise self._refusal

    # --- requests, in order ----------------------------------------------------------------------

    def _start(self, req: _Request):
        self._ready = None
        self._active = req
        self._kind = _NONE
        if req.queued:
            self._queued -= req.queued
            req.queued = 0
        state = self.site_state
        pipe = req.pipe = BodyPipe(self, req.length, keep=state.settings.record_body_limit)
        if req.expect:
            self.send(_CONTINUE)
        chunks, req.chunks = req.chunks, []
        for chunk in chunks:
            pipe.feed(chunk)
        if req.complete or req.length == 0:
            pipe.end()  # (no body: the exchange need not wait for the message's end)
        req.response = Response(self, req)
        req.exchange = Exchange(state, req.response, self, req.method, req.url, req.pairs, self._peer, pipe,
                                req.hdrs, req.lines)
        req.exchange.run()

    def request_done(self, req: _Request):
        """The answer to ``req`` is complete (and its body all read): on to the next one."""
        if self._active is not req:
            return
        self._active = None
        # The request, its answer and its exchange point at one another; the channel is done with
        # them (the exchange's coroutine may still end, holding what it needs): the cycle is cut so
        # they free by reference count, not by the garbage collector
        req.exchange = req.response = None
        if self._close_timer is not None:
            if self._close_timer.active():
                self._close_timer.cancel()
            self._close_timer = None
        if not (req.persistent and self.persistent) or req.upgrade:
            self.close()
            return
        self._next()

    def _next(self):
        if self._starting:
            return  # an answer completed while the next request started: the loop below goes on
        self._starting = True
        try:
            while self._active is None and self.transport is not None and not self._closing:
                if self._queue:
                    self._start(self._queue.popleft())
                    continue
                if self._bad is not None:
                    self._refuse_now(self._bad)
                elif self._phase == 1 or self._bad_line:
                    self._set_deadline(_HEAD, self.head_timeout)  # a head begun while the last was answered
                else:
                    self._set_deadline(_IDLE, IDLE_TIMEOUT)
                break
            if self._paused & _BY_QUEUE and self._queued <= QUEUE_BYTES and len(self._queue) <= QUEUE_REQUESTS:
                self._resume(_BY_QUEUE)
        finally:
            self._starting = False

    # --- bad requests ----------------------------------------------------------------------------

    def _parse_failed(self, data: bytes):
        refusal, self._refusal = self._refusal, None
        if refusal is None and self._phase == 1 and self._url == b"" and data.lstrip(b"\r\n").startswith(b"TRACK "):
            refusal = _Refused(405)  # llhttp knows no TRACK; what it is, not how it is spelled, is refused
        if refusal is None and self._phase == 1 and b"\n" not in data:
            # Refused before its request line ended: answered when it ends, as twisted.web did; a
            # head dripped a byte at a time meets its deadline (408) instead.
            self._bad_line = True
            if self._active is None and self._kind != _HEAD:
                self._set_deadline(_HEAD, self.head_timeout)
            return
        self._fail(refusal.status if refusal is not None else 400)

    def _fail(self, status: int):
        """The bytes cannot be read as requests: ``status`` once those before are answered."""
        req = self._cur
        if req is not None and req is self._active:
            # its body is malformed: whatever it was going to get, it gets this and the end
            if req.exchange is not None and req.exchange.finished:
                self.close()
            elif req.response is not None and req.response.started:
                stream(self.transport).abortConnection()
            else:
                self._refuse_now(status)
            return
        if req is not None and self._queue and self._queue[-1] is req:
            self._queue.pop()  # its body is malformed: it never starts
        if self._active is None and not self._queue:
            self._refuse_now(status)
        else:
            self._bad = status

    def _refuse_now(self, status: int):
        self._closing = True
        self.send(_BAD % (status, RESPONSES.get(status, b"Bad Request")))
        self.close()

    def _head_late(self):
        log.info("no request head within {t:g}s from {peer}: closed", t=self.head_timeout,
                 peer="%s:%s" % self._peer)
        self._refuse_now(408)

    # --- deadlines: one timer, moved lazily ---------------------------------------------------

    def _set_deadline(self, kind: int, seconds: float):
        now = self.reactor.seconds()
        self._kind, self._deadline = kind, now + seconds
        timer = self._timer
        if timer is None:
            self._timer = self.reactor.callLater(seconds, self._tick)
        elif timer.getTime() > self._deadline:
            timer.reset(seconds)

    def _tick(self):
        self._timer = None
        if self._kind == _NONE or self._closing:
            return
        left = self._deadline - self.reactor.seconds()
        if left > 0.001:
            self._timer = self.reactor.callLater(left, self._tick)
        elif self._kind == _HEAD:
            self._head_late()
        else:
            self.close()

    def _cancel_timers(self):
        for timer in (self._timer, self._close_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._close_timer = None
        self._kind = _NONE

    # --- the socket ------------------------------------------------------------------------------

    def send(self, data: bytes):
        if not self.lost:
            write_now(self.transport, data)

    def close(self):
        self._closing = True
        self._queue.clear()
        self._cancel_timers()
        if self.transport is not None and not self.lost:
            self.transport.loseConnection()
            if self._abort_timer is None:
                self._abort_timer = self.reactor.callLater(ABORT_TIMEOUT, stream(self.transport).abortConnection)

    def _pause(self, why: int):
        if not self._paused and self.transport is not None:
            stream(self.transport).pauseProducing()
        self._paused |= why

    def _resume(self, why: int):
        if self._paused & why:
            self._paused &= ~why
            if not self._paused and self.transport is not None:
                stream(self.transport).resumeProducing()

    def close_in(self, seconds: float):
        """Close in ``seconds`` unless the answer being sent completes first (request_done)."""
        self._close_timer = self.reactor.callLater(seconds, self.close)

    def answering(self, req) -> bool:
        return self._active is req

    def pauseProducing(self):
        """The BodyPipe's: too much of a body waits for the upstream."""
        self._pause(_BY_PIPE)

    def resumeProducing(self):
        self._resume(_BY_PIPE)

    def hand_over(self, protocol) -> bytes:
        """The connection stops being HTTP (a WebSocket relay): ``protocol`` gets its bytes and its
        end from now on. What the client sent after its upgrade request is returned."""
        if self._early is None:
            raise RuntimeError("only a request llhttp read as an upgrade can hand its connection over")
        early, self._early = b"".join(self._early), None
        self._closing = True
        self._cancel_timers()
        self._paused = 0
        self.dataReceived = protocol.dataReceived  # type: ignore[method-assign]
        self.connectionLost = protocol.connectionLost  # type: ignore[method-assign]
        return early

    def _lenient_head(self, data: bytes) -> bytes:
        """Whitespace before a head's line ends is dropped, and an obs-fold read as a space
        (RFC 9112 5.1, 5.2), in the head only; llhttp refuses both."""
        tail = self._tail if self._phase == 1 else b""
        end = (tail + data).find(b"\r\n\r\n")
        cut = len(data) if end < 0 else max(end + 4 - len(tail), 0)
        head = _OWS.sub(b"\r\n", _FOLD.sub(b" ", data[:cut]))  # a fold of blanks only is no blank line
        return head + data[cut:]


@implementer(IProtocolNegotiationFactory)
class GatewayFactory(Factory):
    """Serves one ``[connections.X]`` of type http: a ``GatewayChannel`` per client connection."""

    noisy = False

    def acceptableProtocols(self):
        # over TLS, ALPN: HTTP/1.1 only (a TLS listener that offers nothing fails the handshake)
        return [b"http/1.1"]

    def __init__(self, state):
        self.state = state

    def buildProtocol(self, addr):
        channel = GatewayChannel(self.state)
        channel.factory = self
        self.state.channels.add(channel)
        return channel
