"""The causal link: which MCP tool call an operation on another connection was made for.

While an MCP connection's tool call is in flight, every operation that the
connection's ``acts_as`` identity makes on hoopy's other connections (an SSH
exec, a SQL statement, an HTTP request) records ``caused_by``: every call then
in flight that it may belong to. A session that authenticated with a per-child
credential belongs to that child's calls only (exact); one that used the
identity's own token or key may belong to any call of any server acting as it,
and all of them are recorded: honestly ambiguous, never a guess.

The registry is the gateway's, so no protocol package knows MCP: sessions ask
it when they write an ``operation`` event.
"""
from __future__ import annotations

import attrs


@attrs.frozen
class ToolCall:
    id: str  # hoopy's id of this call ("tc-..."): the tool call's events carry it as ``call``
    session: str  # the MCP session (hoopy session id)
    request: object  # the JSON-RPC request id the client sent
    tool: str
    connection: str  # the MCP connection
    caller: str  # the identity that called the tool
    acts_as: str  # the identity the server acts as downstream
    child: str | None  # the per-child credential of the server process, if it has one
    client: str | None  # the client's own name/version (observed)
    model: str | None  # the model, where known (identity's fixed attribution or claimed)
    require_caller_grant: bool = False

    def record(self) -> dict:
        out = {"call": self.id, "session": self.session, "request": self.request, "tool": self.tool,
               "connection": self.connection, "caller": self.caller}
        for k in ("client", "model", "child"):
            v = getattr(self, k)
            if v:
                out[k] = v
        return out


class InFlight:
    def __init__(self):
        # acts_as -> {call id: ToolCall}; empty when no call is in flight (Session reads it so:
        # the common case, an operation with no MCP call running anywhere, costs no call).
        self.by_actor: dict[str, dict[str, ToolCall]] = {}

    def begin(self, call: ToolCall) -> None:
        self.by_actor.setdefault(call.acts_as, {})[call.id] = call

    def end(self, call: ToolCall) -> None:
        calls = self.by_actor.get(call.acts_as)
        if calls is not None:
            calls.pop(call.id, None)
            if not calls:
                del self.by_actor[call.acts_as]

    def causes(self, session) -> list[ToolCall]:
        """The calls an operation of this session may have been made for, now."""
        calls = self.by_actor.get(session.identity)
        if not calls or session.protocol == "mcp":
            return []
        cred = getattr(session, "credential", None)
        if cred is not None:
            exact = [c for c in calls.values() if c.child == cred]
            if exact:
                return exact
            # A credential of a child with no call in flight: the operation was made for none.
            if any(c.child is not None for c in calls.values()):
                return []
        return list(calls.values())
