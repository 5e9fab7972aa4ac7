"""The postgres connection service: a listener whose protocol is hoopy/postgres/protocol.py."""
from __future__ import annotations

from twisted.internet import defer
from twisted.internet.protocol import Factory

from hoopy.listening import Listener
from hoopy.postgres import scram
from hoopy.postgres.protocol import ClientProtocol, send_cancel


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
    noisy = False  # no "Starting factory" lines
    def __init__(self, gateway, connection):
        self.gateway = gateway
        self.connection = connection
        self.clients: set = set()
        self.cancel_keys: dict = {}  # (pid, key) we gave a client -> its ClientProtocol
        self.tls_context, self.cbind_data = _tls(connection.settings)
        columns, detectors = [], []
        # Each masked column's rule, as configured: what a session that cannot resolve it names.
        self.mask_rules: dict = {}
        for m in gateway.config.masking_for(connection.name):
            for j, c in enumerate(m.columns):
                name = c.lower() if '"' not in c else c.replace('"', "")
                columns.append(name)
                self.mask_rules.setdefault(name, f"masking[{m.index}].columns[{j}] = {c!r}")
            detectors += [d for d in m.patterns if d not in detectors]
        self.mask_columns = tuple(dict.fromkeys(columns))
        self.detectors = tuple(detectors)

    def buildProtocol(self, addr):
        return ClientProtocol(self)

    def cancel(self, pid: int, key: bytes):
        client = self.cancel_keys.get((pid, key))
        if client is None or client.up is None or client.cs is None:
            return  # as PostgreSQL: an unknown key is silently ignored
        if client.cs.held is not None:
            # Waiting for a reviewer: withdraw the request; nothing runs.
            client.session.cancel_holds("cancelled by the client")
            return
        client.cancel_upstream()


class PostgresService(Listener):
    """The listener; stopping it ends every client session (57P01) and waits for their records."""

    def __init__(self, gateway, connection):
        super().__init__(gateway, f"postgres {connection.name}", connection.listen,
                         PostgresFactory(gateway, connection), key=f"connections.{connection.name}.listen")

    def stopService(self):
        d = super().stopService()
        ends = [defer.maybeDeferred(c.terminate, "gateway shutdown") for c in list(self.factory.clients)]
        return defer.DeferredList([d] + ends, consumeErrors=True)


def make_service(gateway, connection):
    return PostgresService(gateway, connection)


__all__ = ["make_service", "send_cancel"]
