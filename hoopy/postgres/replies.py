"""The client side's handling of what the server sends: each reply matched to
the message it answers (the queue of ``Expected``), masked where a rule can
apply, passed on as bytes where none can, and every statement's completion
recorded (statement_record.py, mixed in here). A mixin of ``ClientSide``
(hoopy/postgres/client_side.py): one object, its two directions in two files.
"""
from __future__ import annotations

import collections
import os
import re
import struct
from typing import TYPE_CHECKING

from hoopy.postgres import codec, wire
from hoopy.postgres.copy import BinaryCopyMasker
from hoopy.postgres.replyrun import scan
from hoopy.postgres.pipeline import Attribute, Close, Expected, Kind, Skip, State
from hoopy.postgres.rowplan import CopyMask, RowPlan
from hoopy.postgres.rows import MaskRules
from hoopy.postgres.statement_record import StatementRecord
from hoopy.postgres.values import redact_notations
from hoopy.postgres.startup import lexing_unsafe

# Before the first colon, quote (any language's: lc_messages) or non-ASCII letter.
_VALUE_START = re.compile(r"[:\"'`\u0080-\U0010ffff]")
_STATEMENT = (Kind.EXECUTE, Kind.QUERY)
_ABORTS = (Kind.ABORT, Kind.ABORT_SYNC)
# Enum members read per statement, as globals (see client_side.py: an Enum member costs more on 3.11).
_QUERY, _EXECUTE, _SYNC, _SYNTHETIC = Kind.QUERY, Kind.EXECUTE, Kind.SYNC, Kind.SYNTHETIC
_STOPPED = (State.CLOSED, State.ERROR)
_D = wire.DATA_ROW
# The reply that ends these heads, as its header (_one_reply): taken without the general code.
_PARSE, _BIND = Kind.PARSE, Kind.BIND
_ONE = (_PARSE, _BIND, _SYNC)
_STATUSES = (b"I", b"T", b"E")  # the ReadyForQuery statuses codec.parse_ready takes
_PARSED, _BOUND, _READY = b"1\0\0\0\x04", b"2\0\0\0\x04", b"Z\0\0\0\x05"
_C, _Z = wire.COMMAND_COMPLETE[0], wire.READY_FOR_QUERY[0]  # as replyrun.scan gives a type: an int
# HOOPY_PGREPLY=python: every message of a reply read one at a time, as before skip_run (the
# reference the shortcut is compared with: tests/test_postgres_replyrun.py).
_FAST = os.environ.get("HOOPY_PGREPLY") != "python"


_HI = struct.Struct("!ci")


class UpstreamReplies(StatementRecord):
    # What it shares with the ClientSide it is mixed into (set in ClientSide.__init__).
    ubuf: bytearray
    to_client: list
    queue: collections.deque
    commands: list
    rules: MaskRules
    unsafe_settings: dict

    if TYPE_CHECKING:  # ClientSide's, called from here
        def fatal(self, code: str, message: str) -> None: ...

        def flush_synthetic(self) -> None: ...

        def forget_statements(self, names) -> None: ...

        def scope_read(self, e: Expected) -> None: ...

    def receive_upstream(self, data: bytes) -> None:
        """One pass over what the server sent: whole messages that pass unchanged are
        copied out as runs of bytes; only the ones that matter to the gateway (the end
        of a statement, an error, what masking must see) are parsed."""
        if self.state in _STOPPED:
            return
        buf: bytes | bytearray = self.ubuf
        if buf:
            buf += data
        else:
            buf = data  # nothing held back: read the chunk as it came
        out = self.to_client
        q = self.queue
        end = len(buf)
        pos = run = 0  # run: where the bytes that pass as they are start
        head = q[0] if q else None
        plain = not self.rules.active  # no masking rule: a RowDescription passes unread
        try:
            while end - pos >= 5:
                if _FAST and head is not None and head.plan is None and head.kind in _STATEMENT:
                    # A statement's reply while nothing in it is masked: its rows (and a
                    # RowDescription nothing reads) pass as they are, the run's end and the
                    # message after it found in one pass (replyrun.py); the usual end of the
                    # statement is read here, anything else by the general code below.
                    k = head.kind
                    pos, rows, ti, nxt = scan(buf, pos, end, plain or k is _EXECUTE)
                    if rows:
                        head.rows += rows
                    finished = False
                    if ti == _C:
                        # codec.parse_command_tag
                        tag = bytes(buf[pos + 5:nxt]).rstrip(b"\0").decode(errors="replace")
                        if k is _QUERY:
                            head.tag = tag if head.tag is None else f"{head.tag}; {tag}"
                            pos = nxt
                            if end - pos < 6 or buf[pos:pos + 5] != _READY:
                                continue  # another statement of the Query, or the rest to come
                            nxt = pos + 6  # its ReadyForQuery, read below without another scan
                            ti = _Z
                        else:
                            head.tag = tag
                            if head.forget:
                                self.forget_statements(head.forget)
                            finished = True
                    if ti == _Z and k is _QUERY:
                        # A status codec.parse_ready refuses goes to the general code, which
                        # refuses it after passing what came before it, as it always did.
                        status = bytes(buf[pos + 5:nxt])
                        if status in _STATUSES:
                            self.tx_status = status
                            if head.forget and head.error is None:
                                self.forget_statements(head.forget)
                            finished = True
                    if finished:
                        self.done(head)
                        q.popleft()  # _finished, with the reply in the run that passes
                        pos = nxt
                        if q and q[0].kind is _SYNTHETIC:
                            out.append(buf[run:pos])
                            run = pos
                            self.flush_synthetic()
                        head = q[0] if q else None
                        continue
                    if end - pos < 5:
                        break
                elif _FAST and head is not None and head.kind in _ONE and buf[pos:pos + 5] == (
                        _PARSED if head.kind is _PARSE else _BOUND if head.kind is _BIND else _READY) and (
                        head.kind is not _SYNC or buf[pos + 5:pos + 6] in _STATUSES):
                    # ParseComplete, BindComplete, a Sync's ReadyForQuery (the extended protocol's
                    # usual replies): the head is done with it; it passes (_one_reply, _finished).
                    nxt = pos + 6 if head.kind is _SYNC else pos + 5
                    if nxt > end:
                        break
                    if head.kind is _SYNC:
                        self.tx_status = bytes(buf[pos + 5:nxt])  # one of _STATUSES
                    q.popleft()
                    pos = nxt
                    if q and q[0].kind is _SYNTHETIC:
                        out.append(buf[run:pos])
                        run = pos
                        self.flush_synthetic()
                    head = q[0] if q else None
                    continue
                t, n = _HI.unpack_from(buf, pos)
                if n < 4:
                    raise codec.ProtocolError(f"invalid length {n} for message {t!r}")
                nxt = pos + 1 + n
                if nxt > end:
                    if n > codec.MAX_MESSAGE:
                        raise codec.ProtocolError(f"invalid length {n} for message {t!r}")
                    break
                if t == _D and head is not None and head.kind in _STATEMENT:
                    head.rows += 1
                    plan = head.plan
                    if plan is None:
                        pos = nxt  # passes as it is
                        continue
                    if plan.prefilter is not None:
                        # Pattern masking only: the run of whole rows from here read at once, a run
                        # with no candidate anywhere passed whole.
                        masked, stop, rows = plan.mask_rows(buf, pos, end)
                        head.rows += rows - 1
                        if masked is not None:
                            if run < pos:
                                out.append(buf[run:pos])
                            out.append(masked)
                            run = stop
                        pos = stop
                        continue
                    new = plan.rewrite(bytes(buf[pos + 5:nxt]))
                    if new is not None:
                        if run < pos:
                            out.append(buf[run:pos])
                        out.append(new)
                        run = nxt
                    pos = nxt
                    continue
                if run < pos:
                    out.append(buf[run:pos])
                    run = pos
                p = bytes(buf[pos + 5:nxt])
                pos = nxt
                if t in wire.ASYNC:
                    keep = self._async_message(t, p)
                elif head is None:
                    keep = self._unexpected(t, p)
                else:
                    keep = self._REPLIES[head.kind](self, head, t, p)
                if not keep:
                    run = pos
                if self.state in _STOPPED:
                    return  # nothing more may reach the client
                head = q[0] if q else None
        except codec.ProtocolError as e:
            return self.fatal("08006", f"upstream protocol error: {e}")
        finally:
            if run < pos and self.state not in _STOPPED:
                out.append(buf[run:pos])
        if pos == end:
            if buf is not data:
                self.ubuf = bytearray()  # (else it was empty, and stays so)
        elif buf is data:
            self.ubuf = bytearray(data[pos:])
        else:
            assert isinstance(buf, bytearray)  # not data: self.ubuf, which data was appended to
            del buf[:pos]

    # Each handler returns True when the message passes to the client as it came (the
    # caller copies it with the bytes around it), False when it sent what the client sees.

    # --- messages outside any reply -----------------------------------------------
    def _async_message(self, t: bytes, p: bytes) -> bool:
        rules = self.rules
        if t == wire.NOTICE_RESPONSE:
            if not rules.active:
                return True
            new = self.scrub(p, self.queue[0] if self.queue else None)
        elif t == wire.NOTIFICATION_RESPONSE:
            if not rules.detectors:
                return True
            # NOTIFY payloads are text another session chose: patterns apply.
            pid, channel, payload = codec.parse_notification(p)
            text, counts = redact_notations(payload, rules.detectors)
            new = p[:4] + codec.cstr(channel) + codec.cstr(text) if counts else p
        else:
            name, value = codec.parse_parameter_status(p)
            self.parameter_status(name, value)
            return True
        if new is p:
            return True
        self.to_client.append(codec.msg(t, new))
        return False

    def parameter_status(self, name: str, value: str) -> None:
        key = name.lower()
        if lexing_unsafe(name, value):
            self.unsafe_settings[key] = value
        else:
            self.unsafe_settings.pop(key, None)
        if key == "application_name":  # what took effect (pgjdbc sets it with SET)
            self.commands.append(Attribute({"application_name": value}))

    def _unexpected(self, t: bytes, p: bytes) -> bool:
        if t != wire.ERROR_RESPONSE:
            return True
        p = self.scrub(p, None) if self.rules.active else p
        self.to_client.append(codec.msg(t, p))
        if codec.parse_fields(p).get("S") in ("FATAL", "PANIC"):
            self._ended_upstream()
        return False

    def _ended_upstream(self) -> None:
        """The server ends the session (terminated, shutting down): its error is the last word."""
        self.state = State.CLOSED
        self.commands.append(Close("upstream ended the session"))

    def _finished(self, t: bytes, p: bytes) -> bool:
        """The head is done: the reply passes, then any of the gateway's own replies queued behind it."""
        q = self.queue
        q.popleft()
        if q and q[0].kind is _SYNTHETIC:
            self.to_client.append(codec.msg(t, p))
            self.flush_synthetic()
            return False
        return True

    # --- replies, by what they answer ---------------------------------------------
    def _abort(self, head: Expected, t: bytes, p: bytes) -> bool:
        if t == wire.ERROR_RESPONSE:
            if head.raw:
                self.to_client.append(head.raw)  # the client sees our refusal, not the stand-in error
            if codec.parse_fields(p).get("S") in ("FATAL", "PANIC"):
                self._ended_upstream()
            return False
        if t == wire.READY_FOR_QUERY:
            self.tx_status = codec.parse_ready(p)
            return self._finished(t, p)
        return False  # the stand-in's other replies are not the client's

    def _error(self, head: Expected, p: bytes) -> bool:
        p = self.scrub(p, head) if self.rules.active else p
        fields = codec.parse_fields(p)
        self.to_client.append(codec.msg(wire.ERROR_RESPONSE, p))
        if fields.get("S") in ("FATAL", "PANIC"):
            if head.sql is not None and head.kind in _STATEMENT:
                head.error = fields.get("C")
                self.done(head)
            self._ended_upstream()
            return False
        if head.kind is _QUERY:
            head.error = fields.get("C")
            return False
        if head.kind is _SYNC:
            return False
        # The server now skips to Sync, answering nothing: so do the replies we expect.
        q = self.queue
        undo = []
        while q and q[0].kind not in (Kind.SYNC, Kind.ABORT_SYNC):
            e = q.popleft()
            if e.kind in (Kind.PARSE, Kind.BIND, Kind.CLOSE) and e.target is not None:
                undo.append(e)
            elif e.kind is Kind.EXECUTE:
                e.error = fields.get("C")
                self.done(e)
            elif e.kind is Kind.DESCRIBE_FOR_MASKING:
                ex = e.target[0]
                ex.error = fields.get("C")
                self.done(ex)
                if q and q[0] is ex:
                    q.popleft()
        for e in reversed(undo):  # last first: Close p then Bind p leaves p as it was
            self._undo(e)
        if not q:
            # The client has not sent its Sync yet: what it sends until then is ignored
            # upstream, and must expect no reply.
            self.skip = Skip.UPSTREAM
        return False

    def _undo(self, e: Expected) -> None:
        """A Parse, Bind or Close the server failed or skipped: the name keeps what it had."""
        table, name, new, prev = e.target
        if table.get(name) is new:
            if prev is None:
                table.pop(name, None)
            else:
                table[name] = prev

    def _describe_for_masking(self, head: Expected, t: bytes, p: bytes) -> bool:
        if t == wire.ERROR_RESPONSE:
            return self._error(head, p)
        ex, info = head.target
        if t == wire.ROW_DESCRIPTION:
            ex.plan = info.plan = self.rules.plan_for(p, ex.classified, info.result_formats)
        self.queue.popleft()  # RowDescription or NoData: the client did not ask
        return False

    def _statement(self, head: Expected, t: bytes, p: bytes) -> bool:
        """A simple Query's or an Execute's replies."""
        k = head.kind
        if t == wire.COMMAND_COMPLETE:
            tag = codec.parse_command_tag(p)
            head.tag = tag if head.tag is None or k is _EXECUTE else f"{head.tag}; {tag}"
            if k is _EXECUTE:
                if head.forget:
                    self.forget_statements(head.forget)
                self.done(head)
                return self._finished(t, p)
            if head.plan is not None:
                self.redactions(head)
                head.plan = None
                head.copy = None
            return True
        if t == wire.READY_FOR_QUERY:
            self.tx_status = codec.parse_ready(p)
            if head.forget and head.error is None:
                # Every statement of the string ran (after an error we cannot tell whether its
                # DEALLOCATE did: the names stay, judged as what they may hold).
                self.forget_statements(head.forget)
            self.done(head)
            return self._finished(t, p)
        if t == wire.ROW_DESCRIPTION:
            if k is _QUERY and self.rules.active:
                head.plan = self.rules.plan_for(p, head.classified)
            return True
        if t == wire.ERROR_RESPONSE:
            return self._error(head, p)
        if t == wire.COPY_DATA:
            if head.plan is None or not (head.plan.detectors or getattr(head.plan, "copy_columns", None)):
                return True
            if head.copy is not None:
                data = head.copy.feed(p)
                if data:
                    self.to_client.append(codec.msg(t, data))
                return False
            new = head.plan.copy_line(p)
            if new is p:
                return True
            self.to_client.append(codec.msg(t, new))
            return False
        if t == wire.COPY_OUT_RESPONSE and self.rules.detectors:
            head.plan = RowPlan([], self.rules.detectors)
            # Binary COPY: values without their types; see hoopy/postgres/copy.py.
            head.copy = BinaryCopyMasker(head.plan) if codec.parse_copy_response(p)[0] == 1 else None
        if t == wire.COPY_OUT_RESPONSE and self.rules.configured and head.copy is None:
            # A COPY of a table with masked columns judged maskable (text format, columns
            # listed, as pg_dump sends): its columns are masked in each line.
            columns = self.rules.copy_columns(head.classified) if head.classified is not None else None
            if columns and not isinstance(columns, str):
                head.plan = CopyMask(columns, self.rules.detectors)
        elif t == wire.COPY_DONE and head.copy is not None and not head.copy.done:
            raise codec.ProtocolError("binary COPY stream ended early")
        elif k is Kind.EXECUTE and t in (wire.PORTAL_SUSPENDED, wire.EMPTY_QUERY_RESPONSE):
            self.done(head)
            return self._finished(t, p)
        return True

    def _scope(self, head: Expected, t: bytes, p: bytes) -> bool:
        """A reply to the gateway's own SCOPE_QUERY: read, never shown to the client."""
        if t == wire.ROW_DESCRIPTION:
            head.target.append([])
        elif t == wire.DATA_ROW and head.target:
            head.target[-1].append([None if v is None else v.decode("utf-8", "replace")
                                    for v in codec.parse_data_row(p)])
        elif t == wire.ERROR_RESPONSE:
            head.error = codec.parse_fields(p).get("C") or "XX000"
        elif t == wire.READY_FOR_QUERY:
            self.tx_status = codec.parse_ready(p)
            self.queue.popleft()
            self.flush_synthetic()
            self.scope_read(head)
        return False

    def _one_reply(self, head: Expected, t: bytes, p: bytes) -> bool:
        """Parse, Bind, Close, Describe, Sync: their reply passes; the head is done with it."""
        if t == wire.ERROR_RESPONSE:
            return self._error(head, p)
        if head.kind is Kind.DESCRIBE_STATEMENT and t == wire.PARAMETER_DESCRIPTION:
            return True  # RowDescription or NoData follows
        if t == wire.READY_FOR_QUERY:
            self.tx_status = codec.parse_ready(p)
        elif t == wire.CLOSE_COMPLETE and head.forget:
            self.forget_statements(head.forget)
        return self._finished(t, p)

    _REPLIES = {
        Kind.QUERY: _statement,
        Kind.EXECUTE: _statement,
        Kind.PARSE: _one_reply,
        Kind.BIND: _one_reply,
        Kind.CLOSE: _one_reply,
        Kind.DESCRIBE_STATEMENT: _one_reply,
        Kind.DESCRIBE_PORTAL: _one_reply,
        Kind.SYNC: _one_reply,
        Kind.SYNTHETIC: _one_reply,
        Kind.DESCRIBE_FOR_MASKING: _describe_for_masking,
        Kind.ABORT: _abort,
        Kind.ABORT_SYNC: _abort,
        Kind.SCOPE: _scope,
    }

    # --- masking what the server says (the record: statement_record.py) ---------------
    def scrub(self, p: bytes, head) -> bytes:
        """Error and notice texts can quote values ('invalid input syntax for type integer:
        "123-45-6789"'): patterns apply to them, and for a statement over masked columns
        their details are withheld."""
        fields = codec.parse_fields(p)
        c = head.classified if head is not None else None
        changed = False
        rules = self.rules
        if rules.configured and (c is None or rules.touches(c)):
            for k in ("D", "H", "W", "q"):
                if fields.pop(k, None) is not None:
                    changed = True
            m = fields.get("M", "")
            cut = _VALUE_START.split(m, 1)
            if len(cut) > 1:
                fields["M"] = cut[0].rstrip() + " (details withheld by hoopy: the statement reads masked columns)"
                changed = True
        if rules.detectors:
            for k in ("M", "D", "H", "W"):
                if k in fields:
                    new, counts = redact_notations(fields[k], rules.detectors)
                    if counts:
                        fields[k] = new
                        changed = True
        if not changed:
            return p
        return b"".join(k.encode() + codec.cstr(v) for k, v in fields.items()) + b"\0"
