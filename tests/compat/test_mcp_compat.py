"""MCP clients and servers through hoopy: one matrix row each (the gateway of tests/test_mcp.py)."""
from __future__ import annotations

import json

from tests.compat.matrix import row
from tests.test_mcp import AGENT, sdk, ts, world  # noqa: F401  (world: the module's gateway fixture)


@row("mcp", "Python SDK (mcp)", "Streamable HTTP, revision 2026-07-28: list, call, refused, masked")
def test_python_sdk_current_revision(world):  # noqa: F811
    out = sdk(world.url("tools"), AGENT.token, ["list"], ["call", "echo", {"text": "a"}],
              ["call", "drop_all", {}], ["call", "customer", {"id": 2}], ["version"])
    assert "echo" in out[0]["tools"] and "drop_all" not in out[0]["tools"]
    assert out[1]["text"] == "a" and out[2]["isError"] and "[REDACTED]" in out[3]["text"]
    assert out[4]["version"] == "2026-07-28"


@row("mcp", "TypeScript SDK (@modelcontextprotocol/sdk)", "Streamable HTTP, revision 2025-11-25: list, call, refused, masked")
def test_typescript_sdk_handshake_revision(world):  # noqa: F811
    out = ts(world.url("tools"), AGENT.token, ["list"], ["call", "echo", {"text": "b"}],
             ["call", "drop_all", {}], ["call", "customer", {"id": 2}])
    assert out[0]["version"] == "2025-11-25"
    assert "echo" in out[1]["tools"] and out[2]["text"] == "b" and out[3]["isError"]
    assert "[REDACTED]" in out[4]["text"]


@row("mcp", "@modelcontextprotocol/server-everything", "as the server: stdio child and Streamable HTTP")
def test_server_everything_both_transports(world):  # noqa: F811
    for name in ("everything", "everything_http"):
        out = sdk(world.url(name), AGENT.token, ["call", "echo", {"message": "c"}],
                  ["call", "trigger-long-running-operation", {"duration": 1, "steps": 2}])
        assert out[0]["text"] == "Echo: c" and len(out[1]["progress"]) == 2


@row("mcp", "Python SDK (mcp) via `hoopy mcp stdio`", "stdio bridge: list, call")
def test_stdio_bridge(world):  # noqa: F811
    import os
    import subprocess
    import sys

    from tests.test_mcp import ROOT

    script = f"""
import asyncio, json, sys
from mcp import Client, StdioServerParameters
async def main():
    p = StdioServerParameters(command=sys.executable, args=["-m", "hoopy", "mcp", "stdio", {world.url('tools')!r}],
                              env={{"HOOPY_TOKEN": {AGENT.token!r}, "PYTHONPATH": {str(ROOT)!r}}})
    async with Client(p) as c:
        r = await c.call_tool("echo", {{"text": "d"}})
        print(json.dumps({{"text": r.content[0].text}}))
asyncio.run(main())
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=90,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"text": "d"}, r.stderr[-2000:]
