"""A sans-IO reader of the SFTP protocol (v3, what OpenSSH speaks), for auditing.

The gateway relays SFTP bytes untouched; this module only splits each
direction into whole packets and says what the client did with which file.
``Requests.feed(data)`` returns whole client packets, each with the audit
action it carries (or None for reads, writes and listings, which are counted
per file and reported when the file is closed). ``Responses.feed(data)`` learns
the handles the server gives out and counts the bytes read.
"""
from __future__ import annotations

import hashlib
import posixpath
import struct

import attrs

INIT, VERSION = 1, 2
OPEN, CLOSE, READ, WRITE = 3, 4, 5, 6
LSTAT, FSTAT, SETSTAT, FSETSTAT, OPENDIR, READDIR = 7, 8, 9, 10, 11, 12
REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME, READLINK, SYMLINK = 13, 14, 15, 16, 17, 18, 19, 20
EXTENDED = 200
# Requests that change nothing, or whose effect is recorded elsewhere (open, close), v3.
_PLAIN_REQUESTS = {INIT, READ, WRITE, 7, 8, 12, 16, 17, 19}  # ... LSTAT FSTAT READDIR REALPATH STAT READLINK
_READ_ONLY_EXTENSIONS = {"statvfs@openssh.com", "fstatvfs@openssh.com", "limits@openssh.com",
                         "expand-path@openssh.com", "home-directory", "users-groups-by-id@openssh.com",
                         "fsync@openssh.com"}
STATUS, HANDLE, DATA, NAME, ATTRS = 101, 102, 103, 104, 105

# The largest packet OpenSSH sends or accepts is 256 KiB; anything much larger is garbage.
MAX_PACKET = 1 << 20
# What one channel may make the gateway remember (issue 10: every parser bounded): open handles
# (OpenSSH's server allows 512 at most) and requests awaiting their reply.
MAX_HANDLES = 1024
MAX_PENDING = 8192

NO_SUCH_FILE, PERMISSION_DENIED, FAILURE, OP_UNSUPPORTED = 2, 3, 4, 8
_WRITE_FLAGS = 0x02 | 0x04 | 0x08 | 0x10 | 0x20  # write, append, create, truncate, exclusive

_PFLAGS = ((0x01, "read"), (0x02, "write"), (0x04, "append"), (0x08, "create"),
           (0x10, "truncate"), (0x20, "exclusive"))


class SFTPError(ValueError):
    """The stream is not SFTP (the channel is ended)."""


@attrs.frozen
class Action:
    """One thing to record: kind is sftp.open, sftp.remove, ..., data says on what."""

    kind: str
    data: dict


@attrs.define
class FileStats:
    path: str
    mode: str
    read: int = 0
    written: int = 0
    resolved: str | None = None  # the path the upstream resolved it to, as judged
    next_offset: int = 0  # written in order so far: the SHA-256 covers what was written
    sha: hashlib._Hash = attrs.field(factory=hashlib.sha256, repr=False)
    in_order: bool = True

    def close_data(self, **extra) -> dict:
        data = {"path": self.path, "mode": self.mode, "bytes_read": self.read, "bytes_written": self.written}
        if self.resolved is not None and display(self.resolved) != self.path:
            data["resolved"] = display(self.resolved)
        if self.written:
            # The hash of what was written, when it was written in order (else the size says it all).
            data["sha256"] = self.sha.hexdigest() if self.in_order else None
        return {**data, **extra}


@attrs.frozen
class Request:
    """One client packet, with what the gateway must do before it goes upstream.

    ``access``: "read" or "write" when the request is judged by path (None: not judged);
    ``paths``: (path as sent, follow links) pairs the upstream resolves (SFTP REALPATH) first;
    ``handle``: the already-judged file a handle request acts on (fsetstat).
    """

    pkt: bytes
    type: int
    rid: int | None
    action: Action | None = None
    access: str | None = None
    paths: tuple = ()
    handle_path: str | None = None
    refuse: str | None = None  # why the gateway refuses it whatever the rules say


def status(rid: int, code: int, message: str) -> bytes:
    """An SSH_FXP_STATUS reply to the client (what the gateway answers for a refused request)."""
    msg = message.encode("utf-8", "replace")[:1024]
    body = struct.pack(">BII", STATUS, rid, code) + struct.pack(">I", len(msg)) + msg + struct.pack(">I", 0)
    return struct.pack(">I", len(body)) + body


def realpath_request(rid: int, path: str, kind: int = REALPATH) -> bytes:
    p = path.encode("utf-8", "surrogateescape")
    body = struct.pack(">BI", kind, rid) + struct.pack(">I", len(p)) + p
    return struct.pack(">I", len(body)) + body


def lstat_request(rid: int, path: str) -> bytes:
    return realpath_request(rid, path, LSTAT)


def split_parent(path: str) -> tuple[str, str]:
    """(the directory to resolve, the last name) of a path as sent: `a/b` -> (`a`, `b`)."""
    stripped = path.rstrip("/") or "/"
    parent, name = posixpath.split(stripped)
    return (parent or "."), name


class _Splitter:
    def __init__(self):
        self._buf = bytearray()

    def packets(self, data: bytes):
        buf = self._buf
        buf += data
        out = []
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = struct.unpack_from(">I", buf, pos)
            if n < 1 or n > MAX_PACKET:
                raise SFTPError(f"bad SFTP packet length {n}")
            if len(buf) - pos - 4 < n:
                break
            out.append(bytes(buf[pos:pos + 4 + n]))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out


class _Reader:
    def __init__(self, pkt: bytes):
        self.p = pkt
        self.i = 5  # length and type

    def u32(self) -> int:
        if self.i + 4 > len(self.p):
            raise SFTPError("truncated SFTP packet")
        (v,) = struct.unpack_from(">I", self.p, self.i)
        self.i += 4
        return v

    def u64(self) -> int:
        if self.i + 8 > len(self.p):
            raise SFTPError("truncated SFTP packet")
        (v,) = struct.unpack_from(">Q", self.p, self.i)
        self.i += 8
        return v

    def string(self) -> bytes:
        n = self.u32()
        if self.i + n > len(self.p):
            raise SFTPError("truncated SFTP string")
        v = self.p[self.i:self.i + n]
        self.i += n
        return v

    def text(self) -> str:
        """For people: bytes that are not UTF-8 shown as \\xNN."""
        return self.string().decode("utf-8", "backslashreplace")

    def path(self) -> str:
        """For judging: exactly the bytes the server uses (surrogateescape round-trips them). A
        name shown as \\xff is another file than the byte 0xff: judged by its display, a link
        named with that byte passed as the directory named `\\xff`."""
        return self.string().decode("utf-8", "surrogateescape")


# The upstream's answer to a request the gateway sent itself (by request id): a REALPATH's path
# (None: no name), a STATUS code, or whether an ATTRS came back (STAT: the path exists).
Answer = str | int | bool | None


def display(path: str | None) -> str | None:
    """A judged path as people (and the event store) read it."""
    if path is None:
        return None
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _mode(pflags: int) -> str:
    return ",".join(name for bit, name in _PFLAGS if pflags & bit) or "none"


class Tracker:
    """Both directions of one SFTP channel."""

    def __init__(self):
        self._req = _Splitter()
        self._resp = _Splitter()
        self._opening: dict[int, tuple[str, str]] = {}  # request id -> (path, mode)
        self._reading: dict[int, bytes] = {}  # request id -> handle
        self.files: dict[bytes, FileStats] = {}  # open handles
        self.dirs: dict[bytes, str] = {}
        self.closed: list[FileStats] = []
        self.pending: set[int] = set()  # client request ids awaiting their reply
        self.own: set[int] = set()  # the gateway's own request ids awaiting theirs
        self._own = 0
        self._resolved: dict[int, str] = {}  # open request id -> the path judged

    def requests(self, data: bytes) -> list[tuple[bytes, Action | None]]:
        """Whole client packets, each with the action to record before it is forwarded."""
        return [(r.pkt, r.action) for r in self.read_requests(data)]

    def read_requests(self, data: bytes) -> list[Request]:
        """Whole client packets, each with what to judge and record before it is forwarded."""
        return [self._judged(p) for p in self._req.packets(data)]

    def _judged(self, p: bytes) -> Request:
        t = p[4]
        action = self._request(p)
        if t == INIT:
            return Request(p, t, None, action)
        r = _Reader(p)
        rid = r.u32()
        self.pending.add(rid)
        if len(self.pending) > MAX_PENDING:
            raise SFTPError(f"more than {MAX_PENDING} SFTP requests awaiting a reply")
        if t == OPEN:
            path = r.path()
            write = bool(r.u32() & _WRITE_FLAGS)
            return Request(p, t, rid, action, "write" if write else "read", ((path, True),))
        if t in (OPENDIR, STAT):
            return Request(p, t, rid, action, "read", ((r.path(), True),))
        if t in (LSTAT, READLINK):
            return Request(p, t, rid, action, "read", ((r.path(), False),))
        if t in (SETSTAT, MKDIR):
            return Request(p, t, rid, action, "write", ((r.path(), True),))
        if t in (REMOVE, RMDIR):
            return Request(p, t, rid, action, "write", ((r.path(), False),))
        if t == RENAME:
            return Request(p, t, rid, action, "write", ((r.path(), False), (r.path(), False)))
        if t == SYMLINK:
            target, link = r.path(), r.path()  # OpenSSH's order
            refuse = None
            if ".." in target.split("/"):
                # Where `..` leads is decided each time the link is followed: from wherever the link
                # (or a directory on its path) has been moved to since. `a/l -> ../x`, judged as U/x,
                # renamed to U/l, points beside U.
                refuse = "a link whose target has '..' points elsewhere once it or its directory moves"
            if not target.startswith("/"):
                target = posixpath.join(posixpath.dirname(link) or ".", target)
            return Request(p, t, rid, action, "write", ((link, False), (target, True)), refuse=refuse)
        if t == FSETSTAT:
            f = self.files.get(r.string())
            return Request(p, t, rid, action, "write", (), f.resolved if f else None)
        if t == EXTENDED:
            name = r.text()
            if name in ("posix-rename@openssh.com", "hardlink@openssh.com"):
                return Request(p, t, rid, action, "write", ((r.path(), False), (r.path(), name.startswith("hard"))))
            if name == "lsetstat@openssh.com":
                return Request(p, t, rid, action, "write", ((r.path(), False),))
            if name in _READ_ONLY_EXTENSIONS or name == "copy-data":
                return Request(p, t, rid, action)  # judged when its handles were opened, or harmless
            return Request(p, t, rid, action, "write", (), None)  # unknown: only plain `sftp` grants it
        if t in (READ, WRITE, CLOSE, FSTAT, READDIR, REALPATH):
            return Request(p, t, rid, action)
        return Request(p, t, rid, action, "write", (), None)

    def opened(self, rid: int, resolved: str):
        """The request ``rid`` opening a file was judged on ``resolved``."""
        self._resolved[rid] = resolved

    def refused(self, rid: int):
        """A request the gateway answered itself: it never reaches the upstream."""
        self._opening.pop(rid, None)
        self._resolved.pop(rid, None)
        self.pending.discard(rid)

    def own_id(self) -> int:
        """A request id for the gateway's own request, not awaiting a reply to the client."""
        while True:
            self._own = (self._own - 1) & 0xFFFFFFFF or 0xFFFFFFFF
            if self._own not in self.pending and self._own not in self.own:
                self.own.add(self._own)
                return self._own

    def _request(self, p: bytes) -> Action | None:
        t = p[4]
        if t == INIT:
            return None
        r = _Reader(p)
        rid = r.u32()
        if t == OPEN:
            path = r.text()
            mode = _mode(r.u32())
            self._opening[rid] = (path, mode)
            return Action("sftp.open", {"path": path, "mode": mode})
        if t == READ:
            handle = r.string()
            self._reading[rid] = handle
            if len(self._reading) > MAX_PENDING:
                raise SFTPError(f"more than {MAX_PENDING} SFTP reads awaiting a reply")
            return None
        if t == WRITE:
            handle = r.string()
            offset = r.u64()
            data = r.string()
            f = self.files.get(handle)
            if f is not None:
                f.written += len(data)
                if f.in_order and offset == f.next_offset:
                    f.sha.update(data)
                    f.next_offset += len(data)
                else:
                    f.in_order = False
            return None
        if t == CLOSE:
            handle = r.string()
            f = self.files.pop(handle, None)
            self.dirs.pop(handle, None)
            if f is not None:
                return Action("sftp.close", f.close_data())
            return None
        if t == OPENDIR:
            return Action("sftp.list", {"path": r.text()})
        if t == REMOVE:
            return Action("sftp.remove", {"path": r.text()})
        if t == MKDIR:
            return Action("sftp.mkdir", {"path": r.text()})
        if t == RMDIR:
            return Action("sftp.rmdir", {"path": r.text()})
        if t == RENAME:
            return Action("sftp.rename", {"path": r.text(), "to": r.text()})
        if t == SYMLINK:
            # OpenSSH sends (target, link): the reverse of the draft.
            target, link = r.text(), r.text()
            return Action("sftp.symlink", {"path": link, "target": target})
        if t == SETSTAT:
            return Action("sftp.setstat", {"path": r.text()})
        if t == FSETSTAT:
            f = self.files.get(r.string())
            return Action("sftp.setstat", {"path": f.path if f else None})
        if t == EXTENDED:
            name = r.text()
            if name in ("posix-rename@openssh.com", "hardlink@openssh.com"):
                kind = "sftp.rename" if name.startswith("posix") else "sftp.link"
                return Action(kind, {"path": r.text(), "to": r.text()})
            if name == "lsetstat@openssh.com":  # chmod/chown/touch of a link itself (`chmod -h`)
                return Action("sftp.setstat", {"path": r.text()})
            if name == "copy-data":  # `cp` on the server: read handle, offset, length, write handle
                src = self.files.get(r.string())
                r.u64()
                r.u64()
                dst = self.files.get(r.string())
                return Action("sftp.copy", {"path": src.path if src else None, "to": dst.path if dst else None})
            if name in _READ_ONLY_EXTENSIONS:
                return None
            # Anything else the upstream might act on is on the record, by name, before it goes.
            return Action("sftp.extended", {"name": name})
        if t not in _PLAIN_REQUESTS:
            return Action("sftp.request", {"type": t})
        return None

    def responses(self, data: bytes) -> list[bytes]:
        """Whole server packets (forwarded as they are), learning handles and counting reads."""
        return [p for p in self.read_responses(data)[0]]

    def read_responses(self, data: bytes) -> tuple[list[bytes], list[tuple[int, Answer]]]:
        """(whole server packets for the client, answers to the gateway's own requests: (id, the
        resolved path of a NAME, the code of a STATUS, or True for an ATTRS))."""
        pkts = self._resp.packets(data)
        out: list[bytes] = []
        mine: list[tuple[int, Answer]] = []
        for p in pkts:
            t = p[4]
            if t == VERSION:
                # This reader knows v3 (what OpenSSH speaks); a later version lays requests out
                # otherwise (v4+ OPEN, v5 RENAME flags, v6 LINK): end the channel, not mis-record it.
                if _Reader(p).u32() != 3:
                    raise SFTPError("the upstream speaks an SFTP version other than 3")
                out.append(p)
                continue
            r = _Reader(p)
            rid = r.u32()
            if rid in self.own:  # an answer to the gateway: a NAME's path, a STATUS code, ATTRS: True
                self.own.discard(rid)
                if t == 104:
                    mine.append((rid, r.path() if r.u32() >= 1 else None))
                elif t == STATUS:
                    mine.append((rid, r.u32()))
                else:
                    mine.append((rid, t == ATTRS))
                continue
            self.pending.discard(rid)
            out.append(p)
            if t == HANDLE:
                handle = r.string()
                opened = self._opening.pop(rid, None)
                resolved = self._resolved.pop(rid, None)
                if opened is not None:
                    if len(self.files) >= MAX_HANDLES:
                        raise SFTPError(f"more than {MAX_HANDLES} SFTP files open at once")
                    self.files[handle] = FileStats(*opened, resolved=resolved)
            elif t == DATA:
                read_from = self._reading.pop(rid, None)
                f = self.files.get(read_from) if read_from is not None else None
                if f is not None:
                    f.read += r.u32()  # the data string's length
            elif t == STATUS:
                self._opening.pop(rid, None)
                self._reading.pop(rid, None)
                self._resolved.pop(rid, None)
        return out, mine

    def unclosed(self) -> list[Action]:
        """Files still open when the channel ended."""
        out = [Action("sftp.close", f.close_data(unclosed=True)) for f in self.files.values()]
        self.files.clear()
        return out
