"""The PostgreSQL state store: several gateway nodes, one chain.

``state = "postgresql://user@host/db"`` puts events, sessions and approvals
in the ``hoopy`` schema of that database (created if absent). Like the
SQLite store, one writer thread batches whatever is queued into a single
transaction and the Deferred from ``append`` fires only after COMMIT. Every
node appends to the same chain, and every batch takes a transaction-level
advisory lock before it writes: a batch of events only is linked to the head
this node's last batch left and written by one statement that writes nothing
unless that is still the head (one round trip); any other batch, or one that
found another node's events there, reads the head under the lock first. So
links stay right whichever node writes next.

When an approval row leaves ``pending`` the same transaction sends
``NOTIFY hoopy_approvals, '<id>'`` (delivered on COMMIT only); a listener
thread on every node hands those ids to the approval service, so the node
holding the operation resumes it whichever node the reviewer reached.

The password never goes in ``state``: libpq's PGPASSWORD, ~/.pgpass or a
``passfile=`` parameter supply it (config refuses an inline one).
"""
from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from typing import Any

from twisted.logger import Logger
from zope.interface import implementer

from hoopy.audit.chain import GENESIS
from hoopy.audit.seams import IEventStore, IStoreReader, ReaderQueries
from hoopy.audit.writer import (ADDED_EVENT_COLUMNS, EVENT_COLUMNS, BatchedStore, Dialect, StoreError, migration_sql,
                                schema_sql, write_batch)

log = Logger()

SCHEMA_NAME = "hoopy"
CHANNEL = "hoopy_approvals"
# pg_advisory_xact_lock key serializing chain appends (and schema creation)
# across nodes: "hoopy" in ASCII, unlikely to meet an application's own key.
CHAIN_LOCK = 0x686F6F7079  # = 448546173049, named in docs/operators.md

SCHEMA = f"CREATE SCHEMA IF NOT EXISTS {SCHEMA_NAME};\n" + schema_sql(f"{SCHEMA_NAME}.", "BIGINT")

# Applied unless the URL says otherwise: a dead server or a silent network
# must turn into a refusal within seconds, not a writer stuck forever.
CONNECT_DEFAULTS = {
    "connect_timeout": "5",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "3",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
    "application_name": "hoopy",
}


def _psycopg():
    try:
        import psycopg
    except ImportError as e:  # pragma: no cover - an install problem, named clearly
        raise StoreError("a PostgreSQL state needs psycopg 3: pip install 'psycopg[binary]'") from e
    return psycopg


def describe(dsn: str) -> str:
    """The DSN without its password, for logs and errors."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(dsn)
    except Exception:  # unreadable: never echo it, it may hold a password
        return "postgresql://(unparsable)"
    host = info.get("host") or info.get("hostaddr") or "localhost"
    port = info.get("port") or "5432"
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{host}:{port}/{info.get('dbname', '')}"


def connect(dsn: str, **kw):
    """A psycopg connection (autocommit; transactions are explicit)."""
    psycopg = _psycopg()
    from psycopg.conninfo import conninfo_to_dict

    params = {**CONNECT_DEFAULTS, **conninfo_to_dict(dsn)}
    try:
        return psycopg.connect(**params, autocommit=True, **kw)
    except psycopg.Error as e:
        raise StoreError(f"cannot connect to the state store {describe(dsn)}: {_first_line(e)}") from e


def _first_line(e) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def event_columns(conn) -> set:
    return {r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = 'events'",
        (SCHEMA_NAME,)).fetchall()}


def ensure_schema(conn) -> None:
    """Create the hoopy schema if absent, and bring a store made by an earlier hoopy up to
    date (event and approval columns, indexes). Skipped when all is there, so a runtime role
    without CREATE works once an owner has run it."""
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL"
                       " AND to_regclass(%s) IS NOT NULL",
                       (f"{SCHEMA_NAME}.events", f"{SCHEMA_NAME}.sessions",
                        f"{SCHEMA_NAME}.approvals")).fetchone()
    psycopg = _psycopg()
    try:
        if not row[0]:
            with conn.transaction():
                # Two nodes starting at once would race on CREATE ... IF NOT EXISTS.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHAIN_LOCK,))
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
        existing = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            (SCHEMA_NAME, "approvals")).fetchall()}
        todo = migration_sql(existing, f"{SCHEMA_NAME}.", "BIGINT")
        todo += [f"ALTER TABLE {SCHEMA_NAME}.events ADD COLUMN {c} text"
                 for c in ADDED_EVENT_COLUMNS if c not in event_columns(conn)]
        if any(s.startswith("ALTER") for s in todo) or not _has_index(conn, "approvals_canonical"):
            # A table made by an older release: its new columns (needs the owner, once).
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHAIN_LOCK,))
                for stmt in todo:
                    conn.execute(stmt.replace("ADD COLUMN", "ADD COLUMN IF NOT EXISTS"))
    except psycopg.errors.InsufficientPrivilege as e:
        raise StoreError(
            f"the hoopy schema needs creating or upgrading, and this role may not: {_first_line(e)}; "
            "start the gateway once as the tables' owner") from e


def _has_index(conn, name: str) -> bool:
    return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{SCHEMA_NAME}.{name}",)).fetchone()[0]


@implementer(IStoreReader)
class PostgresReader(ReaderQueries):
    """Blocking reads (use from a thread or the CLI), all from one snapshot
    (a read-only REPEATABLE READ transaction held until ``close``), so a
    verify or an export sees events, sessions and approvals as of one moment
    while other nodes keep appending. ``events`` streams through a
    server-side cursor: the chain may be far larger than memory."""

    itersize = 2000
    _cursors = itertools.count()

    dialect = Dialect("%s", f"{SCHEMA_NAME}.")

    def __init__(self, dsn: str):
        from psycopg import IsolationLevel
        from psycopg.rows import dict_row

        self.dsn = dsn
        self._columns: set[str] | None = None
        self.db = connect(dsn)
        self.db.autocommit = False
        self.db.isolation_level = IsolationLevel.REPEATABLE_READ
        self.db.read_only = True
        self.db.row_factory = dict_row
        try:
            present = self.db.execute("SELECT to_regclass(%s) IS NOT NULL AS present",
                                      (f"{SCHEMA_NAME}.events",)).fetchone()["present"]
        except Exception as e:
            self.db.close()
            raise StoreError(f"cannot read the state store {describe(dsn)}: {_first_line(e)}") from e
        if not present:
            self.db.close()
            raise StoreError(f"no hoopy state store in {describe(dsn)}")

    def close(self):
        self.db.close()

    def _event_columns(self) -> set[str]:
        if self._columns is None:
            self._columns = {r["column_name"] for r in self._rows(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = 'events'", (SCHEMA_NAME,))}
        return self._columns

    def _rows(self, sql, args=()):
        return list(self.db.execute(sql, args).fetchall())

    def _stream(self, sql, args):
        with self.db.cursor(name=f"hoopy_events_{next(self._cursors)}") as cur:
            cur.itersize = self.itersize
            cur.execute(sql, args)
            yield from cur




class _IdleConnectionLost(Exception):
    """The writer's connection was found lost before anything of the batch could be committed."""


# A batch's events in one statement whatever its size: each column one array, sent in binary (no
# text escaping of the data, one statement text, so prepared once by psycopg), unnested into rows.
_ARRAYS = ", ".join(f"%b::{'bigint' if c in ('seq', 'time_us') else 'text'}[]" for c in EVENT_COLUMNS)
_INSERT = f"INSERT INTO {SCHEMA_NAME}.events ({', '.join(EVENT_COLUMNS)})"
INSERT_EVENTS = f"{_INSERT} SELECT * FROM unnest({_ARRAYS})"
LOCK = f"SELECT pg_advisory_xact_lock({CHAIN_LOCK})"
# Whether the event (seq, hash) is in the chain: a batch whose reply was lost looks for its last
# event (its hash covers every row the batch wrote).
HAS_EVENT = f"SELECT 1 FROM {SCHEMA_NAME}.events WHERE seq = %s AND hash = %s"
HEAD = f"SELECT seq, hash FROM {SCHEMA_NAME}.events ORDER BY seq DESC LIMIT 1"
# The same INSERT as a transaction of its own (the connection is in autocommit): it takes the chain
# lock before it writes a row (the lock is the outer side of the join, the rows the inner), and
# writes only if the chain's head is still the (seq, hash) the writer linked the rows to (the
# params after the columns: seq, seq, seq, hash): the last seq that one, and it there with that
# hash (or, at seq 0, the chain empty). Another node's rows seen: nothing written, no error. Rows
# another node committed while this one waited for the lock are not seen (the statement's snapshot
# is older) but take the same seqs: the primary key refuses the whole statement. Either way nothing
# of it is written. (max(seq), not "no seq > n": the planner reads that from statistics that lag
# behind the chain's end, and scans the whole table for it; max is one step of the index.)
INSERT_AFTER = (f"{_INSERT} SELECT u.* FROM ({LOCK}) AS l, unnest({_ARRAYS}) AS u"
                f" WHERE COALESCE((SELECT max(seq) FROM {SCHEMA_NAME}.events), 0) = %b::bigint"
                f" AND (%b::bigint = 0 OR EXISTS (SELECT FROM {SCHEMA_NAME}.events WHERE seq = %b::bigint"
                f" AND hash = %b::text))")
# One round trip (the simple protocol runs the three): a transaction, the chain lock, the head.
LOCKED_HEAD = f"BEGIN; {LOCK}; {HEAD}"
_WIDTH = len(EVENT_COLUMNS)


def _arrays(rows) -> list:
    """Rows (EVENT_COLUMNS, the signature only on a signed row) as one list per column."""
    cols = [list(c) for c in zip(*rows)][:_WIDTH - 1]  # (the signature: made below for every row)
    cols.append([r[-1] if len(r) == _WIDTH else None for r in rows])
    return cols


# A protocol message (a statement's parameters) is at most 1 GB: a batch whose event data passes
# this many characters (4 bytes at most each) goes in several statements, the locked way.
_STATEMENT_CHARS = 128 << 20
_DATA = EVENT_COLUMNS.index("data")


def _fits(rows, at: int = _DATA) -> bool:
    return sum(len(r[at]) for r in rows) <= _STATEMENT_CHARS


class PgDialect(Dialect):
    """Dialect with the events INSERT as one statement of arrays (INSERT_EVENTS)."""

    def insert_events(self, cur, rows):
        if len(rows) == 1 or _fits(rows):  # (nearly always)
            cur.execute(INSERT_EVENTS, _arrays(rows))
            return
        start, size = 0, 0
        for i, r in enumerate(rows):
            if size + len(r[_DATA]) > _STATEMENT_CHARS and i > start:
                cur.execute(INSERT_EVENTS, _arrays(rows[start:i]))
                start, size = i, 0
            size += len(r[_DATA])
        cur.execute(INSERT_EVENTS, _arrays(rows[start:]))


class _Rows(Dialect):
    """Where write_batch leaves an events-only batch's rows, for INSERT_AFTER."""

    def __init__(self):
        super().__init__("%s", f"{SCHEMA_NAME}.")
        self.rows: list = []

    def insert_events(self, cur, rows):
        self.rows = rows


@implementer(IEventStore)
class PostgresEventStore(BatchedStore):
    """One writer thread, batched transactions, a chain shared by every node.

    Each round trip costs the writer thread the GIL again, which the reactor thread holds while it
    is busy (up to the switch interval, 5 ms, each): a batch takes as few as it can. An events-only
    batch is linked to the head this node's last batch left (``_head``) and written by one
    statement, its own transaction (INSERT_AFTER: the lock, the head checked, the rows; one round
    trip). If another node appended meanwhile nothing is written and the batch goes the locked way,
    as every batch with session or approval rows does: [BEGIN, lock, head read] in one round trip,
    then its statements and COMMIT. A node that found another one appending (``_contended``) goes
    the locked way until its head read shows no one else wrote."""

    shared = True  # other gateway nodes may write the same store
    dialect = PgDialect("%s", f"{SCHEMA_NAME}.")

    def __init__(self, dsn: str, gateway: str, reactor=None, busy_timeout: float = 5.0):
        super().__init__(gateway, reactor, busy_timeout)
        self.dsn = dsn
        self._listener: threading.Thread | None = None
        self._closing = threading.Event()
        self._conn: Any = None  # (psycopg.Connection: imported only where the store is used)
        self._watchers: list = []
        self._contended = False  # the last head read found another node's events after ours
        # A server that stops answering (its backend stopped, a disk that hangs under COMMIT) is
        # not seen by keepalives or tcp_user_timeout (the host's TCP stack answers), and its
        # statement_timeout is its own to enforce: the writer would wait for ever, every operation
        # with it, and /health stay 200. A batch not done by ``_deadline`` has its connection cut by
        # the watchdog thread, so it fails and is refused, as any connection lost. (Past every
        # timeout the server enforces: the lock's, then a few statements'.)
        self.stuck_after = max(5.0, 6 * busy_timeout)
        self._deadline: float | None = None
        self._watchdog: threading.Thread | None = None

    def __repr__(self):
        return f"<PostgresEventStore {describe(self.dsn)} gateway={self.gateway}>"

    # --- lifecycle -------------------------------------------------------------

    def _connect(self):
        conn = connect(self.dsn)
        ms = max(1, int(self.busy_timeout * 1000))
        # A lock held too long (another node stuck mid-batch) or a query that
        # never returns fails the batch, and so refuses its operations.
        conn.execute(f"SET lock_timeout = {ms}")
        conn.execute(f"SET statement_timeout = {ms * 2}")
        # A node stalled inside its locked batch (between round trips: its process stopped, its
        # host paused) would hold the chain lock, and refuse every other node, until the server's
        # TCP keepalive gives up (two hours by default): the server ends that transaction instead.
        conn.execute(f"SET idle_in_transaction_session_timeout = {ms * 2}")
        # Durable before acknowledged: a server, database or role set to synchronous_commit = off
        # would have COMMIT return before the WAL is flushed (a crash loses acknowledged events).
        # Only "off" is raised; a stronger setting (remote_apply, ...) is the operator's to keep.
        conn.execute("SELECT set_config('synchronous_commit', 'on', false)"
                     " WHERE current_setting('synchronous_commit') = 'off'")
        return conn

    def start(self):
        """Connect, create the schema, LISTEN: synchronously, at startup, so a
        store that is not there stops the gateway before it listens."""
        conn = self._connect()
        try:
            ensure_schema(conn)
            # Proves the tables are there and readable before the gateway listens.
            conn.execute(f"SELECT seq FROM {SCHEMA_NAME}.events ORDER BY seq DESC LIMIT 1").fetchone()
        except Exception as e:
            conn.close()
            raise StoreError(f"cannot open the state store {describe(self.dsn)}: {_first_line(e)}") from e
        try:
            listen = connect(self.dsn)
            listen.execute(f"LISTEN {CHANNEL}")
        except Exception as e:
            conn.close()
            raise StoreError(f"cannot listen on the state store {describe(self.dsn)}: {_first_line(e)}") from e
        self._conn = conn
        self._listener = threading.Thread(target=self._listen, args=(listen,),
                                          name="hoopy-store-listener", daemon=True)
        self._listener.start()
        self._watchdog = threading.Thread(target=self._watch, name="hoopy-store-watchdog", daemon=True)
        self._watchdog.start()
        self._start_writer()
        log.info("state store: {where}", where=describe(self.dsn))

    def reader(self) -> PostgresReader:
        return PostgresReader(self.dsn)

    def watch_approvals(self, callback) -> None:
        """``callback(approval_id)`` on the reactor thread when any node moved
        an approval out of pending; ``callback(None)`` after the listener
        reconnected (notifications may have been missed: check them all)."""
        self._watchers.append(callback)

    # --- the writer thread -----------------------------------------------------------

    def _close(self):
        self._closing.set()
        if self._conn is not None:
            self._conn.close()
        if self._listener is not None:
            self._listener.join(5)

    def _write(self, batch, sign=False):
        self._deadline = time.monotonic() + self.stuck_after
        try:
            self._write_batch(batch, sign)
        finally:
            self._deadline = None

    def _watch(self):
        """(Its own thread) the connection of a batch past its deadline cut: see ``stuck_after``."""
        while not self._closing.wait(min(1.0, self.stuck_after / 4)):
            deadline = self._deadline
            if deadline is None or time.monotonic() < deadline:
                continue
            conn = self._conn
            try:
                fd = conn.pgconn.socket if conn is not None else -1
            except Exception:  # (closed meanwhile: the writer is past it)
                continue
            if fd < 0:
                continue
            log.error("state store: no answer from {where} in {s:.0f} s; its connection is cut and the batch"
                      " refused", where=describe(self.dsn), s=self.stuck_after)
            try:
                s = socket.socket(fileno=os.dup(fd))
                try:
                    s.shutdown(socket.SHUT_RDWR)  # (the writer's wait returns, libpq sees the end)
                finally:
                    s.close()
            except OSError:
                pass
            self._deadline = time.monotonic() + self.stuck_after  # (a reconnection meanwhile: its own turn)

    def _write_batch(self, batch, sign):
        psycopg = _psycopg()
        try:
            try:
                results, signed = self._transaction(batch, sign)
            except _IdleConnectionLost:
                # The server closed the connection while it sat idle (restart,
                # failover, pg_terminate_backend) and nothing of this batch was
                # committed: once more on a new connection. If that fails, refuse.
                self._drop()
                results, signed = self._transaction(batch, sign)
        except Exception as e:
            if isinstance(e, _IdleConnectionLost) and e.__cause__ is not None:
                e = e.__cause__
            self._head = None  # read again, under the lock, before the next batch
            lost = isinstance(e, psycopg.OperationalError) and not isinstance(
                e, (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled))
            if lost or (self._conn is not None and (self._conn.broken or self._conn.closed)):
                self._drop()  # the next batch reconnects
            err = StoreError(f"the state store cannot write: {_first_line(e)}")
            self._to_reactor(self._failed, [b[-1] for b in batch], err)
            return
        self._committed(sum(1 for _, r in results if not isinstance(r, Exception)), signed)
        self._to_reactor(self._written, results)

    def _drop(self):
        try:
            if self._conn is not None:
                self._conn.close()
        except Exception:  # a connection given up on: the error that broke it is the one reported
            pass
        self._conn = None

    def _ready(self):
        """The writer's connection (made again where the last batch lost it)."""
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
        return self._conn

    def _transaction(self, batch, sign):
        """One transaction for the whole batch; (results, the signed head or None) after COMMIT."""
        self._ready()
        for item in batch:
            if item[2] is not None or item[3] is not None:
                break  # session or approval rows: the locked way
        else:
            # (_fits: the batch's data, item[1], in one statement; else the locked way, in several)
            if self._head is not None and not self._contended and (len(batch) == 1 or _fits(batch, 1)):
                done = self._optimistic(batch, sign)
                if done is not None:
                    return done
        return self._locked(batch, sign)

    def _optimistic(self, batch, sign):
        """An events-only batch linked to the cached head, in one statement. (results, signed),
        or None where the head had moved (nothing written)."""
        rows = _Rows()
        results, head, _, signed = write_batch(rows, None, batch, self._head, self.gateway, self.signer, sign)
        seq, prev = self._head
        params = _arrays(rows.rows) + [seq, seq, seq, prev]
        if self._insert_after(params, len(rows.rows), rows.rows[-1]):
            self._head = head
            return results, signed
        self._contended = True
        return None

    def _insert_after(self, params, n, last) -> bool:
        """INSERT_AFTER; whether the rows are in the chain. A connection lost on the way leaves
        it unknown whether the statement was committed: the same statement once more on a new
        connection (the same rows after the same head: one of the two at most is written), and
        if that writes nothing, the rows looked for."""
        psycopg = _psycopg()
        cur = self._conn.cursor()
        try:
            cur.execute(INSERT_AFTER, params)
            return cur.rowcount == n
        except psycopg.errors.UniqueViolation:
            return False  # (another node's rows, committed while this statement waited for the lock)
        except psycopg.OperationalError as e:
            if not self._conn.broken:
                raise
            lost = e
        self._drop()
        cur = self._ready().cursor()
        try:
            cur.execute(INSERT_AFTER, params)
            if cur.rowcount == n:
                return True
        except psycopg.errors.UniqueViolation:
            pass
        except psycopg.Error as e:
            raise e from lost
        cur.execute(HAS_EVENT, (last[0], last[13]))
        return cur.fetchone() is not None  # (where not: another node's rows follow the head: never ours)

    @staticmethod
    def _rollback(conn):
        if not conn.broken and not conn.closed:
            try:
                conn.execute("ROLLBACK")
            except Exception:  # the batch's own error, raised next, is the one that matters
                pass

    def _locked(self, batch, sign):
        """The batch with the chain lock taken and the head read first (one round trip), then
        its statements and COMMIT."""
        psycopg = _psycopg()
        # (_ready: the one-round-trip way, missed, may have left a connection found closed since;
        # nothing of this batch was written on it)
        conn = self._ready()
        cur = conn.cursor()
        try:
            cur.execute(LOCKED_HEAD)
            while cur.nextset():
                pass
            head = tuple(cur.fetchone() or (0, GENESIS))
        except psycopg.OperationalError as e:
            if conn.broken:  # (no COMMIT sent: nothing of the batch written)
                raise _IdleConnectionLost() from e
            self._rollback(conn)
            raise
        except BaseException:
            self._rollback(conn)
            raise
        try:
            # Another node's events since our last batch: it appends too, so the next batch goes
            # this way as well (a guess from the cache would mostly miss); else the cache is right.
            self._contended = self._head is not None and head != self._head
            # What was appended while the lock was awaited (another node's batch ahead) goes in too,
            # under the same lock and COMMIT: where nodes take turns, each turn carries more.
            if self._items and len(batch) < self.max_batch:
                self._take(batch)
            before = head
            results, head, decided, signed = write_batch(self.dialect, cur, batch, head, self.gateway,
                                                         self.signer, sign)
            for aid in decided:  # delivered on COMMIT, never before
                cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, aid))
        except BaseException:
            self._rollback(conn)
            raise
        try:
            cur.execute("COMMIT")
        except psycopg.OperationalError as e:
            # The COMMIT sent and the connection lost before its reply: committed or not is unknown.
            # The batch's last event there (its hash covers every row the batch wrote) says it was.
            if not (conn.broken and head != before and self._found(head, e)):
                self._rollback(conn)
                raise
        except BaseException:
            self._rollback(conn)
            raise
        self._head = head
        return results, signed

    def _found(self, head, lost) -> bool:
        """(On a new connection) whether the event (seq, hash) is in the chain."""
        self._drop()
        try:
            cur = self._ready().cursor()
            cur.execute(HAS_EVENT, head)
            return cur.fetchone() is not None
        except Exception as e:
            raise lost from e

    # --- the listener thread ---------------------------------------------------------

    def _listen(self, conn):
        backoff = 0.2
        while not self._closing.is_set():
            if conn is None:
                try:
                    conn = connect(self.dsn)
                    conn.execute(f"LISTEN {CHANNEL}")
                except Exception as e:
                    if conn is not None:
                        conn.close()
                        conn = None
                    log.debug("state store listener: {e}", e=str(e))
                    self._closing.wait(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.2
                log.info("state store listener: listening again")
                self._deliver(None)  # whatever was notified while away
            try:
                for n in conn.notifies(timeout=0.5):
                    self._deliver(n.payload)
            except Exception as e:
                log.warn("state store listener lost its connection ({e}); reconnecting", e=_first_line(e))
                try:
                    conn.close()
                except Exception:  # lost already, and logged above: closing is only tidying
                    pass
                conn = None
        if conn is not None:
            conn.close()

    def _deliver(self, approval_id):
        for cb in self._watchers:
            self.reactor.callFromThread(cb, approval_id)
