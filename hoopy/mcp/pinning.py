"""Pinning of tool definitions: the first definition a connection sees of a tool is the one
it trusts. A later change (a new description can carry new instructions for the model:
"tool poisoning", a "rug pull") refuses the tool until a reviewer accepts the new definition
(``hoopy mcp accept CONNECTION TOOL``).

Pins are events (``mcp.pin``, ``mcp.pin.changed``, ``mcp.pin.accepted``) of the connection,
so they are hash-chained with everything else and read back from the store at start.
"""
from __future__ import annotations

import hashlib
import json

from twisted.internet.threads import deferToThread
from twisted.logger import Logger

log = Logger()

DEFINITION_KEYS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")


def definition(tool: dict) -> dict:
    return {k: tool[k] for k in DEFINITION_KEYS if k in tool}


def digest(tool: dict) -> str:
    text = json.dumps(definition(tool), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class Pins:
    def __init__(self, gateway, connection):
        self.gateway = gateway
        self.connection = connection
        self.pinned: dict[str, str] = {}  # tool -> accepted sha256
        self.changed: dict[str, tuple] = {}  # tool -> (sha256, definition) seen but not accepted
        self.loaded = None

    def load(self):
        """Read the pins back from the store (once, at start, in a thread)."""
        def read():
            reader = self.gateway.store.reader()
            try:
                pins, changed = {}, {}
                for e in reader.events():
                    kind = e["kind"]
                    if not kind.startswith("mcp.pin") or e["connection"] != self.connection.name:
                        continue
                    data = e["data"] if isinstance(e["data"], dict) else json.loads(e["data"] or "{}")
                    tool = data.get("tool")
                    if kind in ("mcp.pin", "mcp.pin.accepted"):
                        pins[tool] = data.get("sha256")
                        changed.pop(tool, None)
                    elif kind == "mcp.pin.changed":
                        changed[tool] = (data.get("sha256"), data.get("definition"))
                return pins, changed
            finally:
                reader.close()

        def done(r):
            self.pinned, self.changed = r[0], {k: v for k, v in r[1].items() if r[0].get(k) != v[0]}
            return self

        self.loaded = deferToThread(read).addCallback(done)
        return self.loaded

    def check(self, tool: dict):
        """'ok', 'new' (pinned now: a Deferred to wait on) or 'changed'. A tool is pinned by its name:
        one without a string name is no tool a client can call, and is never pinned."""
        name = tool.get("name")
        if not isinstance(name, str):
            raise TypeError(f"a tool named {name!r} cannot be pinned")
        h = digest(tool)
        known = self.pinned.get(name)
        if known == h:
            return "ok", None
        if known is None:
            self.pinned[name] = h
            return "new", self.gateway.record("mcp.pin", "pinned", connection=self.connection, tool=name,
                                              sha256=h, definition=definition(tool))
        if self.changed.get(name, (None,))[0] != h:
            self.changed[name] = (h, definition(tool))
            log.warn("mcp {conn}: tool {tool} changed since it was pinned: refused until accepted",
                     conn=self.connection.name, tool=name)
            return "changed", self.gateway.record("mcp.pin.changed", "refused", connection=self.connection,
                                                  tool=name, sha256=h, pinned=known, definition=definition(tool))
        return "changed", None

    def accept(self, tool: str, reviewer: str):
        """A reviewer accepts the changed definition last seen; fires once recorded."""
        seen = self.changed.get(tool)
        if seen is None:
            return None
        h, _ = seen

        def done(_):
            self.pinned[tool] = h
            self.changed.pop(tool, None)
            return {"connection": self.connection.name, "tool": tool, "sha256": h, "reviewer": reviewer}

        return self.gateway.record("mcp.pin.accepted", "accepted", connection=self.connection, tool=tool,
                                   sha256=h, previous=self.pinned.get(tool), reviewer=reviewer).addCallback(done)
