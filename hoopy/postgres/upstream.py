"""The gateway's connection to the PostgreSQL server: a thin Twisted adapter
around the sans-IO ``UpstreamSide``, and CancelRequests on connections of
their own. Once the server is ready every byte goes to the client's
``ClientProtocol``, and the client's reading is the producer of what is
written upstream (``ClientReading``).
"""
from __future__ import annotations

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

from hoopy.postgres import codec, scram, upstream_side as us
from hoopy.transport import stream
from hoopy.upstream import UpstreamError

log = Logger()


class _Quiet(Factory):
    """One given protocol, as connectProtocol does, without its "Starting factory" log lines."""

    noisy = False

    def __init__(self, protocol):
        self.one = protocol

    def buildProtocol(self, addr):
        return self.one


def nodelay(transport):
    """Small request/reply messages: Nagle plus delayed ACKs would add 40 ms."""
    set_nodelay = getattr(transport, "setTcpNoDelay", None)  # not on UNIX sockets
    if set_nodelay is not None:
        set_nodelay(True)


def log_failure(what):
    return lambda f: log.error("{what}: {e}", what=what, e=f.getErrorMessage())


@implementer(IPushProducer)
class ClientReading:
    """The client connection as the producer of what is written upstream: an upstream
    that does not keep up (a fast COPY FROM) stops the reading from the client."""

    def __init__(self, client):
        self.client = client

    def pauseProducing(self):
        self.client.pause("upstream")

    def resumeProducing(self):
        self.client.resume("upstream")

    def stopProducing(self):
        return None


class UpstreamProtocol(Protocol):
    def __init__(self, settings, side: us.UpstreamSide):
        self.settings = settings
        self.side = side
        self.side.channel_binding = self._channel_binding
        self.ready: defer.Deferred[UpstreamProtocol] = defer.Deferred()  # fires once the upstream is ready
        self.client = None  # the ClientProtocol, once ready
        self.info: us.Ready | None = None
        self.tls = False
        self.answered = False  # the server said something: reachable, whatever it said

    def connectionMade(self):
        nodelay(self.transport)
        self._run(self.side.start())

    def dataReceived(self, data: bytes):
        self.answered = True
        client = self.client
        if client is not None:
            client.upstream_data(data)
        elif not self.ready.called:
            self._run(self.side.receive_data(data))

    def _run(self, commands):
        for c in commands:
            if isinstance(c, us.Send):
                self.transport.write(c.data)
            elif isinstance(c, us.StartTLS):
                self.transport.startTLS(tls_options(self.settings))
                self.tls = True
                self._run(self.side.tls_started())
            elif isinstance(c, us.Ready):
                self.info = c
                self.ready.callback(self)
            elif isinstance(c, us.Failed):
                self.fail(UpstreamError(c.message, c.code))

    def fail(self, error: UpstreamError):
        error.reached = self.answered
        if not self.ready.called:
            self.ready.errback(error)
        if self.transport is not None:
            stream(self.transport).abortConnection()

    def _channel_binding(self):
        """tls-server-end-point data of the server's certificate (SCRAM-SHA-256-PLUS)."""
        if not self.tls:
            return None
        cert = self.transport.getPeerCertificate()
        if cert is None:
            return None
        from cryptography.hazmat.primitives.serialization import Encoding

        c = cert.to_cryptography()
        h = c.signature_hash_algorithm.name if c.signature_hash_algorithm else None
        return scram.tls_server_end_point(c.public_bytes(Encoding.DER), h)

    def connectionLost(self, reason):
        if not self.ready.called:
            e = UpstreamError("upstream closed the connection during startup", "08001")
            e.reached = self.answered
            self.ready.errback(e)
        elif self.client is not None:
            self.client.upstream_lost()


def upstream_host(desc: str) -> str:
    for part in desc.split(":"):
        if part.startswith("host="):
            return part[5:]
    return "localhost"


def tls_options(settings):
    from twisted.internet import ssl

    if settings.upstream_tls == "verify-full":
        if settings.upstream_ca is not None:
            trust = ssl.Certificate.loadPEM(settings.upstream_ca.value.encode())
        else:
            trust = ssl.platformTrust()
        # optionsForClientTLS checks the certificate and the host name (service-identity).
        return ssl.optionsForClientTLS(upstream_host(settings.upstream), trustRoot=trust)
    return ssl.CertificateOptions()  # prefer/require: encrypted, not verified (libpq's meaning)


def connect(reactor, settings, params, catalog_sql=None, timeout=10):
    """Fires with a ready UpstreamProtocol, or fails with UpstreamError."""
    password = settings.upstream_password.value if settings.upstream_password is not None else None
    side = us.UpstreamSide(settings.upstream_user, password, settings.upstream_tls, params, catalog_sql)
    p = UpstreamProtocol(settings, side)
    clientFromString(reactor, settings.upstream).connect(_Quiet(p)).addErrback(
        lambda f: p.fail(UpstreamError(f"cannot connect to upstream: {f.getErrorMessage()}", "08001")))

    def too_slow():
        p.fail(UpstreamError("upstream did not answer in time", "08001"))

    timer = reactor.callLater(timeout, too_slow)

    def stop_timer(result):
        if timer.active():
            timer.cancel()
        return result

    return p.ready.addBoth(stop_timer)


def send_cancel(reactor, settings, pid: int, key: bytes):
    """A CancelRequest on a new connection, as libpq does."""

    class Cancel(Protocol):
        def connectionMade(self):
            self.transport.write(codec.cancel_request(pid, key))
            self.transport.loseConnection()

    d = clientFromString(reactor, settings.upstream).connect(_Quiet(Cancel()))
    d.addErrback(log_failure("cancel not delivered"))
    return d
