"""Operations, units and rules: the shapes the policy judges, for every protocol.

Each protocol's rule words live in its own package (``hoopy.<protocol>.rules``),
found through ``hoopy.protocols``; the policy knows none of them.

An operation is made of one or more *units* (a postgres statement touching
two tables is two units); every unit must be covered on its own, so a rule
for one thing never carries another.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable

import attrs

from hoopy.audit.chain import canonical_json


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


# slots=False (as hoopy.audit.events.Event): attrs then fills a frozen instance's __dict__ directly,
# where a slotted frozen class calls object.__setattr__ once a field (one Operation a statement).
@attrs.frozen(slots=False)
class Operation:
    protocol: str
    kind: str  # statement | exec | shell | sftp | forward | request | ...
    text: str  # what a person reads: the SQL, the command line, "GET /path"
    units: tuple  # of Unit
    detail: dict = attrs.field(factory=dict, eq=False)  # recorded with the event
    # What makes two operations "the same" for a one-time approval (retry mode): the
    # protocol sets it where it knows better than the default (see ``canonical_form``),
    # with ``Operation.canonical_of(...)``.
    # (Or a function giving it: only an approval asks for it, and most operations need none.)
    canonical: str | Callable[[], str] | None = attrs.field(default=None, eq=False, kw_only=True)

    @classmethod
    def single(cls, protocol: str, kind: str, text: str, subject: str | None = None, *,
               canonical: str | None = None, **detail):
        return cls(protocol, kind, text, (Unit(kind, subject),), detail, canonical=canonical)

    @staticmethod
    def canonical_of(*parts) -> str:
        """A canonical form from exact parts (str, int, None, lists; bytes as hex)."""
        return canonical_json([p.hex() if isinstance(p, (bytes, bytearray)) else p for p in parts])

    def canonical_form(self) -> str:
        """The form an approval is bound to. By default everything the policy judged and the
        event records: text, units and detail. That is sound only where text and detail are
        not shortened: a protocol that shortens them (long SQL, large parameters) sets
        ``canonical`` from the full values."""
        if self.canonical is not None:
            exact = self.canonical if isinstance(self.canonical, str) else self.canonical()
            return canonical_json([self.protocol, self.kind, exact])
        # (Not ``caused_by``: which tool call sent it does not make it another operation, and an
        # agent's retry comes from a new call.)
        detail = {k: v for k, v in self.detail.items() if k != "caused_by"}
        return canonical_json([self.protocol, self.kind, self.text, [str(u) for u in self.units], detail])

    def canonical_key(self) -> str:
        """SHA-256 (hex) of ``canonical_form``: what the approvals table keeps and compares."""
        return hashlib.sha256(self.canonical_form().encode("utf-8", "surrogatepass")).hexdigest()


@attrs.frozen
class Rule:
    protocol: str
    text: str
    _match: Callable[[Unit], bool] = attrs.field(repr=False, eq=False)

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
