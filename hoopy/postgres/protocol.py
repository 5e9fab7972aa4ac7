"""The Twisted adapter of a client's connection: bytes in and out of the sans-IO state machines.

``ClientProtocol`` is a client's connection: the handshake (client_startup)
until it authenticates, then the session's ``ClientSide``; it sends what both
give to each peer and runs their commands (decisions, events, TLS, closing)
against the Session and the transports. Its collaborators do the rest:
``opening.Opening`` from authentication to a ready upstream,
``unresolved_masking.UnresolvedMasking`` when a masking rule does not resolve
(every statement refused), ``judge.Judge`` the Decide, Check and Classify
commands. The gateway's connection to the server is upstream.py's
``UpstreamProtocol``; once ready it hands every byte to its client.
"""
from __future__ import annotations

from typing import Callable

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from hoopy.policy.verdicts import Deny, Hold
from hoopy.postgres import client_startup as hs, codec, pipeline as cmd
from hoopy.postgres.client_side import _WAITING, ClientSide
from hoopy.postgres.judge import Judge
from hoopy.postgres.opening import Opening
from hoopy.postgres.pipeline import PIPELINE_BUFFER
from hoopy.postgres.unresolved_masking import UnresolvedMasking
from hoopy.postgres.upstream import UpstreamProtocol, log_failure as _log_failure, nodelay as _nodelay, send_cancel
from hoopy.sockwrite import write_now
from hoopy.transport import stream

log = Logger()
_TRAILING, _DECIDE = cmd.Trailing, cmd.Decide
STARTUP_TIMEOUT = 60


class ClientProtocol(Protocol):
    # The session's byte counters (Session.byte_counts), set by Opening once the upstream is ready.
    _count_in: Callable[[int], None]
    _count_out: Callable[[int], None]

    def __init__(self, service):
        self.service = service
        self.gateway = service.gateway
        self.connection = service.connection
        self.settings = service.connection.settings
        self.handshake = hs.Handshake(
            verifier=self._verifier, check_token=self._check_token, client_auth=self.settings.client_auth,
            tls_offered=service.tls_context is not None, cbind=service.cbind_data, alternates=self._alternates)
        self.cs: ClientSide | None = None
        self.session = None
        self.up: UpstreamProtocol | None = None
        self.paused_for: set = set()
        self.closed = False
        self.key = None
        self.opening = Opening(self)  # from authentication to a ready upstream
        self.refusing: UnresolvedMasking | None = None  # a masking rule did not resolve: every statement refused
        judge = Judge(self)
        self._handshake = {hs.Reply: self._reply, hs.StartTLS: self._start_tls, hs.Cancel: self._cancel,
                           hs.Refuse: self._refuse, hs.AuthFailed: self._auth_failed,
                           hs.Authenticated: self.opening.start}
        self._commands = {cmd.Decide: judge.decide, cmd.Check: judge.check, cmd.Classify: judge.classify,
                          cmd.Record: self._record, cmd.Trailing: self._trailing, cmd.Redacted: self._redacted,
                          cmd.Attribute: self._attribute_command, cmd.CancelUpstream: self.cancel_upstream,
                          cmd.Close: self._close}

    def _verifier(self, user):
        ident = self.gateway.identities.get(user)
        return ident.token_scram if ident is not None else None

    def _check_token(self, user, token):
        return self.gateway.identities.authenticate_token(user, token)  # the Identity (truthy) or None

    def _alternates(self, user):
        # Per-child tokens of this identity (an MCP server's children): checked beside its own.
        return self.gateway.identities.scram_alternates(user) if self.gateway.identities.get(user) else None

    # --- the connection --------------------------------------------------------------
    def connectionMade(self):
        a = self.transport.getPeer()
        self.peer = f"{getattr(a, 'host', '?')}:{getattr(a, 'port', '?')}"
        _nodelay(self.transport)
        self.service.clients.add(self)
        self.timer = self.gateway.reactor.callLater(STARTUP_TIMEOUT, self._startup_timeout)

    def _startup_timeout(self):
        if self.session is None:
            self.fatal("08P01", "authentication timed out")

    def dataReceived(self, data: bytes):
        cs = self.cs
        if cs is not None:
            self._count_in(len(data))  # (session.count_bytes(IN, n), its counter kept)
            cs.receive_data(data)
            return self.run()
        if self.refusing is not None:
            return self.refusing.receive_data(data)
        if self.closed:
            return
        if self.session is not None:  # authenticated: waiting for the session and the upstream
            return self.opening.receive_data(data)
        for c in self.handshake.receive_data(data):
            self._handshake[type(c)](c)

    def pause(self, reason: str):
        """Stop reading from the client until every reason to is gone."""
        if not self.paused_for:
            stream(self.transport).pauseProducing()
        self.paused_for.add(reason)

    def resume(self, reason: str):
        if reason in self.paused_for:
            self.paused_for.discard(reason)
            if not self.paused_for and not self.closed:
                stream(self.transport).resumeProducing()

    def fatal(self, code: str, message: str):
        if not self.closed:
            stream(self.transport).write(codec.error(code, message, "FATAL"))
            self.close(message)

    def close(self, reason: str):
        if self.closed:
            return
        self.closed = True
        self._hang_up()
        self._end(reason)

    def _hang_up(self):
        # A TLS transport's loseConnection waits for its registered producer to
        # unregister before it sends close_notify: unregister first, both ways.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        up = self.up.transport if self.up is not None else None
        if up is not None:
            up.unregisterProducer()
            up.loseConnection()

    def _end(self, reason):
        if self.session is None:
            return None
        if self.cs is not None and self.cs.held is not None:
            self.session.cancel_holds(reason)
        return self.session.end(reason)

    def terminate(self, reason):
        """The gateway shuts down: 57P01, as a server would."""
        if not self.closed:
            self.transport.write(codec.error("57P01", f"terminating connection: {reason}", "FATAL"))
            self.closed = True
            self._hang_up()
        return self._end(reason)

    def connectionLost(self, reason):
        self.service.clients.discard(self)
        if self.timer.active():
            self.timer.cancel()
        if self.key is not None:
            self.service.cancel_keys.pop(self.key, None)
        if self.closed:
            return
        self.closed = True
        busy = self.cs is not None and self.cs.busy
        if self.up is not None and self.up.transport is not None:
            if busy:  # stop the query upstream rather than drain it into memory
                send_cancel(self.gateway.reactor, self.settings, self.up.side.pid, self.up.side.key)
            self.up.transport.unregisterProducer()
            self.up.transport.loseConnection()
        self._end("client disconnected mid-result" if busy else "client disconnected")

    # --- the handshake's commands ------------------------------------------------------
    def _reply(self, c):
        self.transport.write(c.data)

    def _start_tls(self, c):
        self.transport.startTLS(self.service.tls_context)

    def _cancel(self, c):
        self.service.cancel(c.pid, c.key)
        self.closed = True
        self.transport.loseConnection()

    def _refuse(self, c):
        self.fatal(c.code, c.message)

    def _auth_failed(self, c):
        self.gateway.auth_failed(self.connection, self.peer, c.user, c.method, c.reason)

    # --- the session's commands ---------------------------------------------------------
    def run(self):
        """Send what the client side has for each peer, then do what it asks."""
        cs = self.cs
        if cs.to_upstream:
            data = b"".join(cs.to_upstream)
            cs.to_upstream.clear()
            if self.up is not None and not self.closed:
                write_now(self.up.transport, data)
        if cs.to_client:
            data = b"".join(cs.to_client)
            cs.to_client.clear()
            if not self.closed:
                self._count_out(len(data))  # (session.count_bytes(OUT, n), its counter kept)
                write_now(self.transport, data)
        if cs.commands:
            commands, cs.commands = cs.commands, []
            for c in commands:
                if type(c) is _TRAILING:  # (_trailing, inline: every statement ends with one)
                    self.session.record_trailing(c.kind, c.outcome, c.data)
                elif type(c) is _DECIDE and c.refusal is None:  # (_decide's common path, inline)
                    self.session.decide_then(c.operation, self._decided_or_fail, self._judging_failed)
                else:
                    self._commands[type(c)](c)
        if cs.state in _WAITING:  # (cs.waiting, without a property's call)
            # A pipelining client is paused only once PIPELINE_BUFFER of its messages
            # wait: pausing every statement would cost two epoll changes each.
            if len(cs.reader.buf) > PIPELINE_BUFFER:
                self.pause("judging")
        elif "judging" in self.paused_for:
            self.resume("judging")

    def upstream_data(self, data: bytes):
        if not self.closed:
            cs = self.cs
            assert cs is not None  # the upstream hands its bytes over only once Opening set it
            cs.receive_upstream(data)
            self.run()

    def upstream_lost(self):
        if not self.closed:
            self.up = None
            self.fatal("08006", "hoopy: the upstream server closed the connection")

    def _judging_failed(self, f):
        self._internal_error(f, "judging")

    def _decided_or_fail(self, verdict):
        # _decided's body, inline (every statement comes here).
        try:
            if self.closed:
                return
            self.cs.decided(verdict)
            if isinstance(verdict, Hold):
                verdict.resolution.addCallbacks(
                    self._decided, lambda f: self._decided(Deny(f"approval failed: {f.getErrorMessage()}")))
            self.run()
        except Exception:
            self._internal_error(Failure(), "judging")

    def _decided(self, verdict):
        if self.closed:
            return
        self.cs.decided(verdict)
        if isinstance(verdict, Hold):
            verdict.resolution.addCallbacks(
                self._decided, lambda f: self._decided(Deny(f"approval failed: {f.getErrorMessage()}")))
        self.run()

    def _internal_error(self, f, what):
        log.failure(what, f)
        self.fatal("XX000", f"hoopy: internal error {what}")

    def _record(self, c):
        self.session.event(c.kind, c.outcome, **c.data).addErrback(_log_failure(f"{c.kind} not recorded"))

    def _trailing(self, c):
        self.session.record_trailing(c.kind, c.outcome, c.data)  # (c.data: made for it, by done())

    def _redacted(self, c):
        self.session.redacted(c.count, **c.data).addErrback(_log_failure("redaction not recorded"))

    def _attribute(self, **values):
        self.session.attribute(**values).addErrback(_log_failure("attribution not recorded"))

    def _attribute_command(self, c):
        self._attribute(**c.values)

    def cancel_upstream(self, c=None):
        if self.up is None:
            return
        pid, key = self.up.side.pid, self.up.side.key
        # On the record first, as every operation; a cancel only stops work, so it goes
        # upstream even when the record cannot be written.
        d = self.session.event("cancel", "ok")
        d.addErrback(_log_failure("cancel not recorded"))
        d.addBoth(lambda _: send_cancel(self.gateway.reactor, self.settings, pid, key))

    def _close(self, c):
        self.close(c.reason)
