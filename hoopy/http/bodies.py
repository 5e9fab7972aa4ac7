"""Body masking, sans-IO: JSON, server-sent events and text.

A ``Masker`` holds a connection's masking rules. JSON bodies are parsed and
walked: a ``field`` without a dot masks that key anywhere, a dotted field
("card.number") masks a key reached by that path of keys (at any depth;
arrays do not add a step); ``patterns`` run on every string value. SSE is
masked one event at a time as it streams (the ``data:`` lines of an event
hold JSON in MCP's streamable HTTP). Text bodies are masked by patterns.

Counts name what was masked, never the value: ``{"field:ssn": 2, "email": 1}``.
"""
from __future__ import annotations

import codecs
import json
import re
import zlib

import attrs

from hoopy.bytesearch import contains
from hoopy.policy.masking import MASK


class MaskError(Exception):
    """The body must be masked but cannot be (too large, not decodable): refuse it."""


# A character every match of a built-in detector contains: strings without it are skipped cheaply
# (the e-mail pattern is slow to search for on long text with no "@").
HINTS = {"email": "@", "us_ssn": "-"}


def _redact(text: str, hinted) -> tuple[str, dict]:
    counts = {}
    for d, hint in hinted:
        if hint is not None and hint not in text:
            continue
        text, n = d.redact(text)
        if n:
            counts[d.name] = counts.get(d.name, 0) + n
    return text, counts


def _add(counts: dict, key: str, n: int = 1):
    counts[key] = counts.get(key, 0) + n


def body_kind(content_type: str | bytes | None) -> str:
    """json | sse | text | other, from a Content-Type value."""
    if not content_type:
        return "other"
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    ct = content_type.split(";", 1)[0].strip().lower()
    if ct == "text/event-stream":
        return "sse"
    if ct == "application/json" or ct.endswith("+json"):
        return "json"
    if ct.startswith("text/") or ct in ("application/xml", "application/x-www-form-urlencoded",
                                        "application/javascript", "application/graphql"):
        return "text"
    return "other"


@attrs.frozen
class Masker:
    fields: tuple = ()  # "ssn", "card.number"
    detectors: tuple = ()  # hoopy.policy.masking.Detector
    # Split once: plain keys are a set lookup; only dotted fields need the key path.
    _plain: frozenset = attrs.field(init=False, repr=False, eq=False)
    _dotted: tuple = attrs.field(init=False, repr=False, eq=False)
    _hinted: tuple = attrs.field(init=False, repr=False, eq=False)
    # Every key a field rule names, each segment of a dotted one: a GraphQL alias may rename none.
    field_keys: frozenset = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self):
        object.__setattr__(self, "field_keys", frozenset(k for f in self.fields for k in f.split(".")))
        object.__setattr__(self, "_plain", frozenset(f for f in self.fields if "." not in f))
        object.__setattr__(self, "_hinted", tuple((d, HINTS.get(d.name)) for d in self.detectors))
        object.__setattr__(self, "_dotted", tuple((f, tuple(f.split("."))) for f in self.fields if "." in f))

    @classmethod
    def from_config(cls, maskings) -> "Masker":
        fields, detectors = [], []
        for m in maskings:
            fields += [f for f in m.fields if f not in fields]
            detectors += [d for d in m.patterns if d not in detectors]
        return cls(tuple(fields), tuple(detectors))

    @property
    def active(self) -> bool:
        return bool(self.fields or self.detectors)

    def applies(self, kind: str) -> bool:
        # Text too when only fields apply: JSON labelled text/plain (or text/html) is still JSON to
        # whoever reads it. Other (binary) types are sniffed by the proxy (``looks_like_json``).
        return kind in ("json", "sse", "text") and self.active

    # --- JSON ---------------------------------------------------------------

    def mask_value(self, value, counts: dict, path: tuple = ()):
        plain, dotted = self._plain, self._dotted
        hinted = self._hinted

        def walk(value, path):
            if isinstance(value, str):
                if hinted:
                    text, c = _redact(value, hinted)
                    if c:
                        for name, n in c.items():
                            _add(counts, name, n)
                        return text
                return value
            if isinstance(value, int) and not isinstance(value, bool):
                # a card number sent as a JSON number is the same number to its reader
                if hinted:
                    text, c = _redact(str(value), hinted)
                    if c:
                        for name, n in c.items():
                            _add(counts, name, n)
                        return MASK
                return value
            if isinstance(value, dict):
                out = {}
                for k, v in value.items():
                    if k in plain:
                        _add(counts, f"field:{k}")
                        out[k] = MASK
                        continue
                    if dotted:
                        p = path + (str(k),)
                        hit = next((f for f, parts in dotted if p[-len(parts):] == parts), None)
                        if hit is not None:
                            _add(counts, f"field:{hit}")
                            out[k] = MASK
                            continue
                    else:
                        p = path
                    out[k] = walk(v, p) if isinstance(v, (str, dict, list, int)) else v
                return out
            if isinstance(value, list):
                return [walk(v, path) if isinstance(v, (str, dict, list, int)) else v for v in value]
            return value

        return walk(value, path)

    def _clean(self, data: bytes) -> bool:
        """True when nothing in ``data`` can need masking (the fast path, checked on the raw text).

        Any JSON escape (\\uXXXX, \\/, \\n ...) could hide a match from a text search, so its
        presence means: walk.
        """
        if b"\\" in data:
            return False
        text = data.decode("utf-8", "surrogateescape")
        for f in self.fields:
            if f'"{f.rsplit(".", 1)[-1]}"' in text:
                return False
        return not any((hint is None or hint in text) and d.pattern.search(text) for d, hint in self._hinted)

    def mask_json(self, data: bytes) -> tuple[bytes, dict]:
        """Masked JSON bytes and counts; the input unchanged when nothing matched."""
        if not data.strip():
            return data, {}
        _check_ascii_compatible(data)
        dup = []

        def pairs(items):
            d = dict(items)
            if len(d) != len(items):
                dup.append(True)
            return d

        try:
            value = json.loads(data, object_pairs_hook=pairs)
        except (ValueError, UnicodeDecodeError, RecursionError):
            if self.fields:
                raise MaskError("the body is declared JSON but is not valid JSON, so it cannot be masked")
            return self.mask_text(data)
        if self._clean(data):
            return data, {}
        counts: dict = {}
        try:
            masked = self.mask_value(value, counts)
        except RecursionError:
            raise MaskError("the JSON body is nested too deeply to be masked")
        if not counts and not dup:
            return data, counts
        # With duplicate keys the walk saw only the last value of each: what is sent is what was walked.
        return json.dumps(masked, ensure_ascii=False, separators=(",", ":")).encode(), counts

    def mask_sniffed(self, data: bytes) -> tuple[bytes, dict]:
        """A body whose type does not say JSON but may hold it: JSON (or JSON lines) if it parses,
        else text by patterns; refused if it looks like JSON, fields apply, and it does not parse."""
        if not looks_like_json(data):
            return self.mask_text(data)
        try:
            return self.mask_json(data)
        except MaskError:
            pass
        lines = data.replace(b"\x1e", b"\n").split(b"\n")  # JSON lines, or RS-separated JSON texts
        out, counts = [], {}
        try:
            for ln in lines:
                if ln.strip():
                    json.loads(ln)
        except (ValueError, UnicodeDecodeError, RecursionError):
            if self.fields:
                raise MaskError("the body looks like JSON but does not parse, so it cannot be masked")
            return self.mask_text(data)
        for ln in lines:
            m, c = self.mask_json(ln)
            out.append(m)
            for k, n in c.items():
                _add(counts, k, n)
        return b"\n".join(out), counts

    def mask_text(self, data: bytes) -> tuple[bytes, dict]:
        if not self.detectors:
            return data, {}
        _check_ascii_compatible(data)
        text = data.decode("utf-8", "surrogateescape")
        masked, counts = _redact(text, self._hinted)
        if not counts:
            return data, counts
        return masked.encode("utf-8", "surrogateescape"), counts

    def mask(self, kind: str, data: bytes) -> tuple[bytes, dict]:
        if kind == "json":
            return self.mask_json(data)
        if kind == "sse":
            s = SSEMasker(self, limit=max(len(data), 1))
            return s.feed(data) + s.close(), s.counts
        return self.mask_sniffed(data)


_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
# Charsets in which the ASCII text the patterns and field names look for is plain ASCII bytes.
_ASCII_CHARSETS = re.compile(r"^(utf-?8|us-ascii|ascii|iso-?8859-\d+|latin-?1|(windows|cp)-?125\d|shift_jis|"
                             r"euc-jp|euc-kr|gb2312|gbk|gb18030|big5|koi8-[ru])$")


def _check_ascii_compatible(data: bytes):
    """UTF-16/32 (a BOM or NUL bytes) hide every ASCII match from the masker: refused, not passed."""
    if data.startswith(_BOMS) or b"\x00" in data:
        raise MaskError("the body is not UTF-8 (UTF-16/32 or binary), so it cannot be masked")


def charset_ok(content_type) -> bool:
    """False when a Content-Type names a charset the masker cannot read (utf-16, utf-7, EBCDIC ...)."""
    if not content_type:
        return True
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    for param in content_type.split(";")[1:]:
        k, _, v = param.partition("=")
        if k.strip().lower() == "charset":
            return bool(_ASCII_CHARSETS.match(v.strip().strip('"').lower()))
    return True


def looks_like_json(head: bytes) -> bool:
    """Whether a body's first bytes look like JSON (or a BOM / UTF-16 form of it)."""
    for bom in (codecs.BOM_UTF8,) + _BOMS:
        if head.startswith(bom):
            return True if bom != codecs.BOM_UTF8 else looks_like_json(head[len(bom):])
    stripped = head.replace(b"\x00", b"").lstrip(b" \t\r\n\x1e")  # RS: JSON text sequences (RFC 7464)
    return stripped[:1] in (b"{", b"[", b'"')


_LINE_END = re.compile(rb"\r\n|\r|\n")


class SSEMasker:
    """Masks a text/event-stream as it arrives, one event at a time.

    The stream is read as its reader reads it (the WHATWG parser): lines end at CRLF, LF or CR, an
    event ends at an empty line, a leading BOM is dropped, a ``data`` line without a colon is an empty
    data line. An event's ``data`` values are joined, masked as JSON when they hold JSON (else by
    patterns), and the event is written back with LF line ends. An event longer than ``limit``
    raises MaskError: it is never passed unmasked.
    """

    def __init__(self, masker: Masker, limit: int):
        self.masker = masker
        self.limit = limit
        self.counts: dict = {}
        self._buf = b""
        self._lines: list = []
        self._size = 0
        self._start = True

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        if self._start:
            if len(self._buf) < 3 and codecs.BOM_UTF8.startswith(self._buf):
                return b""
            if self._buf.startswith(codecs.BOM_UTF8):
                self._buf = self._buf[3:]
            self._start = False
        return self._lines_out(final=False)

    def _lines_out(self, final: bool) -> bytes:
        out, pos, buf = [], 0, self._buf
        while True:
            m = _LINE_END.search(buf, pos)
            if m is None:
                break
            if m.group() == b"\r" and m.end() == len(buf) and not final:
                break  # a CR at the end may be the first half of a CRLF
            line, pos = buf[pos:m.start()], m.end()
            if line:
                self._lines.append(line)
                self._size += len(line) + 1
            elif self._lines:
                out.append(self._event(self._lines) + b"\n\n")
                self._lines, self._size = [], 0
            else:
                out.append(b"\n")
        self._buf = buf[pos:]
        if self._size + len(self._buf) > self.limit:
            raise MaskError(f"a server-sent event is larger than mask_limit ({self.limit} bytes)")
        return b"".join(out)

    def close(self) -> bytes:
        out = self._lines_out(final=True)
        if self._buf:
            self._lines.append(self._buf)
            self._buf = b""
        if self._lines:  # a last event without its blank line
            out += self._event(self._lines) + b"\n"
            self._lines, self._size = [], 0
        return out

    def _event(self, lines: list) -> bytes:
        data, others = [], []
        for ln in lines:
            if ln == b"data" or ln.startswith(b"data:"):
                v = ln[5:]
                data.append(v[1:] if v[:1] == b" " else v)
            else:
                others.append(ln)
        if not data:
            return b"\n".join(lines)
        payload = b"\n".join(data)
        masked, counts = self.masker.mask_sniffed(payload)
        if not counts:
            return b"\n".join(lines)
        for k, n in counts.items():
            _add(self.counts, k, n)
        return b"\n".join(others + [b"data: " + m for m in masked.split(b"\n")])

    def take_counts(self) -> dict:
        c, self.counts = self.counts, {}
        return c


class Scrubber:
    """Replaces secrets in a stream with as many ``*`` (so a Content-Length stays true).

    Only a tail that could be the start of a secret is held back until the next piece.
    """

    def __init__(self, secrets):
        self.secrets = tuple(sorted(secrets, key=len, reverse=True))  # longest first
        # A secret that holds another ("Bearer TOKEN" holds TOKEN) cannot be in a buffer the other is
        # not in: only these are searched for in every piece (one pass over a download, not two).
        self.cores = tuple(s for s in self.secrets if not any(o != s and o in s for o in self.secrets))
        self.tail = b""

    def feed(self, data: bytes) -> bytes:
        buf = self.tail + data if self.tail else data
        if any(contains(buf, c) for c in self.cores):
            for s in self.secrets:
                if s in buf:
                    buf = buf.replace(s, b"*" * len(s))
        hold = 0
        n = len(buf)
        for s in self.secrets:
            # the longest end of buf that begins s: look only where s's first byte is, leftmost first
            i = buf.find(s[:1], max(0, n - len(s) + 1))
            while i != -1 and n - i > hold:
                if s.startswith(buf[i:]):
                    hold = n - i
                    break
                i = buf.find(s[:1], i + 1)
        if hold:
            buf, self.tail = buf[:-hold], buf[-hold:]
        else:
            self.tail = b""
        return buf

    def close(self) -> bytes:
        t, self.tail = self.tail, b""
        return t


def codings(encoding: str | None) -> list[str]:
    """The content codings of a Content-Encoding value (all its headers joined), without identity."""
    return [c.strip().lower() for c in (encoding or "").split(",") if c.strip().lower() not in ("", "identity")]


class Decoder:
    """Undoes a Content-Encoding (gzip, deflate) with an output limit."""

    def __init__(self, encoding: str, limit: int):
        found = codings(encoding)
        enc = found[0] if len(found) == 1 else encoding.strip().lower()
        if enc in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            self._z = zlib.decompressobj(zlib.MAX_WBITS)
        else:
            raise MaskError(f"cannot decode Content-Encoding {encoding!r} to mask it")
        self.limit = limit
        self.total = 0

    def feed(self, data: bytes) -> bytes:
        try:
            out = self._z.decompress(data, self.limit + 1 - self.total)
        except zlib.error as e:
            raise MaskError(f"the compressed body is corrupt: {e}")
        self.total += len(out)
        if self.total > self.limit or self._z.unconsumed_tail:
            raise MaskError(f"the decoded body is larger than mask_limit ({self.limit} bytes)")
        return out

    def close(self) -> bytes:
        try:
            return self._z.flush()
        except zlib.error as e:
            raise MaskError(f"the compressed body is corrupt: {e}")


def decodable(encoding: str | None) -> bool:
    """One coding at most (``gzip, gzip`` is not undone twice) and one this module decodes."""
    found = codings(encoding)
    return not found or (len(found) == 1 and found[0] in ("gzip", "x-gzip", "deflate"))
