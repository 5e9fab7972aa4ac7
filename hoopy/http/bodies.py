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

import json
import zlib

import attrs

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

    def __attrs_post_init__(self):
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
        if kind in ("json", "sse"):
            return self.active
        if kind == "text":
            return bool(self.detectors)
        return False

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
                    out[k] = walk(v, p) if isinstance(v, (str, dict, list)) else v
                return out
            if isinstance(value, list):
                return [walk(v, path) if isinstance(v, (str, dict, list)) else v for v in value]
            return value

        return walk(value, path)

    def _clean(self, data: bytes) -> bool:
        """True when nothing in ``data`` can need masking (the fast path, checked on the raw text).

        A JSON escape (\\uXXXX) could hide a match from a text search, so its presence means: walk.
        """
        if b"\\u" in data:
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
        try:
            value = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            if self.fields:
                raise MaskError("the body is declared JSON but is not valid JSON, so it cannot be masked")
            return self.mask_text(data)
        if self._clean(data):
            return data, {}
        counts: dict = {}
        masked = self.mask_value(value, counts)
        if not counts:
            return data, counts
        return json.dumps(masked, ensure_ascii=False, separators=(",", ":")).encode(), counts

    def mask_text(self, data: bytes) -> tuple[bytes, dict]:
        if not self.detectors:
            return data, {}
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
        return self.mask_text(data)


class SSEMasker:
    """Masks a text/event-stream as it arrives, one event at a time.

    An event ends at a blank line; its ``data:`` lines are joined, masked as
    JSON when they parse as JSON, else by patterns, and written back. An event
    longer than ``limit`` raises MaskError: it is never passed unmasked.
    """

    def __init__(self, masker: Masker, limit: int):
        self.masker = masker
        self.limit = limit
        self.counts: dict = {}
        self._buf = b""

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out = []
        while True:
            end, sep_len = _event_end(self._buf)
            if end < 0:
                break
            event, self._buf = self._buf[:end], self._buf[end + sep_len:]
            out.append(self._event(event) + b"\n\n")
        if len(self._buf) > self.limit:
            raise MaskError(f"a server-sent event is larger than mask_limit ({self.limit} bytes)")
        return b"".join(out)

    def close(self) -> bytes:
        rest, self._buf = self._buf, b""
        return self._event(rest) if rest.strip() else rest

    def _event(self, event: bytes) -> bytes:
        lines = event.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        data = [ln[5:][1:] if ln[5:6] == b" " else ln[5:] for ln in lines if ln.startswith(b"data:")]
        if not data:
            return event
        payload = b"\n".join(data)
        try:
            masked, counts = self.masker.mask_json(payload)
        except MaskError:
            masked, counts = self.masker.mask_text(payload)
        if not counts:
            return event
        for k, n in counts.items():
            _add(self.counts, k, n)
        others = [ln for ln in lines if not ln.startswith(b"data:")]
        return b"\n".join(others + [b"data: " + m for m in masked.split(b"\n")])

    def take_counts(self) -> dict:
        c, self.counts = self.counts, {}
        return c


def _event_end(buf: bytes) -> tuple[int, int]:
    best, blen = -1, 0
    for sep in (b"\n\n", b"\r\n\r\n", b"\r\r"):
        i = buf.find(sep)
        if i >= 0 and (best < 0 or i < best):
            best, blen = i, len(sep)
    return best, blen


class Decoder:
    """Undoes a Content-Encoding (gzip, deflate) with an output limit."""

    def __init__(self, encoding: str, limit: int):
        enc = encoding.strip().lower()
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
    return (encoding or "identity").strip().lower() in ("identity", "gzip", "x-gzip", "deflate")
