"""A scripted HTTP/1.1 upstream over raw sockets, for wire-level attack tests.

It records every byte each connection received (so a test sees exactly what the gateway sent,
and whether a smuggled second request ever reached the upstream) and answers each request with
what the test scripted for its path: any bytes, two responses, 1xx, short bodies, a close.
A real peer, not a fake: a thread per connection on a real socket.
"""
from __future__ import annotations

import json
import socket
import threading
import time


def read_request(sock, buf: bytes, ignore_get_body: bool = False, ignore_delete_body: bool = False):
    """(head bytes, body bytes, rest) of one request, framed as a strict server frames it; None at EOF.

    ``ignore_get_body``: as some servers do, a GET's Content-Length is not read (its body, if any,
    is taken for the next request on the connection)."""
    while b"\r\n\r\n" not in buf:
        c = sock.recv(65536)
        if not c:
            return None
        buf += c
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    hdrs = {}
    for ln in lines[1:]:
        n, _, v = ln.partition(b":")
        hdrs.setdefault(n.strip().lower(), []).append(v.strip())
    body = b""
    if (ignore_get_body and head.startswith(b"GET ")) or (ignore_delete_body and head.startswith(b"DELETE ")):
        return head, body, buf
    if b"transfer-encoding" in hdrs:
        while True:
            while b"\r\n" not in buf:
                c = sock.recv(65536)
                if not c:
                    return head, body, b""
                buf += c
            size_line, _, buf = buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            while len(buf) < size + 2:
                c = sock.recv(65536)
                if not c:
                    return head, body, b""
                buf += c
            body += buf[:size]
            buf = buf[size + 2:]
            if size == 0:
                break
    elif b"content-length" in hdrs:
        n = int(hdrs[b"content-length"][0])
        while len(buf) < n:
            c = sock.recv(65536)
            if not c:
                return head, body + buf, b""
            buf += c
        body, buf = buf[:n], buf[n:]
    return head, body, buf


class RawUpstream:
    """``script[path] = fn(head, body) -> bytes | None`` (None: close without answering).

    The default answers 200 with a JSON echo of the request head (as some debug endpoints do)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self.script: dict = {}
        self.conns: list[bytearray] = []  # every byte each connection received
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body) as this upstream framed them
        self.lock = threading.Lock()
        self.closed = False
        self.ignore_get_body = False
        self.ignore_delete_body = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        raw = bytearray()
        with self.lock:
            self.conns.append(raw)

        class Rec:
            def __init__(self, sock):
                self.sock = sock

            def recv(self, n):
                c = self.sock.recv(n)
                raw.extend(c)
                return c

        rec = Rec(s)
        buf = b""
        try:
            while True:
                got = read_request(rec, buf, self.ignore_get_body, self.ignore_delete_body)
                if got is None:
                    return
                head, body, buf = got
                with self.lock:
                    self.requests.append((head, body))
                path = head.split(b" ")[1].split(b"?")[0].decode("latin-1")
                fn = self.script.get(path, echo)
                out = fn(head, body)
                if out is None:
                    return
                if callable(out):  # a generator of writes (with pauses)
                    for part in out(s):
                        pass
                else:
                    s.sendall(out)
                if b"connection: close" in out.lower() if isinstance(out, bytes) else False:
                    return
        except (OSError, ValueError):
            return
        finally:
            try:
                s.close()
            except OSError:
                pass

    def mark(self) -> int:
        return len(self.requests)

    def since(self, mark: int) -> list:
        with self.lock:
            return self.requests[mark:]

    def wire(self) -> bytes:
        with self.lock:
            return b"".join(bytes(c) for c in self.conns)

    def stop(self):
        self.closed = True
        self.sock.close()


def echo(head: bytes, body: bytes) -> bytes:
    lines = head.split(b"\r\n")
    data = json.dumps({"line": lines[0].decode("latin-1"),
                       "headers": [ln.decode("latin-1") for ln in lines[1:]],
                       "body": body.decode("latin-1")}).encode()
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(data), data)


def response(status: int = 200, body: bytes = b"", headers=(), length=True) -> bytes:
    h = b"".join(b"%b: %b\r\n" % (n, v) for n, v in headers)
    if length:
        h += b"Content-Length: %d\r\n" % len(body)
    return b"HTTP/1.1 %d X\r\n%b\r\n%b" % (status, h, body)


def raw(port: int, data: bytes, timeout: float = 5, wait_close: bool = False, pause: float = 0) -> bytes:
    """Every byte the gateway answers to ``data`` until it closes or is silent for ``timeout``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        if pause:
            time.sleep(pause)
        return read_all(s, timeout, None if wait_close else _complete)


def read_all(s, timeout: float = 6, enough=None) -> bytes:
    """What ``s`` receives until the peer closes, is silent for ``timeout`` or resets, or (given)
    ``enough(received)`` says it is all."""
    s.settimeout(timeout)
    out = b""
    try:
        while True:
            c = s.recv(65536)
            if not c:
                break
            out += c
            if enough is not None and enough(out):
                break
    except (socket.timeout, ConnectionResetError):
        pass
    return out


def _complete(out: bytes) -> bool:
    """One whole response with a Content-Length is in (enough for one-request probes)."""
    head, sep, body = out.partition(b"\r\n\r\n")
    if not sep:
        return False
    for ln in head.lower().split(b"\r\n"):
        if ln.startswith(b"content-length:"):
            return len(body) >= int(ln.split(b":")[1])
    return False


def statuses(out: bytes) -> list[int]:
    import re

    return [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", out)]


class LenientMCPServer:
    """A handshake-era Streamable HTTP MCP server, on a RawUpstream at /mcp, that looks tools up
    as some servers do: by a case-folded, NFKC-normalized name. ``calls`` lists what it ran."""

    TOOLS = ("read_report", "delete_db", "echo", "slow", "flood")
    PROMPTS = ("summarize", "secret_plan")

    def __init__(self, up: RawUpstream):
        self.up = up
        self.calls: list = []
        self.args: list = []
        self.reads: list = []
        up.script["/mcp"] = self.serve

    def serve(self, head: bytes, body: bytes):
        import unicodedata

        method = head.split(b" ", 1)[0]
        if method != b"POST":
            return response(405 if method == b"GET" else 200, b"")
        msg = json.loads(body)
        m, id_ = msg.get("method"), msg.get("id")
        if "id" not in msg:
            return response(202, b"")
        if m == "initialize":
            res = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}, "resources": {}, "prompts": {}},
                   "serverInfo": {"name": "lenient", "version": "1"}}
            return self._json({"jsonrpc": "2.0", "id": id_, "result": res}, [(b"Mcp-Session-Id", b"up-1")])
        if m == "tools/list":
            tools = [{"name": n, "description": n, "inputSchema": {"type": "object"}} for n in self.TOOLS]
            return self._json({"jsonrpc": "2.0", "id": id_, "result": {"tools": tools}})
        if m == "tools/call":
            name = unicodedata.normalize("NFKC", msg["params"]["name"]).casefold().strip().replace("\u200b", "")
            if name not in self.TOOLS:
                return self._json({"jsonrpc": "2.0", "id": id_, "error": {"code": -32602, "message": "no tool"}})
            self.calls.append(name)
            self.args.append(msg["params"].get("arguments"))
            if name == "flood":  # a response head without end
                def flood(sock):
                    sock.sendall(b"HTTP/1.1 200 OK\r\n")
                    t = time.monotonic()
                    try:
                        while time.monotonic() - t < 8:
                            sock.sendall(b"X-A: b\r\n" * 8192)
                    except OSError:
                        pass
                    yield None
                return flood
            if name == "slow":  # answers after the gateway's upstream_timeout
                out = self._json({"jsonrpc": "2.0", "id": id_, "result": {"content": [{"type": "text", "text": "late"}]}})

                def late(sock):
                    time.sleep(8)
                    sock.sendall(out)
                    yield None
                return late
            return self._json({"jsonrpc": "2.0", "id": id_,
                               "result": {"content": [{"type": "text", "text": f"ran {name}"}]}})
        if m == "prompts/list":
            prompts = [{"name": n, "description": n} for n in self.PROMPTS]
            return self._json({"jsonrpc": "2.0", "id": id_, "result": {"prompts": prompts}})
        if m == "prompts/get":
            name = unicodedata.normalize("NFKC", msg["params"]["name"]).casefold().strip()
            if name not in self.PROMPTS:
                return self._json({"jsonrpc": "2.0", "id": id_, "error": {"code": -32602, "message": "no prompt"}})
            self.calls.append("prompt:" + name)
            return self._json({"jsonrpc": "2.0", "id": id_, "result": {"messages": [
                {"role": "user", "content": {"type": "text", "text": f"prompt {name}"}}]}})
        if m == "resources/read":
            uri = msg["params"]["uri"]
            self.reads.append(uri)
            return self._json({"jsonrpc": "2.0", "id": id_,
                               "result": {"contents": [{"uri": uri, "mimeType": "text/plain", "text": "read"}]}})
        return self._json({"jsonrpc": "2.0", "id": id_, "error": {"code": -32601, "message": "Method not found"}})

    @staticmethod
    def _json(msg, headers=()):
        return response(200, json.dumps(msg).encode(), [(b"Content-Type", b"application/json"), *headers])
