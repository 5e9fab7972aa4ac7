"""How the gateway verifies an https upstream: shared by the http service, the reachability probe
and `hoopy check --connect`, so all three trust exactly the same certificates."""
from __future__ import annotations


def upstream_tls_policy(settings):
    """How https upstreams are verified: the system roots, or only ``upstream_ca``; host names
    (and IP addresses) are checked against the certificate (service-identity)."""
    from twisted.internet import ssl
    from twisted.web.client import BrowserLikePolicyForHTTPS

    if settings.upstream_ca is None:
        return BrowserLikePolicyForHTTPS()
    certs = [ssl.Certificate.loadPEM(b"-----BEGIN CERTIFICATE-----" + part)
             for part in settings.upstream_ca.value.encode().split(b"-----BEGIN CERTIFICATE-----")[1:]]
    return BrowserLikePolicyForHTTPS(trustRoot=ssl.trustRootFromCertificates(certs))
