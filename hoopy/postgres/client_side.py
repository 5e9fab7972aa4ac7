"""The client side of an authenticated session, sans-IO.

``receive_data(bytes)`` takes the client's bytes; ``receive_upstream(bytes)``
(hoopy/postgres/replies.py) the server's. What is to be sent collects in
``to_client`` and ``to_upstream``; what the adapter must do (ask the session
for a decision, record an event, close) in ``commands``. A statement waits
for its decision in a named state (JUDGING, HELD): the client's further
messages wait in the reader meanwhile, and ``decided(verdict)`` resumes.
What a statement is judged as is hoopy/postgres/operations.py; the search
path's upkeep, hoopy/postgres/search_path.py (mixins, one object).
"""
from __future__ import annotations

import collections
from typing import Any

from hoopy.policy.verdicts import Allow, Deny, Hold
from hoopy.postgres import codec, guards, wire
from hoopy.postgres.classify import INLINE_SQL, ClassifyError, Heavy, classify_or_error, known
from hoopy.postgres.copy import MarkerScan
from hoopy.postgres.operations import MAX_SQL_RECORDED, StatementOperations
from hoopy.postgres.params import decode_param
from hoopy.postgres.pipeline import (
    Check, Classify, Close, Decide, Expected, Judging, Kind, Portal, Record, Skip, State)
from hoopy.postgres.replies import UpstreamReplies
from hoopy.postgres.scope import Scope
from hoopy.postgres.search_path import SearchPath
from hoopy.postgres.startup import quote_ident

MAX_CLIENT_MESSAGE = 256 * 1024 * 1024
ABORT_SQL = "SELECT 1/0 AS hoopy_refused_this_statement"  # fails: aborts the upstream transaction
ABORT_PORTAL = "hoopy refused this statement"  # no such portal: Execute of it fails
# Python 3.11 reads an Enum member (``State.READY``) through EnumType's ``__getattr__`` hook, at
# five times a global's cost: what every statement reads is read from these.
_READY, _JUDGING, _HELD = State.READY, State.JUDGING, State.HELD
_STOPPED = (State.CLOSED, State.ERROR)
_WAITING = (State.PARSING, State.READING_PATH, State.JUDGING, State.HELD)
_DECIDING = (State.JUDGING, State.HELD)
_SKIP_NO, _SKIP_UPSTREAM = Skip.NO, Skip.UPSTREAM
_QUERY, _PARSE, _EXECUTE, _SYNC, _SYNTHETIC = Kind.QUERY, Kind.PARSE, Kind.EXECUTE, Kind.SYNC, Kind.SYNTHETIC


_EXTENDED = (wire.PARSE, wire.BIND, wire.DESCRIBE, wire.EXECUTE, wire.CLOSE, wire.FLUSH)


class ClientSide(UpstreamReplies, StatementOperations, SearchPath):
    def __init__(self, rules, *, max_statement: int, scope: Scope | None = None, statuses=None):
        self.state = State.READY
        self.skip = Skip.NO
        self.rules = rules  # rows.MaskRules
        self.reader = codec.MessageReader(MAX_CLIENT_MESSAGE, {wire.QUERY: max_statement, wire.PARSE: max_statement})
        self.ubuf = bytearray()  # the server's bytes of an unfinished message
        self.max_statement = max_statement
        self.to_client: list = []
        self.to_upstream: list = []
        self.commands: list = []
        self.queue: collections.deque = collections.deque()
        self.statements: dict = {}  # name -> (sql, param types)
        self.portals: dict = {}  # name -> Portal
        self.prepared: dict = {}  # SQL PREPARE name -> the Parsed statements it may hold
        self.prepared_sql: dict = {}  # SQL PREPARE name -> the SQL texts that prepared them
        self.pending: Judging | None = None
        self.held: Hold | None = None
        self.tx_status = wire.IDLE
        # The session's search path, as read upstream (hoopy/postgres/scope.py): names are
        # judged with it. Unknown from a statement that may change it until read again.
        self.scope = scope if scope is not None else Scope.unknown()
        self.scope_due = False  # read it again at the next chance (a Query, a Parse, after a Sync)
        self.scope_reading: Expected | None = None  # the read in flight
        self.path_dirty = False  # changed inside a transaction: its end may change it back
        self.ext_open = False  # extended-protocol messages went upstream since the last Sync
        self.unsafe_settings: dict = {}  # server settings under which SQL may read otherwise
        self.marker_scan = MarkerScan()  # COPY FROM STDIN data
        self.copy_in_refused = False
        self.last_classified: tuple[Scope, str, Any] | None = None  # (scope, sql, Classified): a Parse's, for its Bind
        for k, v in (statuses or {}).items():
            self.parameter_status(k, v)

    @property
    def waiting(self) -> bool:
        return self.state in _WAITING

    @property
    def busy(self) -> bool:
        """A statement is running upstream (a client that leaves now should cancel it)."""
        return any(e.kind in (Kind.EXECUTE, Kind.QUERY) for e in self.queue)

    # --- the client's messages ------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        if self.state in _STOPPED:
            return
        self.reader.feed(data)
        self.pump()

    def pump(self) -> None:
        """Handle the client's messages until one must wait for a decision."""
        reader = self.reader
        try:
            while self.state is _READY:
                m = reader.next()
                if m is None:
                    return
                t, p = m
                if self.copy_in_refused and t not in (wire.COPY_DATA, wire.COPY_DONE, wire.COPY_FAIL):
                    self.copy_in_refused = False
                    self.marker_scan = MarkerScan()
                if t == wire.TERMINATE:
                    self.close("client terminated")
                    return
                if self.skip is not _SKIP_NO and t != wire.SYNC:
                    # After an error the server ignores every message (Query too) up to Sync,
                    # and answers none: so does the gateway.
                    continue
                if type(p) is codec.Oversized:
                    self._oversized(t, p)
                    continue
                handler = self._MESSAGES.get(t)
                if handler is None:
                    raise codec.ProtocolError(f"unknown message type {t!r}")
                handler(self, p)
        except codec.ProtocolError as e:
            self.fatal("08P01", f"invalid frontend message: {e}")

    def fatal(self, code: str, message: str) -> None:
        if self.state in (State.CLOSED, State.ERROR):
            return
        self.to_client.append(codec.error(code, message, "FATAL"))
        self.state = State.ERROR
        self.commands.append(Close(message))

    def close(self, reason: str) -> None:
        if self.state not in (State.CLOSED, State.ERROR):
            self.state = State.CLOSED
            self.commands.append(Close(reason))

    def forward(self, t: bytes, p: bytes) -> None:
        self.to_upstream.append(codec.msg(t, p))
        if t == wire.SYNC or t == wire.QUERY:
            self.ext_open = False
        elif t in _EXTENDED:
            self.ext_open = True  # an extended-protocol batch until its Sync

    def expect(self, e: Expected) -> None:
        if self.skip is _SKIP_UPSTREAM and e.kind not in (_SYNC, Kind.ABORT_SYNC, _SYNTHETIC):
            # Sent while the server skips to Sync after an error (a held statement approved
            # meanwhile): ignored upstream, so no reply is coming.
            if e.kind in (Kind.EXECUTE, Kind.QUERY) and e.sql is not None:
                e.error = "skipped"
                self.done(e)
            return
        self.queue.append(e)
        if e.kind is _SYNTHETIC and len(self.queue) == 1:
            self.flush_synthetic()

    def flush_synthetic(self) -> None:
        q = self.queue
        while q and q[0].kind is _SYNTHETIC:
            self.to_client.append(q.popleft().raw)

    def record(self, kind: str, outcome: str | None, **data) -> None:
        self.commands.append(Record(kind, outcome, data))

    # --- one handler per message type ------------------------------------------------
    def _query(self, p: bytes) -> None:
        try:
            sql = codec.parse_query(p)
        except codec.NotUtf8 as e:
            return self._not_utf8(e, p, Kind.QUERY)
        self.judge(Judging(_QUERY, sql))

    def _parse(self, p: bytes) -> None:
        try:
            parse = codec.parse_parse(p)
        except codec.NotUtf8 as e:
            return self._not_utf8(e, p, Kind.PARSE)
        self.read_scope_if_due()  # before this batch opens
        if parse.name and (parse.name in self.statements or parse.name in self.prepared):
            # The server refuses it and keeps the statement it has: what a Bind of the
            # name runs is still that one.
            return self.refuse_extended(f'prepared statement "{parse.name}" already exists', "42P05")
        # Judged before it goes upstream: parsing runs nothing, but the server's parse
        # analysis opens every relation the statement names and locks it until the
        # transaction ends (RowExclusiveLock on an INSERT's target), and a Describe of the
        # statement shows the columns of a table the caller may not read.
        self.judge(Judging(Kind.PARSE, parse.query, message=p, portal=parse.name, types=parse.param_types))

    def _send_parse(self, j: Judging) -> None:
        prev = self.statements.get(j.portal)
        entry = self.statements[j.portal] = (j.sql, j.types)
        self.forward(wire.PARSE, j.message)
        e = Expected(Kind.PARSE)
        e.target = (self.statements, j.portal, entry, prev)
        self.expect(e)

    def _bind(self, p: bytes) -> None:
        b = codec.parse_bind(p)
        stmt = self.statements.get(b.statement)
        if stmt is None or b.statement in self.prepared:
            # An SQL PREPARE shares the namespace: judged as EXECUTE of the name (the
            # units it was prepared with, and any protocol statement's).
            stmt = (f"EXECUTE {quote_ident(b.statement)}", ())
        sql, types = stmt
        fmts = b.param_formats
        params = [decode_param(v, fmts[0] if len(fmts) == 1 else (fmts[i] if fmts else 0),
                               types[i] if i < len(types) else 0) for i, v in enumerate(b.params)]
        # Judged at Bind, not at Execute: planning an unnamed statement with its parameters
        # already runs code (IMMUTABLE functions are folded into constants at Bind).
        self.judge(Judging(Kind.BIND, sql, params, b.params, p, b.portal, Portal(sql, params, b.result_formats),
                           types=tuple(types)))

    def _describe(self, p: bytes) -> None:
        kind, _ = codec.parse_describe(p)
        self.forward(wire.DESCRIBE, p)
        self.expect(Expected(Kind.DESCRIBE_STATEMENT if kind == wire.STATEMENT else Kind.DESCRIBE_PORTAL))

    def _execute(self, p: bytes) -> None:
        portal, _ = codec.parse_execute(p)
        info = self.portals.get(portal)
        if info is None:
            # Not bound through this protocol: an SQL cursor (DECLARE) shares the namespace.
            # Reading it is a FETCH, judged and masked as one.
            info = self.portals[portal] = Portal(f"FETCH FROM {quote_ident(portal)}", None)
        if info.judged:  # at its Bind, or at an earlier Execute of a suspended portal
            return self.send_execute(info, portal, p)
        self.judge(Judging(Kind.EXECUTE, info.sql, info.params, None, p, portal, info))

    def _close(self, p: bytes) -> None:
        kind, name = codec.parse_describe(p)
        e = Expected(Kind.CLOSE)
        if kind == wire.STATEMENT:
            # Forgotten at its CloseComplete: a Close the server skips after an error
            # leaves the statement there, and a Bind of the name still runs it.
            e.forget = (name,)
        else:
            # An unknown portal is judged as a FETCH: if the server skips this Close, the
            # portal (and what it runs) stays.
            e.target = (self.portals, name, None, self.portals.pop(name, None))
        self.forward(wire.CLOSE, p)
        self.expect(e)

    def _sync(self, p: bytes) -> None:
        refused_in_tx = self.skip is Skip.REFUSED and self.tx_status == wire.IN_TRANSACTION
        self.skip = Skip.NO
        self.portals.pop("", None)
        if refused_in_tx:
            # Our refusal must abort the transaction as a server error would: an Execute of
            # a portal that cannot exist fails (or, if the server is already skipping after
            # an error, is ignored) before the Sync.
            self.forward(wire.EXECUTE, codec.cstr(ABORT_PORTAL) + b"\0\0\0\0")
            self.forward(wire.SYNC, p)
            self.expect(Expected(Kind.ABORT_SYNC))
            return self.read_scope_if_due()
        self.forward(wire.SYNC, p)
        self.expect(Expected(Kind.SYNC))
        self.read_scope_if_due()

    def _flush(self, p: bytes) -> None:
        self.forward(wire.FLUSH, p)

    def _copy_data(self, p: bytes) -> None:
        if self.copy_in_refused:
            return  # the server left COPY at our CopyFail and drops these too
        if self.marker_scan.found(p):
            why = ("refused: this COPY data holds hoopy's redaction marker " + guards.MARKER
                   + ": it would replace real values with the mask")
            self.copy_in_refused = True
            self.record("operation", "refused", reason=why, sql="COPY FROM STDIN (data)")
            # CopyFail: the COPY fails upstream, none of its rows is stored, our reason is its error.
            return self.forward(wire.COPY_FAIL, codec.cstr("hoopy: " + why))
        self.forward(wire.COPY_DATA, p)

    def _copy_end(self, p: bytes, t: bytes) -> None:
        self.marker_scan = MarkerScan()
        if not self.copy_in_refused:
            self.forward(t, p)

    def _copy_done(self, p: bytes) -> None:
        self._copy_end(p, wire.COPY_DONE)

    def _copy_fail(self, p: bytes) -> None:
        self._copy_end(p, wire.COPY_FAIL)

    def _function_call(self, p: bytes) -> None:
        self.expect(Expected(Kind.SYNTHETIC, raw=codec.error(
            "42501", "hoopy: function calls by OID (fastpath) are not allowed") + codec.ready(self.tx_status)))

    _MESSAGES = {
        wire.QUERY: _query,
        wire.PARSE: _parse,
        wire.BIND: _bind,
        wire.DESCRIBE: _describe,
        wire.EXECUTE: _execute,
        wire.CLOSE: _close,
        wire.SYNC: _sync,
        wire.FLUSH: _flush,
        wire.COPY_DATA: _copy_data,
        wire.COPY_DONE: _copy_done,
        wire.COPY_FAIL: _copy_fail,
        wire.FUNCTION_CALL: _function_call,
    }

    # --- refusals ----------------------------------------------------------------
    def refuse_query(self, message: str, code: str, detail: str | None = None) -> None:
        """A refused simple Query: inside a transaction block it aborts the transaction,
        as any error from the server would."""
        error = codec.error(code, message, detail=detail)
        if self.tx_status == wire.IN_TRANSACTION:
            self.forward(wire.QUERY, codec.cstr(ABORT_SQL))
            return self.expect(Expected(Kind.ABORT, raw=error))
        self.expect(Expected(Kind.SYNTHETIC, raw=error + codec.ready(self.tx_status)))

    def refuse_extended(self, message: str, code: str = "42501", detail: str | None = None) -> None:
        """An error in the extended protocol: the client's messages up to Sync are skipped."""
        self.skip = Skip.REFUSED
        self.expect(Expected(Kind.SYNTHETIC, raw=codec.error(code, message, detail=detail)))

    def _refuse(self, kind: Kind, message: str, code: str, detail: str | None = None) -> None:
        (self.refuse_query if kind is Kind.QUERY else self.refuse_extended)(message, code, detail)

    def _oversized(self, t: bytes, p) -> None:
        """SQL text over [gateway] max_statement: refused unread (54000), the session goes on."""
        why = f"statement of {p.length} bytes is over max_statement ({self.max_statement} bytes)"
        self.record("operation", "refused", reason=why, sql=p.head.decode("utf-8", "replace"))
        self._refuse(Kind.QUERY if t == wire.QUERY else Kind.PARSE, "hoopy: " + why, "54000")

    def _not_utf8(self, e, p: bytes, kind: Kind) -> None:
        """As the server: the statement fails with 22021, the session goes on."""
        self.record("operation", "refused", reason=f"statement is not UTF-8: {e}",
                    sql=p[:2000].decode("utf-8", "replace"))
        self._refuse(kind, str(e), "22021")

    # --- judging -----------------------------------------------------------------
    def judge(self, j: Judging, read_path: bool = True) -> None:
        if read_path and self.scope_due:
            self.read_scope_if_due()  # a Query: the upstream is between statements
        if self.scope_reading is not None:
            # The search path is being read again: judge once it is known.
            self.state = State.READING_PATH
            self.pending = j
            return
        if len(j.sql) <= INLINE_SQL:
            scope = self.scope
            last = self.last_classified
            if last is not None and last[0] is scope and last[1] == j.sql:
                return self._judge(j, last[2])  # a Bind of the statement just Parsed (or the same text again)
            c = known(j.sql, scope)  # the steady state: text cached, resolved in this scope
            if c is None:
                try:
                    c = classify_or_error(j.sql, scope, inline=True)
                except Heavy:
                    c = None
            if c is not None:
                self.last_classified = (scope, j.sql, c)
                return self._judge(j, c)
        # A large or deeply nested statement would stall every other session: a thread
        # judges it (one at a time gateway-wide), this connection waiting meanwhile.
        self.state = State.PARSING
        self.pending = j
        self.commands.append(Classify(j.sql, self.scope))

    def classified(self, c) -> None:
        """The answer to a Classify command."""
        if self.state is not State.PARSING:
            return
        self.state = State.READY
        j, self.pending = self.pending, None
        assert j is not None  # PARSING: judge() left it pending
        self._judge(j, c)
        self.pump()

    def _judge(self, j: Judging, c) -> None:
        if isinstance(c, ClassifyError):
            # Cannot be judged (a syntax error, too large, too deep, an internal failure):
            # refused, and the record says why.
            self.record("operation", "refused", reason=c.reason, sqlstate=c.code, sql=j.sql[:MAX_SQL_RECORDED])
            return self._refuse(j.kind, c.reason, c.code)
        masking = self.with_prepared(c) if c.executes else c
        j.classified = masking
        if not c.statements:
            return self._proceed(j)  # an empty query: nothing runs
        self.state = _JUDGING
        self.pending = j
        if j.kind is _PARSE:
            # Only whether it could be allowed: nothing runs yet, and the Bind is decided
            # (and recorded) with its parameters.
            self.commands.append(Check(self._operation(j.sql, c, types=j.types), self.parse_refusal(c, j.sql)))
            return
        self.commands.append(Decide(self._operation(j.sql, c, j.params, j.raw_params, j.types),
                                    self.local_refusal(masking, j.sql, j.raw_params or ())))

    def decided(self, verdict) -> None:
        """The answer to a Decide command (and later to a Hold's resolution)."""
        if self.state not in _DECIDING:
            return
        if isinstance(verdict, Hold):
            self.state = State.HELD
            self.held = verdict
            self.to_client.append(codec.notice(
                f"hoopy: held for approval {verdict.id} (rule {verdict.approval.rule!r}); waiting for a reviewer",
                detail=f"approve with: hoopy approve {verdict.id}"))
            return
        self.state = _READY
        self.held = None
        j, self.pending = self.pending, None
        assert j is not None  # JUDGING or HELD: _judge() left it pending
        if isinstance(verdict, Allow):
            c = j.classified
            assert c is not None  # _judge() set it
            # A Parse runs nothing: what it changes, its Bind does. (Only a statement that may
            # change a namespace the gateway tracks, or one after a change, has anything to do there.)
            if j.kind is not _PARSE and (c.may_change_path or self.path_dirty or c.prepares or c.declares):
                self._allowed(c, j.sql)
            self._proceed(j)
        else:
            msg = verdict.reason if verdict.rule is None or verdict.rule in verdict.reason \
                else f"{verdict.reason} (rule {verdict.rule!r})"
            if isinstance(verdict, Deny) and verdict.approval and verdict.approval not in msg:
                msg += f" (approval {verdict.approval})"
            # (retry mode: what to do next goes in the error's DETAIL)
            self._refuse(j.kind, "hoopy: " + msg, "42501", getattr(verdict, "detail", None))
        self.pump()

    def _allowed(self, c, sql: str | None = None) -> None:
        """What an allowed statement changes in the namespaces the gateway tracks."""
        if c.may_change_path or (self.path_dirty and "TransactionStmt" in c.statements):
            self.search_path_may_change()
        # (DEALLOCATE and DISCARD ALL drop names only once they have run: see forget)
        for name, body in c.prepares:
            # If the name is taken the server refuses this PREPARE and keeps the old one:
            # an EXECUTE is judged with both.
            self.prepared[name] = self.prepared.get(name, ()) + (body,)
            self.prepared_sql[name] = self.prepared_sql.get(name, ()) + (sql,)
        for name in c.declares:
            # A cursor is a portal. If the name is bound the DECLARE fails, yet a savepoint
            # can bring the old portal back: judge an Execute as either.
            old = self.portals.get(name)
            if old is not None:
                self.portals[name] = Portal(f"{old.sql}\n;\nFETCH FROM {quote_ident(name)}", old.params)

    def _proceed(self, j: Judging) -> None:
        c = j.classified
        assert c is not None  # _judge() set it
        if j.kind is _PARSE:
            return self._send_parse(j)
        if j.kind is _QUERY:
            self.forward(wire.QUERY, codec.cstr(j.sql))
            e = Expected(_QUERY, sql=j.sql, classified=c)
            e.forget = c.deallocates
            self.expect(e)
            if self.scope_due and "CopyStmt" not in c.statements:  # (a query now would arrive in the middle of COPY FROM STDIN)
                self.read_scope_if_due()
            return
        info = j.portal_info
        assert info is not None  # a Bind's or an Execute's
        info.judged = True
        info.classified = c
        info.forget = c.deallocates
        if j.kind is _EXECUTE:
            return self.send_execute(info, j.portal, j.message)
        prev = self.portals.get(j.portal)
        self.portals[j.portal] = info
        self.forward(wire.BIND, j.message)
        e = Expected(Kind.BIND)
        e.target = (self.portals, j.portal, info, prev)
        self.expect(e)

    def send_execute(self, info: Portal, portal: str, p: bytes) -> None:
        describe, info.executed = self.rules.active and not info.executed, True  # only the first
        ex = Expected(_EXECUTE, sql=info.sql, classified=info.classified)
        ex.plan = info.plan
        ex.forget, info.forget = info.forget, ()  # once: a second Execute of a done portal runs nothing
        if describe:
            # Masking needs the result columns; the client may not have asked.
            d = Expected(Kind.DESCRIBE_FOR_MASKING)
            d.target = (ex, info)
            self.forward(wire.DESCRIBE, wire.PORTAL + codec.cstr(portal))
            self.expect(d)
        self.forward(wire.EXECUTE, p)
        self.expect(ex)
