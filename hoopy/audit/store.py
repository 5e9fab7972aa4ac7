"""The state store: events (hash-chained), sessions and approvals.

``IEventStore`` is the seam; ``SQLiteEventStore`` is the embedded default.
Writes go to one thread that batches whatever is queued into a single
transaction (WAL, synchronous=FULL), so the reactor never waits on disk and
an event is durable before the Deferred ``append`` returned fires. The
chain link is computed inside that thread: no caller can skip it.
"""
from __future__ import annotations

import json
import queue
import sqlite3
import threading
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from hoopy.audit.chain import GENESIS, canonical_json, link
from hoopy.audit.events import Event, StoredEvent, iso

log = Logger()

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    time_us INTEGER NOT NULL,
    gateway TEXT NOT NULL,
    session TEXT,
    identity TEXT,
    connection TEXT,
    protocol TEXT,
    peer TEXT,
    kind TEXT NOT NULL,
    outcome TEXT,
    data TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_session ON events(session, seq);
CREATE INDEX IF NOT EXISTS events_time ON events(time_us);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    identity TEXT,
    connection TEXT,
    protocol TEXT,
    peer TEXT,
    started_us INTEGER,
    ended_us INTEGER,
    end_reason TEXT,
    model TEXT,
    tool_call TEXT,
    mcp_server TEXT,
    application_name TEXT,
    recording TEXT
);
CREATE INDEX IF NOT EXISTS sessions_started ON sessions(started_us);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    session TEXT,
    requester TEXT NOT NULL,
    connection TEXT,
    protocol TEXT,
    operation TEXT NOT NULL,
    rule TEXT,
    state TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    expires_us INTEGER,
    decided_us INTEGER,
    reviewer TEXT,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS approvals_state ON approvals(state, created_us);
"""

SESSION_COLUMNS = ("id", "gateway", "identity", "connection", "protocol", "peer", "started_us",
                   "ended_us", "end_reason", "model", "tool_call", "mcp_server",
                   "application_name", "recording")
APPROVAL_COLUMNS = ("id", "gateway", "session", "requester", "connection", "protocol", "operation",
                    "rule", "state", "created_us", "expires_us", "decided_us", "reviewer", "reason")


class StoreError(Exception):
    """The store could not make an event durable; the operation must be refused."""


class StateConflict(Exception):
    """A conditional approval update found the row no longer in the expected
    state (another node, or an expiry, decided first): nothing was written."""

    def __init__(self, approval_id: str, state: str | None):
        self.approval_id = approval_id
        self.state = state
        super().__init__(f"approval {approval_id} is {'already ' + state if state else 'unknown'}")


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


@implementer(IStoreReader)
class SQLiteReader:
    def __init__(self, path: str | Path):
        self.path = str(path)
        if not Path(self.path).exists():
            raise StoreError(f"no state store at {self.path}")
        self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        self.db.row_factory = sqlite3.Row

    def close(self):
        self.db.close()

    def _rows(self, sql, args=()):
        return [dict(r) for r in self.db.execute(sql, args)]

    def sessions(self, since_us=None, until_us=None, limit=None):
        sql = "SELECT * FROM sessions WHERE 1=1"
        args = []
        if since_us is not None:
            sql += " AND coalesce(ended_us, 9223372036854775807) >= ?"
            args.append(since_us)
        if until_us is not None:
            sql += " AND started_us <= ?"
            args.append(until_us)
        sql += " ORDER BY started_us DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return self._rows(sql, args)

    def session(self, session_id):
        rows = self._rows("SELECT * FROM sessions WHERE id = ?", (session_id,))
        return rows[0] if rows else None

    def events(self, session=None, since_us=None, until_us=None):
        sql = "SELECT * FROM events WHERE 1=1"
        args = []
        if session is not None:
            sql += " AND session = ?"
            args.append(session)
        if since_us is not None:
            sql += " AND time_us >= ?"
            args.append(since_us)
        if until_us is not None:
            sql += " AND time_us <= ?"
            args.append(until_us)
        sql += " ORDER BY seq"
        for r in self.db.execute(sql, args):  # streamed: the table may be large
            yield dict(r)

    def approvals(self, state=None):
        if state is None:
            return self._rows("SELECT * FROM approvals ORDER BY created_us")
        return self._rows("SELECT * FROM approvals WHERE state = ? ORDER BY created_us", (state,))

    def approval(self, approval_id):
        rows = self._rows("SELECT * FROM approvals WHERE id = ?", (approval_id,))
        return rows[0] if rows else None


def event_json(row: dict) -> dict:
    """An event row as users and auditors see it."""
    out = dict(row)
    out["time"] = iso(row["time_us"])
    out["data"] = json.loads(row["data"])
    return out


_STOP = object()


@implementer(IEventStore)
class SQLiteEventStore:
    """SQLite in WAL mode; one writer thread, batched transactions."""

    max_batch = 512
    shared = False  # one gateway per SQLite file

    def __init__(self, path: str | Path, gateway: str, reactor=None, busy_timeout: float = 5.0):
        self.path = str(path)
        self.gateway = gateway
        self.busy_timeout = busy_timeout
        self._reactor = reactor
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped: Deferred | None = None
        self.healthy = True
        self.head = (0, GENESIS)
        self.on_error = None  # callable(exc): the metrics hook

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def _connect(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        return db

    def start(self):
        """Open synchronously (at startup, before listening) so a bad store stops the gateway."""
        self._db = self._connect()
        row = self._db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        if row:
            self.head = (row[0], row[1])
        self._thread = threading.Thread(target=self._run, name="hoopy-store-writer", daemon=True)
        self._thread.start()

    def stop(self) -> Deferred:
        if self._stopped is None:
            self._stopped = Deferred()
            if self._thread is None:
                self._stopped.callback(None)
            else:
                self._queue.put(_STOP)
        return self._stopped

    def reader(self) -> SQLiteReader:
        return SQLiteReader(self.path)

    def watch_approvals(self, callback) -> None:
        """Nothing to watch: no other node writes this file."""

    def append(self, event: Event, session: dict | None = None, approval: dict | None = None,
               expect_state: str | None = None) -> Deferred:
        d = Deferred()
        if self._stopped is not None or self._thread is None:
            d.errback(StoreError("the state store is closed"))
            return d
        try:
            data = canonical_json(event.data)
        except (TypeError, ValueError) as e:  # a bug in the caller, never silently dropped
            d.errback(StoreError(f"event data is not JSON: {e}"))
            return d
        if expect_state is not None and not (approval and approval.get("id")):
            d.errback(StoreError("expect_state needs an approval row with its id"))
            return d
        self._queue.put((event, data, session, approval, expect_state, d))
        return d

    # --- the writer thread -------------------------------------------------

    def _run(self):
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            stop_after = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop_after = True
                    break
                batch.append(nxt)
            self._write(batch)
            if stop_after:
                break
        try:
            self._db.close()
        finally:
            self.reactor.callFromThread(self._stopped.callback, None)

    def _write(self, batch):
        results = []
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            # Read the head inside the write lock: cheap, and right even if
            # another process appended since.
            row = db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = row if row else (0, GENESIS)
            for event, data, session, approval, expect, d in batch:
                if expect is not None:
                    conflict = self._conditional(db, approval, expect)
                    if conflict is not None:
                        results.append((d, conflict))  # nothing written for this one
                        continue
                seq += 1
                row = {
                    "seq": seq, "time_us": event.time_us, "gateway": self.gateway,
                    "session": event.session, "identity": event.identity,
                    "connection": event.connection, "protocol": event.protocol,
                    "peer": event.peer, "kind": event.kind, "outcome": event.outcome,
                    "data": data,
                }
                h = link(prev, row)
                db.execute(
                    "INSERT INTO events (seq, time_us, gateway, session, identity, connection,"
                    " protocol, peer, kind, outcome, data, prev, hash)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (seq, row["time_us"], self.gateway, row["session"], row["identity"],
                     row["connection"], row["protocol"], row["peer"], row["kind"],
                     row["outcome"], data, prev, h),
                )
                if session:
                    self._upsert(db, "sessions", SESSION_COLUMNS, {"gateway": self.gateway, **session})
                if approval and expect is None:
                    self._upsert(db, "approvals", APPROVAL_COLUMNS, {"gateway": self.gateway, **approval})
                prev = h
                results.append((d, StoredEvent(seq, h, event)))
            db.execute("COMMIT")
        except Exception as e:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            err = StoreError(f"the state store cannot write: {e}")
            self.reactor.callFromThread(self._failed, [b[-1] for b in batch], err)
            return
        self.head = (seq, prev)
        self.reactor.callFromThread(self._written, results)

    @staticmethod
    def _conditional(db, approval, expect):
        """The approval row changes only if still ``expect``: the first decision wins."""
        cols = [c for c in APPROVAL_COLUMNS if c in approval and c not in ("id", "gateway")]
        cur = db.execute(
            f"UPDATE approvals SET {', '.join(f'{c}=?' for c in cols)} WHERE id=? AND state=?",
            [approval[c] for c in cols] + [approval["id"], expect])
        if cur.rowcount == 1:
            return None
        row = db.execute("SELECT state FROM approvals WHERE id = ?", (approval["id"],)).fetchone()
        return StateConflict(approval["id"], row[0] if row else None)

    @staticmethod
    def _upsert(db, table, columns, values):
        cols = [c for c in columns if c in values]
        updates = ", ".join(f"{c}=excluded.{c}" for c in cols if c != "id")
        db.execute(
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
            f" ON CONFLICT(id) DO UPDATE SET {updates}",
            [values[c] for c in cols],
        )

    # --- back on the reactor thread -----------------------------------------

    def _written(self, results):
        if not self.healthy:
            log.info("state store: writing again")
        self.healthy = True
        for d, stored in results:
            if isinstance(stored, Exception):
                d.errback(stored)
            else:
                d.callback(stored)

    def _failed(self, deferreds, err):
        if self.healthy:
            log.error("state store: {error}; operations are refused until it can write", error=str(err))
        self.healthy = False
        if self.on_error:
            self.on_error(err)
        for d in deferreds:
            d.errback(err)


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
    """An IStoreReader on ``gateway.state``; raises StoreError if it cannot."""
    if is_postgres(config.gateway.state):
        from hoopy.audit.pgstore import PostgresReader

        return PostgresReader(config.gateway.state)
    return SQLiteReader(config.gateway.state)
