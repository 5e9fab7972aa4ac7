"""The response side of the upstream HTTP client (upstream.py): what a caller gets back.

``UpstreamResponse`` is the head of an upstream's answer (code, phrase, ``RawHeaders``, length)
and the hand-off of its body: what the connection parses is held until a protocol is given to
``deliverBody`` (the socket paused meanwhile, through ``_BodyTransport``), or taken whole when it
all came with the head (``whole``). The connection (upstream.py's ``UpstreamConnection``) makes
these and feeds them (``_data``, ``_end``); nothing here reads a socket or parses bytes.
"""
from __future__ import annotations

from typing import Any

from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH

# The end of every complete body: one Failure made once (making one per response cost 4% of a request).
_DONE = Failure(ResponseDone("Response body fully received"))


class RawHeaders:
    """Response headers as the upstream sent them (names in their case, in order)."""

    __slots__ = ("pairs", "_by_name")

    def __init__(self, pairs: list, by_name: dict | None = None):
        self.pairs = pairs
        # (name as first spelled, [values]) by lower-case name, in the order first seen: made once
        # (on_headers_complete has it), not once a lookup
        self._by_name = by_name if by_name is not None else _by_name(pairs)

    def getRawHeaders(self, name: bytes, default=None):
        found = self._by_name.get(name.lower())
        return list(found[1]) if found is not None else default

    def getAllRawHeaders(self):
        """(name, [values]) per header name, in the order first seen."""
        return [(n, list(vs)) for n, vs in self._by_name.values()]

    def by_lower(self):
        """(lower-case name, (name, [values])) per header name, in the order first seen: this
        object's own (read only)."""
        return self._by_name.items()

    def grouped(self):
        """(name, [values]) per header name, in the order first seen: this object's own, not copies
        (for a reader that only reads them: getAllRawHeaders' copies were a tenth of a response head's cost)."""
        return self._by_name.values()


def _by_name(pairs) -> dict:
    seen: dict = {}
    for n, v in pairs:
        key = n.lower()
        found = seen.get(key)
        if found is None:
            seen[key] = (n, [v])
        else:
            found[1].append(v)
    return seen


class _BodyTransport:
    """What a body protocol sees as its transport: pausing it pauses the upstream socket, while
    its exchange holds the connection. Once the exchange is over the connection may serve another
    (from the pool): a late pause or stop from this reader (say, one waiting for a redaction to
    be written after the body ended) must not stall or kill that one."""

    __slots__ = ("_conn", "_req")

    def __init__(self, conn, req):
        self._conn = conn
        # the request this body answers (not the connection's at delivery: a body taken after its
        # head was handed over may find its connection back in the pool, or serving another)
        self._req = req

    def _ours(self):
        return self._conn.exchange is self._req and self._conn.transport is not None

    def pauseProducing(self):
        if self._ours():
            self._conn.transport.pauseProducing()

    def resumeProducing(self):
        if self._ours():
            self._conn.transport.resumeProducing()

    def stopProducing(self):
        if self._conn.exchange is self._req:
            self._conn.abort()

    def getPeer(self):
        return self._conn.transport.getPeer() if self._conn.transport is not None else None


class UpstreamResponse:
    """The head of an upstream response; its body goes to the protocol given to deliverBody."""

    def __init__(self, conn, code: int, phrase: bytes, headers: RawHeaders, length, version: bytes):
        self._conn = conn
        self.code, self.phrase, self.headers, self.length, self.version = code, phrase, headers, length, version
        self._protocol: Any = None
        self._req: Any = None  # the request it answers: upstream.py's _Request (set by the connection)
        self._pending: list = []
        self._done: Failure | None = None
        # The head goes to its caller once the read that brought it is parsed (see
        # UpstreamConnection._hand_head): what that read holds of the body waits here meanwhile,
        # without pausing the socket; past that read, nobody reading pauses it (_held)
        self._handing = True
        self._held = False

    def deliverBody(self, protocol):
        self._protocol = protocol
        transport = _BodyTransport(self._conn, self._req)
        self._req = None  # (its request holds this response: no cycle left once it is delivered)
        protocol.makeConnection(transport)
        pending, self._pending = self._pending, []
        for data in pending:
            protocol.dataReceived(data)
        if self._done is not None:
            protocol.connectionLost(self._done)
        elif self._held and self._protocol is protocol:
            self._held = False
            transport.resumeProducing()  # paused while nobody read (see _data); the reader pauses on its own

    def whole(self) -> bytes | None:
        """The whole body when it is all in already, complete by its Content-Length (a small answer
        read with its head): taken here, never delivered to a protocol. None otherwise (then
        ``deliverBody`` as ever)."""
        if self._protocol is not None or self._done is not _DONE or self.length is UNKNOWN_LENGTH:
            return None
        self._protocol = _TAKEN
        # no body transport is made for it: the request it answers is let go (it holds this, so
        # the pair would be a reference cycle, freed by the garbage collector, not by count)
        self._req = None
        pending, self._pending = self._pending, []
        return b"".join(pending)

    def _data(self, data: bytes):
        if self._protocol is None:
            # nobody reads the body yet: hold what this read brought, and read no more meanwhile
            # (unless the head is still to be handed over at the end of this very read)
            if not self._handing and not self._held and self._conn.transport is not None:
                self._held = True
                self._conn.transport.pauseProducing()
            self._pending.append(data)
        else:
            self._protocol.dataReceived(data)

    def _end(self, reason: Failure):
        if self._done is not None:
            return
        self._done = reason
        if self._protocol is not None:
            self._protocol.connectionLost(reason)


class _Taken:
    """A body taken whole (UpstreamResponse.whole): nothing more is delivered."""

    def dataReceived(self, data):
        pass

    def connectionLost(self, reason):
        pass


_TAKEN = _Taken()
