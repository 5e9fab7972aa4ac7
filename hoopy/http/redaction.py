"""What every body masker shares: the error that refuses a body, the redaction counts, and the
checks that a body is text the maskers can read. A module of its own so the format readers
(formats.py) and the body maskers (bodies.py) need not import the masker that calls them."""
from __future__ import annotations

import codecs


class MaskError(Exception):
    """The body must be masked but cannot be (too large, not readable): refuse it."""


def add_count(counts: dict, key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


def merge_counts(counts: dict, more: dict) -> None:
    for k, n in more.items():
        counts[k] = counts.get(k, 0) + n


_BOMS = (codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def check_ascii_compatible(data: bytes) -> None:
    """UTF-16/32 (a BOM or NUL bytes) hide every ASCII match from the masker: refused, not passed."""
    if data.startswith(_BOMS) or b"\x00" in data:
        raise MaskError("the body is not UTF-8 (UTF-16/32 or binary), so it cannot be masked")


def looks_like_json(head: bytes) -> bool:
    """Whether a body's first bytes look like JSON (or a BOM / UTF-16 form of it)."""
    for bom in (codecs.BOM_UTF8,) + _BOMS:
        if head.startswith(bom):
            return True if bom != codecs.BOM_UTF8 else looks_like_json(head[len(bom):])
    stripped = head.replace(b"\x00", b"").lstrip(b" \t\r\n\x1e")  # RS: JSON text sequences (RFC 7464)
    return stripped[:1] in (b"{", b"[", b'"')
