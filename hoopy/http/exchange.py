"""One request through the gateway, from judgement to the last byte.

An ``Exchange`` authenticates the caller, checks the request's shape (checks.py), asks its session
for a decision (waiting for a reviewer when held), forwards the request (upstream.py; its body
through request_body.py) and hands the answer to response_body.py, then records one
``http.request`` event (record.py). It speaks to the client only through an ``IResponseSink``
(sink.py; reply.py is the client connection's, the tests use one in memory), to the policy and the
record only through its ``Session``, and upstream only through the site's upstream client. The
gateway's own status path (approval_status.py) is answered here, never forwarded.
"""
from __future__ import annotations

import time
from collections.abc import Coroutine

import orjson
from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import datetimeToString

from hoopy.http import checks
from hoopy.http.approval_status import STATUS_PREFIX, STATUS_PREFIX_B, approval_status
from hoopy.http.bodies import mask_body
from hoopy.http.checks import Refusal
from hoopy.http.head_checks import HeadChecks
from hoopy.http.record import Record, write_record
from hoopy.http.request_body import RequestBody, check_query
from hoopy.http.response_body import reason_text, respond
from hoopy.policy.verdicts import Allow, Deny, Hold
from hoopy.session import Session, StoreError

log = Logger()

_WAITING = object()  # (Exchange._step: the awaited Deferred has not fired)
THREAD_MASK_SIZE = 64 * 1024  # bodies at least this large are masked on a worker thread, not the reactor


class Exchange:
    """One request (see the module doc). ``pairs``: the request headers as (name, [values]); ``hdrs``,
    if given, the same lists by lower-case name; ``lines``, if given, the header lines as parsed (a
    request of the server's, whose connection keeps what its last head's checks found)."""

    def __init__(self, site, sink, channel, method: bytes, uri: bytes, pairs, peer: tuple, pipe, hdrs=None,
                 lines=None):
        self.site = site
        self.sink = sink
        self.channel = channel  # opaque here: what the site keeps its session on
        self.settings = site.settings
        self.reactor = site.reactor
        self.started = time.monotonic_ns()
        self.method_b, self.uri, self.pairs = method, uri, pairs
        self.method = method.decode("latin-1")
        # The request's headers by lower-case name, read once: every check looks them up here (the
        # server's channel made them with the pairs: ``hdrs``)
        self.hdrs = hdrs if hdrs is not None else {name.lower(): values for name, values in pairs}
        self.lines = lines  # the head's header lines as parsed (the server's), for HeadChecks
        self.checked: HeadChecks | None = None
        self.peer_host = peer[0]
        self.peer = f"{peer[0]}:{peer[1]}"
        self.pipe = pipe
        self.record = Record(self.settings.record_body_limit)
        self.body = RequestBody(self)
        self.session: Session | None = None  # set once the caller is authenticated
        self.path: str | None = None
        self.query: str | None = None
        self.websocket = False
        self.token: str | None = None  # the caller's, when it was found elsewhere too: kept out of the record
        self.gone = False
        self.finished = False
        self.holding = False
        self.pending = None  # the Deferred being waited on, cancelled if the client goes
        self.upstream_transport = None
        self.timer = None
        self.timed_out = False
        self.close_now = False  # a refusal that closes the connection (its framing is in doubt)
        self._coro: Coroutine | None = None  # the running _run (see _step)
        self._adding = False
        self._fired: object = _WAITING

    # --- the flow -------------------------------------------------------------------------------

    def run(self) -> None:
        """Start the exchange; it ends on its own (answered, refused, or its client gone)."""
        self._coro = self._run()
        self._step()

    # The coroutine is driven here rather than by ``defer.ensureDeferred``: nothing waits on the
    # exchange as a whole (its end is its answer and its record), and Twisted's general driver (a
    # cancellable Deferred, a copied context, per-step bookkeeping and a last callback through it)
    # was most of the Deferred machinery of a small GET. What it awaits are Deferreds: their own
    # ``__await__`` reads their result (or raises their failure) when the coroutine is resumed.

    def _step(self, failure: Failure | None = None):
        coro = self._coro
        while coro is not None:
            try:
                if failure is not None:  # as Twisted's driver does: thrown in where it awaited
                    d = failure.throwExceptionIntoGenerator(coro)
                    failure = None
                else:
                    d = coro.send(None)
            except StopIteration:
                self._coro = None
                return
            except BaseException:
                self._coro = None
                self._ended_badly(Failure())
                return
            if not isinstance(d, defer.Deferred):
                coro.close()
                self._coro = None
                self._ended_badly(Failure(TypeError(f"an exchange awaits Deferreds only, not {d!r}")))
                return
            self._adding, self._fired = True, _WAITING
            d.addBoth(self._resumed)
            self._adding = False
            fired, self._fired = self._fired, _WAITING
            if fired is _WAITING:
                return  # resumed by _resumed when d fires
            # (d fired while its callback was added: on at once, without recursion)
            failure = fired if isinstance(fired, Failure) else None

    def _resumed(self, result):
        if self._adding:
            self._fired = result
        else:
            self._step(result if isinstance(result, Failure) else None)
        # A result is left as it was (the coroutine read it where it awaited); a failure was thrown
        # into the coroutine, handled there: not left to be logged as unhandled
        return None if isinstance(result, Failure) else result

    def _ended_badly(self, failure: Failure):
        try:
            self._failed(failure)
        except Exception:
            log.failure("http exchange failed while failing", Failure())

    async def _run(self):
        site, hdrs = self.site, self.hdrs
        known = self.channel.head_checks if self.lines is not None else None
        if known is not None and not known.same(self):
            known = None
        token = known.token if known is not None else checks.token_of(self.method_b, hdrs)
        ident = site.identity_for(self.channel, token) if token else None
        if ident is None:
            site.auth_failed(self.peer, "missing token" if token is None else "bad credentials")
            self.record.outcome = "unauthenticated"
            self.reply(401, {"error": "authentication required: send Authorization: Bearer TOKEN"},
                       [(b"WWW-Authenticate", b'Bearer realm="hoopy"')])
            return
        session = site.session_for(self.channel, ident.name, self.peer, ident.credential)
        if isinstance(session, defer.Deferred):  # a new session, being recorded
            try:
                session = await self.wait(session)
            except StoreError:
                raise Refusal(503, "refused: the audit store cannot record this session", "error")
        self.session = session
        if self.uri.startswith(STATUS_PREFIX_B):  # the gateway's own: never forwarded
            return await approval_status(self, session, self.uri[len(STATUS_PREFIX_B):].split(b"?", 1)[0]
                                               .decode("ascii", "replace"))
        claimed = checks.attribution(hdrs) if checks.claims_attribution(hdrs) else None
        if claimed is not None and any(claimed.values()):
            try:
                await self.wait(self.session.attribute(**claimed))
            except StoreError:
                raise Refusal(503, "refused: the audit store cannot record this request", "error")
        if known is not None:  # the same head as the last one checked here: it passed them all
            self.path, self.query = known.path, known.query
            self.checked = known
        else:
            self._check_head(token)
        self.body.caller_token = token.encode("latin-1")
        op = checks.operation(self.method, self.path, self.query, self.session.judge)
        if self.body.present and not self.websocket and self.session.judge(op).outcome == "approve":
            # The reviewer approves the body too ("POST /v1/refunds" says nothing of the amount): it is
            # read whole first (masked where a rule says so), shown, and exactly it goes upstream.
            await self.body.get(whole=True)
            op.detail.update(self.body.for_review())
        prefer_async = checks.prefers_async(hdrs)
        verdict = await self.wait(self.session.decide(op, "retry" if prefer_async else None))
        if isinstance(verdict, Hold):
            self.record.approval = verdict.id
            self.holding = True  # a caller gone now expires the approval (see client_gone)
            try:
                verdict = await self.wait(verdict.resolution)
            finally:
                self.holding = False
        if isinstance(verdict, Deny):
            self.record.rule = verdict.rule
            self.record.approval = verdict.approval or self.record.approval
            if verdict.status == "pending":  # retry mode: nothing ran; the caller sends it again once approved
                url = f"{STATUS_PREFIX}{verdict.approval}"
                raise Refusal(202 if prefer_async else 403, verdict.reason, "pending" if prefer_async else "refused",
                              rule=verdict.rule, approval=self.record.approval, approval_status="pending",
                              status_url=url)
            raise Refusal(403, verdict.reason, "refused", rule=verdict.rule, approval=self.record.approval)
        assert isinstance(verdict, Allow)
        self.record.rule = verdict.rule
        if self.websocket:
            from hoopy.http.upgrade import relay

            await relay(self)
        else:
            await self._forward()

    def _check_head(self, token: str):
        """The request head's checks (raise Refusal); passed, they are kept by the connection (HeadChecks)."""
        masker = self.site.masker
        self.path, self.query, self.websocket = checks.check_shape(self.method_b, self.uri, self.hdrs, masker.active)
        if self.path.lower() == "/.hoopy" or self.path.lower().startswith("/.hoopy/"):
            # the gateway's own prefix, in another spelling than the status path's (//.hoopy/, %2e, case)
            raise Refusal(404, f"{self.path} is the gateway's own path; approvals are read at {STATUS_PREFIX}ID")
        check_query(self.query, masker.field_keys)
        try:
            checks.check_token_stays(token, self.pairs, self.query, self.websocket)
        except Refusal:
            self.token = token  # it is somewhere else too: kept out of the record (see record.write_record)
            raise
        if self.lines is not None and not self.websocket:
            self.checked = self.channel.head_checks = HeadChecks(self, token)

    def _session(self) -> Session:
        """The caller's session, for what only runs after authentication (masking a body)."""
        assert self.session is not None, "no session before the caller is authenticated"
        return self.session

    def target(self) -> bytes:
        assert self.path is not None, "no target before the request's shape is checked"
        t = self.site.upstream_prefix + self.path.encode()
        return t + b"?" + self.query.encode() if self.query is not None else t

    def upstream_headers(self, upgrade: bool = False) -> list:
        checked = self.checked if not upgrade else None
        if checked is not None and checked.upstream is not None:
            return list(checked.upstream)
        out = self.site.header_plan.build(self.method_b, self.pairs, self.hdrs, self.peer_host,
                                          self.site.masker.active, upgrade)
        if checked is not None:
            checked.upstream = list(out)
        return out

    async def _forward(self):
        body = None if self.body.absent() else await self.body.get()
        upstream, checked = self.site.upstream, self.checked
        if body is None and checked is not None:
            # a head checked before on this connection (HeadChecks): its upstream head made once
            if checked.request is None:
                checked.request = upstream.head(self.method_b, self.target(), self.upstream_headers(), None)
            d = upstream.send_head(self.method_b, *checked.request)
        else:
            d = upstream.request(self.method_b, self.target(), self.upstream_headers(), body)
        self.arm_timer(d)  # reset by every body byte in or out (progress): an upload takes its time
        try:
            response = await self.wait(d, cancel=True)
        except Exception as e:
            self.disarm_timer()
            if self.gone:
                raise defer.CancelledError()
            if self.body.refusal is not None:
                raise self.body.refusal
            if not self.timed_out:
                raise Refusal(502, f"the upstream could not be reached: {reason_text(e)}", "error")
            raise Refusal(504, f"the upstream did not answer within {self.settings.upstream_timeout:g}s", "error")
        # The timer stays armed into respond: the body's stall watch takes it over (take_timer), and
        # whatever it did not take is disarmed here (its d has fired: firing meanwhile did nothing)
        try:
            await respond(self, response)
        finally:
            self.disarm_timer()

    def streamed(self, _):
        # the response body's stream is over (respond): nothing is waited on any more
        self.pending = None

    def stream_failed(self, failure: Failure):
        self.streamed(None)
        self._failed(failure)

    # --- the upstream's time --------------------------------------------------------------------

    def arm_timer(self, d):
        # (a method and its argument, not a closure made per request)
        self.timer = self.reactor.callLater(self.settings.upstream_timeout, self._expire, d)

    def _expire(self, d):
        if self.pipe is not None and self.pipe.waiting_on_caller:
            # the upload is slow on the caller's side: not the upstream's fault
            self.timer = self.reactor.callLater(self.settings.upstream_timeout, self._expire, d)
            return
        self.timed_out = True
        d.cancel()

    def progress(self):
        # upstream_timeout counts from the last request byte received or sent, not from the start
        # of an upload: a slow caller is not a slow upstream
        if self.timer is not None and self.timer.active():
            self.timer.reset(self.settings.upstream_timeout)

    def take_timer(self):
        """The upstream timer, once the head is in: the response body's stall watch goes on with it
        (stall.Stall) instead of this one being cancelled and another made."""
        timer, self.timer = self.timer, None
        return timer

    def disarm_timer(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    # --- masking and its record -----------------------------------------------------------------

    async def mask(self, kind, data):
        masker = self.site.masker
        if len(data) >= THREAD_MASK_SIZE:
            return await deferToThread(mask_body, masker, kind, data)
        return mask_body(masker, kind, data)

    async def record_redactions(self, direction: str, counts: dict):
        if not counts:
            return
        try:
            await self.wait(self._session().redacted(sum(counts.values()), direction=direction, path=self.path,
                                                  counts=counts))
        except StoreError:
            raise Refusal(503, "refused: the audit store cannot record a redaction", "error")

    async def unmaskable(self, reason: str):
        """A body that must be masked and cannot be: refused (502), and recorded so (never passed)."""
        try:
            await self.wait(self._session().event("redaction", "refused", direction="response", path=self.path,
                                               reason=reason))
        except StoreError:
            raise Refusal(503, "refused: the audit store cannot record a refusal", "error")
        raise Refusal(502, reason, "refused")

    # --- the client side --------------------------------------------------------------------------

    async def wait(self, d, cancel: bool = False):
        """Await ``d``; if the client goes away meanwhile, stop here.

        Only Deferreds of this exchange (upstream requests, body reads) are cancelled; one owned by
        the store or the approvals (an event being made durable, a reviewer's decision) is let fire,
        and the exchange ends after.
        """
        if d.called and not d.paused and not isinstance(d.result, Failure) and not self.gone:
            # already there: no trip through the coroutine machinery (not when paused: its result
            # is then another Deferred it waits on, not yet its own)
            return d.result
        if cancel:
            self.pending = d
            if self.gone:
                d.cancel()
        try:
            result = await d
        finally:
            if self.pending is d:
                self.pending = None
        if self.gone:
            raise defer.CancelledError()
        return result

    def client_gone(self, failure=None):
        if self.finished:
            return
        self.gone = True
        self.disarm_timer()
        if self.pending is not None:
            self.pending.cancel()
        if self.holding and self.session is not None:
            self.session.cancel_holds("the caller went away while held")
        if self.upstream_transport is not None:
            self.upstream_transport.stopProducing()
        if self.pipe is not None:
            self.pipe.abort(failure or Failure(defer.CancelledError("the client went away")))

    def write(self, data: bytes):
        if not self.gone and data:
            self.record.response_bytes += len(data)
            self.sink.write(data)

    def reply(self, status: int, body: dict, extra=()):
        self.record.status = status
        data = orjson.dumps(body) + b"\n"
        if not self.gone and not self.sink.started:
            self.sink.head(status, None, [
                *extra, (b"Content-Type", b"application/json"), (b"Cache-Control", b"no-store"),
                (b"Date", datetimeToString()), (b"Content-Length", b"%d" % len(data))])
            self.write(data)
        self.finish(None)

    def finish(self, outcome):
        if self.record.outcome is None:
            self.record.outcome = outcome
        if self.finished:
            return
        self.finished = True
        if not self.gone:
            pipe = self.pipe
            if pipe is None or pipe.done:
                self.sink.finish()
            else:
                # Answered before the caller finished sending (refused, or the upstream answered
                # early): the rest is read and dropped; a caller that keeps sending for long loses
                # the connection instead.
                pipe.drop()
                self.sink.close_later(0 if self.close_now else 5, pipe.received_all)
        write_record(self)

    def _abort(self, outcome, error):
        """The response already started: all that is left is to cut the connection."""
        self.record.outcome, self.record.error = outcome, error
        self.finished = True
        if not self.gone:
            self.sink.abort()
        write_record(self)

    def _failed(self, failure: Failure):
        if self.finished:
            return
        if failure.check(defer.CancelledError) and self.gone:
            self.record.outcome, self.record.error = "client gone", "the client went away"
            self.finished = True
            write_record(self)
            return
        if failure.check(Refusal):
            r = failure.value
        elif failure.check(StoreError):
            r = Refusal(503, "refused: the audit store cannot record this request", "error")
        else:
            log.failure("http exchange failed", failure)
            r = Refusal(502, f"the gateway could not complete the request: {failure.getErrorMessage()}", "error")
        self.record.error = r.error
        self.record.outcome = r.outcome
        if self.sink.started:
            self._abort(r.outcome, r.error)
            return
        body = {"error": r.error}
        # A policy refusal always names its rule and approval (null when none): INTERFACE.md
        body.update({k: v for k, v in r.extra.items() if k in ("rule", "approval", "status_url")})
        if "approval_status" in r.extra:
            body["status"] = r.extra["approval_status"]
        headers: tuple[tuple[bytes, bytes], ...] = ()
        if r.extra.get("close"):
            # The request's framing is in doubt: nothing more is read from this connection
            self.close_now = True
            headers = ((b"Connection", b"close"),)
        if r.status == 202:  # Prefer: respond-async (RFC 7240): accepted for approval, poll status_url
            body["message"] = body.pop("error")
            headers = ((b"Location", r.extra["status_url"].encode()), (b"Preference-Applied", b"respond-async"))
        self.reply(r.status, body, headers)
