"""An HTTP/1.1 client for one upstream origin: a keep-alive pool over llhttp (httptools).

The gateway's only way upstream for ordinary requests (WebSocket upgrades take their own
connection: upgrade.py); what it hands back, a response's head and its body, is
upstream_response.py. Small on purpose, so other gateways (MCP) can use it too::

    client = UpstreamClient(reactor, "https://api.internal:8443", pool_size=64, ca_pem=None)
    d = client.request(b"GET", b"/v1/x?y=1", [(b"host", b"api.internal:8443"), ...], body)
    response = await d            # head in: .code .phrase .headers .length
    response.deliverBody(proto)   # IProtocol: dataReceived, then connectionLost(ResponseDone |
                                  # PotentialDataLoss | ResponseFailed); proto.transport pauses it
    d.cancel()                    # before the head: the connection is aborted, never reused

``body``: None, bytes, or an IBodyProducer (``length`` known: Content-Length; else chunked). A
producer that fails aborts the connection: an upstream never sees a short body as complete.

What the parser (llhttp, strict) refuses in a response is an error, never a guess: both
Content-Length and Transfer-Encoding, two lengths, a bad chunk, bytes after a message the
request did not ask for. 1xx answers before the final one are skipped; HEAD, 204 and 304 have no
body; a body without a length ends with the connection (PotentialDataLoss, as twisted.web says).
A connection goes back to the pool only after a complete exchange that both sides keep alive.
A request on a pooled connection that the upstream had closed meanwhile is retried once on a
new connection when it is idempotent and its body can be sent again (none, or bytes).
"""
from __future__ import annotations

from collections import deque
from urllib.parse import urlsplit

import httptools
from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH

from hoopy.http.upstream_response import _DONE, RawHeaders, UpstreamResponse, _by_name
from hoopy.sockwrite import write_now
from hoopy.transport import stream
from hoopy.upstream import UpstreamError

# A response head (with any 1xx before it) larger than this is refused: llhttp and httptools keep no
# limit of their own, and an upstream that never ends its head grew the gateway by 1 GiB in 3 s.
MAX_HEAD = 256 * 1024
READ_SIZE = 256 * 1024  # a large body moves in fewer, larger reads: less Python per byte
_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
_BODY_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))


class _Consumer:
    """The upstream socket as an IConsumer for a request body: Content-Length or chunked framing."""

    def __init__(self, conn, chunked: bool):
        self.conn, self.chunked = conn, chunked

    def write(self, data: bytes):
        t = self.conn.transport
        if t is None or not data:
            return
        write_now(t, b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)

    def registerProducer(self, producer, streaming):
        if self.conn.transport is not None:
            self.conn.transport.registerProducer(producer, streaming)

    def unregisterProducer(self):
        if self.conn.transport is not None:
            self.conn.transport.unregisterProducer()


class UpstreamConnection(Protocol):
    """One upstream connection: one request at a time, its response parsed by llhttp."""

    def __init__(self, client: "UpstreamClient"):
        self.client = client
        self.parser: httptools.HttpResponseParser | None = None
        self.exchange: _Request | None = None  # the one in flight
        self.reusable = False
        self.lost = False
        self._framed = True
        self._head_seen = 0  # bytes read before the final response head was complete
        self._head_done = False
        self._head_out: _Request | None = None  # a request whose head this read brought: handed at its end
        self.on_close: defer.Deferred[None] | None = None  # a Deferred fired once the connection is gone (pool closing)

    def connectionMade(self):
        t = self.transport
        if ITCPTransport.providedBy(t):
            t.setTcpNoDelay(True)
        if hasattr(t, "bufferSize"):
            t.bufferSize = READ_SIZE
        self.client._made(self)

    # --- sending ---------------------------------------------------------------------------------

    def send(self, req: "_Request"):
        self.exchange = req
        self.reusable = False
        if self.parser is None:  # else the last response's, at a message's start (see _release)
            self.parser = httptools.HttpResponseParser(self)
        self._head_seen, self._head_done = 0, False
        req.conn = self
        req.state = "sending"
        head = req.head
        body = req.body
        if body is None or isinstance(body, bytes):
            write_now(self.transport, head + body if body else head)
            req.body_sent = True
            return
        chunked = body.length is UNKNOWN_LENGTH
        write_now(self.transport, head)
        # the socket pauses the producer when the upstream reads slower than the body comes
        stream(self.transport).registerProducer(body, True)
        req.producing = body
        d = body.startProducing(_Consumer(self, chunked))

        def sent(_):
            req.producing = None
            if self.transport is not None:
                self.transport.unregisterProducer()
            if self.exchange is not req or self.transport is None:
                return
            if chunked:
                write_now(self.transport, b"0\r\n\r\n")
            req.body_sent = True
            if req.state == "done":
                self._finished(req)

        def failed(f):
            req.producing = None
            if self.transport is not None:
                self.transport.unregisterProducer()
            if self.exchange is req:
                # never let the upstream take a short body as the whole: the connection goes
                self.abort()
                req.fail(f)

        d.addCallbacks(sent, failed)

    # --- llhttp callbacks --------------------------------------------------------------------------

    def on_message_begin(self):
        req = self.exchange
        if req is None or req.state == "done":
            # Bytes after a complete answer, in its read: the parser is kept for the next request,
            # so even the start of a head would become part of the next caller's answer.
            raise UpstreamError("the upstream sent a response nobody asked for")
        self._headers = []
        self._phrase = b""

    def on_status(self, phrase: bytes):
        self._phrase += phrase

    def on_header(self, name: bytes, value: bytes):
        self._headers.append((name, value))

    def on_headers_complete(self):
        req = self.exchange
        code = self.parser.get_status_code()
        if req is None or req.state == "done":
            raise UpstreamError("the upstream sent a response nobody asked for")
        if 100 <= code < 200:
            if code == 101:
                raise UpstreamError("the upstream switched protocols on an ordinary request")
            return  # 100 Continue, 103 Early Hints: the final answer follows
        self._head_done = True
        length = UNKNOWN_LENGTH
        bodyless = req.method == b"HEAD" or code in (204, 304)
        by_name = _by_name(self._headers)
        lengths = by_name.get(b"content-length")
        for v in lengths[1] if lengths is not None else ():
            try:
                length = int(v)
            except ValueError:
                raise UpstreamError("the upstream sent a bad Content-Length")
        if bodyless:
            length = 0
        self._framed = lengths is not None or b"transfer-encoding" in by_name
        resp = UpstreamResponse(self, code, self._phrase, RawHeaders(self._headers, by_name), length,
                                b"HTTP/" + self.parser.get_http_version().encode())
        resp._req = req
        # A chunked body's trailer fields reach on_header too, after the head (often in the same
        # read): they go to a list of their own, never into this head's lines, which the site's
        # head memos take as the whole head (a trailer was given out as a header for a head alike)
        self._headers = []
        req.response = resp
        req.state = "body"
        # Handed to its caller once this read is parsed (dataReceived): a small answer's body and
        # end are in by then (the caller may take it whole), and the caller's code runs outside
        # llhttp's callbacks
        self._head_out = req
        if req.method == b"HEAD":
            # llhttp does not know the request was HEAD: the message ends here, whatever it says
            self._message_done(req, keep=self.parser.should_keep_alive())
            self.parser = None

    def on_body(self, data: bytes):
        req = self.exchange
        if req is None or req.response is None or req.state != "body":
            raise UpstreamError("the upstream sent body bytes after the end of its response")
        req.response._data(data)

    def on_message_complete(self):
        req = self.exchange
        if req is None or req.response is None or req.state == "done":
            return  # the end of a 1xx, or of a HEAD answer already ended
        self._message_done(req, keep=self.parser.should_keep_alive())

    def _message_done(self, req, keep: bool):
        req.state = "done"
        self.reusable = keep and not req.close
        req.response._end(_DONE)
        if req.body_sent:
            self._finished(req)

    def _finished(self, req):
        if self.exchange is not req:
            return
        self.exchange = None
        if self.reusable and self.transport is not None and not self.lost:
            self.client._release(self)
        elif self.transport is not None:
            self.transport.loseConnection()

    # --- bytes in, connection gone ---------------------------------------------------------------

    def dataReceived(self, data: bytes):
        if self.parser is None or self.exchange is None:
            if self.exchange is None and not data.strip():
                return  # a stray CRLF between responses
            self.abort(UpstreamError("the upstream sent bytes nobody asked for"))
            return
        if not self._head_done:
            if self._head_seen > MAX_HEAD:  # checked before feeding: at most MAX_HEAD + one read buffered
                self.abort(UpstreamError(f"the upstream's response head is larger than {MAX_HEAD // 1024} KiB"))
                return
            self._head_seen += len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, UpstreamError) as e:
            self._hand_head()  # (a head before what is refused reaches its caller first, as it came)
            reason = e.__context__ if isinstance(e, httptools.HttpParserCallbackError) and e.__context__ else e
            self.abort(UpstreamError(f"the upstream's response is not valid HTTP: {reason}"))
            return
        self._hand_head()

    def _hand_head(self):
        req = self._head_out
        if req is not None:
            self._head_out = None
            resp = req.response
            resp._handing = False
            req.head_in(resp)

    def abort(self, error: Exception | None = None):
        self.reusable = False
        self.lost = True  # never handed out again, even before the transport says it is gone
        self.client._gone(self)
        req = self.exchange
        if req is not None and error is not None:
            req.fail(Failure(error))
        if self.transport is not None:
            stream(self.transport).abortConnection()

    def connectionLost(self, reason):
        self.lost = True
        self.client._gone(self)
        if self.on_close is not None:
            self.on_close.callback(None)
        req, self.exchange = self.exchange, None
        if req is None or req.state == "done":
            return
        if req.state == "body":
            resp = req.response
            if not self._framed and req.method != b"HEAD":
                resp._end(Failure(PotentialDataLoss()))  # a body that ends with the connection
            else:
                resp._end(Failure(ResponseFailed([reason])))
            return
        req.lost_before_head(reason)


class _Request:
    """One request: written on a connection, answered by a head (``d``) and then a body."""

    def __init__(self, client, method, head, body, retry: bool):
        self.client, self.method, self.head, self.body, self.retry = client, method, head, body, retry
        self.d: defer.Deferred[UpstreamResponse] = defer.Deferred(self._cancel)  # the head
        self.conn: UpstreamConnection | None = None
        self.state = "waiting"  # waiting | connecting | sending | body | done
        self.response = None
        self.body_sent = False
        self.producing = None
        self.fresh = False  # on a new connection (a failure there is not the pool's staleness)
        self.connecting = None
        self.close = False  # the request said Connection: close

    def head_in(self, resp):
        if not self.d.called:
            self.d.callback(resp)

    def fail(self, f: Failure):
        if self.state == "body" and self.response is not None:
            self.response._end(Failure(ResponseFailed([f])))
        self.state = "done"
        if not self.d.called:
            self.d.errback(f)

    def lost_before_head(self, reason: Failure):
        if self.retry and not self.fresh and self.producing is None and self.state == "sending":
            # a pooled connection the upstream had closed: once more, on a new one
            self.retry = False
            self.state = "waiting"
            self.body_sent = False
            self.client._connect_for(self)
            return
        self.state = "done"
        if not self.d.called:
            self.d.errback(UpstreamError(f"the upstream closed the connection before answering: "
                                         f"{reason.getErrorMessage()}"))

    def _cancel(self, d):
        self.state = "done"
        if self.producing is not None:
            self.producing.stopProducing()
        if self.connecting is not None:
            self.connecting.cancel()
        if self.conn is not None:
            self.conn.abort()


class _Factory(Factory):
    noisy = False

    def __init__(self, client):
        self.client = client

    def buildProtocol(self, addr):
        return UpstreamConnection(self.client)


class UpstreamClient:
    """Requests to one origin over a pool of kept-alive connections."""

    def __init__(self, reactor, base_url: str, pool_size: int = 64, connect_timeout: float = 10.0,
                 tls_creator=None):
        u = urlsplit(base_url)
        self.reactor = reactor
        self.tls = u.scheme == "https"
        self.hostname = u.hostname
        self.port = u.port or (443 if self.tls else 80)
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.tls_creator = tls_creator  # IOpenSSLClientConnectionCreator, for https
        self.idle: deque[UpstreamConnection] = deque()
        self.busy: set = set()
        self._factory = _Factory(self)
        self._endpoint = None
        self.on_reach = None  # (error or None) -> None: each new connection's outcome (hoopy.reach)

    def endpoint(self):
        if self._endpoint is None:
            ep = HostnameEndpoint(self.reactor, self.hostname, self.port, timeout=self.connect_timeout)
            if self.tls:
                ep = wrapClientTLS(self.tls_creator, ep)
            self._endpoint = ep
        return self._endpoint

    def request(self, method: bytes, target: bytes, headers, body=None) -> defer.Deferred:
        """Fires with an UpstreamResponse once its head is in (UpstreamError if it cannot be had)."""
        head, close = self.head(method, target, headers, body)
        return self.send_head(method, head, close, body)

    @staticmethod
    def head(method: bytes, target: bytes, headers, body=None) -> tuple[bytes, bool]:
        """The request head ``request`` sends, and whether it asks for Connection: close: a pure
        function of its arguments (and of ``body``'s kind and length), which a caller sending the
        same request again may keep and hand to ``send_head``."""
        lines = [method, b" ", target, b" HTTP/1.1\r\n"]
        close = False
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
            if value == b"close" and name.lower() == b"connection":
                close = True
        if body is None:
            if method in _BODY_METHODS:
                lines.append(b"Content-Length: 0\r\n")
        elif isinstance(body, bytes):
            lines.append(b"Content-Length: %d\r\n" % len(body))
        elif body.length is UNKNOWN_LENGTH:
            lines.append(b"Transfer-Encoding: chunked\r\n")
        else:
            lines.append(b"Content-Length: %d\r\n" % body.length)
        lines.append(b"\r\n")
        return b"".join(lines), close

    def send_head(self, method: bytes, head: bytes, close: bool, body=None) -> defer.Deferred:
        """``request`` with its head made (``head``)."""
        retry = method in _IDEMPOTENT and (body is None or isinstance(body, bytes))
        req = _Request(self, method, head, body, retry)
        req.close = close  # asked for: the connection is never reused after this exchange
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None and not conn.lost:
                self.busy.add(conn)
                conn.send(req)
                return req.d
        self._connect_for(req)
        return req.d

    def _connect_for(self, req):
        req.state = "connecting"
        req.fresh = True
        d = self.endpoint().connect(self._factory)
        req.connecting = d

        def connected(conn):
            req.connecting = None
            if self.on_reach is not None and not self.tls:
                # Over TLS a TCP connect says nothing of the handshake: the probe checks that.
                self.on_reach(None)
            if req.state == "done":  # cancelled meanwhile: this connection is for the pool
                self._release(conn)
                return
            self.busy.add(conn)
            conn.send(req)

        def failed(f):
            req.connecting = None
            if self.on_reach is not None and not f.check(defer.CancelledError):
                self.on_reach(f.getErrorMessage() or f.type.__name__)
            if req.state != "done":
                req.state = "done"
                if not req.d.called:
                    req.d.errback(UpstreamError(f.getErrorMessage() or f.type.__name__))

        d.addCallbacks(connected, failed)

    def _made(self, conn):
        pass

    def _release(self, conn):
        self.busy.discard(conn)
        if len(self.idle) < self.pool_size and conn.transport is not None and not conn.lost:
            # Its parser is kept for the next request: llhttp is at a message's start after a
            # complete keep-alive response (a HEAD's answer drops it: llhttp would wait for a body).
            # Reading again: the last body's reader may have paused it (backpressure, a redaction
            # being written); an idle connection must still see the upstream close it.
            conn.transport.resumeProducing()
            self.idle.append(conn)
        elif conn.transport is not None:
            conn.transport.loseConnection()

    def _gone(self, conn):
        self.busy.discard(conn)
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def close(self) -> defer.Deferred:
        """Close every idle connection (a gateway stopping); fires when they are gone."""
        ds = []
        for conn in list(self.idle):
            if conn.transport is not None:
                d: defer.Deferred[None] = defer.Deferred()
                conn.on_close = d
                ds.append(d)
                conn.transport.loseConnection()
        self.idle.clear()
        return defer.DeferredList(ds, consumeErrors=True)
