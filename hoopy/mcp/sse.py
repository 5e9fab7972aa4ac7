"""Server-sent events, sans-IO: bytes in, (event, data, id) out; and the writer's side."""
from __future__ import annotations

import attrs


class SSEError(Exception):
    pass


@attrs.frozen
class SSEEvent:
    event: str
    data: str
    id: str | None


class SSEParser:
    """Feed bytes; get complete events. Lines end in CRLF, LF or CR; a blank line
    dispatches; comments (``:``) are dropped; an event over ``limit`` bytes is an error."""

    def __init__(self, limit: int):
        self.limit = limit
        self._buf = b""
        self._data: list[str] = []
        self._size = 0
        self._event = ""
        self._id: str | None = None
        self._cr = False  # the last chunk ended in CR: an LF starting the next is its pair

    def feed(self, data: bytes) -> list[SSEEvent]:
        if self._cr and data.startswith(b"\n"):
            data = data[1:]
        self._cr = data.endswith(b"\r")
        buf = self._buf + data
        out: list = []
        start = 0
        n = len(buf)
        while start < n:
            cr = buf.find(b"\r", start)
            lf = buf.find(b"\n", start)
            if cr < 0 and lf < 0:
                break
            if cr < 0 or (0 <= lf < cr):
                end, nxt = lf, lf + 1
            else:
                end = cr
                nxt = cr + 2 if buf[cr + 1:cr + 2] == b"\n" else cr + 1
            self._line(buf[start:end], out)
            start = nxt
        self._buf = buf[start:]
        if len(self._buf) + self._size > self.limit:
            raise SSEError(f"an event larger than {self.limit} bytes")
        return out

    def _line(self, line: bytes, out: list):
        if not line:
            if self._data:
                out.append(SSEEvent(self._event or "message", "\n".join(self._data), self._id))
            self._data, self._size, self._event = [], 0, ""
            return
        if line.startswith(b":"):
            return
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        text = value.decode("utf-8", "replace")
        if name == b"data":
            self._data.append(text)
            self._size += len(value) + 1
            if self._size > self.limit:
                raise SSEError(f"an event larger than {self.limit} bytes")
        elif name == b"event":
            self._event = text
        elif name == b"id":
            if "\0" not in text:
                self._id = text


def event_bytes(data: bytes, event_id: str | None = None) -> bytes:
    """One ``message`` event carrying a JSON-RPC message (JSON has no raw newlines)."""
    head = b"event: message\n" + (f"id: {event_id}\n".encode() if event_id else b"")
    return head + b"data: " + data + b"\n\n"
