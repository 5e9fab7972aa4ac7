"""Masking of a channel's output stream with no seam at any cut (sans-IO).

A value can arrive in any number of pieces: split across SSH packets, across
the gateway's own flushes, dripped one byte a second, with terminal escape
sequences between its characters. The masker passes on at once everything
that cannot be part of a value, and holds back only what still could be:

- a match that is not finished (``alice@exa`` at the end of what arrived),
  and a finished match that more text could still extend (``alice@example.com``
  may go on as ``.au``; a card number may get more digits): the ``regex``
  module's partial matching says which (a pattern followed by ``(?!)`` can
  never complete, so a partial match of it means some way through the
  pattern reaches the end of the text);
- an unfinished escape sequence or UTF-8 character at the end.

Everything before the first such place is final: no later byte can change
whether or where it matches (the scan restarts there, with the text before
it as context for look-behinds), so it is masked and sent. Held text waits
for more output or the end of the stream. So a prompt (``$ ``, ``Password: ``)
shows at once; a word being typed, or a number, shows when it ends.

Bounded: at most ``max_hold`` characters are held; past that the oldest go out
(masked where they match). Only a single value longer than that (no address,
card or SSN is) could be cut.

Terminal output is matched as it is shown: escape sequences (colours, cursor
moves, titles) are taken out of the text the detectors see and kept in the
output, so ``ali\\e[1mce@example.com`` is masked as ``alice@example.com``.
A full-screen program that draws a value in pieces at cursor positions out
of order is a known limit. Bytes that are not UTF-8 pass through unchanged
(surrogateescape).
"""
from __future__ import annotations

import codecs
import functools
import re

import regex

from hoopy.policy.masking import MASK

# Text already sent, kept as context for look-behinds (``(?<![0-9])``).
CONTEXT = 256
# An escape sequence left unfinished longer than this is not one: it is text.
MAX_ESCAPE = 4096
# How long the check of whether a match is still open may take; past it, it is taken to be (held).
CHECK_TIMEOUT = 0.02

# Complete escape sequences: CSI (7- and 8-bit), OSC and DCS/SOS/PM/APC strings, two-character ESC x.
_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x9b[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[PX^_][^\x1b]*\x1b\\"
    r"|\x1b[ -/]*[0-~]")
# An escape sequence still being received, at the end of the text.
_UNFINISHED = re.compile(
    r"(?:\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*\x1b?|[PX^_][^\x1b]*\x1b?|[ -/]*)?|\x9b[0-?]*[ -/]*)\Z")
_INTRODUCERS = ("\x1b", "\x9b")
# Sequences that move the cursor: what follows is drawn elsewhere, so it does not continue the
# text before (in the text the detectors see they stand as a line break). Colours, erasing and
# titles leave the cursor where it was: they vanish from that text.
_MOVES = re.compile(r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[A-HIdfe`a]\Z|\x1b[78DEMc]\Z")


# What a match of each built-in detector can consume (its look-arounds aside). A match still
# open at the end of the text lies in the trailing run of these characters, so only that run
# needs the (slower) partial matching. tests/test_ssh_masking.py checks these against the patterns.
ALPHABETS = {
    "email": r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~@-]",
    "credit_card": r"[0-9 -]",
    "us_ssn": r"[0-9-]",
}


class _Compiled:
    """One detector, compiled for streaming."""

    def __init__(self, detector):
        self.name = detector.name
        self.check = detector.check
        flags = detector.pattern.flags & (re.I | re.M | re.S | re.X | re.A)
        source = detector.pattern.pattern
        self.pattern = regex.compile(source, flags)
        # Never completes: a partial match of it means a way through the pattern reaches the end.
        self.goes_on = regex.compile(f"(?:{source})(?!)", flags)
        alphabet = ALPHABETS.get(detector.name)
        self.tail = regex.compile(f"(?r){alphabet}*\\Z") if alphabet else None

    def tail_start(self, text: str, base: int, limit: int) -> int:
        """Where a match still open at the end of text could start, at the earliest."""
        if self.tail is None:
            return max(base, limit)  # a custom pattern: anywhere in what may be held
        return max(base, self.tail.search(text, base).start())

    def open_at_end(self, text: str, start: int) -> int | None:
        """The start of the first match from ``start`` that more text could still change."""
        try:
            for m in self.pattern.finditer(text, start, partial=True, timeout=CHECK_TIMEOUT):
                if m.partial:
                    return m.start() if m.start() < len(text) else None
                if m.end() > m.start() and self.goes_on.match(text, m.start(), partial=True,
                                                              timeout=CHECK_TIMEOUT) is not None:
                    return m.start()  # finished, but more text could make it longer
        except TimeoutError:
            return start  # cannot tell in time: hold it all (max_hold bounds what that costs)
        return None


@functools.lru_cache(maxsize=64)
def compile_detectors(detectors: tuple) -> tuple:
    """Detectors compiled for streaming (once per set); ValueError names one that cannot be."""
    out = []
    for d in detectors:
        try:
            out.append(_Compiled(d))
        except regex.error as e:
            raise ValueError(f"masking pattern {d.name!r} cannot be streamed: {e}") from None
    return tuple(out)


def _project(raw: str, end: int) -> tuple[str, list[int] | None]:
    """(the text a terminal shows of raw[:end], raw index of each of its characters)."""
    if not any(c in raw for c in _INTRODUCERS):
        return raw[:end], None  # the common case: every character is shown
    shown: list[str] = []
    index: list[int] = []
    pos = 0
    for m in _ESCAPE.finditer(raw, 0, end):
        shown.append(raw[pos:m.start()])
        index.extend(range(pos, m.start()))
        if _MOVES.match(m.group(0)):
            shown.append("\n")
            index.append(m.start())
        pos = m.end()
    shown.append(raw[pos:end])
    index.extend(range(pos, end))
    return "".join(shown), index


class StreamMasker:
    """Masks one output stream (stdout or stderr of one channel)."""

    def __init__(self, detectors, max_hold: int = 64 * 1024):
        detectors = tuple(detectors)
        self.detectors = detectors if all(isinstance(d, _Compiled) for d in detectors) \
            else compile_detectors(detectors)
        self.max_hold = max_hold
        self.counts: dict[str, int] = {}
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._raw = ""  # received, not yet sent
        self._context = ""  # the end of what was shown, for look-behinds

    @property
    def held(self) -> int:
        """Characters waiting (for tests and the channel's flush)."""
        return len(self._raw)

    def feed(self, data: bytes) -> bytes:
        self._raw += self._decoder.decode(data)
        return self._emit(final=False)

    def flush(self) -> bytes:
        """The stream ended: everything left, masked."""
        self._raw += self._decoder.decode(b"", final=True)
        return self._emit(final=True)

    # ---------------------------------------------------------------------------------

    def _emit(self, final: bool) -> bytes:
        raw = self._raw
        if not raw:
            return b""
        end = len(raw)
        if not final:
            unfinished = _UNFINISHED.search(raw, max(0, end - MAX_ESCAPE))
            if unfinished is not None and unfinished.start() < end:
                end = unfinished.start()
        shown, index = _project(raw, end)
        base = len(self._context)
        text = self._context + shown
        cut, spans = self._judge(text, base, final)
        raw_cut = end if cut - base >= len(shown) else (cut - base if index is None else index[cut - base])
        out = self._masked(raw, raw_cut, spans, base, index)
        self._raw = raw[raw_cut:]
        self._context = text[max(0, cut - CONTEXT):cut]
        return out.encode("utf-8", "surrogateescape")

    def _judge(self, text: str, base: int, final: bool):
        """(where the final part of text ends, the spans in it to mask)."""
        matches: list = []  # (start, end, detector): every finished match from base
        cut = len(text)
        for d in self.detectors:
            matches.extend((m.start(), m.end(), d) for m in d.pattern.finditer(text, base) if m.end() > m.start())
            if not final:
                start = d.open_at_end(text, d.tail_start(text, base, len(text) - self.max_hold))
                if start is not None:
                    cut = min(cut, start)
        forced = not final and len(text) - cut > self.max_hold
        if forced:
            cut = len(text) - self.max_hold  # bounded: the oldest goes, masked where it matches
        moved = True
        while moved:  # never cut through a match: hold from its start (or, forced, send it whole)
            moved = False
            for s, e, _ in matches:
                if s < cut < e:
                    cut = e if forced else s
                    moved = True
        spans = [(s, e, d.name) for s, e, d in matches
                 if e <= cut and (d.check is None or d.check(text[s:e]))]
        return cut, spans

    def _masked(self, raw: str, raw_cut: int, spans, base: int, index) -> str:
        if not spans:
            return raw[:raw_cut]
        spans.sort()
        merged: list = []  # overlapping matches of different detectors are one masked value
        for s, e, name in spans:
            self.counts[name] = self.counts.get(name, 0) + 1
            if merged and s < merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        out, pos = [], 0
        for s, e in merged:
            rs, re_ = (s - base, e - base) if index is None else (index[s - base], index[e - 1 - base] + 1)
            out.append(raw[pos:rs])
            out.append(MASK)
            if index is not None:  # the terminal's state changes inside the value still happen
                out.extend(m.group(0) for m in _ESCAPE.finditer(raw, rs, re_))
            pos = re_
        out.append(raw[pos:raw_cut])
        return "".join(out)
