"""One result's masking: what each column's values need (``RowPlan``), applied
to DataRows one at a time or as a run (hoopy/postgres/rowbatch.py), and to the
lines of COPY ... TO STDOUT (``CopyMask``). Made by ``MaskRules.plan``
(hoopy/postgres/rows.py).
"""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING, cast

import attrs

from hoopy.policy.masking import redact_text
from hoopy.postgres import codec, rowbatch
from hoopy.postgres.values import (
    JSON, JSONB, MASK_B, TEXT_TYPES, _NOTATION_B, _in_place, _opaque, binary_texts, byte_detectors, notation_texts,
    prefilter, redact_notations)

if TYPE_CHECKING:
    from collections.abc import Callable

_I = struct.Struct("!i")
_HI = struct.Struct("!ci")


def _mask_value(f) -> bytes | None:
    """A masked value that stays valid for its type, or NULL."""
    if f.type_oid in TEXT_TYPES:
        return MASK_B
    if f.type_oid == JSON:
        return b'"' + MASK_B + b'"'
    if f.type_oid == JSONB:
        return (b"\x01" if f.format == 1 else b"") + b'"' + MASK_B + b'"'
    return None


def _still_json(v: bytes, f) -> bytes | None:
    """A json value after patterns: a match that was a JSON number (a card number in
    row_to_json of a numeric column) left a bare marker, which is no JSON: then the whole
    value becomes the marker as a JSON string, still valid for its type."""
    import json

    body = v[1:] if f.type_oid == JSONB and f.format == 1 else v
    try:
        json.loads(body)
        return v
    except ValueError:
        return _mask_value(f)


class RowPlan:
    def __init__(self, actions, detectors):
        self.actions = actions
        self.detectors = detectors
        self.columns: dict = {}  # label -> values masked
        self.patterns: dict = {}  # detector -> values masked
        self._update()

    def _update(self):
        # Only pattern scans, and only over text bytes: a row with no
        # prefilter hit cannot change, so it need not be parsed.
        self.value_filter = prefilter(self.detectors)
        self.prefilter = None
        if all(a is None or (a[0] == "scan" and not _opaque(a[2])) for a in self.actions):
            self.prefilter = prefilter(self.detectors)
        self.byte_detectors = byte_detectors(self.detectors)
        # Per column, what a value needs: 0 nothing, 1 a pattern scan of text (in place,
        # skipped when the value filter finds no candidate), 2 any other scan, 3 the mask.
        kinds = []
        for a in self.actions:
            if a is None:
                kinds.append(0)
            elif a[0] == "mask":
                kinds.append(3)
            elif not _opaque(a[2]) and self.value_filter is not None:
                f = a[2]
                plain = self.byte_detectors is not None and _in_place(f) and not (
                    f.type_oid == JSONB and f.format == 1)
                kinds.append(4 if plain else 1)  # 4: text whose bytes the built-in patterns read as they are
            else:
                kinds.append(2)
        self._kinds = kinds
        # A run of rows masked at once (hoopy/postgres/rowbatch.py): the email pattern alone, over
        # columns that are scanned as text or not at all.
        self.batch_kinds = None
        if (self.prefilter is not None and [d.name for d in self.detectors] == ["email"]
                and self.byte_detectors is not None and all(k in (0, 1, 4) for k in kinds)):
            self.batch_kinds = [rowbatch.FAST if k == 4 and a[2].type_oid not in (JSON, JSONB) else k
                                for k, a in zip(kinds, self.actions)]

    def fresh(self) -> "RowPlan":
        """A copy with nothing counted yet, for another result of the same shape. What a copy
        shares is never changed in place (``with_formats`` sets new lists)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.columns = {}
        new.patterns = {}
        return new

    def with_formats(self, formats):
        """Describe of a statement says text; Bind decides the real formats."""
        if not formats:
            return self
        out = []
        for i, a in enumerate(self.actions):
            if a is not None:
                fmt = formats[0] if len(formats) == 1 else (formats[i] if i < len(formats) else 0)
                a = (a[0], a[1], attrs.evolve(a[2], format=fmt))
            out.append(a)
        self.actions = out
        self._update()
        return self

    def apply(self, payload: bytes) -> bytes:
        """One DataRow payload -> the DataRow message to send."""
        new = self.rewrite(payload)
        return codec.msg(b"D", payload) if new is None else new

    def rewrite(self, payload: bytes) -> bytes | None:
        """One DataRow payload -> the rewritten DataRow message, or None when nothing
        in it changes. Only the values that change are rebuilt."""
        pf = self.prefilter
        if pf is not None and pf.search(payload) is None:
            return None
        kinds = self._kinds
        actions = self.actions
        count = len(kinds)
        # Only kinds 1 and 4 call it, and _update gives those only where there is a value filter.
        vf_search = cast("Callable[[bytes, int, int], object]",
                         self.value_filter.search if self.value_filter is not None else None)
        unpack = _I.unpack_from
        end = len(payload)
        pieces = None
        try:
            n = int.from_bytes(payload[:2], "big", signed=True)
            pos = 2
            last = 0
            for i in range(n):
                (k,) = unpack(payload, pos)
                start = pos
                pos += 4
                if k < 0:
                    if k == -1:
                        continue
                    raise codec.ProtocolError("bad DataRow")
                e = pos + k
                if e > end:
                    raise codec.ProtocolError("bad DataRow")
                kind = kinds[i] if i < count else 0
                if kind == 0 or ((kind == 1 or kind == 4) and vf_search(payload, pos, e) is None):
                    pos = e  # nothing to do, or no candidate in this value
                    continue
                v = payload[pos:e]
                nv = self._changed(actions[i], kind, v)
                if nv is not v:
                    if pieces is None:
                        pieces = []
                    pieces.append(payload[last:start])
                    pieces.append(b"\xff\xff\xff\xff" if nv is None else _I.pack(len(nv)) + nv)
                    last = e
                pos = e
        except struct.error:
            raise codec.ProtocolError("bad DataRow")
        if pieces is None:
            return None
        pieces.append(payload[last:])
        body = b"".join(pieces)
        return b"D" + _I.pack(len(body) + 4) + body

    def _changed(self, a, kind: int, v: bytes):
        """A value with a candidate: its new bytes (None: NULL), or ``v`` itself."""
        if kind == 4:
            # As text where a character may be spelled otherwise: the byte patterns
            # first could mask a part of such a value and leave the rest.
            nv = self._scan_bytes(v) if _NOTATION_B.search(v) is None else self._scan(v, a[2], True)
        elif kind == 3:
            nv = _mask_value(a[2])
            self.columns[a[1]] = self.columns.get(a[1], 0) + 1
        else:
            nv = self._scan(v, a[2])
        if nv is not v and nv is not None and kind != 3 and a[2].type_oid in (JSON, JSONB):
            nv = _still_json(nv, a[2])
        return nv

    def value(self, i: int, kind: int, v: bytes):
        """Column ``i``'s value as ``rewrite`` treats it (rowbatch's way to the same code)."""
        if (kind == 1 or kind == 4) and self.value_filter.search(v) is None:
            return v
        return self._changed(self.actions[i], kind, v)

    def mask_rows(self, raw, start: int, end: int):
        """The run of whole DataRow messages at ``raw[start:]`` (up to ``end``): (its bytes masked, or
        None when none changes; where the run stops; how many rows it holds). Needs ``prefilter``."""
        if self.batch_kinds is not None:
            return rowbatch.email_rows(self, raw, start, end)
        pos, rows = start, 0
        while end - pos >= 5:
            t, n = _HI.unpack_from(raw, pos)
            if t != b"D" or n < 4 or pos + 1 + n > end:
                break
            pos += 1 + n
            rows += 1
        if pos == start or self.prefilter.search(raw, start, pos) is None:
            return None, pos, rows
        return self.apply_many(raw, start, pos), pos, rows

    def apply_many(self, raw, start: int = 0, end: int | None = None) -> bytes:
        """A run of whole DataRow messages (``raw[start:end]``): rows that do not
        change are copied as runs of bytes."""
        out = []
        pos = run = start
        end = len(raw) if end is None else end
        rewrite = self.rewrite
        while pos < end:
            (n,) = _I.unpack_from(raw, pos + 1)
            nxt = pos + 1 + n
            new = rewrite(bytes(raw[pos + 5:nxt]))
            if new is not None:
                if run < pos:
                    out.append(raw[run:pos])
                out.append(new)
                run = nxt
            pos = nxt
        if run < end:
            out.append(raw[run:end])
        return b"".join(out)

    def _scan(self, v: bytes, f, notations: bool = False):
        pf = self.value_filter
        if pf is not None and not _opaque(f) and pf.search(v) is None:
            return v
        if not _in_place(f):
            # A number, array, record...: the mask would not be a valid value: NULL.
            if f.format == 1:
                texts = binary_texts(f.type_oid, v)
            else:
                text = v.decode("utf-8", "replace")
                texts = [text] + notation_texts(text)
            for text in texts:
                _, counts = redact_text(text, self.detectors)
                if counts:
                    self._count(counts)
                    return None
            return v
        prefix = b""
        if f.type_oid == JSONB and f.format == 1:
            prefix, v = v[:1], v[1:]
        if self.byte_detectors is not None and not notations and _NOTATION_B.search(v) is None:
            nv = self._scan_bytes(v)
            return prefix + nv if prefix else nv
        # Not UTF-8 (PostgreSQL sends none in a UTF8 session, another server might): its other bytes
        # kept as they are (surrogateescape), not the whole value passed unread.
        text = v.decode("utf-8", "surrogateescape")
        # A text value holding another type's notation (bt::text, f::text) is read in it too.
        new, counts = redact_notations(text, self.detectors)
        if not counts:
            return prefix + v if prefix else v
        self._count(counts)
        return prefix + new.encode("utf-8", "surrogateescape")

    def _scan_bytes(self, v: bytes) -> bytes:
        """A text value with the built-in patterns, which are ASCII and match UTF-8
        bytes as they match text. The same object back when nothing matched."""
        for name, pattern, check in self.byte_detectors:
            if check is None:
                v2, k = pattern.subn(MASK_B, v)
            else:
                k = 0

                def sub(m, check=check):
                    nonlocal k
                    if check(m.group(0).decode("ascii")):
                        k += 1
                        return MASK_B
                    return m.group(0)

                v2 = pattern.sub(sub, v)
            if k:
                self.patterns[name] = self.patterns.get(name, 0) + k
                v = v2
        return v

    def _count(self, counts):
        for k, n in counts.items():
            self.patterns[k] = self.patterns.get(k, 0) + n

    def copy_line(self, data: bytes) -> bytes:
        """COPY TO STDOUT in text or CSV: patterns over the whole line, and over what its
        bytea hex and whole floats stand for."""
        try:
            text = data.decode()
        except UnicodeDecodeError:
            return data
        new, counts = redact_notations(text, self.detectors)
        if counts:
            self._count(counts)
            return new.encode()
        return data

    def summary(self) -> dict | None:
        if not self.columns and not self.patterns:
            return None
        return {"columns": dict(self.columns), "patterns": dict(self.patterns)}


class CopyMask(RowPlan):
    """COPY ... TO STDOUT in text format with masked columns: each line's fields
    split at tabs (a tab in a value is written as \\t), the masked ones replaced
    (text types: the marker; json: the marker as a JSON string; others: \\N,
    NULL), then patterns over the line."""

    def __init__(self, columns, detectors):
        self.copy_columns = [(i, label, _copy_mask(t)) for i, label, t in columns]
        super().__init__([], detectors)

    def copy_line(self, data: bytes) -> bytes:
        end = data.endswith(b"\n")
        fields = (data[:-1] if end else data).split(b"\t")
        for i, label, value in self.copy_columns:
            if i < len(fields) and fields[i] != b"\\N":
                fields[i] = value
                self.columns[label] = self.columns.get(label, 0) + 1
        data = b"\t".join(fields) + (b"\n" if end else b"")
        return super().copy_line(data) if self.detectors else data


def _copy_mask(type_oid: int) -> bytes:
    if type_oid in TEXT_TYPES or type_oid == 0:
        return MASK_B
    if type_oid in (JSON, JSONB):
        return b'"' + MASK_B + b'"'
    return b"\\N"
