"""The upstream side: hoopy as an ordinary PostgreSQL client.

Connects, negotiates TLS as libpq's sslmode words say, authenticates with
the injected credential (trust, cleartext, MD5, SCRAM-SHA-256 with channel
binding over TLS), collects ParameterStatus and BackendKeyData, optionally
runs the masking catalog query, then hands every message to the frontend.
"""
from __future__ import annotations

from twisted.internet import defer
from twisted.internet.endpoints import clientFromString, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from hoopy.postgres import codec, scram

log = Logger()


class UpstreamError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def upstream_host(desc: str) -> str:
    for part in desc.split(":"):
        if part.startswith("host="):
            return part[5:]
    return "localhost"


def tls_options(settings):
    from twisted.internet import ssl

    mode = settings.upstream_tls
    if mode == "verify-full":
        if settings.upstream_ca is not None:
            trust = ssl.Certificate.loadPEM(settings.upstream_ca.value.encode())
        else:
            trust = ssl.platformTrust()
        # optionsForClientTLS checks the certificate and the host name (service-identity).
        return ssl.optionsForClientTLS(upstream_host(settings.upstream), trustRoot=trust)
    return ssl.CertificateOptions()  # prefer/require: encrypted, not verified (libpq's meaning)


class Backend(Protocol):
    def __init__(self, settings, params: dict, catalog_sql: str | None = None):
        self.settings = settings
        self.params = params
        self.catalog_sql = catalog_sql
        self.ready = defer.Deferred()  # fires (statuses, pid, key, catalog results)
        self.frontend = None
        self.reader = None
        self.state = "connecting"
        self.statuses: dict = {}
        self.pid = 0
        self.key = b""
        self.tls = False
        self.catalog = []
        self._rows = None
        self._error = None

    # --- setup ---------------------------------------------------------------
    def connectionMade(self):
        try:
            self.transport.setTcpNoDelay(True)  # no Nagle delay on small messages
        except Exception:
            pass
        if self.settings.upstream_tls != "disable":
            self.state = "ssl"
            self.transport.write(codec.ssl_request())
        else:
            self._startup()

    def _startup(self):
        self.state = "auth"
        self.reader = codec.MessageReader()
        self.transport.write(codec.startup_message(self.params))

    def _fail(self, code, message):
        if not self.ready.called:
            self.ready.errback(UpstreamError(code, message))
        self.state = "failed"
        self.transport.loseConnection()

    def dataReceived(self, data: bytes):
        if self.state == "ready":
            self.frontend.upstream_data(data)
            return
        if self.state == "ssl":
            answer, data = data[:1], data[1:]
            if answer == b"S":
                self.transport.startTLS(tls_options(self.settings))
                self.tls = True
            elif answer == b"N" and self.settings.upstream_tls in ("require", "verify-full"):
                return self._fail("08001", "upstream server does not support TLS")
            elif answer not in (b"N",):
                return self._fail("08001", "upstream answered the SSLRequest with garbage")
            self._startup()
            if not data:
                return
        try:
            self.reader.feed(data)
            while self.state not in ("ready", "failed"):
                m = self.reader.next()
                if m is None:
                    break
                self._setup_message(*m)
            if self.state == "ready":
                rest = bytes(self.reader.buf)
                self.reader.buf.clear()
                if rest:
                    self.frontend.upstream_data(rest)
        except (codec.ProtocolError, scram.ScramError, ValueError) as e:
            self._fail("08006", f"upstream protocol error: {e}")

    def _cbind(self):
        if not self.tls:
            return None
        try:
            cert = self.transport.getPeerCertificate()
            if cert is None:
                return None
            c = cert.to_cryptography()
            from cryptography.hazmat.primitives.serialization import Encoding

            h = c.signature_hash_algorithm.name if c.signature_hash_algorithm else None
            return scram.tls_server_end_point(c.public_bytes(Encoding.DER), h)
        except Exception:
            return None

    def _password(self) -> str:
        pw = self.settings.upstream_password
        if pw is None:
            raise UpstreamError("28P01", "upstream asks for a password and none is configured")
        return pw.value

    def _setup_message(self, t: bytes, p: bytes):
        if t == b"E":
            f = codec.parse_fields(p)
            return self._fail(f.get("C", "08006"), "upstream: " + f.get("M", "error"))
        if self.state == "auth" and t == b"R":
            c = codec.Cursor(p)
            code = c.int32()
            try:
                if code == 0:
                    self.state = "init"
                elif code == 3:
                    self.transport.write(codec.password(self._password().encode() + b"\0"))
                elif code == 5:
                    salt = c.bytes(4)
                    self.transport.write(codec.password(
                        scram.md5_password(self.settings.upstream_user, self._password(), salt)))
                elif code == 10:
                    mechs = [m.decode() for m in c.rest().split(b"\0") if m]
                    self._scram = scram.ScramClient(self._password(), mechs, self._cbind())
                    self.transport.write(codec.sasl_initial(self._scram.mech, self._scram.first()))
                elif code == 11:
                    self.transport.write(codec.password(self._scram.final(c.rest())))
                elif code == 12:
                    self._scram.verify(c.rest())
                else:
                    self._fail("08001", f"upstream asks for an unsupported authentication ({code})")
            except UpstreamError as e:
                self._fail(e.code, e.message)
            return
        if t == b"S":
            c = codec.Cursor(p)
            k = c.cstr()
            self.statuses[k] = c.cstr()
            return
        if t == b"K":
            c = codec.Cursor(p)
            self.pid = c.int32()
            self.key = c.rest()
            return
        if t == b"N" or t == b"v":
            return
        if t == b"Z":
            if self.state == "init" and self.catalog_sql:
                self.state = "catalog"
                self.transport.write(codec.query(self.catalog_sql))
                return
            if self._error:
                return self._fail("08001", "masking rules could not be resolved upstream: " + self._error)
            self.state = "ready"
            self.ready.callback(self)
            return
        if self.state == "catalog":
            if t == b"T":
                self._rows = []
                self.catalog.append(self._rows)
            elif t == b"D":
                self._rows.append([None if v is None else v.decode() for v in codec.parse_data_row(p)])
            return

    def connectionLost(self, reason):
        if not self.ready.called:
            self.ready.errback(UpstreamError("08001", "upstream closed the connection during startup"))
        elif self.frontend is not None:
            self.frontend.upstream_lost(reason)


def connect(reactor, settings, params, catalog_sql=None, timeout=10):
    ep = clientFromString(reactor, settings.upstream)
    b = Backend(settings, params, catalog_sql)
    d = connectProtocol(ep, b)

    def failed(f):
        if not b.ready.called:
            b.ready.errback(UpstreamError("08001", f"cannot connect to upstream: {f.getErrorMessage()}"))

    d.addErrback(failed)
    timer = reactor.callLater(timeout, lambda: b.ready.called or (
        b.transport and b.transport.abortConnection(),
        not b.ready.called and b.ready.errback(UpstreamError("08001", "upstream did not answer in time"))))
    b.ready.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
    return b.ready


def send_cancel(reactor, settings, pid: int, key: bytes):
    """A CancelRequest on a new connection, as libpq does."""

    class Cancel(Protocol):
        def connectionMade(self):
            self.transport.write(codec.cancel_request(pid, key))
            self.transport.loseConnection()

    d = connectProtocol(clientFromString(reactor, settings.upstream), Cancel())
    d.addErrback(lambda f: log.warn("cancel not delivered: {e}", e=f.getErrorMessage()))
    return d
