"""What the judgement of a line hands back: its parts, each judged by the rules on its own, and the
error that makes one part unjudgeable."""
from __future__ import annotations

import attrs

from hoopy.policy.rules import Unit


class Unjudgeable(Exception):
    """One part of the line cannot be judged: the message says which and why."""


@attrs.frozen
class Part:
    """One thing the line does that rules judge.

    kind: ``exec`` (a simple command), ``write`` / ``read`` (a file by path), ``unjudgeable``
    (text says what could not be judged), ``refused`` (text says why).
    """

    kind: str
    text: str  # what a person reads: the command after quote removal, the path, the reason
    key: str | None = None  # exec: the encoded words the rules match
    unresolved: str | None = None  # exec: why no rule can judge it unless it spells a word exactly

    def unit(self):
        if self.kind in ("unjudgeable", "refused"):
            return Unit(self.kind, self.text)
        return Unit(self.kind, self.text, unjudgeable=self.unresolved, key=self.key)


@attrs.frozen
class Analysis:
    parts: tuple  # of Part, in the order the line has them
    heredocs: tuple = ()  # of dict: bytes, sha256 (and the files the command writes)

    @property
    def units(self) -> tuple:
        return tuple(p.unit() for p in self.parts)


def _clip(s: str, n: int = 120) -> str:
    s = s.replace("\n", "\\n")
    return s if len(s) <= n else s[:n - 3] + "..."
