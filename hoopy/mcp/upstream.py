"""The upstream MCP server, as one hoopy session's JSON-RPC peer.

``UpstreamSession`` speaks either era (see hoopy.mcp.wire) over a channel:
``HTTPChannel`` (Streamable HTTP, every POST answered with JSON or SSE) or
``StdioChannel`` (a child process, newline-delimited JSON). On ``start`` it asks
``server/discover`` at the per-request era's version and falls back to the
``initialize`` handshake on anything that is not a discover result (as the
SDK's own clients do), and records what it found (``era``, ``version``).

Upstream request ids and progress tokens are hoopy's own, mapped back to the
client's, so that concurrent client instances sharing one upstream never collide.
"""
from __future__ import annotations

import itertools

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from hoopy.mcp import wire
from hoopy.mcp.wire import WireError
from hoopy.upstream import UpstreamError

log = Logger()


class Pending:
    """One request in flight upstream."""

    def __init__(self, up_id, method, on_related):
        self.up_id = up_id
        self.method = method
        self.on_related = on_related  # messages that belong to this request (progress, server requests)
        self.done = defer.Deferred()
        self.abort = None  # set by the channel: stop this exchange now


class UpstreamSession:
    def __init__(self, channel, reactor, timeout: float):
        self.channel = channel
        self.reactor = reactor
        self.timeout = timeout
        channel.peer = self
        self.era: str | None = None  # "modern" | "handshake"
        self.version: str | None = None  # set with era
        self.server_info: dict | None = None
        self.capabilities: dict = {}
        self.instructions: str | None = None
        self.client_info: dict | None = None
        self.client_caps: dict = {}
        self._ids = itertools.count(1)
        self.pending: dict = {}  # up_id -> Pending
        self.progress: dict = {}  # our token -> Pending
        self.on_message = None  # unsolicited messages from the server: (msg) -> None
        self.on_lost = None  # (reason) -> None
        self.lost: str | None = None  # the reason, once the upstream is gone
        self._started: Shared | None = None

    # --- starting -------------------------------------------------------------------

    def start(self, client_info, client_caps, version_hint: str | None) -> defer.Deferred:
        if self._started is None:
            self.client_info = client_info or {"name": "hoopy", "version": "0"}
            self.client_caps = client_caps or {}
            self._started = Shared(defer.ensureDeferred(self._start(version_hint)))
        return self._started.get()

    async def _start(self, version_hint):
        await self.channel.open()
        if self.channel.modern_known is not False:
            try:
                res = await self._call("server/discover", {}, modern=wire.LATEST_MODERN, probe=True)
                supported = res.get("supportedVersions") if isinstance(res, dict) else None
                mutual = [v for v in wire.MODERN_VERSIONS if v in (supported or ())]
                if mutual:
                    self.era, self.version = "modern", mutual[-1]
                    self.channel.modern_known = True
                    self.server_info = res.get("serverInfo")
                    self.capabilities = res.get("capabilities") or {}
                    self.instructions = res.get("instructions")
                    return self
            except (WireError, UpstreamError) as e:
                if self.lost is not None:
                    raise UpstreamError(self.lost)
                log.debug("upstream answers no server/discover ({e}): the handshake era", e=e)
            self.channel.modern_known = False
        offer = version_hint if version_hint in wire.HANDSHAKE_VERSIONS else wire.LATEST_HANDSHAKE
        res = await self._call("initialize", {"protocolVersion": offer, "capabilities": self.client_caps,
                                              "clientInfo": self.client_info}, modern=None)
        if not isinstance(res, dict) or res.get("protocolVersion") not in wire.HANDSHAKE_VERSIONS:
            raise UpstreamError(f"the upstream answered initialize with protocol version "
                                f"{res.get('protocolVersion') if isinstance(res, dict) else res!r}")
        self.era, self.version = "handshake", res["protocolVersion"]
        self.server_info = res.get("serverInfo")
        self.capabilities = res.get("capabilities") or {}
        self.instructions = res.get("instructions")
        self.channel.version = self.version
        await self.channel.send({"jsonrpc": "2.0", "method": "notifications/initialized"}, None)
        self.channel.after_handshake()
        return self

    async def _call(self, method, params, modern, probe=False):
        resp = await self.request({"method": method, "params": params}, None, modern=modern, probe=probe)
        if "error" in resp:
            e = resp["error"] if isinstance(resp["error"], dict) else {}
            raise WireError(e.get("code", wire.INTERNAL_ERROR), str(e.get("message", "error")), e.get("data"))
        return resp.get("result")

    # --- requests ---------------------------------------------------------------------

    def request(self, msg: dict, on_related, modern=..., probe=False) -> defer.Deferred:
        """Send a request (method, params); fires with the response message (its id ours)."""
        if self.lost is not None:
            return defer.fail(UpstreamError(self.lost))
        up_id = next(self._ids)
        p = Pending(up_id, msg["method"], on_related)
        params = msg.get("params")
        params = dict(params) if isinstance(params, dict) else ({} if params is None else params)
        token = None
        if isinstance(params, dict) and isinstance(params.get("_meta"), dict) and "progressToken" in params["_meta"]:
            token = f"hoopy-{up_id}"
            params["_meta"] = {**params["_meta"], "progressToken": token}
            self.progress[token] = p
        version = self.version if modern is ... else modern
        era_modern = (self.era == "modern") if modern is ... else (modern is not None)
        if era_modern:
            assert version is not None  # the modern era always has its version
            params = wire.add_envelope(wire.strip_envelope(params) or {}, version, self.client_info,
                                       self.client_caps)
        else:
            params = wire.strip_envelope(params)
        out = {"jsonrpc": "2.0", "id": up_id, "method": msg["method"]}
        if params is not None:
            out["params"] = params
        self.pending[up_id] = p
        timer = self.reactor.callLater(self.timeout, self._timed_out, p)

        def finish(r):
            self.pending.pop(up_id, None)
            if token:
                self.progress.pop(token, None)
            if timer.active():
                timer.cancel()
            return r

        p.done.addBoth(finish)
        try:
            d = self.channel.send(out, p, modern=version if era_modern else None, probe=probe)
        except Exception as e:  # not sent at all: fail now, not when the timer finds it pending
            d = defer.fail(e)

        def not_sent(f):
            if not p.done.called:
                p.done.errback(f)

        d.addErrback(not_sent)
        return p.done

    def _timed_out(self, p: Pending):
        if not p.done.called:
            error = UpstreamError(f"the upstream did not answer {p.method} within {self.timeout:g}s")
            if p.abort is not None:
                p.abort()
            # cancel fails the request itself (once: a second errback raised AlreadyCalledError in the
            # reactor, and the call was reported "cancelled" rather than timed out)
            self.cancel(p, "timed out", error)
            if not p.done.called:
                p.done.errback(error)

    def cancel(self, p: Pending, reason: str, error: Exception | None = None):
        """The client gave up on this request: tell the upstream (closing the stream, or a notification)."""
        if self.lost is not None or p.done.called:
            return
        if self.era == "modern" and p.abort is not None:
            p.abort()  # at the per-request era, closing the response stream is the cancellation
        else:
            self.channel.send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                               "params": {"requestId": p.up_id, "reason": reason}}, None).addErrback(lambda f: None)
        if not p.done.called:
            p.done.errback(error or UpstreamError(f"cancelled: {reason}"))

    def notify(self, msg: dict) -> defer.Deferred:
        if self.lost is not None or self.era is None:
            return defer.succeed(None)
        if self.era == "modern":
            return defer.succeed(None)  # the per-request era has no client notifications over HTTP
        out = {"jsonrpc": "2.0", "method": msg["method"]}
        if msg.get("params") is not None:
            out["params"] = wire.strip_envelope(msg["params"])
        return self.channel.send(out, None)

    def respond(self, msg: dict) -> defer.Deferred:
        """The client's answer to a request the server made (sampling, elicitation, roots)."""
        if self.lost is not None:
            return defer.succeed(None)
        return self.channel.send(msg, None)

    # --- what the channel delivers --------------------------------------------------------

    def received(self, msg, via: Pending | None):
        if wire.is_response(msg):
            p = self.pending.get(msg.get("id"))
            if p is not None and not p.done.called:
                p.done.callback(msg)
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("method"), str):
            log.warn("upstream sent something that is not a JSON-RPC message: dropped")
            return
        if msg["method"] == "notifications/progress":
            token = (msg.get("params") or {}).get("progressToken")
            p = self.progress.get(token)
            if p is not None and p.on_related is not None:
                p.on_related(msg)
            return
        if via is not None and via.on_related is not None and not via.done.called:
            via.on_related(msg)
        elif self.on_message is not None:
            self.on_message(msg)

    def connection_lost(self, reason: str):
        if self.lost is not None:
            return
        self.lost = reason
        for p in list(self.pending.values()):
            if not p.done.called:
                p.done.errback(UpstreamError(reason))
        if self.on_lost is not None:
            self.on_lost(reason)

    def close(self) -> defer.Deferred:
        self.lost = self.lost or "closed"
        for p in list(self.pending.values()):
            if not p.done.called:
                p.done.errback(UpstreamError("the session ended"))
        return self.channel.close()


class Shared:
    """One outcome that several callers wait for, each on its own Deferred."""

    def __init__(self, d: defer.Deferred):
        self.done = False
        self.result: object = None  # the outcome: a value or a Failure
        self.waiters: list[defer.Deferred] = []
        d.addBoth(self._fire)

    def _fire(self, r):
        self.done, self.result = True, r
        for w in self.waiters:
            self._give(w)
        self.waiters = []
        return None

    def _give(self, w):
        if isinstance(self.result, Failure):
            w.errback(self.result)
        else:
            w.callback(self.result)

    def get(self) -> defer.Deferred:
        w: defer.Deferred = defer.Deferred()
        if self.done:
            self._give(w)
        else:
            self.waiters.append(w)
        return w
