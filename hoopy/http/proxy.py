"""The HTTP gateway: a twisted.web site that judges, forwards and records.

One ``GatewayChannel`` per client TCP connection holds that connection's
session. Each request is one ``Exchange``: authenticate (Bearer token or
X-Hoopy-Token), normalize the target (``paths``), ask the policy (waiting
for a reviewer when held), then forward with twisted.web's Agent over a
persistent connection pool. Response bodies stream straight through with
backpressure unless a masking rule applies; then JSON and text bodies are
buffered up to ``mask_limit`` and masked whole, and SSE is masked event by
event as it streams.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
import zlib
from io import BytesIO

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.http import HTTPChannel, PotentialDataLoss, datetimeToString
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from hoopy.http import headers as H
from hoopy.http.bodies import (Decoder, MaskError, Masker, Scrubber, SSEMasker, body_kind, charset_ok, codings,
                               decodable, looks_like_json)
from hoopy.http.graphql import TooLong, documents_in_body, documents_in_form, documents_in_json, renamed_masked_field
from hoopy.http.paths import PathError, normalize_target
from hoopy.http.upload import BodyPipe, BodyTooLarge
from hoopy.policy.rules import Operation, Unit
from hoopy.policy.verdicts import Allow, Deny, Hold
from hoopy.session import IN, OUT, StoreError
from hoopy.sockwrite import write_now
from hoopy.audit.events import iso

# Where a caller polls its own approval (retry mode, Prefer: respond-async): on this listener,
# with its own token. Never forwarded upstream.
STATUS_PREFIX = "/.hoopy/approvals/"


def _prefers_async(hdrs: dict) -> bool:
    """``Prefer: respond-async`` (RFC 7240), among any other preferences."""
    for value in hdrs.get(b"prefer", ()):
        for pref in value.split(b","):
            if pref.split(b";", 1)[0].split(b"=", 1)[0].strip().lower() == b"respond-async":
                return True
    return False

log = Logger()

_METHOD = re.compile(rb"[A-Z][A-Z0-9_-]*")
_BODY_DIGESTS = frozenset({b"etag", b"content-md5", b"digest", b"content-digest", b"repr-digest"})
# Bodies at least this large are masked on a worker thread, not the reactor.
THREAD_MASK_SIZE = 64 * 1024
_SNIFF = 512  # first bytes of an untyped request body that tell whether it looks like JSON
REVIEW_BODY_SHOWN = 16 * 1024  # of a held request's body, in the approval a reviewer reads
_NOT_READ = object()


class Refusal(Exception):
    """Ends an exchange with a JSON error the client shows."""

    def __init__(self, status: int, error: str, outcome: str = "refused", **extra):
        super().__init__(error)
        self.status, self.error, self.outcome, self.extra = status, error, outcome, extra


class GatewayChannel(HTTPChannel):
    """One client connection: holds its session and ends it when the connection goes.

    A response's head is held back until its first body bytes (or the request's end) and goes out
    with them in one write, sent at once when nothing is buffered (``write_now``): a small answer
    is one send() instead of two buffered writes, each costing a loop turn and epoll changes.
    """

    session = None
    proxy = None  # the HTTPProxy, set by the site
    _head = None  # the response head, not yet written

    def writeHeaders(self, version, code, reason, headers):
        if not isinstance(headers, Headers):
            return super().writeHeaders(version, code, reason, headers)
        seq = [version, b" ", code, b" ", reason, b"\r\n"]
        for name, values in headers.getAllRawHeaders():
            for value in values:
                seq += (name, b": ", value, b"\r\n")
        seq.append(b"\r\n")
        self._head = b"".join(seq)

    def write(self, data):
        head = self._head
        if head is not None:
            self._head = None
            data = head + data
        if data and self.transport is not None:
            write_now(self.transport, data)

    def writeSequence(self, iovec):
        self.write(b"".join(iovec))

    def flush_head(self):
        if self._head is not None:
            self.write(b"")

    def requestDone(self, request):
        self.flush_head()
        super().requestDone(request)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        if self.session is not None:
            self.proxy.end_session(self, "client disconnected")
        self.proxy.channels.discard(self)


class GatewayRequest(Request):
    """A request whose exchange starts once its head is in, while its body still arrives."""

    _parsePOSTFormSubmission = False  # the body is not ours to parse: it goes upstream
    defaultContentType = None
    exchange = None

    def gotLength(self, length):
        ch = self.channel
        # twisted.web sets these in requestReceived, after the body; the head is all we need.
        self.method, self.uri, self.clientproto = ch._command, ch._path, ch._version
        self.content = BodyPipe(ch.transport, length, keep=ch.proxy.settings.record_body_limit)
        # A held request may keep its caller's socket paused for long: no idle timeout meanwhile.
        self._saved_timeout = ch.setTimeout(None)
        self.exchange = Exchange(ch.proxy, self)
        self.exchange.run()

    def handleContentChunk(self, data):
        self.content.feed(data)

    def write(self, data):
        super().write(data)
        self.channel.flush_head()  # a head written alone (an event stream's) goes now, not later

    def process(self):
        # The exchange already runs (since gotLength): no resource tree to walk, nothing to render.
        self.site = self.channel.site
        if self.exchange is None:  # not reached: gotLength always starts one
            super().process()

    def requestReceived(self, command, path, version):
        if self._saved_timeout and hasattr(self.channel, "_savedTimeOut"):
            self.channel._savedTimeOut = self._saved_timeout  # restored by requestDone
        pipe = self.content
        super().requestReceived(command, path, version)  # reads content.tell(): before any finish
        pipe.end()


class GatewaySite(Site):
    protocol = GatewayChannel
    requestFactory = GatewayRequest
    noisy = False

    def __init__(self, proxy):
        super().__init__(proxy.resource)
        # The body is not ours to parse: it goes upstream. twisted.web parsed a multipart body after
        # it had streamed away, found nothing, and answered 400 to every multipart POST.
        self._parsePOSTFormSubmission = False
        self.proxy = proxy
        self.displayTracebacks = False

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        channel.proxy = self.proxy
        self.proxy.channels.add(channel)
        return channel

    def log(self, request):
        pass  # every request is an event in the store; no second access log


class ProxyResource(Resource):
    isLeaf = True

    def __init__(self, proxy):
        super().__init__()
        self.proxy = proxy

    def render(self, request):
        if getattr(request, "exchange", None) is None:  # started at its head (GatewayRequest)
            request.exchange = Exchange(self.proxy, request)
            request.exchange.run()
        return NOT_DONE_YET


class HTTPProxy:
    """Everything one http connection's requests share."""

    def __init__(self, gateway, connection, agent, tls: bool):
        from urllib.parse import urlsplit

        self.gateway = gateway
        self.connection = connection
        self.settings = connection.settings
        self.agent = agent
        self.proto = "https" if tls else "http"
        u = urlsplit(self.settings.upstream)
        self.upstream_base = f"{u.scheme}://{u.netloc}".encode()
        self.upstream_host = u.netloc.encode()
        self.upstream_hostname = u.hostname
        self.upstream_port = u.port or (443 if u.scheme == "https" else 80)
        self.tls_policy = None  # set by the service: the upstream's TLS creator factory
        self.upstream_prefix = u.path.rstrip("/").encode()
        self.inject = [(name.encode("latin-1"), s.value.encode("latin-1"))
                       for name, s in self.settings.upstream_headers.items()]
        self.inject_names = {n.lower() for n, _ in self.inject}
        # Request headers never forwarded as the caller sent them (hop-by-hop, ours, forwarding
        # headers, Host, Content-Length, the caller's credential, and those the gateway injects).
        self.dropped_request_headers = (H.HOP_BY_HOP | H.HOOPY | H.FORWARDING | self.inject_names
                                        | {b"host", b"content-length", b"authorization"})
        # The Host header the Agent would compute for the upstream (default ports left out, an
        # IPv6 literal in brackets), set by us so that the Agent does not copy every request's headers.
        host = u.hostname.encode("idna") if ":" not in u.hostname else b"[" + u.hostname.encode() + b"]"
        default = (u.scheme, self.upstream_port) in (("http", 80), ("https", 443))
        self.agent_host = host if default else b"%b:%d" % (host, self.upstream_port)
        # The injected credentials, whole and without their scheme ("Bearer ..."): an upstream that
        # echoes one back (a header, a redirect's Location, a debug body) must not hand it to the caller.
        secrets = set()
        for _, v in self.inject:
            for s in (v, v.partition(b" ")[2].strip()):
                if len(s) >= 8:
                    secrets.add(s)
        self.secrets = tuple(sorted(secrets, key=len, reverse=True))
        self.masker = Masker.from_config(gateway.config.masking_for(connection.name))
        self.resource = ProxyResource(self)
        self.channels: set = set()

    def scrub_header(self, value: bytes) -> bytes:
        for secret in self.secrets:
            if secret in value:
                value = value.replace(secret, H.REDACTED.encode())
        return value

    def scrub_body(self, data: bytes) -> bytes:
        for secret in self.secrets:
            if secret in data:
                data = data.replace(secret, b"*" * len(secret))
        return data

    def scrubber(self):
        return Scrubber(self.secrets) if self.secrets else None

    def raw_endpoint(self):
        """A client endpoint to the upstream outside the pool (for upgrades)."""
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        reactor = self.gateway.reactor
        ep = HostnameEndpoint(reactor, self.upstream_hostname, self.upstream_port,
                              timeout=min(self.settings.upstream_timeout, 10.0))
        if self.settings.upstream.startswith("https:"):
            creator = self.tls_policy.creatorForNetloc(self.upstream_hostname.encode(), self.upstream_port)
            ep = wrapClientTLS(creator, ep)
        return ep

    def session_for(self, channel, identity: str, peer: str):
        """The channel's session for this identity: a new one if another identity spoke before."""
        s = channel.session
        if s is not None and s.identity == identity and not s.ended:
            return defer.succeed(s)
        if s is not None:
            self.end_session(channel, "another identity used this connection")
        session = self.gateway.new_session(identity, self.connection, peer)

        def terminate(reason, channel=channel, session=session):
            d = session.end(reason)
            if channel.transport is not None:
                channel.transport.abortConnection()
            return d

        session.terminate = terminate
        channel.session = session
        return session.start()

    def end_session(self, channel, reason: str):
        s, channel.session = channel.session, None
        if s is not None:
            s.cancel_holds(reason)
            s.end(reason)

    def stop(self, reason: str):
        ds = []
        for channel in list(self.channels):
            s = channel.session
            if s is not None:
                ds += s.cancel_holds(reason)
                ds.append(s.terminate(reason))
            elif channel.transport is not None:
                channel.transport.loseConnection()
        return defer.DeferredList(ds, consumeErrors=True)


def _token(hdrs) -> str | None:
    """The caller's token (from ``hdrs``, lower-case name -> values); None when there is none, ""
    when there are two that differ (refused as a bad credential: which identity it acts as must
    not depend on which header a reader takes)."""
    found = set()
    for auth in hdrs.get(b"authorization", ()):
        scheme, _, value = auth.strip().partition(b" ")
        if scheme.lower() == b"bearer" and value.strip():
            found.add(value.strip())
    for tok in hdrs.get(b"x-hoopy-token", ()):
        if tok.strip():
            found.add(tok.strip())
    if not found:
        return None
    return found.pop().decode("latin-1") if len(found) == 1 else ""


class Exchange:
    """One request through the gateway, from judgement to the last byte."""

    def __init__(self, proxy: HTTPProxy, request):
        self.proxy = proxy
        self.request = request
        self.settings = proxy.settings
        self.started = time.monotonic()
        self.session = None
        self.method = request.method.decode("latin-1")
        self.path = None
        self.query = None
        self.status = None
        self.outcome = None
        self.error = None
        self.rule = None
        self.approval = None
        self.req_bytes = 0
        self.resp_bytes = 0
        self.req_body_record = None
        self.resp_body_record = None
        self.resp_headers_record = None
        self.gone = False
        self.finished = False
        self.pending = None  # the Deferred being waited on, cancelled if the client goes
        self.upstream_transport = None
        self.timer = None
        self.timed_out = False
        self.websocket = False
        self.req_kind = None
        self.holding = False
        self.token = None  # the caller's, kept out of the record
        self.hdrs: dict = {}  # the request headers by lower-case name (set by _run)
        self.held_body = _NOT_READ  # the body producer, when read whole before a hold
        self.review_body = None  # those bytes (masked), as the reviewer saw them
        self.body_refusal = None
        # twisted.web drops request.content when the request finishes; the record still needs it
        self.pipe = request.content if isinstance(request.content, BodyPipe) else None
        addr = request.getClientAddress()
        self.peer_host = getattr(addr, "host", "unknown")
        self.peer = f"{self.peer_host}:{getattr(addr, 'port', '')}"
        request.notifyFinish().addErrback(self._client_gone)

    # --- the flow -------------------------------------------------------------

    def run(self):
        self.request.defaultContentType = None
        d = defer.ensureDeferred(self._run())
        d.addErrback(self._failed)

    async def _run(self):
        req = self.request
        # The request's headers by lower-case name, read once: every check below looks them up here.
        self.hdrs = hdrs = {name.lower(): values for name, values in req.requestHeaders.getAllRawHeaders()}
        token = _token(hdrs)
        ident = self.proxy.gateway.identities.by_token(token) if token else None
        if ident is None:
            self.proxy.gateway.auth_failed(self.proxy.connection, self.peer, "", "bearer",
                                           "missing token" if token is None else "bad credentials")
            req.setHeader(b"www-authenticate", b'Bearer realm="hoopy"')
            self._reply(401, {"error": "authentication required: send Authorization: Bearer TOKEN"})
            self.outcome = "unauthenticated"
            return
        try:
            self.session = await self._wait(self.proxy.session_for(req.channel, ident.name, self.peer))
        except StoreError:
            raise Refusal(503, "refused: the audit store cannot record this session", "error")
        if req.uri.startswith(STATUS_PREFIX.encode()):  # (req.path is not parsed yet here)
            return await self._approval_status(
                req.uri[len(STATUS_PREFIX):].split(b"?", 1)[0].decode("ascii", "replace"))
        attribution = {k: (hdrs.get(h, (b"",))[-1] or b"").decode("utf-8", "replace") for k, h in (
            ("model", b"x-hoopy-model"), ("tool_call", b"x-hoopy-tool-call"),
            ("mcp_server", b"x-hoopy-mcp-server"))}
        if any(attribution.values()):
            try:
                await self._wait(self.session.attribute(**attribution))
            except StoreError:
                raise Refusal(503, "refused: the audit store cannot record this request", "error")
        self._check_shape()
        if self.query is not None and self.proxy.masker.field_keys:  # GET /graphql?query={...}
            self._check_graphql(documents_in_form(self.query))
        self.token = token
        self._check_token_stays(token)
        # The reviewer of a held request reads this text: the query is part of what is approved
        text = f"{self.method} {self.path}" + (f"?{self.query[:1024]}" if self.query else "")
        op = Operation("http", "request", text, self._units(),
                       {"method": self.method, "path": self.path, "query": self.query})
        if self._has_body() and not self.websocket and self.session.judge(op).outcome == "approve":
            # The reviewer approves the body too ("POST /v1/refunds" says nothing of the amount): it is
            # read whole first (masked where a rule says so), shown, and exactly it goes upstream.
            self.held_body = await self._request_body(whole=True)
            op.detail.update(self._body_for_review())
        # What a retry-mode approval is bound to: method, normalized path, query, the body's SHA-256.
        op = attrs.evolve(op, canonical=Operation.canonical_of(
            self.method, self.path, self.query, op.detail.get("body_sha256")))
        prefer_async = _prefers_async(self.hdrs)
        verdict = await self._wait(self.session.decide(op, "retry" if prefer_async else None))
        if isinstance(verdict, Hold):
            self.approval = verdict.id
            self.holding = True  # a caller gone now expires the approval (see _client_gone)
            try:
                verdict = await self._wait(verdict.resolution)
            finally:
                self.holding = False
        if isinstance(verdict, Deny):
            self.rule = verdict.rule
            self.approval = verdict.approval or self.approval
            if verdict.status == "pending":  # retry mode: nothing ran; the caller sends it again once approved
                url = f"{STATUS_PREFIX}{verdict.approval}"
                if prefer_async:
                    raise Refusal(202, verdict.reason, "pending", rule=verdict.rule, approval=self.approval,
                                  approval_status="pending", status_url=url)
                raise Refusal(403, verdict.reason, "refused", rule=verdict.rule, approval=self.approval,
                              approval_status="pending", status_url=url)
            raise Refusal(403, verdict.reason, "refused", rule=verdict.rule, approval=self.approval)
        assert isinstance(verdict, Allow)
        self.rule = verdict.rule
        if self.websocket:
            await self._relay()
        else:
            await self._forward()

    async def _approval_status(self, approval_id: str):
        """GET /.hoopy/approvals/ID: the caller's own approval (its token), to poll after a 202."""
        self.outcome = "status"
        if self.request.method not in (b"GET", b"HEAD"):
            self.request.setHeader(b"allow", b"GET, HEAD")
            return self._reply(405, {"error": "only GET reads an approval's status"})
        try:
            row = await self._wait(self.session.approval_status(approval_id))
        except StoreError:
            raise Refusal(503, "the audit store cannot be read", "error")
        if row is None:
            return self._reply(404, {"error": f"no approval {approval_id} of yours", "approval": approval_id})
        body = {k: v for k, v in row.items() if not k.endswith("_us")}
        for k in ("created_us", "expires_us", "decided_us", "usable_until_us"):
            if row.get(k) is not None:
                body[k[:-3]] = iso(row[k])
        if body["status"] == "approved":
            body["message"] = "approved: send the identical request again (it runs once)"
        self._reply(200, body)

    def _units(self) -> tuple:
        """What the policy judges: the path as forwarded, and each form of it that a lenient upstream
        reads as the same route (Express and older Spring ignore a trailing slash, IIS and many
        others ignore case, IIS drops trailing dots and spaces) whenever a rule treats that form
        more strictly (denies or holds it). Otherwise "DELETE /v1/customers/42/" would slip past
        "DELETE /v1/customers/*" and reach the very route it denies."""
        units = [Unit(self.method, self.path)]
        path = self.path
        trimmed = path.rstrip("/") or "/"
        dotless = "/".join(re.sub(r"(?:\.|%20)+$", "", seg) or seg for seg in trimmed.split("/"))
        forms = dict.fromkeys(f for p in (trimmed, path.lower(), dotless) for f in (p, p.lower(), p.rstrip("/") or "/"))
        for form in forms:
            if form == path:
                continue
            unit = Unit(self.method, form)
            j = self.session.judge(Operation("http", "request", f"{self.method} {form}", (unit,)))
            if j.outcome == "approve" or (j.outcome == "deny" and j.rule is not None):
                units.append(unit)
        return tuple(units)

    def _check_token_stays(self, token: str):
        """The caller's token goes nowhere but here: not upstream in another header, a cookie or the query."""
        from urllib.parse import unquote_plus

        tok = token.encode("latin-1")
        for name, values in self.request.requestHeaders.getAllRawHeaders():
            if name.lower() in (b"authorization", b"x-hoopy-token"):
                continue
            if any(tok in v for v in values):
                raise Refusal(400, f"the caller's token is in the {name.decode('latin-1')} header too, "
                                   "and would reach the upstream")
        if self.query is not None and (token in self.query or token in unquote_plus(self.query)):
            raise Refusal(400, "the caller's token is in the query string, and would reach the upstream")

    def _check_shape(self):
        req = self.request
        if req.method == b"CONNECT":
            raise Refusal(405, "CONNECT is not forwarded")
        if not _METHOD.fullmatch(req.method):
            # Rules name methods in upper case; many upstreams upper-case what they get, so "delete"
            # would be judged as no DELETE and run as one.
            raise Refusal(400, "the method must be an upper-case token (GET, POST, ...)")
        try:
            self.path, self.query = normalize_target(req.uri)
        except PathError as e:
            raise Refusal(400, str(e))
        if self.query:
            from urllib.parse import unquote_plus

            for part in re.split(r"[&;]", self.query):
                key = unquote_plus(part.partition("=")[0]).strip().lower()
                if key in H.METHOD_OVERRIDE_PARAMS:
                    raise Refusal(400, f"method-override parameters ({key}) are refused: send the real method")
        h = self.hdrs
        if len(h.get(b"host", ())) > 1:
            raise Refusal(400, "a request has one Host header")
        for name in H.PATH_OVERRIDE:
            if name in h:
                raise Refusal(400, f"path-override headers ({name.decode()}) are refused: the request line "
                                   "is what is judged")
        if b"content-length" in h and b"transfer-encoding" in h:
            raise Refusal(400, "a request cannot have both Content-Length and Transfer-Encoding")
        for name in H.METHOD_OVERRIDE:
            if name in h:
                raise Refusal(400, f"method-override headers ({name.decode()}) are refused: "
                                   "send the real method")
        if b"upgrade" in h:
            # exactly websocket: "websocket, h2c" would let the upstream pick h2c, and an HTTP/2 tunnel
            # carries requests to any path, none of them judged
            upgrade = [t.strip().lower() for v in h[b"upgrade"] for t in v.split(b",") if t.strip()]
            if req.method != b"GET" or upgrade != [b"websocket"]:
                raise Refusal(501, "only WebSocket upgrades (GET with Upgrade: websocket) are relayed")
            if self.proxy.masker.active:
                raise Refusal(501, "WebSocket frames cannot be masked, and this connection has masking "
                                   "rules: upgrades are refused rather than relayed unmasked")
            self.websocket = True

    # --- upstream ------------------------------------------------------------

    def _upstream_headers(self, upgrade: bool = False) -> Headers:
        req = self.request
        h = req.requestHeaders
        proxy = self.proxy
        masking = proxy.masker.active
        conn = self.hdrs.get(b"connection")
        extra_hop = H.connection_tokens(conn) - {b"upgrade"} if conn else ()
        out = Headers()
        if upgrade:
            out.setRawHeaders(b"host", [proxy.upstream_host])
            out.setRawHeaders(b"connection", [b"Upgrade"])
            out.setRawHeaders(b"upgrade", [b"websocket"])
        else:
            # The Agent's own Host value, set here: the Agent copies the headers to add one otherwise.
            out.setRawHeaders(b"host", [proxy.agent_host])
        dropped = proxy.dropped_request_headers
        for name, values in h.getAllRawHeaders():
            n = name.lower()
            if n in dropped or n in extra_hop:
                continue
            if masking:
                if n in (b"accept-encoding", b"range", b"if-range"):
                    continue  # we must read what we mask, whole (a slice of a JSON value is no JSON)
                if n in (b"if-none-match", b"if-match") and req.method in (b"GET", b"HEAD"):
                    continue  # a 304/412 would tell whether a guessed body (its ETag) is the unmasked one
            out.setRawHeaders(name, values)
        if masking:
            out.setRawHeaders(b"accept-encoding", [b"identity"])
        # No host= / X-Forwarded-Host: the caller picks its Host header, and an upstream (or the ingress
        # in front of it) that routes on X-Forwarded-Host would take the caller to another site.
        for name, value in H.forwarded_for(self.peer_host, proxy.proto, None).items():
            out.setRawHeaders(name, [value])
        for name, value in proxy.inject:
            out.setRawHeaders(name, [value])
        return out

    def _has_body(self) -> bool:
        h = self.hdrs
        return b"transfer-encoding" in h or (b"content-length" in h and self.pipe is not None
                                              and self.pipe.length != 0)

    def _body_for_review(self) -> dict:
        """The (masked) body read whole for a reviewer: its text up to REVIEW_BODY_SHOWN, or what it is."""
        data = self.review_body
        out = {"body_bytes": len(data), "body_sha256": hashlib.sha256(data).hexdigest()}
        if self.req_kind in (None, "other"):
            ct = (self.hdrs.get(b"content-type", [b"no content type"])[0]).decode("latin-1")[:200]
            out["body"] = f"[{len(data)} bytes of {ct}, sha256 {out['body_sha256']}]"
        else:
            text = data[:REVIEW_BODY_SHOWN].decode("utf-8", "replace")
            if len(data) > REVIEW_BODY_SHOWN:
                text += f"\n[... {len(data) - REVIEW_BODY_SHOWN} more bytes, {len(data)} in all, sha256 {out['body_sha256']}]"
            out["body"] = text
        return out

    async def _request_body(self, whole: bool = False):
        """The upstream request's body producer (None for none), masked when a rule says so; with
        ``whole``, read whole (up to mask_limit) and kept in ``review_body`` for a reviewer."""
        if self.held_body is not _NOT_READ:
            return self.held_body
        h = self.hdrs
        pipe = self.pipe
        if not (b"content-length" in h or b"transfer-encoding" in h):
            pipe.discard()
            return None
        ct = h.get(b"content-type", [None])[0]
        kind = body_kind(ct)
        self.req_kind = kind
        media = (ct or b"").split(b";", 1)[0].strip().lower()
        # A form field "_method" makes Rails, Laravel and Symfony run another method than the judged one.
        form = media == b"application/x-www-form-urlencoded"
        field_keys = self.proxy.masker.field_keys
        if media.startswith(b"multipart/"):
            watches = [_MultipartOverrideWatch(self._body_refused)]
            if field_keys:  # the GraphQL multipart request spec: the document is in a part
                watches.append(_MultipartGraphQLWatch(ct, self._graphql_part, self._body_refused))
            pipe.set_watch(lambda data: any(w(data) for w in watches))
        elif kind == "json":  # Laravel reads _method from a JSON body too
            pipe.set_watch(_JSONOverrideWatch(self._body_refused))
        if self.body_refusal is not None:
            raise self.body_refusal
        mask = self.proxy.masker.applies(kind)
        sniffed_json = False
        if field_keys and kind == "other" and not media.startswith(b"multipart/") and not whole:
            # GraphQL servers parse JSON sent with no type, or another: such a body is read whole
            # and checked for aliases; anything else streams as it comes.
            sniffed_json = looks_like_json(await self._wait(pipe.sniff(_SNIFF), cancel=True))
        if not mask and not form and not whole and not sniffed_json:
            pipe.on_progress = self._progress
            return pipe
        limit = self.settings.mask_limit
        if b"content-encoding" in h:
            raise Refusal(415, "a request body that must be masked (or a form, checked for a method "
                               "override, or one a reviewer reads) cannot be content-encoded")
        why = ("must be masked" if mask else "is a form, read whole to check for a method override,"
               if form else "needs approval, and is read whole to be shown to the reviewer,"
               if whole else "looks like JSON, read whole to check GraphQL aliases of masked fields,")
        too_big = Refusal(413, f"the request body {why} and is larger than mask_limit ({limit} bytes)")
        if pipe.length is not UNKNOWN_LENGTH and pipe.length > limit:
            raise too_big
        try:
            data = await self._wait(pipe.collect(limit), cancel=True)
        except BodyTooLarge:
            raise too_big
        if field_keys:
            self._check_graphql(documents_in_body(data, media.decode("latin-1")))
        if form:
            from urllib.parse import parse_qsl

            for key, _ in parse_qsl(data.decode("latin-1"), keep_blank_values=True):
                if key.strip().lower() in H.METHOD_OVERRIDE_PARAMS:
                    raise Refusal(400, f"method-override parameters ({key.strip()}) are refused: "
                                       "send the real method")
        if mask:
            try:
                data, counts = await self._mask(kind, data)
            except MaskError as e:
                raise Refusal(400, f"the request body cannot be masked: {e}")
            await self._record_redactions("request", counts)
        self._keep_body("req", data, kind)
        self.review_body = data
        return _ProgressProducer(FileBodyProducer(BytesIO(data)), self._progress)

    def _check_graphql(self, documents):
        """A GraphQL alias renames a response key: one that renames a masked field would unmask it."""
        try:
            hit = renamed_masked_field(documents, self.proxy.masker.field_keys)
        except TooLong as e:
            raise Refusal(413, f"{e} is not checked for aliases of masked fields, so it is refused")
        if hit is not None:
            raise Refusal(403, f"the GraphQL alias {hit[0]!r} renames the masked field {hit[1]!r}: "
                               "ask for it under its own name", "refused", rule=None, approval=None)

    def _graphql_part(self, name: str, data: bytes):
        """A multipart part that may hold a GraphQL document ("operations": JSON; "query": the text)."""
        if name == "query":
            self._check_graphql([data.decode("utf-8", "replace")])
        elif looks_like_json(data):
            try:
                self._check_graphql(documents_in_json(json.loads(data)))
            except ValueError:
                raise Refusal(400, "the multipart part 'operations' is not JSON")

    def _body_refused(self, refusal):
        """A streaming body turned out to be refused (a multipart method override): stop it going on."""
        if self.body_refusal is None:
            self.body_refusal = refusal
            if self.pipe is not None:
                self.pipe.abort(Failure(refusal))

    def _target(self) -> bytes:
        t = self.proxy.upstream_prefix + self.path.encode()
        return t + b"?" + self.query.encode() if self.query is not None else t

    async def _relay(self):
        """A judged WebSocket upgrade: relayed byte for byte once the upstream says 101."""
        from hoopy.http.upgrade import OneConnection, Timer, UpstreamSide, request_head, take_over

        up = UpstreamSide(request_head(b"GET", self._target(), self._upstream_headers(upgrade=True)))
        for d in (self.proxy.raw_endpoint().connect(OneConnection(up)), up.answered):
            self._arm_timer(d)
            try:
                result = await self._wait(d, cancel=True)
            except Exception as e:
                if up.transport is not None:
                    up.transport.abortConnection()
                if self.gone:
                    raise defer.CancelledError()
                if self.timed_out:
                    raise Refusal(504, f"the upstream did not answer within {self.settings.upstream_timeout:g}s",
                                  "error")
                raise Refusal(502, f"the upstream could not be reached: {_reason(e)}", "error")
            finally:
                self._disarm_timer()
        status, head, rest = result
        self.status = status
        if status != 101:
            up.transport.abortConnection()
            raise Refusal(502, f"the upstream answered the WebSocket upgrade with {status}, not 101", "error")
        said = [ln.partition(b":")[2].strip().lower() for ln in head.split(b"\r\n")[1:]
                if ln.partition(b":")[0].strip().lower() == b"upgrade"]
        if said != [b"websocket"]:
            up.transport.abortConnection()
            raise Refusal(502, "the upstream switched to another protocol than WebSocket: no tunnel", "error")
        channel, session, timer = self.request.channel, self.session, Timer()
        proxy = self.proxy

        def lost():
            session.event("websocket.closed", "ok", path=self.path, duration_ms=timer.ms(),
                          bytes_from_upstream=up.bytes_in + len(rest), bytes_to_upstream=client.bytes_out
                          ).addErrback(lambda f: log.error("websocket close not recorded: {e}",
                                                           e=f.getErrorMessage()))
            session.count_bytes(OUT, up.bytes_in + len(rest))
            session.count_bytes(IN, client.bytes_out)
            if channel.session is not None:
                proxy.end_session(channel, "client disconnected")
            proxy.channels.discard(channel)

        head = self.proxy.scrub_header(head)  # an injected credential echoed in the 101 stays here
        client = take_over(channel, up, head + rest, lost)
        self.resp_bytes = len(head) + len(rest)
        self.finished = True
        self.outcome = "upgraded"
        self._record()

    async def _forward(self):
        body = await self._request_body()
        uri = self.proxy.upstream_base + self._target()
        d = self.proxy.agent.request(self.request.method, uri, self._upstream_headers(), body)
        self._arm_timer(d)  # reset by every body byte in or out (_progress): an upload takes its time
        try:
            response = await self._wait(d, cancel=True)
        except Exception as e:
            if self.gone:
                raise defer.CancelledError()
            if self.body_refusal is not None:
                raise self.body_refusal
            if not self.timed_out:
                raise Refusal(502, f"the upstream could not be reached: {_reason(e)}", "error")
            raise Refusal(504, f"the upstream did not answer within {self.settings.upstream_timeout:g}s",
                          "error")
        finally:
            self._disarm_timer()
        await self._respond(response)

    def _arm_timer(self, d):
        def expire():
            if self.pipe is not None and self.pipe.waiting_on_caller:
                # the upload is slow on the caller's side: not the upstream's fault
                self.timer = self.proxy.gateway.reactor.callLater(self.settings.upstream_timeout, expire)
                return
            self.timed_out = True
            d.cancel()

        self.timer = self.proxy.gateway.reactor.callLater(self.settings.upstream_timeout, expire)

    def _progress(self):
        # upstream_timeout counts from the last request byte received or sent, not from the start
        # of an upload: a slow caller is not a slow upstream
        if self.timer is not None and self.timer.active():
            self.timer.reset(self.settings.upstream_timeout)

    def _disarm_timer(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    async def _respond(self, response):
        req = self.request
        self.status = response.code
        ct = (response.headers.getRawHeaders(b"content-type") or [None])[0]
        ct = ct.decode("latin-1") if ct else None
        kind = body_kind(ct)
        # every Content-Encoding header: reading only the first would take "identity, gzip" as plain
        encoding = b", ".join(response.headers.getRawHeaders(b"content-encoding") or []).decode("latin-1") or None
        masker = self.proxy.masker
        # HEAD, 204 and 304 carry no body to mask (and must keep their headers as sent)
        bodyless = self.method == "HEAD" or response.code in (204, 304)
        must_mask = masker.applies(kind) and not bodyless
        if masker.active and not bodyless and (ct or "").strip().lower().startswith("multipart/"):
            # a batch answer (multipart/mixed) holds JSON parts the masker would not see
            response.deliverBody(_Discard())
            raise Refusal(502, f"the upstream body is {ct.split(';')[0]}, whose parts cannot be masked", "error")
        deliver = response.deliverBody
        if masker.active and not bodyless and kind == "other":
            # Not labelled JSON or text, yet it may be JSON (a missing or wrong Content-Type, or one
            # the caller negotiated): its first bytes decide.
            if not decodable(encoding):
                response.deliverBody(_Discard())
                raise Refusal(502, f"the upstream body may need masking but its Content-Encoding "
                                   f"{encoding!r} cannot be decoded", "error")
            sniff = _Sniff(encoding, self)
            response.deliverBody(sniff)
            head = await self._wait(sniff.decided, cancel=True)
            deliver = sniff.attach
            if looks_like_json(head):
                must_mask, kind = True, "text"  # masked as JSON (or JSON lines) when it parses
        if must_mask and response.code == 206:
            deliver(_Discard())
            raise Refusal(502, "the upstream sent a partial (206) body that must be masked: a slice "
                               "cannot be masked", "error")
        if must_mask and not charset_ok(ct):
            deliver(_Discard())
            raise Refusal(502, f"the upstream body must be masked but its charset ({ct}) cannot be "
                               "read by the masker", "error")
        extra_hop = H.connection_tokens(response.headers.getRawHeaders(b"connection"))
        out = req.responseHeaders
        scrub = self.proxy.scrub_header
        header_counts: dict = {}

        def clean(values):
            values = [scrub(v) for v in values]
            if not masker.detectors:
                return values
            masked = []
            for v in values:  # a pattern's match in a header (a Location's query, a file name) too
                try:
                    v, c = masker.mask_text(v)
                except MaskError:
                    c = {}
                for k, cnt in c.items():
                    header_counts[k] = header_counts.get(k, 0) + cnt
                masked.append(v)
            return masked

        # A HEAD or 304 answer for a body that may be masked: its Content-Length is the unmasked one
        head_of_masked = ((self.method == "HEAD" or response.code == 304) and masker.active
                          and (masker.applies(kind) or kind == "other"))
        cleaned = [(name, clean(values)) for name, values in response.headers.getAllRawHeaders()]
        for name, values in cleaned:
            n = name.lower()
            if n in H.HOP_BY_HOP or n in extra_hop:
                continue
            if must_mask and n in (b"content-encoding", b"content-length"):
                continue
            if n == b"content-length" and head_of_masked:
                continue  # the unmasked body's length: not what a GET would send, and it tells a masked value's size
            if masker.active and n in _BODY_DIGESTS:
                continue  # a hash of the unmasked body (Express's ETag is its SHA-1): a guess checked offline
            out.setRawHeaders(name, values)
        self.resp_headers_record = H.for_record(cleaned)
        try:
            await self._record_redactions("response", header_counts)
        except Exception:
            deliver(_Discard())  # the body is read by no one: let the upstream connection go
            raise
        if must_mask and encoding and not decodable(encoding):
            deliver(_Discard())
            raise Refusal(502, f"the upstream body must be masked but its Content-Encoding "
                               f"{encoding!r} cannot be decoded", "error")
        decoder = Decoder(encoding, self.settings.mask_limit) if must_mask and codings(encoding) else None
        if must_mask and kind != "sse":
            data = await self._wait(self._collect(deliver, decoder), cancel=True)
            try:
                data, counts = await self._mask(kind, data)
            except MaskError as e:
                raise Refusal(502, f"the upstream body cannot be masked: {e}", "error")
            data = self.proxy.scrub_body(data)
            await self._record_redactions("response", counts)
            self._keep_body("resp", data, kind)
            req.setResponseCode(response.code, response.phrase)
            req.setHeader(b"content-length", str(len(data)).encode())
            self._write(data)
            self._finish("ok")
            return
        req.setResponseCode(response.code, response.phrase)
        if not must_mask and not bodyless and response.length is not UNKNOWN_LENGTH:
            # (HEAD, 204 and 304 keep the upstream's header, if any: their "length" here is 0, the
            # body they describe or lack is not)
            req.setHeader(b"content-length", str(response.length).encode())
        scrubber = self.proxy.scrubber() if not codings(encoding) or must_mask else None
        stream = _Stream(self, SSEMasker(masker, self.settings.mask_limit) if must_mask else None,
                         decoder, kind, scrubber)
        self.pending = stream.done
        deliver(stream)
        try:
            await stream.done
        finally:
            self.pending = None

    def _collect(self, deliver, decoder) -> defer.Deferred:
        c = _Collect(self, decoder, self.settings.mask_limit)
        deliver(c)
        return c.done

    async def _mask(self, kind, data):
        masker = self.proxy.masker
        if len(data) >= THREAD_MASK_SIZE:
            return await deferToThread(masker.mask, kind, data)
        return masker.mask(kind, data)

    async def _record_redactions(self, direction: str, counts: dict):
        if not counts:
            return
        try:
            await self._wait(self.session.redacted(sum(counts.values()), direction=direction,
                                                   path=self.path, counts=counts))
        except StoreError:
            raise Refusal(503, "refused: the audit store cannot record a redaction", "error")

    def _keep_body(self, which, data: bytes, kind):
        limit = self.settings.record_body_limit
        rec = _prefix(data[:limit], limit, len(data))
        if which == "req":
            self.req_body_record = rec
        else:
            self.resp_body_record = rec

    # --- the client side ---------------------------------------------------------

    async def _wait(self, d, cancel: bool = False):
        """Await ``d``; if the client goes away meanwhile, stop here.

        Only Deferreds of this exchange (upstream requests, body reads) are
        cancelled; one owned by the store or the approvals (an event being made
        durable, a reviewer's decision) is let fire, and the exchange ends after.
        """
        if cancel:
            self.pending = d
            if self.gone:
                d.cancel()
        try:
            result = await d
        finally:
            if self.pending is d:
                self.pending = None
        if self.gone:
            raise defer.CancelledError()
        return result

    def _client_gone(self, failure):
        if self.finished:
            return
        self.gone = True
        self._disarm_timer()
        if self.pending is not None:
            self.pending.cancel()
        if self.holding and self.session is not None:
            self.session.cancel_holds("the caller went away while held")
        if self.upstream_transport is not None:
            self.upstream_transport.stopProducing()
        if self.pipe is not None:
            self.pipe.abort(failure)

    def _write(self, data: bytes):
        if not self.gone and data:
            self.resp_bytes += len(data)
            self.request.write(data)

    def _reply(self, status: int, body: dict, headers=()):
        req = self.request
        self.status = status
        data = json.dumps(body).encode() + b"\n"
        if not self.gone and not req.startedWriting:
            req.setResponseCode(status)
            for name in list(dict(req.responseHeaders.getAllRawHeaders())):
                if name.lower() not in (b"www-authenticate",):
                    req.responseHeaders.removeHeader(name)
            for name, value in headers:
                req.setHeader(name, value)
            req.setHeader(b"content-type", b"application/json")
            req.setHeader(b"cache-control", b"no-store")
            req.setHeader(b"date", datetimeToString())
            req.setHeader(b"content-length", str(len(data)).encode())
            self._write(data)
        self._finish(None)

    def _finish(self, outcome):
        if self.outcome is None:
            self.outcome = outcome
        if self.finished:
            return
        self.finished = True
        if not self.gone:
            pipe = self.pipe
            if pipe is None or pipe.done:
                self.request.finish()
            else:
                self._finish_after_body(pipe)
        self._record()

    def _finish_after_body(self, pipe):
        # Answered before the caller finished sending (refused, or the upstream answered early).
        # twisted.web can only end a request whose body is in, so the rest is read and dropped;
        # a caller that keeps sending for long loses the connection instead.
        pipe.discard()
        req = self.request

        def close():
            transport = getattr(req.channel, "transport", None)
            if transport is not None:
                transport.loseConnection()

        timer = self.proxy.gateway.reactor.callLater(5, close)
        req.notifyFinish().addBoth(lambda _: timer.cancel() if timer.active() else None)

        def received(_):
            if timer.active():
                timer.cancel()
            if not self.gone and not req.finished:
                req.finish()

        pipe.received_all.addCallback(received)

    def _abort(self, outcome, error):
        """The response already started: all that is left is to cut the connection."""
        self.outcome, self.error = outcome, error
        self.finished = True
        if not self.gone and self.request.channel.transport is not None:
            self.request.channel.transport.abortConnection()
        self._record()

    def _failed(self, failure: Failure):
        if self.finished:
            return
        if failure.check(defer.CancelledError) and self.gone:
            self.outcome, self.error = "client gone", "the client went away"
            self.finished = True
            self._record()
            return
        if failure.check(Refusal):
            r = failure.value
        elif failure.check(StoreError):
            r = Refusal(503, "refused: the audit store cannot record this request", "error")
        else:
            log.failure("http exchange failed", failure)
            r = Refusal(502, f"the gateway could not complete the request: {failure.getErrorMessage()}",
                        "error")
        self.error = r.error
        self.outcome = r.outcome
        if self.request.startedWriting:
            self._abort(r.outcome, r.error)
            return
        body = {"error": r.error}
        # A policy refusal always names its rule and approval (null when none): INTERFACE.md
        body.update({k: v for k, v in r.extra.items() if k in ("rule", "approval", "status_url")})
        if "approval_status" in r.extra:
            body["status"] = r.extra["approval_status"]
        headers = ()
        if r.status == 202:  # Prefer: respond-async (RFC 7240): accepted for approval, poll status_url
            body["message"] = body.pop("error")
            headers = ((b"location", r.extra["status_url"].encode()), (b"preference-applied", b"respond-async"))
        self._reply(r.status, body, headers)

    def _record(self):
        session = self.session
        if session is None:
            return
        pipe = self.pipe
        if pipe is not None:
            self.req_bytes = pipe.received
            if (self.req_body_record is None and self.req_kind not in (None, "other")
                    and not self.proxy.masker.applies(self.req_kind)):
                # (a body that had to be masked and was not, refused or too large, is not kept unmasked)
                self.req_body_record = _prefix(bytes(pipe.head), self.settings.record_body_limit, pipe.received)
        session.count_bytes(IN, self.req_bytes)
        session.count_bytes(OUT, self.resp_bytes)
        data = {
            "method": self.method, "path": self.path, "query": self.query, "status": self.status,
            "request_bytes": self.req_bytes, "response_bytes": self.resp_bytes,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 3),
            "request_headers": H.for_record(self.request.requestHeaders.getAllRawHeaders()),
        }
        if self.path is None:
            data["target"] = self.request.uri.decode("latin-1")[:2048]
        if self.token:  # a caller that put its token somewhere else too (refused): not into the record
            text, tok = json.dumps(data), json.dumps(self.token)[1:-1]
            if tok in text:
                data = json.loads(text.replace(tok, H.REDACTED))
        for k, v in (("rule", self.rule), ("approval", self.approval), ("error", self.error),
                     ("response_headers", self.resp_headers_record),
                     ("request_body", self.req_body_record), ("response_body", self.resp_body_record)):
            if v is not None:
                data[k] = v
        session.trailing_event("http.request", self.outcome or "ok", **data)


def _prefix(data: bytes, limit: int, total: int):
    if limit <= 0:
        return None
    text = data[:limit].decode("utf-8", "replace")
    return text if total <= limit else {"head": text, "total_bytes": total}


def _reason(e) -> str:
    inner = getattr(e, "reasons", None)
    if inner:
        return "; ".join(f.getErrorMessage() or f.type.__name__ for f in inner)
    return str(e) or type(e).__name__


@implementer(IBodyProducer)
class _ProgressProducer:
    """A body producer that reports each piece it writes (for the idle timeout)."""

    def __init__(self, inner, progress):
        self.inner = inner
        self.length = inner.length
        self.progress = progress

    def startProducing(self, consumer):
        progress = self.progress

        class Consumer:
            def write(self, data):
                progress()
                consumer.write(data)

            def __getattr__(self, name):
                return getattr(consumer, name)

        return self.inner.startProducing(Consumer())

    def pauseProducing(self):
        self.inner.pauseProducing()

    def resumeProducing(self):
        self.inner.resumeProducing()

    def stopProducing(self):
        self.inner.stopProducing()


class _MultipartOverrideWatch:
    """Looks through a streaming multipart body for a method-override field (``name="_method"``)."""

    PATTERN = re.compile(rb"(?i)content-disposition:[^\r\n]*(?:(?:_|%5f)method|x-http-method|x-method-override)")
    CARRY = 1024

    def __init__(self, refuse):
        self.refuse = refuse
        self.tail = b""

    def __call__(self, data: bytes) -> bool:
        buf = self.tail + data
        self.tail = buf[-self.CARRY:]
        if self.PATTERN.search(buf):
            self.refuse(Refusal(400, "method-override fields (_method) in the body are refused: send the real method"))
            return True
        return False


class _MultipartGraphQLWatch:
    """Finds the parts of a streaming multipart body named "operations" or "query" (the GraphQL
    multipart request spec; form posts), holds each (up to MAX_PART) until it ends, and has it
    checked before the piece that ends it goes on. Other parts stream through unheld."""

    MAX_PART = 1 << 20
    NAME = re.compile(rb'(?i)content-disposition:[^\r\n]*?;\s*name\s*=\s*(?:"([^"]*)"|([^;\s]+))')

    def __init__(self, content_type: bytes, check, refuse):
        m = re.search(rb'(?i);\s*boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', content_type or b"")
        self.delim = b"\r\n--" + (m.group(1) or m.group(2)) if m else None
        self.check, self.refuse = check, refuse
        self.buf = b"\r\n"  # the first delimiter comes without the CRLF before it
        self.state = "seek"  # seek a delimiter | head (a part's headers) | hold (a checked part) | end
        self.name = None

    def __call__(self, data: bytes) -> bool:
        if self.delim is None:
            self.refuse(Refusal(400, "a multipart body without a boundary"))
            return True
        self.buf += data
        try:
            self._parse()
        except Refusal as r:
            self.refuse(r)
            return True
        return False

    def _parse(self):
        d = self.delim
        while True:
            if self.state == "end":
                self.buf = b""
                return
            if self.state in ("seek", "hold"):
                i = self.buf.find(d)
                if i < 0:
                    if self.state == "seek":
                        self.buf = self.buf[-(len(d) - 1):]
                    elif len(self.buf) > self.MAX_PART:
                        raise Refusal(413, f"the multipart part {self.name!r} (a GraphQL document) is larger "
                                           f"than {self.MAX_PART} bytes and cannot be checked")
                    return
                if self.state == "hold":
                    self.check(self.name, self.buf[:i])
                self.buf, self.state = self.buf[i + len(d):], "head"
            if self.state == "head":
                if self.buf[:2] == b"--":
                    self.state = "end"
                    continue
                if len(self.buf) < 2:
                    return  # not yet known whether this is the closing delimiter
                # the part's headers end at a blank line; the CRLF after the delimiter starts them
                j = self.buf.find(b"\r\n\r\n")
                if j < 0:
                    if len(self.buf) > 16384:
                        raise Refusal(400, "a multipart part's headers are longer than 16 KiB")
                    return
                m = self.NAME.search(self.buf[:j + 2])
                self.name = (m.group(1) or m.group(2) or b"").decode("latin-1").lower() if m else ""
                self.buf = self.buf[j + 4:]
                self.state = "hold" if self.name in ("operations", "query") else "seek"


class _JSONOverrideWatch(_MultipartOverrideWatch):
    """A JSON body with a "_method" key (Laravel runs it as that method), or with an ASCII letter
    written as an escape (\\u005fmethod is the same key, and no encoder writes letters so)."""

    PATTERN = re.compile(rb'"_method"|\\u00(?:4[1-9a-fA-F]|5[0-9aAfF]|6[1-9a-fA-F]|7[0-9aA])')
    CARRY = 16


class _Sniff(Protocol):
    """Holds the first bytes of a body until they show whether it may be JSON, then hands the
    connection (and those bytes) to the protocol that reads the body."""

    SNIFF = 512

    def __init__(self, encoding, exchange):
        self.exchange = exchange
        self.stall = None
        self.buf = b""
        self.peek = zlib.decompressobj(16 + zlib.MAX_WBITS if codings(encoding)[:1] in (["gzip"], ["x-gzip"])
                                       else zlib.MAX_WBITS) if codings(encoding) else None
        self.head = b""
        self.decided = defer.Deferred(lambda d: self._cancel())
        self.target = None
        self.lost = None

    def connectionMade(self):
        self.exchange.upstream_transport = self.transport
        reactor, timeout = self.exchange.proxy.gateway.reactor, self.exchange.settings.upstream_timeout
        self.stall = reactor.callLater(timeout, self._stalled)

    def _stalled(self):
        if not self.decided.called:
            timeout = self.exchange.settings.upstream_timeout
            if self.transport is not None:
                self.transport.stopProducing()
            self.decided.errback(Refusal(504, f"the upstream stalled: no body bytes for {timeout:g}s", "error"))

    def _decide(self):
        if self.stall is not None and self.stall.active():
            self.stall.cancel()
        if not self.decided.called:
            self.decided.callback(self.head)

    def dataReceived(self, data):
        if self.target is not None:
            return self.target.dataReceived(data)
        self.buf += data
        if self.decided.called:
            return
        if self.peek is not None:
            try:
                self.head += self.peek.decompress(data, self.SNIFF)
            except zlib.error:
                self.head = b"{"  # undecodable: taken for JSON, and refused when masking finds it corrupt
        else:
            self.head += data
        stripped = self.head.replace(b"\x00", b"").lstrip(b" \t\r\n\x1e\xef\xbb\xbf\xff\xfe")
        if stripped or len(self.head) >= self.SNIFF or len(self.buf) >= 64 * 1024:
            self.transport.pauseProducing()
            self._decide()

    def connectionLost(self, reason):
        if self.target is not None:
            return self.target.connectionLost(reason)
        self.exchange.upstream_transport = None
        self.lost = reason
        self._decide()

    def _cancel(self):
        if self.stall is not None and self.stall.active():
            self.stall.cancel()
        if self.transport is not None:
            self.transport.stopProducing()

    def attach(self, target):
        self.target = target
        transport = self.transport
        target.makeConnection(transport)
        if self.lost is None and transport is not None and not isinstance(target, _Discard):
            transport.resumeProducing()
        buf, self.buf = self.buf, b""
        if buf:
            target.dataReceived(buf)
        if self.lost is not None:
            target.connectionLost(self.lost)


class _Discard(Protocol):
    def dataReceived(self, data):
        pass

    def connectionMade(self):
        self.transport.stopProducing()


class _Collect(Protocol):
    """Buffers a body that must be masked, up to the limit."""

    def __init__(self, exchange, decoder, limit):
        self.exchange = exchange
        self.decoder = decoder
        self.limit = limit
        self.parts = []
        self.size = 0
        self.raw = 0
        self.done = defer.Deferred(lambda d: self._stop())
        self.error = None
        self.stall = None

    def connectionMade(self):
        self.exchange.upstream_transport = self.transport
        reactor, timeout = self.exchange.proxy.gateway.reactor, self.exchange.settings.upstream_timeout
        self.stall = reactor.callLater(timeout, self._stalled)

    def _stalled(self):
        timeout = self.exchange.settings.upstream_timeout
        self._fail(f"the upstream stalled: no body bytes for {timeout:g}s", 504)

    def _stop(self):
        if self.stall is not None and self.stall.active():
            self.stall.cancel()
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data):
        if self.stall is not None and self.stall.active():
            self.stall.reset(self.exchange.settings.upstream_timeout)
        if self.error is not None:
            return
        self.raw += len(data)
        try:
            if self.decoder is not None:
                data = self.decoder.feed(data)
        except MaskError as e:
            return self._fail(str(e))
        self.size += len(data)
        if self.size > self.limit:
            return self._fail(f"the upstream body must be masked and is larger than mask_limit "
                              f"({self.limit} bytes)")
        self.parts.append(data)

    def _fail(self, error, status=502):
        self.error = error
        self._stop()
        if not self.done.called:
            self.done.errback(Refusal(status, error, "error"))

    def connectionLost(self, reason):
        if self.stall is not None and self.stall.active():
            self.stall.cancel()
        self.exchange.upstream_transport = None
        if self.done.called:
            return
        if not reason.check(ResponseDone, PotentialDataLoss):
            self.done.errback(Refusal(502, f"the upstream response broke off: {_reason(reason.value)}",
                                      "error"))
            return
        try:
            if self.decoder is not None:
                self.parts.append(self.decoder.close())
        except MaskError as e:
            self.done.errback(Refusal(502, str(e), "error"))
            return
        self.done.callback(b"".join(self.parts))


@implementer(IPushProducer)
class _Stream(Protocol):
    """Streams an upstream body to the client with backpressure both ways.

    The client's transport pauses us (registerProducer) and we pause the
    upstream connection; SSE is masked event by event on the way.
    """

    def __init__(self, exchange: Exchange, sse: SSEMasker | None, decoder, kind, scrubber=None):
        self.exchange = exchange
        self.scrubber = scrubber
        self.sse = sse
        self.decoder = decoder
        self.kind = kind
        self.done = defer.Deferred(lambda d: self.stopProducing())
        self.keep = exchange.settings.record_body_limit if kind != "other" else 0
        self.kept = []
        self.kept_size = 0
        self.total = 0
        self.paused_for_store = False
        self.client_paused = False
        self.broken = False
        self.backlog = []
        self.lost = None
        self.stall = None

    def connectionMade(self):
        self.exchange.upstream_transport = self.transport
        self.exchange.request.registerProducer(self, True)
        if self.kind == "sse":
            self.exchange.request.write(b"")  # the head now: an event stream may be quiet a while
        else:
            # An event stream may rightly be quiet for long; any other body may not.
            timeout = self.exchange.settings.upstream_timeout
            self.stall = self.exchange.proxy.gateway.reactor.callLater(timeout, self._stalled)

    def _stalled(self):
        timeout = self.exchange.settings.upstream_timeout
        if self.client_paused or self.paused_for_store:  # waiting on the client, not the upstream
            self.stall = self.exchange.proxy.gateway.reactor.callLater(timeout, self._stalled)
            return
        self._break(f"the upstream stalled: no body bytes for {timeout:g}s")

    # IPushProducer, for the client's transport
    def pauseProducing(self):
        self.client_paused = True
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self):
        self.client_paused = False
        if self.transport is not None and not self.paused_for_store:
            self.transport.resumeProducing()

    def stopProducing(self):
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data):
        if self.stall is not None and self.stall.active():
            self.stall.reset(self.exchange.settings.upstream_timeout)
        if self.broken:
            return
        if self.paused_for_store:
            self.backlog.append(data)  # the parser may still hand us what it had read
            return
        try:
            if self.decoder is not None:
                data = self.decoder.feed(data)
            if self.sse is not None:
                data = self.sse.feed(data)
                counts = self.sse.take_counts()
                if counts:
                    return self._after_redaction(counts, data)
        except MaskError as e:
            return self._break(f"the upstream stream cannot be masked: {e}")
        self._emit(data)

    def _emit(self, data, last=False):
        if self.scrubber is not None:
            data = self.scrubber.feed(data)
            if last:
                data += self.scrubber.close()
        if not data:
            return
        self.total += len(data)
        if self.kept_size < self.keep:
            piece = data[:self.keep - self.kept_size]
            self.kept.append(piece)
            self.kept_size += len(piece)
        self.exchange._write(data)

    def _after_redaction(self, counts, data, then=None):
        # Hold the stream until the redaction is durable, then pass on the masked event.
        ex = self.exchange
        self.paused_for_store = True
        if self.transport is not None:
            self.transport.pauseProducing()
        d = ex.session.redacted(sum(counts.values()), direction="response", path=ex.path, counts=counts)

        def written(_):
            self.paused_for_store = False
            self._emit(data)
            if then is not None:
                return then()
            while self.backlog and not self.paused_for_store and not self.broken:
                self.dataReceived(self.backlog.pop(0))
            if self.paused_for_store or self.broken:
                return
            if self.lost is not None:
                return self._lost(self.lost)
            if self.transport is not None and not self.client_paused:
                self.transport.resumeProducing()

        def failed(f):
            self._break("the audit store cannot record a redaction")

        d.addCallbacks(written, failed)

    def _break(self, error):
        self.broken = True
        if self.transport is not None:
            self.transport.stopProducing()
        if not self.done.called:
            self.done.errback(Refusal(502, error, "error"))

    def connectionLost(self, reason):
        if self.stall is not None and self.stall.active():
            self.stall.cancel()
        ex = self.exchange
        ex.upstream_transport = None
        self.transport = None
        if not ex.gone:
            ex.request.unregisterProducer()
        if self.paused_for_store:
            self.lost = reason  # finish once the pending redaction is written
            return
        self._lost(reason)

    def _lost(self, reason):
        ex = self.exchange
        ex.resp_body_record = _prefix(b"".join(self.kept), self.keep, self.total) if self.keep else None
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            try:
                tail = b""
                if self.decoder is not None:
                    tail = self.decoder.close()
                if self.sse is not None:
                    tail = self.sse.feed(tail) + self.sse.close()
                    counts = self.sse.take_counts()
                    if counts:  # a last event without its blank line
                        return self._after_redaction(counts, tail, then=self._complete)
                self._emit(tail, last=True)
            except MaskError as e:
                return self._break(f"the upstream stream cannot be masked: {e}")
            self._complete()
        elif ex.gone:
            self.done.errback(defer.CancelledError())
        else:
            self._break(f"the upstream response broke off: {_reason(reason.value)}")

    def _complete(self):
        ex = self.exchange
        if self.scrubber is not None:
            self._emit(b"", last=True)
        ex.resp_body_record = _prefix(b"".join(self.kept), self.keep, self.total) if self.keep else None
        ex._finish("ok")
        if not self.done.called:
            self.done.callback(None)
