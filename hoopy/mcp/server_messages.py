"""What an MCP server sends on its own: notifications, and requests to the client (sampling,
elicitation, roots), each judged, masked and passed on in the era the client speaks; and the
client's answers and notifications back.

A part of hoopy.mcp.conversation.MCPSession (its state is set up there).
"""
from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from hoopy.mcp import wire
from hoopy.policy.rules import Operation
from hoopy.policy.verdicts import Deny, Hold

log = Logger()


class ServerMessages:
    """The server's messages to the client, and the client's answers to them."""

    def _related(self, m, msg, reply):
        """A message the server sent while answering the client's request ``msg``."""
        if "id" in m and "method" in m:
            self._server_request(m, reply)
            return
        method = m.get("method")
        if self._refused(method):
            return
        if method == "notifications/progress":
            token = ((msg.get("params") or {}).get("_meta") or {}).get("progressToken")
            if token is None:
                return
            m = {**m, "params": {**(m.get("params") or {}), "progressToken": token}}
        self.session.trailing_event("mcp.notification", None, direction="out", method=method)
        reply.notify(self._masked_message(m))

    def _refused(self, method):
        """A notification no MCP server may send: not passed on, and on the record as refused."""
        if method in wire.SERVER_NOTIFICATIONS:
            return False
        self.session.trailing_event("mcp.notification", "refused", direction="out", method=method)
        return True

    def _server_message(self, m):
        """A message of the server that belongs to no request."""
        if "id" in m:
            self._server_request(m, None)
            return
        method = m.get("method")
        if self._refused(method):
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
