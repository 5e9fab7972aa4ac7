"""Failed logins on the record without letting a flood of them fill the store.

Each peer address gets ``burst`` individual ``auth.failed`` events per
connection and window; failures beyond that are counted, and when the window
closes one ``auth.failed`` event with outcome ``suppressed`` says how many
there were, for which users and methods, and from when to when. Nothing goes
unrecorded: the count is exact, only the per-attempt detail is summarized.
The Prometheus counter still counts every failure.
"""
from __future__ import annotations

import attrs
from twisted.internet.defer import succeed
from twisted.logger import Logger

log = Logger()

MAX_USERS_LISTED = 20


@attrs.define
class _Window:
    connection: object
    started_us: int
    recorded: int = 0
    suppressed: int = 0
    first_us: int | None = None
    last_us: int | None = None
    users: dict = attrs.field(factory=dict)  # user -> failures suppressed
    methods: dict = attrs.field(factory=dict)
    timer: object = None


def peer_host(peer: str) -> str:
    """"10.0.0.1:5432" -> "10.0.0.1"; "[::1]:22" -> "::1"."""
    host = peer.rsplit(":", 1)[0] if ":" in peer else peer
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class AuthFailureLog:
    def __init__(self, record, reactor, burst: int = 20, window: float = 60.0, now_us=None):
        """``record(kind, outcome, connection=, peer=, **data)`` appends an event
        outside any session and returns its Deferred (Gateway.record)."""
        self._record = record
        self._reactor = reactor
        self.burst = burst
        self.window = window
        self._now_us = now_us or (lambda: int(reactor.seconds() * 1_000_000))
        self._windows: dict = {}  # (connection name, host) -> _Window

    def failed(self, connection, peer: str, user: str, method: str, reason: str):
        key = (connection.name, peer_host(peer))
        now = self._now_us()
        w = self._windows.get(key)
        if w is None:
            w = self._windows[key] = _Window(connection=connection, started_us=now)
            w.timer = self._reactor.callLater(self.window, self._close, key)
        if w.recorded < self.burst:
            w.recorded += 1
            d = self._record("auth.failed", "refused", connection=connection, peer=peer,
                             user=user[:256], method=method, reason=reason)
            d.addErrback(lambda f: log.error("auth failure not recorded: {e}", e=f.getErrorMessage()))
            return d
        w.suppressed += 1
        w.first_us = w.first_us or now
        w.last_us = now
        if user[:256] in w.users or len(w.users) < MAX_USERS_LISTED:
            w.users[user[:256]] = w.users.get(user[:256], 0) + 1
        w.methods[method] = w.methods.get(method, 0) + 1
        return succeed(None)

    def _close(self, key):
        w = self._windows.pop(key, None)
        if w is None or not w.suppressed:
            return succeed(None)
        d = self._record(
            "auth.failed", "suppressed", connection=w.connection, peer=key[1],
            failures=w.suppressed, first_us=w.first_us, last_us=w.last_us, users=w.users,
            users_more=len(w.users) >= MAX_USERS_LISTED, methods=w.methods,
            reason=f"more than {self.burst} failed logins from {key[1]} in {self.window:g} s: "
                   "these were counted, not recorded one by one")
        d.addErrback(lambda f: log.error("auth failure summary not recorded: {e}", e=f.getErrorMessage()))
        return d

    def flush(self):
        """Close every window now (the gateway is stopping): summaries on the record."""
        ds = []
        for key in list(self._windows):
            w = self._windows[key]
            if w.timer is not None and w.timer.active():
                w.timer.cancel()
            ds.append(self._close(key))
        return ds
