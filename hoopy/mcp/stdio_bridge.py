"""``hoopy mcp stdio URL``: a stdio MCP server that forwards to hoopy's Streamable HTTP endpoint.

For clients that only launch stdio servers (desktop apps): each line the client writes
(one JSON-RPC message) is POSTed to URL with ``Authorization: Bearer $HOOPY_TOKEN``;
every message of the answer (JSON, or each event of an SSE stream) is written back as
one line. A handshake-era client's session id is kept and its GET stream opened; a
per-request-era client's messages get the routing headers its envelope implies. At the
end of stdin the session is ended (DELETE) and the bridge exits.
"""
from __future__ import annotations

import http.client
import json
import os
import sys
import threading
from urllib.parse import urlsplit

from hoopy.mcp import wire
from hoopy.mcp.sse import SSEParser

LIMIT = 16 * 1024 * 1024


class Bridge:
    def __init__(self, url: str, token: str, out=None):
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        self.u = u
        self.path = u.path or "/mcp"
        self.token = token
        self.out = out or sys.stdout.buffer
        self.lock = threading.Lock()
        self.session_id = None
        self.version = None
        self.get_started = False
        self.threads: list = []

    def _conn(self, timeout=None):
        cls = http.client.HTTPSConnection if self.u.scheme == "https" else http.client.HTTPConnection
        return cls(self.u.hostname, self.u.port or (443 if self.u.scheme == "https" else 80), timeout=timeout)

    def _headers(self, msg=None) -> dict:
        h = {"Authorization": f"Bearer {self.token}", "Accept": "application/json, text/event-stream",
             "Content-Type": "application/json"}
        meta = ((msg or {}).get("params") or {}).get("_meta") if isinstance(msg, dict) else None
        version = meta.get(wire.META_VERSION) if isinstance(meta, dict) else None
        if isinstance(version, str) and version in wire.MODERN_VERSIONS and "method" in msg:
            h.update(wire.modern_headers(msg, version))
            return h
        if self.session_id:
            h["Mcp-Session-Id"] = self.session_id
        if self.version:
            h["MCP-Protocol-Version"] = self.version
        return h

    def write(self, msg):
        with self.lock:
            self.out.write(json.dumps(msg, separators=(",", ":")).encode() + b"\n")
            self.out.flush()

    def _read(self, resp, msg_id=None):
        ctype = (resp.getheader("content-type") or "").split(";")[0].strip().lower()
        if ctype == "text/event-stream":
            parser = SSEParser(LIMIT)
            while True:
                chunk = resp.read1(65536) if hasattr(resp, "read1") else resp.read(4096)
                if not chunk:
                    return
                for ev in parser.feed(chunk):
                    if ev.data.strip():
                        self._deliver(json.loads(ev.data))
        body = resp.read(LIMIT + 1)
        if body.strip() and ctype == "application/json":
            self._deliver(json.loads(body))
        elif resp.status >= 400 and msg_id is not None:
            self.write(wire.error(msg_id, wire.INTERNAL_ERROR,
                                  f"hoopy answered HTTP {resp.status}: {body[:200].decode('utf-8', 'replace')}"))

    def _deliver(self, m):
        res = m.get("result") if isinstance(m, dict) else None
        if isinstance(res, dict) and isinstance(res.get("protocolVersion"), str) and self.version is None:
            self.version = res["protocolVersion"]
        self.write(m)

    def post(self, msg):
        conn = self._conn()
        try:
            conn.request("POST", self.path, body=wire.dumps(msg), headers=self._headers(msg))
            resp = conn.getresponse()
            if isinstance(msg, dict) and msg.get("method") == "initialize":
                self.session_id = resp.getheader("mcp-session-id") or self.session_id
            self._read(resp, msg.get("id") if isinstance(msg, dict) and "method" in msg else None)
        except (OSError, http.client.HTTPException, ValueError) as e:
            if isinstance(msg, dict) and "id" in msg and "method" in msg:
                self.write(wire.error(msg["id"], wire.INTERNAL_ERROR, f"cannot reach hoopy at {self.u.geturl()}: {e}"))
        finally:
            conn.close()
        if isinstance(msg, dict) and msg.get("method") == "notifications/initialized" and self.session_id:
            self._open_stream()

    def _open_stream(self):
        if self.get_started:
            return
        self.get_started = True

        def run():
            conn = self._conn()
            try:
                h = self._headers()
                h["Accept"] = "text/event-stream"
                conn.request("GET", self.path, headers=h)
                resp = conn.getresponse()
                if resp.status == 200:
                    self._read(resp)
            except (OSError, http.client.HTTPException, ValueError):
                pass
            finally:
                conn.close()

        threading.Thread(target=run, daemon=True).start()

    def run(self, stdin=None) -> int:
        stdin = stdin or sys.stdin.buffer
        for line in stdin:
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                self.write(wire.error(None, wire.PARSE_ERROR, "Parse error"))
                continue
            if isinstance(msg, dict) and msg.get("method") == "initialize":
                self.post(msg)  # in order: everything after it needs its session id
                continue
            t = threading.Thread(target=self.post, args=(msg,), daemon=True)
            t.start()
            self.threads = [x for x in self.threads if x.is_alive()] + [t]
        for t in self.threads:
            t.join(timeout=5)
        if self.session_id:
            conn = self._conn(timeout=5)
            try:
                conn.request("DELETE", self.path, headers=self._headers())
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
        return 0


def main(url: str) -> int:
    token = os.environ.get("HOOPY_TOKEN", "").strip()
    if not token:
        print("hoopy mcp stdio: set HOOPY_TOKEN to your identity's token", file=sys.stderr)
        return 1
    try:
        return Bridge(url, token).run()
    except ValueError as e:
        print(f"hoopy mcp stdio: {e}", file=sys.stderr)
        return 2
