"""Tool calls of an MCP session: judged (with the tool's pin and its listed name), run
upstream while registered with the gateway (hoopy.causal), masked and recorded.

A part of hoopy.mcp.conversation.MCPSession (its state is set up there).
"""
from __future__ import annotations

import hashlib
import json
import secrets
import time

from hoopy.causal import ToolCall
from hoopy.mcp import wire
from hoopy.mcp.results import mask_arguments, mask_result
from hoopy.mcp.rules import ToolUnit, resolved_args
from hoopy.policy.rules import Operation
from hoopy.policy.verdicts import Deny
from hoopy.upstream import UpstreamError


def _compact(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True, default=str)


def _clip(value, limit: int):
    text = _compact(value)
    if len(text.encode()) <= limit:
        return value
    return {"truncated": True, "bytes": len(text.encode()), "head": text.encode()[:limit].decode("utf-8", "ignore")}


def tool_error(id_, text: str) -> dict:
    return wire.result(id_, {"content": [{"type": "text", "text": text}], "isError": True})


class ToolCalls:
    """tools/call, and the tools/list it needs first for a tool never listed."""

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
