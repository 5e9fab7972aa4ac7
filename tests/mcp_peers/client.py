"""The MCP SDK's own client (current revision) driven by the tests: one JSON line of actions
in argv, one JSON line of results out.

    python3 -m tests.mcp_peers.client URL TOKEN '[["list"], ["call", "echo", {"text": "hi"}]]'
"""
from __future__ import annotations

import asyncio
import json
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import Implementation


async def main(url, token, actions, mode):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    out = []
    http = create_mcp_http_client(headers=headers, timeout=httpx2.Timeout(30, read=120))
    async with http:
        transport = streamable_http_client(url, http_client=http)
        async with Client(transport, mode=mode, client_info=Implementation(name="test-sdk-client", version="2.3")
                          ) as client:
            for action in actions:
                try:
                    if action[0] == "list":
                        r = await client.list_tools()
                        out.append({"tools": sorted(t.name for t in r.tools),
                                    "descriptions": {t.name: t.description for t in r.tools}})
                    elif action[0] == "call":
                        progress = []

                        async def on_progress(p, total, message):
                            progress.append(message)

                        r = await client.call_tool(action[1], action[2] if len(action) > 2 else {},
                                                   progress_callback=on_progress)
                        out.append({"isError": r.is_error, "text": "".join(
                            getattr(c, "text", "") for c in r.content), "progress": progress})
                    elif action[0] == "resources":
                        r = await client.list_resources()
                        out.append({"resources": [str(x.uri) for x in r.resources]})
                    elif action[0] == "version":
                        s = client.session
                        out.append({"version": getattr(s, "protocol_version", None) or str(
                            getattr(getattr(s, "discover_result", None), "supported_versions", None))})
                except Exception as e:
                    out.append({"exception": f"{type(e).__name__}: {e}"})
                print(json.dumps(out[-1]), flush=True)


if __name__ == "__main__":
    url, token, actions = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 else "auto"
    asyncio.run(main(url, token, actions, mode))
