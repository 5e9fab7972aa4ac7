"""The state store: events (hash-chained), sessions and approvals.

``IEventStore`` (hoopy/audit/seams.py) is the seam; ``SQLiteEventStore`` is the embedded
default, ``open_store`` picks it or PostgreSQL's (hoopy/audit/pgstore.py).
Writes go to one thread that batches whatever is queued into a single
transaction (WAL, synchronous=FULL), so the reactor never waits on disk and
an event is durable before the Deferred ``append`` returned fires. The
chain link is computed inside that thread: no caller can skip it.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from twisted.logger import Logger
from zope.interface import implementer

from hoopy.audit.chain import GENESIS, canonical_json
from hoopy.audit.eventlog import (EventLog, EventLogError, buffer_reader, decode_run, encode, log_path, not_the_one,
                                  read_tail)
from hoopy.audit.events import Event, iso
from hoopy.audit.pgstore import PostgresEventStore, PostgresReader
from hoopy.audit.seams import IEventStore, IStoreReader, ReaderQueries
from hoopy.audit.writer import (ADDED_EVENT_COLUMNS, APPROVAL_COLUMNS, EVENT_COLUMNS,  # noqa: F401
                                SESSION_COLUMNS, BatchedStore, Dialect, StateConflict, StoreError,
                                migration_sql, schema_sql, write_batch)

log = Logger()

SCHEMA = schema_sql()


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
        self._with_tail()

    def _with_tail(self):
        """Events the gateway has made durable in its event log and not yet in this file are read
        from the log: ``events`` in this connection is the file's table and that tail (a temporary
        view over both). The tail must continue this snapshot's last event; where the gateway
        indexed more and started its log over between the two reads, the snapshot is taken again."""
        path = log_path(self.path)
        if not os.path.lexists(path):
            return
        tail: list | None = []
        for _ in range(50):
            head = self._head()
            tail = read_tail(path, head)
            self.db.execute("ROLLBACK")
            self.db.execute("BEGIN")
            if tail is not None and self._head() == head:
                break  # (the snapshot taken again holds what it held: the log read continues it)
        else:
            raise StoreError(f"the state store's event log {path} does not continue the events in"
                             f" {self.path}; read again")
        if not tail:
            return
        # (a log is written only by a gateway that brought the file's table up to date: every column is there)
        self.db.execute("CREATE TEMP TABLE events_tail AS SELECT * FROM main.events WHERE 0")
        for width in (len(EVENT_COLUMNS) - 1, len(EVENT_COLUMNS)):
            rows = [r for r in tail if len(r) == width]
            if rows:
                names = EVENT_COLUMNS[:width]
                self.db.executemany(f"INSERT INTO temp.events_tail ({', '.join(names)})"
                                    f" VALUES ({', '.join('?' for _ in names)})", rows)
        self.db.execute("CREATE TEMP VIEW events AS SELECT * FROM main.events UNION ALL"
                        " SELECT * FROM temp.events_tail")

    def _head(self) -> tuple:
        row = self.db.execute("SELECT seq, hash FROM main.events ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, GENESIS)

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
    # Seconds an idle writer waits before it looks at the file at ``path`` again: a file moved while
    # nothing is appended is seen (/health 503, its WAL written back into it) within this.
    file_check = 1.0
    # An events-only batch is made durable by one O_DSYNC write to the event log
    # (hoopy/audit/eventlog.py) and put into SQLite with others later, off the statement's path: once
    # this many rows wait, or the oldest has waited this long. False: every batch is a SQLite commit.
    event_log = True
    index_rows = 1024
    index_delay = 0.2

    def __init__(self, path: str | Path, gateway: str, reactor=None, busy_timeout: float = 5.0):
        super().__init__(gateway, reactor, busy_timeout)
        self.path = str(path)
        self._head = None  # (seq, hash) of our last commit; None: read it from the table
        self._file: tuple | None = None  # (st_dev, st_ino) of the file opened at ``path``
        self._where = self.path  # ``path`` made absolute when opened
        # (name, (st_dev, st_ino)) of the WAL and its index as opened: SQLite names them after the file
        # with its symbolic links resolved, and keeps them open (a -wal deleted under it takes every
        # later commit into an unlinked inode, lost at a crash)
        self._sidecars: tuple = ()
        self._fd: int | None = None  # the file opened at ``path``, held to see whether anything still links it
        self._db: sqlite3.Connection | None = None
        self._lost: str | None = None  # why the file at ``path`` is no longer ours (every batch refused)
        self._log: EventLog | None = None
        self._pending: list = []  # rows durable in the event log, not yet in SQLite (in seq order)
        self._pending_since = 0.0  # monotonic time the oldest of them was written
        self._index_failed = False  # the last attempt to index them failed (logged once)

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
        # (the path as it was when opened: a later change of working directory moves nothing)
        self._where = os.path.abspath(self.path)
        self._fd = os.open(self._where, os.O_RDONLY)
        st = os.fstat(self._fd)
        self._file = (st.st_dev, st.st_ino)
        real = os.path.realpath(self._where)
        db.execute("SELECT count(*) FROM events").fetchone()  # (a read: the -wal and -shm are open)
        sidecars = []
        for name in (real + "-wal", real + "-shm"):
            st = os.stat(name)
            sidecars.append((name, (st.st_dev, st.st_ino)))
        self._sidecars = tuple(sidecars)
        if self.event_log:
            try:
                self._open_log(db, real)
            except BaseException:
                db.close()  # (a start refused leaves nothing open: the operator moves files next)
                self._close_fd()
                raise
        return db

    def _open_log(self, db: sqlite3.Connection, real: str) -> None:
        """The event log beside the file, and what it holds past the file's last event put into the
        file first (a gateway stopped without indexing it: a crash, a kill), with an
        ``audit.store.recovered`` event saying so. A log that does not continue the file stops the
        start: its events would otherwise be lost, or chained onto the wrong store."""
        elog = EventLog(log_path(real))
        try:
            old = elog.open(like=os.stat(real))
        except (EventLogError, OSError) as e:
            elog.close()
            raise StoreError(f"the state store's event log {elog.path} cannot be used: {e}") from None
        try:
            head = self.dialect.head(db.cursor()) or (0, GENESIS)
            tail = decode_run(buffer_reader(old), head) if old else []
        except EventLogError as e:
            elog.close()
            raise StoreError(f"{e}; the event log {elog.path} belongs with the state file {self.path}: move both"
                             " together, or move the log away to start without its events") from None
        except OSError as e:
            elog.close()
            raise StoreError(f"the state store's event log {elog.path} cannot be used: {e}") from None
        if tail:
            cur = db.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                self.dialect.insert_events(cur, tail)
                note = Event("audit.store.recovered", "ok",
                             data={"events": len(tail), "first": tail[0][0], "last": tail[-1][0],
                                   "from": elog.path})
                _, _, _, signed = write_batch(self.dialect, cur,
                                              [(note, canonical_json(note.data), None, None, None, None)],
                                              (tail[-1][0], tail[-1][13]), self.gateway, self.signer,
                                              self.signer is not None)
                cur.execute("COMMIT")
            except BaseException as e:
                try:
                    if db.in_transaction:
                        cur.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                elog.close()  # (its lock too: nothing of this start is left holding the files)
                if isinstance(e, sqlite3.Error):
                    raise StoreError(f"the event log's {len(tail)} event(s) ({tail[0][0]}-{tail[-1][0]}) could not be"
                                     f" put into the state file {self.path}: {e}; they stay in the event log"
                                     f" {elog.path}: start again once the file can be written") from None
                raise
            self._committed(1, signed)
            log.info("state store: {n} event(s) ({first}-{last}) recovered from the event log {path}",
                     n=len(tail), first=tail[0][0], last=tail[-1][0], path=elog.path)
        try:
            elog.clear()
        except OSError as e:
            elog.close()
            raise StoreError(f"the state store's event log {elog.path} cannot be written: {e}") from None
        self._log = elog

    def _moved(self) -> str | None:
        """Why the file at ``path`` is no longer the one this connection writes (deleted, renamed
        away or replaced: what it commits would go to a file nobody reads), or None."""
        why = not_the_one(self._where, self._file, "the state store file", self.path)
        for name, ident in self._sidecars:
            why = why or not_the_one(name, ident, "the state store's", name)
        if why is None and self._log is not None:
            why = self._log.moved()
        return why

    def _lose_file(self, why: str, refused=(), deferreds=()) -> None:
        """(Writer thread) the file this connection writes is not the one at ``path`` any more:
        closed (its WAL goes back into it), and every later batch refused with ``why`` until the
        gateway is started again. Not opened anew: a replaced file may already have taken this
        connection's WAL (SQLite cannot tell whose it is), and a store made empty behind the
        operator's back would start a second chain silently.

        The file written last says so: an ``audit.store.moved`` event (outcome ``refused``) ends its
        chain, with ``why`` and the seqs of the events just committed whose callers were refused
        (``refused``): their operations never ran, whatever those events say. A file nothing links
        any more (deleted, or replaced by another) would vanish with this process, and one whose WAL a
        reader's snapshot kept from being written back into it lacks part of what it holds: either is
        copied whole (read through this connection) to ``<path>.lost-<UTC time>`` beside the path,
        and the log names the copy."""
        old, self._db, self._head = self._db, None, None
        self._lost = why + "; restart the gateway to use the file now at that path"
        # Every append from now on refused at once (not queued behind what follows, which may take a
        # while); the batch that saw it (``deferreds``) once the file says so and holds its WAL (a
        # refusal that comes after: the record settled), before a copy of the whole file.
        self.refusing = self._lost
        self.max_pending = 0
        whole = False
        if old is not None:
            if self._pending:  # (durable in the event log: into the file they continue, before its last event)
                try:
                    self._index(old)
                except (sqlite3.Error, OSError) as e:
                    log.error("state store: the event log's last events could not be put into the moved file: {e};"
                              " they stay in the event log {path}", e=e, path=self._log and self._log.path)
            if self._pending:
                # (never into the file: it would take the seq of the log's first event, two chains)
                self._log_note(list(refused))
            else:
                self._note_lost(old, list(refused))
            try:
                # What the WAL holds into the file this connection has open (SQLite's close skips that
                # for a file renamed or unlinked: it would stay in a WAL named for the path, where the
                # moved file's readers never look and the next file at the path would take it), then
                # the WAL emptied. (A reader's snapshot, in this process or another, keeps it from
                # finishing: busy.)
                whole = old.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
            except sqlite3.Error as e:
                log.error("state store: the moved file's WAL could not be written back into it: {e}", e=e)
        self._to_reactor(self._failed, list(deferreds), StoreError(self._lost))
        if old is None:
            return
        if not whole:
            self._keep(old, "its WAL could not be written back into it (a reader held it): that file lacks part"
                            " of what was written")
        elif self._unlinked():
            self._keep(old, "it is linked nowhere (deleted or replaced): it goes when the gateway stops")
        try:
            old.close()
        except sqlite3.Error:
            pass
        self._close_fd()
        self._close_log()

    def _close_log(self) -> None:
        """The log emptied where all it held is in a file (cleanly stopped, or written into the moved
        file), kept as it is otherwise, for the next start to recover from; then closed."""
        if self._log is None:
            return
        try:
            if not self._pending and self._log.moved() is None:
                self._log.clear()
        except OSError as e:
            log.error("state store: the event log could not be emptied: {e}", e=e)
        self._log.close()
        self._log = None

    def _note_lost(self, db: sqlite3.Connection, refused: list) -> None:
        cur = db.cursor()
        note = Event("audit.store.moved", "refused", data={"why": self._lost, "refused": refused})
        try:
            cur.execute("BEGIN IMMEDIATE")
            head = self.dialect.head(cur) or (0, GENESIS)  # (read inside the write lock)
            write_batch(self.dialect, cur, [(note, canonical_json(note.data), None, None, None, None)], head,
                        self.gateway, self.signer, self.signer is not None)
            cur.execute("COMMIT")
        except Exception as e:
            log.error("state store: the moved file could not record that it was moved: {e}", e=e)
            try:
                if db.in_transaction:
                    cur.execute("ROLLBACK")
            except sqlite3.Error:
                pass

    def _log_note(self, refused: list) -> None:
        """The file moved and the event log's events could not be put into it: the event saying so
        goes into the log after them, so that the file and its log, put back together, hold one chain
        that the next start recovers."""
        assert self._log is not None
        note = Event("audit.store.moved", "refused", data={"why": self._lost, "refused": refused})
        last = self._pending[-1]
        rows = _Rows()
        try:
            write_batch(rows, None, [(note, canonical_json(note.data), None, None, None, None)], (last[0], last[13]),
                        self.gateway, self.signer, self.signer is not None)
            record = encode(rows.rows)
            if not self._log.fits(record):
                raise OSError("the event log is full")
            self._log.write(record)
        except Exception as e:
            log.error("state store: the moved file could not record that it was moved: {e}", e=e)
            return
        self._pending.extend(rows.rows)

    def _unlinked(self) -> bool:
        """The file this connection has open is linked nowhere (renamed, or linked elsewhere: it is
        still there to read)."""
        try:
            return self._fd is not None and os.fstat(self._fd).st_nlink == 0
        except OSError:
            return False

    def _keep(self, db: sqlite3.Connection, why: str) -> None:
        """A copy of everything ``db`` holds (read through it: its WAL too) beside the path."""
        kept = f"{self._where}.lost-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        n = 1
        while os.path.lexists(kept):
            n += 1
            kept = f"{self._where}.lost-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{n}"
        try:
            target = sqlite3.connect(kept)
            try:
                db.backup(target)
            finally:
                target.close()
        except (sqlite3.Error, OSError) as e:
            for name in (kept, kept + "-journal"):  # (a part of a copy, on a full disk: not taken for the whole)
                try:
                    os.unlink(name)
                except OSError:
                    pass
            log.error("state store: the file that was at {path}: {why}; a copy of what it held could not be made"
                      " in {kept}: {e}", path=self.path, why=why, kept=kept, e=e)
            return
        log.error("state store: the file that was at {path}: {why}; what it held (every event written to it)"
                  " is kept in {kept}", path=self.path, why=why, kept=kept)

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _idle_timeout(self) -> float | None:
        due = super()._idle_timeout()
        if self._db is None:
            return due
        due = self.file_check if due is None else min(due, self.file_check)
        if self._pending:
            due = min(due, max(0.0, self._pending_since + self.index_delay - time.monotonic()))
        return due

    def _idle(self):
        if self._db is not None:
            moved = self._moved()
            if moved is not None:
                self._lose_file(moved)
                return
            if self._pending and time.monotonic() - self._pending_since >= self.index_delay:
                self._index_now()
        due = super()._idle_timeout()
        if due is not None and due <= 0.0:  # (not only a look at the file: the heartbeat is due)
            super()._idle()

    def start(self):
        """Open synchronously (at startup, before listening) so a bad store stops the gateway."""
        self._db = self._connect()
        self._start_writer()

    def reader(self) -> SQLiteReader:
        return SQLiteReader(self._where)  # (where it was opened, whatever the working directory now)

    def _write(self, batch, sign=False):
        if self._db is None:
            self._to_reactor(self._failed, [b[-1] for b in batch], StoreError(self._lost or "the state store is closed"))
            return
        if self._log is not None and self._plain(batch) and self._write_logged(batch, sign):
            return
        cur = self._db.cursor()
        indexed = bool(self._pending)
        try:
            if not indexed and self._only_events(batch):
                results, signed = self._insert_only(cur, batch, sign)
                wrote = len(results)  # (no approval row: nothing a conflict kept out)
            else:
                results, signed = self._locked(cur, batch, sign)
                wrote = sum(1 for _, r in results if not isinstance(r, Exception))
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
        if indexed:  # (the log's rows went in first, in the same commit)
            self._indexed()
        # Committed: but into the file at ``path``? (Looked at after the commit, so a file deleted or
        # replaced before it returned is seen: those events are refused, never reported durable.)
        moved = self._moved()
        if moved is not None:
            # (the seqs whose callers are refused: trailing events are what operations already did)
            self._lose_file(moved, [s.seq for d, s in results if d is not None and not isinstance(s, Exception)],
                            [b[-1] for b in batch])
            return
        self._committed(wrote, signed)
        self._to_reactor(self._written, results)

    @staticmethod
    def _plain(batch) -> bool:
        """No session or approval row in the batch: its events alone, which the log can hold."""
        for item in batch:  # (a loop, not all() over a generator: once an event)
            if item[2] is not None or item[3] is not None or item[4] is not None:
                return False
        return True

    def _write_logged(self, batch, sign) -> bool:
        """An events-only batch made durable by one record in the event log (and kept to be put into
        SQLite later); False where it is too large for the log (it is committed to SQLite instead)."""
        assert self._log is not None and self._db is not None
        if self._head is None:
            self._head = self._chain_head(self._db.cursor())
        rows = _Rows()
        try:
            results, head, _, signed = write_batch(rows, None, batch, self._head, self.gateway, self.signer, sign)
            record = encode(rows.rows)
            if not self._log.fits(record):
                if self._pending:
                    self._index(self._db)  # (all it holds into SQLite: it starts over, with room)
                if not self._log.fits(record):
                    return False
            self._log.write(record)  # on the disk when it returns (O_DSYNC)
        except Exception as e:
            # (nothing advanced: the chain's head and the log's offset are where they were)
            self._to_reactor(self._failed, [b[-1] for b in batch], StoreError(f"the state store cannot write: {e}"))
            return True
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.extend(rows.rows)
        self._head = head
        # Written: but beside the file at the path, into the log at the path? As after a commit: a file
        # moved is seen at once, so the log never runs on past the file it continues.
        moved = self._moved()
        if moved is not None:
            self._lose_file(moved, [s.seq for d, s in results if d is not None], [b[-1] for b in batch])
            return True
        self._committed(len(results), signed)
        self._to_reactor(self._written, results)
        # (also once the log is half full: a batch takes a block of it at least, so at a few thousand
        # batches a second it would fill before index_delay, and be indexed on an operation's path)
        if (len(self._pending) >= self.index_rows or self._log.offset >= self._log.size // 2
                or time.monotonic() - self._pending_since >= self.index_delay):
            self._index_now()
        return True

    def _chain_head(self, cur) -> tuple:
        """(seq, hash) of the last event: the log's last where it holds events SQLite does not have yet."""
        if self._pending:
            last = self._pending[-1]
            return (last[0], last[13])
        return self.dialect.head(cur) or (0, GENESIS)

    def _index(self, db: sqlite3.Connection) -> None:
        """What the log holds into SQLite in one durable commit (raises if it cannot); then the log
        starts over."""
        cur = db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            self.dialect.insert_events(cur, self._pending)
            cur.execute("COMMIT")
        except BaseException:
            try:
                if db.in_transaction:
                    cur.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        self._indexed()

    def _indexed(self) -> None:
        self._pending = []
        if self._log is not None:
            self._log.start_over()
        if self._index_failed:
            self._index_failed = False
            log.info("state store: the event log's events are put into the file again")

    def _index_now(self) -> None:
        """(Writer thread, off any operation's path) the log's events into SQLite. A failure leaves them
        in the log (durable there; tried again later; once the log is full, batches go to SQLite
        directly and are refused as any failure to write is)."""
        assert self._db is not None
        try:
            # Without waiting for a lock another process holds (a sqlite3 shell): the writer thread
            # would wait busy_timeout here, ahead of every operation, which the log is there to spare
            # them. (Where the log is full, or a batch must go to SQLite, the wait is the usual one.)
            self._db.execute("PRAGMA busy_timeout = 0")
            try:
                self._index(self._db)
            finally:
                self._db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except (sqlite3.Error, OSError) as e:
            self._pending_since = time.monotonic()  # (tried again after index_delay)
            if not self._index_failed:
                self._index_failed = True
                log.error("state store: the event log's events cannot be put into the file yet ({e}); they are"
                          " durable in the event log, and tried again", e=e)
            return
        moved = self._moved()
        if moved is not None:
            self._lose_file(moved)

    def _only_events(self, batch) -> bool:
        # No session or approval rows: the batch is one INSERT statement.
        if len(batch) > self.dialect.rows_per_insert:
            return False
        return self._plain(batch)

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
        inside it, right even if another process appended since. What the event log holds goes in
        first, in the same commit (the file's chain has no gap)."""
        cur.execute("BEGIN IMMEDIATE")
        if self._pending:
            self.dialect.insert_events(cur, self._pending)
        head = self.dialect.head(cur) or (0, GENESIS)
        results, self._head, _, signed = write_batch(self.dialect, cur, batch, head, self.gateway,
                                                     self.signer, sign)
        cur.execute("COMMIT")
        return results, signed

    def _close(self):
        if self._db is None:
            self._close_log()
            return
        if self._pending:
            try:
                self._index(self._db)
            except (sqlite3.Error, OSError) as e:
                log.error("state store: the event log's last events could not be put into the file at the stop: {e};"
                          " the next start recovers them from {path}", e=e, path=self._log and self._log.path)
        # Moved while no batch came to see it: SQLite's close leaves the WAL of a moved file where it
        # is, at the path (the moved file lacks what it holds; the next file opened there takes it, or
        # deletes it if that file is empty): written back into the moved file first.
        moved = self._moved()
        if moved is not None:
            log.error("state store: {why}; seen at the stop", why=moved)
            self._lose_file(moved)
        else:
            self._db.close()
            self._close_fd()
            self._close_log()


class _Rows(Dialect):
    """Where write_batch puts an events-only batch's rows for the event log, instead of an INSERT."""

    def __init__(self):
        super().__init__("?")
        self.rows: list = []

    def insert_events(self, cur, rows):
        self.rows = rows


def is_postgres(state: str) -> bool:
    return state.startswith(("postgresql://", "postgres://"))


def open_store(config, reactor=None):
    """The IEventStore that ``gateway.state`` names (not started)."""
    gw = config.gateway
    if is_postgres(gw.state):
        return PostgresEventStore(gw.state, gw.name, reactor, busy_timeout=gw.store_busy_timeout)
    return SQLiteEventStore(gw.state, gw.name, reactor, busy_timeout=gw.store_busy_timeout)


def open_reader(config):
    """An IStoreReader on ``gateway.state`` (``state_reader``, a read-only role, where
    set); raises StoreError if it cannot."""
    state = config.gateway.state_reader or config.gateway.state
    if is_postgres(state):
        return PostgresReader(state)
    return SQLiteReader(state)
