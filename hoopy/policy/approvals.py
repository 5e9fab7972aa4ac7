"""Held operations: pending -> approved | denied | expired.

A protocol that gets a Hold tells its caller the approval id and waits on
``Hold.resolution``; a reviewer's decision (through the admin API) fires it
at once, and ``approval_timeout`` fires it with a refusal. The requester can
never decide its own request, and only identities with the role
``reviewer`` decide at all. Every transition is an event, durable before the
held caller is released.

With a shared (PostgreSQL) store the reviewer may reach another node than
the one holding the operation. That node checks the row with the same rules
and records the decision; the row only changes if it is still pending
(``expect_state``), so two nodes can never both decide. The store then
notifies every node, and the holder resolves its waiter from the row
without writing a second event. Only the holder expires its approvals.
"""
from __future__ import annotations

import time

import attrs
from twisted.internet.defer import Deferred, succeed, ensureDeferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from hoopy.audit.events import Event
from hoopy.audit.store import StateConflict, StoreError
from hoopy.policy.review import review_text
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

    def summary(self) -> dict:
        return {"approval": self.id, "state": self.state, "reviewer": self.reviewer,
                "requester": self.requester, "operation": self.operation.text}

    def row(self) -> dict:
        return {
            "id": self.id, "session": self.session.id, "requester": self.requester,
            "connection": self.session.connection, "protocol": self.session.protocol,
            "operation": review_text(self.operation.text, self.operation.detail),
            "rule": self.rule, "state": self.state,
            "created_us": self.created_us, "expires_us": self.expires_us,
            "decided_us": self.decided_us, "reviewer": self.reviewer, "reason": self.reason,
        }


@attrs.frozen
class Decision:
    """A decision made here about an approval another node holds."""

    id: str
    state: str
    reviewer: str
    requester: str
    operation: str

    def summary(self) -> dict:
        return {"approval": self.id, "state": self.state, "reviewer": self.reviewer,
                "requester": self.requester, "operation": self.operation}


class ApprovalService:
    def __init__(self, store, directory, clock, metrics=None):
        self.store = store
        self.directory = directory
        self.clock = clock
        self.metrics = metrics
        self.pending: dict[str, Approval] = {}
        self.shared = bool(getattr(store, "shared", False))
        if self.shared:
            store.watch_approvals(self._changed_elsewhere)

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
        # One event, with the approvals row in the same transaction; the event says what the row
        # shows the reviewer (when that is more than the operation's text), for audit verify.
        row = approval.row()
        review = {"review": row["operation"]} if row["operation"] != operation.text else {}
        d = self.store.append(
            session._event("operation", "held", {
                "approval": approval.id, "rule": rule, "timeout_s": timeout,
                "expires_us": approval.expires_us, **_describe(operation), **review}),
            approval=row)

        def pending(_):
            self.pending[approval.id] = approval
            approval._timer = self.clock.callLater(timeout, self._expire, approval.id)
            self._gauge()
            return approval

        return d.addCallback(pending)

    def get(self, approval_id: str) -> Approval | None:
        return self.pending.get(approval_id)

    def decide(self, approval_id: str, reviewer_name: str, approve: bool, reason: str | None = None) -> Deferred:
        """A reviewer's decision. Fires with an Approval (held here) or a
        Decision (held by another node); fails with ApprovalError, or
        StoreError (then nothing changed)."""
        approval = self.pending.get(approval_id)
        reviewer = self.directory.get(reviewer_name)
        if approval is None:
            if self.shared:
                return ensureDeferred(self._decide_elsewhere(approval_id, reviewer_name, reviewer,
                                                             approve, reason))
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
            if f.check(StateConflict):
                # Another node decided first: its outcome, from the row, is the one.
                self._sync(approval)
                raise ApprovalError("not_pending", str(f.value))
            if state == "expired":
                # Fail closed: the caller is refused even though the record failed.
                approval.state = "expired"
                approval.reason = "approval timed out (and the state store could not record it)"
                approval.outcome.callback(approval)
                return f
            self.pending[approval.id] = approval  # nothing changed; it can be decided again
            self._gauge()
            return f

        return self.store.append(ev, approval=row, expect_state="pending").addCallbacks(done, failed)

    def _expire(self, approval_id: str):
        approval = self.pending.get(approval_id)
        if approval is not None:
            self._settle(approval, "expired", None, "approval timed out").addErrback(
                lambda f: f.check(ApprovalError) or log.error(
                    "approval {id}: expiry not recorded: {e}", id=approval_id, e=f.getErrorMessage()))

    # --- several nodes, one store ---------------------------------------------------

    def _in_thread(self, fn, *args) -> Deferred:
        return deferToThreadPool(self.clock, self.clock.getThreadPool(), fn, *args)

    def _read(self, approval_id: str):
        """Blocking: the approval row and its session row."""
        reader = self.store.reader()
        try:
            row = reader.approval(approval_id)
            return row, (reader.session(row["session"]) if row and row["session"] else None)
        except StoreError:
            raise
        except Exception as e:  # the connection went away mid-read: nothing decided
            raise StoreError(f"the state store cannot be read: {e}") from e
        finally:
            reader.close()

    async def _decide_elsewhere(self, approval_id, reviewer_name, reviewer, approve, reason):
        row, session = await self._in_thread(self._read, approval_id)
        if row is None:
            raise ApprovalError("not_found", f"no pending approval {approval_id}")
        if row["state"] != "pending":
            raise ApprovalError("not_pending", f"approval {approval_id} is already {row['state']}")
        now = time.time_ns() // 1000
        if row["expires_us"] is not None and now >= row["expires_us"]:
            raise ApprovalError("not_pending", f"approval {approval_id} has expired")
        if reviewer is None or not reviewer.is_reviewer:
            raise ApprovalError("not_reviewer", f"{reviewer_name} is not a reviewer")
        if reviewer.name == row["requester"]:
            raise ApprovalError("self_approval", f"{reviewer_name} cannot decide its own request")
        state = "approved" if approve else "denied"
        ev = Event(kind="approval.decided", outcome=state, session=row["session"],
                   identity=row["requester"], connection=row["connection"], protocol=row["protocol"],
                   peer=session["peer"] if session else None,
                   data={"approval": approval_id, "operation": row["operation"],
                         "reviewer": reviewer.name, "reason": reason, "requester": row["requester"]})
        try:
            # Written only if still pending: the holder's expiry or another
            # node's decision may have won since the read above.
            await self.store.append(ev, approval={"id": approval_id, "state": state,
                                                  "reviewer": reviewer.name, "reason": reason,
                                                  "decided_us": now},
                                    expect_state="pending")
        except StateConflict as e:
            raise ApprovalError("not_pending", str(e))
        return Decision(approval_id, state, reviewer.name, row["requester"], row["operation"])

    def _changed_elsewhere(self, approval_id: str | None):
        """The store says an approval left pending (None: some may have)."""
        if approval_id is None:
            targets = list(self.pending.values())
        else:
            targets = [a for a in (self.pending.get(approval_id),) if a is not None]
        for approval in targets:
            self._in_thread(self._read, approval.id).addCallbacks(
                lambda rows, a=approval: rows[0] and self.pending.get(a.id) is a and self._adopt(a, rows[0]),
                lambda f, a=approval: log.warn("approval {id}: cannot read its row: {e}",
                                               id=a.id, e=f.getErrorMessage()))

    def _sync(self, approval: Approval):
        """Resolve a waiter that lost the race from the row that won it."""
        def unreadable(f):
            # Fail closed: without the decision the caller is refused.
            self._adopt(approval, {"state": "expired", "reviewer": None, "decided_us": None,
                                   "reason": f"decided elsewhere, but the decision cannot be read: "
                                             f"{f.getErrorMessage()}"})

        self._in_thread(self._read, approval.id).addCallbacks(
            lambda rows: self._adopt(approval, rows[0] or {
                "state": "expired", "reviewer": None, "decided_us": None,
                "reason": "the approval's row is gone"}), unreadable)

    def _adopt(self, approval: Approval, row: dict):
        """Another node's decision resolves this node's waiter (no second event)."""
        if approval.outcome.called or row["state"] == "pending":
            return
        if self.pending.get(approval.id) is approval:
            del self.pending[approval.id]
            self._gauge()
        if approval._timer is not None and approval._timer.active():
            approval._timer.cancel()
        approval.state, approval.reviewer, approval.reason, approval.decided_us = (
            row["state"], row["reviewer"], row["reason"], row["decided_us"])
        log.info("approval {id} {state} by {who} on another node", id=approval.id,
                 state=approval.state, who=approval.reviewer)
        approval.outcome.callback(approval)

    def expire(self, approval_id: str, reason: str) -> Deferred:
        """End one pending approval now (its caller went away): it expires on the record."""
        approval = self.pending.get(approval_id)
        if approval is None:
            return succeed(None)
        return self._settle(approval, "expired", None, reason).addErrback(lambda f: None)

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
