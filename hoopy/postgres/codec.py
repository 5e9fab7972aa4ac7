"""PostgreSQL protocol 3.0 messages, sans-IO: bytes in, messages out, and back.

Nothing here touches a socket, so every function can be unit-tested and
fuzzed. A malformed message raises ``ProtocolError``; the adapters turn it
into SQLSTATE 08P01 and close the one connection.
"""
from __future__ import annotations

import struct

import attrs

from hoopy.postgres.wire import CANCEL_REQUEST, GSSENC_REQUEST, PROTOCOL_30, PROTOCOL_32, SSL_REQUEST  # noqa: F401

from hoopy.postgres.framing import (  # noqa: F401 - re-exported: the readers are the codec's
    MAX_MESSAGE, MAX_STARTUP, OVERSIZED_HEAD, MessageReader, Oversized, ProtocolError, StartupReader)

_I = struct.Struct("!i")
_H = struct.Struct("!h")


class NotUtf8(ProtocolError):
    """A string field that is not UTF-8: for a statement, the server's 22021."""


@attrs.frozen
class Startup:
    code: int
    params: dict = attrs.field(factory=dict)  # for a startup message
    pid: int = 0  # for a CancelRequest
    key: bytes = b""


def parse_startup(payload: bytes) -> Startup:
    if len(payload) < 4:
        raise ProtocolError("short startup packet")
    (code,) = _I.unpack_from(payload)
    if code == CANCEL_REQUEST:
        if len(payload) < 12 or len(payload) > 4 + 4 + 256:
            raise ProtocolError("bad CancelRequest")
        (pid,) = _I.unpack_from(payload, 4)
        return Startup(code, pid=pid, key=payload[8:])
    if code in (SSL_REQUEST, GSSENC_REQUEST):
        return Startup(code)
    if code >> 16 != 3:
        raise ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")
    params = {}
    parts = payload[4:].split(b"\0")
    # key\0value\0 ... \0 : the split leaves two empty strings at the end.
    if len(parts) < 1 or parts[-1] != b"" or (len(parts) >= 2 and parts[-2] != b""):
        raise ProtocolError("startup packet is not terminated")
    items = parts[:-2]
    if len(items) % 2:
        raise ProtocolError("startup packet has a key without a value")
    try:
        for k, v in zip(items[::2], items[1::2]):
            params[k.decode()] = v.decode()
    except UnicodeDecodeError:
        raise ProtocolError("startup packet is not UTF-8")
    return Startup(code, params)


_Bytes = bytes  # Cursor.bytes shadows the type inside the class


class Cursor:
    """Reads fields out of one message payload, raising ProtocolError when short."""

    __slots__ = ("b", "i")

    def __init__(self, b: bytes):
        self.b = b
        self.i = 0

    def int32(self) -> int:
        if self.i + 4 > len(self.b):
            raise ProtocolError("message too short")
        (v,) = _I.unpack_from(self.b, self.i)
        self.i += 4
        return v

    def int16(self) -> int:
        if self.i + 2 > len(self.b):
            raise ProtocolError("message too short")
        (v,) = _H.unpack_from(self.b, self.i)
        self.i += 2
        return v

    def byte(self) -> bytes:
        if self.i >= len(self.b):
            raise ProtocolError("message too short")
        v = self.b[self.i:self.i + 1]
        self.i += 1
        return v

    def bytes(self, n: int) -> bytes:
        if n < 0 or self.i + n > len(self.b):
            raise ProtocolError("message too short")
        v = self.b[self.i:self.i + n]
        self.i += n
        return v

    def cstr(self) -> str:
        j = self.b.find(b"\0", self.i)
        if j < 0:
            raise ProtocolError("string not terminated")
        try:
            v = self.b[self.i:j].decode()
        except UnicodeDecodeError as e:
            raise NotUtf8(f"invalid byte sequence for encoding \"UTF8\": 0x{self.b[self.i + e.start]:02x}")
        self.i = j + 1
        return v

    def rest(self) -> _Bytes:
        v = self.b[self.i:]
        self.i = len(self.b)
        return v


# --- frontend messages (client -> server) ----------------------------------

@attrs.frozen
class Parse:
    name: str
    query: str
    param_types: tuple


@attrs.frozen
class Bind:
    portal: str
    statement: str
    param_formats: tuple
    params: tuple  # bytes or None
    result_formats: tuple


def parse_parse(p: bytes) -> Parse:
    c = Cursor(p)
    name, query = c.cstr(), c.cstr()
    n = c.int16()
    if n < 0:
        raise ProtocolError("negative parameter count")
    return Parse(name, query, tuple(c.int32() for _ in range(n)))


def parse_bind(p: bytes) -> Bind:
    c = Cursor(p)
    portal, stmt = c.cstr(), c.cstr()
    nf = c.int16()
    if nf < 0:
        raise ProtocolError("negative format count")
    formats = tuple(c.int16() for _ in range(nf))
    np_ = c.int16()
    if np_ < 0:
        raise ProtocolError("negative parameter count")
    params = []
    for _ in range(np_):
        n = c.int32()
        params.append(None if n == -1 else c.bytes(n))
    nr = c.int16()
    if nr < 0:
        raise ProtocolError("negative result format count")
    results = tuple(c.int16() for _ in range(nr))
    if any(f not in (0, 1) for f in formats + results):
        raise ProtocolError("unknown format code")
    if nf not in (0, 1, np_):
        raise ProtocolError("format count does not match parameter count")
    return Bind(portal, stmt, formats, tuple(params), results)


def parse_query(p: bytes) -> str:
    j = p.find(b"\0")
    if j >= 0:
        try:
            return p[:j].decode()  # (every Query: without a Cursor)
        except UnicodeDecodeError:
            pass
    return Cursor(p).cstr()  # raises as it always has


def parse_describe(p: bytes) -> tuple[bytes, str]:
    """Describe and Close: ('S' or 'P', name)."""
    c = Cursor(p)
    kind = c.byte()
    if kind not in (b"S", b"P"):
        raise ProtocolError("Describe/Close of something not S or P")
    return kind, c.cstr()


def parse_execute(p: bytes) -> tuple[str, int]:
    c = Cursor(p)
    return c.cstr(), c.int32()


def parse_sasl_initial(p: bytes) -> tuple[str, bytes]:
    c = Cursor(p)
    mech = c.cstr()
    n = c.int32()
    return mech, (b"" if n == -1 else c.bytes(n))


# --- backend messages (server -> client) -----------------------------------

@attrs.frozen
class Field:
    name: str
    table_oid: int
    attnum: int
    type_oid: int
    typlen: int
    typmod: int
    format: int


def parse_row_description(p: bytes) -> list[Field]:
    c = Cursor(p)
    n = c.int16()
    out = []
    for _ in range(n):
        name = c.cstr()
        out.append(Field(name, c.int32() & 0xFFFFFFFF, c.int16(), c.int32() & 0xFFFFFFFF,
                         c.int16(), c.int32(), c.int16()))
    return out


def parse_data_row(p: bytes) -> list:
    c = Cursor(p)
    n = c.int16()
    out = []
    for _ in range(n):
        k = c.int32()
        out.append(None if k == -1 else c.bytes(k))
    return out


def build_data_row(values) -> bytes:
    parts = [struct.pack("!h", len(values))]
    for v in values:
        if v is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(_I.pack(len(v)))
            parts.append(v)
    return msg(b"D", b"".join(parts))


def parse_fields(p: bytes) -> dict:
    """ErrorResponse / NoticeResponse fields: {code char: text}."""
    out: dict[str, str] = {}
    c = Cursor(p)
    while True:
        t = c.byte()
        if t == b"\0":
            return out
        out[t.decode("latin-1")] = c.cstr()


def parse_command_tag(p: bytes) -> str:
    return p.rstrip(b"\0").decode(errors="replace")


def rows_from_tag(tag: str) -> int | None:
    last = tag.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else None


# --- building --------------------------------------------------------------

def msg(t: bytes, body: bytes = b"") -> bytes:
    return t + _I.pack(len(body) + 4) + body


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def error(code: str, message: str, severity: str = "ERROR", detail: str | None = None,
          hint: str | None = None, t: bytes = b"E") -> bytes:
    body = b"S" + cstr(severity) + b"V" + cstr(severity) + b"C" + cstr(code) + b"M" + cstr(message)
    if detail:
        body += b"D" + cstr(detail)
    if hint:
        body += b"H" + cstr(hint)
    return msg(t, body + b"\0")


def notice(message: str, code: str = "01000", detail: str | None = None) -> bytes:
    return error(code, message, "NOTICE", detail, t=b"N")


def ready(status: bytes = b"I") -> bytes:
    return msg(b"Z", status)


def auth(code: int, data: bytes = b"") -> bytes:
    return msg(b"R", _I.pack(code) + data)


def parameter_status(k: str, v: str) -> bytes:
    return msg(b"S", cstr(k) + cstr(v))


def backend_key(pid: int, key: bytes) -> bytes:
    return msg(b"K", _I.pack(pid) + key)


def negotiate_protocol(minor: int, unknown_options) -> bytes:
    opts = list(unknown_options)
    return msg(b"v", _I.pack(PROTOCOL_30 | minor) + _I.pack(len(opts)) + b"".join(cstr(o) for o in opts))


def startup_message(params: dict, code: int = PROTOCOL_30) -> bytes:
    body = _I.pack(code) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return _I.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    return _I.pack(8) + _I.pack(SSL_REQUEST)


def cancel_request(pid: int, key: bytes) -> bytes:
    body = _I.pack(CANCEL_REQUEST) + _I.pack(pid) + key
    return _I.pack(len(body) + 4) + body


def query(sql: str) -> bytes:
    return msg(b"Q", cstr(sql))


def describe(kind: bytes, name: str) -> bytes:
    return msg(b"D", kind + cstr(name))


def password(data: bytes) -> bytes:
    return msg(b"p", data)


def sasl_initial(mech: str, data: bytes) -> bytes:
    return msg(b"p", cstr(mech) + _I.pack(len(data)) + data)


def parse_message(name: str, sql: str, param_types=()) -> bytes:
    return msg(b"P", cstr(name) + cstr(sql) + _H.pack(len(param_types))
               + b"".join(_I.pack(t) for t in param_types))


def bind_message(portal: str, statement: str, param_formats=(), params=(), result_formats=()) -> bytes:
    parts = [cstr(portal), cstr(statement), _H.pack(len(param_formats))]
    parts += [_H.pack(f) for f in param_formats]
    parts.append(_H.pack(len(params)))
    for v in params:
        parts.append(b"\xff\xff\xff\xff" if v is None else _I.pack(len(v)) + v)
    parts.append(_H.pack(len(result_formats)))
    parts += [_H.pack(f) for f in result_formats]
    return msg(b"B", b"".join(parts))


def execute(portal: str, max_rows: int = 0) -> bytes:
    return msg(b"E", cstr(portal) + _I.pack(max_rows))


def close(kind: bytes, name: str) -> bytes:
    return msg(b"C", kind + cstr(name))


def copy_data(data: bytes) -> bytes:
    return msg(b"d", data)


def copy_fail(message: str) -> bytes:
    return msg(b"f", cstr(message))


def row_description(fields) -> bytes:
    body = [_H.pack(len(fields))]
    for f in fields:
        body.append(cstr(f.name) + struct.pack("!IhIhih", f.table_oid, f.attnum, f.type_oid, f.typlen, f.typmod,
                                               f.format))
    return msg(b"T", b"".join(body))


def command_complete(tag: str) -> bytes:
    return msg(b"C", cstr(tag))


def notification(pid: int, channel: str, payload: str) -> bytes:
    return msg(b"A", _I.pack(pid) + cstr(channel) + cstr(payload))


def parse_notification(p: bytes) -> tuple[int, str, str]:
    c = Cursor(p)
    return c.int32(), c.cstr(), c.cstr()


def copy_response(t: bytes, overall: int, formats=()) -> bytes:
    """CopyInResponse (G), CopyOutResponse (H) or CopyBothResponse (W)."""
    return msg(t, bytes([overall]) + _H.pack(len(formats)) + b"".join(_H.pack(f) for f in formats))


def parse_copy_response(p: bytes) -> tuple[int, tuple]:
    c = Cursor(p)
    overall = c.byte()[0]
    n = c.int16()
    if n < 0:
        raise ProtocolError("negative column count")
    return overall, tuple(c.int16() for _ in range(n))


def parameter_description(types) -> bytes:
    return msg(b"t", _H.pack(len(types)) + b"".join(_I.pack(t) for t in types))


def parse_parameter_description(p: bytes) -> tuple:
    c = Cursor(p)
    n = c.int16()
    if n < 0:
        raise ProtocolError("negative parameter count")
    return tuple(c.int32() & 0xFFFFFFFF for _ in range(n))


def parse_parameter_status(p: bytes) -> tuple[str, str]:
    c = Cursor(p)
    return c.cstr(), c.cstr()


def parse_backend_key(p: bytes) -> tuple[int, bytes]:
    c = Cursor(p)
    pid = c.int32()
    key = c.rest()
    if not 4 <= len(key) <= 256:
        raise ProtocolError("bad BackendKeyData")
    return pid, key


def parse_auth(p: bytes) -> tuple[int, bytes]:
    c = Cursor(p)
    return c.int32(), c.rest()


def parse_ready(p: bytes) -> bytes:
    if len(p) != 1 or p not in (b"I", b"T", b"E"):
        raise ProtocolError("bad ReadyForQuery")
    return p


TERMINATE = msg(b"X")
SYNC = msg(b"S")
FLUSH = msg(b"H")
COPY_DONE = msg(b"c")
