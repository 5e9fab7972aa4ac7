"""What the policy answers about an operation: the types every protocol reads.

``Allow`` and ``Deny`` are final; ``Hold`` carries the pending approval and a
Deferred that fires with Allow or Deny once a reviewer decides (or time runs out).
"""
from __future__ import annotations

from typing import Protocol

import attrs
from twisted.internet.defer import Deferred


class PendingApproval(Protocol):
    """What a protocol reads of a held approval (hoopy.policy.approvals.Approval)."""

    id: str
    rule: str  # named in PostgreSQL's notice of the hold


@attrs.frozen
class Allow:
    rule: str
    approval: str | None = None


@attrs.frozen
class Deny:
    reason: str
    rule: str | None = None
    approval: str | None = None
    # "pending" when refused in retry mode: the approval exists and waits for a reviewer;
    # the caller runs the identical operation again once it is approved.
    status: str | None = None
    detail: str | None = None  # what to do next, for protocols with a place for it (SQL's DETAIL)


@attrs.frozen
class Hold:
    """Held for a reviewer. ``approval.id`` is what the caller is shown;
    ``resolution`` fires with Allow or Deny once decided or timed out."""

    approval: PendingApproval
    resolution: Deferred = attrs.field(eq=False)
    reason: str = ""  # why it needs a reviewer (the rule, or the part that cannot be judged)

    @property
    def id(self) -> str:
        return self.approval.id


@attrs.frozen
class Judgement:
    """The pure answer: outcome allow | approve | deny, the rule, the reason; for
    approve, how (``approvals``: hold | retry) and how long an approval may be used
    (``approval_ttl``, seconds from the decision), from the grants that asked for it."""

    outcome: str
    rule: str | None
    reason: str
    # Each unit's own answer, when the operation has several: {"unit", "outcome", "rule"[, "reason"]}.
    parts: tuple = attrs.field(default=(), eq=False)
    approvals: str = "hold"
    approval_ttl: float | None = None
