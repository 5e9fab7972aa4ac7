"""What every state store shares: one writer thread that batches queued
events into a single transaction, links each into the hash chain, records
in the chain every row it writes, and signs the chain head.

A store subclasses ``BatchedStore`` and supplies ``_write(batch, sign)`` (its
transaction around ``write_batch``, then ``_committed``) and ``_close()``;
the SQL that differs between databases is only the placeholder and the
table prefix.

Everything that makes the record trustworthy happens here, in the writer
thread, so no caller can skip it:

- each event's ``writes`` column records the session and approval rows the
  same transaction wrote (the values as written), so ``hoopy audit verify``
  replays the chain and checks every column of every row;
- with a signing key, the head is signed (the last event of a batch carries
  the signature) whenever a batch holds an event in ``SIGN_KINDS`` (a session
  end, a sealed recording, a decision), when the last signature is
  ``sign_interval`` old, and by an ``audit.heartbeat`` event when events of
  this node are left unsigned that long or nothing happened for
  ``heartbeat``; each signed head goes to the anchor, if one is set.
"""
from __future__ import annotations

import collections
import itertools
import queue
import threading
import time
from typing import TYPE_CHECKING

import attrs

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from hoopy.audit.chain import _C_ASCII, FIELDS_V2, NO_WRITES, canonical_json, link_v2
from hoopy.audit.events import Event, StoredEvent

if TYPE_CHECKING:
    from hoopy.audit.signing import Signer

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
                 "peer", "kind", "outcome", "data", "writes", "prev", "hash", "signature")
# Columns added after the first release: opened stores that lack them get them.
ADDED_EVENT_COLUMNS = ("writes", "signature")
# A batch holding one of these is signed whatever the time since the last signature.
SIGN_KINDS = frozenset({"session.end", "recording.sealed", "approval.decided", "approval.expired",
                        "audit.heartbeat", "audit.key.created"})
HEARTBEAT = "audit.heartbeat"


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
    writes TEXT,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL,
    signature TEXT
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
_WAKE = object()  # something waits in BatchedStore._items


class Dialect:
    """How one database spells the few statements that differ."""

    rows_per_insert = 64  # 15 parameters each: far below any database's limit

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
        trip into the database (and out of the GIL) per batch, not per event.

        A row is EVENT_COLUMNS without ``signature`` (NULL, written as such in the statement) or,
        the batch's signed last row only, with it: Python's sqlite3 binds None through its
        adapter lookup (a tuple, a dict lookup and an AttributeError raised and cleared, about
        10k instructions), once an event for a column that is nearly always NULL."""
        flat = itertools.chain.from_iterable  # (the parameters flattened in C, not a Python loop)
        i, n = 0, len(rows)
        while i < n:
            end = min(i + self.rows_per_insert, n)
            # Rows of several batches (the event log's, put in together): a signed row ends a chunk.
            for j in range(i, end - 1):
                if len(rows[j]) == _WIDTH:
                    end = j + 1
                    break
            chunk = rows[i:end]
            cur.execute(self._insert_sql(len(chunk), len(chunk[-1]) == _WIDTH), list(flat(chunk)))
            i = end

    def _insert_sql(self, n: int, last_signed: bool = False) -> str:
        """The INSERT of ``n`` rows (the last one with its signature, or none), made once."""
        cache = self.__dict__.setdefault("_inserts", {})
        sql = cache.get((n, last_signed))
        if sql is None:
            p = self.param
            unsigned = f"({', '.join(p for _ in EVENT_COLUMNS[:-1])}, NULL)"
            signed = f"({', '.join(p for _ in EVENT_COLUMNS)})"
            values = [unsigned] * n
            if last_signed:
                values[-1] = signed
            sql = cache[(n, last_signed)] = (f"INSERT INTO {self.prefix}events ({', '.join(EVENT_COLUMNS)}) VALUES "
                                             + ", ".join(values))
        return sql

    def head(self, cur):
        cur.execute(f"SELECT seq, hash FROM {self.prefix}events ORDER BY seq DESC LIMIT 1")
        return cur.fetchone()


_COLUMN_SETS: dict = {}


def _row_write(table_columns, values: dict, drop=()) -> dict:
    """The values an upsert or update really writes (unknown keys are not written)."""
    known = _COLUMN_SETS.get(table_columns)
    if known is None:
        known = _COLUMN_SETS[table_columns] = frozenset(table_columns)
    return {c: v for c, v in values.items() if c in known and c not in drop}


_stored = tuple.__new__  # StoredEvent(seq, hash, event) in one C call (a named tuple)
_SEQ, _TIME, _KIND, _HASH = (EVENT_COLUMNS.index(c) for c in ("seq", "time_us", "kind", "hash"))
_WIDTH = len(EVENT_COLUMNS)  # a row with its signature; every other row is one shorter
if EVENT_COLUMNS != FIELDS_V2 + ("prev", "hash", "signature"):  # write_batch builds rows in this order
    raise RuntimeError("EVENT_COLUMNS must be the chained fields, then prev, hash, signature")


def write_batch(dialect: Dialect, cur, batch, head, gateway: str, signer=None, sign: bool = False):
    """Insert a batch, each event linked to the one before, inside the
    caller's transaction. Returns (results, new head, ids of approvals that
    left pending, the signed head or None); results pair each Deferred with
    its StoredEvent or the StateConflict that kept it out of the chain.

    Each event's ``writes`` records the rows written with it, as written;
    with a ``signer``, the batch's last event is signed when ``sign`` or when
    the batch holds an event of a kind in SIGN_KINDS."""
    seq, prev = head
    results, decided, rows = [], [], []
    for event, data, session, approval, expect, d in batch:
        if session is None and approval is None:
            # The common item (a statement's decision, its outcome): no row written with it, so
            # ``writes`` is NO_WRITES (link_v2: one C call where hoopy/audit/_canon.c is built).
            # (append refuses expect_state without an approval row.)
            seq += 1
            row = [seq, event.time_us, gateway, event.session, event.identity, event.connection, event.protocol,
                   event.peer, event.kind, event.outcome, data, NO_WRITES]
            h = link_v2(prev, row)
            row += (prev, h)
            rows.append(row)
            prev = h
            results.append((d, _stored(StoredEvent, (seq, h, event))))
            continue
        if expect is not None:
            conflict = dialect.conditional(cur, approval, expect)
            if conflict is not None:
                results.append((d, conflict))  # nothing written for this one
                continue
        seq += 1
        writes = {}
        if session:
            writes["sessions"] = _row_write(SESSION_COLUMNS, {"gateway": gateway, **session})
        if approval:
            if expect is None:
                writes["approvals"] = _row_write(APPROVAL_COLUMNS, {"gateway": gateway, **approval})
            else:  # dialect.conditional wrote these columns, where the state was ``expect``
                writes["approvals"] = _row_write(APPROVAL_COLUMNS, approval, drop=("gateway",))
                writes["expect"] = {"approvals": {"state": expect}}
        # The row in EVENT_COLUMNS order: the FIELDS_V2 values the link covers, then prev, hash (and the
        # signature, the batch's signed last row only).
        row = [seq, event.time_us, gateway, event.session, event.identity, event.connection, event.protocol,
               event.peer, event.kind, event.outcome, data, canonical_json(writes) if writes else NO_WRITES]
        h = link_v2(prev, row)
        row += (prev, h)  # (the signature, NULL or the last row's, is added below)
        rows.append(row)
        if session:
            dialect.upsert(cur, "sessions", SESSION_COLUMNS, writes["sessions"])
        if approval and expect is None:
            dialect.upsert(cur, "approvals", APPROVAL_COLUMNS, writes["approvals"])
        if approval and approval.get("state", "pending") != "pending":
            decided.append(approval["id"])
        prev = h
        results.append((d, _stored(StoredEvent, (seq, h, event))))
    signed = None
    if rows and signer is not None and (sign or any(r[_KIND] in SIGN_KINDS for r in rows)):
        last = rows[-1]
        signature = signer.sign(last[_SEQ], last[_HASH])
        last.append(signature)  # the only row with a signature column (Dialect.insert_events)
        signed = {"gateway": gateway, "seq": last[_SEQ], "hash": last[_HASH], "time_us": last[_TIME],
                  "signature": signature}
    if rows:
        dialect.insert_events(cur, rows)
    return results, (seq, prev), decided, signed


def _clean_text(value):
    """A string the database can store: lone surrogates (bytes decoded with
    surrogateescape) become their \\udXXX escape."""
    if isinstance(value, str) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


_EVENT_TEXT = ("session", "identity", "connection", "protocol", "peer", "kind", "outcome")


def _clean_event(event: Event) -> Event:
    # The common case, once per event on the reactor: every field ASCII (or None), nothing to clean
    # (one C call where hoopy/audit/_canon.c is built; False only means: look).
    if _C_ASCII is not None and _C_ASCII(event.session, event.identity, event.connection, event.protocol,
                                         event.peer, event.kind, event.outcome):
        return event
    for v in (event.session, event.identity, event.connection, event.protocol, event.peer, event.kind,
              event.outcome):
        if v is not None and not (type(v) is str and v.isascii()):
            break
    else:
        return event
    fields = _EVENT_TEXT
    changed = {f: _clean_text(getattr(event, f)) for f in fields}
    if all(changed[f] is getattr(event, f) for f in fields):
        return event
    return attrs.evolve(event, **changed)


def _clean_row(row: dict | None) -> dict | None:
    if not row:
        return row
    return {k: _clean_text(v) for k, v in row.items()}


class BatchedStore:
    """The queue, the writer thread, signing, and the hand-back to the reactor."""

    max_batch = 512
    linger = 0.005  # seconds a batch of trailing events waits for company
    # Events waiting for the writer past which appends are refused: a writer that cannot keep up
    # (a disk that hangs) must not let them queue in memory without end (its operations wait and
    # none is forwarded; past this they are refused at once).
    max_pending = 50_000
    shared = False  # True where other gateway nodes write the same store
    # Why every append is refused from now on (a store that can write no more until a restart sets it,
    # then max_pending to 0); None: not so.
    refusing: str | None = None

    def __init__(self, gateway: str, reactor=None, busy_timeout: float = 5.0):
        self.gateway = gateway
        self.busy_timeout = busy_timeout
        self._reactor = reactor
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped: Deferred | None = None
        self.healthy = True
        self.on_error = None  # callable(exc): the metrics hook
        # Signing (hoopy.audit.signing.Signer), set before start; None: the chain is unsigned.
        self.signer: Signer | None = None
        self.anchor = None  # hoopy.audit.anchor.Anchor: receives every signed head
        self.sign_interval = 2.0  # events of this node stay unsigned at most about this long
        self.heartbeat = 60.0  # an idle node signs a heartbeat event this often
        self.last_signed: dict | None = None  # the last head this node signed (writer thread)
        self._last_sig = 0.0  # monotonic time of the last signature
        self._unsigned_since: float | None = None  # first event of ours not yet signed
        self._next_try = 0.0  # a failed heartbeat is tried again no sooner than this
        # callables(StoredEvent), on the reactor thread once an event is durable (notifications)
        self.observers: list = []
        self._to_reactor = lambda f, *args: self.reactor.callFromThread(f, *args)  # (_start_writer)
        # What is appended waits here, in the order appended; the queue carries only wake-ups
        # (_WAKE, _STOP). An append someone waits for always wakes the writer; a trailing one
        # (append_trailing) only when the writer is idle (``_armed`` False): after each batch the
        # writer looks here again within ``linger`` without being woken, so a statement's
        # outcome rides with the next decision at no hand-off of its own.
        self._items: collections.deque = collections.deque()
        self._armed = False
        self._head: tuple | None = None  # (seq, hash) of the chain's last event, where a store keeps it
        self._writes = 0  # (writer thread) batches committed, counted while stopping

    @property
    def reactor(self):
        if self._reactor is None:
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def _start_writer(self):
        from hoopy.sockwrite import thread_caller

        self._to_reactor = thread_caller(self.reactor)  # once a batch: the cheapest hand-back there is
        self._last_sig = time.monotonic()
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
        d: Deferred[StoredEvent] = Deferred()
        if self._stopped is not None or self._thread is None:
            d.errback(StoreError("the state store is closed"))
            return d
        try:
            data = canonical_json(event.data)  # (in C where hoopy/audit/_canon.c is built)
        except (TypeError, ValueError) as e:  # a bug in the caller, never silently dropped
            d.errback(StoreError(f"event data is not JSON: {e}"))
            return d
        if expect_state is not None and not (approval and approval.get("id")):
            d.errback(StoreError("expect_state needs an approval row with its id"))
            return d
        if len(self._items) >= self.max_pending:
            # (as any failure to write: logged once, /health 503, counted; healthy again once a batch is
            # written. A store that can write no more sets max_pending to 0 and ``refusing``: no check
            # of its own on this path, taken once an operation)
            self._failed([d], StoreError(self.refusing or f"the state store is {len(self._items)} events behind"))
            return d
        self._items.append((_clean_event(event), data, _clean_row(session), _clean_row(approval), expect_state, d))
        self._queue.put(_WAKE)
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
        if len(self._items) >= self.max_pending:
            self._failed([None], StoreError(f"{self.refusing or f'the state store is {len(self._items)} events behind'}"
                                            f" ({event.kind})"))
            return
        self._items.append((_clean_event(event), data, None, None, None, None))
        if not self._armed:
            # The writer may wait with no timeout: wake it. (If it disarms itself after this
            # read of _armed, it looks at _items once more after, and finds the event.)
            self._armed = True
            self._queue.put(_WAKE)

    def _take(self, batch: list) -> bool:
        """(Writer thread) what waits in _items, in order, onto ``batch``, up to a batch's
        worth; whether any of it is waited for."""
        items = self._items
        urgent = False
        room = self.max_batch - len(batch)
        while items and room > 0:
            item = items.popleft()
            batch.append(item)
            urgent = urgent or item[-1] is not None
            room -= 1
        return urgent

    # --- the writer thread ---------------------------------------------------

    def _idle_timeout(self) -> float | None:
        """How long the writer may wait for work before it must sign."""
        if self.signer is None:
            return None
        if self._unsigned_since is not None:
            due = self._unsigned_since + self.sign_interval
        else:
            due = self._last_sig + self.heartbeat
        return max(0.0, max(due, self._next_try) - time.monotonic())

    def _run(self):
        q = self._queue
        while self._stopped is None:  # (stopped: straight to the drain below, whatever tokens still wait)
            timeout = self._idle_timeout()
            lingering = self._armed and (timeout is None or timeout > self.linger)
            if lingering:
                timeout = self.linger
            try:
                token = q.get(timeout=timeout) if timeout is not None else q.get()
            except queue.Empty:
                if not lingering:
                    try:
                        self._idle()
                    except Exception:  # (a defect: logged, and the thread kept, as in _write_guarded)
                        log.failure("state store: the writer failed while idle")
                    continue
                if not self._items:
                    # Nothing trailed within linger: disarmed (the next trailing event wakes
                    # this thread), then one more look, for an append that saw it armed.
                    self._armed = False
                    if not self._items:
                        continue
                    self._armed = True
                # Trailing events that lingered: written now.
                batch: list = []
                self._take(batch)
                sign = self.signer is not None and time.monotonic() - self._last_sig >= self.sign_interval
                self._write_guarded(batch, sign)
                continue
            if token is _STOP:
                break
            batch = []
            urgent = self._take(batch)
            if not batch:
                continue  # (a wake-up for what an earlier batch took)
            stop_after = False
            deadline = None
            while len(batch) < self.max_batch:
                try:
                    if urgent:
                        if q.empty():
                            break  # (this thread alone takes from the queue: no Empty raised and caught per batch)
                        token = q.get_nowait()
                    else:
                        # Only trailing events so far: wait a moment for one
                        # someone waits on, and share its flush.
                        if deadline is None:
                            deadline = time.monotonic() + self.linger
                        token = q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if token is _STOP:
                    stop_after = True
                    break
                urgent = self._take(batch) or urgent
            self._take(batch)  # what came meanwhile: the order is the deque's
            self._armed = True  # what trails from now on is looked for within linger
            sign = self.signer is not None and time.monotonic() - self._last_sig >= self.sign_interval
            self._write_guarded(batch, sign)
            if stop_after:
                break
        failed = 0
        while self._items:  # stopping: everything appended before the stop is written (or refused)
            batch = []
            self._take(batch)
            self._writes = 0
            self._write_guarded(batch, False)
            failed = 0 if self._writes else failed + 1
            if failed == 2:
                # Two batches in a row not written (the chain lock held elsewhere, the server gone):
                # what is left is refused at once, not tried batch after batch, each waiting a
                # timeout (50,000 pending at 512 a batch: a stop of minutes).
                rest = [item[-1] for item in self._items]
                self._items.clear()
                self._to_reactor(self._failed, rest, StoreError("the state store is stopping and cannot write"))
        try:
            if self.signer is not None and self._unsigned_since is not None:
                self._heartbeat("stopping")  # nothing of ours is left unsigned
        finally:
            try:
                self._close()
            finally:
                self.reactor.callFromThread(self._stopped.callback, None)

    def _write_guarded(self, batch, sign: bool):
        """``_write``, and if it raises what it does not handle itself (a defect), that batch refused
        and the thread kept: a writer thread that died would leave every later append waiting for
        ever, the operations with it, and the stop."""
        try:
            self._write(batch, sign)
        except Exception as e:
            log.failure("state store: the writer failed on a batch; its operations are refused")
            self._head = None  # (read again before the next batch)
            self._to_reactor(self._failed, [b[-1] for b in batch], StoreError(f"the state store cannot write: {e!r}"))

    def _idle(self):
        """(Writer thread) nothing came within ``_idle_timeout``: the heartbeat is due."""
        self._heartbeat("unsigned events" if self._unsigned_since is not None else "idle")

    def _heartbeat(self, why: str):
        """Sign the head with an event of its own (nothing else to sign, or a tail left unsigned).
        If the store cannot write, the next try waits ``sign_interval``."""
        self._next_try = time.monotonic() + self.sign_interval
        assert self.signer is not None  # callers: only when signing
        event = Event(kind=HEARTBEAT, outcome="ok", data={"key": self.signer.key_id, "why": why})
        # Its own Deferred, so a store that cannot write says so once (healthy turns False), not
        # "a trailing event was lost" every few seconds.
        d: Deferred[StoredEvent] = Deferred()
        d.addErrback(lambda f: None)
        self._write_guarded([(event, canonical_json(event.data), None, None, None, d)], True)

    def _committed(self, wrote: int, signed: dict | None):
        """In the writer thread, after COMMIT: keep the signing clock, feed the anchor."""
        self._next_try = 0.0  # the store writes: a heartbeat is due on time again
        self._writes += 1
        if signed is not None:
            self._last_sig = time.monotonic()
            self._unsigned_since = None
            self.last_signed = signed
            if self.anchor is not None:
                self.anchor.submit(signed)
        elif wrote and self.signer is not None and self._unsigned_since is None:
            self._unsigned_since = time.monotonic()

    def _write(self, batch, sign: bool):
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
            elif not d.called:  # (a batch handed back before a later step of its write failed)
                d.errback(err)
        if lost:
            log.error("state store: {n} trailing event(s) not recorded: {error}", n=lost, error=str(err))
