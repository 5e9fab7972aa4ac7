"""The event log: the durable record of an events-only batch, before SQLite has it.

A statement's decision event is durable once one ``pwrite`` into a preallocated file opened with
``O_DSYNC`` returns: an overwrite of blocks the file already has, no metadata to flush, and the
writer thread holds no GIL while it waits. SQLite stays the index every reader queries; the store
fills it from the rows it kept in memory, off the statement's path, in one FULL commit for many
batches, and then starts the log over (docs/operators.md, "The event log").

Layout (all integers little-endian): block 0 is the header (``MAGIC``, the version); from
``BLOCK`` on, one record a batch, each starting on a block boundary so that a torn write can only
ever hit the record being written, never one already acknowledged:

    b"HLR1" | payload length (u32) | CRC-32 of the payload (u32) | payload | zeros to the block

The payload is the batch's event rows, JSON: a list of rows in ``EVENT_COLUMNS`` order, the last
one with its signature where the batch was signed. What the log holds past the index is the run of
records read from ``BLOCK`` while each is whole (magic, length, CRC) and each row's ``prev`` is the
hash before it; records left from an earlier pass over the file hold lower seqs, so they end the run.
"""
from __future__ import annotations

import errno
import json
import mmap
import os
import stat
import struct
import zlib

import orjson

from hoopy.audit.writer import StoreError

MAGIC = b"HOOPY-EVENT-LOG\n"
VERSION = 1
BLOCK = 4096
RECORD = b"HLR1"
_HEAD = struct.Struct("<4sII")
# The file's size: it is started over once the index has what it holds, so it holds a few hundred
# milliseconds of batches; a batch that does not fit is committed to SQLite directly.
SIZE = 1 << 20
# A reader reads at most this much of the log (the file's size, and a record's).
_READ_LIMIT = SIZE


class EventLogError(Exception):
    """The log cannot be used: what it holds does not continue the store, or it cannot be written."""


def log_path(store_file: str) -> str:
    """The log of the SQLite file at ``store_file`` (beside it, named as SQLite names its -wal: after
    the file with symbolic links resolved)."""
    return os.path.realpath(store_file) + "-eventlog"


def _dumps(rows: list) -> bytes:
    try:
        return orjson.dumps(rows)
    except TypeError:  # (a lone surrogate in a text column: json escapes it, orjson refuses)
        return json.dumps(rows, ensure_ascii=True, separators=(",", ":")).encode()


def encode(rows: list) -> bytes:
    """One record: the header, the rows, zeros to the next block boundary."""
    payload = _dumps(rows)
    record = _HEAD.pack(RECORD, len(payload), zlib.crc32(payload)) + payload
    return record + bytes(-len(record) % BLOCK)


def decode_run(read, after: tuple | None = None) -> list:
    """The rows of the whole, linked records from offset ``BLOCK`` of the log; ``read(offset, n)``
    returns up to ``n`` of its bytes from ``offset`` (fewer at its end).

    ``after`` (seq, hash): the run must pass through it to count; what it holds up to that seq is
    already indexed and left out. Returns the rows past it, or [] where the run does not reach
    beyond it. Raises EventLogError where the run passes that seq without linking to its hash (a
    log that is not this store's), or starts beyond it (events between are missing)."""
    off = BLOCK
    out: list = []
    prev_hash = None
    seq_i, prev_i, hash_i = 0, 12, 13  # (EVENT_COLUMNS: seq, ..., prev, hash, signature)
    while off < _READ_LIMIT:
        head = read(off, _HEAD.size)
        if len(head) < _HEAD.size:
            break
        magic, length, crc = _HEAD.unpack(head)
        if magic != RECORD or off + _HEAD.size + length > _READ_LIMIT:
            break
        payload = read(off + _HEAD.size, length)
        if len(payload) != length or zlib.crc32(payload) != crc:
            break
        try:
            rows = json.loads(payload)
        except ValueError:
            break
        if not isinstance(rows, list) or not rows:
            break
        linked = True
        for row in rows:
            if (not isinstance(row, list) or len(row) < 14 or type(row[seq_i]) is not int
                    or (prev_hash is not None and row[prev_i] != prev_hash)
                    or (out and row[seq_i] != out[-1][seq_i] + 1)):
                linked = False
                break
            prev_hash = row[hash_i]
            out.append(row)
        if not linked:
            break
        off += -(-(_HEAD.size + length) // BLOCK) * BLOCK
    if after is None:
        return out
    seq, head_hash = after
    for i, row in enumerate(out):
        if row[seq_i] == seq + 1:
            if row[prev_i] != head_hash:
                raise EventLogError(f"the event log's event {seq + 1} does not follow the store's event {seq}"
                                    f" (its prev {str(row[prev_i])[:16]}, the store's hash {head_hash[:16]})")
            return out[i:]
    if out and out[0][seq_i] > seq + 1:
        raise EventLogError(f"the event log starts at event {out[0][seq_i]}, the store ends at event {seq}:"
                            " the events between them are missing")
    return []


def buffer_reader(buf: bytes):
    view = memoryview(buf)
    return lambda off, n: bytes(view[off:off + n])


# Opening the log's name: never through a symbolic link (the name is the file's with links resolved,
# so a link there is never the log), and never waiting (a FIFO there would hold the opener).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_OPEN = _NOFOLLOW | getattr(os, "O_NONBLOCK", 0)


def _not_a_file(path: str, what: str) -> str:
    return (f"the state store's event log {path} is not a regular file ({what}): move it away (the gateway"
            " makes the log at its first start)")


def read_tail(path: str, after: tuple) -> list | None:
    """(Readers) the rows the log at ``path`` holds past ``after`` (seq, hash), [] where none (or no
    log); None where its run does not continue ``after`` (the index moved on since it was read: read
    again). Raises StoreError where it cannot be read: the file's last events may be there alone."""
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN)
    except FileNotFoundError:
        return []
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StoreError(_not_a_file(path, "a symbolic link")) from None
        raise StoreError(f"the state store's event log {path} cannot be read ({e.strerror}): it holds the"
                         " file's last events; read as a user who may read it") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise StoreError(_not_a_file(path, "a folder, a FIFO or a device"))
        if not os.pread(fd, len(MAGIC), 0) == MAGIC:
            return []
        try:
            return decode_run(lambda off, n: os.pread(fd, n, off), after)
        except EventLogError:
            return None
    finally:
        os.close(fd)


class EventLog:
    """(The store's writer thread) the file, where the next record goes, and starting over."""

    def __init__(self, path: str, size: int = SIZE):
        self.path = path
        self.size = size
        self.fd: int | None = None
        self.ident: tuple | None = None  # (st_dev, st_ino) as opened
        self.offset = BLOCK  # where the next record goes
        self.written = False  # a record was written since the log was last started over
        self._direct = False  # records written with O_DIRECT (from ``_buf``)
        self._buf = mmap.mmap(-1, BLOCK)
        self._lock_fd: int | None = None

    def open(self, like: os.stat_result | None = None) -> bytes:
        """Open (made and filled with zeros if absent or short) and locked; returns what the file holds
        for recovery. Raises EventLogError if another process holds it, OSError if it cannot be used
        (a symbolic link, not a regular file). ``like``: the state file's stat: the log takes its
        permissions (and, for root, its owner), as SQLite gives them to the file's -wal: whoever may
        read the file reads its last events."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _OPEN, 0o600)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise OSError(e.errno, _not_a_file(self.path, "a symbolic link, not followed")) from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, _not_a_file(self.path, "a FIFO or a device"))
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)  # (a file: as usual)
            if like is not None:
                try:
                    if os.geteuid() == 0:
                        os.fchown(fd, like.st_uid, like.st_gid)
                    os.fchmod(fd, stat.S_IMODE(like.st_mode) & 0o666)
                except PermissionError:
                    pass  # (not ours to change: as it is)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise EventLogError(f"{self.path} is in use by another gateway: a SQLite state file serves one"
                                    " gateway (for several, use a postgresql:// state)") from None
            st = os.fstat(fd)
            old = b""
            if st.st_size:
                old = os.pread(fd, min(st.st_size, self.size), 0)
            if st.st_size < self.size or not old.startswith(MAGIC):
                # Real blocks, written once and flushed: every later record overwrites them, so its
                # O_DSYNC write has no allocation (metadata) to flush with it.
                chunk = bytes(1 << 20)
                header = MAGIC + struct.pack("<I", VERSION)
                os.pwrite(fd, header + bytes(BLOCK - len(header)), 0)
                pos = BLOCK if not old.startswith(MAGIC) else max(BLOCK, len(old))
                if not old.startswith(MAGIC):
                    old = b""
                while pos < self.size:
                    pos += os.pwrite(fd, chunk[:self.size - pos], pos)
                os.fsync(fd)
                _sync_dir(os.path.dirname(self.path))
            self.ident = (st.st_dev, st.st_ino)
        except BaseException:
            os.close(fd)
            raise
        # The same file again, for records: every write returns once it is on the disk. Past the page
        # cache where the file system allows it (a third less time a record here: no copy to flush);
        # such writes come from a buffer aligned to the block.
        try:
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_DSYNC | _NOFOLLOW | getattr(os, "O_DIRECT", 0))
                self._direct = bool(getattr(os, "O_DIRECT", 0))
            except OSError:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_DSYNC | _NOFOLLOW)
                self._direct = False
            st = os.fstat(self.fd)
            if (st.st_dev, st.st_ino) != self.ident:  # (the name replaced between the two opens)
                raise OSError(errno.EBUSY, f"{self.path} was replaced while it was opened")
        except BaseException:
            os.close(fd)
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
            raise
        self._lock_fd = fd  # (held open: the lock lives as long as it)
        return old

    def fits(self, record: bytes) -> bool:
        return self.offset + len(record) <= self.size

    def write(self, record: bytes) -> None:
        """The record at the next offset, on the disk when this returns (OSError if not)."""
        assert self.fd is not None
        if self._direct:
            if len(self._buf) < len(record):
                self._buf = mmap.mmap(-1, len(record))  # (page-aligned)
            self._buf[:len(record)] = record
            view = memoryview(self._buf)[:len(record)]
        else:
            view = memoryview(record)
        pos = self.offset
        try:
            while view:
                n = os.pwrite(self.fd, view, pos)
                view = view[n:]
                pos += n
        except OSError as e:
            if self._direct and e.errno == errno.EINVAL:
                # (a file system that takes O_DIRECT at open and refuses it at the write: the same
                # open file without it, never the name opened again, which may be another file now)
                import fcntl

                fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) & ~os.O_DIRECT)
                self._direct = False
                return self.write(record)
            raise
        self.offset = pos
        self.written = True

    def start_over(self) -> None:
        """Everything written so far is in the index, durably: the next record goes first again."""
        self.offset = BLOCK
        self.written = False

    def clear(self) -> None:
        """No run at all: the first record's block zeroed (at a clean stop, and after recovery)."""
        if self.fd is not None:
            self.offset = BLOCK
            self.write(bytes(BLOCK))
        self.start_over()

    def moved(self) -> str | None:
        return not_the_one(self.path, self.ident, "the state store's event log", self.path)

    def close(self) -> None:
        for fd in (self.fd, self._lock_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fd = None
        self._lock_fd = None


def not_the_one(path: str, ident: tuple | None, what: str, name: str) -> str | None:
    """Why the file at ``path`` is not the one opened as ``ident`` (st_dev, st_ino) any more (deleted,
    renamed away, replaced: what is written to it goes to a file nobody reads), or None. Said as
    ``what`` and ``name``, put together only then (this runs after every batch)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"{what} {name} is gone ({e.strerror}); what was written to it is refused"
    if (st.st_dev, st.st_ino) != ident:
        return f"{what} {name} was replaced; what was written to the old one is refused"
    return None


def _sync_dir(path: str) -> None:
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
