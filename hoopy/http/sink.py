"""The seam between an exchange and its client: ``IResponseSink``, where an answer goes.

An ``Exchange`` (exchange.py) writes its answer only through this interface: reply.py's
``Response`` implements it on a client connection, the tests implement it in memory
(tests/test_http_exchange.py). Nothing else lives here, so either side can change without the other.
"""
from __future__ import annotations

from zope.interface import Attribute, Interface


class IResponseSink(Interface):
    """Where an exchange's answer goes: the client's connection, or a test's memory."""

    started = Attribute("True once the response head has been written")

    def head(code, phrase, headers):
        """The status and the headers ((name, value) pairs), sent with the first body bytes."""

    def write(data):
        """Body bytes."""

    def finish():
        """The response is complete."""

    def abort():
        """The response cannot be completed: cut the connection (no client mistakes it for whole)."""

    def register_producer(producer):
        """A push producer the client's socket pauses when it cannot keep up."""

    def unregister_producer():
        """The producer is done."""

    def close_later(seconds, done):
        """Close the connection in ``seconds`` unless ``done`` (a Deferred) fires first."""

    def take_over(upstream, answer, on_lost):
        """Turn the connection into a byte relay to ``upstream`` (a WebSocket), sending ``answer``."""
