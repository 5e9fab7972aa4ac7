"""A session: one authenticated connection of one identity to one connection."""
from __future__ import annotations

import secrets

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from hoopy.audit.events import Event

log = Logger()

ATTRIBUTION_KEYS = ("model", "tool_call", "mcp_server", "application_name")


def new_id(prefix: str = "") -> str:
    return prefix + secrets.token_hex(8)


@attrs.define(eq=False)
class Session:
    gateway: object  # hoopy.gateway.Gateway
    identity: str
    connection: str
    protocol: str
    peer: str
    id: str = attrs.field(factory=new_id)
    attribution: dict = attrs.field(factory=dict)
    ended: bool = False
    recording: str | None = None
    # Set by the protocol: ends the connection (gateway shutdown). Returns a
    # Deferred that fires once the session has ended and recorded so.
    terminate: object = None
    _end_d: Deferred | None = None

    def event(self, kind: str, outcome: str | None = None, **data) -> Deferred:
        """Append an event of this session; fires once durable, fails with StoreError."""
        return self.gateway.store.append(self._event(kind, outcome, data))

    def _event(self, kind, outcome, data) -> Event:
        return Event(kind=kind, outcome=outcome, session=self.id, identity=self.identity,
                     connection=self.connection, protocol=self.protocol, peer=self.peer,
                     data=data)

    def row(self, **values) -> dict:
        return {"id": self.id, **values}

    def start(self) -> Deferred:
        ev = self._event("session.start", "ok", {})
        self.gateway._session_started(self)
        d = self.gateway.store.append(ev, session=self.row(
            identity=self.identity, connection=self.connection, protocol=self.protocol,
            peer=self.peer, started_us=ev.time_us))

        def failed(f):
            self.gateway._session_ended(self)
            self.ended = True
            return f

        return d.addCallbacks(lambda _: self, failed)

    def attribute(self, **values) -> Deferred:
        """Record who the caller acts for (model, tool_call, mcp_server, application_name)."""
        values = {k: str(v)[:512] for k, v in values.items() if k in ATTRIBUTION_KEYS and v}
        values = {k: v for k, v in values.items() if self.attribution.get(k) != v}
        if not values:
            return succeed(None)
        self.attribution.update(values)
        return self.gateway.store.append(
            self._event("session.attribution", "ok", values), session=self.row(**values))

    def set_recording(self, path: str) -> None:
        self.recording = path

    def end(self, reason: str = "closed", **data) -> Deferred:
        """Record the end once; later calls get the same Deferred."""
        if self._end_d is not None:
            return self._end_d
        self.ended = True
        ev = self._event("session.end", "ok", {"reason": reason, **data})
        row = self.row(ended_us=ev.time_us, end_reason=reason)
        if self.recording:
            row["recording"] = self.recording
        self._end_d = self.gateway.store.append(ev, session=row)
        self._end_d.addErrback(lambda f: log.error("session {id}: end not recorded: {e}",
                                                   id=self.id, e=f.getErrorMessage()))
        self._end_d.addBoth(lambda r: (self.gateway._session_ended(self), r)[1])
        return self._end_d
