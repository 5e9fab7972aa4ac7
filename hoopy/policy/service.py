"""The one policy service every protocol calls.

``judge`` is pure: deny by default; for every unit of an operation a
matching deny rule wins, then approve, then allow; expired grants do not
exist. ``decide`` adds the record: it writes the event (durable) before it
answers, so a protocol that forwards on Allow has always recorded first,
and a store that cannot write turns every answer into a refusal.
"""
from __future__ import annotations

from datetime import datetime, timezone

import attrs

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from hoopy.audit.store import StoreError
from hoopy.policy.approvals import ApprovalService, _describe
from hoopy.policy.verdicts import Allow, Deny, Hold, Judgement

log = Logger()

STORE_DOWN = "refused: the audit store cannot record this operation"

__all__ = ["Allow", "Deny", "Hold", "Judgement", "PolicyService", "STORE_DOWN"]


class PolicyService:
    def __init__(self, config, store, approvals: ApprovalService, metrics=None, now=None):
        self.store = store
        self.approvals = approvals
        self.metrics = metrics
        self._now = now or (lambda: datetime.now(timezone.utc))
        self.timeouts = {name: c.approval_timeout for name, c in config.connections.items()}
        self.default_timeout = config.gateway.approval_timeout
        self._grants: dict[tuple[str, str], list] = {}
        for g in config.grants:
            self._grants.setdefault((g.identity, g.connection), []).append(g)

    def judge(self, identity: str, connection: str, operation) -> Judgement:
        now = self._now()
        grants = [g for g in self._grants.get((identity, connection), ()) if not g.expired(now)]
        judged = [(unit, _judge_unit(grants, unit)) for unit in operation.units]
        parts = ()
        if len(judged) > 1:
            # Every part with its own answer: what a reviewer and an auditor read.
            parts = tuple({"unit": str(u), "outcome": j.outcome, "rule": j.rule,
                           **({"reason": j.reason} if j.outcome != "allow" else {})} for u, j in judged)
        worst = None
        for unit, j in judged:
            if j.outcome == "deny":
                return Judgement("deny", j.rule, f"{j.reason} (for {identity} on {connection})", parts)
            if worst is None or (j.outcome == "approve" and worst.outcome == "allow"):
                worst = j
        if worst is None:  # an operation with no units is not an operation anyone granted
            return Judgement("deny", None, f"nothing to judge in {operation.text!r}")
        return Judgement(worst.outcome, worst.rule, worst.reason, parts)

    def decide(self, session, operation) -> Deferred:
        """Fires with Allow, Deny or Hold once the event saying so is durable."""
        j = self.judge(session.identity, session.connection, operation)
        if j.parts:
            # The event (and a reviewer's approval) lists every part with the rule that judged it.
            operation = attrs.evolve(operation, detail={**operation.detail, "parts": list(j.parts)})
        self._count(session, {"allow": "allowed", "approve": "held", "deny": "refused"}[j.outcome])
        if j.outcome == "deny":
            log.info("refused {identity} on {connection}: {text!r}: {reason!r}", identity=session.identity,
                     connection=session.connection, text=operation.text[:200], reason=j.reason)
            deny = Deny(j.reason, j.rule)
            d = session.event("operation", "refused", rule=j.rule, reason=j.reason, **_describe(operation))
            return d.addBoth(lambda _: deny)
        if j.outcome == "allow":
            d = session.event("operation", "allowed", rule=j.rule, **_describe(operation))
            return d.addCallbacks(lambda _: Allow(j.rule), self._store_down, errbackArgs=(session,))
        timeout = self.timeouts.get(session.connection, self.default_timeout)
        d = self.approvals.request(session, operation, j.rule, timeout)
        return d.addCallbacks(self._held, self._store_down, callbackArgs=(j.reason,), errbackArgs=(session,))

    def _held(self, approval, reason="") -> Hold:
        log.info("held {identity} on {connection}: {text!r} as approval {id}", identity=approval.requester,
                 connection=approval.session.connection, text=approval.operation.text[:200], id=approval.id)
        def resolved(a):
            if a.state == "approved":
                return Allow(a.rule, a.id)
            why = {"denied": f"denied by {a.reviewer}", "expired": "approval timed out"}.get(a.state, a.state)
            if a.reason and a.state == "denied":
                why += f": {a.reason}"
            return Deny(f"approval {a.id} {why}", a.rule, a.id)

        return Hold(approval, approval.outcome.addCallback(resolved), reason)

    def _store_down(self, failure, session):
        failure.trap(StoreError)
        log.error("session {id}: {e}", id=session.id, e=failure.getErrorMessage())
        return Deny(STORE_DOWN)

    def _count(self, session, outcome):
        if self.metrics:
            self.metrics.operations.labels(session.protocol, session.connection, outcome).inc()


UNJUDGEABLE_RULE = 'unjudgeable = "approve"'


def _judge_unit(grants, unit) -> Judgement:
    if unit.kind == "refused":  # the protocol already knows: the subject says why
        return Judgement("deny", None, f"refused: {unit.subject}")
    if unit.kind == "unjudgeable":
        return _unjudgeable(grants, unit.subject)
    allow = approve = None
    for g in grants:
        for r in g.deny:
            if r.denies(unit):
                return Judgement("deny", r.text, f"{unit} is denied by rule {r.text!r}")
        if approve is None:
            approve = next((r for r in g.approve if r.matches(unit)), None)
        if allow is None:
            allow = next((r for r in g.allow if r.matches(unit)), None)
    if approve is not None:
        return Judgement("approve", approve.text, f"{unit} needs approval (rule {approve.text!r})")
    if allow is not None:
        return Judgement("allow", allow.text, f"allowed by rule {allow.text!r}")
    if unit.unjudgeable:
        return _unjudgeable(grants, f"{unit}: {unit.unjudgeable}")
    for g in grants:
        r = next((r for r in g.allow + g.approve if r.permits(unit)), None)
        if r is not None:
            return Judgement("allow", r.text, f"allowed by rule {r.text!r}")
    return Judgement("deny", None, f"no grant allows {unit}")


def _unjudgeable(grants, what: str) -> Judgement:
    """A part that cannot be judged before it runs: refused, or held where a grant says so."""
    if any(getattr(g, "unjudgeable", "deny") == "approve" for g in grants):
        return Judgement("approve", UNJUDGEABLE_RULE, f"cannot judge {what}: needs approval")
    return Judgement("deny", None, f"cannot judge {what}")
