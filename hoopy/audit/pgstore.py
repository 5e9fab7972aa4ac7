"""The PostgreSQL state store: several gateway nodes, one chain.

``state = "postgresql://user@host/db"`` puts events, sessions and approvals
in the ``hoopy`` schema of that database (created if absent). Like the
SQLite store, one writer thread batches whatever is queued into a single
transaction and the Deferred from ``append`` fires only after COMMIT. Every
node appends to the same chain: each batch first takes a transaction-level
advisory lock and only then reads the head, so links stay right whichever
node writes next.

When an approval row leaves ``pending`` the same transaction sends
``NOTIFY hoopy_approvals, '<id>'`` (delivered on COMMIT only); a listener
thread on every node hands those ids to the approval service, so the node
holding the operation resumes it whichever node the reviewer reached.

The password never goes in ``state``: libpq's PGPASSWORD, ~/.pgpass or a
``passfile=`` parameter supply it (config refuses an inline one).
"""
from __future__ import annotations

import itertools
import threading

from twisted.logger import Logger
from zope.interface import implementer

from hoopy.audit.chain import GENESIS
from hoopy.audit.seams import IEventStore, IStoreReader, ReaderQueries
from hoopy.audit.writer import (ADDED_EVENT_COLUMNS, BatchedStore, Dialect, StoreError, migration_sql, schema_sql,
                                write_batch)

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
    """The writer's connection died while idle; nothing of the batch was sent."""


@implementer(IEventStore)
class PostgresEventStore(BatchedStore):
    """One writer thread, batched transactions, a chain shared by every node."""

    shared = True  # other gateway nodes may write the same store
    dialect = Dialect("%s", f"{SCHEMA_NAME}.")

    def __init__(self, dsn: str, gateway: str, reactor=None, busy_timeout: float = 5.0):
        super().__init__(gateway, reactor, busy_timeout)
        self.dsn = dsn
        self._listener: threading.Thread | None = None
        self._closing = threading.Event()
        self._conn = None
        self._watchers: list = []

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
        psycopg = _psycopg()
        try:
            try:
                results, signed = self._transaction(batch, sign)
            except _IdleConnectionLost:
                # The server closed the connection while it sat idle (restart,
                # failover, pg_terminate_backend) and nothing of this batch was
                # sent: once more on a new connection. If that fails, refuse.
                self._drop()
                results, signed = self._transaction(batch, sign)
        except Exception as e:
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

    def _transaction(self, batch, sign):
        """One transaction for the whole batch; (results, the signed head or None) after COMMIT."""
        psycopg = _psycopg()
        reused = self._conn is not None and not self._conn.closed
        if not reused:
            self._conn = self._connect()  # the last batch lost it: try again now
        conn = self._conn
        cur = conn.cursor()
        try:
            cur.execute("BEGIN")
        except psycopg.OperationalError as e:
            if reused and conn.broken:
                raise _IdleConnectionLost() from e
            raise
        try:
            results, signed = self._batch(cur, batch, sign)
            cur.execute("COMMIT")
        except BaseException:
            if not conn.broken and not conn.closed:
                try:
                    cur.execute("ROLLBACK")
                except Exception:  # the batch's own error, raised next, is the one that matters
                    pass
            raise
        return results, signed

    def _batch(self, cur, batch, sign):
        # Every node appends to one chain: serialize, then read the head.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (CHAIN_LOCK,))
        head = self.dialect.head(cur) or (0, GENESIS)
        results, head, decided, signed = write_batch(self.dialect, cur, batch, head, self.gateway,
                                                     self.signer, sign)
        for aid in decided:  # delivered on COMMIT, never before
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, aid))
        return results, signed

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
