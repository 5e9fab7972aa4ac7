"""The upstream side, sans-IO: hoopy as an ordinary PostgreSQL client.

Negotiates TLS as libpq's sslmode words say, sends the startup packet,
authenticates with the gateway's own credential (trust, cleartext, MD5,
SCRAM-SHA-256, with channel binding over TLS), collects ParameterStatus and
BackendKeyData, runs the session's catalog query, and is then READY: from
there every byte the server sends belongs to the client side.

``receive_data`` returns what to do, as commands: ``Send`` bytes,
``StartTLS``, ``Ready`` or ``Failed``.
"""
from __future__ import annotations

import enum
import sys

import attrs

from hoopy.postgres import codec, scram, wire
from hoopy.upstream import UpstreamError

__all__ = ["UpstreamSide", "State", "Send", "StartTLS", "Ready", "Failed", "UpstreamError"]


class State(enum.Enum):
    TLS_NEGOTIATION = "tls negotiation"  # sent SSLRequest, waiting for S or N
    AUTHENTICATING = "authenticating"
    STARTING = "starting"  # AuthenticationOk: ParameterStatus, BackendKeyData until ReadyForQuery
    CATALOG = "catalog"  # the session's catalog query is running
    READY = "ready"
    FAILED = "failed"


@attrs.frozen
class Send:
    data: bytes


@attrs.frozen
class StartTLS:
    pass


@attrs.frozen
class Ready:
    statuses: dict
    pid: int
    key: bytes
    catalog: list  # the row sets of the catalog query, values as text
    rest: bytes  # bytes that came after ReadyForQuery: the client side's


@attrs.frozen
class Failed:
    code: str
    message: str


class UpstreamSide:
    """``password``: the upstream password or None; ``channel_binding``: a
    callable giving the server certificate's tls-server-end-point data once
    TLS is up (None without TLS)."""

    def __init__(self, user: str, password: str | None, tls_mode: str, params: dict,
                 catalog_sql: str | None = None, channel_binding=lambda: None):
        self.user = user
        self.password = password
        self.tls_mode = tls_mode
        self.params = params
        self.catalog_sql = catalog_sql
        self.channel_binding = channel_binding
        self.state = State.AUTHENTICATING
        self.reader = codec.MessageReader()
        self.statuses: dict = {}
        self.pid = 0
        self.key = b""
        self.catalog: list = []
        self._rows: list | None = None
        self._scram: scram.ScramClient | None = None

    def start(self) -> list:
        if self.tls_mode != "disable":
            self.state = State.TLS_NEGOTIATION
            return [Send(codec.ssl_request())]
        return [Send(codec.startup_message(self.params))]

    def tls_started(self) -> list:
        return [Send(codec.startup_message(self.params))]

    def receive_data(self, data: bytes) -> list:
        if self.state in (State.READY, State.FAILED):
            return []  # once ready, the server's bytes are the client side's
        out: list = []
        try:
            if self.state is State.TLS_NEGOTIATION:
                answer, data = data[:1], data[1:]
                if answer == b"S":
                    self.state = State.AUTHENTICATING
                    return [StartTLS()]  # nothing may follow S before the handshake
                if answer != b"N":
                    return self._fail("08001", "upstream answered the SSLRequest with garbage")
                if self.tls_mode in ("require", "verify-full"):
                    return self._fail("08001", "upstream server does not support TLS")
                self.state = State.AUTHENTICATING
                out.append(Send(codec.startup_message(self.params)))
            self.reader.feed(data)
            while self.state not in (State.READY, State.FAILED):
                m = self.reader.next()
                if m is None:
                    break
                out.extend(self._message(*m))
        except (codec.ProtocolError, scram.ScramError, ValueError) as e:
            return out + self._fail("08006", f"upstream protocol error: {e}")
        except UpstreamError as e:
            return out + self._fail(e.code or "08006", e.message)
        if self.state is State.READY:
            rest = bytes(self.reader.buf)
            self.reader.buf.clear()
            # The rows are handed over, not kept: the client side builds its scope from them once.
            catalog, self.catalog, self._rows = self.catalog, [], None
            out.append(Ready(self.statuses, self.pid, self.key, catalog, rest))
        return out

    def _fail(self, code: str, message: str) -> list:
        self.state = State.FAILED
        return [Failed(code, message)]

    # --- messages --------------------------------------------------------------
    def _message(self, t: bytes, p: bytes) -> list:
        if t == wire.ERROR_RESPONSE:
            f = codec.parse_fields(p)
            return self._fail(f.get("C", "08006"), "upstream: " + f.get("M", "error"))
        handler = self._HANDLERS.get(t)
        return handler(self, p) if handler is not None else []

    def _authentication(self, p: bytes) -> list:
        if self.state is not State.AUTHENTICATING:
            raise codec.ProtocolError("authentication request after authentication")
        code, data = codec.parse_auth(p)
        step = self._AUTH.get(code)
        if step is None:
            return self._fail("08001", f"upstream asks for an unsupported authentication ({code})")
        return step(self, data)

    def _auth_ok(self, data: bytes) -> list:
        self.state = State.STARTING
        return []

    def _auth_cleartext(self, data: bytes) -> list:
        return [Send(codec.password(self._password().encode() + b"\0"))]

    def _auth_md5(self, data: bytes) -> list:
        if len(data) != 4:
            raise codec.ProtocolError("MD5 salt is not 4 bytes")
        return [Send(codec.password(scram.md5_password(self.user, self._password(), data)))]

    def _auth_sasl(self, data: bytes) -> list:
        mechs = [m.decode() for m in data.split(b"\0") if m]
        self._scram = scram.ScramClient(self._password(), mechs, self.channel_binding())
        return [Send(codec.sasl_initial(self._scram.mech, self._scram.first()))]

    def _auth_sasl_continue(self, data: bytes) -> list:
        if self._scram is None:
            raise codec.ProtocolError("SASL continue without SASL")
        return [Send(codec.password(self._scram.final(data)))]

    def _auth_sasl_final(self, data: bytes) -> list:
        if self._scram is None:
            raise codec.ProtocolError("SASL final without SASL")
        self._scram.verify(data)
        return []

    def _password(self) -> str:
        if self.password is None:
            raise UpstreamError("upstream asks for a password and none is configured", "28P01")
        return self.password

    def _parameter_status(self, p: bytes) -> list:
        k, v = codec.parse_parameter_status(p)
        # Every session gets the same dozen or so names and values: one copy of each.
        self.statuses[sys.intern(k)] = sys.intern(v)
        return []

    def _backend_key(self, p: bytes) -> list:
        self.pid, self.key = codec.parse_backend_key(p)
        return []

    def _ready(self, p: bytes) -> list:
        if self.state is State.AUTHENTICATING:
            raise codec.ProtocolError("ReadyForQuery before authentication")
        if self.state is State.STARTING and self.catalog_sql:
            self.state = State.CATALOG
            return [Send(codec.query(self.catalog_sql))]
        self.state = State.READY
        return []

    def _row_description(self, p: bytes) -> list:
        if self.state is State.CATALOG:
            self._rows = []
            self.catalog.append(self._rows)
        return []

    def _data_row(self, p: bytes) -> list:
        if self.state is State.CATALOG and self._rows is not None:
            self._rows.append([None if v is None else v.decode() for v in codec.parse_data_row(p)])
        return []

    def _ignore(self, p: bytes) -> list:
        return []

    _HANDLERS = {
        wire.AUTHENTICATION: _authentication,
        wire.PARAMETER_STATUS: _parameter_status,
        wire.BACKEND_KEY_DATA: _backend_key,
        wire.READY_FOR_QUERY: _ready,
        wire.ROW_DESCRIPTION: _row_description,
        wire.DATA_ROW: _data_row,
        wire.NOTICE_RESPONSE: _ignore,
        wire.NEGOTIATE_PROTOCOL_VERSION: _ignore,
        wire.COMMAND_COMPLETE: _ignore,
    }
    _AUTH = {
        wire.AUTH_OK: _auth_ok,
        wire.AUTH_CLEARTEXT: _auth_cleartext,
        wire.AUTH_MD5: _auth_md5,
        wire.AUTH_SASL: _auth_sasl,
        wire.AUTH_SASL_CONTINUE: _auth_sasl_continue,
        wire.AUTH_SASL_FINAL: _auth_sasl_final,
    }
