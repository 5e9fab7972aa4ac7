"""What every state store is, whichever database holds it: the ``IEventStore`` and
``IStoreReader`` seams, and the reads they share (``ReaderQueries``). SQLite's store
(hoopy/audit/store.py) and PostgreSQL's (hoopy/audit/pgstore.py) both stand on this module.
"""
from __future__ import annotations

from typing import Iterator

from zope.interface import Attribute, Interface

from hoopy.audit.writer import EVENT_COLUMNS, Dialect

TABLES = ("events", "sessions", "approvals")


class IEventStore(Interface):
    healthy = Attribute("False after a write failed, until one succeeds again")
    shared = Attribute("True when other gateway nodes write the same store (PostgreSQL)")

    def start():
        """Open the store and load the chain head."""

    def stop():
        """Write what is queued, then close. Returns a Deferred."""

    def append(event, session=None, approval=None, expect_state=None):
        """Make ``event`` durable, with optional session/approval row updates
        (dicts of column values, upserted by id) in the same transaction.
        Returns a Deferred firing with a StoredEvent once it is on disk, or
        failing with StoreError.

        With ``expect_state``, the approval row is updated (not upserted) only
        if its state is still ``expect_state``; otherwise neither the row nor
        the event is written and the Deferred fails with StateConflict."""

    def append_trailing(event):
        """Queue an event no operation waits for (what a finished operation
        did): committed with the next batch that one does wait for, or within
        a few milliseconds. Failures are logged."""

    def watch_approvals(callback):
        """Call ``callback(approval_id)`` when another node decided an
        approval, ``callback(None)`` when some may have been missed. A no-op
        for a store no other node writes."""

    def reader():
        """An IStoreReader (blocking; use from a thread or a CLI)."""


class IStoreReader(Interface):
    def sessions(since_us=None, until_us=None, limit=None):
        """Session rows, newest first."""

    def session(session_id):
        """One session row or None."""

    def events(session=None, since_us=None, until_us=None):
        """Event rows in chain order."""

    def approvals(state=None):
        """Approval rows, oldest first."""

    def approval(approval_id):
        """One approval row or None."""


class ReaderQueries:
    """The reads every store answers; a store gives its ``dialect`` and how it
    runs a query (``_rows``: all rows as dicts, ``_stream``: rows one by one)."""

    dialect: Dialect

    # What each store provides: how it runs a query.
    def _rows(self, sql: str, args=()) -> list[dict]:
        raise NotImplementedError

    def _stream(self, sql: str, args) -> Iterator[dict]:
        raise NotImplementedError

    def _event_columns(self) -> set:
        raise NotImplementedError

    def sessions(self, since_us=None, until_us=None, limit=None):
        p, t = self.dialect.param, self.dialect.prefix
        sql, args = f"SELECT * FROM {t}sessions WHERE 1=1", []
        if since_us is not None:
            sql += f" AND coalesce(ended_us, 9223372036854775807) >= {p}"
            args.append(since_us)
        if until_us is not None:
            sql += f" AND started_us <= {p}"
            args.append(until_us)
        sql += " ORDER BY started_us DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return self._rows(sql, args)

    def session(self, session_id):
        rows = self._rows(f"SELECT * FROM {self.dialect.prefix}sessions WHERE id = {self.dialect.param}",
                          (session_id,))
        return rows[0] if rows else None

    def _event_select(self) -> str:
        """The event columns, NULL for those a store made by an earlier hoopy lacks."""
        have = self._event_columns()
        return ", ".join(c if c in have else f"NULL AS {c}" for c in EVENT_COLUMNS)

    def events(self, session=None, since_us=None, until_us=None, identity=None, connection=None,
               kind=None, after_seq=None, limit=None):
        """Event rows in chain order. ``kind`` matches the kind or, ending in a
        dot, every kind it begins (``auth.``)."""
        p = self.dialect.param
        sql, args = f"SELECT {self._event_select()} FROM {self.dialect.prefix}events WHERE 1=1", []
        for clause, value in ((f"session = {p}", session), (f"time_us >= {p}", since_us),
                              (f"time_us <= {p}", until_us), (f"identity = {p}", identity),
                              (f"connection = {p}", connection), (f"seq > {p}", after_seq)):
            if value is not None:
                sql += f" AND {clause}"
                args.append(value)
        if kind is not None:
            if kind.endswith("."):
                sql += f" AND substr(kind, 1, {len(kind)}) = {p}"
            else:
                sql += f" AND kind = {p}"
            args.append(kind)
        sql += " ORDER BY seq"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return self._stream(sql, args)

    def table(self, name: str):
        """Every row of one of the store's tables (for verify), as dicts."""
        if name not in TABLES:
            raise ValueError(f"no table {name!r}")
        return self._rows(f"SELECT * FROM {self.dialect.prefix}{name}")

    def ids_with_prefix(self, table: str, prefix: str, limit: int = 20) -> list[str]:
        """Ids in ``sessions`` or ``approvals`` that begin with ``prefix``."""
        if table not in ("sessions", "approvals"):
            raise ValueError(f"no table {table!r}")
        p = self.dialect.param
        return [r["id"] for r in self._rows(
            f"SELECT id FROM {self.dialect.prefix}{table} WHERE substr(id, 1, {len(prefix)}) = {p}"
            f" ORDER BY id LIMIT {int(limit)}", (prefix,))]

    def approvals(self, state=None):
        t = self.dialect.prefix
        if state is None:
            return self._rows(f"SELECT * FROM {t}approvals ORDER BY created_us")
        return self._rows(f"SELECT * FROM {t}approvals WHERE state = {self.dialect.param} ORDER BY created_us",
                          (state,))

    def approval(self, approval_id):
        rows = self._rows(f"SELECT * FROM {self.dialect.prefix}approvals WHERE id = {self.dialect.param}",
                          (approval_id,))
        return rows[0] if rows else None

    def session_counts(self, session_ids):
        """Per session: operations, refused, held, masked (redactions) counts."""
        out: dict = {}
        p, t = self.dialect.param, self.dialect.prefix
        ids = list(session_ids)
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            for r in self._rows(f"SELECT session, kind, outcome, count(*) AS n FROM {t}events WHERE session IN "
                                f"({', '.join(p for _ in chunk)}) AND kind IN ('operation', 'redaction')"
                                " GROUP BY session, kind, outcome", chunk):
                c = out.setdefault(r["session"], {"operations": 0, "refused": 0, "held": 0, "masked": 0})
                if r["kind"] == "redaction":
                    c["masked"] += r["n"]
                    continue
                c["operations"] += r["n"]
                if r["outcome"] in ("refused", "held"):
                    c[r["outcome"]] += r["n"]
        return out

    def retry_approvals(self, requester, connection, canonical):
        """Retry-mode approvals of this operation by this identity on this connection that
        may still matter (pending, or approved and not yet used), newest first."""
        p = self.dialect.param
        return self._rows(
            f"SELECT * FROM {self.dialect.prefix}approvals WHERE canonical = {p} AND requester = {p}"
            f" AND connection = {p} AND mode = 'retry' AND state IN ('pending', 'approved')"
            " ORDER BY created_us DESC LIMIT 20", (canonical, requester, connection))
