"""The http connection service: a twisted.web site on ``listen`` forwarding to ``upstream``."""
from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from hoopy.sockwrite import write_now

log = Logger()

UPSTREAM_READ_SIZE = 256 * 1024


class _UpstreamTransport:
    """An upstream connection's transport as its HTTP11ClientProtocol sees it.

    Two costs of a small request/response over a pooled connection go away:

    - writes are sent at once when nothing is buffered (``write_now``), not on the next loop turn
      (with an epoll change to watch for writability and another to stop);
    - a pause is soft: twisted.web's response parser pauses the connection at every response head
      and resumes it a moment later when the body gets its reader, usually within the same read,
      and each is an epoll change. Here the pause only takes effect (really stops reading) once
      more bytes arrive while paused; those are held and handed on, in order, after the resume.
      At most one read's worth of bytes more is buffered than with a hard pause.

    Everything else goes to the real transport.
    """

    def __init__(self, transport, protocol, reactor):
        self._t = transport
        self._protocol = protocol
        self._reactor = reactor
        self.soft_paused = False  # asked to pause; the real transport still reads
        self._hard = False  # the real transport is paused (by us)
        self._held: list = []
        self._delivering = None

    def __getattr__(self, name):
        return getattr(self._t, name)

    def write(self, data):
        write_now(self._t, data)

    def writeSequence(self, seq):
        write_now(self._t, b"".join(seq))

    def pauseProducing(self):
        self.soft_paused = True

    def resumeProducing(self):
        self.soft_paused = False
        if self._held:
            if self._delivering is None:  # not now: the caller may be in the middle of its own work
                self._delivering = self._reactor.callLater(0, self._deliver)
        elif self._hard:
            self._hard = False
            self._t.resumeProducing()

    def stopProducing(self):
        self._drop()
        self._t.stopProducing()

    def hold(self, data):
        """Bytes arrived while paused: keep them, and stop reading now."""
        self._held.append(data)
        if not self._hard:
            self._hard = True
            self._t.pauseProducing()

    def _deliver(self):
        self._delivering = None
        while self._held and not self.soft_paused:
            self._protocol.deliver(self._held.pop(0))
        if not self._held and not self.soft_paused and self._hard:
            self._hard = False
            self._t.resumeProducing()

    def _drop(self):
        self._held = []
        if self._delivering is not None and self._delivering.active():
            self._delivering.cancel()
        self._delivering = None


def _upstream_agent(reactor, settings):
    from twisted.internet import ssl
    from twisted.internet.interfaces import ITCPTransport
    from twisted.python.failure import Failure
    from twisted.web._newclient import HTTP11ClientProtocol, _ensureValidMethod, _ensureValidURI
    from twisted.web.client import (URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool,
                                    _HTTP11ClientFactory)

    class UpstreamProtocol(HTTP11ClientProtocol):
        def makeConnection(self, transport):
            self._real_transport = transport
            super().makeConnection(_UpstreamTransport(transport, self, reactor))

        def connectionMade(self):
            if ITCPTransport.providedBy(self._real_transport):
                self._real_transport.setTcpNoDelay(True)
            if hasattr(self._real_transport, "bufferSize"):
                # a large body moves in fewer, larger reads: less Python per byte (Twisted reads 64 KiB)
                self._real_transport.bufferSize = UPSTREAM_READ_SIZE

        def dataReceived(self, data):
            if self.transport.soft_paused or self.transport._held:
                self.transport.hold(data)
            else:
                super().dataReceived(data)

        def deliver(self, data):
            super().dataReceived(data)

        def connectionLost(self, reason):
            self.transport._drop()
            super().connectionLost(reason)

    class QuietFactory(_HTTP11ClientFactory):
        noisy = False  # one log line per upstream connection is noise, not record

        def buildProtocol(self, addr):
            return UpstreamProtocol(self._quiescentCallback)

    class Pool(HTTPConnectionPool):
        _factory = QuietFactory

    pool = Pool(reactor, persistent=True)
    pool.maxPersistentPerHost = settings.pool_size
    pool.retryAutomatically = True
    if settings.upstream_ca is not None:
        # Only the given CA(s) are trusted; host names are still checked (service-identity).
        certs = [ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part)
                 for part in settings.upstream_ca.value.encode().split(b"-----BEGIN CERTIFICATE-----")[1:]]
        policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.trustRootFromCertificates(certs))
    else:
        policy = BrowserLikePolicyForHTTPS()
    class CachingAgent(Agent):
        # One upstream: build its endpoint once, not per request (IDNA checks add up).
        _endpoints: dict = {}
        _origins: dict = {}  # b"scheme://netloc" -> (scheme, netloc, host, port)

        def _getEndpoint(self, uri):
            key = (uri.scheme, uri.host, uri.port)
            ep = self._endpoints.get(key)
            if ep is None:
                ep = self._endpoints[key] = super()._getEndpoint(uri)
            return ep

        def request(self, method, uri, headers=None, bodyProducer=None):
            # The gateway asks for b"scheme://netloc" + an origin-form target (/path?query) that it
            # normalized itself: the origin is parsed once, not (with urlparse, twice) per request.
            # Anything else takes Agent.request's own way.
            uri = uri.strip()
            cut = uri.find(b"/", uri.find(b"//") + 2) if b"//" in uri else -1
            if cut < 0 or b"#" in uri or b"?" in uri[:cut]:
                return super().request(method, uri, headers, bodyProducer)
            origin, target = uri[:cut], uri[cut:]
            known = self._origins.get(origin)
            if known is None:
                parsed = URI.fromBytes(origin + b"/")
                known = self._origins[origin] = (parsed.scheme, parsed.netloc, parsed.host, parsed.port)
            scheme, netloc, host, port = known
            try:
                method = _ensureValidMethod(method)
                _ensureValidURI(uri)
                endpoint = self._getEndpoint(URI(scheme, netloc, host, port, b"/", b"", b"", b""))
            except Exception:
                return defer.fail(Failure())
            path, _, query = target.partition(b"?")
            parsed = URI(scheme, netloc, host, port, path, b"", query, b"")
            return self._requestWithEndpoint((scheme, host, port), endpoint, method, parsed, headers,
                                             bodyProducer, target if query else path)  # as originForm

    agent = CachingAgent(reactor, contextFactory=policy, pool=pool,
                         connectTimeout=min(settings.upstream_timeout, 10.0))
    return agent, pool, policy


def _tls_factory(settings, factory):
    from twisted.internet import ssl
    from twisted.protocols.tls import TLSMemoryBIOFactory

    cert = ssl.PrivateCertificate.loadPEM(settings.tls_cert.value + "\n" + settings.tls_key.value)
    return TLSMemoryBIOFactory(cert.options(), False, factory)


class HTTPService(Service):
    def __init__(self, gateway, connection):
        from hoopy.http.proxy import GatewaySite, HTTPProxy

        self.gateway = gateway
        self.connection = connection
        settings = connection.settings
        self.agent, self.pool, policy = _upstream_agent(gateway.reactor, settings)
        tls = settings.tls_cert is not None
        self.proxy = HTTPProxy(gateway, connection, self.agent, tls)
        self.proxy.tls_policy = policy
        self.site = GatewaySite(self.proxy)
        self.factory = _tls_factory(settings, self.site) if tls else self.site
        self.port = None

    def startService(self):
        super().startService()
        ep = serverFromString(self.gateway.reactor, self.connection.listen)
        d = ep.listen(self.factory)

        def listening(port):
            self.port = port
            log.info("http {name}: listening on {addr}, upstream {up}", name=self.connection.name,
                     addr=port.getHost(), up=self.connection.settings.upstream)

        def failed(f):
            log.error("http {name}: cannot listen on {listen}: {e}", name=self.connection.name,
                      listen=self.connection.listen, e=f.getErrorMessage())
            self.gateway.reactor.stop()

        d.addCallbacks(listening, failed)

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        if self.port is not None:
            yield self.port.stopListening()
        yield self.proxy.stop("gateway shutdown")
        yield self.pool.closeCachedConnections()


def make_service(gateway, connection):
    return HTTPService(gateway, connection)
