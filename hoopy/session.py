"""A session: one authenticated connection of one identity to one connection.

The one object a protocol talks to once a caller is authenticated: it asks
the session for decisions (``decide``), reports what it masked
(``redacted``), counts bytes, cancels its holds and ends. The session passes
each to the policy, the approvals, the store and the metrics, which no
protocol imports.
"""
from __future__ import annotations

from functools import partial
from time import time_ns
from typing import Callable

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from hoopy.audit.events import Event
from hoopy.ids import new_id
from hoopy.audit.store import StoreError

__all__ = ["ISessionHost", "Session", "StoreError", "new_id", "IN", "OUT"]

log = Logger()

ATTRIBUTION_KEYS = ("model", "tool_call", "mcp_server", "application_name")

# The one ``direction`` vocabulary of byte counts, whatever the protocol:
IN = "in"  # from the caller, toward the upstream
OUT = "out"  # from the upstream, toward the caller


class ISessionHost(Interface):
    """What a session needs of the gateway it lives in (hoopy.gateway.Gateway): the services it
    hands decisions, holds, events and counts to, and word of its start and end. The seam keeps
    the session from knowing the gateway that builds it."""

    config = Attribute("the gateway's hoopy.config.Config (masking_for)")
    policy = Attribute("hoopy.policy.service.PolicyService (decide, judge)")
    approvals = Attribute("hoopy.policy.approvals.ApprovalService (cancel_session, expire, status)")
    store = Attribute("the hoopy.audit.seams.IEventStore events go to")
    metrics = Attribute("hoopy.metrics.Metrics")
    in_flight = Attribute("the MCP tool calls now running (what operations record as caused_by)")

    def session_started(session):
        """The session's start is durable: count it and list it as open."""

    def session_ended(session):
        """The session ended: no longer open."""

    def count_bytes(session, direction, n):
        """``n`` bytes moved in ``direction`` (IN or OUT) for the session's connection."""


@attrs.define(eq=False)
class Session:
    gateway: ISessionHost
    identity: str
    connection: str
    protocol: str
    peer: str
    id: str = attrs.field(factory=new_id)
    attribution: dict = attrs.field(factory=dict)
    credential: str | None = None  # the per-child credential it authenticated with (MCP children)
    ended: bool = False
    recording: str | None = None
    # Set by the protocol: ends the connection (gateway shutdown). Returns a
    # Deferred that fires once the session has ended and recorded so.
    terminate: Callable[[str], Deferred] | None = None
    started: bool = False  # True once session.start is durable
    _start_d: Deferred | None = None
    _end_d: Deferred | None = None
    _timers: dict = attrs.field(factory=dict, init=False, repr=False)  # outcome -> operation_duration's child

    # --- what a protocol asks of its session ------------------------------

    def decide(self, operation, approvals: str | None = None) -> Deferred:
        """Fires with Allow, Deny or Hold (hoopy.policy.verdicts) once the event saying so is durable.
        ``approvals="retry"``: never Hold (the caller asked not to wait); a Deny then carries the
        approval id and ``status="pending"``.

        An operation made for an MCP tool call (see hoopy.causal) of a connection with
        ``require_caller_grant`` must also be covered by each calling identity's grants here."""
        return self.gateway.policy.decide(self, operation, approvals, also=self._callers())

    def decide_then(self, operation, verdict, failed) -> None:
        """``decide`` with its answer handed to ``verdict(answer)`` (Allow, Deny or Hold, once the
        event saying so is durable) and a failure to ``failed(failure)`` (the caller fails closed),
        not through a Deferred of its own: PolicyService.decide_then."""
        self.gateway.policy.decide_then(self, operation, verdict, failed, also=self._callers())

    def _callers(self):
        """The calling identities whose grants must cover this session's operation too."""
        causes = self._causes()
        return sorted({c.caller for c in causes if c.require_caller_grant}) if causes else ()

    def _causes(self):
        flight = self.gateway.in_flight
        # (no MCP call in flight anywhere, the common case: nothing to ask InFlight)
        return flight.causes(self) if flight is not None and flight.by_actor else ()

    def judge(self, operation):
        """The policy's pure answer (a Judgement), recording nothing."""
        return self.gateway.policy.judge(self.identity, self.connection, operation)

    def masking(self) -> tuple:
        """The [[masking]] blocks of this session's connection."""
        return self.gateway.config.masking_for(self.connection)

    def redacted(self, count: int, **data) -> Deferred:
        """``count`` values were masked: counted, and recorded as one ``redaction``
        event (``data`` says where and by which rules); fires once durable."""
        if not count:
            return succeed(None)
        m = self.gateway.metrics
        m.child(m.redactions, self.protocol, self.connection).inc(count)
        return self.event("redaction", "masked", **data)

    def count_bytes(self, direction: str, n: int) -> None:
        """Bytes proxied: ``IN`` from the caller, ``OUT`` to it."""
        self.gateway.count_bytes(self, direction, n)

    def byte_counts(self) -> tuple[Callable[[int], None], Callable[[int], None]]:
        """``count_bytes(IN, n)`` and ``count_bytes(OUT, n)`` as two calls taking ``n``: the host's
        counters' own ``inc`` where it hands them out (a protocol that counts every read and write
        keeps these), else through ``count_bytes``."""
        counter = getattr(self.gateway, "byte_counter", None)
        if counter is None:
            return partial(self.count_bytes, IN), partial(self.count_bytes, OUT)
        return counter(self, IN).inc, counter(self, OUT).inc

    def cancel_holds(self, reason: str) -> list:
        """Expire every approval this session waits on (the caller left); Deferreds, one each."""
        return self.gateway.approvals.cancel_session(self, reason)

    def expire_hold(self, approval_id: str, reason: str):
        return self.gateway.approvals.expire(approval_id, reason)

    def approval_status(self, approval_id: str) -> Deferred:
        """An approval this session's identity asked for: a dict (approval, status, ...), or None
        if it is unknown or someone else's."""
        return self.gateway.approvals.status(approval_id, self.identity)

    # --- the record ---------------------------------------------------------

    def event(self, kind: str, outcome: str | None = None, **data) -> Deferred:
        """Append an event of this session; fires once durable, fails with StoreError."""
        return self.gateway.store.append(self._event(kind, outcome, data))

    def trailing_event(self, kind: str, outcome: str | None = None, **data) -> None:
        """Append an event nothing waits for (the outcome of an operation
        whose decision is already durable); it shares the next flush."""
        self.gateway.store.append_trailing(self._event(kind, outcome, data))

    # ``event`` and ``trailing_event`` with the data as a dict made for the event, taken as it is
    # (keywords would copy it once more): for a caller that makes one every operation.
    def record(self, kind: str, outcome: str | None, data: dict) -> Deferred:
        return self.gateway.store.append(self._event(kind, outcome, data))

    def record_trailing(self, kind: str, outcome: str | None, data: dict) -> None:
        self.gateway.store.append_trailing(self._event(kind, outcome, data))

    def _event(self, kind, outcome, data) -> Event:
        if kind == "operation" and "caused_by" not in data:
            flight = self.gateway.in_flight  # (_causes, inline: every operation comes here)
            if flight is not None and flight.by_actor:
                causes = flight.causes(self)
                if causes:
                    data = {**data, "caused_by": [c.record() for c in causes]}
        elif kind == "session.start" and self.credential:
            data = {**data, "credential": self.credential}
        # The end of an operation carries its duration: its latency, by protocol and outcome.
        seconds = data["duration_ms"] / 1000 if "duration_ms" in data else data.get("duration_s")
        if isinstance(seconds, (int, float)):
            timer = self._timers.get(outcome)
            if timer is None:  # (the histogram's child, looked up once a session and outcome)
                m = self.gateway.metrics
                timer = self._timers[outcome] = m.child(m.operation_duration, self.protocol, outcome or "ok")
            timer.observe(seconds)
        # (positional: Event's fields in order, its time as Event's default makes it; a little cheaper
        # than keywords and the default's factory, once an event)
        return Event(kind, outcome, self.id, self.identity, self.connection, self.protocol, self.peer, data,
                     time_ns() // 1000)

    def row(self, **values) -> dict:
        return {"id": self.id, **values}

    def start(self) -> Deferred:
        ev = self._event("session.start", "ok", {})
        self.gateway.session_started(self)
        d = self.gateway.store.append(ev, session=self.row(
            identity=self.identity, connection=self.connection, protocol=self.protocol,
            peer=self.peer, started_us=ev.time_us))

        def started(_):
            self.started = True
            fixed = self._fixed_attribution()
            if fixed:
                # What the identity's config says acts through it: the gateway's own knowledge.
                self.attribution.update(fixed)
                return self.gateway.store.append(
                    self._event("session.attribution", "ok", {**fixed, "source": "identity"}),
                    session=self.row(**fixed)).addCallback(lambda _: self)
            return self

        def failed(f):
            self.gateway.session_ended(self)
            self.ended = True
            return f

        d.addCallbacks(started, failed)
        self._start_d = start_d = Deferred[None]()

        def settled(result):
            start_d.callback(None)  # an end() waiting on the start goes on, whatever it was
            return result

        d.addBoth(settled)
        return d

    def attribute(self, **values) -> Deferred:
        """Record who the caller says it acts for (model, tool_call, mcp_server, application_name).

        What a client sends is its claim: the event says ``"source": "claimed"``. Where the
        identity fixes a value (``model``, ``mcp_server`` on [identities.X]), the fixed value
        stays on the session and the claim is recorded beside it as ``claimed_model`` /
        ``claimed_mcp_server``."""
        values = {k: str(v)[:512] for k, v in values.items() if k in ATTRIBUTION_KEYS and v}
        fixed = self._fixed_attribution()
        shown, beside = {}, {}
        for k, v in values.items():
            if k in fixed:
                if v != fixed[k] and self.attribution.get(f"claimed_{k}") != v:
                    beside[f"claimed_{k}"] = v
            elif self.attribution.get(k) != v:
                shown[k] = v
        if not shown and not beside:
            return succeed(None)
        self.attribution.update(shown)
        self.attribution.update(beside)
        return self.gateway.store.append(
            self._event("session.attribution", "ok", {**shown, **beside, "source": "claimed"}),
            **({"session": self.row(**shown)} if shown else {}))

    def _fixed_attribution(self) -> dict:
        directory = getattr(self.gateway, "identities", None)
        ident = directory.get(self.identity) if directory is not None else None
        return dict(getattr(ident, "attribution", None) or {})

    def set_recording(self, path: str) -> None:
        self.recording = path

    def end(self, reason: str = "closed", **data) -> Deferred:
        """Record the end once; later calls get the same Deferred."""
        if self._end_d is not None:
            return self._end_d
        if self._start_d is not None and not self._start_d.called:
            # Ended while its start is being written: end it right after.
            self._end_d = Deferred()
            self._start_d.addCallback(lambda _: self._end_now(reason, data)).chainDeferred(self._end_d)
            return self._end_d
        return self._end_now(reason, data)

    def _end_now(self, reason, data) -> Deferred:
        if self._end_d is not None and self._end_d.called:
            return self._end_d
        if not self.started:
            # Its start was never recorded (or not yet): there is no session to end.
            self.ended = True
            self.gateway.session_ended(self)
            return succeed(None)
        self.ended = True
        ev = self._event("session.end", "ok", {"reason": reason, **data})
        row = self.row(ended_us=ev.time_us, end_reason=reason)
        if self.recording:
            row["recording"] = self.recording
        d = self.gateway.store.append(ev, session=row)
        d.addErrback(lambda f: log.error("session {id}: end not recorded: {e}",
                                         id=self.id, e=f.getErrorMessage()))

        def ended(result):
            self.gateway.session_ended(self)
            return result

        d.addBoth(ended)
        if self._end_d is None:
            self._end_d = d
        return d
