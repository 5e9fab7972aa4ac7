"""The client side: a thin Twisted adapter that speaks PostgreSQL to clients.

Startup and authentication (SCRAM against the identity's verifier), then
every client message in order: statements are judged before anything that
runs them goes upstream; replies come back through a queue of expected
replies (pipelining), masking where a rule applies and bytes untouched
where none can.
"""
from __future__ import annotations

import collections
import re
import secrets
import time

from twisted.internet import threads
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from hoopy.policy.masking import redact_text
from hoopy.policy.rules import Operation, Unit
from hoopy.policy.verdicts import Allow, Deny, Hold
from hoopy.session import IN, OUT
from hoopy.postgres import codec, scram
from hoopy.postgres.backend import UpstreamError, connect, send_cancel
from hoopy.postgres.classify import ANY_OBJECT, ClassifyError, classify
from hoopy.postgres.params import decode_param
from hoopy.postgres.rows import FUNCTIONS_QUERY, MaskRules, RowPlan, catalog_query
from hoopy.postgres.startup import (
    PRIVATE_PARAMS, lexing_unsafe, parse_options, quote_ident, quote_option, settings_problem, startup_keys)
from hoopy.sockwrite import write_now

log = Logger()

MAX_SQL_RECORDED = 100_000
ABORT_SQL = "SELECT 1/0 AS hoopy_refused_this_statement"  # fails: aborts the upstream transaction
ABORT_PORTAL = "hoopy refused this statement"  # no such portal: Execute of it fails
# Catalog views holding sample values of columns (histograms, most common values).
STATISTICS = frozenset(f"pg_catalog.{n}" for n in (
    "pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic", "pg_statistic_ext_data"))
_VALUE_START = re.compile(r"[:\"'`\u0080-\U0010ffff]")
PIPELINE_BUFFER = 1024 * 1024  # client bytes read ahead while a statement is judged
LARGE_SQL = 64 * 1024  # longer statements are parsed off the reactor thread
MAX_CLIENT_MESSAGE = 256 * 1024 * 1024
MAX_AUTH_MESSAGE = 64 * 1024  # as the server's own limit on an authentication token
class Pending:
    """One reply the client is owed, in order."""

    __slots__ = ("kind", "raw", "sql", "classified", "plan", "rows", "start", "portal", "tag",
                 "error", "target", "copy")

    def __init__(self, kind, raw=None, sql=None, classified=None, portal=None):
        self.kind = kind
        self.raw = raw  # synthetic: bytes to send when this reaches the head
        self.sql = sql
        self.classified = classified
        self.plan = None
        self.rows = 0
        self.start = time.monotonic()
        self.portal = portal
        self.tag = None
        self.error = None
        self.target = None  # describe_internal: the Execute it describes for
        self.copy = False


class PortalInfo:
    __slots__ = ("sql", "params", "result_formats", "judged", "plan", "classified", "executed")

    def __init__(self, sql, params, result_formats):
        self.sql = sql
        self.params = params
        self.result_formats = result_formats
        self.judged = False
        self.plan = None
        self.classified = None
        self.executed = False  # an Execute went upstream (a later one resumes a suspended portal)


def _classify_or_error(sql):
    try:
        return classify(sql)
    except ClassifyError as e:
        return e


def _nodelay(transport):
    # Small request/reply messages: Nagle plus delayed ACKs would add 40 ms.
    try:
        transport.setTcpNoDelay(True)
    except Exception:
        pass


@implementer(IPushProducer)
class _ClientReading:
    """The client connection as the producer of what we write upstream."""

    def __init__(self, frontend):
        self.frontend = frontend

    def pauseProducing(self):
        self.frontend.pause("upstream")

    def resumeProducing(self):
        self.frontend.resume("upstream")

    def stopProducing(self):
        pass


class Frontend(Protocol):
    def __init__(self, service):
        self.service = service
        self.gateway = service.gateway
        self.connection = service.connection
        self.settings = service.connection.settings
        self.phase = "startup"
        self.sreader = codec.StartupReader()
        # Before authentication only SASL/password messages come: kept small, so
        # an unauthenticated peer cannot make us buffer a huge message.
        self.reader = codec.MessageReader(MAX_AUTH_MESSAGE)
        self.ureader = codec.MessageReader()
        self.tls = False
        self.session = None
        self.up = None
        self.queue: collections.deque = collections.deque()
        self.upbuf: list = []  # messages for upstream not yet written
        self.paused_for: set = set()  # why reading from the client is paused
        self.statements: dict = {}  # name -> (sql, param types)
        self.portals: dict = {}
        self.prepared: dict = {}  # SQL PREPARE name -> units
        self.skipping = False
        self.upstream_skip = False  # the server ignores everything until the next Sync
        self.waiting = False
        self.tx_status = b"I"
        self.search_path_changed = False
        self.lexer_unsafe = False
        self.user_functions = frozenset()
        self.held = None
        self.key = None
        self.rules = MaskRules(service.detectors, configured=service.mask_columns)

    # --- plumbing ------------------------------------------------------------
    @property
    def peer(self) -> str:
        try:
            a = self.transport.getPeer()
            return f"{a.host}:{a.port}"
        except Exception:
            return "?"

    def connectionMade(self):
        self._peer = self.peer
        _nodelay(self.transport)
        self.service.clients.add(self)
        self.timeout = self.gateway.reactor.callLater(60, self._startup_timeout)

    def _startup_timeout(self):
        if self.phase in ("startup", "auth"):
            self.fatal("08P01", "authentication timed out")

    def send(self, data: bytes):
        if self.session is not None:
            self.session.count_bytes(OUT, len(data))
        self.transport.write(data)

    def pause(self, reason: str):
        """Stop reading from the client until every reason to is gone."""
        if not self.paused_for:
            self.transport.pauseProducing()
        self.paused_for.add(reason)

    def resume(self, reason: str):
        if reason in self.paused_for:
            self.paused_for.discard(reason)
            if not self.paused_for and self.phase != "closed":
                self.transport.resumeProducing()

    def _pause_if_full(self):
        if len(self.reader.buf) > PIPELINE_BUFFER:
            self.pause("judging")

    def fatal(self, code: str, message: str):
        if self.phase == "closed":
            return
        try:
            self.transport.write(codec.error(code, message, "FATAL"))
        except Exception:
            pass
        self.close(message)

    def close(self, reason: str):
        if self.phase == "closed":
            return
        self.phase = "closed"
        self.transport.loseConnection()
        if self.up is not None and self.up.transport is not None:
            self.up.transport.loseConnection()
        self._end(reason)

    def _end(self, reason):
        if self.held is not None and self.session is not None:
            self.session.cancel_holds(reason)
        if self.session is not None:
            return self.session.end(reason)

    def dataReceived(self, data: bytes):
        try:
            if self.phase == "startup":
                self.sreader.feed(data)
                self._startup_packets()
            elif self.phase == "closed":
                return
            else:
                if self.session is not None:
                    self.session.count_bytes(IN, len(data))
                self.reader.feed(data)
                if self.phase == "auth":
                    self._auth_messages()
                elif self.phase == "ready":
                    self.pump()
                    if self.waiting:
                        self._pause_if_full()
        except codec.ProtocolError as e:
            self.fatal("08P01", f"invalid frontend message: {e}")

    def connectionLost(self, reason):
        self.service.clients.discard(self)
        if self.timeout.active():
            self.timeout.cancel()
        if self.key is not None:
            self.service.cancel_keys.pop(self.key, None)
        if self.phase == "closed":
            return
        busy = any(p.kind in ("execute", "query") for p in self.queue)
        self.phase = "closed"
        if self.up is not None and self.up.transport is not None:
            if busy:
                # Stop the query upstream rather than drain it into memory.
                send_cancel(self.gateway.reactor, self.settings, self.up.pid, self.up.key)
            self.up.transport.loseConnection()
        self._end("client disconnected" if not busy else "client disconnected mid-result")

    # --- startup --------------------------------------------------------------
    def _startup_packets(self):
        while self.phase == "startup":
            payload = self.sreader.next()
            if payload is None:
                return
            s = codec.parse_startup(payload)
            if s.code == codec.SSL_REQUEST:
                if self.sreader.buf:
                    raise codec.ProtocolError("data after SSLRequest before the TLS handshake")
                if self.service.tls_context is not None and not self.tls:
                    self.transport.write(b"S")
                    self.transport.startTLS(self.service.tls_context)
                    self.tls = True
                else:
                    self.transport.write(b"N")
            elif s.code == codec.GSSENC_REQUEST:
                self.transport.write(b"N")
            elif s.code == codec.CANCEL_REQUEST:
                self.service.cancel(s.pid, s.key)
                self.phase = "closed"
                self.transport.loseConnection()
                return
            else:
                return self._startup(s)

    def _startup(self, s):
        params = s.params
        user = params.get("user")
        if not user:
            return self.fatal("28000", "no PostgreSQL user name specified in startup packet")
        if "replication" in params and params["replication"].lower() not in ("false", "0", "off", "no"):
            return self.fatal("42501", "replication connections are not allowed through hoopy")
        minor = s.code & 0xFFFF
        unknown = [k for k in params if k.startswith("_pq_.")]
        if minor > 0 or unknown:
            # Stay on 3.0 (a 3.2 client, PostgreSQL 18 libpq, carries on).
            self.transport.write(codec.negotiate_protocol(0, unknown))
        self.client_params = params
        self.user = user
        problem = settings_problem(params, parse_options(params.get("options", ""))[1])
        if problem:
            return self.fatal("42501", problem)
        if self.reader.buf or self.sreader.buf:
            self.reader.feed(self.sreader.take_rest())
        if self.settings.client_auth == "password":
            if not self.tls:
                return self.fatal("28000", "this connection requires TLS (sslmode=require)")
            self.scram = None
            self.phase = "auth"
            self.auth_step = 0
            self.transport.write(codec.auth(3))
            if self.reader.buf:
                self._auth_messages()
            return
        ident = self.gateway.identities.get(user)
        verifier = ident.token_scram if ident is not None else None
        cbind = self.service.cbind_data if self.tls else None
        self.scram = scram.ScramServer(verifier, cbind, user)
        mechs = ([scram.MECH_PLUS] if cbind is not None else []) + [scram.MECH]
        self.phase = "auth"
        self.auth_step = 0
        self.transport.write(codec.auth(10, b"".join(codec.cstr(m) for m in mechs) + b"\0"))
        if self.reader.buf:
            self._auth_messages()

    def _auth_messages(self):
        while self.phase == "auth":
            m = self.reader.next()
            if m is None:
                return
            t, p = m
            if t != b"p":
                raise codec.ProtocolError(f"expected a password message, got {t!r}")
            try:
                if self.scram is None:  # cleartext over TLS
                    token = codec.Cursor(p).cstr()
                    if self.gateway.identities.authenticate_token(self.user, token) is None:
                        raise scram.ScramError("wrong token")
                    self.transport.write(codec.auth(0))
                    self.phase = "connecting"
                    self._authenticated()
                elif self.auth_step == 0:
                    mech, data = codec.parse_sasl_initial(p)
                    self.transport.write(codec.auth(11, self.scram.first(mech, data)))
                    self.auth_step = 1
                else:
                    final = self.scram.final(p)
                    self.transport.write(codec.auth(12, final) + codec.auth(0))
                    self.phase = "connecting"
                    self._authenticated()
            except scram.ScramError as e:
                self.gateway.auth_failed(self.connection, self._peer, self.user,
                                         "password" if self.scram is None else "scram-sha-256", str(e))
                return self.fatal("28P01", f'password authentication failed for user "{self.user}"')

    def _authenticated(self):
        self.reader.max_size = MAX_CLIENT_MESSAGE
        self.session = self.gateway.new_session(self.user, self.connection, self._peer)
        self.session.terminate = self.terminate
        d = self.session.start()
        d.addCallbacks(self._session_started, self._session_failed)

    def _session_failed(self, f):
        log.error("postgres session not recorded: {e}", e=f.getErrorMessage())
        self.session = None
        self.fatal("08004", "hoopy cannot record this session: refused")

    def _session_started(self, _):
        if self.phase == "closed":
            return self.session.end("client disconnected")
        ours, rest = parse_options(self.client_params.get("options", ""))
        self.session.attribute(application_name=self.client_params.get("application_name"),
                               model=ours.get("model"), tool_call=ours.get("tool_call"),
                               mcp_server=ours.get("mcp_server"))
        if "search_path" in startup_keys(self.client_params, rest):
            self.search_path_changed = True
        up = {"user": self.settings.upstream_user,
              "database": self.settings.upstream_database or self.client_params.get("database") or self.user}
        for k, v in self.client_params.items():
            if k not in PRIVATE_PARAMS and not k.startswith("_pq_."):
                up[k] = v
        if rest:
            up["options"] = " ".join(quote_option(w) for w in rest)
        catalog = FUNCTIONS_QUERY + (catalog_query(self.rules.configured) if self.rules.configured else "")
        d = connect(self.gateway.reactor, self.settings, up, catalog)
        d.addCallbacks(self._upstream_ready, self._upstream_failed)

    def _upstream_failed(self, f):
        e = f.value
        code, message = (e.code, e.message) if isinstance(e, UpstreamError) else ("08001", str(e))
        if code.startswith("28"):
            # Do not show the client the upstream's authentication story.
            log.error("upstream authentication failed: {m}", m=message)
            message = "the gateway could not authenticate upstream"
            code = "08001"
        if self.session is not None:
            self.session.event("upstream.failed", "error", code=code, message=message)
        if code not in ("08001", "08006"):
            # e.g. 57P03 "starting up": to the client, the upstream is not available.
            message = f"{message} (upstream SQLSTATE {code})"
            code = "08001"
        self.fatal(code, "hoopy: " + message)

    def _upstream_ready(self, backend):
        self.up = backend
        if self.phase == "closed":
            backend.transport.loseConnection()
            return
        self.user_functions = frozenset(r[0] for r in (backend.catalog or [[]])[0])
        if self.rules.configured:
            self.rules.load((backend.catalog + [[], [], []])[1:3])
        backend.frontend = self
        self.transport.registerProducer(backend.transport, True)
        # And the other way: an upstream that does not keep up (a COPY FROM
        # faster than the server takes it) stops our reading from the client.
        backend.transport.registerProducer(_ClientReading(self), True)
        pid = secrets.randbits(31)
        key = secrets.token_bytes(4)
        self.key = (pid, key)
        self.service.cancel_keys[self.key] = self
        self.lexer_unsafe = any(lexing_unsafe(k, v) for k, v in backend.statuses.items())
        out = [codec.parameter_status(k, v) for k, v in backend.statuses.items()]
        out.append(codec.backend_key(pid, key))
        out.append(codec.ready(b"I"))
        self.send(b"".join(out))
        self.phase = "ready"
        self.timeout.cancel()
        self.pump()

    def cancel_upstream(self):
        if self.up is None:
            return
        pid, key = self.up.pid, self.up.key
        if self.session is None:
            send_cancel(self.gateway.reactor, self.settings, pid, key)
            return
        # On the record first, as every operation; a cancel only stops work,
        # so it goes upstream even when the record cannot be written.
        d = self.session.event("cancel", "ok")
        d.addErrback(lambda f: log.error("cancel not recorded: {e}", e=f.getErrorMessage()))
        d.addBoth(lambda _: send_cancel(self.gateway.reactor, self.settings, pid, key))

    def terminate(self, reason):
        if self.phase != "closed":
            try:
                self.transport.write(codec.error("57P01", f"terminating connection: {reason}", "FATAL"))
            except Exception:
                pass
            self.phase = "closed"
            self.transport.loseConnection()
            if self.up is not None and self.up.transport is not None:
                self.up.transport.loseConnection()
        return self._end(reason)

    # --- client messages ------------------------------------------------------
    def pump(self):
        try:
            while not self.waiting and self.phase == "ready":
                m = self.reader.next()
                if m is None:
                    return
                self.handle(*m)
        finally:
            self._flush_upstream()

    def forward(self, t: bytes, p: bytes):
        # Collected while the client's bytes are handled, sent in one write
        # (a pipelined Parse/Bind/Describe/Execute/Sync is one send upstream).
        self.upbuf.append(codec.msg(t, p))

    def _flush_upstream(self):
        if self.upbuf and self.up is not None and self.up.transport is not None:
            data = b"".join(self.upbuf)
            self.upbuf.clear()
            if self.phase != "closed":
                write_now(self.up.transport, data)

    def handle(self, t: bytes, p: bytes):
        if t == b"X":
            return self.close("client terminated")
        if (self.skipping or self.upstream_skip) and t != b"S":
            # upstream_skip: after an error in the extended protocol the server
            # ignores every message (Query too) until Sync, and answers none.
            return
        if t == b"Q":
            return self.simple_query(codec.parse_query(p))
        if t == b"P":
            parse = codec.parse_parse(p)
            if parse.name and (parse.name in self.statements or parse.name in self.prepared):
                # The server refuses it and keeps the statement it has: what a
                # Bind of the name runs is still that one.
                return self.refuse_now(f'prepared statement "{parse.name}" already exists', "42P05")
            prev = self.statements.get(parse.name)
            entry = self.statements[parse.name] = (parse.query, parse.param_types)
            self.forward(t, p)
            pending = Pending("parse")
            pending.target = (self.statements, parse.name, entry, prev)
            return self.expect(pending)
        if t == b"B":
            b = codec.parse_bind(p)
            stmt = self.statements.get(b.statement)
            if stmt is None or b.statement in self.prepared:
                # An SQL PREPARE shares the namespace: judged as EXECUTE of the name
                # (the units it was prepared with, and any protocol statement's).
                stmt = (f"EXECUTE {quote_ident(b.statement)}", ())
            sql, types = stmt
            fmts = b.param_formats
            params = [decode_param(v, fmts[0] if len(fmts) == 1 else (fmts[i] if fmts else 0),
                                   types[i] if i < len(types) else 0) for i, v in enumerate(b.params)]
            info = PortalInfo(sql, params, b.result_formats)

            # Judged at Bind, not at Execute: planning an unnamed statement with its parameters
            # already runs code (IMMUTABLE functions are folded into constants at Bind).
            def proceed(c):
                info.judged = True
                info.classified = c
                prev = self.portals.get(b.portal)
                self.portals[b.portal] = info
                self.forward(t, p)
                pending = Pending("bind")
                pending.target = (self.portals, b.portal, info, prev)
                self.expect(pending)

            return self.judge(sql, params, proceed, self.refuse_now, raw_params=b.params)
        if t == b"D":
            kind, name = codec.parse_describe(p)
            self.forward(t, p)
            return self.expect(Pending("describe_S" if kind == b"S" else "describe_P"))
        if t == b"E":
            portal, _ = codec.parse_execute(p)
            return self.execute(portal, p)
        if t == b"C":
            kind, name = codec.parse_describe(p)
            pending = Pending("close")
            if kind == b"S":
                self.statements.pop(name, None)  # an unknown name is judged as admin: no undo
                self.prepared.pop(name, None)  # one namespace with SQL PREPARE
            else:
                # An unknown portal is judged as a FETCH: if the server skips this
                # Close, the portal (and what it runs) stays.
                pending.target = (self.portals, name, None, self.portals.pop(name, None))
            self.forward(t, p)
            return self.expect(pending)
        if t == b"S":
            refused_in_tx = self.skipping == "refused" and self.tx_status == b"T" and not self.upstream_skip
            self.skipping = False
            self.upstream_skip = False
            self.portals.pop("", None)
            if refused_in_tx:
                # Our refusal must abort the transaction as a server error would:
                # an Execute of a portal that cannot exist fails (or, if the server
                # is already skipping after an error, is ignored) before the Sync.
                self.forward(b"E", codec.cstr(ABORT_PORTAL) + b"\0\0\0\0")
                self.forward(t, p)
                return self.expect(Pending("abort_sync"))
            self.forward(t, p)
            return self.expect(Pending("sync"))
        if t == b"H":
            return self.forward(t, p)
        if t in (b"d", b"c", b"f"):
            return self.forward(t, p)
        if t == b"F":
            return self.expect(Pending("synthetic", raw=codec.error(
                "42501", "hoopy: function calls by OID (fastpath) are not allowed") + codec.ready(self.tx_status)))
        raise codec.ProtocolError(f"unknown message type {t!r}")

    # --- judging --------------------------------------------------------------
    def _operation(self, sql, classified, params=None, raw_params=None):
        detail = {"sql": sql if len(sql) <= MAX_SQL_RECORDED else sql[:MAX_SQL_RECORDED] + "..."}
        # What a retry-mode approval is bound to: the whole SQL text and the parameters' exact bytes
        # (the recorded text and values may be shortened).
        canonical = Operation.canonical_of(sql, [None if v is None else bytes(v).hex() for v in raw_params]
                                           if raw_params is not None else params)
        if params is not None:
            detail["params"] = params
        units = list(classified.units)
        for name in self.user_functions & (classified.bare_functions | classified.dotted):
            # May call a user-defined function of that name ("t.f" is f(t)).
            units.append(Unit("write", f"public.{name}()"))
        for name in classified.executes:
            units.extend(self._prepared_units(name))
        return Operation("postgres", "statement", detail["sql"][:2000], tuple(dict.fromkeys(units)), detail,
                         canonical=canonical)

    def _prepared_units(self, name):
        """What EXECUTE of a name may run: the units an SQL PREPARE of it was judged
        with and those of a protocol statement of that name (one namespace)."""
        units = list(self.prepared.get(name, ()))
        if name in self.statements:
            c = _classify_or_error(self.statements[name][0])
            if isinstance(c, ClassifyError) or c.executes:
                units.append(Unit("admin", ANY_OBJECT))
            else:
                units.extend(c.units)
                units.extend(Unit("write", f"public.{f}()")
                             for f in self.user_functions & (c.bare_functions | c.dotted))
        return units or [Unit("admin", ANY_OBJECT)]

    def _local_refusal(self, c) -> str | None:
        """Refusals that need no rule: what the gateway cannot judge or mask safely."""
        if self.lexer_unsafe:
            return ("refused: standard_conforming_strings is off or client_encoding is not UTF8 in this "
                    "session, so hoopy cannot read its SQL as the server does")
        if c.unqualified and self.search_path_changed:
            return "refused: search_path was changed in this session, so unqualified table names are ambiguous"
        if self.rules.configured and not STATISTICS.isdisjoint(c.relations):
            return "refused: column statistics (pg_stats) hold sample values of masked columns"
        if self.rules.configured and self.rules.touches(c):
            if c.copy_out:
                return "refused: COPY TO STDOUT of a table with masked columns"
            if c.classes - {"read"} and (c.whole_row or c.executes
                                         or not self.rules.names.isdisjoint(c.column_names)):
                return "refused: this statement would copy a masked column"
        return None

    def judge(self, sql, params, proceed, refuse, raw_params=None):
        """Calls proceed(classified) or refuse(message, code) once decided."""
        if len(sql) > LARGE_SQL:
            # Parsing megabytes of SQL would stall every other session: do it
            # on a thread, with this connection paused meanwhile.
            self.waiting = True
            self.pause("parsing")

            def parsed(c):
                self.waiting = False
                self.resume("parsing")
                if self.phase != "closed":
                    self._judge(sql, params, proceed, refuse, c, raw_params)
                    self.pump()

            d = threads.deferToThreadPool(self.gateway.reactor, self.gateway.reactor.getThreadPool(),
                                          _classify_or_error, sql)
            d.addCallback(parsed)
            d.addErrback(lambda f: (log.failure("classifying", f), self.fatal("XX000", "internal error")))
            return
        self._judge(sql, params, proceed, refuse, _classify_or_error(sql), raw_params)

    def _judge(self, sql, params, proceed, refuse, c, raw_params=None):
        if isinstance(c, ClassifyError):
            self.session.event("operation", "refused", reason=f"syntax error: {c}", sql=sql[:MAX_SQL_RECORDED])
            return refuse(f"syntax error: {c}", "42601")
        if not c.statements:
            return proceed(c)  # empty query: nothing runs
        why = self._local_refusal(c)
        op = self._operation(sql, c, params, raw_params)
        # Further client messages wait in the reader (a pipelining client is
        # paused only once PIPELINE_BUFFER of them has arrived: pausing every
        # statement would cost two epoll changes each).
        self.waiting = True
        self._pause_if_full()
        if why:
            d = self.session.event("operation", "refused", reason=why, sql=op.detail["sql"],
                                   units=[str(u) for u in op.units])
            d.addBoth(lambda _: Deny(why))
        else:
            d = self.session.decide(op)

        def decided(r):
            if self.phase == "closed":
                return
            if isinstance(r, Hold):
                self.held = r
                self.send(codec.notice(
                    f"hoopy: held for approval {r.id} (rule {r.approval.rule!r}); waiting for a reviewer",
                    detail=f"approve with: hoopy approve {r.id}"))
                r.resolution.addCallback(decided)
                r.resolution.addErrback(lambda f: decided(Deny(f"approval failed: {f.getErrorMessage()}")))
                return
            self.held = None
            self.waiting = False
            if isinstance(r, Allow):
                if c.sets_search_path:
                    self.search_path_changed = True
                for name in c.deallocates:
                    if name is None:
                        self.prepared.clear()
                        self.statements.clear()
                    else:
                        self.prepared.pop(name, None)
                        self.statements.pop(name, None)
                for name, units, bare in c.prepares:
                    units = units + tuple(Unit("write", f"public.{f}()") for f in self.user_functions & bare)
                    # If the name is taken the server refuses this PREPARE and keeps
                    # the old one: an EXECUTE is judged with both.
                    self.prepared[name] = tuple(dict.fromkeys(self.prepared.get(name, ()) + units))
                for name in c.declares:
                    # A cursor is a portal. If the name is bound the DECLARE fails, yet a
                    # savepoint can bring the old portal back: judge an Execute as either.
                    old = self.portals.get(name)
                    if old is not None:
                        self.portals[name] = PortalInfo(f"{old.sql}\n;\nFETCH FROM {quote_ident(name)}",
                                                        old.params, ())
                proceed(c)
            else:
                msg = r.reason if r.rule is None or r.rule in r.reason else f"{r.reason} (rule {r.rule!r})"
                if isinstance(r, Deny) and r.approval and r.approval not in msg:
                    msg += f" (approval {r.approval})"
                # (retry mode: what to do next goes in the error's DETAIL)
                refuse("hoopy: " + msg, "42501", getattr(r, "detail", None))
            self.resume("judging")
            self.pump()

        d.addCallback(decided)
        d.addErrback(lambda f: (log.failure("judging", f), self.fatal("XX000", "internal error judging")))

    def simple_query(self, sql):
        def proceed(c):
            self.forward(b"Q", codec.cstr(sql))
            self.expect(Pending("query", sql=sql, classified=c))

        def refuse(message, code, detail=None):
            if self.tx_status == b"T":
                # As the server would: an error inside a transaction block aborts it.
                self.forward(b"Q", codec.cstr(ABORT_SQL))
                return self.expect(Pending("abort", raw=codec.error(code, message, detail=detail)))
            self.expect(Pending("synthetic", raw=codec.error(code, message, detail=detail)
                                + codec.ready(self.tx_status)))

        self.judge(sql, None, proceed, refuse)

    def execute(self, portal, p):
        info = self.portals.get(portal)
        if info is None:
            # Not bound through this protocol: an SQL cursor (DECLARE) shares the
            # namespace. Reading it is a FETCH, judged and masked as one.
            info = self.portals[portal] = PortalInfo(f"FETCH FROM {quote_ident(portal)}", None, ())
        if info.judged:  # at its Bind, or at an earlier Execute of a suspended portal
            return self._send_execute(info, portal, p)

        def proceed(c):
            info.judged = True
            info.classified = c
            self._send_execute(info, portal, p)

        self.judge(info.sql, info.params, proceed, self.refuse_now)

    def _send_execute(self, info, portal, p):
        describe, info.executed = self.rules.active and not info.executed, True  # only the first
        ex = Pending("execute", sql=info.sql, classified=info.classified, portal=portal)
        ex.plan = info.plan
        if describe:
            # We must know the result columns to mask them; the client may not ask.
            d = Pending("describe_internal")
            d.target = (ex, info)
            self.forward(b"D", b"P" + codec.cstr(portal))
            self.expect(d)
        self.forward(b"E", p)
        self.expect(ex)

    def refuse_now(self, message, code="42501", detail=None):
        """An error in the extended protocol: the client's messages up to Sync are skipped."""
        self.skipping = "refused"
        self.expect(Pending("synthetic", raw=codec.error(code, message, detail=detail)))

    def expect(self, pending):
        if self.upstream_skip and pending.kind not in ("sync", "abort_sync", "synthetic"):
            # Sent while the server skips to Sync after an error (a held statement
            # approved meanwhile): ignored upstream, so no reply is coming.
            if pending.kind in ("execute", "query") and pending.sql is not None:
                pending.error = "skipped"
                self._done(pending)
            return
        self.queue.append(pending)
        if pending.kind == "synthetic" and len(self.queue) == 1:
            self._flush_synthetic()

    def _flush_synthetic(self):
        q = self.queue
        while q and q[0].kind == "synthetic":
            self.send(q.popleft().raw)

    # --- upstream replies -----------------------------------------------------
    def upstream_data(self, data: bytes):
        if self.phase == "closed":
            return
        if self.session is not None:
            self.session.count_bytes(OUT, len(data))
        r = self.ureader
        out = []
        q = self.queue
        head = q[0] if q else None
        if head is not None and head.plan is None and head.kind in ("execute", "query"):
            raw, n = r.take_rows(data)  # the common case: a chunk of rows to pass on
            if n:
                head.rows += n
                out.append(raw)
        else:
            r.feed(data)
        try:
            while True:
                head = q[0] if q else None
                if head is not None and head.kind in ("execute", "query"):
                    plan = head.plan
                    if plan is None:
                        raw, n = r.scan_rows()
                        if n:
                            head.rows += n
                            out.append(raw)
                    elif plan.prefilter is not None:
                        raw, n = r.scan_rows()
                        if n:
                            head.rows += n
                            # No pattern can be anywhere in this run of rows: pass it whole.
                            out.append(raw if plan.prefilter.search(raw) is None else plan.apply_many(raw))
                m = r.next()
                if m is None:
                    break
                self._reply(m[0], m[1], out)
                if self.phase == "closed":
                    return  # nothing more may reach the client
        except codec.ProtocolError as e:
            self.transport.write(b"".join(out))
            return self.fatal("08006", f"upstream protocol error: {e}")
        if out:
            write_now(self.transport, b"".join(out))

    def _reply(self, t, p, out):
        q = self.queue
        if (t == b"E" or t == b"N") and self.rules.active:
            p = self._scrub(p, q[0] if q else None)
        elif t == b"A" and self.rules.detectors:
            # NOTIFY payloads are text another session chose: patterns apply.
            c = codec.Cursor(p)
            pid, channel, payload = c.int32(), c.cstr(), c.cstr()
            new, counts = redact_text(payload, self.rules.detectors)
            if counts:
                p = p[:4] + codec.cstr(channel) + codec.cstr(new)
        if t in (b"N", b"A", b"S"):
            if t == b"S":
                c = codec.Cursor(p)
                if lexing_unsafe(c.cstr(), c.cstr()):
                    self.lexer_unsafe = True
            out.append(codec.msg(t, p))
            return
        if not q:
            out.append(codec.msg(t, p))
            if t == b"E" and codec.parse_fields(p).get("S") == "FATAL":
                self.transport.write(b"".join(out))
                out.clear()
                self.close("upstream ended the session")
            return
        head = q[0]
        k = head.kind
        if k in ("abort", "abort_sync"):
            if t == b"E":
                if head.raw:
                    out.append(head.raw)  # the client sees our refusal, not the stand-in error
            elif t == b"Z":
                self.tx_status = p[:1]
                out.append(codec.msg(t, p))
                q.popleft()
                self._flush_pending(out)
            return
        if t == b"E":
            fields = codec.parse_fields(p)
            out.append(codec.msg(t, p))
            if k == "query":
                head.error = fields.get("C")
                return
            if k == "sync":  # cannot happen; be safe
                return
            # The backend now skips to Sync, answering nothing: so do the replies we expect.
            undo = []
            while q and q[0].kind not in ("sync", "abort_sync"):
                e = q.popleft()
                if e.kind in ("parse", "bind", "close") and e.target is not None:
                    undo.append(e)
                elif e.kind == "execute":
                    e.error = fields.get("C")
                    self._done(e)
                elif e.kind == "describe_internal":
                    ex = e.target[0]
                    ex.error = fields.get("C")
                    self._done(ex)
                    if q and q[0] is ex:
                        q.popleft()
            for e in reversed(undo):  # last first: Close p then Bind p leaves p as it was
                self._undo(e)
            if not q:
                # The client has not sent its Sync yet: what it sends until then
                # is ignored upstream, and must expect no reply.
                self.upstream_skip = True
            if fields.get("S") == "FATAL":
                self.transport.write(b"".join(out))
                out.clear()
                self.close("upstream ended the session")
            return
        if k == "describe_internal":
            ex, info = head.target
            if t == b"T":
                ex.plan = info.plan = self._plan(codec.parse_row_description(p), ex.classified,
                                                 info.result_formats)
            q.popleft()
            return
        if k in ("execute", "query"):
            if t == b"D":
                head.rows += 1
                out.append(head.plan.apply(p) if head.plan is not None else codec.msg(t, p))
                return
            if t == b"T" and k == "query":
                head.plan = self._plan(codec.parse_row_description(p), head.classified, None)
                out.append(codec.msg(t, p))
                return
            if t == b"d" and head.plan is not None and head.plan.detectors:
                out.append(codec.msg(t, head.plan.copy_line(p)))
                return
            if t == b"H" and self.rules.detectors:
                if codec.Cursor(p).byte() == b"\x01":
                    # Binary COPY cannot be scanned for patterns: nothing of it may pass.
                    self.cancel_upstream()
                    self.transport.write(b"".join(out))
                    out.clear()
                    return self.fatal("42501", "hoopy: binary COPY TO STDOUT cannot be masked")
                head.plan = RowPlan([], self.rules.detectors)
            out.append(codec.msg(t, p))
            if t == b"C":
                tag = codec.parse_command_tag(p)
                head.tag = tag if head.tag is None or k == "execute" else f"{head.tag}; {tag}"
                if k == "execute":
                    q.popleft()
                    self._done(head)
                elif head.plan is not None:
                    self._redactions(head)
                    head.plan = None
            elif t in (b"s", b"I") and k == "execute":
                q.popleft()
                self._done(head)
            elif t == b"Z":
                self.tx_status = p[:1]
                q.popleft()
                self._done(head)
                self._flush_pending(out)
            return
        out.append(codec.msg(t, p))
        if k == "describe_S" and t == b"t":
            return
        if t == b"Z":
            self.tx_status = p[:1]
        q.popleft()
        self._flush_pending(out)

    def _undo(self, e):
        """A Parse, Bind or Close the server failed or skipped: the name keeps what it had."""
        table, name, new, prev = e.target
        if table.get(name) is new:
            if prev is None:
                table.pop(name, None)
            else:
                table[name] = prev

    def _scrub(self, p: bytes, head) -> bytes:
        """Error and notice texts can quote values ('invalid input syntax for
        type integer: "123-45-6789"'): patterns apply to them, and for a statement
        over masked columns their details are withheld."""
        fields = codec.parse_fields(p)
        c = head.classified if head is not None else None
        changed = False
        if self.rules.configured and (c is None or self.rules.touches(c)):
            for k in ("D", "H", "W", "q"):
                if fields.pop(k, None) is not None:
                    changed = True
            m = fields.get("M", "")
            cut = _VALUE_START.split(m, 1)
            if len(cut) > 1:
                # Before the first colon, quote (any language's: lc_messages) or non-ASCII letter.
                fields["M"] = cut[0].rstrip() + " (details withheld by hoopy: the statement reads masked columns)"
                changed = True
        if self.rules.detectors:
            for k in ("M", "D", "H", "W"):
                if k in fields:
                    new, counts = redact_text(fields[k], self.rules.detectors)
                    if counts:
                        fields[k] = new
                        changed = True
        if not changed:
            return p
        return b"".join(k.encode() + codec.cstr(v) for k, v in fields.items()) + b"\0"

    def _flush_pending(self, out):
        q = self.queue
        while q and q[0].kind == "synthetic":
            out.append(q.popleft().raw)

    def _plan(self, fields, classified, formats):
        plan = self.rules.plan(fields, classified)
        if plan is not None and formats:
            plan.with_formats(formats)
        return plan

    def _redactions(self, p):
        s = p.plan.summary() if p.plan is not None else None
        if not s:
            return
        n = sum(s["columns"].values()) + sum(s["patterns"].values())
        p.plan.columns, p.plan.patterns = {}, {}
        self.session.redacted(n, sql=(p.sql or "")[:2000], **s).addErrback(
            lambda f: log.error("redaction not recorded: {e}", e=f.getErrorMessage()))

    def _done(self, p):
        """A statement finished: record rows, duration and outcome."""
        if self.session is None or p.sql is None:
            return
        self._redactions(p)
        data = {"sql": p.sql[:2000], "duration_ms": round((time.monotonic() - p.start) * 1000, 3)}
        if p.kind == "execute":
            data["rows"] = p.rows if p.tag is None or not p.tag.startswith(("INSERT", "UPDATE", "DELETE", "MERGE")) \
                else codec.rows_from_tag(p.tag)
        else:
            data["rows_returned"] = p.rows
        if p.tag:
            data["tag"] = p.tag
        if p.error:
            data["sqlstate"] = p.error
        self.session.trailing_event("statement", "error" if p.error else "ok", **data)

    def upstream_lost(self, reason):
        if self.phase == "closed":
            return
        self.up = None
        try:
            self.transport.write(codec.error("08006", "hoopy: the upstream server closed the connection", "FATAL"))
        except Exception:
            pass
        self.close("upstream connection lost")
