"""The client side: Streamable HTTP at ``/mcp`` on twisted.web, both eras.

POST carries one JSON-RPC message. A request is answered with JSON, or with an SSE
stream once there is something to send before the result (progress, a held call's
approval id, a server's request); a notification or a response gets 202. GET opens
the stream of a handshake-era session; DELETE ends it. ``Authorization: Bearer``
names the identity; a browser's ``Origin`` must be one of ``allowed_origins``.
"""
from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from hoopy.audit.store import StoreError
from hoopy.http.site import HeadDeadline
from hoopy.mcp import wire
from hoopy.mcp.sse import event_bytes
from hoopy.mcp.wire import WireError
from hoopy.session import IN, OUT

log = Logger()

PING = 15.0  # seconds between SSE comment lines, so idle proxies keep a held call's stream open


class Reply:
    """The answer to one client request: JSON, or SSE once something must go first."""

    def __init__(self, request: Request, sse_ok: bool, request_id, reactor):
        self.request = request
        self.sse_ok = sse_ok
        self.request_id = request_id
        self.reactor = reactor
        self.committed = False
        self.done = False
        self.gone = False
        self._on_gone: list = []
        self._ping = None
        self.session = None  # set by the conversation: bytes out are counted on it
        self.size_in = 0
        request.notifyFinish().addErrback(lambda f: self._lost())

    def _lost(self):
        if self.done:
            return
        self.gone = True
        self._stop_ping()
        for fn in self._on_gone:
            try:
                fn()
            except Exception:
                log.failure("mcp: after the client went away")
        self._on_gone = []

    def on_gone(self, fn):
        if self.gone:
            fn()
        else:
            self._on_gone.append(fn)

    def cancel(self, reason):
        """The client cancelled (notifications/cancelled): no answer is owed."""
        self._lost()
        self.done = True
        if not self.request.finished and not self.request._disconnected:
            if not self.committed:
                self.request.setResponseCode(204)
            self.request.finish()

    def notify(self, msg: dict):
        if self.done or self.gone or not self.sse_ok:
            return
        if not self.committed:
            self.committed = True
            req = self.request
            req.setResponseCode(200)
            req.setHeader(b"content-type", b"text/event-stream")
            req.setHeader(b"cache-control", b"no-cache, no-transform")
            req.setHeader(b"x-accel-buffering", b"no")
            self._ping = self.reactor.callLater(PING, self._pinged)
        self._write(event_bytes(wire.dumps(msg)))

    def _write(self, data: bytes):
        if self.session is not None:
            self.session.count_bytes(OUT, len(data))
        self.request.write(data)

    def _pinged(self):
        if not self.done and not self.gone:
            self.request.write(b": ping\n\n")
            self._ping = self.reactor.callLater(PING, self._pinged)

    def _stop_ping(self):
        if self._ping is not None and self._ping.active():
            self._ping.cancel()

    def finish(self, msg: dict, status: int | None = None):
        if self.done or self.gone:
            return
        self.done = True
        self._stop_ping()
        req = self.request
        if req.finished or req._disconnected:
            return
        if self.committed:
            self._write(event_bytes(wire.dumps(msg)))
        else:
            if status is None:
                status = wire.ERROR_STATUS.get(msg["error"].get("code"), 200) if "error" in msg else 200
            req.setResponseCode(status)
            req.setHeader(b"content-type", b"application/json")
            self._write(wire.dumps(msg))
        req.finish()

    def fail(self, code, message):
        self.finish(wire.error(self.request_id, code, message))


class Stream:
    """A handshake-era client's GET stream: what the server says outside any request."""

    def __init__(self, request, conversation, reactor):
        self.request = request
        self.conversation = conversation
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache, no-transform")
        request.write(b": hoopy\n\n")
        self.reactor = reactor
        self._ping = reactor.callLater(PING, self._pinged)
        request.notifyFinish().addBoth(lambda _: self._closed())

    def send(self, msg):
        if not self.request.finished and not self.request._disconnected:
            self.request.write(event_bytes(wire.dumps(msg)))

    def _pinged(self):
        self.send_raw(b": ping\n\n")
        self._ping = self.reactor.callLater(PING, self._pinged)

    def send_raw(self, data):
        if not self.request.finished and not self.request._disconnected:
            self.request.write(data)

    def _closed(self):
        if self._ping.active():
            self._ping.cancel()
        if self in self.conversation.streams:
            self.conversation.streams.remove(self)

    def close(self):
        self._closed()
        if not self.request.finished and not self.request._disconnected:
            self.request.finish()


class BoundedRequest(Request):
    """A request whose body is refused past the connection's ``max_message``."""

    limit = 4 * 1024 * 1024

    def gotLength(self, length):
        if length is not None and length > self.limit:
            self.channel._respondToBadRequestAndDisconnect()
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self.content is None or self.content.tell() + len(data) > self.limit:
            self.channel.transport.abortConnection()
            return
        super().handleContentChunk(data)


class MCPResource(Resource):
    isLeaf = True

    def __init__(self, service):
        super().__init__()
        self.service = service
        self.gateway = service.gateway
        self.settings = service.settings

    # --- checks -----------------------------------------------------------------------------

    def _plain(self, request, status: int, msg: dict | None = None, headers=()):
        request.setResponseCode(status)
        for k, v in headers:
            request.setHeader(k, v)
        if msg is None:
            return b""
        request.setHeader(b"content-type", b"application/json")
        return wire.dumps(msg)

    def _gate(self, request):
        """(identity, None) or (None, response bytes)."""
        if request.path not in (b"/mcp", b"/mcp/"):
            return None, self._plain(request, 404, wire.error(None, wire.INVALID_REQUEST, "the MCP endpoint is /mcp"))
        origin = request.getHeader(b"origin")
        if origin is not None:
            o = origin.decode("latin-1").rstrip("/").lower()
            if o not in self.settings.allowed_origins:
                self.gateway.record("mcp.refused", "refused", connection=self.service.connection,
                                    peer=_peer(request), reason=f"Origin {o!r} is not allowed")
                return None, self._plain(request, 403, wire.error(None, wire.INVALID_REQUEST,
                                                                  f"Origin {o} is not allowed"))
        auths = request.requestHeaders.getRawHeaders(b"authorization") or [b""]
        auth = auths[-1].decode("latin-1")
        scheme, _, token = auth.partition(" ")
        ident = None
        if len(set(auths)) > 1:
            # which identity it acts as must not depend on which header a reader takes (as for HTTP)
            token = "two different tokens"
        elif scheme.lower() == "bearer" and token.strip():
            ident = self.gateway.identities.by_token(token.strip())
            request.hoopy_token = token.strip().encode("latin-1")  # checked against the body
        if ident is None:
            self.gateway.auth_failed(self.service.connection, _peer(request), "", "bearer",
                                     "missing token" if not token.strip() else "bad credentials")
            return None, self._plain(
                request, 401, wire.error(None, wire.INVALID_REQUEST,
                                         "authentication required: send Authorization: Bearer TOKEN"),
                headers=((b"www-authenticate", b'Bearer realm="hoopy"'),))
        if len(request.requestHeaders.getRawHeaders(b"mcp-session-id") or ()) > 1:
            return None, self._plain(request, 400, wire.error(None, wire.INVALID_REQUEST,
                                                              "a request names one Mcp-Session-Id"))
        return ident, None

    def _headers(self, request):
        return lambda name: [v.decode("latin-1") for v in request.requestHeaders.getRawHeaders(name.encode(), [])]

    # --- methods ----------------------------------------------------------------------------

    def render_POST(self, request):
        ident, refused = self._gate(request)
        if ident is None:
            return refused
        accept = (request.getHeader(b"accept") or b"").decode("latin-1").lower()
        sse_ok = "text/event-stream" in accept or "*/*" in accept
        try:
            body = request.content.read()
            msg = wire.loads(body, self.settings.max_message)
            wire.check_message(msg)
        except WireError as e:
            return self._plain(request, 400, wire.error(None, e.code, str(e)))
        tok = request.hoopy_token
        if tok in body or (b"\\u" in body and tok in wire.dumps(msg)):
            # a client talked into sending its own token: not to the server, not into the record
            self.gateway.record("mcp.refused", "refused", connection=self.service.connection, identity=ident.name,
                                peer=_peer(request), reason="the caller's token is in the message")
            return self._plain(request, 400, wire.error(msg.get("id"), wire.INVALID_REQUEST,
                                                        "the caller's token is in the message, and would reach "
                                                        "the MCP server: refused"))
        headers = self._headers(request)
        version = (headers(wire.H_VERSION) or [None])[0]
        modern = version in wire.MODERN_VERSIONS or (
            version is None and wire.is_request(msg) and msg["method"] == "server/discover")
        if modern:
            d = defer.ensureDeferred(self._modern(request, ident, msg, headers, sse_ok, body))
        else:
            d = defer.ensureDeferred(self._handshake(request, ident, msg, headers, sse_ok, body))
        d.addErrback(self._crashed, request, msg)
        return NOT_DONE_YET

    def _crashed(self, f, request, msg):
        if f.check(StoreError):
            status, text = 503, "refused: the audit store cannot record this session"
        else:
            log.failure("mcp request", f)
            status, text = 500, "hoopy: internal error"
        if not request.finished and not request._disconnected and not request.startedWriting:
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json")
            request.write(wire.dumps(wire.error(msg.get("id") if isinstance(msg, dict) else None,
                                                wire.INTERNAL_ERROR, text)))
            request.finish()

    def _finish(self, request, status, msg=None):
        if request.finished or request._disconnected:
            return
        request.setResponseCode(status)
        if msg is not None:
            request.setHeader(b"content-type", b"application/json")
            request.write(wire.dumps(msg))
        request.finish()

    async def _modern(self, request, ident, msg, headers, sse_ok, body):
        if not wire.is_request(msg):
            # The per-request era has no client notifications or responses over HTTP: accepted, dropped.
            return self._finish(request, 202)
        try:
            env = wire.check_modern(msg, headers)
        except WireError as e:
            return self._finish(request, wire.ERROR_STATUS.get(e.code, 400), wire.error(msg["id"], e.code, str(e), e.data))
        if msg["method"] not in wire.CLIENT_REQUESTS or msg["method"] == "initialize":
            self.gateway.record("mcp.refused", "refused", connection=self.service.connection, identity=ident.name,
                                peer=_peer(request), method=msg["method"], reason="unknown method")
            return self._finish(request, 404, wire.error(msg["id"], wire.METHOD_NOT_FOUND,
                                                         f"Method not found: {msg['method']}"))
        conv = await self.service.modern_session(ident, env, _peer(request), headers)
        if conv is None:
            return self._finish(request, 503, wire.error(msg["id"], wire.INTERNAL_ERROR, self.service.refusal))
        reply = Reply(request, sse_ok, msg["id"], self.gateway.reactor)
        reply.size_in = len(body)
        await conv.handle(msg, reply)

    async def _handshake(self, request, ident, msg, headers, sse_ok, body):
        sid = (headers(wire.H_SESSION) or [None])[0]
        if wire.is_request(msg) and msg["method"] == "initialize":
            if sid:
                return self._finish(request, 400, wire.error(msg["id"], wire.INVALID_REQUEST,
                                                             "initialize is sent without Mcp-Session-Id"))
            params = msg.get("params") or {}
            conv = await self.service.handshake_session(ident, params, _peer(request), headers)
            if conv is None:
                return self._finish(request, 503, wire.error(msg["id"], wire.INTERNAL_ERROR, self.service.refusal))
            try:
                await conv.connect()
            except Exception as e:
                conv.end(f"upstream failed: {e}")
                return self._finish(request, 502, wire.error(msg["id"], wire.INTERNAL_ERROR,
                                                             f"the MCP server cannot be reached: {e}"))
            request.setHeader(b"mcp-session-id", conv.mcp_id.encode())
            conv.session.trailing_event("mcp.request", None, method="initialize", id=msg["id"])
            return self._finish(request, 200, wire.result(msg["id"], conv.initialize_result(
                params.get("protocolVersion"))))
        if not sid:
            return self._finish(request, 400, wire.error(msg.get("id"), wire.INVALID_REQUEST,
                                                         "Bad Request: no Mcp-Session-Id (send initialize first)"))
        conv = self.service.by_mcp_id.get(sid)
        if conv is None or conv.session.identity != ident.name:
            return self._finish(request, 404, wire.error(msg.get("id"), wire.INVALID_REQUEST, "Session not found"))
        version = (headers(wire.H_VERSION) or [None])[0]
        if version is not None and version not in wire.HANDSHAKE_VERSIONS:
            return self._finish(request, 400, wire.error(msg.get("id"), wire.INVALID_REQUEST,
                                                         f"Unsupported protocol version: {version}"))
        conv.touch()
        if wire.is_response(msg):
            conv.client_response(msg)
            return self._finish(request, 202)
        if wire.is_notification(msg):
            if msg["method"] not in wire.CLIENT_NOTIFICATIONS:
                conv.session.trailing_event("mcp.notification", "refused", direction="in", method=msg["method"])
                return self._finish(request, 400, wire.error(None, wire.METHOD_NOT_FOUND,
                                                             f"Method not found: {msg['method']}"))
            conv.client_notification(msg)
            return self._finish(request, 202)
        if msg["method"] not in wire.CLIENT_REQUESTS:
            conv.session.trailing_event("mcp.request", "refused", method=msg["method"], id=msg["id"],
                                        reason="unknown method")
            return self._finish(request, 200, wire.error(msg["id"], wire.METHOD_NOT_FOUND,
                                                         f"Method not found: {msg['method']}"))
        reply = Reply(request, sse_ok, msg["id"], self.gateway.reactor)
        reply.size_in = len(body)
        await conv.handle(msg, reply)

    def render_GET(self, request):
        ident, refused = self._gate(request)
        if ident is None:
            return refused
        sid = request.getHeader(b"mcp-session-id")
        if sid is None:
            return self._plain(request, 405, headers=((b"allow", b"POST, DELETE"),))
        conv = self.service.by_mcp_id.get(sid.decode("latin-1"))
        if conv is None or conv.session.identity != ident.name:
            return self._plain(request, 404, wire.error(None, wire.INVALID_REQUEST, "Session not found"))
        if len(conv.streams) >= 4:
            return self._plain(request, 409, wire.error(None, wire.INVALID_REQUEST, "too many streams open"))
        s = Stream(request, conv, self.gateway.reactor)
        conv.streams.append(s)
        while conv.backlog:
            s.send(conv.backlog.popleft())
        return NOT_DONE_YET

    def render_DELETE(self, request):
        ident, refused = self._gate(request)
        if ident is None:
            return refused
        sid = request.getHeader(b"mcp-session-id")
        conv = self.service.by_mcp_id.get(sid.decode("latin-1")) if sid else None
        if conv is None or conv.session.identity != ident.name:
            return self._plain(request, 404, wire.error(None, wire.INVALID_REQUEST, "Session not found"))
        conv.end("the client ended the MCP session (DELETE)")
        return self._plain(request, 200)


def _peer(request) -> str:
    a = request.getClientAddress()
    return f"{getattr(a, 'host', '?')}:{getattr(a, 'port', '?')}"


class MCPChannel(HeadDeadline, http.HTTPChannel):
    """A client connection of the MCP listener: its request heads have a deadline (slowloris)."""


class MCPSite(Site):
    noisy = False
    protocol = MCPChannel  # type: ignore[assignment]  # Twisted's stubs allow only its HTTP/2 wrapper here; any HTTPChannel works

    def __init__(self, resource, limit, head_timeout: float = 20.0):
        super().__init__(resource)
        bounded: Any = type("MCPRequest", (BoundedRequest,), {"limit": limit})  # its limit, per connection
        self.requestFactory = bounded
        self.displayTracebacks = False
        self.head_timeout = head_timeout

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        channel.head_timeout = self.head_timeout
        return channel

    def log(self, request):
        pass  # every request is an event of its session; an access log would say it twice
