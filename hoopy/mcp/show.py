"""The causal link in ``hoopy show``: lines to print beneath events.

Of an MCP session: under each tool call, every operation on hoopy's other connections
that recorded it in ``caused_by`` (found in the store between the session's start and
end). Of any other session: under each operation made for a tool call, that call
(tool, its MCP session and request, client and model), marked ambiguous when several
calls were in flight.
"""
from __future__ import annotations

import json


def _data(e) -> dict:
    d = e.get("data")
    return d if isinstance(d, dict) else json.loads(d or "{}")


def _call_line(c: dict, several: bool) -> str:
    who = ", ".join(f"{k} {c[k]}" for k in ("client", "model") if c.get(k))
    return (f"caused by tool call {c.get('tool')} ({c.get('call')}, MCP session {c.get('session')}, "
            f"request {json.dumps(c.get('request'))}, caller {c.get('caller')}"
            + (f", {who}" if who else "") + ")" + ("  [one of several calls in flight]" if several else ""))


def beneath(reader, session: dict, events: list) -> dict:
    """{event seq: [lines]} to print under those events."""
    out: dict = {}
    if session.get("protocol") == "mcp":
        calls = {}
        for e in events:
            d = e["data"]
            if e["kind"] == "operation" and d.get("operation") == "tool" and d.get("call"):
                calls[d["call"]] = e["seq"]
        if not calls:
            return out
        for e in reader.events(since_us=session.get("started_us"), until_us=session.get("ended_us")):
            d = _data(e)
            for c in d.get("caused_by") or ():
                seq = calls.get(c.get("call")) if isinstance(c, dict) else None
                if seq is not None:
                    text = d.get("text") or d.get("operation") or e["kind"]
                    several = len(d["caused_by"]) > 1
                    out.setdefault(seq, []).append(
                        f"-> {e['protocol']} {e['connection']} session {e['session']}: {e['outcome']} {text}"
                        + ("  [ambiguous: several calls in flight]" if several else ""))
        return out
    for e in events:
        causes = e["data"].get("caused_by")
        if causes:
            out[e["seq"]] = [_call_line(c, len(causes) > 1) for c in causes if isinstance(c, dict)]
    return out
