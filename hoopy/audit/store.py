"""The state store: events (hash-chained), sessions and approvals.

``IEventStore`` is the seam; ``SQLiteEventStore`` is the embedded default.
Writes go to one thread that batches whatever is queued into a single
transaction (WAL, synchronous=FULL), so the reactor never waits on disk and
an event is durable before the Deferred ``append`` returned fires. The
chain link is computed inside that thread: no caller can skip it.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from hoopy.audit.chain import GENESIS
from hoopy.audit.events import iso
from hoopy.audit.writer import (ADDED_EVENT_COLUMNS, APPROVAL_COLUMNS, EVENT_COLUMNS,  # noqa: F401
                                SESSION_COLUMNS, BatchedStore, Dialect, StateConflict, StoreError,
                                migration_sql, schema_sql, write_batch)

log = Logger()

SCHEMA = schema_sql()
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


@implementer(IStoreReader)
class SQLiteReader(ReaderQueries):
    dialect = Dialect("?")

    def __init__(self, path: str | Path):
        self.path = str(path)
        if not Path(self.path).exists():
            raise StoreError(f"no state store at {self.path}")
        self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10,
                                  isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        # One read transaction: every read sees the same snapshot, so verify
        # compares events and tables as they were at one moment (WAL readers
        # never block the writer).
        self.db.execute("BEGIN")

    def close(self):
        self.db.close()

    def _event_columns(self) -> set:
        return {r[1] for r in self.db.execute("PRAGMA table_info(events)")}

    def _rows(self, sql, args=()):
        return [dict(r) for r in self.db.execute(sql, args)]

    def _stream(self, sql, args):
        for r in self.db.execute(sql, args):  # streamed: the table may be large
            yield dict(r)


def event_json(row: dict) -> dict:
    """An event row as users and auditors see it."""
    out = dict(row)
    out["time"] = iso(row["time_us"])
    out["data"] = json.loads(row["data"])
    return out


@implementer(IEventStore)
class SQLiteEventStore(BatchedStore):
    """SQLite in WAL mode; one writer thread, batched transactions."""

    dialect = Dialect("?")

    def __init__(self, path: str | Path, gateway: str, reactor=None, busy_timeout: float = 5.0):
        super().__init__(gateway, reactor, busy_timeout)
        self.path = str(path)
        self._head = None  # (seq, hash) of our last commit; None: read it from the table

    def _connect(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        # A store made by an earlier hoopy: add the columns it lacks (NULL in its old rows).
        have = {r[1] for r in db.execute("PRAGMA table_info(events)")}
        for col in ADDED_EVENT_COLUMNS:
            if col not in have:
                db.execute(f"ALTER TABLE events ADD COLUMN {col} TEXT")
        existing = {r[1] for r in db.execute("PRAGMA table_info(approvals)")}
        for stmt in migration_sql(existing):
            db.execute(stmt)
        return db

    def start(self):
        """Open synchronously (at startup, before listening) so a bad store stops the gateway."""
        self._db = self._connect()
        self._start_writer()

    def reader(self) -> SQLiteReader:
        return SQLiteReader(self.path)

    def _write(self, batch, sign=False):
        cur = self._db.cursor()
        try:
            if self._only_events(batch):
                results, signed = self._insert_only(cur, batch, sign)
            else:
                results, signed = self._locked(cur, batch, sign)
        except Exception as e:
            self._head = None  # read it again before the next batch
            try:
                if self._db.in_transaction:
                    cur.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            err = StoreError(f"the state store cannot write: {e}")
            self._to_reactor(self._failed, [b[-1] for b in batch], err)
            return
        self._committed(sum(1 for _, r in results if not isinstance(r, Exception)), signed)
        self._to_reactor(self._written, results)

    def _only_events(self, batch) -> bool:
        # No session or approval rows: the batch is one INSERT statement.
        return len(batch) <= self.dialect.rows_per_insert and all(
            item[2] is None and item[3] is None and item[4] is None for item in batch)

    def _insert_only(self, cur, batch, sign):
        """The common batch (events only) as one INSERT, which SQLite runs as
        its own transaction: one trip into the database and one flush, where
        BEGIN, a head query and COMMIT would each wait for the GIL again while
        the reactor thread is busy. The head is kept between batches; if
        another process appended meanwhile, our first seq is taken, the INSERT
        fails whole on the primary key, and we chain onto the real head."""
        head = self._head or self.dialect.head(cur) or (0, GENESIS)
        try:
            results, self._head, _, signed = write_batch(self.dialect, cur, batch, head, self.gateway,
                                                         self.signer, sign)
            return results, signed
        except sqlite3.IntegrityError:
            self._head = None
        # Another writer is busy: a head read outside the lock may be stale again by the INSERT, so
        # this time it is read inside the write lock.
        return self._locked(cur, batch, sign)

    def _locked(self, cur, batch, sign):
        """The batch in a transaction that holds the write lock from the start: the head is read
        inside it, right even if another process appended since."""
        cur.execute("BEGIN IMMEDIATE")
        head = self.dialect.head(cur) or (0, GENESIS)
        results, self._head, _, signed = write_batch(self.dialect, cur, batch, head, self.gateway,
                                                     self.signer, sign)
        cur.execute("COMMIT")
        return results, signed

    def _close(self):
        self._db.close()


def is_postgres(state: str) -> bool:
    return state.startswith(("postgresql://", "postgres://"))


def open_store(config, reactor=None):
    """The IEventStore that ``gateway.state`` names (not started)."""
    gw = config.gateway
    if is_postgres(gw.state):
        from hoopy.audit.pgstore import PostgresEventStore

        return PostgresEventStore(gw.state, gw.name, reactor, busy_timeout=gw.store_busy_timeout)
    return SQLiteEventStore(gw.state, gw.name, reactor, busy_timeout=gw.store_busy_timeout)


def open_reader(config):
    """An IStoreReader on ``gateway.state`` (``state_reader``, a read-only role, where
    set); raises StoreError if it cannot."""
    state = config.gateway.state_reader or config.gateway.state
    if is_postgres(state):
        from hoopy.audit.pgstore import PostgresReader

        return PostgresReader(state)
    return SQLiteReader(state)
