"""Masking of an exec's output stream, line by line (sans-IO).

Detectors work on text and a value can straddle two SSH packets, so output
is passed on by whole lines; a partial line is held back until its end
arrives, the channel ends, or it grows past ``max_hold`` (then it is masked
and sent as it is). Bytes that are not UTF-8 pass through unchanged
(surrogateescape), so binary output survives where nothing matches.
"""
from __future__ import annotations

from hoopy.policy.masking import redact_text


class LineMasker:
    def __init__(self, detectors, max_hold: int = 64 * 1024):
        self.detectors = tuple(detectors)
        self.max_hold = max_hold
        self.counts: dict[str, int] = {}
        self._held = b""

    def feed(self, data: bytes) -> bytes:
        buf = self._held + data
        cut = buf.rfind(b"\n") + 1
        if cut == 0 and len(buf) < self.max_hold:
            self._held = buf
            return b""
        if cut == 0:
            cut = len(buf)
        self._held = buf[cut:]
        return self._mask(buf[:cut])

    def flush(self) -> bytes:
        rest, self._held = self._held, b""
        return self._mask(rest) if rest else b""

    def _mask(self, data: bytes) -> bytes:
        text = data.decode("utf-8", "surrogateescape")
        masked, counts = redact_text(text, self.detectors)
        if not counts:
            return data
        for name, n in counts.items():
            self.counts[name] = self.counts.get(name, 0) + n
        return masked.encode("utf-8", "surrogateescape")
