"""Operations, units and rules: the shapes the policy judges, for every protocol.

Each protocol's rule words live in its own package (``hoopy.<protocol>.rules``),
found through ``hoopy.protocols``; the policy knows none of them.

An operation is made of one or more *units* (a postgres statement touching
two tables is two units); every unit must be covered on its own, so a rule
for one thing never carries another.
"""
from __future__ import annotations

import attrs


class RuleError(ValueError):
    pass


@attrs.frozen
class Unit:
    """One thing a rule must cover: (kind, subject).

    postgres: kind is a class, subject "schema.table" or None (no table);
    ssh: kind exec/shell/sftp/forward, subject the command line or HOST:PORT;
    http: kind the method, subject the normalized path.
    """

    kind: str
    subject: str | None = None

    def __str__(self) -> str:
        return self.kind if self.subject is None else f"{self.kind} {self.subject}"


@attrs.frozen
class Operation:
    protocol: str
    kind: str  # statement | exec | shell | sftp | forward | request | ...
    text: str  # what a person reads: the SQL, the command line, "GET /path"
    units: tuple  # of Unit
    detail: dict = attrs.field(factory=dict, eq=False)  # recorded with the event

    @classmethod
    def single(cls, protocol: str, kind: str, text: str, subject: str | None = None, **detail):
        return cls(protocol, kind, text, (Unit(kind, subject),), detail)


@attrs.frozen
class Rule:
    protocol: str
    text: str
    _match: object = attrs.field(repr=False, eq=False)

    def matches(self, unit: Unit) -> bool:
        return self._match(unit)

    def __str__(self) -> str:
        return self.text
