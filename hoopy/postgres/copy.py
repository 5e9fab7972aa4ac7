"""COPY streams: pattern masking of binary COPY TO STDOUT, and the redaction
marker in COPY FROM STDIN data.

Binary COPY carries no column types (CopyOutResponse says only "binary"), so
a value is read every way its bytes could show text: as UTF-8, as a 2, 4 or
8-byte integer, as a numeric, as an array or record (whose elements do carry
their types). A value in which a pattern matches in any reading becomes NULL,
the one replacement valid for every type. This may blank a harmless value
that happens to read as a match, never pass a matching one.
"""
from __future__ import annotations

import struct

from hoopy.policy.masking import redact_text
from hoopy.postgres import codec
from hoopy.postgres.guards import MARKER_B
from hoopy.postgres.values import _items, _numeric_text, _whole_float, binary_texts

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_I = struct.Struct("!i")
_H = struct.Struct("!h")
_NULL = b"\xff\xff\xff\xff"


def guess_texts(v: bytes) -> list:
    """Every text a binary value of unknown type may show."""
    out = [v.decode("utf-8", "replace")]
    if len(v) in (2, 4, 8):
        out.append(str(int.from_bytes(v, "big", signed=True)))
    if len(v) == 8:
        whole = _whole_float(struct.unpack("!d", v)[0])  # a float8 (a card number as a float)
        if whole is not None:
            out.append(whole)
    if len(v) >= 8 and len(v) % 2 == 0 and 8 + 2 * _H.unpack_from(v, 0)[0] == len(v):
        try:
            out.append(_numeric_text(v))
        except (struct.error, IndexError, ValueError):
            pass
    parts = _items(v, True)
    if parts is None:
        parts = _items(v, False)
    for oid, ev in parts or ():
        out.extend(binary_texts(oid, ev))
    return out


class BinaryCopyMasker:
    """Rewrites a binary COPY stream as it arrives, row by row; ``plan`` (a
    rowplan.RowPlan) counts what was masked. Bytes of an unfinished row wait."""

    def __init__(self, plan):
        self.plan = plan
        self.detectors = plan.detectors
        self.buf = bytearray()
        self.header = False
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buf = self.buf
        buf += data
        out = []
        pos = 0
        if not self.header:
            if len(buf) < 19:
                return b""
            if bytes(buf[:11]) != SIGNATURE:
                raise codec.ProtocolError("binary COPY stream without its signature")
            (ext,) = _I.unpack_from(buf, 15)
            if ext < 0 or len(buf) < 19 + ext:
                if ext < 0:
                    raise codec.ProtocolError("bad binary COPY header")
                return b""
            pos = 19 + ext
            out.append(bytes(buf[:pos]))
            self.header = True
        end = len(buf)
        while not self.done and end - pos >= 2:
            (n,) = _H.unpack_from(buf, pos)
            if n == -1:
                out.append(b"\xff\xff")
                pos += 2
                self.done = True
                break
            if n < 0:
                raise codec.ProtocolError("bad binary COPY tuple")
            p = pos + 2
            values: list[bytes | None] = []  # None: a NULL field
            complete = True
            for _ in range(n):
                if end - p < 4:
                    complete = False
                    break
                (k,) = _I.unpack_from(buf, p)
                p += 4
                if k == -1:
                    values.append(None)
                    continue
                if k < 0:
                    raise codec.ProtocolError("bad binary COPY field")
                if end - p < k:
                    complete = False
                    break
                values.append(bytes(buf[p:p + k]))
                p += k
            if not complete:
                break
            out.append(self._row(values))
            pos = p
        if self.done and pos < end:
            raise codec.ProtocolError("data after the end of a binary COPY stream")
        del buf[:pos]
        return b"".join(out)

    def _row(self, values) -> bytes:
        parts = [_H.pack(len(values))]
        for v in values:
            if v is not None and self._matches(v):
                v = None
            parts.append(_NULL if v is None else _I.pack(len(v)) + v)
        return b"".join(parts)

    def _matches(self, v: bytes) -> bool:
        for text in guess_texts(v):
            _, counts = redact_text(text, self.detectors)
            if counts:
                self.plan._count(counts)
                return True
        return False


class MarkerScan:
    """Finds the redaction marker in a COPY FROM STDIN stream, across the
    boundaries of CopyData messages."""

    def __init__(self):
        self.tail = b""

    def found(self, data: bytes) -> bool:
        joined = self.tail + data
        if MARKER_B in joined:
            return True
        self.tail = joined[-(len(MARKER_B) - 1):]
        return False
