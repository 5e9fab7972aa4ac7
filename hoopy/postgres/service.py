"""The postgres connection service: a listener whose protocol is hoopy's frontend."""
from __future__ import annotations

from twisted.application import strports
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from hoopy.postgres import scram
from hoopy.postgres.backend import send_cancel
from hoopy.postgres.frontend import Frontend

log = Logger()


def _tls(settings):
    """(context factory, tls-server-end-point data) when tls_cert/tls_key are set."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None, None
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from twisted.internet import ssl

    pem = settings.tls_cert.value + "\n" + settings.tls_key.value
    pc = ssl.PrivateCertificate.loadPEM(pem)
    # libpq 17+ offers ALPN "postgresql"; without a protocol list to choose
    # from, the handshake fails with an internal-error alert.
    ctx = ssl.CertificateOptions(privateKey=pc.privateKey.original, certificate=pc.original,
                                 acceptableProtocols=[b"postgresql"])
    cert = x509.load_pem_x509_certificate(settings.tls_cert.value.encode())
    h = cert.signature_hash_algorithm.name if cert.signature_hash_algorithm else None
    return ctx, scram.tls_server_end_point(cert.public_bytes(Encoding.DER), h)


class PostgresFactory(Factory):
    def __init__(self, gateway, connection):
        self.gateway = gateway
        self.connection = connection
        self.clients: set = set()
        self.cancel_keys: dict = {}  # (pid, key) we gave a client -> its Frontend
        self.tls_context, self.cbind_data = _tls(connection.settings)
        columns, detectors = [], []
        for m in gateway.config.masking_for(connection.name):
            columns += [c.lower() if '"' not in c else c.replace('"', "") for c in m.columns]
            detectors += [d for d in m.patterns if d not in detectors]
        self.mask_columns = tuple(dict.fromkeys(columns))
        self.detectors = tuple(detectors)

    def buildProtocol(self, addr):
        return Frontend(self)

    def cancel(self, pid: int, key: bytes):
        fe = self.cancel_keys.get((pid, key))
        if fe is None or fe.up is None:
            return  # as PostgreSQL: an unknown key is silently ignored
        if fe.held is not None:
            # Waiting for a reviewer: withdraw the request; nothing runs.
            fe.session.cancel_holds("cancelled by the client")
            return
        fe.cancel_upstream()


def make_service(gateway, connection):
    factory = PostgresFactory(gateway, connection)
    svc = strports.service(connection.listen, factory, reactor=gateway.reactor)
    stop = svc.stopService

    def stop_service():
        d = defer.maybeDeferred(stop)
        ends = [defer.maybeDeferred(fe.terminate, "gateway shutdown") for fe in list(factory.clients)]
        return defer.DeferredList([d] + ends, consumeErrors=True)

    svc.stopService = stop_service
    svc.factory = factory
    return svc


__all__ = ["make_service", "send_cancel"]
