"""asciicast v2 terminal recordings, written as they happen.

Every line is whole and flushed when written, so ``asciinema play`` and
``asciinema cat`` read the file while the session is still open and after
a crash (asciinema 2.4 stops at a blank line and fails on a torn last line).
``seal`` closes the file and records its SHA-256 as an event, which
``hoopy audit verify`` checks the file against.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import time
from pathlib import Path

from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from zope.interface import Interface, implementer

log = Logger()


class IRecorder(Interface):
    def output(data):
        """Bytes the terminal showed ("o")."""

    def input(data):
        """Bytes typed ("i")."""

    def resize(width, height):
        """The terminal changed size ("r")."""

    def marker(label):
        """A marker ("m"), such as an approval requested or decided."""

    def seal(**data):
        """Close the file and record its SHA-256 (and ``data``, e.g. redaction counts); returns a Deferred."""


def _dumps(obj) -> str:
    # ensure_ascii keeps every line pure ASCII: no encoding surprises for players.
    return json.dumps(obj, ensure_ascii=True, separators=(", ", ": "))


def sha256_file(path: str | Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


@implementer(IRecorder)
class AsciicastRecorder:
    """One terminal channel's recording, ``recordings/<name>.cast``."""

    def __init__(self, path: str | Path, session, width: int, height: int,
                 term: str | None = None, shell: str | None = None, title: str | None = None,
                 command: str | None = None, clock=time.monotonic):
        self.path = Path(path)
        self.session = session
        self._clock = clock
        self._start = clock()
        self._decoders = {"o": codecs.getincrementaldecoder("utf-8")("replace"),
                          "i": codecs.getincrementaldecoder("utf-8")("replace")}
        self.sealed = None  # the Deferred of seal(), once called
        self.failed: OSError | None = None  # the OSError that stopped writing, if any
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: a recording is never written over.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        self._file = os.fdopen(fd, "w", encoding="ascii", newline="\n")
        header = {
            "version": 2, "width": max(1, int(width or 80)), "height": max(1, int(height or 24)),
            "timestamp": int(time.time()),
            "env": {"TERM": term or "xterm", "SHELL": shell or "/bin/sh"},
            "title": title or "",
        }
        if command:
            header["command"] = command
        self._write(_dumps(header))

    def _write(self, line: str):
        if self._file is None or self.failed:
            return
        try:
            self._file.write(line + "\n")
            self._file.flush()
        except OSError as e:  # a full disk: the session goes on, the record says so
            self.failed = e
            log.error("recording {path}: {e}", path=str(self.path), e=str(e))

    def _event(self, code: str, data: str):
        t = round(self._clock() - self._start, 6)
        self._write(_dumps([t, code, data]))

    def output(self, data: bytes | str):
        if isinstance(data, bytes):
            data = self._decoders["o"].decode(data)
        if data:
            self._event("o", data)

    def input(self, data: bytes | str):
        if isinstance(data, bytes):
            data = self._decoders["i"].decode(data)
        if data:
            self._event("i", data)

    def resize(self, width: int, height: int):
        self._event("r", f"{int(width)}x{int(height)}")

    def marker(self, label: str):
        self._event("m", label)

    def seal(self, **data):
        """Close, hash off the reactor thread, and record ``recording.sealed`` (with ``data``)."""
        if self.sealed is not None:
            return self.sealed
        for code, dec in self._decoders.items():
            tail = dec.decode(b"", final=True)
            if tail:
                self._event(code, tail)
        try:
            self._file.close()
        except OSError as e:
            self.failed = self.failed or e
        self._file = None
        duration = round(self._clock() - self._start, 6)

        def record(result):
            digest, size = result
            return self.session.event(
                "recording.sealed", "ok" if not self.failed else "incomplete",
                path=self.path.name, sha256=digest, size=size, duration_s=duration,
                error=str(self.failed) if self.failed else None, **data)

        self.sealed = deferToThread(sha256_file, self.path).addCallback(record)
        self.sealed.addErrback(lambda f: log.error("sealing {p}: {e}", p=str(self.path),
                                                   e=f.getErrorMessage()))
        return self.sealed
