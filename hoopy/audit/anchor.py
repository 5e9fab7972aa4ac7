"""The anchor: every signed chain head, sent where the gateway cannot rewrite it.

Signatures show that the events up to a signed head are as the node wrote
them, but not that no later events existed: whoever can write the store can
remove the tail together with its signatures. A copy of each signed head kept
elsewhere (an append-only file, a syslog server, an HTTP endpoint the gateway
only posts to) is what tells: ``hoopy audit verify --anchor FILE`` finds every
anchored head in the chain, with the same hash, or names the one missing.

``[gateway] audit_anchor``:

- ``file:/var/log/hoopy/anchor.jsonl``: one JSON line per head, appended and
  fsynced (make it append-only: ``chattr +a``, or a file another user owns on
  a log host);
- ``syslog:/dev/log`` (the local syslog socket) or ``syslog://HOST[:PORT]``
  (UDP, port 514 by default): one message per head, ``hoopy-anchor: {json}``,
  facility authpriv;
- ``http://...`` or ``https://...``: one POST per head, the JSON as body.

Each head is ``{"hoopy": "chain-head", "gateway", "seq", "hash", "time",
"time_us", "key", "signature"}``. Delivery runs in its own thread, so a slow
endpoint delays nothing; a head that cannot be delivered is logged as an
error (the record itself is unaffected: the anchor is a witness).
"""
from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from twisted.logger import Logger

from hoopy.audit.events import iso

log = Logger()

_STOP = object()
AUTHPRIV_INFO = 10 * 8 + 6


def head_record(signed: dict) -> dict:
    sig = signed["signature"]
    return {"hoopy": "chain-head", "gateway": signed["gateway"], "seq": signed["seq"], "hash": signed["hash"],
            "time": iso(signed["time_us"]), "time_us": signed["time_us"],
            "key": sig.split(":")[1] if sig.count(":") >= 2 else None, "signature": sig}


class _FileSink:
    def __init__(self, path: Path):
        self.path = path

    def send(self, line: str):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)


class _SyslogSink:
    def __init__(self, target: str):
        self.target = target
        if target.startswith("syslog://"):
            u = urlsplit(target)
            if not u.hostname:  # the config refuses it first
                raise ValueError(f"audit_anchor: {target!r} needs a host")
            self.address: tuple[str, int] | str = (u.hostname, u.port or 514)
            self.family = socket.AF_INET6 if ":" in u.hostname else socket.AF_INET
        else:
            self.address = target[len("syslog:"):]
            self.family = socket.AF_UNIX
        self.host = socket.gethostname()

    def send(self, line: str):
        if self.family == socket.AF_UNIX:
            msg = f"<{AUTHPRIV_INFO}>hoopy-anchor: {line}"  # the local daemon adds time and host
        else:  # RFC 5424
            msg = (f"<{AUTHPRIV_INFO}>1 {iso(time.time_ns() // 1000)} {self.host} hoopy {os.getpid()} "
                   f"chain-head - hoopy-anchor: {line}")
        with socket.socket(self.family, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(msg.encode(), self.address)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl} refused", headers, fp)


class _HTTPSink:
    def __init__(self, url: str):
        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    def send(self, line: str):
        req = urllib.request.Request(self.url, data=line.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with self.opener.open(req, timeout=10) as resp:
            resp.read(65536)


def make_sink(target: str, base_dir: Path):
    if target.startswith("file:"):
        p = Path(os.path.expanduser(target[5:]))
        return _FileSink(p if p.is_absolute() else base_dir / p)
    if target.startswith("syslog:"):
        return _SyslogSink(target)
    if target.startswith(("http://", "https://")):
        return _HTTPSink(target)
    raise ValueError(f"audit_anchor: unknown target {target!r}")


class Anchor:
    """A thread that delivers signed heads, in order, to one sink."""

    max_queued = 100_000
    retries = 3

    def __init__(self, target: str, base_dir: Path):
        self.target = target
        self.sink = make_sink(target, base_dir)
        self._queue: queue.Queue = queue.Queue(self.max_queued)
        self._thread: threading.Thread | None = None
        self.delivered = 0
        self.failed = 0

    def start(self):
        self._thread = threading.Thread(target=self._run, name="hoopy-anchor", daemon=True)
        self._thread.start()

    def submit(self, signed: dict):
        """From the store's writer thread: never blocks."""
        try:
            self._queue.put_nowait(head_record(signed))
        except queue.Full:
            self.failed += 1
            log.error("audit anchor {t}: {n} heads waiting, head {seq} dropped", t=self.target,
                      n=self.max_queued, seq=signed["seq"])

    def stop(self, timeout: float = 10.0):
        """Deliver what is queued (for at most ``timeout`` seconds), then end."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    def _run(self):
        while True:
            rec = self._queue.get()
            if rec is _STOP:
                return
            line = json.dumps(rec, sort_keys=True, separators=(",", ":"))
            for attempt in range(self.retries):
                try:
                    self.sink.send(line)
                    self.delivered += 1
                    break
                except Exception as e:  # noqa: BLE001 - any failure of the witness is logged, never fatal
                    if attempt + 1 == self.retries:
                        self.failed += 1
                        log.error("audit anchor {t}: head {seq} not delivered: {e}", t=self.target,
                                  seq=rec["seq"], e=str(e))
                    else:
                        time.sleep(0.2 * (attempt + 1))
