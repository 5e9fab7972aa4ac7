"""The ``hoopy mcp`` commands: ``stdio URL`` (a stdio bridge) and ``accept CONNECTION TOOL``."""
from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request


def cmd_stdio(args):
    from hoopy.mcp.stdio_bridge import main

    return main(args.url)


def cmd_accept(args):
    from hoopy.cli import _config, _fail, admin_url

    cfg = _config(args)
    token = os.environ.get("HOOPY_TOKEN", "").strip()
    if not token:
        return _fail("set HOOPY_TOKEN to your reviewer token", 1)
    conn = cfg.connections.get(args.connection)
    if conn is None or conn.type != "mcp":
        return _fail(f"no mcp connection {args.connection!r} in {args.config}", 2)
    base = args.admin or admin_url(cfg)
    q = urllib.parse.quote
    req = urllib.request.Request(f"{base}/mcp/{q(args.connection, safe='')}/tools/{q(args.tool, safe='')}/accept",
                                 data=b"{}", method="POST",
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            out = json.load(resp)
    except urllib.error.HTTPError as e:
        try:
            msg = json.load(e).get("error", e.reason)
        except ValueError:
            msg = e.reason
        return _fail(f"accept {args.tool}: refused: {msg}", 1)
    except (urllib.error.URLError, OSError) as e:
        return _fail(f"cannot reach the gateway's admin API at {base}: {getattr(e, 'reason', e)}", 1)
    print(f"{out['connection']} {out['tool']}: definition {out['sha256'][:16]} accepted by {out['reviewer']}")
    return 0


def add_parser(sub, cfg):
    mcp = sub.add_parser("mcp", help="MCP: the stdio bridge, accepting changed tools").add_subparsers(
        dest="mcp_command", required=True)
    sp = mcp.add_parser("stdio", help="a stdio MCP server forwarding to hoopy's MCP endpoint (HOOPY_TOKEN)")
    sp.add_argument("url", help="hoopy's MCP endpoint, e.g. http://127.0.0.1:8765/mcp")
    sp.set_defaults(fn=cmd_stdio)
    sp = cfg(mcp.add_parser("accept", help="accept a changed tool definition (reviewer token in HOOPY_TOKEN)"))
    sp.add_argument("connection")
    sp.add_argument("tool")
    sp.add_argument("--admin", help="the admin API URL (default: from gateway.admin_listen)")
    sp.set_defaults(fn=cmd_accept)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
