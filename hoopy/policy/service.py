"""The one policy service every protocol calls.

``judge`` is pure: deny by default; for every unit of an operation a
matching deny rule wins, then approve, then allow; expired grants do not
exist. ``decide`` adds the record: it writes the event (durable) before it
answers, so a protocol that forwards on Allow has always recorded first,
and a store that cannot write turns every answer into a refusal.
"""
from __future__ import annotations

from datetime import datetime, timezone
from functools import partial

import attrs

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger

from hoopy.audit.store import StoreError
from hoopy.policy.approvals import ApprovalService, _describe
from hoopy.policy.rules import Unit
from hoopy.policy.verdicts import Allow, Deny, Hold, Judgement
from hoopy.units import format_duration

log = Logger()

STORE_DOWN = "refused: the audit store cannot record this operation"
MEMO_MAX = 1024  # judgements remembered per identity and connection
# Only small operations are remembered, so the memo stays small whatever callers send (at most
# about MEMO_MAX * MEMO_UNITS * 2 * MEMO_TEXT characters per identity and connection: ~8 MB).
MEMO_UNITS = 8
MEMO_TEXT = 512

__all__ = ["Allow", "Deny", "Hold", "Judgement", "PolicyService", "STORE_DOWN"]


class PolicyService:
    def __init__(self, config, store, approvals: ApprovalService, metrics=None, now=None):
        self.store = store
        self.approvals = approvals
        self.metrics = metrics
        self._now = now or partial(datetime.now, timezone.utc)  # (a partial: no Python frame a call)
        self.timeouts = {name: c.approval_timeout for name, c in config.connections.items()}
        self.default_timeout = config.gateway.approval_timeout
        self.connections = config.connections
        self.default_ttl = getattr(config.gateway, "approval_ttl", 900.0)
        self._grants: dict[tuple[str, str], list] = {}
        # (identity, connection) -> (valid from, valid until or None, {units: Judgement})
        self._memo: dict[tuple[str, str], tuple] = {}
        self._allows: dict[str, Allow] = {}
        self._counters: dict = {}  # (protocol, connection, outcome) -> metrics.operations' child (never dropped)
        for g in config.grants:
            self._grants.setdefault((g.identity, g.connection), []).append(g)

    def judge(self, identity: str, connection: str, operation) -> Judgement:
        now = self._now()
        units = operation.units
        if not units or len(units) > MEMO_UNITS:
            return self._judge(identity, connection, operation, now)
        # The same units judged again by the same grants get the same answer: remembered per
        # identity and connection while no grant of theirs expires (nor the clock goes back).
        key = (identity, connection)
        memo = self._memo.get(key)
        if memo is None or now < memo[0] or (memo[1] is not None and now >= memo[1]):
            ends = [g.expires for g in self._grants.get(key, ()) if g.expires is not None and g.expires > now]
            memo = self._memo[key] = (now, min(ends, default=None), {})
        known = memo[2]
        # Looked up before _memo_units is asked: only units it admits are ever stored, and units
        # equal to stored ones are of the same classes with the same fields (attrs' equality
        # compares the class first), so units it would refuse can never find an entry.
        j = known.get(units)
        if j is None:
            j = self._judge(identity, connection, operation, now)
            if not _memo_units(units):
                # Only a plain Unit is all its fields, each part of its hash: a subclass may carry
                # what rules read outside them (an MCP ToolUnit's arguments).
                return j
            if len(known) >= MEMO_MAX:
                known.clear()
            known[units] = j
        if j.parts:  # (a caller may keep them in an event: its own copies)
            j = attrs.evolve(j, parts=tuple(dict(p) for p in j.parts))
        return j

    def _judge(self, identity: str, connection: str, operation, now) -> Judgement:
        grants = [g for g in self._grants.get((identity, connection), ()) if not g.expired(now)]
        judged = [(unit, _judge_unit(grants, unit)) for unit in operation.units]
        parts: tuple[dict[str, str | None], ...] = ()
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
        if worst.outcome == "approve":
            asking = [g for unit, j in judged if j.outcome == "approve" for g in _approvers(grants, unit, j)]
            mode, ttl = self._approval_terms(connection, asking)
            return Judgement("approve", worst.rule, worst.reason, parts, approvals=mode, approval_ttl=ttl)
        return Judgement(worst.outcome, worst.rule, worst.reason, parts)

    def _approval_terms(self, connection: str, grants) -> tuple[str, float]:
        """hold or retry, and the ttl: each grant's own, else its connection's. Retry only when
        every grant that asks for approval says retry; the shortest ttl among them."""
        conn = self.connections.get(connection)
        modes = {getattr(g, "approvals", None) or (conn.approvals if conn else "hold") for g in grants}
        ttls = [g.approval_ttl if getattr(g, "approval_ttl", None) is not None
                else (conn.approval_ttl if conn else self.default_ttl) for g in grants]
        return ("retry" if modes == {"retry"} else "hold"), min(ttls, default=self.default_ttl)

    def decide(self, session, operation, approvals: str | None = None, also=()) -> Deferred:
        """Fires with Allow, Deny or Hold once the event saying so is durable.

        ``approvals="retry"``: the caller asked not to wait (HTTP ``Prefer: respond-async``),
        whatever the grant says. ``also``: further identities whose grants on this connection
        must cover the operation as well (an MCP server's downstream operation, for its callers)."""
        d: Deferred = Deferred()
        self.decide_then(session, operation, d.callback, d.errback, also, approvals)
        return d

    def decide_then(self, session, operation, verdict, failed, also=(), approvals: str | None = None) -> None:
        """The decision, handed to ``verdict(v)``: Allow, Deny or Hold once the event saying so is
        durable (Deny(STORE_DOWN) if it cannot be written); ``failed(failure)`` if no answer can be
        given (the caller fails closed). ``decide`` is this with a Deferred; an allowed operation
        (every statement of a steady session) costs the store's Deferred one callback and nothing
        else."""
        j = self.judge(session.identity, session.connection, operation)
        if also or j.parts:
            j, operation = self._judged(session, operation, also, j)
        outcome = j.outcome
        if outcome == "approve":
            ensureDeferred(self._approve(session, operation, j, approvals or j.approvals)).addCallbacks(verdict, failed)
            return
        # (_counted and _allow, inline: every statement comes here)
        m = self.metrics
        if m:
            key = (session.protocol, session.connection, _COUNTED[outcome])
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = m.child(m.operations, *key)
            counter.inc()
        if outcome == "deny":
            self._deny(session, operation, j).addCallbacks(verdict, failed)
            return
        rule = j.rule
        assert rule is not None, "every allow names the rule that allowed it"
        allow = self._allows.get(rule)
        if allow is None:
            allow = self._allows[rule] = Allow(rule)
        detail = operation.detail
        if "rule" in detail:  # as ``event(..., rule=rule, **describe)`` would: a duplicate keyword fails
            raise TypeError("the operation's detail names a 'rule'")
        # _describe(operation), with the rule first, made once (event() would copy it as keywords)
        data = {"rule": rule, "operation": operation.kind, "text": operation.text,
                "units": list(map(str, operation.units)), **detail}
        session.record("operation", "allowed", data).addCallbacks(
            _then, _store_down_then, callbackArgs=(allow, verdict), errbackArgs=(session, verdict, failed))

    def _judged(self, session, operation, also, j=None):
        """The judgement of ``operation`` for the session's identity (``j``, if already made) and
        ``also``'s, and the operation as its event records it (with its parts)."""
        if j is None:
            j = self.judge(session.identity, session.connection, operation)
        for other in also:
            if j.outcome == "deny":
                break
            k = self.judge(other, session.connection, operation)
            if k.outcome == "deny":
                j = attrs.evolve(j, outcome="deny", rule=k.rule,
                                 reason=f"not covered by the calling identity's grants: {k.reason}")
            elif k.outcome == "approve" and j.outcome == "allow":
                j = attrs.evolve(k, reason=f"the calling identity {other}: {k.reason}", parts=j.parts)
        if j.parts:
            # The event (and a reviewer's approval) lists every part with the rule that judged it.
            operation = attrs.evolve(operation, detail={**operation.detail, "parts": list(j.parts)})
        return j, operation

    def _deny(self, session, operation, j) -> Deferred:
        log.info("refused {identity} on {connection}: {text!r}: {reason!r}", identity=session.identity,
                 connection=session.connection, text=operation.text[:200], reason=j.reason)
        deny = Deny(j.reason, j.rule)
        d = session.event("operation", "refused", rule=j.rule, reason=j.reason, **_describe(operation))
        return d.addBoth(lambda _: deny)

    async def _approve(self, session, operation, j, mode):
        describe = _describe(operation)
        timeout = self.timeouts.get(session.connection, self.default_timeout)
        try:
            # An approved retry approval of exactly this operation runs it, once (whatever
            # this operation's own mode: the approval was asked for in retry mode).
            found = await self.approvals.use(session, operation, j.rule, describe)
            if isinstance(found, Allow):
                self._count(session, "allowed")
                return found
            if mode != "retry":
                self._count(session, "held")
                return self._held(await self.approvals.request(session, operation, j.rule, timeout), j.reason)
            if found is not None:
                # Asked again while pending: the same approval, not a new one in the inbox.
                self._count(session, "refused")
                reason = (f"approval {found['id']} is still pending (rule {j.rule!r}); nothing ran; "
                          f"run the same {_noun(operation)} again after it is approved")
                await session.event("operation", "refused", rule=j.rule, reason=reason, approval=found["id"],
                                    status="pending", **describe)
                return self._retry_refusal(found["id"], reason, j, operation, found["ttl_s"], timeout)
            self._count(session, "held")  # (an approval was asked for; the caller comes back)
            approval = await self.approvals.request(session, operation, j.rule, timeout, "retry", j.approval_ttl)
        except StoreError as e:
            log.error("session {id}: {e}", id=session.id, e=str(e))
            return Deny(STORE_DOWN)
        log.info("held {identity} on {connection}: {text!r} as approval {id} (retry mode)",
                 identity=session.identity, connection=session.connection, text=operation.text[:200],
                 id=approval.id)
        reason = (f"held for approval {approval.id} (rule {j.rule!r}); nothing ran; "
                  f"run the same {_noun(operation)} again after it is approved")
        return self._retry_refusal(approval.id, reason, j, operation, approval.ttl_s, timeout)

    def _retry_refusal(self, approval_id, reason, j, operation, ttl, timeout) -> Deny:
        noun = _noun(operation)
        detail = (f"A reviewer approves it with `hoopy approve {approval_id}` or in the web console. "
                  f"Then the identical {noun}, by the same identity on the same connection, runs once "
                  f"if it is sent within {format_duration(ttl or 0)} of the approval; a different {noun} "
                  f"needs its own approval. Unless decided, the approval expires "
                  f"{format_duration(timeout)} after it was asked for.")
        return Deny(reason, j.rule, approval_id, "pending", detail)

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

    def _count(self, session, outcome):
        if self.metrics:
            self.metrics.child(self.metrics.operations, session.protocol, session.connection, outcome).inc()


_COUNTED = {"allow": "allowed", "deny": "refused"}


def _then(_, answer, verdict) -> None:
    verdict(answer)


def _store_down_then(failure, session, verdict, failed) -> None:
    """For ``decide_then``: a store that cannot write refuses; any
    other failure is the caller's to fail closed on."""
    if failure.check(StoreError):
        log.error("session {id}: {e}", id=session.id, e=failure.getErrorMessage())
        verdict(Deny(STORE_DOWN))
    else:
        failed(failure)


def _memo_units(units) -> bool:
    """Units the memo may key on: plain Units with short texts."""
    for u in units:
        if type(u) is not Unit or len(u.subject or "") > MEMO_TEXT or len(u.key or "") > MEMO_TEXT:
            return False
    return True


UNJUDGEABLE_RULE = 'unjudgeable = "approve"'

_NOUNS = {"statement": "statement", "exec": "command", "request": "request", "shell": "session",
          "sftp": "session", "forward": "forward"}


def _noun(operation) -> str:
    """What the caller sends again, in its own words."""
    return _NOUNS.get(operation.kind, "operation")


def _approvers(grants, unit, j) -> list:
    """The grant whose rule asked for approval of this unit (as ``_judge_unit`` found it)."""
    if j.rule == UNJUDGEABLE_RULE:
        return [g for g in grants if getattr(g, "unjudgeable", "deny") == "approve"]
    for g in grants:
        if any(r.text == j.rule and r.matches(unit) for r in g.approve):
            return [g]
    return []


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
