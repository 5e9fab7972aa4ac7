"""Framing: the PostgreSQL byte stream cut into messages, sans-IO.

Startup packets have no type byte (int32 length + payload); every later
message is a type byte + int32 length (self-inclusive) + payload. Readers
buffer what is incomplete, bound what a message may claim, and can skip an
oversized message as it arrives instead of buffering it.
"""
from __future__ import annotations

import struct

import attrs

# Bounds: a startup packet is small; a regular message may be large (COPY
# rows, big parameters) but not unbounded.
MAX_STARTUP = 10_000
MAX_MESSAGE = 1 << 30
_I = struct.Struct("!i")
_HI = struct.Struct("!ci")  # type byte + length


class ProtocolError(Exception):
    """The peer sent bytes that are not the protocol."""


class StartupReader:
    """Untyped startup-phase packets: int32 length (self-inclusive) + payload."""

    def __init__(self):
        self.buf = bytearray()

    def feed(self, data: bytes):
        self.buf += data

    def next(self) -> bytes | None:
        if len(self.buf) < 4:
            return None
        (n,) = _I.unpack_from(self.buf)
        if n < 8 or n > MAX_STARTUP:
            raise ProtocolError(f"invalid startup packet length {n}")
        if len(self.buf) < n:
            return None
        payload = bytes(self.buf[4:n])
        del self.buf[:n]
        return payload

    def take_rest(self) -> bytes:
        rest = bytes(self.buf)
        self.buf.clear()
        return rest


@attrs.frozen
class Oversized:
    """In place of the payload of a message over its type's limit: its length
    and its first bytes. The rest was skipped as it arrived, never buffered."""
    length: int
    head: bytes


OVERSIZED_HEAD = 2000


class MessageReader:
    """Typed messages: type byte + int32 length (self-inclusive) + payload.

    ``limits`` maps a message type to the largest payload kept: a longer one is
    skipped while it is read and comes out as an ``Oversized`` payload."""

    def __init__(self, max_size: int = MAX_MESSAGE, limits: dict | None = None):
        self.buf = bytearray()
        self.max_size = max_size
        self.limits = limits or {}
        self._skip = 0  # bytes of an oversized message still to drop
        self._oversized = None  # (type, Oversized) to hand out once skipped

    def feed(self, data: bytes):
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            data = data[n:]
        self.buf += data

    def __iter__(self):
        return self

    def __next__(self) -> tuple[bytes, bytes]:
        m = self.next()
        if m is None:
            raise StopIteration
        return m

    def next(self):
        if self._oversized is not None:
            if self._skip:
                return None
            m, self._oversized = self._oversized, None
            return m
        buf = self.buf
        if len(buf) < 5:
            return None
        t, n = _HI.unpack_from(buf)
        if n < 4 or n > self.max_size:
            raise ProtocolError(f"invalid length {n} for message {t!r}")
        limit = self.limits.get(t) if self.limits else None
        if limit is not None and n - 4 > limit:
            head = bytes(buf[5:5 + min(n - 4, OVERSIZED_HEAD)])
            taken = min(len(buf), n + 1)
            del buf[:taken]
            self._skip = n + 1 - taken
            self._oversized = (t, Oversized(n - 4, head))
            return self.next()
        if len(buf) < n + 1:
            return None
        payload = bytes(buf[5:n + 1])
        del buf[:n + 1]
        return t, payload


