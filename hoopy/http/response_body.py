"""An upstream response on its way to the client: its head cleaned (response_head.py), its body
streamed or masked.

``respond(exchange, response)`` decides, from the head, what happens to the body: streamed as it
comes (with backpressure both ways: the client's socket pauses the upstream's), masked event by
event (SSE), or read whole (up to ``mask_limit``) and masked; refused when it must be masked and
cannot be. The body protocols share one ``Stall`` timer rule (stall.py): the upstream silent for
``upstream_timeout`` while nobody but it is to blame ends the exchange.
"""
from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

from hoopy.http.bodies import Decoder, MaskError, SSEMasker, body_kind, charset_ok, codings, decodable
from hoopy.http.checks import Refusal
from hoopy.http.response_head import clean_headers
from hoopy.http.stall import Stall

MASK_SLOTS = defer.DeferredSemaphore(4)  # response bodies buffered and masked at once, per process


def reason_text(e) -> str:
    inner = getattr(e, "reasons", None)
    if inner:
        return "; ".join(f.getErrorMessage() or f.type.__name__ for f in inner)
    return str(e) or type(e).__name__


class Discard(Protocol):
    """A body nobody reads: the upstream connection is let go."""

    def dataReceived(self, data):
        pass

    def connectionMade(self):
        self.transport.stopProducing()


class Collect(Protocol):
    """Buffers a body that must be masked, up to the limit; ``done`` fires with it."""

    def __init__(self, exchange, decoder, limit):
        self.ex, self.decoder, self.limit = exchange, decoder, limit
        self.parts: list = []
        self.size = 0
        self.done = defer.Deferred(lambda d: self._stop())
        self.stall = None

    def connectionMade(self):
        ex = self.ex
        ex.upstream_transport = self.transport
        timeout = ex.settings.upstream_timeout
        self.stall = Stall(ex.reactor, timeout, lambda: self._fail(
            f"the upstream stalled: no body bytes for {timeout:g}s", 504), call=ex.take_timer())

    def _stop(self):
        if self.stall is not None:
            self.stall.cancel()
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data):
        self.stall.touch()
        if self.done.called:
            return
        try:
            if self.decoder is not None:
                data = self.decoder.feed(data)
        except MaskError as e:
            return self._fail(str(e))
        self.size += len(data)
        if self.size > self.limit:
            return self._fail(f"the upstream body must be masked and is larger than mask_limit ({self.limit} bytes)")
        self.parts.append(data)

    def _fail(self, error, status=502):
        self._stop()
        if not self.done.called:
            self.done.errback(Refusal(status, error, "error"))

    def connectionLost(self, reason):
        if self.stall is not None:
            self.stall.cancel()
        self.ex.upstream_transport = None
        if self.done.called:
            return
        if reason.type is not ResponseDone and not reason.check(ResponseDone, PotentialDataLoss):
            self.done.errback(Refusal(502, f"the upstream response broke off: {reason_text(reason.value)}", "error"))
            return
        try:
            if self.decoder is not None:
                self.parts.append(self.decoder.close())
        except MaskError as e:
            self.done.errback(Refusal(502, str(e), "error"))
            return
        self.done.callback(b"".join(self.parts))


@implementer(IPushProducer)
class Stream(Protocol):
    """Streams an upstream body to the client with backpressure both ways.

    The client's socket pauses us (the sink's producer) and we pause the upstream connection;
    SSE is masked event by event on the way, each redaction durable before its event goes on.
    """

    def __init__(self, exchange, sse: SSEMasker | None, decoder, kind, scrubber=None):
        self.ex, self.sse, self.decoder, self.kind, self.scrubber = exchange, sse, decoder, kind, scrubber
        self.done: defer.Deferred[None] = defer.Deferred(self._cancelled)
        self.keep = exchange.settings.record_body_limit if kind != "other" else 0
        self.kept: list = []
        self.kept_size = 0
        self.total = 0
        self.paused_for_store = False
        self.client_paused = False
        self.backlog: list = []
        self.lost = None
        self.stall = None

    def connectionMade(self):
        ex = self.ex
        ex.upstream_transport = self.transport
        ex.sink.register_producer(self)
        if self.kind == "sse":
            ex.sink.write(b"")  # the head now: an event stream may be quiet a while
        else:
            # An event stream may rightly be quiet for long; any other body may not.
            timeout = ex.settings.upstream_timeout
            self.stall = Stall(ex.reactor, timeout, self._stalled, self._stall_excused, ex.take_timer())

    def _cancelled(self, d):
        self.stopProducing()

    def _stalled(self):
        self._break(f"the upstream stalled: no body bytes for {self.stall.timeout:g}s")

    def _stall_excused(self) -> bool:
        return self.client_paused or self.paused_for_store

    # IPushProducer, for the client's socket
    def pauseProducing(self):
        self.client_paused = True
        if self.transport is not None:
            self.transport.pauseProducing()

    def resumeProducing(self):
        self.client_paused = False
        if self.transport is not None and not self.paused_for_store:
            self.transport.resumeProducing()

    def stopProducing(self):
        if self.transport is not None:
            self.transport.stopProducing()

    def dataReceived(self, data):
        if self.stall is not None:
            self.stall.touch()
        if self.done.called:
            return
        if self.paused_for_store:
            self.backlog.append(data)  # the parser may still hand us what it had read
            return
        try:
            if self.decoder is not None:
                data = self.decoder.feed(data)
            if self.sse is not None:
                data = self.sse.feed(data)
                counts = self.sse.take_counts()
                if counts:
                    return self._after_redaction(counts, data)
        except MaskError as e:
            return self._break(f"the upstream stream cannot be masked: {e}")
        self._emit(data)

    def _emit(self, data, last=False):
        if self.scrubber is not None:
            data = self.scrubber.feed(data)
            if last:
                data += self.scrubber.close()
        if not data:
            return
        self.total += len(data)
        if self.kept_size < self.keep:
            piece = data[:self.keep - self.kept_size]
            self.kept.append(piece)
            self.kept_size += len(piece)
        self.ex.write(data)

    def _after_redaction(self, counts, data, then=None):
        # Hold the stream until the redaction is durable, then pass on the masked event.
        ex = self.ex
        self.paused_for_store = True
        if self.transport is not None:
            self.transport.pauseProducing()
        d = ex.session.redacted(sum(counts.values()), direction="response", path=ex.path, counts=counts)
        d.addCallbacks(self._written, self._not_written, callbackArgs=(data, then))

    def _written(self, _, data, then):
        self.paused_for_store = False
        self._emit(data)
        if then is not None:
            return then()
        while self.backlog and not self.paused_for_store and not self.done.called:
            self.dataReceived(self.backlog.pop(0))
        if self.paused_for_store or self.done.called:
            return
        if self.lost is not None:
            return self._lost(self.lost)
        if self.transport is not None and not self.client_paused:
            self.transport.resumeProducing()

    def _not_written(self, failure):
        self._break("the audit store cannot record a redaction")

    def _break(self, error):
        if self.transport is not None:
            self.transport.stopProducing()
        if not self.done.called:
            self.done.errback(Refusal(502, error, "error"))

    def connectionLost(self, reason):
        if self.stall is not None:
            self.stall.cancel()
        ex = self.ex
        ex.upstream_transport = None
        self.transport = None
        if not ex.gone:
            ex.sink.unregister_producer()
        if self.paused_for_store:
            self.lost = reason  # finish once the pending redaction is written
            return
        self._lost(reason)

    def _lost(self, reason):
        ex = self.ex
        self._keep()
        if self.done.called:
            return
        # (the type first: every complete body ends so, and check() spells out each class it is given)
        if reason.type is ResponseDone or reason.check(ResponseDone, PotentialDataLoss):
            try:
                tail = b""
                if self.decoder is not None:
                    tail = self.decoder.close()
                if self.sse is not None:
                    tail = self.sse.feed(tail) + self.sse.close()
                    counts = self.sse.take_counts()
                    if counts:  # a last event without its blank line
                        return self._after_redaction(counts, tail, then=self._complete)
                self._emit(tail, last=True)
            except MaskError as e:
                return self._break(f"the upstream stream cannot be masked: {e}")
            self._complete()
        elif ex.gone:
            self.done.errback(defer.CancelledError())
        else:
            self._break(f"the upstream response broke off: {reason_text(reason.value)}")

    def _keep(self):
        if self.keep:
            self.ex.record.keep("response_body", b"".join(self.kept), self.total)

    def _complete(self):
        if self.scrubber is not None:
            self._emit(b"", last=True)
        self._keep()
        self.ex.finish("ok")
        if not self.done.called:
            self.done.callback(None)


async def respond(ex, response):
    """The upstream's answer to the client: head, then body (see the module doc)."""
    site, settings = ex.site, ex.settings
    ex.record.status = response.code
    ct = (response.headers.getRawHeaders(b"content-type") or [None])[0]
    ct = ct.decode("latin-1") if ct else None
    kind = body_kind(ct)
    # every Content-Encoding header: reading only the first would take "identity, gzip" as plain
    encoding = b", ".join(response.headers.getRawHeaders(b"content-encoding") or []).decode("latin-1") or None
    masker = site.masker
    # HEAD, 204 and 304 carry no body to mask (and must keep their headers as sent)
    bodyless = ex.method == "HEAD" or response.code in (204, 304)
    # A route the operator listed in ``passthrough``: bodies the masker cannot read go through unread
    opaque_ok = masker.active and masker.passes(ex.method, ex.path)
    must_mask = masker.active and not bodyless and (kind != "other" or not opaque_ok)
    deliver = response.deliverBody
    if must_mask:
        why = None
        if (ct or "").strip().lower().startswith("multipart/"):
            # a batch answer (multipart/mixed) holds JSON parts the masker would not see
            why = f"the upstream body is {ct.split(';')[0]}, whose parts cannot be masked"
        elif response.code == 206:
            why = "the upstream sent a partial (206) body that must be masked: a slice cannot be masked"
        elif not charset_ok(ct):
            why = f"the upstream body must be masked but its charset ({ct}) cannot be read by the masker"
        elif encoding and not decodable(encoding):
            why = f"the upstream body must be masked but its Content-Encoding {encoding!r} cannot be decoded"
        if why is not None:
            deliver(Discard())
            await ex.unmaskable(why)
    # A compressed body on a connection that injects a credential (asked for identity, it came
    # compressed anyway): the scrubber cannot read it, so it is decoded (bounded by mask_limit),
    # scrubbed and sent decoded; one the gateway cannot decode is refused. Connections that inject
    # nothing pass compressed bodies through untouched.
    unzip = (encoding is not None and not must_mask and not bodyless and bool(codings(encoding))
             and bool(site.secrets))
    if unzip and not decodable(encoding):
        deliver(Discard())
        raise Refusal(502, f"the upstream body's Content-Encoding {encoding!r} cannot be decoded, so the "
                           "credential the gateway injects cannot be scrubbed from it", "refused")
    scrub = site.head_scrub(response.phrase, response.headers.pairs)  # None: no credential in the head
    # (decoded: its Content-Encoding, length and digests go, as a masked body's do)
    headers, header_counts = clean_headers(ex, response, must_mask or unzip, opaque_ok and kind == "other", scrub)
    # upstream text like a header ("401 bad key <key>")
    phrase = scrub(response.phrase) if scrub is not None else response.phrase
    if header_counts:  # (record_redactions does nothing without counts: no coroutine then)
        try:
            await ex.record_redactions("response", header_counts)
        except Exception:
            deliver(Discard())  # the body is read by no one: let the upstream connection go
            raise
    decoder = Decoder(encoding, settings.mask_limit) if must_mask and codings(encoding) else None
    if (must_mask and kind != "sse") or unzip:
        # Bodies read whole and masked at once, gateway-wide, are few: the others wait with their
        # upstream connection unread (its TCP window fills), so memory stays a few mask_limits.
        slot = MASK_SLOTS.acquire()
        try:
            await ex.wait(slot, cancel=True)
        except BaseException:
            if slot.called and not isinstance(slot.result, Failure):
                MASK_SLOTS.release()  # had it, and the client went meanwhile
            # the body is read by no one: the upstream connection goes (else, paused while nobody
            # reads it, it stayed open and unread for ever: a socket leaked a caller that left)
            deliver(Discard())
            raise
        try:
            if unzip:
                data, counts = await _read_decoded(ex, deliver, Decoder(encoding, settings.mask_limit)), {}
            else:
                data, counts = await _read_and_mask(ex, deliver, decoder, kind)
        finally:
            MASK_SLOTS.release()
        data = site.scrub_body(data)
        await ex.record_redactions("response", counts)
        if not unzip or (kind != "other" and settings.record_body_limit):  # (kept as Stream keeps it)
            ex.record.keep("response_body", data)
        headers.append((b"Content-Length", b"%d" % len(data)))
        ex.sink.head(response.code, phrase, headers)
        ex.write(data)
        ex.finish("ok")
        return
    scrubber = site.scrubber() if not codings(encoding) or must_mask else None
    if not must_mask:
        whole = response.whole()
        if whole is not None:
            # All of it came with its head (most small answers): what Stream does with a body that
            # arrives in one piece and ends, without a stream, its stall watch and its Deferred
            # (tests/test_http_fastpaths.py holds the two to the same bytes and record)
            _whole(ex, response, phrase, headers, whole, scrubber, kind)
            return
    ex.sink.head(response.code, phrase, headers)
    stream = Stream(ex, SSEMasker(masker, settings.mask_limit) if must_mask else None, decoder, kind, scrubber)
    ex.pending = done = stream.done
    # The stream ends the exchange itself (ex.finish, or a failure handed to the exchange as its
    # coroutine's would be): the coroutine is not suspended a third time to wait for it (its
    # Deferred machinery was a tenth of a small GET's Python)
    done.addCallbacks(ex.streamed, ex.stream_failed)
    deliver(stream)


def _whole(ex, response, phrase, headers, data: bytes, scrubber, kind):
    """A body not masked, all of it in: scrubbed and kept as Stream would, in one piece."""
    if scrubber is not None:
        data = scrubber.feed(data) + scrubber.close()
    ex.sink.head(response.code, phrase, headers)
    ex.write(data)
    if kind != "other" and ex.settings.record_body_limit:
        ex.record.keep("response_body", data)
    ex.finish("ok")


async def _read_and_mask(ex, deliver, decoder, kind):
    c = Collect(ex, decoder, ex.settings.mask_limit)
    deliver(c)
    try:
        data = await ex.wait(c.done, cancel=True)
    except Refusal as r:
        if r.status == 502:  # too large, or its coding corrupt: not a body the masker could read
            await ex.unmaskable(r.error)
        raise
    try:
        return await ex.mask(kind, data)
    except MaskError as e:
        await ex.unmaskable(f"the upstream body cannot be masked: {e}")


async def _read_decoded(ex, deliver, decoder) -> bytes:
    """A compressed body read whole and decoded (to scrub it), up to mask_limit: larger, corrupt or
    cut short, refused (502)."""
    c = Collect(ex, decoder, ex.settings.mask_limit)
    deliver(c)
    try:
        return await ex.wait(c.done, cancel=True)
    except Refusal as r:
        if r.status != 502:
            raise
        raise Refusal(502, f"the upstream body is compressed (it was asked for identity) and is decoded to "
                           f"scrub the credential the gateway injects: {r.error}", "refused")
