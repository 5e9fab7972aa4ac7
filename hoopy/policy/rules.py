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
    # Why no rule can judge this unit unless it names it exactly (a word the shell would still
    # expand): when nothing matches, the unit is unjudgeable, not merely ungranted.
    unjudgeable: str | None = None
    # What the protocol's rules match when it is not the subject (ssh: the encoded words).
    key: str | None = attrs.field(default=None, repr=False)

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

    def denies(self, unit: Unit) -> bool:
        """As a deny rule: a protocol may match more widely there (ssh: any expansion of ``$X``)."""
        return getattr(self._match, "deny", self._match)(unit)

    def permits(self, unit: Unit) -> bool:
        """From an allow or approve list, does this rule let the unit through although it does not
        match it (ssh: ``sftp read GLOB`` opens the SFTP subsystem, whose operations are judged
        one by one)?"""
        p = getattr(self._match, "permits", None)
        return bool(p and p(unit))

    def __str__(self) -> str:
        return self.text
