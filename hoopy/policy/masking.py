"""Masking detectors: values that must never reach the caller.

Built in: ``email``, ``credit_card`` (13-19 digits passing the Luhn check),
``us_ssn``; custom: ``regex:PATTERN``. Protocols apply them to text values
and record each redaction (which detector, how many) but never the value.
"""
from __future__ import annotations

import re

import attrs

MASK = "[REDACTED]"

# An address starts where a run of local-part characters starts ("@" is not one of them), and the run
# is taken whole and never given back (possessive): each run is read once. A plain "[...]+@" retries
# from every character of a long run that is no address: quadratic (a 1 MB value held a thread for
# minutes), and twice as slow on ordinary JSON. Same matches (checked against it in the tests).
_LOCAL = r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]"
_EMAIL = re.compile(rf"(?<!{_LOCAL}){_LOCAL}++@[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?)+")
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


@attrs.frozen
class Detector:
    name: str  # what the redaction event says: "email", "credit_card", "regex:..."
    pattern: re.Pattern = attrs.field(repr=False)
    check: object = attrs.field(default=None, repr=False)  # extra test of a match

    def redact(self, text: str) -> tuple[str, int]:
        """The text with every match replaced, and how many were replaced."""
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


def _card_check(s: str) -> bool:
    digits = s.replace(" ", "").replace("-", "")
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


BUILTIN = {
    "email": Detector("email", _EMAIL),
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
