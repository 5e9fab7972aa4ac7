"""A sans-IO reader of the SFTP protocol (v3, what OpenSSH speaks), for auditing.

The gateway relays SFTP bytes untouched; this module only splits each
direction into whole packets and says what the client did with which file.
``Requests.feed(data)`` returns whole client packets, each with the audit
action it carries (or None for reads, writes and listings, which are counted
per file and reported when the file is closed). ``Responses.feed(data)`` learns
the handles the server gives out and counts the bytes read.
"""
from __future__ import annotations

import struct

import attrs

INIT, VERSION = 1, 2
OPEN, CLOSE, READ, WRITE = 3, 4, 5, 6
SETSTAT, FSETSTAT, OPENDIR = 9, 10, 11
REMOVE, MKDIR, RMDIR, RENAME, SYMLINK = 13, 14, 15, 18, 20
EXTENDED = 200
# Requests that change nothing, or whose effect is recorded elsewhere (open, close), v3.
_PLAIN_REQUESTS = {INIT, READ, WRITE, 7, 8, 12, 16, 17, 19}  # ... LSTAT FSTAT READDIR REALPATH STAT READLINK
_READ_ONLY_EXTENSIONS = {"statvfs@openssh.com", "fstatvfs@openssh.com", "limits@openssh.com",
                         "expand-path@openssh.com", "home-directory", "users-groups-by-id@openssh.com",
                         "fsync@openssh.com"}
STATUS, HANDLE, DATA = 101, 102, 103

# The largest packet OpenSSH sends or accepts is 256 KiB; anything much larger is garbage.
MAX_PACKET = 1 << 20

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
        return self.string().decode("utf-8", "backslashreplace")


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

    def requests(self, data: bytes) -> list[tuple[bytes, Action | None]]:
        """Whole client packets, each with the action to record before it is forwarded."""
        return [(p, self._request(p)) for p in self._req.packets(data)]

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
            return None
        if t == WRITE:
            handle = r.string()
            r.u64()
            n = r.u32()
            f = self.files.get(handle)
            if f is not None:
                f.written += n
            return None
        if t == CLOSE:
            handle = r.string()
            f = self.files.pop(handle, None)
            self.dirs.pop(handle, None)
            if f is not None:
                return Action("sftp.close", {"path": f.path, "mode": f.mode,
                                             "bytes_read": f.read, "bytes_written": f.written})
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
        pkts = self._resp.packets(data)
        for p in pkts:
            t = p[4]
            if t == VERSION:
                # This reader knows v3 (what OpenSSH speaks); a later version lays requests out
                # otherwise (v4+ OPEN, v5 RENAME flags, v6 LINK): end the channel, not mis-record it.
                if _Reader(p).u32() != 3:
                    raise SFTPError("the upstream speaks an SFTP version other than 3")
            elif t == HANDLE:
                r = _Reader(p)
                rid = r.u32()
                handle = r.string()
                opened = self._opening.pop(rid, None)
                if opened is not None:
                    self.files[handle] = FileStats(*opened)
            elif t == DATA:
                r = _Reader(p)
                rid = r.u32()
                handle = self._reading.pop(rid, None)
                f = self.files.get(handle) if handle is not None else None
                if f is not None:
                    f.read += r.u32()  # the data string's length
            elif t == STATUS:
                r = _Reader(p)
                rid = r.u32()
                self._opening.pop(rid, None)
                self._reading.pop(rid, None)
        return pkts

    def unclosed(self) -> list[Action]:
        """Files still open when the channel ended."""
        out = [Action("sftp.close", {"path": f.path, "mode": f.mode, "bytes_read": f.read,
                                     "bytes_written": f.written, "unclosed": True})
               for f in self.files.values()]
        self.files.clear()
        return out
