"""The http connection service: a twisted.web site on ``listen`` forwarding to ``upstream``."""
from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

log = Logger()


def _upstream_agent(reactor, settings):
    from twisted.internet import ssl
    from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, _HTTP11ClientFactory

    class QuietFactory(_HTTP11ClientFactory):
        noisy = False  # one log line per upstream connection is noise, not record

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

        def _getEndpoint(self, uri):
            key = (uri.scheme, uri.host, uri.port)
            ep = self._endpoints.get(key)
            if ep is None:
                ep = self._endpoints[key] = super()._getEndpoint(uri)
            return ep

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
