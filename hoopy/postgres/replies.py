"""The client side's handling of what the server sends: each reply matched to
the message it answers (the queue of ``Expected``), masked where a rule can
apply, passed on as bytes where none can, and every statement's completion
recorded. A mixin of ``ClientSide`` (hoopy/postgres/client_side.py): one
object, its two directions in two files.
"""
from __future__ import annotations

import re
import time

from hoopy.policy.masking import redact_text
from hoopy.postgres import codec, wire
from hoopy.postgres.copy import BinaryCopyMasker
from hoopy.postgres.pipeline import Attribute, Close, Expected, Kind, Redacted, Skip, State, Trailing
from hoopy.postgres.rows import RowPlan
from hoopy.postgres.startup import lexing_unsafe

# Before the first colon, quote (any language's: lc_messages) or non-ASCII letter.
_VALUE_START = re.compile(r"[:\"'`\u0080-\U0010ffff]")
_STATEMENT = (Kind.EXECUTE, Kind.QUERY)
_ABORTS = (Kind.ABORT, Kind.ABORT_SYNC)


class UpstreamReplies:
    def receive_upstream(self, data: bytes) -> None:
        if self.state in (State.CLOSED, State.ERROR):
            return
        r = self.ureader
        out = self.to_client
        q = self.queue
        head = q[0] if q else None
        if head is not None and head.plan is None and head.kind in _STATEMENT:
            raw, n = r.take_rows(data)  # the common case: a chunk of rows to pass on
            if n:
                head.rows += n
                out.append(raw)
        else:
            r.feed(data)
        try:
            while True:
                head = q[0] if q else None
                if head is not None and head.kind in _STATEMENT:
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
                    return
                t, p = m
                if t in wire.ASYNC:
                    self._async_message(t, p)
                elif not q:
                    self._unexpected(t, p)
                else:
                    self._REPLIES[q[0].kind](self, q[0], t, p)
                if self.state in (State.CLOSED, State.ERROR):
                    return  # nothing more may reach the client
        except codec.ProtocolError as e:
            self.fatal("08006", f"upstream protocol error: {e}")

    # --- messages outside any reply -----------------------------------------------
    def _async_message(self, t: bytes, p: bytes) -> None:
        rules = self.rules
        if t == wire.NOTICE_RESPONSE:
            if rules.active:
                p = self.scrub(p, self.queue[0] if self.queue else None)
        elif t == wire.NOTIFICATION_RESPONSE:
            if rules.detectors:
                # NOTIFY payloads are text another session chose: patterns apply.
                pid, channel, payload = codec.parse_notification(p)
                new, counts = redact_text(payload, rules.detectors)
                if counts:
                    p = p[:4] + codec.cstr(channel) + codec.cstr(new)
        else:
            name, value = codec.parse_parameter_status(p)
            self.parameter_status(name, value)
        self.to_client.append(codec.msg(t, p))

    def parameter_status(self, name: str, value: str) -> None:
        key = name.lower()
        if lexing_unsafe(name, value):
            self.unsafe_settings[key] = value
        else:
            self.unsafe_settings.pop(key, None)
        if key == "application_name":  # what took effect (pgjdbc sets it with SET)
            self.commands.append(Attribute({"application_name": value}))

    def _unexpected(self, t: bytes, p: bytes) -> None:
        if t == wire.ERROR_RESPONSE:
            p = self.scrub(p, None) if self.rules.active else p
            self.to_client.append(codec.msg(t, p))
            if codec.parse_fields(p).get("S") in ("FATAL", "PANIC"):
                self._ended_upstream()
            return
        self.to_client.append(codec.msg(t, p))

    def _ended_upstream(self) -> None:
        """The server ends the session (terminated, shutting down): its error is the last word."""
        self.state = State.CLOSED
        self.commands.append(Close("upstream ended the session"))

    # --- replies, by what they answer ---------------------------------------------
    def _abort(self, head: Expected, t: bytes, p: bytes) -> None:
        if t == wire.ERROR_RESPONSE:
            if head.raw:
                self.to_client.append(head.raw)  # the client sees our refusal, not the stand-in error
            if codec.parse_fields(p).get("S") in ("FATAL", "PANIC"):
                self._ended_upstream()
        elif t == wire.READY_FOR_QUERY:
            self.tx_status = codec.parse_ready(p)
            self.to_client.append(codec.msg(t, p))
            self.queue.popleft()
            self.flush_synthetic()

    def _error(self, head: Expected, p: bytes) -> None:
        p = self.scrub(p, head) if self.rules.active else p
        fields = codec.parse_fields(p)
        self.to_client.append(codec.msg(wire.ERROR_RESPONSE, p))
        if fields.get("S") in ("FATAL", "PANIC"):
            if head.sql is not None and head.kind in _STATEMENT:
                head.error = fields.get("C")
                self.done(head)
            return self._ended_upstream()
        if head.kind is Kind.QUERY:
            head.error = fields.get("C")
            return
        if head.kind is Kind.SYNC:
            return
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

    def _undo(self, e: Expected) -> None:
        """A Parse, Bind or Close the server failed or skipped: the name keeps what it had."""
        table, name, new, prev = e.target
        if table.get(name) is new:
            if prev is None:
                table.pop(name, None)
            else:
                table[name] = prev

    def _describe_for_masking(self, head: Expected, t: bytes, p: bytes) -> None:
        if t == wire.ERROR_RESPONSE:
            return self._error(head, p)
        ex, info = head.target
        if t == wire.ROW_DESCRIPTION:
            ex.plan = info.plan = self._plan(codec.parse_row_description(p), ex.classified, info.result_formats)
        self.queue.popleft()  # RowDescription or NoData: the client did not ask

    def _statement(self, head: Expected, t: bytes, p: bytes) -> None:
        """A simple Query's or an Execute's replies."""
        out = self.to_client
        if t == wire.DATA_ROW:
            head.rows += 1
            out.append(head.plan.apply(p) if head.plan is not None else codec.msg(t, p))
            return
        if t == wire.ERROR_RESPONSE:
            return self._error(head, p)
        k = head.kind
        if t == wire.ROW_DESCRIPTION and k is Kind.QUERY:
            head.plan = self._plan(codec.parse_row_description(p), head.classified, None)
        elif t == wire.COPY_DATA and head.plan is not None and head.plan.detectors:
            if head.copy is not None:
                data = head.copy.feed(p)
                if data:
                    out.append(codec.msg(t, data))
                return
            p = head.plan.copy_line(p)
        elif t == wire.COPY_OUT_RESPONSE and self.rules.detectors:
            head.plan = RowPlan([], self.rules.detectors)
            # Binary COPY: values without their types; see hoopy/postgres/copy.py.
            head.copy = BinaryCopyMasker(head.plan) if codec.parse_copy_response(p)[0] == 1 else None
        elif t == wire.COPY_DONE and head.copy is not None and not head.copy.done:
            raise codec.ProtocolError("binary COPY stream ended early")
        out.append(codec.msg(t, p))
        if t == wire.COMMAND_COMPLETE:
            tag = codec.parse_command_tag(p)
            head.tag = tag if head.tag is None or k is Kind.EXECUTE else f"{head.tag}; {tag}"
            if k is Kind.EXECUTE:
                self.queue.popleft()
                self.done(head)
            elif head.plan is not None:
                self.redactions(head)
                head.plan = None
                head.copy = None
        elif k is Kind.EXECUTE and t in (wire.PORTAL_SUSPENDED, wire.EMPTY_QUERY_RESPONSE):
            self.queue.popleft()
            self.done(head)
        elif t == wire.READY_FOR_QUERY:
            self.tx_status = codec.parse_ready(p)
            self.queue.popleft()
            self.done(head)
            self.flush_synthetic()

    def _one_reply(self, head: Expected, t: bytes, p: bytes) -> None:
        """Parse, Bind, Close, Describe, Sync: their reply passes; the head is done with it."""
        if t == wire.ERROR_RESPONSE:
            return self._error(head, p)
        self.to_client.append(codec.msg(t, p))
        if head.kind is Kind.DESCRIBE_STATEMENT and t == wire.PARAMETER_DESCRIPTION:
            return  # RowDescription or NoData follows
        if t == wire.READY_FOR_QUERY:
            self.tx_status = codec.parse_ready(p)
        self.queue.popleft()
        self.flush_synthetic()

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
    }

    # --- masking and the record -------------------------------------------------------
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
                    new, counts = redact_text(fields[k], rules.detectors)
                    if counts:
                        fields[k] = new
                        changed = True
        if not changed:
            return p
        return b"".join(k.encode() + codec.cstr(v) for k, v in fields.items()) + b"\0"

    def _plan(self, fields, classified, formats):
        plan = self.rules.plan(fields, classified)
        if plan is not None and formats:
            plan.with_formats(formats)
        return plan

    def redactions(self, e: Expected) -> None:
        s = e.plan.summary() if e.plan is not None else None
        if not s:
            return
        n = sum(s["columns"].values()) + sum(s["patterns"].values())
        e.plan.columns, e.plan.patterns = {}, {}
        self.commands.append(Redacted(n, {"sql": (e.sql or "")[:2000], **s}))

    def done(self, e: Expected) -> None:
        """A statement finished: its rows, duration and outcome are recorded."""
        if e.sql is None:
            return
        self.redactions(e)
        data = {"sql": e.sql[:2000], "duration_ms": round((time.monotonic() - e.start) * 1000, 3)}
        if e.kind is Kind.EXECUTE:
            data["rows"] = e.rows if e.tag is None or not e.tag.startswith(("INSERT", "UPDATE", "DELETE", "MERGE")) \
                else codec.rows_from_tag(e.tag)
        else:
            data["rows_returned"] = e.rows
        if e.tag:
            data["tag"] = e.tag
        if e.error:
            data["sqlstate"] = e.error
        self.commands.append(Trailing("statement", "error" if e.error else "ok", data))
