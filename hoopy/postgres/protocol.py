"""The Twisted adapters: bytes in and out of the sans-IO state machines.

``ClientProtocol`` is a client's connection: the handshake (client_startup)
until it authenticates, then the session's ``ClientSide``; it runs the
commands both give (decisions, events, TLS, closing) against the Session and
the transports. ``UpstreamProtocol`` is the gateway's connection to the
server around an ``UpstreamSide``; once ready it hands every byte to its
client.
"""
from __future__ import annotations

import secrets

import attrs
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from hoopy.policy.verdicts import Allow, Deny, Hold
from hoopy.postgres import client_startup as hs, codec, pipeline as cmd
from hoopy.postgres.classify import PARSES
from hoopy.postgres.client_side import _WAITING, ClientSide
from hoopy.postgres.upstream import UpstreamProtocol, connect, log_failure as _log_failure, nodelay as _nodelay, send_cancel
from hoopy.postgres.refusing import RefuseAll
from hoopy.postgres.rows import MaskRules, catalog_query
from hoopy.postgres.scope import SCOPE_QUERY, SCOPE_RESULTS, Scope
from hoopy.postgres.startup import attribution, parse_options, passes_upstream, quote_option
from hoopy.session import IN, OUT
from hoopy.sockwrite import write_now
from hoopy.transport import stream
from hoopy.upstream import UpstreamError

log = Logger()
_TRAILING, _DECIDE = cmd.Trailing, cmd.Decide
PIPELINE_BUFFER = 1024 * 1024  # client bytes read ahead while a statement is judged
STARTUP_TIMEOUT = 60


@implementer(IPushProducer)
class _ClientReading:
    """The client connection as the producer of what is written upstream: an upstream
    that does not keep up (a fast COPY FROM) stops the reading from the client."""

    def __init__(self, client):
        self.client = client

    def pauseProducing(self):
        self.client.pause("upstream")

    def resumeProducing(self):
        self.client.resume("upstream")

    def stopProducing(self):
        return None


class ClientProtocol(Protocol):
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
        self.early = bytearray()  # sent after authenticating, before the upstream is ready
        self.paused_for: set = set()
        self.closed = False
        self.key = None
        self.rules = MaskRules(service.detectors, configured=service.mask_columns)
        self.refusing: RefuseAll | None = None  # a masking rule did not resolve: every statement refused

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
            return self._refuse_data(data)
        if self.closed:
            return
        if self.session is not None:  # authenticated: waiting for the session and the upstream
            self.session.count_bytes(IN, len(data))
            self.early += data
            if len(self.early) > PIPELINE_BUFFER:
                self.pause("connecting")
            return
        for c in self.handshake.receive_data(data):
            self._HANDSHAKE[type(c)](self, c)

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

    def _authenticated(self, c):
        self.early += c.rest
        self.session = self.gateway.new_session(c.user, self.connection, self.peer, credential=c.credential)
        self.session.terminate = self.terminate
        self.session.start().addCallbacks(self._session_started, self._session_failed, callbackArgs=(c,))

    _HANDSHAKE = {hs.Reply: _reply, hs.StartTLS: _start_tls, hs.Cancel: _cancel, hs.Refuse: _refuse,
                  hs.AuthFailed: _auth_failed, hs.Authenticated: _authenticated}

    def _session_failed(self, f):
        log.error("postgres session not recorded: {e}", e=f.getErrorMessage())
        self.session = None
        self.fatal("08004", "hoopy cannot record this session: refused")

    def _session_started(self, _, c):
        if self.closed:
            return self.session.end("client disconnected")
        options, rest = parse_options(c.params.get("options", ""))
        ours = attribution(c.params, options)
        self._attribute(application_name=c.params.get("application_name"), model=ours.get("model"),
                        tool_call=ours.get("tool_call"), mcp_server=ours.get("mcp_server"))
        params = {"user": self.settings.upstream_user,
                  "database": self.settings.upstream_database or c.params.get("database") or c.user}
        params.update((k, v) for k, v in c.params.items() if passes_upstream(k))
        if rest:
            params["options"] = " ".join(quote_option(w) for w in rest)
        # The session's search path (read again by the client side when it may change), then
        # the masked columns.
        catalog = SCOPE_QUERY + (catalog_query(self.rules.configured) if self.rules.configured else "")
        d = connect(self.gateway.reactor, self.settings, params, catalog)
        d.addCallbacks(self._upstream_ready, self._upstream_failed)

    def _upstream_failed(self, f):
        e = f.value
        code, message = (e.code or "08001", e.message) if isinstance(e, UpstreamError) else ("08001", str(e))
        self.gateway.upstreams.failed(self.connection, message if code == "08001" else f"{message} ({code})",
                                      reachable=getattr(e, "reached", False))
        if code.startswith("28"):
            # Do not show the client the upstream's authentication story.
            log.error("upstream authentication failed: {m}", m=message)
            code, message = "08001", "the gateway could not authenticate upstream"
        if self.session is not None:
            self.session.event("upstream.failed", "error", code=code, message=message).addErrback(
                _log_failure("upstream failure not recorded"))
        if code not in ("08001", "08006"):
            # e.g. 57P03 "starting up": to the client, the upstream is not available.
            message, code = f"{message} (upstream SQLSTATE {code})", "08001"
        self.fatal(code, "hoopy: " + message)

    def _upstream_ready(self, up):
        self.up = up
        self.gateway.upstreams.succeeded(self.connection)
        if self.closed:
            up.transport.loseConnection()
            return
        ready = up.info
        results = list(ready.catalog) + [[]] * (SCOPE_RESULTS + 2)
        # The catalog's rows (hundreds: pg_catalog's relations) are read once, below; an idle
        # connection must not keep them (nor the bytes that followed ReadyForQuery).
        up.info = attrs.evolve(ready, catalog=[], rest=b"")
        if self.rules.configured:
            self.rules.load(results[SCOPE_RESULTS:SCOPE_RESULTS + 2])
            missing = self.rules.unresolved()
            if missing:
                return self._refuse_everything(up, missing)
        self._count_in, self._count_out = self.session.byte_counts()
        self.cs = cs = ClientSide(self.rules, max_statement=self.gateway.config.gateway.max_statement,
                                  scope=Scope.from_results(results[:SCOPE_RESULTS]), statuses=ready.statuses)
        up.client = self
        self.transport.registerProducer(up.transport, True)
        up.transport.registerProducer(_ClientReading(self), True)
        # The server's own pid (drivers compare it with pg_backend_pid() and with
        # notifications); a secret key of ours binds a cancel to this client.
        key = secrets.token_bytes(4)
        while (ready.pid, key) in self.service.cancel_keys:
            key = secrets.token_bytes(4)
        self.key = (ready.pid, key)
        self.service.cancel_keys[self.key] = self
        greeting = [codec.parameter_status(k, v) for k, v in ready.statuses.items()]
        greeting += [codec.backend_key(ready.pid, key), codec.ready(b"I")]
        cs.to_client.append(b"".join(greeting))
        self.timer.cancel()
        if ready.rest:
            cs.receive_upstream(ready.rest)
        early, self.early = bytes(self.early), bytearray()
        self.resume("connecting")
        cs.receive_data(early)
        self.run()

    # --- a masking rule that does not resolve: fail closed -------------------------------
    def _refuse_everything(self, up, missing):
        """A masked column or table that the upstream catalog does not have (a typo, a table
        not created yet) would mask nothing: this session runs no statement at all. The client
        is answered as if connected, and every statement it sends is refused naming the rule;
        a new connection reads the catalog again, so the connection serves once the rule
        resolves."""
        # Nothing goes upstream: the connection is closed before the client is told anything.
        self.up = None
        up.transport.write(codec.msg(b"X"))  # Terminate: a clean goodbye, not an unexpected EOF
        up.transport.loseConnection()
        rules = [self.service.mask_rules.get(c, repr(c)) for c in missing]
        database = self.settings.upstream_database or "the client's database"
        message = (f"hoopy: masking rule {'; '.join(rules)} does not resolve in the upstream catalog "
                   f"of {database} (no such column or table): connection {self.connection.name} "
                   "refuses every statement until it does")
        log.error("postgres {c}: {m}", c=self.connection.name, m=message)
        # On the record before the client hears anything (its statements wait in `early`).
        d = self.session.event("masking.unresolved", "error", rules=rules, columns=missing, message=message)
        d.addErrback(_log_failure("masking.unresolved not recorded"))
        d.addCallback(lambda _: self._start_refusing(up.info, message))
        d.addErrback(self._internal_error, "refusing")

    def _start_refusing(self, ready, message):
        if self.closed:
            return
        self.refusing = RefuseAll("42703", message)
        greeting = [codec.parameter_status(k, v) for k, v in ready.statuses.items()]
        # No cancel key of ours is registered: nothing runs that a cancel could stop.
        greeting += [codec.backend_key(ready.pid, secrets.token_bytes(4)), codec.ready(b"I")]
        self.timer.cancel()
        self.transport.write(b"".join(greeting))
        early, self.early = bytes(self.early), bytearray()
        self.resume("connecting")
        self._refuse_data(early, counted=True)

    def _refuse_data(self, data: bytes, counted: bool = False):
        if self.closed or not data:
            return
        if not counted:
            self.session.count_bytes(IN, len(data))
        assert self.refusing is not None  # called only once _refuse_everything set it
        out, close = self.refusing.receive_data(data)
        if out:
            self.session.count_bytes(OUT, len(out))
            stream(self.transport).write(out)
        if close:
            self.close(close)

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
                    self._COMMANDS[type(c)](self, c)
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
            assert cs is not None  # the upstream hands its bytes over only once _upstream_ready set it
            cs.receive_upstream(data)
            self.run()

    def upstream_lost(self):
        if not self.closed:
            self.up = None
            self.fatal("08006", "hoopy: the upstream server closed the connection")

    def _decide(self, c):
        if c.refusal:
            op = c.operation
            d = self.session.event("operation", "refused", reason=c.refusal, sql=op.detail["sql"],
                                   units=[str(u) for u in op.units])
            d.addBoth(lambda _: Deny(c.refusal))
            d.addCallback(self._decided)
            d.addErrback(self._internal_error, "judging")
            return
        # The answer as a call (no Deferred chain of our own after the store's): a decision that
        # fails and a _decided that raises both end the connection (fail closed), as before.
        self.session.decide_then(c.operation, self._decided_or_fail, self._judging_failed)

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

    def _check(self, c):
        """A Parse: refused if the policy would refuse its statement; else it goes upstream
        with no event (its Bind is decided and recorded)."""
        op = c.operation
        reason, rule = c.refusal, None
        if reason is None:
            try:
                j = self.session.judge(op)
            except Exception as e:  # fail closed
                log.failure("judging a Parse")
                j = Deny(f"hoopy could not judge this statement ({type(e).__name__})")
                reason = j.reason
            else:
                if j.outcome != "deny":  # allow, or approve: its Bind is held
                    return self._decided(Allow(j.rule))
                reason, rule = j.reason, j.rule
        d = self.session.event("operation", "refused", reason=reason, rule=rule, stage="parse",
                               sql=op.detail["sql"], units=[str(u) for u in op.units])
        d.addBoth(lambda _: Deny(reason, rule))
        d.addCallback(self._decided)
        d.addErrback(self._internal_error, "judging")

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

    def _classify(self, c):
        # On a thread, one large statement at a time gateway-wide (its memory is the bound).
        d = PARSES.classify(self.gateway.reactor, c.sql, c.scope)
        d.addCallback(self._classified)
        d.addErrback(self._internal_error, "classifying")

    def _classified(self, result):
        if not self.closed:
            self.cs.classified(result)
            self.run()

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

    _COMMANDS = {cmd.Decide: _decide, cmd.Check: _check, cmd.Classify: _classify, cmd.Record: _record, cmd.Trailing: _trailing,
                 cmd.Redacted: _redacted, cmd.Attribute: _attribute_command, cmd.CancelUpstream: cancel_upstream,
                 cmd.Close: _close}
