"""The http connection service: a twisted.web site on ``listen`` forwarding to ``upstream``."""
from __future__ import annotations

from twisted.internet import defer

from hoopy.http.tls import upstream_tls_policy as _tls_policy
from hoopy.listening import Listener


def _tls_factory(settings, factory):
    from twisted.internet import ssl
    from twisted.protocols.tls import TLSMemoryBIOFactory

    cert = ssl.PrivateCertificate.loadPEM(settings.tls_cert.value + "\n" + settings.tls_key.value)
    return TLSMemoryBIOFactory(cert.options(), False, factory)


class HTTPService(Listener):
    def __init__(self, gateway, connection):
        from urllib.parse import urlsplit

        from hoopy.http.server import GatewayFactory
        from hoopy.http.site import HTTPSite
        from hoopy.http.upstream import UpstreamClient

        self.connection = connection
        settings = connection.settings
        policy = _tls_policy(settings)
        u = urlsplit(settings.upstream)
        port = u.port or (443 if u.scheme == "https" else 80)
        creator = policy.creatorForNetloc(u.hostname.encode("idna"), port) if u.scheme == "https" else None
        self.upstream = UpstreamClient(gateway.reactor, settings.upstream, pool_size=settings.pool_size,
                                       connect_timeout=min(settings.upstream_timeout, 10.0), tls_creator=creator)
        self.upstream.on_reach = self._reach
        tls = settings.tls_cert is not None
        self.state = HTTPSite(gateway, connection, self.upstream, tls, policy)
        self.site = GatewayFactory(self.state)
        super().__init__(gateway, f"http {connection.name}", connection.listen,
                         _tls_factory(settings, self.site) if tls else self.site,
                         key=f"connections.{connection.name}.listen")

    def _reach(self, error):
        if error is None:
            self.gateway.upstreams.succeeded(self.connection)
        else:
            self.gateway.upstreams.failed(self.connection, error)

    @defer.inlineCallbacks
    def stopService(self):
        yield super().stopService()
        yield self.state.stop("gateway shutdown")
        yield self.upstream.close()


def make_service(gateway, connection):
    return HTTPService(gateway, connection)
