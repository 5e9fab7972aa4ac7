"""Masking of result rows, by each field's origin (table OID, attribute number).

``MaskRules`` is built per session from the upstream catalog; ``plan`` looks
at one RowDescription (and what the statement references) and returns None
when no rule can apply, so the rows pass through as bytes, untouched.
"""
from __future__ import annotations

import re
import struct
from typing import TYPE_CHECKING, cast

import attrs

from hoopy.policy.masking import MASK, redact_text
from hoopy.postgres import codec, rowbatch

if TYPE_CHECKING:
    from collections.abc import Callable

MASK_B = MASK.encode()
# Types whose values are text in both formats (binary text is UTF-8 too).
TEXT_TYPES = frozenset({25, 1043, 1042, 19, 705})
JSON = 114
JSONB = 3802
INT_BINARY = {20: struct.Struct("!q"), 21: struct.Struct("!h"), 23: struct.Struct("!i")}
NUMERIC = 1700
BYTEA = 17
FLOATS = {700: struct.Struct("!f"), 701: struct.Struct("!d")}
# Types whose values cannot show a pattern's text (bool, times, uuid, oid): not
# scanned. Every other value is: text types and json are redacted in place, any
# other type (arrays, records, numeric, floats, bytea, xml, tsvector...) becomes NULL.
NO_TEXT = frozenset({16, 26, 1082, 1083, 1114, 1184, 1186, 1266, 2950})
# Types whose text format shows a value in a notation of their own: bytea in hex
# (\x616e6e40...: every client decodes it back to the bytes), a float with an
# exponent (4.111111111111111e+15, which a client shows as 4111111111111111.0).
NOTATION = frozenset({BYTEA, *FLOATS})
_I = struct.Struct("!i")
_H = struct.Struct("!h")
_HI = struct.Struct("!ci")
# Those notations anywhere in a text (an array or record of them, a COPY line, a message):
# a run of bytea hex (its backslash doubled inside arrays and records), a float's exponent.
_HEX_RUN = re.compile(r"\\+x((?:[0-9a-fA-F]{2}){4,})")
_FLOAT_EXP = re.compile(r"(?<![0-9.])[0-9]\.[0-9]+e\+[0-9]{1,3}(?![0-9])")
NOTATION_MARK = rb"\\x[0-9a-fA-F]{8}|[0-9]\.[0-9]+e\+"
# A text value whose characters may be spelled otherwise (or hold one a reader does not see):
# read as text, by hoopy.policy.masking's detectors, not by the byte patterns.
_NOTATION_B = re.compile(NOTATION_MARK + rb"|%[0-9A-Fa-f]{2}|\\[xu0-7]|&#|&[a-z]+;|[\x80-\xff]")


def _whole_float(x: float) -> str | None:
    """A float that is a whole number, in decimal digits (as a card number would be written)."""
    if x == x and abs(x) < 1e21 and x.is_integer():
        return str(int(x))
    return None


def _notation_runs(text: str):
    """(start, end, the text it stands for) of each bytea hex run and whole float in ``text``."""
    for m in _HEX_RUN.finditer(text):
        yield m.start(), m.end(), bytes.fromhex(m.group(1)).decode("utf-8", "replace")
    for m in _FLOAT_EXP.finditer(text):
        whole = _whole_float(float(m.group()))
        if whole is not None:
            yield m.start(), m.end(), whole


def notation_texts(text: str) -> list:
    return [t for _, _, t in _notation_runs(text)]


def redact_notations(text: str, detectors) -> tuple[str, dict]:
    """Patterns over a text (a message, a COPY line), then over what each bytea hex run
    or whole float in it stands for: a run that holds a match becomes the marker."""
    text, counts = redact_text(text, detectors)
    if "\\x" not in text and "e+" not in text:
        return text, counts
    out: list[str] = []
    last = 0
    for start, end, decoded in sorted(_notation_runs(text)):
        if start < last:
            continue
        _, found = redact_text(decoded, detectors)
        if found:
            out += (text[last:start], MASK)
            last = end
            for k, n in found.items():
                counts[k] = counts.get(k, 0) + n
    if out:
        text = "".join(out) + text[last:]
    return text, counts


def _in_place(f) -> bool:
    return f.type_oid in TEXT_TYPES or f.type_oid in (JSON, JSONB)


def _opaque(f) -> bool:
    """A value whose bytes need not show its text: binary ints, numeric, arrays, records;
    bytea and floats in either format."""
    return (f.format == 1 and not _in_place(f)) or f.type_oid in NOTATION


def _numeric_text(v: bytes) -> str:
    ndigits, weight = _H.unpack_from(v, 0)[0], _H.unpack_from(v, 2)[0]
    sign = int.from_bytes(v[4:6], "big")
    digits = [_H.unpack_from(v, 8 + 2 * i)[0] for i in range(ndigits)]
    if sign == 0xC000:
        return "NaN"
    ip = digits[:weight + 1] + [0] * max(0, weight + 1 - len(digits))
    whole = (str(ip[0]) + "".join("%04d" % d for d in ip[1:])) if ip else "0"
    frac = "0000" * max(0, -weight - 1) + "".join("%04d" % d for d in digits[max(0, weight + 1):])
    return ("-" if sign == 0x4000 else "") + whole + ("." + frac if frac else "")


def _items(v: bytes, array: bool):
    """(type oid, bytes or None) of a binary array's elements or a record's fields; None if not one."""
    try:
        if array:
            ndim, flags, elem = _I.unpack_from(v, 0)[0], _I.unpack_from(v, 4)[0], _I.unpack_from(v, 8)[0]
            if not 0 <= ndim <= 6 or flags not in (0, 1):
                return None
            count, pos = (1 if ndim else 0), 12
            for _ in range(ndim):
                count *= _I.unpack_from(v, pos)[0]
                pos += 8
        else:
            count, pos = _I.unpack_from(v, 0)[0], 4
            elem = None
        if not 0 <= count <= len(v):
            return None
        out = []
        for _ in range(count):
            if elem is None:
                oid = _I.unpack_from(v, pos)[0]
                pos += 4
            else:
                oid = elem
            (k,) = _I.unpack_from(v, pos)
            pos += 4
            if k == -1:
                continue
            if k < 0 or pos + k > len(v):
                return None
            out.append((oid, v[pos:pos + k]))
            pos += k
        return out if pos == len(v) else None
    except struct.error:
        return None


def binary_texts(oid: int, v: bytes, depth: int = 0) -> list:
    """The texts a binary value may show, for pattern checks: ints and numerics in
    decimal, arrays and records element by element, and always the raw bytes."""
    out = [v.decode("latin-1")]
    try:
        if oid in INT_BINARY:
            out.append(str(INT_BINARY[oid].unpack(v)[0]))
        elif oid in FLOATS:
            whole = _whole_float(FLOATS[oid].unpack(v)[0])
            if whole is not None:
                out.append(whole)
        elif oid == NUMERIC:
            out.append(_numeric_text(v))
        elif oid not in TEXT_TYPES and depth < 8:
            parts = _items(v, True)
            if parts is None:
                parts = _items(v, False)
            for eo, ev in parts or ():
                out.extend(binary_texts(eo, ev, depth + 1))
    except (struct.error, IndexError):
        pass
    return out

# Cheap byte-level tests that must match wherever a built-in detector could:
# a row (or a whole chunk of rows) none of them finds passes untouched.
PREFILTERS = {
    # An "@" as written, or spelled otherwise for a reader (percent-encoded, escaped, a character
    # reference, a fullwidth or small commercial at): see hoopy.policy.masking.
    "email": rb"@|%40|\\x40|\\u0040|\\u\{40\}|\\100|&#0*64|&#[xX]0*40|&commat;|\xef\xbc\xa0|\xef\xb9\xab",
    "credit_card": rb"[0-9](?:[ -]?[0-9]){12}",
    "us_ssn": rb"[0-9]{3}-[0-9]{2}-[0-9]{4}",
}


def prefilter(detectors):
    """One compiled bytes regex, or None when a detector has no prefilter. It also finds
    the notations a value may hide in (bytea hex, a float's exponent)."""
    parts = []
    for d in detectors:
        if d.name not in PREFILTERS:
            return None
        parts.append(PREFILTERS[d.name])
    return re.compile(b"|".join(parts + [NOTATION_MARK])) if parts else None


def byte_detectors(detectors):
    """(name, bytes pattern, check) for built-in detectors, or None if any is custom."""
    out = []
    for d in detectors:
        if d.name not in PREFILTERS:
            return None
        out.append((d.name, re.compile(d.pattern.pattern.encode("ascii")), d.check))
    return out




def catalog_query(columns) -> str:
    """One simple query: the masked columns, then every view that depends
    on their tables (recursively). Names are passed as literals."""
    lit = ",".join("'" + c.replace("'", "''") + "'" for c in columns) or "NULL"
    # Inheritance children and partitions hold the column too (under its name:
    # an inherited column cannot be renamed), with origins of their own.
    return (
        "WITH RECURSIVE t(oid, attname) AS ("
        " SELECT a.attrelid, a.attname FROM pg_catalog.pg_attribute a"
        " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE a.attnum > 0 AND NOT a.attisdropped"
        f" AND n.nspname || '.' || c.relname || '.' || a.attname = ANY(ARRAY[{lit}]::text[])"
        " UNION SELECT i.inhrelid, t.attname FROM pg_catalog.pg_inherits i JOIN t ON i.inhparent = t.oid) "
        "SELECT c.oid, a.attnum, n.nspname, c.relname, a.attname, a.atttypid FROM t "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = t.oid AND a.attname = t.attname "
        "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE NOT a.attisdropped;"
        "WITH RECURSIVE b(oid) AS ("
        " SELECT a.attrelid FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE n.nspname || '.' || c.relname || '.' || a.attname = ANY(ARRAY[{lit}]::text[])"
        " UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN b ON i.inhparent = b.oid), "
        "m(oid) AS (SELECT oid FROM b"
        " UNION SELECT r.ev_class FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid"
        " JOIN m ON d.refobjid = m.oid WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass"
        " AND r.ev_class <> m.oid) "
        "SELECT m.oid, c.relkind, n.nspname, c.relname FROM m JOIN pg_catalog.pg_class c ON c.oid = m.oid "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace")


@attrs.define
class MaskRules:
    detectors: tuple = ()
    columns: dict = attrs.field(factory=dict)  # (oid, attnum) -> "schema.table.column"
    tables: dict = attrs.field(factory=dict)  # oid -> "schema.table" with a masked column
    views: dict = attrs.field(factory=dict)  # oid -> "schema.view" (every column masked)
    relations: frozenset = frozenset()  # "schema.name" of masked tables and their views
    names: frozenset = frozenset()  # masked column names
    view_names: frozenset = frozenset()  # "schema.view" of views over masked tables
    configured: tuple = ()  # the column names as configured
    column_types: dict = attrs.field(factory=dict)  # "schema.table.column" -> type OID

    @property
    def active(self) -> bool:
        return bool(self.detectors or self.configured)

    def load(self, results):
        """``results``: the two row sets of catalog_query, as text values."""
        cols, rels = results
        for oid, attnum, nsp, rel, att, *typ in cols:
            self.columns[(int(oid), int(attnum))] = f"{nsp}.{rel}.{att}"
            self.tables[int(oid)] = f"{nsp}.{rel}"
            self.column_types[f"{nsp}.{rel}.{att}"] = int(typ[0]) if typ and typ[0] else 0
        names = {c.rsplit(".", 1)[-1].lower() for c in self.configured}
        relations = {c.rsplit(".", 1)[0] for c in self.configured}
        view_names = set()
        for oid, kind, nsp, rel in rels:
            relations.add(f"{nsp}.{rel}")
            if kind in ("v", "m"):
                self.views[int(oid)] = f"{nsp}.{rel}"
                view_names.add(f"{nsp}.{rel}")
        self.relations = frozenset(relations)
        self.view_names = frozenset(view_names)
        self.names = frozenset(names)

    def unresolved(self) -> list:
        """The configured columns the catalog did not return: a mistyped column or table masks
        nothing, so the session that read this catalog must refuse every statement."""
        return [c for c in self.configured if c not in self.column_types]

    def touches(self, c) -> bool:
        """The statement names a masked table or a view over one."""
        if c is not None and self.configured and (c.executes or c.fetch):
            return True  # what a prepared statement or a cursor reads is not in this SQL
        return bool(self.relations and c is not None and not self.relations.isdisjoint(c.relations))

    def tainted(self, c) -> bool:
        """Result columns without an origin may carry a masked value: the
        statement references a masked relation and a masked column name,
        a whole row, a star below the top, or reads a cursor; or it names a
        view over a masked table (whose columns may be renamed)."""
        if c is None:
            return bool(self.configured)
        if (c.fetch or c.executes) and self.configured:
            return True
        if not self.view_names.isdisjoint(c.relations):
            return True
        return self.touches(c) and (c.whole_row or not self.names.isdisjoint(c.column_names))

    def copy_columns(self, c):
        """For COPY ... TO STDOUT of a table with masked columns: None if none of
        its columns is masked; (index, label, type OID) of each masked one in
        COPY's text format; or a string saying why it cannot be masked."""
        if c is None or c.copy is None:
            return "a query's results have no column origins"
        rel, target = c.copy
        masked = [(lbl, t) for lbl, t in self.column_types.items() if lbl.rsplit(".", 1)[0] == rel]
        if not masked:
            return None
        if not target.columns:
            return "list its columns (COPY t (a, b) TO STDOUT, as pg_dump does) so hoopy can tell which to mask"
        for name, value in target.options:
            if name == "format" and str(value).lower() == "text":
                continue
            if name == "encoding" and isinstance(value, str) and value.replace("-", "").lower() in ("utf8",):
                continue
            return f"only the default text format can be masked (option {name})"
        types = dict(masked)
        out = [(i, f"{rel}.{col}", types[f"{rel}.{col}"]) for i, col in enumerate(target.columns)
               if f"{rel}.{col}" in types]
        return out or None

    def plan(self, fields, classified) -> "RowPlan | None":
        if not self.active:
            return None
        taint = self.tainted(classified) if self.configured else False
        actions: list[tuple[str, str | None, codec.Field] | None] = []
        any_action = False
        for f in fields:
            label = None
            if f.table_oid:
                label = self.columns.get((f.table_oid, f.attnum))
                if label is None and f.attnum <= 0 and f.table_oid in self.tables:
                    label = self.tables[f.table_oid] + " (whole row)"
                if label is None and f.table_oid in self.views:
                    label = self.views[f.table_oid] + "." + f.name
            elif taint:
                label = f"expression {f.name}"
            if label is not None:
                actions.append(("mask", label, f))
                any_action = True
            elif self.detectors and f.type_oid not in NO_TEXT and not (
                    f.type_oid in FLOATS and all(d.name == "email" for d in self.detectors)):
                actions.append(("scan", None, f))
                any_action = True
            else:
                actions.append(None)
        return RowPlan(actions, self.detectors) if any_action else None



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
