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

Retry mode: nobody waits. The caller is refused at once with the approval id
and runs the identical operation again once it is approved: ``use`` finds an
approved, unused retry approval of that identity, connection and canonical
form (``Operation.canonical_key``) within its ``ttl_s`` of the decision, and
marks it used in the same transaction as the event of the run, only if it is
still ``approved`` (``expect_state``): two nodes cannot both run it. Its
session ending does not expire it (the caller comes back on a new one).

Who may not decide: the requester, and every identity whose MCP tool call
caused the operation (``caused_by`` in the operation's detail, set by the MCP
gateway: a dict or list of dicts with an ``identity``).
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import attrs
from twisted.internet.defer import Deferred, succeed, ensureDeferred, fail
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from hoopy.audit.events import Event
from hoopy.audit.store import StateConflict, StoreError
from hoopy.policy.review import review_text
from hoopy.policy.verdicts import Allow
from hoopy.ids import new_id

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

    from hoopy.policy.rules import Operation
    from hoopy.session import Session

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
    session: Session
    operation: Operation
    rule: str
    created_us: int
    expires_us: int
    state: str = "pending"
    reviewer: str | None = None
    reason: str | None = None
    decided_us: int | None = None
    mode: str = "hold"  # hold: a caller waits on ``outcome``; retry: nobody waits
    ttl_s: int | None = None  # retry: how long after approval the identical operation may run once
    outcome: Deferred = attrs.field(factory=Deferred)  # fires with the Approval once decided
    _timer: IDelayedCall | None = None

    @property
    def requester(self) -> str:
        return self.session.identity

    @property
    def caused_by(self):
        return self.operation.detail.get("caused_by")

    @property
    def requesters(self) -> set[str]:
        """Who may not decide it: the requester and whoever caused it (MCP)."""
        return {self.requester} | caused_by_identities(self.caused_by)

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
            # Retry mode only (hold leaves them NULL): what a later identical operation must match.
            "mode": "retry" if self.mode == "retry" else None,
            "canonical": self.operation.canonical_key() if self.mode == "retry" else None,
            "ttl_s": self.ttl_s,
            "caused_by": json.dumps(self.caused_by, sort_keys=True, default=str) if self.caused_by else None,
        }


def caused_by_identities(caused_by) -> set[str]:
    """The identities named by a ``caused_by`` value: one call (a dict) or several (a list)."""
    if isinstance(caused_by, str):
        try:
            caused_by = json.loads(caused_by)
        except ValueError:
            return set()
    calls = caused_by if isinstance(caused_by, list) else [caused_by] if caused_by else []
    return {c["identity"] for c in calls if isinstance(c, dict) and isinstance(c.get("identity"), str)}


def row_requesters(row: dict) -> set[str]:
    return {row["requester"]} | caused_by_identities(row.get("caused_by"))


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

    def request(self, session, operation, rule: str, timeout: float, mode: str = "hold",
                ttl: float | None = None) -> Deferred:
        """Create and record a pending approval; fires with it once durable."""
        now = time.time_ns() // 1000
        approval = Approval(
            id=new_id("ap-")[:15], session=session, operation=operation, rule=rule,
            created_us=now, expires_us=now + int(timeout * 1e6), mode=mode,
            ttl_s=int(ttl) if mode == "retry" and ttl is not None else None,
        )
        # One event, with the approvals row in the same transaction; the event says what the row
        # shows the reviewer (when that is more than the operation's text), for audit verify.
        row = approval.row()
        review = {"review": row["operation"]} if row["operation"] != operation.text else {}
        retry = {"mode": "retry", "canonical": row["canonical"], "ttl_s": approval.ttl_s} if mode == "retry" else {}
        d = self.store.append(
            session._event("operation", "held", {
                "approval": approval.id, "rule": rule, "timeout_s": timeout,
                "expires_us": approval.expires_us, **_describe(operation), **review, **retry}),
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
        if reviewer.name in approval.requesters:
            return fail(ApprovalError("self_approval", _own(reviewer_name, approval.requester)))
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
        if approval is None:
            return

        def not_recorded(f):
            if not f.check(ApprovalError):  # an ApprovalError: decided meanwhile, nothing to expire
                log.error("approval {id}: expiry not recorded: {e}", id=approval_id, e=f.getErrorMessage())

        self._settle(approval, "expired", None, "approval timed out").addErrback(not_recorded)

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
        if reviewer.name in row_requesters(row):
            raise ApprovalError("self_approval", _own(reviewer_name, row["requester"]))
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
                self._read_elsewhere, self._not_read, callbackArgs=(approval,), errbackArgs=(approval,))

    def _read_elsewhere(self, rows, approval: Approval):
        if rows[0] and self.pending.get(approval.id) is approval:  # still ours to resolve
            self._adopt(approval, rows[0])

    def _not_read(self, f, approval: Approval):
        log.warn("approval {id}: cannot read its row: {e}", id=approval.id, e=f.getErrorMessage())

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
        """The held caller went away: the approvals it waits on expire. A retry-mode
        approval stays pending: its caller comes back with the same operation."""
        ds = []
        for approval in list(self.pending.values()):
            if approval.session is session and approval.mode != "retry":
                ds.append(self._settle(approval, "expired", None, reason).addErrback(lambda f: None))
        return ds

    def expire_all(self, reason: str) -> list[Deferred]:
        """The gateway stops: whatever this node holds expires on the record."""
        return [self._settle(a, "expired", None, reason).addErrback(lambda f: None)
                for a in list(self.pending.values())]

    # --- retry mode: one use of an approval -------------------------------------------

    def _retry_rows(self, requester, connection, canonical):
        reader = self.store.reader()
        try:
            return reader.retry_approvals(requester, connection, canonical)
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"the state store cannot be read: {e}") from e
        finally:
            reader.close()

    async def use(self, session, operation, rule: str, describe: dict):
        """An approved retry approval of exactly this operation, by this identity on this
        connection, still within its ttl: consumed with the event of the run (``Allow``
        naming it). Otherwise the newest still-pending one (its row: the caller is told
        its id again), or None. Fails with StoreError."""
        key = operation.canonical_key()
        rows = await self._in_thread(self._retry_rows, session.identity, session.connection, key)
        now = time.time_ns() // 1000
        for row in rows:
            if row["state"] != "approved" or row["decided_us"] is None:
                continue
            if now >= row["decided_us"] + int(row["ttl_s"] or 0) * 1_000_000:
                continue
            ev = session._event("operation", "allowed", {
                "rule": rule, "approval": row["id"], "approved_by": row["reviewer"], **describe})
            try:
                # Only if still approved: a second run (here or on another node) finds it used.
                await self.store.append(ev, approval={"id": row["id"], "state": "used", "used_us": now,
                                                      "used_session": session.id},
                                        expect_state="approved")
            except StateConflict:
                continue
            log.info("approval {id} used by {who} on {conn}", id=row["id"], who=session.identity,
                     conn=session.connection)
            return Allow(rule, row["id"])
        for row in rows:
            if row["state"] == "pending" and (row["expires_us"] is None or now < row["expires_us"]):
                return row
        return None

    # --- what a caller may read of its own approval ------------------------------------

    def status(self, approval_id: str, identity: str) -> Deferred:
        """The approval's state for its requester (None for anyone else or an unknown id)."""
        def read():
            reader = self.store.reader()
            try:
                return reader.approval(approval_id)
            finally:
                reader.close()

        def shape(row):
            if row is None or row["requester"] != identity:
                return None
            now = time.time_ns() // 1000
            state = row["state"]
            out = {"approval": row["id"], "status": state, "rule": row["rule"],
                   "connection": row["connection"], "created_us": row["created_us"],
                   "expires_us": row["expires_us"] if state == "pending" else None,
                   "decided_us": row["decided_us"], "reviewer": row["reviewer"], "reason": row["reason"]}
            if state == "pending" and row["expires_us"] is not None and now >= row["expires_us"]:
                out["status"] = "expired"
            if state == "approved" and row.get("mode") == "retry":
                until = row["decided_us"] + int(row.get("ttl_s") or 0) * 1_000_000
                out["usable_until_us"] = until
                if now >= until:
                    out["status"] = "expired"
                    out["reason"] = "approved, but not used within approval_ttl"
            return out

        return self._in_thread(read).addCallback(shape)


def _own(reviewer: str, requester: str) -> str:
    if reviewer == requester:
        return f"{reviewer} cannot decide its own request"
    return f"{reviewer} cannot decide a request its own tool call caused (requested by {requester})"


def _describe(operation) -> dict:
    return {"operation": operation.kind, "text": operation.text,
            "units": list(map(str, operation.units)), **operation.detail}
