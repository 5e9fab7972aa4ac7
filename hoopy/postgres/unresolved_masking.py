"""A masking rule that does not resolve: the connection refuses every statement (fail closed).

A masked column or table that the upstream catalog does not have (a typo, a table
not created yet) would mask nothing: this session runs no statement at all. The
upstream connection is closed and the reason recorded before the client is told
anything; then the client is greeted as if connected and every statement it sends
is refused naming the rule (``refusing.RefuseAll``, sans-IO). A new connection
reads the catalog again, so the connection serves once the rule resolves.
``ClientProtocol`` hands its bytes here once ``refusing`` is set.
"""
from __future__ import annotations

import secrets

from twisted.logger import Logger

from hoopy.postgres import codec
from hoopy.postgres.refusing import RefuseAll
from hoopy.postgres.upstream import log_failure
from hoopy.session import IN, OUT
from hoopy.transport import stream

log = Logger()


class UnresolvedMasking:
    def __init__(self, client):
        self.client = client  # the ClientProtocol
        self.machine: RefuseAll | None = None

    def begin(self, up, missing):
        client = self.client
        # Nothing goes upstream: the connection is closed before the client is told anything.
        client.up = None
        up.transport.write(codec.msg(b"X"))  # Terminate: a clean goodbye, not an unexpected EOF
        up.transport.loseConnection()
        rules = [client.service.mask_rules.get(c, repr(c)) for c in missing]
        database = client.settings.upstream_database or "the client's database"
        message = (f"hoopy: masking rule {'; '.join(rules)} does not resolve in the upstream catalog "
                   f"of {database} (no such column or table): connection {client.connection.name} "
                   "refuses every statement until it does")
        log.error("postgres {c}: {m}", c=client.connection.name, m=message)
        # On the record before the client hears anything (its statements wait in Opening.early).
        d = client.session.event("masking.unresolved", "error", rules=rules, columns=missing, message=message)
        d.addErrback(log_failure("masking.unresolved not recorded"))
        d.addCallback(lambda _: self._start(up.info, message))
        d.addErrback(client._internal_error, "refusing")

    def _start(self, ready, message):
        client = self.client
        if client.closed:
            return
        self.machine = RefuseAll("42703", message)
        client.refusing = self
        greeting = [codec.parameter_status(k, v) for k, v in ready.statuses.items()]
        # No cancel key of ours is registered: nothing runs that a cancel could stop.
        greeting += [codec.backend_key(ready.pid, secrets.token_bytes(4)), codec.ready(b"I")]
        client.timer.cancel()
        client.transport.write(b"".join(greeting))
        early = client.opening.take_early()
        client.resume("connecting")
        self.receive_data(early, counted=True)

    def receive_data(self, data: bytes, counted: bool = False) -> None:
        client = self.client
        if client.closed or not data:
            return
        if not counted:
            client.session.count_bytes(IN, len(data))
        assert self.machine is not None  # set before the client hands anything here
        out, close = self.machine.receive_data(data)
        if out:
            client.session.count_bytes(OUT, len(out))
            stream(client.transport).write(out)
        if close:
            client.close(close)
