"""What hoopy's relays use of a connected stream transport, typed.

``Protocol.transport`` is declared an ``ITransport`` (write, loseConnection). Every stream transport
twisted connects (TCP, TLS, UNIX, and the in-memory ones of tests) also aborts, takes a producer and is
one; twisted declares those in separate interfaces (ITCPTransport, IConsumer, IPushProducer), so a relay
says here which of them it relies on instead of an ``Any``.
"""
from __future__ import annotations

from typing import Protocol, cast

from twisted.internet.interfaces import ITransport


class StreamTransport(Protocol):
    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...

    def registerProducer(self, producer: object, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


def stream(transport: ITransport | None) -> StreamTransport:
    """A connected protocol's transport, as the stream transport it is (never None once connected)."""
    assert transport is not None, "not connected"
    return cast(StreamTransport, transport)
