"""One hoopy session of an MCP connection: a client on one side, one upstream on the other.

Every client request is judged (tool calls, resource reads, prompts), filtered (lists),
bridged between the eras the two sides speak, masked on the way back and recorded.
A tool call in flight is registered with the gateway (hoopy.causal) so that what the
server does on hoopy's other connections meanwhile records ``caused_by``.
"""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections import deque

from twisted.internet import defer
from twisted.logger import Logger

from hoopy.causal import ToolCall
from hoopy.mcp import lists, wire
from hoopy.mcp.results import mask_arguments, mask_error, mask_message, mask_result
from hoopy.mcp.rules import ToolUnit, resolved, resolved_args
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


def _compact(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True, default=str)


def _clip(value, limit: int):
    text = _compact(value)
    if len(text.encode()) <= limit:
        return value
    return {"truncated": True, "bytes": len(text.encode()), "head": text.encode()[:limit].decode("utf-8", "ignore")}


def tool_error(id_, text: str) -> dict:
    return wire.result(id_, {"content": [{"type": "text", "text": text}], "isError": True})


class MCPSession:
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

    async def _tool_call(self, msg, reply):
        id_ = msg.get("id")
        params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
        name = params.get("name")
        args = params.get("arguments", {})
        if not isinstance(name, str) or not isinstance(args, (dict, type(None))):
            raise wire.WireError(wire.INVALID_PARAMS, "tools/call needs a name and an arguments object")
        args = args or {}
        pins = self.service.pins
        if name not in self.service.definitions and name not in pins.changed:
            # Never listed since the gateway started: see its definition (and pin it) first.
            await self._refresh_tools(reply)
        call_id = "tc-" + secrets.token_hex(8)
        recorded, _ = mask_arguments(self.service.masker, args)
        recorded = _clip(recorded, self.settings.record_limit)
        detail = {"tool": name, "arguments": recorded, "request": id_, "call": call_id}
        if self.client:
            detail["client"] = self.client
        if name in pins.changed:
            rule = "pinning"
            reason = (f"tool {name} changed since it was pinned; a reviewer must accept the new definition "
                      f"(hoopy mcp accept {self.session.connection} {name})")
            await self.session.event("operation", "refused", rule=rule, reason=reason, operation="tool",
                                     text=f"tools/call {name}", **detail)
            return tool_error(id_, f"refused by hoopy: {reason}")
        # The same call (tool and full arguments), not this request's ids, is what a retry-mode
        # approval is bound to.
        units = (ToolUnit("tool", name, args=args),)
        as_resolved = resolved_args(args)
        if as_resolved is not None:
            # a path argument as the server will resolve it ("/srv/reports/../../etc/passwd" is
            # /etc/passwd): every rule must hold for that form too
            units += (ToolUnit("tool", name, args=as_resolved),)
        op = Operation("mcp", "tool", f"tools/call {name} {_compact(recorded)}", units, detail,
                       canonical=Operation.canonical_of(name, _compact(args)))
        if name not in self.service.definitions and self.session.judge(op).outcome != "deny":
            # Not a tool the server lists (by this exact name): a server that folds case or Unicode
            # would run "DELETE_DB" as the delete_db a rule denies, and an unlisted tool is never pinned.
            # (What the policy refuses anyway is refused as such, below.)
            reason = f"tool {name!r} is not one the MCP server lists; call a listed tool by its exact name"
            await self.session.event("operation", "refused", rule="unlisted", reason=reason, operation="tool",
                                     text=f"tools/call {name}", **detail)
            return tool_error(id_, f"refused by hoopy: {reason}")
        verdict = await self._verdict(op, msg, reply)
        if isinstance(verdict, Deny):
            why = verdict.reason + (f" (rule {verdict.rule!r})" if verdict.rule and verdict.rule not in verdict.reason
                                    else "")
            if verdict.status == "pending":  # retry after approval: the same call runs once approved
                why = f"approval {verdict.approval} is pending: {why}"
            if verdict.detail:
                why += f". {verdict.detail}"
            return tool_error(id_, f"refused by hoopy: {why}")
        acts_as = self.settings.acts_as
        call = ToolCall(id=call_id, session=self.session.id, request=id_, tool=name,
                        connection=self.session.connection, caller=self.session.identity,
                        acts_as=acts_as, child=self.child.credential_id if self.child else None,
                        client=self.client, model=self.session.attribution.get("model"),
                        require_caller_grant=self.settings.require_caller_grant) if acts_as else None
        started = time.monotonic()
        if call is not None:
            self.gateway.in_flight.begin(call)
        outcome, resp = "failed", None
        try:
            pending = self.upstream.request({"method": "tools/call", "params": params},
                                            lambda m: self._related(m, msg, reply))
            reply.on_gone(lambda: self._client_gone(pending))
            resp = await pending
            outcome = "error" if "error" in resp or (resp.get("result") or {}).get("isError") else "ok"
        except UpstreamError as e:
            outcome = "cancelled" if str(e).startswith("cancelled") else "failed"
            resp = {"error": {"code": wire.INTERNAL_ERROR, "message": str(e)}}
            if outcome == "failed":
                resp = None
                failure = str(e)
        finally:
            if call is not None:
                self.gateway.in_flight.end(call)
        duration = round((time.monotonic() - started) * 1000, 3)
        if resp is None:
            self.session.trailing_event("mcp.tool.result", "failed", call=call_id, tool=name, request=id_,
                                        duration_ms=duration, reason=failure)
            return tool_error(id_, f"hoopy: the MCP server failed: {failure}")
        out = {"jsonrpc": "2.0", "id": id_}
        counts = {}
        if "error" in resp:
            out["error"] = await self._masked_error(resp["error"], call=call_id, tool=name)
        else:
            result, counts = mask_result(self.service.masker, resp.get("result"))
            out["result"] = result
        out = self._to_client(out)
        body = wire.dumps(out.get("result", out.get("error")))
        if counts:
            await self.session.redacted(sum(counts.values()), call=call_id, tool=name, detectors=counts)
        self.session.trailing_event(
            "mcp.tool.result", outcome, call=call_id, tool=name, request=id_, duration_ms=duration,
            result_bytes=len(body), result_sha256=hashlib.sha256(body).hexdigest(),
            **({"error": out["error"].get("message")} if "error" in out else {}),
            **({"result": _clip(json.loads(body), self.settings.record_limit)} if outcome != "cancelled" else {}))
        if reply.gone:
            return None
        return out

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

    async def _refresh_tools(self, reply):
        cursor = None
        for _ in range(50):
            params = {"cursor": cursor} if cursor else {}
            resp = await self.upstream.request({"method": "tools/list", "params": params}, None)
            res = resp.get("result") if isinstance(resp, dict) else None
            if not isinstance(res, dict):
                return
            for tool in res.get("tools") or []:
                if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                    status, d = self.service.pins.check(tool)
                    if d is not None:
                        await d
                    self.service.definitions[tool["name"]] = tool
            cursor = res.get("nextCursor")
            if not cursor:
                return

    def _client_gone(self, pending):
        if not pending.called:
            for p in list(self.upstream.pending.values()):
                if p.done is pending:
                    self.upstream.cancel(p, "the client went away")

    # --- what the server sends ------------------------------------------------------------

    def _related(self, m, msg, reply):
        """A message the server sent while answering the client's request ``msg``."""
        if "id" in m and "method" in m:
            self._server_request(m, reply)
            return
        method = m.get("method")
        if method not in wire.SERVER_NOTIFICATIONS:
            self.session.trailing_event("mcp.notification", "refused", direction="out", method=method)
            return
        if method == "notifications/progress":
            token = ((msg.get("params") or {}).get("_meta") or {}).get("progressToken")
            if token is None:
                return
            m = {**m, "params": {**(m.get("params") or {}), "progressToken": token}}
        self.session.trailing_event("mcp.notification", None, direction="out", method=method)
        reply.notify(self._masked_message(m))

    def _server_message(self, m):
        """A message of the server that belongs to no request."""
        if "id" in m:
            self._server_request(m, None)
            return
        method = m.get("method")
        if method not in wire.SERVER_NOTIFICATIONS:
            self.session.trailing_event("mcp.notification", "refused", direction="out", method=method)
            return
        if method == "notifications/tools/list_changed":
            self.service.definitions.clear()
        if method == "notifications/prompts/list_changed":
            self.service.prompt_names.clear()
        self.session.trailing_event("mcp.notification", None, direction="out", method=method)
        self._push(self._masked_message(m))

    def _push(self, m):
        if self.era != "handshake":
            return  # the per-request era has no stream to put it on
        if self.streams:
            for s in self.streams:
                s.send(m)
        else:
            self.backlog.append(m)

    def _server_request(self, m, reply):
        defer.ensureDeferred(self._answer_server_request(m, reply)).addErrback(
            lambda f: log.failure("mcp server request", f))

    async def _answer_server_request(self, m, reply):
        method, up_id = m.get("method"), m.get("id")
        if method == "ping":
            await self.upstream.respond(wire.result(up_id, {}))
            return
        kind = wire.SERVER_REQUESTS.get(method)
        if kind is None:
            self.session.trailing_event("mcp.server_request", "refused", method=method)
            await self.upstream.respond(wire.error(up_id, wire.METHOD_NOT_FOUND, f"Method not found: {method}"))
            return
        op = Operation.single("mcp", kind, method, None, method=method)
        verdict = await self.session.decide(op)
        if isinstance(verdict, Hold):
            verdict = await verdict.resolution
        if isinstance(verdict, Deny):
            await self.upstream.respond(wire.error(up_id, wire.INVALID_REQUEST, f"refused by hoopy: {verdict.reason}"))
            return
        if self.era != "handshake" or (reply is None and not self.streams):
            await self.upstream.respond(wire.error(
                up_id, wire.INVALID_REQUEST,
                f"the client cannot be asked: it speaks {self.version}, which has no server-to-client requests"
                if self.era != "handshake" else "the client has no stream open to be asked on"))
            return
        self._ids += 1
        our = f"hoopy-{self._ids}"
        self.to_client[our] = up_id
        out = {**self._masked_message(m), "id": our}
        if reply is not None:
            reply.notify(out)
        else:
            self._push(out)

    def client_response(self, msg):
        """The client answers a request the server made."""
        up_id = self.to_client.pop(msg.get("id"), None)
        if up_id is None:
            return False
        out = {"jsonrpc": "2.0", "id": up_id}
        if "error" in msg:
            out["error"] = msg["error"]
        else:
            out["result"] = msg.get("result")
        self.session.trailing_event("mcp.response", "error" if "error" in msg else "ok", direction="in",
                                    id=msg.get("id"))
        self.upstream.respond(out)
        return True

    def client_notification(self, msg):
        method = msg["method"]
        self.session.trailing_event("mcp.notification", None, direction="in", method=method)
        if method == "notifications/initialized":
            return
        if method == "notifications/cancelled":
            target = (msg.get("params") or {}).get("requestId")
            for reply in list(self.replies):
                if reply.request_id == target:
                    reply.cancel("cancelled by the client")
            return
        if self.upstream is not None and self.upstream.era is not None:
            self.upstream.notify(msg)
