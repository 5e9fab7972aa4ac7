"""What text a result value may show, for the pattern checks of masking.

A value is read in its own notation too: bytea in hex, a float with an exponent,
binary ints, numerics, arrays and records element by element. ``prefilter`` and
``byte_detectors`` are the cheap byte-level forms of the built-in detectors.
"""
from __future__ import annotations

import re
import struct

from hoopy.policy.masking import MASK, redact_text

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
