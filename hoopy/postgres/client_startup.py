"""The client's startup and authentication, sans-IO.

SSLRequest / GSSENCRequest / CancelRequest, the startup packet (protocol 3.0;
a 3.2 client is negotiated down), the settings a client may pass, then SCRAM-
SHA-256 (-PLUS over TLS) against the identity's verifier, or a cleartext token
over TLS. ``receive_data`` returns commands for the adapter; the bytes the
client sent after its last authentication message are ``rest``.
"""
from __future__ import annotations

import enum

import attrs

from hoopy.postgres import codec, scram, wire
from hoopy.postgres.startup import parse_options, settings_problem

MAX_AUTH_MESSAGE = 64 * 1024  # as the server's own limit on an authentication token


class Phase(enum.Enum):
    STARTUP = "startup"  # untyped packets: SSLRequest, CancelRequest, StartupMessage
    AUTHENTICATING = "authenticating"
    DONE = "done"  # authenticated
    REFUSED = "refused"  # a FATAL error was sent; the connection closes


@attrs.frozen
class Reply:
    data: bytes


@attrs.frozen
class StartTLS:
    pass


@attrs.frozen
class Cancel:
    pid: int
    key: bytes


@attrs.frozen
class Refuse:
    code: str
    message: str


@attrs.frozen
class AuthFailed:
    user: str
    method: str
    reason: str


@attrs.frozen
class Authenticated:
    user: str
    params: dict
    rest: bytes  # what the client sent after authenticating (a pipelining client)
    credential: str | None = None  # the per-child credential that proved itself (hoopy.mcp), if any


class Handshake:
    """``verifier(user)`` gives a ScramVerifier or None; ``check_token(user, token)``
    is True for a right token; ``cbind`` is the tls-server-end-point data when
    this side can offer TLS, ``tls_offered`` whether it can."""

    def __init__(self, *, verifier, check_token, client_auth: str, tls_offered: bool, cbind: bytes | None,
                 alternates=None):
        self.verifier = verifier
        self.check_token = check_token
        # alternates(user): {credential id: ScramVerifier} of per-child tokens (hoopy.identity.Directory)
        self.alternates = alternates or (lambda user: None)
        self.credential = None
        self.client_auth = client_auth
        self.tls_offered = tls_offered
        self.cbind = cbind
        self.tls = False
        self.phase = Phase.STARTUP
        self.packets = codec.StartupReader()
        self.reader = codec.MessageReader(MAX_AUTH_MESSAGE)
        self.user = ""
        self.params: dict = {}
        self.scram: scram.ScramServer | None = None
        self.sasl_started = False

    def receive_data(self, data: bytes) -> list:
        try:
            if self.phase is Phase.STARTUP:
                self.packets.feed(data)
                return self._startup_packets()
            if self.phase is Phase.AUTHENTICATING:
                self.reader.feed(data)
                return self._auth_messages()
            return []
        except codec.ProtocolError as e:
            return self._refuse("08P01", f"invalid frontend message: {e}")

    def _refuse(self, code: str, message: str) -> list:
        self.phase = Phase.REFUSED
        return [Refuse(code, message)]

    def _startup_packets(self) -> list:
        out: list = []
        while self.phase is Phase.STARTUP:
            payload = self.packets.next()
            if payload is None:
                break
            s = codec.parse_startup(payload)
            if s.code == wire.SSL_REQUEST:
                if self.packets.buf:
                    raise codec.ProtocolError("data after SSLRequest before the TLS handshake")
                if self.tls_offered and not self.tls:
                    self.tls = True
                    out += [Reply(b"S"), StartTLS()]
                else:
                    out.append(Reply(b"N"))
            elif s.code == wire.GSSENC_REQUEST:
                out.append(Reply(b"N"))
            elif s.code == wire.CANCEL_REQUEST:
                self.phase = Phase.REFUSED
                out.append(Cancel(s.pid, s.key))
            else:
                out += self._startup(s)
        return out

    def _startup(self, s) -> list:
        params = s.params
        user = params.get("user")
        if not user:
            return self._refuse("28000", "no PostgreSQL user name specified in startup packet")
        if "replication" in params and params["replication"].lower() not in ("false", "0", "off", "no"):
            return self._refuse("42501", "replication connections are not allowed through hoopy")
        out: list = []
        unknown = [k for k in params if k.startswith("_pq_.")]
        if s.code & 0xFFFF or unknown:
            # Stay on 3.0 (a 3.2 client, PostgreSQL 18 libpq, carries on).
            out.append(Reply(codec.negotiate_protocol(0, unknown)))
        self.user, self.params = user, params
        problem = settings_problem(params, parse_options(params.get("options", ""))[1])
        if problem:
            return out + self._refuse("42501", problem)
        self.phase = Phase.AUTHENTICATING
        rest = self.packets.take_rest()
        if self.client_auth == "password":
            if not self.tls:
                return out + self._refuse("28000", "this connection requires TLS (sslmode=require)")
            out.append(Reply(codec.auth(wire.AUTH_CLEARTEXT)))
        else:
            cbind = self.cbind if self.tls else None
            self.scram = scram.ScramServer(self.verifier(user), cbind, user, self.alternates(user))
            mechs = ([scram.MECH_PLUS] if cbind is not None else []) + [scram.MECH]
            out.append(Reply(codec.auth(wire.AUTH_SASL, b"".join(codec.cstr(m) for m in mechs) + b"\0")))
        if rest:
            self.reader.feed(rest)
            out += self._auth_messages()
        return out

    def _auth_messages(self) -> list:
        out: list = []
        while self.phase is Phase.AUTHENTICATING:
            m = self.reader.next()
            if m is None:
                break
            t, p = m
            if t != wire.PASSWORD:
                raise codec.ProtocolError(f"expected a password message, got {t!r}")
            try:
                out += self._password(p)
            except scram.ScramError as e:
                method = "scram-sha-256" if self.scram is not None else "password"
                out.append(AuthFailed(self.user, method, str(e)))
                return out + self._refuse("28P01", f'password authentication failed for user "{self.user}"')
        return out

    def _password(self, p: bytes) -> list:
        if self.scram is None:  # cleartext, over TLS
            ok = self.check_token(self.user, codec.Cursor(p).cstr())
            if not ok:
                raise scram.ScramError("wrong token")
            self.credential = getattr(ok, "credential", None)
            return self._done(codec.auth(wire.AUTH_OK))
        if not self.sasl_started:
            mech, data = codec.parse_sasl_initial(p)
            self.sasl_started = True
            return [Reply(codec.auth(wire.AUTH_SASL_CONTINUE, self.scram.first(mech, data)))]
        final = self.scram.final(p)
        return self._done(codec.auth(wire.AUTH_SASL_FINAL, final) + codec.auth(wire.AUTH_OK))

    def _done(self, reply: bytes) -> list:
        self.phase = Phase.DONE
        rest = bytes(self.reader.buf)
        self.reader.buf.clear()
        credential = self.scram.credential if self.scram is not None else self.credential
        self.scram = None  # its keys and nonces: nothing once authenticated, and not kept while idle
        return [Reply(reply), Authenticated(self.user, self.params, rest, credential)]
