"""What every state store shares: one writer thread that batches queued
events into a single transaction and links each into the hash chain.

A store subclasses ``BatchedStore`` and supplies ``_write(batch)`` (its
transaction around ``write_batch``) and ``_close()``; the SQL that differs
between databases is only the placeholder and the table prefix.
"""
from __future__ import annotations

import queue
import threading
import time

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from hoopy.audit.chain import canonical_json, link
from hoopy.audit.events import Event, StoredEvent

log = Logger()

SESSION_COLUMNS = ("id", "gateway", "identity", "connection", "protocol", "peer", "started_us",
                   "ended_us", "end_reason", "model", "tool_call", "mcp_server",
                   "application_name", "recording")
APPROVAL_COLUMNS = ("id", "gateway", "session", "requester", "connection", "protocol", "operation",
                    "rule", "state", "created_us", "expires_us", "decided_us", "reviewer", "reason",
                    "mode", "canonical", "ttl_s", "caused_by", "used_us", "used_session")
# Columns added after the first release: (name, type) added to an older table at start.
ADDED_APPROVAL_COLUMNS = (("mode", "TEXT"), ("canonical", "TEXT"), ("ttl_s", "{integer}"),
                          ("caused_by", "TEXT"), ("used_us", "{integer}"), ("used_session", "TEXT"))
EVENT_COLUMNS = ("seq", "time_us", "gateway", "session", "identity", "connection", "protocol",
                 "peer", "kind", "outcome", "data", "prev", "hash")


_SCHEMA = """
CREATE TABLE IF NOT EXISTS {prefix}events (
    seq {integer} PRIMARY KEY,
    time_us {integer} NOT NULL,
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
CREATE INDEX IF NOT EXISTS events_session ON {prefix}events(session, seq);
CREATE INDEX IF NOT EXISTS events_time ON {prefix}events(time_us);
CREATE TABLE IF NOT EXISTS {prefix}sessions (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    identity TEXT,
    connection TEXT,
    protocol TEXT,
    peer TEXT,
    started_us {integer},
    ended_us {integer},
    end_reason TEXT,
    model TEXT,
    tool_call TEXT,
    mcp_server TEXT,
    application_name TEXT,
    recording TEXT
);
CREATE INDEX IF NOT EXISTS sessions_started ON {prefix}sessions(started_us);
CREATE TABLE IF NOT EXISTS {prefix}approvals (
    id TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    session TEXT,
    requester TEXT NOT NULL,
    connection TEXT,
    protocol TEXT,
    operation TEXT NOT NULL,
    rule TEXT,
    state TEXT NOT NULL,
    created_us {integer} NOT NULL,
    expires_us {integer},
    decided_us {integer},
    reviewer TEXT,
    reason TEXT,
    mode TEXT,
    canonical TEXT,
    ttl_s {integer},
    caused_by TEXT,
    used_us {integer},
    used_session TEXT
);
CREATE INDEX IF NOT EXISTS approvals_state ON {prefix}approvals(state, created_us);
"""

# After the added columns exist (a table made by an older release gets them first).
_INDEXES = """
CREATE INDEX IF NOT EXISTS approvals_canonical ON {prefix}approvals(canonical);
"""


def migration_sql(existing: set[str], prefix: str = "", integer: str = "INTEGER") -> list[str]:
    """Statements bringing an older approvals table up to date, given its column names."""
    out = [f"ALTER TABLE {prefix}approvals ADD COLUMN {name} {kind.format(integer=integer)}"
           for name, kind in ADDED_APPROVAL_COLUMNS if name not in existing]
    return out + [s.strip() for s in _INDEXES.format(prefix=prefix).split(";") if s.strip()]


def schema_sql(prefix: str = "", integer: str = "INTEGER") -> str:
    """The tables every store keeps, in one database's spelling."""
    return _SCHEMA.format(prefix=prefix, integer=integer)


class StoreError(Exception):
    """The store could not make an event durable; the operation must be refused."""


class StateConflict(Exception):
    """A conditional approval update found the row no longer in the expected
    state (another node, or an expiry, decided first): nothing was written."""

    def __init__(self, approval_id: str, state: str | None):
        self.approval_id = approval_id
        self.state = state
        super().__init__(f"approval {approval_id} is {'already ' + state if state else 'unknown'}")


_STOP = object()


class Dialect:
    """How one database spells the few statements that differ."""

    rows_per_insert = 64  # 13 parameters each: far below any database's limit

    def __init__(self, param: str, prefix: str = ""):
        self.param = param
        self.prefix = prefix

    def upsert(self, cur, table, columns, values):
        cols = [c for c in columns if c in values]
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != "id")
        cur.execute(
            f"INSERT INTO {self.prefix}{table} ({', '.join(cols)})"
            f" VALUES ({', '.join(self.param for _ in cols)}) ON CONFLICT (id) DO UPDATE SET {updates}",
            [values[c] for c in cols])

    def conditional(self, cur, approval, expect):
        """Update the approval row only if still in state ``expect``: the first decision wins."""
        p = self.param
        cols = [c for c in APPROVAL_COLUMNS if c in approval and c not in ("id", "gateway")]
        cur.execute(
            f"UPDATE {self.prefix}approvals SET {', '.join(f'{c} = {p}' for c in cols)}"
            f" WHERE id = {p} AND state = {p}",
            [approval[c] for c in cols] + [approval["id"], expect])
        if cur.rowcount == 1:
            return None
        cur.execute(f"SELECT state FROM {self.prefix}approvals WHERE id = {p}", (approval["id"],))
        row = cur.fetchone()
        return StateConflict(approval["id"], row[0] if row else None)

    def insert_events(self, cur, rows):
        """Insert rows (lists in EVENT_COLUMNS order) with one statement: one
        trip into the database (and out of the GIL) per batch, not per event."""
        one = f"({', '.join(self.param for _ in EVENT_COLUMNS)})"
        for i in range(0, len(rows), self.rows_per_insert):
            chunk = rows[i:i + self.rows_per_insert]
            cur.execute(f"INSERT INTO {self.prefix}events ({', '.join(EVENT_COLUMNS)}) VALUES "
                        + ", ".join(one for _ in chunk), [v for row in chunk for v in row])

    def head(self, cur):
        cur.execute(f"SELECT seq, hash FROM {self.prefix}events ORDER BY seq DESC LIMIT 1")
        return cur.fetchone()


def write_batch(dialect: Dialect, cur, batch, head, gateway: str):
    """Insert a batch, each event linked to the one before, inside the
    caller's transaction. Returns (results, new head, ids of approvals that
    left pending); results pair each Deferred with its StoredEvent or the
    StateConflict that kept it out of the chain."""
    seq, prev = head
    results, decided, rows = [], [], []
    for event, data, session, approval, expect, d in batch:
        if expect is not None:
            conflict = dialect.conditional(cur, approval, expect)
            if conflict is not None:
                results.append((d, conflict))  # nothing written for this one
                continue
        seq += 1
        row = {"seq": seq, "time_us": event.time_us, "gateway": gateway, "session": event.session,
               "identity": event.identity, "connection": event.connection, "protocol": event.protocol,
               "peer": event.peer, "kind": event.kind, "outcome": event.outcome, "data": data}
        h = link(prev, row)
        row["prev"] = prev
        row["hash"] = h
        rows.append([row[c] for c in EVENT_COLUMNS])
        if session:
            dialect.upsert(cur, "sessions", SESSION_COLUMNS, {"gateway": gateway, **session})
        if approval and expect is None:
            dialect.upsert(cur, "approvals", APPROVAL_COLUMNS, {"gateway": gateway, **approval})
        if approval and approval.get("state", "pending") != "pending":
            decided.append(approval["id"])
        prev = h
        results.append((d, StoredEvent(seq, h, event)))
    if rows:
        dialect.insert_events(cur, rows)
    return results, (seq, prev), decided


class BatchedStore:
    """The queue, the writer thread and the hand-back to the reactor."""

    max_batch = 512
    linger = 0.005  # seconds a batch of trailing events waits for company
    shared = False  # True where other gateway nodes write the same store

    def __init__(self, gateway: str, reactor=None, busy_timeout: float = 5.0):
        self.gateway = gateway
        self.busy_timeout = busy_timeout
        self._reactor = reactor
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped: Deferred | None = None
        self.healthy = True
        self.on_error = None  # callable(exc): the metrics hook
        # callables(StoredEvent), on the reactor thread once an event is durable (notifications)
        self.observers: list = []

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def _start_writer(self):
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

    def watch_approvals(self, callback) -> None:
        """Nothing to watch where no other node writes the store."""

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

    def append_trailing(self, event: Event) -> None:
        """Append an event nobody waits for (what a finished statement did): it
        is committed with the next batch someone waits for, or after
        ``linger`` seconds, so it does not cost a disk flush of its own.
        A failure is logged; the operation it follows has already happened."""
        if self._stopped is not None or self._thread is None:
            log.error("event not recorded, the state store is closed: {kind}", kind=event.kind)
            return
        try:
            data = canonical_json(event.data)
        except (TypeError, ValueError) as e:
            log.error("event not recorded, its data is not JSON: {e}", e=e)
            return
        self._queue.put((event, data, None, None, None, None))

    # --- the writer thread ---------------------------------------------------

    def _run(self):
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            urgent = item[-1] is not None
            stop_after = False
            deadline = None
            while len(batch) < self.max_batch:
                try:
                    if urgent:
                        nxt = self._queue.get_nowait()
                    else:
                        # Only trailing events so far: wait a moment for one
                        # someone waits on, and share its flush.
                        if deadline is None:
                            deadline = time.monotonic() + self.linger
                        nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop_after = True
                    break
                batch.append(nxt)
                urgent = urgent or nxt[-1] is not None
            self._write(batch)
            if stop_after:
                break
        try:
            self._close()
        finally:
            self.reactor.callFromThread(self._stopped.callback, None)

    def _write(self, batch):
        raise NotImplementedError

    def _close(self):
        raise NotImplementedError

    # --- back on the reactor thread ----------------------------------------------

    def _written(self, results):
        if not self.healthy:
            log.info("state store: writing again")
        self.healthy = True
        for d, stored in results:
            if d is None:
                pass  # a trailing event
            elif isinstance(stored, Exception):
                d.errback(stored)
                continue
            else:
                d.callback(stored)
            for observe in self.observers:
                try:
                    observe(stored)
                except Exception:
                    log.failure("observer of the state store")

    def _failed(self, deferreds, err):
        if self.healthy:
            log.error("state store: {error}; operations are refused until it can write", error=str(err))
        self.healthy = False
        if self.on_error:
            self.on_error(err)
        lost = 0
        for d in deferreds:
            if d is None:
                lost += 1
            else:
                d.errback(err)
        if lost:
            log.error("state store: {n} trailing event(s) not recorded: {error}", n=lost, error=str(err))
