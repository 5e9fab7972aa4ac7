"""Showing untrusted text: what a caller sent must never act on the terminal that shows it.

Operation text, attribution (``HOOPY_MODEL``), a reviewer's reason, peer names: all
come from someone else. Printed raw, an escape sequence redraws the screen (a fake
session row attributed to someone else), a newline starts a fake line, a bidirectional
override reorders what is read, a zero-width character hides a difference. Every
command shows such text through ``escape``: C0 and C1 controls, DEL, bidirectional
controls, and every other invisible format character (Unicode categories Cc, Cf, Zl,
Zp, unpaired surrogates, and the invisible Hangul fillers) become ``\\xNN``,
``\\uNNNN`` or ``\\UNNNNNNNN``. JSON output goes through ``escape_json`` as well, so a
tool that prints a field (``jq -r``) is as safe as the table.
"""
from __future__ import annotations

import re
import unicodedata

# Candidates: everything outside printable ASCII (a fast scan); each is then judged by its category.
_CANDIDATE = re.compile("[^\x20-\x7e]")
_CANDIDATE_KEEP_LINES = re.compile("[^\x20-\x7e\n\t]")
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_INVISIBLE = frozenset({0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800, 0x180E})  # fillers, blank, old MVS


def _code(c: str) -> str:
    n = ord(c)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def _one(m) -> str:
    c = m.group()
    if ord(c) < 0xA0 or ord(c) in _INVISIBLE or unicodedata.category(c) in _UNSAFE_CATEGORIES:
        return _code(c)
    return c


def escape(text, keep_newlines: bool = False) -> str:
    """``text`` with every control and invisible format character escaped.
    ``keep_newlines`` keeps line feeds and tabs (a multi-line text shown indented)."""
    if text is None:
        return ""
    if not isinstance(text, str):
        text = str(text)
    pattern = _CANDIDATE_KEEP_LINES if keep_newlines else _CANDIDATE
    return pattern.sub(_one, text) if pattern.search(text) else text


def escape_json(value):
    """Every string in a JSON-able value (keys too) escaped."""
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, dict):
        return {escape(k) if isinstance(k, str) else k: escape_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [escape_json(v) for v in value]
    return value
