"""Held operations: pending -> approved | denied | expired.

A protocol that gets a Hold tells its caller the approval id and waits on
``Hold.resolution``; a reviewer's decision (through the admin API) fires it
at once, and ``approval_timeout`` fires it with a refusal. The requester can
never decide its own request, and only identities with the role
``reviewer`` decide at all. Every transition is an event, durable before the
held caller is released.
"""
from __future__ import annotations

import time

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from hoopy.session import new_id

log = Logger()


class ApprovalError(Exception):
    """A decision that cannot be made: ``code`` is not_found, not_pending,
    not_reviewer or self_approval."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


@attrs.define(eq=False)
class Approval:
    id: str
    session: object  # hoopy.session.Session
    operation: object  # hoopy.policy.rules.Operation
    rule: str
    created_us: int
    expires_us: int
    state: str = "pending"
    reviewer: str | None = None
    reason: str | None = None
    decided_us: int | None = None
    outcome: Deferred = attrs.field(factory=Deferred)  # fires with the Approval once decided
    _timer: object = None

    @property
    def requester(self) -> str:
        return self.session.identity

    def row(self) -> dict:
        return {
            "id": self.id, "session": self.session.id, "requester": self.requester,
            "connection": self.session.connection, "protocol": self.session.protocol,
            "operation": self.operation.text, "rule": self.rule, "state": self.state,
            "created_us": self.created_us, "expires_us": self.expires_us,
            "decided_us": self.decided_us, "reviewer": self.reviewer, "reason": self.reason,
        }


class ApprovalService:
    def __init__(self, store, directory, clock, metrics=None):
        self.store = store
        self.directory = directory
        self.clock = clock
        self.metrics = metrics
        self.pending: dict[str, Approval] = {}

    def _gauge(self):
        if self.metrics:
            self.metrics.approvals_pending.set(len(self.pending))

    def request(self, session, operation, rule: str, timeout: float) -> Deferred:
        """Create and record a pending approval; fires with it once durable."""
        now = time.time_ns() // 1000
        approval = Approval(
            id=new_id("ap-")[:15], session=session, operation=operation, rule=rule,
            created_us=now, expires_us=now + int(timeout * 1e6),
        )
        # One event, with the approvals row in the same transaction.
        d = self.store.append(
            session._event("operation", "held", {
                "approval": approval.id, "rule": rule, "timeout_s": timeout,
                "expires_us": approval.expires_us, **_describe(operation)}),
            approval=approval.row())

        def pending(_):
            self.pending[approval.id] = approval
            approval._timer = self.clock.callLater(timeout, self._expire, approval.id)
            self._gauge()
            return approval

        return d.addCallback(pending)

    def get(self, approval_id: str) -> Approval | None:
        return self.pending.get(approval_id)

    def decide(self, approval_id: str, reviewer_name: str, approve: bool, reason: str | None = None) -> Deferred:
        """A reviewer's decision. Fails with ApprovalError, or StoreError (then nothing changed)."""
        from twisted.internet.defer import fail

        approval = self.pending.get(approval_id)
        reviewer = self.directory.get(reviewer_name)
        if approval is None:
            return fail(ApprovalError("not_found", f"no pending approval {approval_id}"))
        if reviewer is None or not reviewer.is_reviewer:
            return fail(ApprovalError("not_reviewer", f"{reviewer_name} is not a reviewer"))
        if reviewer.name == approval.requester:
            return fail(ApprovalError("self_approval", f"{reviewer_name} cannot decide its own request"))
        state = "approved" if approve else "denied"
        return self._settle(approval, state, reviewer.name, reason)

    def _settle(self, approval: Approval, state: str, reviewer, reason) -> Deferred:
        decided = time.time_ns() // 1000
        row = {**approval.row(), "state": state, "reviewer": reviewer, "reason": reason,
               "decided_us": decided}
        ev = approval.session._event(
            "approval.expired" if state == "expired" else "approval.decided", state,
            {"approval": approval.id, "operation": approval.operation.text, "reviewer": reviewer,
             "reason": reason, "requester": approval.requester})
        # Taken out of pending now, so a second decision cannot race this one.
        self.pending.pop(approval.id, None)
        self._gauge()

        def done(_):
            approval.state, approval.reviewer, approval.reason, approval.decided_us = (
                state, reviewer, reason, decided)
            if approval._timer is not None and approval._timer.active():
                approval._timer.cancel()
            approval.outcome.callback(approval)
            return approval

        def failed(f):
            if state == "expired":
                # Fail closed: the caller is refused even though the record failed.
                approval.state = "expired"
                approval.reason = "approval timed out (and the state store could not record it)"
                approval.outcome.callback(approval)
                return f
            self.pending[approval.id] = approval  # nothing changed; it can be decided again
            self._gauge()
            return f

        return self.store.append(ev, approval=row).addCallbacks(done, failed)

    def _expire(self, approval_id: str):
        approval = self.pending.get(approval_id)
        if approval is not None:
            self._settle(approval, "expired", None, "approval timed out").addErrback(
                lambda f: log.error("approval {id}: expiry not recorded: {e}",
                                    id=approval_id, e=f.getErrorMessage()))

    def cancel_session(self, session, reason: str) -> list[Deferred]:
        """The held caller went away (or the gateway stops): its approvals expire."""
        ds = []
        for approval in list(self.pending.values()):
            if approval.session is session:
                ds.append(self._settle(approval, "expired", None, reason).addErrback(lambda f: None))
        return ds


def _describe(operation) -> dict:
    return {"operation": operation.kind, "text": operation.text,
            "units": [str(u) for u in operation.units], **operation.detail}
