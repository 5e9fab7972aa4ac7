"""The client side: twisted.web's server, adapted, and what one http connection's requests share.

``GatewaySite`` serves one ``[connections.X]`` of type http. Each client TCP connection is a
``GatewayChannel`` that holds its session; each request starts an ``Exchange`` as soon as its head
is in (``GatewayRequest.gotLength``), while its body still arrives through a ``BodyPipe``, and
answers through a ``RequestSink``. ``HTTPSite`` holds what every request of the connection shares:
settings, the masker, the upstream client, the header plan, the injected secrets to scrub.
"""
from __future__ import annotations

import base64
import binascii
import hmac
import re
from urllib.parse import quote_from_bytes, urlsplit

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from hoopy.http import headers as H
from hoopy.http.bodies import Masker, Scrubber
from hoopy.http.checks import HeaderPlan
from hoopy.http.exchange import Exchange, IResponseSink
from hoopy.http.upload import BodyPipe
from hoopy.sockwrite import write_now

log = Logger()


class HeadDeadline:
    """For an HTTPChannel: a request's head must be in ``head_timeout`` after its first byte (or after
    the connection opened). twisted.web's idle timeout restarts at every byte, so a head sent a byte
    at a time (slowloris) would hold its connection, unauthenticated, for ever. Late: 408, closed."""

    head_timeout = 20.0
    _head_timer = None
    _awaiting_head = True

    def connectionMade(self):
        super().connectionMade()
        self._arm_head()

    def _arm_head(self):
        if self._head_timer is None:
            self._head_timer = self.callLater(self.head_timeout, self._head_late)

    def _head_late(self):
        self._head_timer = None
        if self.transport is not None and self._awaiting_head:
            log.info("no request head within {t:g}s from {peer}: closed", t=self.head_timeout,
                     peer=str(self.transport.getPeer()))
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            self.transport.loseConnection()

    def dataReceived(self, data):
        if self._awaiting_head:
            self._arm_head()
        super().dataReceived(data)

    def allHeadersReceived(self):
        self._awaiting_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().allHeadersReceived()

    def requestDone(self, request):
        self._awaiting_head = True  # the next head's deadline starts at its first byte
        super().requestDone(request)

    def connectionLost(self, reason=None):
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connectionLost(reason)


class GatewayChannel(HeadDeadline, HTTPChannel):
    """One client connection: holds its session and ends it when the connection goes.

    A response's head is held back until its first body bytes (or the request's end) and goes out
    with them in one write, sent at once when nothing is buffered (``write_now``): a small answer
    is one send() instead of two buffered writes, each costing a loop turn and epoll changes.
    """

    session = None
    site_state = None  # the HTTPSite, set by the site
    _head = None  # the response head, not yet written
    _host = None
    last_token = None  # the token of this connection's last request, and whose it is: a keep-alive
    last_identity = None  # client sends it again and again (hashed once, not per request)
    def getHost(self):
        # twisted.web asks for every request; the connection's own address does not change
        if self._host is None:
            self._host = super().getHost()
        return self._host

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
        self.site_state.channel_closed(self)


class GatewayRequest(Request):
    """A request whose exchange starts once its head is in, while its body still arrives."""

    _parsePOSTFormSubmission = False  # the body is not ours to parse: it goes upstream
    defaultContentType = None
    exchange = None

    def gotLength(self, length):
        ch = self.channel
        # twisted.web sets these in requestReceived, after the body; the head is all we need.
        self.method, self.uri, self.clientproto = ch._command, ch._path, ch._version
        state = ch.site_state
        self.content = BodyPipe(ch.transport, length, keep=state.settings.record_body_limit)
        # A held request may keep its caller's socket paused for long: no idle timeout meanwhile.
        self._saved_timeout = ch.setTimeout(None)
        addr = self.getClientAddress()
        self.exchange = Exchange(state, RequestSink(self), ch, self.method, self.uri,
                                 list(self.requestHeaders.getAllRawHeaders()),
                                 (getattr(addr, "host", "unknown"), getattr(addr, "port", "")), self.content)
        self.notifyFinish().addErrback(self.exchange.client_gone)
        self.exchange.run()

    def handleContentChunk(self, data):
        self.content.feed(data)

    def write(self, data):
        super().write(data)
        self.channel.flush_head()  # a head written alone (an event stream's) goes now, not later

    def process(self):
        # The exchange already runs (since gotLength): no resource tree to walk, nothing to render.
        self.site = self.channel.site

    def requestReceived(self, command, path, version):
        if self._saved_timeout and hasattr(self.channel, "_savedTimeOut"):
            self.channel._savedTimeOut = self._saved_timeout  # restored by requestDone
        pipe = self.content
        super().requestReceived(command, path, version)  # reads content.tell(): before any finish
        pipe.end()


@implementer(IResponseSink)
class RequestSink:
    """An exchange's answer, written to twisted.web's Request."""

    __slots__ = ("request",)

    def __init__(self, request: GatewayRequest):
        self.request = request

    @property
    def started(self) -> bool:
        return bool(self.request.startedWriting)  # twisted keeps a 0/1 int

    def head(self, code, phrase, headers):
        req = self.request
        req.setResponseCode(code, phrase or None)
        grouped: dict = {}
        for name, value in headers:
            grouped.setdefault(name, []).append(value)
        out = req.responseHeaders = Headers()
        for name, values in grouped.items():
            out.setRawHeaders(name, values)
        if grouped.get(b"Connection") == [b"close"]:
            req.channel.persistent = False  # no pipelined request after this one is read

    def write(self, data):
        self.request.write(data)

    def finish(self):
        self.request.finish()

    def abort(self):
        transport = self.request.channel.transport
        if transport is not None:
            transport.abortConnection()

    def register_producer(self, producer):
        self.request.registerProducer(producer, True)

    def unregister_producer(self):
        self.request.unregisterProducer()

    def close_later(self, seconds, done):
        req = self.request
        channel = req.channel

        def close():
            if channel.transport is not None:
                channel.transport.loseConnection()

        timer = channel.site_state.reactor.callLater(seconds, close)
        req.notifyFinish().addBoth(_cancel_timer, timer).addErrback(_ignore)  # the request's end, any way
        done.addCallback(_finish_when_in, req, timer)

    def take_over(self, upstream, answer, on_lost):
        from hoopy.http.upgrade import take_over

        return take_over(self.request.channel, upstream, answer, on_lost)


def _cancel_timer(result, timer):
    if timer.active():
        timer.cancel()
    return result


def _ignore(failure):
    return None


def _finish_when_in(result, req, timer):
    _cancel_timer(None, timer)
    if not req.finished and not req._disconnected:
        req.finish()
    return result


class GatewaySite(Site):
    # HTTP/1.1 channels, not twisted's HTTP/2-negotiating wrapper, which its stubs name as the
    # only type: any HTTPChannel works here at run time.
    protocol = GatewayChannel  # type: ignore[assignment]
    requestFactory = GatewayRequest
    noisy = False

    def __init__(self, state: "HTTPSite"):
        super().__init__(_NoResource())
        # The body is not ours to parse: it goes upstream. twisted.web parsed a multipart body after
        # it had streamed away, found nothing, and answered 400 to every multipart POST.
        self._parsePOSTFormSubmission = False
        self.state = state
        self.displayTracebacks = False

    def buildProtocol(self, addr):
        channel = super().buildProtocol(addr)
        channel.site_state = self.state
        channel.head_timeout = self.state.settings.head_timeout
        self.state.channels.add(channel)
        return channel

    def log(self, request):
        pass  # every request is an event in the store; no second access log


class _NoResource(Resource):
    isLeaf = True

    def render(self, request):  # not reached: GatewayRequest starts its exchange at its head
        return NOT_DONE_YET


class HTTPSite:
    """Everything one http connection's requests share."""

    def __init__(self, gateway, connection, upstream, tls: bool, tls_policy=None):
        self.gateway = gateway
        self.reactor = gateway.reactor
        self.identities = gateway.identities
        self.connection = connection
        self.settings = s = connection.settings
        self.upstream = upstream  # hoopy.http.upstream.UpstreamClient
        self.tls_policy = tls_policy  # for WebSocket upgrades over https
        u = urlsplit(s.upstream)
        self.upstream_hostname = u.hostname
        self.upstream_port = u.port or (443 if u.scheme == "https" else 80)
        self.upstream_prefix = u.path.rstrip("/").encode()
        inject = [(name.encode("latin-1"), v.value.encode("latin-1")) for name, v in s.upstream_headers.items()]
        # The Host header for the upstream (default ports left out, an IPv6 literal in brackets)
        host = u.hostname.encode("idna") if ":" not in u.hostname else b"[" + u.hostname.encode() + b"]"
        default = (u.scheme, self.upstream_port) in (("http", 80), ("https", 443))
        self.header_plan = HeaderPlan(inject, u.netloc.encode(), host if default else b"%b:%d" % (
            host, self.upstream_port), "https" if tls else "http")
        # The injected credentials, whole and without their scheme ("Bearer ..."): an upstream that
        # echoes one back (a header, a redirect's Location, a debug body) must not hand it to the caller.
        secrets = set()
        for _, v in inject:
            secrets.update(spellings(v))
        self.secrets = tuple(sorted(secrets, key=len, reverse=True))
        # Headers are searched in any case (an upstream may upper-case what it echoes)
        self._secret_re = re.compile(b"|".join(re.escape(s) for s in self.secrets), re.IGNORECASE) \
            if self.secrets else None
        self.masker = Masker.from_config(gateway.config.masking_for(connection.name))
        self.channels: set = set()

    def identity_for(self, channel, token: str):
        """The identity a token names (None: none): remembered per connection for its next request."""
        raw = token.encode("latin-1")
        if channel is not None and channel.last_token is not None and hmac.compare_digest(channel.last_token, raw):
            return channel.last_identity
        ident = self.identities.by_token(token)
        if ident is not None and channel is not None:
            channel.last_token, channel.last_identity = raw, ident
        return ident

    def auth_failed(self, peer: str, why: str):
        self.gateway.auth_failed(self.connection, peer, "", "bearer", why)

    def scrub_header(self, value: bytes) -> bytes:
        if self._secret_re is None:
            return value
        return self._secret_re.sub(H.REDACTED.encode(), value)

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

        ep = HostnameEndpoint(self.reactor, self.upstream_hostname, self.upstream_port,
                              timeout=min(self.settings.upstream_timeout, 10.0))
        if self.settings.upstream.startswith("https:"):
            creator = self.tls_policy.creatorForNetloc(self.upstream_hostname.encode(), self.upstream_port)
            ep = wrapClientTLS(creator, ep)
        return ep

    # --- sessions: one per client connection --------------------------------------------------

    def session_for(self, channel, identity: str, peer: str, credential: str | None = None):
        """The channel's session for this identity (and per-child credential, see hoopy/causal.py):
        a new one if another identity or credential spoke before."""
        s = channel.session
        if s is not None and s.identity == identity and s.credential == credential and not s.ended:
            return defer.succeed(s)
        if s is not None:
            self.end_session(channel, "another identity used this connection")
        session = self.gateway.new_session(identity, self.connection, peer, credential=credential)
        session.terminate = _Terminate(channel, session)
        channel.session = session
        return session.start()

    def end_session(self, channel, reason: str):
        s, channel.session = channel.session, None
        if s is not None:
            s.cancel_holds(reason)
            s.end(reason)

    def channel_closed(self, channel):
        if channel.session is not None:
            self.end_session(channel, "client disconnected")
        self.channels.discard(channel)

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


def spellings(value: bytes) -> set[bytes]:
    """An injected header value as an upstream may echo it: whole and without its scheme; in either
    case; percent- and form-encoded (a redirect's query); with JSON's escaped slash (PHP's default);
    and a Basic credential decoded (user:password, and the password). Each at least 8 bytes."""
    scheme, _, rest = value.partition(b" ")
    rest = rest.strip()
    base = {value, rest}
    if scheme.lower() == b"basic" and rest:
        try:
            plain = base64.b64decode(rest, validate=True)
        except (binascii.Error, ValueError):
            plain = b""
        if plain:
            base.update((plain, plain.partition(b":")[2]))
    out: set[bytes] = set()
    for s in base:
        for form in (s, s.lower(), s.upper()):
            pct = quote_from_bytes(form, safe=b"").encode()
            out.update((form, form.replace(b"/", b"\\/"), pct, pct.replace(b"%20", b"+"),
                        re.sub(rb"%[0-9A-F]{2}", lambda m: m.group().lower(), pct)))
    return {s for s in out if len(s) >= 8}


class _Terminate:
    """Ends a session and its connection (gateway shutdown)."""

    def __init__(self, channel, session):
        self.channel, self.session = channel, session

    def __call__(self, reason):
        d = self.session.end(reason)
        if self.channel.transport is not None:
            self.channel.transport.abortConnection()
        return d
