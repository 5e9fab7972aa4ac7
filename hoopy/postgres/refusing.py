"""A session that refuses every statement with one message, sans-IO.

When a connection's masking rule does not resolve against the upstream catalog
(a mistyped column or table), nothing of it may run: the client is answered as a
server answers a failing statement, so a person with psql or an agent's SQL tool
reads the reason on every statement, and nothing goes upstream.

The payloads are never kept: every message is skipped as it arrives (its type is
all this needs), so memory stays bounded whatever the client sends.
"""
from __future__ import annotations

from hoopy.postgres import codec, wire

# Keep no payload of any message type: each comes out as an Oversized, its bytes dropped.
_NOTHING = {bytes([i]): 0 for i in range(256)}
_EXTENDED = frozenset({wire.PARSE, wire.BIND, wire.DESCRIBE, wire.EXECUTE, wire.CLOSE, wire.FLUSH})


class RefuseAll:
    def __init__(self, code: str, message: str):
        self.code = code
        self.message = message
        self.reader = codec.MessageReader(codec.MAX_MESSAGE, _NOTHING)
        self.skipping = False  # an extended-protocol batch was refused: answer nothing until Sync
        self.closed = False
        self.refused = 0  # statements refused, for the session's end

    def receive_data(self, data: bytes) -> tuple[bytes, str | None]:
        """(bytes for the client, a reason to close the connection or None)."""
        if self.closed:
            return b"", None
        self.reader.feed(data)
        out: list[bytes] = []
        try:
            while (m := self.reader.next()) is not None:
                t = m[0]
                if t == wire.TERMINATE:
                    self.closed = True
                    return b"".join(out), "client terminated"
                if t == wire.QUERY or t == wire.FUNCTION_CALL:
                    self.refused += 1
                    out += [codec.error(self.code, self.message), codec.ready(wire.IDLE)]
                elif t in _EXTENDED:
                    if not self.skipping:
                        self.refused += 1
                        self.skipping = True
                        out.append(codec.error(self.code, self.message))
                elif t == wire.SYNC:
                    self.skipping = False
                    out.append(codec.ready(wire.IDLE))
                elif t in (wire.COPY_DATA, wire.COPY_DONE, wire.COPY_FAIL):
                    continue  # no COPY was started: a server ignores these too
                else:
                    raise codec.ProtocolError(f"unknown message type {t!r}")
        except codec.ProtocolError as e:
            self.closed = True
            out.append(codec.error("08P01", f"invalid frontend message: {e}", "FATAL"))
            return b"".join(out), f"invalid frontend message: {e}"
        return b"".join(out), None
