"""Masking detectors: values that must never reach the caller.

Built in: ``email``, ``credit_card`` (13-19 digits passing the Luhn check),
``us_ssn``; custom: ``regex:PATTERN``. Protocols apply them to text values
and record each redaction (which detector, how many) but never the value.
"""
from __future__ import annotations

from collections.abc import Callable
import os
import re

import attrs

MASK = "[REDACTED]"

# An address starts where a run of local-part characters starts ("@" is not one of them), and the run
# is taken whole and never given back (possessive): each run is read once. A plain "[...]+@" retries
# from every character of a long run that is no address: quadratic (a 1 MB value held a thread for
# minutes), and twice as slow on ordinary JSON. Same matches (checked against it in the tests).
_LOCAL = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]"
_EMAIL = re.compile(rf"(?<!{_LOCAL}){_LOCAL}++@[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?)+")
# The same matches found from each "@" (a literal: the engine scans for it in a tight loop) rather than by
# trying the pattern at every character (10 ns a character, most of a masked JSON body's cost): the domain
# matched forward from the "@", the local part is the run of local-part characters before it (read from
# the reversed text, once per "@"). A run that began inside the previous match is no match (the plain
# scan resumed after that match, where the look-behind refuses the rest of the run).
_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
_AT_DOMAIN = re.compile("@" + _DOMAIN)
_LOCAL_RUN = re.compile(_LOCAL + "*+")


def _email_spans(text: str) -> list:
    """The spans of every _EMAIL match in the text, as ``_EMAIL.finditer`` finds them."""
    spans: list = []
    if "@" not in text:
        return spans
    rev, n, last = text[::-1], len(text), 0
    run = _LOCAL_RUN.match
    for m in _AT_DOMAIN.finditer(text):
        at = n - m.start()  # the "@"'s end in the reversed text: the local part's run starts there
        r = run(rev, at)
        assert r is not None  # a run of '*' matches, empty at worst
        start = n - r.end()
        if start < last or start == n - at:
            continue  # inside the previous match, or no local part
        last = m.end()
        spans.append((start, last))
    return spans


def _replace(text: str, spans) -> str:
    out: list = []
    pos = 0
    for s, e in spans:
        out += (text[pos:s], MASK)
        pos = e
    out.append(text[pos:])
    return "".join(out)


# Digits with optional single space or dash separators, not inside a longer number.
_CARD = re.compile(r"(?<![0-9])(?:[0-9][ -]?){12,18}[0-9](?![0-9])")
_SSN = re.compile(r"(?<![0-9])(?!000|666|9[0-9]{2})[0-9]{3}-(?!00)[0-9]{2}-(?!0000)[0-9]{4}(?![0-9])")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Other spellings of a character that a body's reader turns back into it: percent-encoding (a
# URL, a form), a backslash escape (JavaScript, C, Python), an HTML/XML character reference; and
# characters a reader does not see or reads as their ASCII twin (zero-width, soft hyphen, word
# joiner, bidi controls and isolates, variation selectors, tag characters, combining grapheme joiner,
# byte order mark; fullwidth forms, small commercial at, Unicode dashes, ideographic full stops).
_SPELLED = re.compile(
    r"%([0-9A-Fa-f]{2})|\\x([0-9A-Fa-f]{2})|\\u\{([0-9A-Fa-f]{1,6})\}|\\u([0-9A-Fa-f]{4})|\\([0-7]{3})"
    r"|&#[xX]([0-9A-Fa-f]{1,6});?|&#([0-9]{1,7});?|&(commat|period|hyphen|dash|minus|lowbar|plus|num);"
    "|([\u00ad\u034f\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufe00-\ufe0f\ufeff\U000e0000-\U000e007f])"
    "|([\uff01-\uff5e\ufe6b\u2010-\u2015\u2212\u3002\uff61\ufe52])")
# Where a spelling may start: one character class, which the regex engine scans fast.
_SPELL_START = re.compile("[%\\\\&\u00ad\u034f\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufe00-\ufe0f"
                          "\ufeff\U000e0000-\U000e007f\uff01-\uff5e\ufe6b\u2010-\u2015\u2212\u3002\uff61\ufe52]")
_NAMED = {"commat": "@", "period": ".", "hyphen": "-", "dash": "-", "minus": "-", "lowbar": "_", "plus": "+",
          "num": "#"}
_BASES = (16, 16, 16, 16, 8, 16, 10)


def _spelled_char(m) -> str | None:
    """The character a spelling stands for; "" for one a reader does not see; None: not one."""
    g = m.lastindex
    if g <= 7:
        n = int(m.group(g), _BASES[g - 1])
        return chr(n) if n <= 0x10FFFF and not 0xD800 <= n <= 0xDFFF else None
    if g == 8:
        return _NAMED[m.group(8)]
    if g == 9:
        return ""
    c = ord(m.group(10))
    if 0xFF01 <= c <= 0xFF5E:
        return chr(c - 0xFEE0)
    return "@" if c == 0xFE6B else "." if c in (0x3002, 0xFF61, 0xFE52) else "-"


def may_be_spelled(text: str) -> bool:
    return "%" in text or "\\" in text or "&" in text or not text.isascii()


def _spelled_view(text: str):
    """(decoded text, segments) with every spelling above read as its character, or None when
    there is none. A segment: (decoded start, decoded end, original start, original end, plain)."""
    out, segs, pos, d = [], [], 0, 0
    match = _SPELLED.match
    for c in _SPELL_START.finditer(text):
        if c.start() < pos:
            continue
        m = match(text, c.start())
        if m is None:
            continue
        ch = _spelled_char(m)
        if ch is None:
            continue
        s, e = m.span()
        if s > pos:
            out.append(text[pos:s])
            segs.append((d, d + s - pos, pos, s, True))
            d += s - pos
        if ch:
            out.append(ch)
            segs.append((d, d + 1, s, e, False))
            d += 1
        else:
            segs.append((d, d, s, e, False))  # invisible: joined to what follows
        pos = e
    if not segs:
        return None
    out.append(text[pos:])
    segs.append((d, d + len(text) - pos, pos, len(text), True))
    return "".join(out), segs


def _original_span(segs, starts, a: int, b: int) -> tuple[int, int]:
    """The original text's span of the decoded span [a, b) (invisible characters inside it included)."""
    import bisect

    i = bisect.bisect_right(starts, a) - 1
    while segs[i][1] <= a and segs[i][0] != segs[i][1] and i + 1 < len(segs):
        i += 1
    ds, de, os_, oe, plain = segs[i]
    start = os_ + (a - ds) if plain else os_
    j = bisect.bisect_right(starts, b - 1) - 1
    while segs[j][1] <= b - 1 and j + 1 < len(segs):
        j += 1
    ds, de, os2, oe2, plain = segs[j]
    end = os2 + (b - ds) if plain else oe2
    return start, end


@attrs.frozen
class Detector:
    name: str  # what the redaction event says: "email", "credit_card", "regex:..."
    pattern: re.Pattern = attrs.field(repr=False)
    check: Callable[[str], bool] | None = attrs.field(default=None, repr=False)  # extra test of a match
    # the spans of the pattern's matches in a text, found faster than by the pattern itself (the same spans)
    spans: Callable[[str], list] | None = attrs.field(default=None, repr=False, eq=False)
    # text -> (text with those spans masked, how many): the spans and their replacement in one call (C)
    replace: Callable[[str], tuple[str, int]] | None = attrs.field(default=None, repr=False, eq=False)

    def redact(self, text: str) -> tuple[str, int]:
        """The text with every match replaced, and how many were replaced; a value spelled
        otherwise for its reader (``ada%40example.com``, ``ada\\u0040...``, ``ada&#64;...``, a
        zero-width space inside it) is found as its reader reads it."""
        if may_be_spelled(text):
            done = self._redact_spelled(text)
            if done is not None:
                return done
        return self._redact(text)

    def _redact(self, text: str) -> tuple[str, int]:
        if self.replace is not None:
            return self.replace(text)
        if self.spans is not None:
            spans = self.spans(text)
            return (_replace(text, spans), len(spans)) if spans else (text, 0)
        if self.check is None:
            return self.pattern.subn(MASK, text)
        count = 0

        def sub(m):
            nonlocal count
            if self.check(m.group(0)):
                count += 1
                return MASK
            return m.group(0)

        return self.pattern.sub(sub, text), count

    def _redact_spelled(self, text: str):
        """Matches in the text as its reader reads it, masked in the text as written (a match
        is looked for only there: a plain pass first could mask a part of a spelled value)."""
        view = _spelled_view(text)
        if view is None:
            return None
        decoded, segs = view
        starts = [sg[0] for sg in segs]
        spans = []
        if self.spans is not None:
            spans = [_original_span(segs, starts, a, b) for a, b in self.spans(decoded)]
        for m in self.pattern.finditer(decoded) if self.spans is None else ():
            if self.check is not None and not self.check(m.group(0)):
                continue
            spans.append(_original_span(segs, starts, *m.span()))
        if not spans:
            return text, 0
        out: list[str] = []
        last = 0
        for s, e in spans:
            if s >= last:
                out += (text[last:s], MASK)
                last = e
        return "".join(out) + text[last:], len(spans)


def _card_check(s: str) -> bool:
    digits = s.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _load_c():
    """hoopy/http/_jsonmask.c's (email_spans, email_redact), or None: not built, turned off
    (HOOPY_JSONMASK=python), or written for other regexes than these."""
    if os.environ.get("HOOPY_JSONMASK") == "python":
        return None
    try:
        from hoopy.http import _jsonmask
    except ImportError:
        return None
    if (_jsonmask.DOMAIN, _jsonmask.LOCAL) != (_DOMAIN, _LOCAL):
        return None
    redact = _jsonmask.email_redact
    return _jsonmask.email_spans, lambda text: redact(text, MASK)


# The C twins of _email_spans and of _replace over its spans (tests/test_http_jsonmask_c.py holds
# them to the Python code, which stays the reference and the fallback).
_email_c = _load_c()
email_spans_c, email_replace_c = _email_c if _email_c is not None else (None, None)

BUILTIN = {
    "email": Detector("email", _EMAIL, spans=email_spans_c or _email_spans, replace=email_replace_c),
    "credit_card": Detector("credit_card", _CARD, _card_check),
    "us_ssn": Detector("us_ssn", _SSN),
}


def parse_detector(text: str) -> Detector:
    if text in BUILTIN:
        return BUILTIN[text]
    if text.startswith("regex:"):
        try:
            pattern = re.compile(text[6:])
        except re.error as e:
            raise ValueError(f"bad regular expression: {e}")
        if pattern.match(""):
            raise ValueError("the regular expression matches the empty string")
        return Detector(text, pattern)
    raise ValueError(f"unknown pattern {text!r} (email, credit_card, us_ssn or regex:PATTERN)")


def redact_text(text: str, detectors) -> tuple[str, dict]:
    """Apply every detector; return the text and {detector name: count}."""
    counts: dict = {}
    for d in detectors:
        text, n = d.redact(text)
        if n:
            counts[d.name] = counts.get(d.name, 0) + n
    return text, counts
