"""One hoopy session of an MCP connection: a client on one side, one upstream on the other.

Every client request is judged (tool calls, resource reads, prompts), filtered (lists),
bridged between the eras the two sides speak, masked on the way back and recorded.
Tool calls are hoopy.mcp.tool_calls; what the server sends on its own (notifications,
its requests to the client) is hoopy.mcp.server_messages.
"""
from __future__ import annotations

import re
import secrets
import time
from collections import deque

from twisted.internet import defer
from twisted.logger import Logger

from hoopy.mcp import lists, wire
from hoopy.mcp.results import mask_arguments, mask_error, mask_message, mask_result
from hoopy.mcp.rules import resolved
from hoopy.mcp.server_messages import ServerMessages
from hoopy.mcp.tool_calls import ToolCalls, tool_error
from hoopy.mcp.upstream import UpstreamSession
from hoopy.upstream import UpstreamError
from hoopy.policy.rules import Operation, Unit
from hoopy.policy.verdicts import Allow, Deny, Hold
from hoopy.session import IN

log = Logger()

LIST_KEYS = {"tools/list": ("tools", "tool", "name"), "resources/list": ("resources", "resource", "uri"),
             "resources/templates/list": ("resourceTemplates", "resource", "uriTemplate"),
             "prompts/list": ("prompts", "prompt", "name")}
_ENCODED = re.compile(r"%(2e|2f|5c|00)|\\|\x00", re.IGNORECASE)
BACKLOG = 256  # server messages kept for a handshake client with no GET stream open


class MCPSession(ToolCalls, ServerMessages):
    """One MCP session (its tool calls: ToolCalls; what the server sends: ServerMessages)."""

    def __init__(self, service, session, era: str, version: str, client_info, capabilities, key=None):
        self.service = service
        self.gateway = service.gateway
        self.settings = service.settings
        self.session = session
        self.era = era  # the client's: "modern" | "handshake"
        self.version = version
        self.client_info = client_info
        self.capabilities = capabilities if isinstance(capabilities, dict) else {}
        self.key = key  # modern: (identity, client label); handshake: the Mcp-Session-Id
        self.mcp_id = secrets.token_urlsafe(24) if era == "handshake" else None
        self.upstream: UpstreamSession | None = None
        self.child = None
        self.streams: list = []  # open GET streams (handshake clients)
        self.backlog: deque = deque(maxlen=BACKLOG)
        self.to_client: dict = {}  # our id of a server request sent to the client -> (upstream id, kind)
        self._ids = 0
        self.calls: dict = {}  # ToolCall id -> ToolCall, in flight
        self.replies: set = set()  # client requests being answered
        self.ended = False
        self.idle = None
        self.grants = lists.grants_of(self.gateway.config, session.identity, session.connection)
        self.touch()

    # --- life -----------------------------------------------------------------------

    @property
    def client(self) -> str | None:
        return wire.client_label(self.client_info)

    def touch(self):
        if self.idle is not None and self.idle.active():
            self.idle.reset(self.settings.idle_timeout)
        elif not self.ended:
            self.idle = self.gateway.reactor.callLater(self.settings.idle_timeout, self._idle)

    def _idle(self):
        if self.replies or self.streams:
            self.touch()
            return
        self.end(f"idle for {self.settings.idle_timeout:g}s")

    def end(self, reason: str) -> defer.Deferred:
        if self.ended:
            return defer.succeed(None)
        self.ended = True
        if self.idle is not None and self.idle.active():
            self.idle.cancel()
        self.service.forget(self)
        for reply in list(self.replies):
            reply.fail(wire.INTERNAL_ERROR, f"the MCP session ended: {reason}")
        for s in list(self.streams):
            s.close()
        ds = list(self.session.cancel_holds(reason))
        if self.upstream is not None:
            ds.append(self.upstream.close())
        ds.append(self.session.end(reason))
        return defer.DeferredList(ds, consumeErrors=True)

    async def connect(self):
        """Start the upstream (a child, or an HTTP session) and learn its era; recorded."""
        if self.service.pins.loaded is not None:
            await self.service.pins.loaded  # a tool must not be pinned anew before the old pins are read
        if self.upstream is None:
            channel, child = self.service.open_channel(self)
            self.child = child
            self.upstream = UpstreamSession(channel, self.gateway.reactor, self.settings.upstream_timeout)
            self.upstream.on_message = self._server_message
            self.upstream.on_lost = self._upstream_lost
        caps = {k: v for k, v in self.capabilities.items() if k not in ("tasks",)}
        for kind, cap in (("sampling", "sampling"), ("elicitation", "elicitation"), ("roots", "roots")):
            if cap in caps and (self.era == "modern" or not lists.granted(self.grants, kind)):
                del caps[cap]  # the server could not be answered: it should not ask
        up = await self.upstream.start(self.client_info, caps,
                                       self.version if self.era == "handshake" else None)
        if not getattr(self, "_recorded_upstream", False):
            self._recorded_upstream = True
            info = {"upstream_era": up.era, "upstream_version": up.version,
                    "server": wire.client_label(up.server_info)}
            if self.child is not None:
                info.update(pid=self.child.channel.pid, credential=self.child.credential_id)
            self.session.trailing_event("mcp.upstream", "ok", **info)
        return up

    def _upstream_lost(self, reason: str):
        log.info("mcp {conn} session {id}: upstream lost: {r}", conn=self.session.connection,
                 id=self.session.id, r=reason)
        self.session.trailing_event("mcp.upstream", "lost", reason=reason)
        self.gateway.reactor.callLater(0, self.end, f"upstream lost: {reason}")

    def server_capabilities(self) -> dict:
        caps = self.upstream.capabilities if self.upstream else {}
        return {k: v for k, v in (caps or {}).items() if k in wire.SERVER_CAPABILITIES}

    # --- client requests ----------------------------------------------------------------

    async def handle(self, msg: dict, reply):
        """Answer one client request through ``reply`` (notify / finish)."""
        self.touch()
        self.replies.add(reply)
        reply.session = self.session
        self.session.count_bytes(IN, reply.size_in)
        method = msg["method"]
        started = time.monotonic()
        if method != "tools/call":
            self.session.trailing_event("mcp.request", None, method=method, id=msg.get("id"),
                                        **self._name_of(msg))
        try:
            out = await self._dispatch(msg, reply)
        except wire.WireError as e:
            out = wire.error(msg.get("id"), e.code, str(e), e.data)
        except UpstreamError as e:
            out = (tool_error(msg.get("id"), f"hoopy: the MCP server failed: {e}") if method == "tools/call"
                   else wire.error(msg.get("id"), wire.INTERNAL_ERROR, f"the MCP server failed: {e}"))
        except Exception as e:
            log.failure("mcp request {m}", m=method)
            out = wire.error(msg.get("id"), wire.INTERNAL_ERROR, f"hoopy: {type(e).__name__}")
        finally:
            self.replies.discard(reply)
            self.touch()
        if out is None:
            return
        if method != "tools/call":
            self.session.trailing_event(
                "mcp.response", "error" if "error" in out else "ok", method=method, id=msg.get("id"),
                duration_ms=round((time.monotonic() - started) * 1000, 3),
                **({"error": out["error"].get("message")} if "error" in out else {}))
        reply.finish(self._to_client(out) if "result" in out else out)

    def _name_of(self, msg) -> dict:
        p = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        key = wire.NAME_PARAM.get(msg["method"])
        return {key: p.get(key)} if key and isinstance(p.get(key), str) else {}

    async def _dispatch(self, msg, reply):
        method, id_ = msg["method"], msg.get("id")
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        if method == "ping":
            return wire.result(id_, {})
        if method == "server/discover":
            await self.connect()
            return wire.result(id_, self.discover_result())
        if method == "initialize":
            raise wire.WireError(wire.INVALID_REQUEST, "this MCP session is already initialized")
        await self.connect()
        if method in LIST_KEYS:
            return await self._list(msg, reply)
        if method == "tools/call":
            return await self._tool_call(msg, reply)
        if method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
            uri = params.get("uri")
            if not isinstance(uri, str):
                raise wire.WireError(wire.INVALID_PARAMS, "uri must be a string")
            if _ENCODED.search(uri):
                raise wire.WireError(wire.INVALID_PARAMS, "refused by hoopy: the resource URI has an encoded dot, "
                                     "slash or backslash (or a backslash, a NUL), which servers read differently")
            units = (Unit("resource", uri),)
            if resolved(uri) is not None:  # "file:///srv/reports/../../etc/passwd" is file:///etc/passwd
                units += (Unit("resource", resolved(uri)),)
            op = Operation("mcp", "resource", f"{method} {uri}", units, {"method": method, "uri": uri})
            return await self._judged_forward(msg, reply, op, mask=method == "resources/read")
        if method == "prompts/get":
            name = params.get("name")
            if not isinstance(name, str):
                raise wire.WireError(wire.INVALID_PARAMS, "name must be a string")
            args, _ = mask_arguments(self.service.masker, params.get("arguments"))
            op = Operation.single("mcp", "prompt", f"prompts/get {name}", name, prompt=name, arguments=args)
            if name not in self.service.prompt_names and self.session.judge(op).outcome != "deny":
                await self._refresh_names("prompts/list", "prompts", self.service.prompt_names)
            if name not in self.service.prompt_names and self.session.judge(op).outcome != "deny":
                # as for tools: a server that folds case or Unicode would serve "SECRET_PLAN" as the
                # secret_plan a rule denies; only names it lists, exactly
                reason = f"prompt {name!r} is not one the MCP server lists; get a listed prompt by its exact name"
                await self.session.event("operation", "refused", rule="unlisted", reason=reason, operation="prompt",
                                         text=f"prompts/get {name}", prompt=name)
                raise wire.WireError(wire.INVALID_PARAMS, f"refused by hoopy: {reason}", {"rule": "unlisted"})
            return await self._judged_forward(msg, reply, op, mask=True)
        if method == "completion/complete":
            ref = params.get("ref") if isinstance(params.get("ref"), dict) else {}
            if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
                op = Operation.single("mcp", "prompt", f"completion/complete prompt {ref['name']}", ref["name"])
            elif ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
                op = Operation.single("mcp", "resource", f"completion/complete resource {ref['uri']}", ref["uri"])
            else:
                raise wire.WireError(wire.INVALID_PARAMS, "completion/complete needs a prompt or resource ref")
            return await self._judged_forward(msg, reply, op)
        if method == "logging/setLevel":
            return self._to_client(await self._forward(msg, reply))
        raise wire.WireError(wire.METHOD_NOT_FOUND, f"Method not found: {method}")

    def _connected(self) -> UpstreamSession:
        """The upstream session, for what runs only after connect()."""
        assert self.upstream is not None, "read before connect()"
        return self.upstream

    def discover_result(self) -> dict:
        up = self._connected()
        return {"supportedVersions": list(wire.MODERN_VERSIONS), "capabilities": self.server_capabilities(),
                "serverInfo": up.server_info or {"name": "hoopy", "version": "0"},
                **({"instructions": up.instructions} if up.instructions else {}),
                "cacheScope": "private", "ttlMs": 0, "resultType": "complete"}

    def initialize_result(self, requested: str) -> dict:
        up = self._connected()
        if up.era == "handshake":
            assert up.version is not None  # set with the era
            version = up.version
        else:
            version = requested if requested in wire.HANDSHAKE_VERSIONS else wire.LATEST_HANDSHAKE
        self.version = version
        return {"protocolVersion": version, "capabilities": self.server_capabilities(),
                "serverInfo": up.server_info or {"name": "hoopy", "version": "0"},
                **({"instructions": up.instructions} if up.instructions else {})}

    async def _forward(self, msg, reply, on_related=None):
        """Send the request upstream (our id); the response with the client's id back."""
        related = on_related or (lambda m: self._related(m, msg, reply))
        resp = await self.upstream.request({"method": msg["method"], "params": msg.get("params")}, related)
        out = {"jsonrpc": "2.0", "id": msg.get("id")}
        if "error" in resp:
            out["error"] = await self._masked_error(resp["error"], method=msg["method"], id=msg.get("id"))
        else:
            out["result"] = resp.get("result")
        return out

    async def _masked_error(self, error, **where):
        """An error the server answered: its message and data masked (a server's message may quote
        a value), the redaction recorded before it goes on."""
        masked, counts = mask_error(self.service.masker, error)
        if counts:
            await self.session.redacted(sum(counts.values()), where="error", detectors=counts, **where)
        return masked

    def _masked_message(self, m):
        """A notification or request of the server, its params masked (a log line, a progress
        message, a sampling prompt may hold a value)."""
        masked, counts = mask_message(self.service.masker, m)
        if counts:
            self.session.redacted(sum(counts.values()), where=m.get("method"), detectors=counts).addErrback(
                lambda f: log.failure("mcp: a redaction was not recorded", f))
        return masked

    def _to_client(self, resp, listing=False):
        """A response as the client's era expects it."""
        res = resp.get("result")
        if isinstance(res, dict) and self.era == "modern":
            res = dict(res)
            res.setdefault("resultType", "complete")
            if listing:
                res["cacheScope"] = "private"  # filtered per identity: never shared
                res["ttlMs"] = 0
            resp = {**resp, "result": res}
        elif isinstance(res, dict) and self.era == "handshake":
            res = {k: v for k, v in res.items() if k not in ("resultType", "cacheScope", "ttlMs")}
            resp = {**resp, "result": res}
        return resp

    async def _list(self, msg, reply):
        key, kind, field = LIST_KEYS[msg["method"]]
        resp = await self._forward(msg, reply)
        res = resp.get("result")
        if not isinstance(res, dict) or not isinstance(res.get(key), list):
            return self._to_client(resp, listing=True)
        shown = []
        for item in res[key]:
            if not isinstance(item, dict):
                continue
            name = item.get(field)
            if kind == "prompt" and isinstance(name, str):
                self.service.prompt_names.add(name)
            if kind == "tool" and isinstance(name, str):  # without a name: hidden below, never pinned
                status, d = self.service.pins.check(item)
                if d is not None:
                    try:
                        await d
                    except Exception:
                        raise wire.WireError(wire.INTERNAL_ERROR, "the audit store cannot record the pin")
                self.service.definitions[name] = item
                if status == "changed":
                    continue
            if lists.visible(self.grants, kind, name):
                shown.append(item)
        hidden = len(res[key]) - len(shown)
        if hidden:
            self.session.trailing_event("mcp.list", "filtered", method=msg["method"], shown=len(shown),
                                        hidden=hidden)
        return self._to_client({**resp, "result": {**res, key: shown}}, listing=True)

    async def _refresh_names(self, method: str, key: str, names: set):
        """Add every name a list method answers (all its pages) to ``names``."""
        cursor = None
        for _ in range(50):
            resp = await self._connected().request({"method": method, "params": {"cursor": cursor} if cursor else {}}, None)
            res = resp.get("result") if isinstance(resp, dict) else None
            if not isinstance(res, dict):
                return
            names.update(i["name"] for i in res.get(key) or [] if isinstance(i, dict) and isinstance(i.get("name"), str))
            cursor = res.get("nextCursor")
            if not cursor:
                return

    # --- judged requests ----------------------------------------------------------------

    async def _verdict(self, op, msg, reply):
        """Allow (or Deny) after any hold; a held call tells the client the approval id."""
        verdict = await self.session.decide(op)
        if isinstance(verdict, Hold):
            token = ((msg.get("params") or {}).get("_meta") or {}).get("progressToken")
            text = (f"held for approval {verdict.id}: waiting for a reviewer "
                    f"(hoopy approve {verdict.id})")
            if token is not None:
                reply.notify({"jsonrpc": "2.0", "method": "notifications/progress",
                              "params": {"progressToken": token, "progress": 0, "message": text}})
            reply.on_gone(lambda: self.session.expire_hold(verdict.id, "the client went away"))
            verdict = await verdict.resolution
            if isinstance(verdict, Allow) and token is not None:
                reply.notify({"jsonrpc": "2.0", "method": "notifications/progress",
                              "params": {"progressToken": token, "progress": 0,
                                         "message": f"approval {verdict.approval} granted: running"}})
        return verdict

    async def _judged_forward(self, msg, reply, op, mask=False):
        verdict = await self._verdict(op, msg, reply)
        if isinstance(verdict, Deny):
            raise wire.WireError(wire.INVALID_REQUEST, f"refused by hoopy: {verdict.reason}",
                                 {"rule": verdict.rule, "approval": verdict.approval})
        resp = await self._forward(msg, reply)
        if mask and isinstance(resp.get("result"), dict):
            masked, counts = mask_result(self.service.masker, resp["result"])
            if counts:
                resp = {**resp, "result": masked}
                await self.session.redacted(sum(counts.values()), method=msg["method"], id=msg.get("id"),
                                            detectors=counts)
        return self._to_client(resp)
