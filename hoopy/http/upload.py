"""Request bodies streamed to the upstream as they arrive, with backpressure.

twisted.web normally spools a request body (to a temporary file past 100 KB)
and only then hands the request over. A gateway wants better: judge the
request on its head, then pass the body on while it is still arriving, so a
1 GiB upload needs neither memory nor disk, and a held or refused request
has sent nothing upstream. ``BodyPipe`` stands in for ``request.content``
and is the upstream request's IBodyProducer: chunks go straight to the
upstream connection while it keeps up; when it does not (or before the
policy has answered), up to ``HIGH`` bytes wait here and then the client's
socket stops being read until the upstream drains.
"""
from __future__ import annotations

from collections import deque

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

HIGH = 256 * 1024  # buffered bytes at which the client's socket is paused
LOW = 64 * 1024  # ... and resumed


class BodyTooLarge(Exception):
    pass


class BodyDropped(Exception):
    """The answer went out before the request body was all in: the rest of it goes nowhere."""


@implementer(IBodyProducer)
class BodyPipe:
    def __init__(self, transport, length, keep: int = 0):
        self.transport = transport  # the client's: paused and resumed for backpressure
        self.length = length if length is not None else UNKNOWN_LENGTH
        self.keep = keep  # how many leading bytes to keep for the record
        self.head = bytearray()
        self.received = 0
        self.done = False
        self.discarding = False
        self._received_all: defer.Deferred[int] | None = None  # made when asked (most never are)
        self._buf: deque = deque()
        self._buffered = 0
        self._consumer = None
        self._consumer_paused = False
        self._produced: defer.Deferred | None = None
        self._client_paused = False
        self.on_progress = None  # called for every piece received or sent upstream (the idle timer)
        self.watch = None  # called with every piece before it goes on; True: it must not (see abort)
        self._aborted = None
        self._sniffers: list = []

    @property
    def received_all(self) -> defer.Deferred:
        """Fires with the body's size once it is all in."""
        if self._received_all is None:
            self._received_all = defer.succeed(self.received) if self.done else defer.Deferred()
        return self._received_all

    # --- what twisted.web's Request expects of ``content`` ----------------------

    def tell(self) -> int:
        return self.received

    def seek(self, *args):
        pass

    def read(self, *args) -> bytes:
        return b""  # the body is not kept: it went (or goes) upstream

    def close(self):
        pass

    @property
    def waiting_on_caller(self) -> bool:
        """Still arriving and nothing held up by the upstream: the caller is the slow one."""
        return not self.done and not self.discarding and not (self._consumer_paused or self._buf)

    # --- fed by the request ----------------------------------------------------

    def feed(self, data: bytes):
        self.received += len(data)
        if self.on_progress is not None:
            self.on_progress()
        if len(self.head) < self.keep:
            self.head += data[:self.keep - len(self.head)]
        if self.discarding:
            return
        if self.watch is not None and self.watch(data):
            return  # the watcher refused the body (and aborted this pipe): nothing more goes upstream
        if self._consumer is not None and not self._consumer_paused and not self._buf:
            self._write(data)
            return
        self._buf.append(data)
        self._buffered += len(data)
        self._check_sniffers()
        if self._buffered > HIGH and self.transport is not None:
            # Every time, not only the first: twisted.web may resume the socket on its own.
            self._client_paused = True
            self.transport.pauseProducing()

    def sniff(self, n: int) -> defer.Deferred:
        """The body's first ``n`` bytes (fewer if it is shorter), once they are in; before anything
        has gone upstream (nothing is taken from the pipe)."""
        d: defer.Deferred[bytes] = defer.Deferred()
        self._sniffers.append((n, d))
        self._check_sniffers()
        return d

    def _check_sniffers(self):
        if not self._sniffers:
            return
        for n, d in list(self._sniffers):
            if self._buffered >= n or self.done or self.discarding:
                self._sniffers.remove((n, d))
                d.callback(b"".join(self._buf)[:n])

    def set_watch(self, watch):
        """Watch every piece from now on, starting with those already waiting here."""
        if self._buf and watch(b"".join(self._buf)):
            return
        self.watch = watch

    def end(self):
        self.done = True
        d = self._received_all
        if d is not None and not d.called:
            d.callback(self.received)
        self._check_sniffers()
        self._flush()

    def abort(self, reason):
        """The client went away mid-body: the upstream request must fail, not end short."""
        self.discarding = True
        self._aborted = reason
        self._buf.clear()
        self._buffered = 0
        self._resume_client()
        self._check_sniffers()
        if self._produced is not None and not self._produced.called:
            self._produced.errback(reason)

    def drop(self):
        """The answer is out before the body is all in (refused, or the upstream answered early):
        the rest is read and dropped. A body going upstream meanwhile fails its request (its
        connection is cut): never ended short as if whole (a chunked body's last chunk), nor left
        for the pool half sent (the upstream would read the next caller's request as its rest)."""
        if self._produced is not None and not self._produced.called:
            self.abort(Failure(BodyDropped("the answer went out before the request body was all in")))
        else:
            self.discard()

    def discard(self):
        """Nobody will read the rest (the request was refused): drop it, and keep reading."""
        self.discarding = True
        self._buf.clear()
        self._buffered = 0
        self._resume_client()
        self._check_sniffers()

    # --- IBodyProducer, for the upstream request --------------------------------

    def startProducing(self, consumer):
        if self._aborted is not None:  # never a short body that looks complete
            return defer.fail(self._aborted)
        self._consumer = consumer
        self._produced = defer.Deferred()
        self._flush()
        return self._produced

    def pauseProducing(self):
        self._consumer_paused = True

    def resumeProducing(self):
        self._consumer_paused = False
        self._flush()

    def stopProducing(self):
        # The upstream request is over (cancelled or failed): the rest has nowhere to go.
        self._consumer = None
        self.discard()

    # --- inside ------------------------------------------------------------------

    def _write(self, data):
        if self.on_progress is not None:
            self.on_progress()
        self._consumer.write(data)

    def _flush(self):
        while self._buf and self._consumer is not None and not self._consumer_paused:
            data = self._buf.popleft()
            self._buffered -= len(data)
            self._write(data)
        if self._buffered < LOW:
            self._resume_client()
        if self.done and not self._buf and self._produced is not None and not self._produced.called:
            self._produced.callback(None)

    def _resume_client(self):
        if self._client_paused and self.transport is not None:
            self._client_paused = False
            self.transport.resumeProducing()

    def collect(self, limit: int) -> defer.Deferred:
        """The whole body (for masking), or BodyTooLarge past ``limit`` bytes."""
        parts = []
        size = 0
        result: defer.Deferred[bytes] = defer.Deferred()

        class Collector:
            def write(self, data):
                nonlocal size
                size += len(data)
                if size > limit:
                    if not result.called:
                        result.errback(BodyTooLarge(limit))
                    return
                parts.append(data)

        def finished(_):
            if not result.called:
                result.callback(b"".join(parts))

        def failed(f):
            if not result.called:
                result.errback(f)

        self.startProducing(Collector()).addCallbacks(finished, failed)

        return result.addErrback(self._collect_failed)

    def _collect_failed(self, failure):
        self.stopProducing()  # too large, or abandoned: the rest has nowhere to go
        return failure
