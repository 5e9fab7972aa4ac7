"""The ``hoopy mcp`` commands: ``stdio URL`` (a stdio bridge) and ``accept CONNECTION TOOL``."""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.parse
import urllib.request


def cmd_stdio(args):
    from hoopy.mcp.stdio_bridge import main

    return main(args.url)


def cmd_accept(args):
    from hoopy.cliutil import AdminClient, fail as _fail, load_config as _config
    from hoopy.text import escape

    # The connections' types, no secret resolved: a reviewer needs no upstream credential.
    cfg = _config(args, mode="reader")
    token = os.environ.get("HOOPY_TOKEN", "").strip()
    if not token:
        return _fail("set HOOPY_TOKEN to your reviewer token", 1)
    conn = cfg.connections.get(args.connection)
    if conn is None or conn.type != "mcp":
        return _fail(f"no mcp connection {args.connection!r} in {args.config}", 2)
    client = AdminClient(cfg, args.admin, token)  # no redirects, no proxies, no token in clear elsewhere
    q = urllib.parse.quote
    try:
        status, out = client.call("POST", f"/mcp/{q(args.connection, safe='')}/tools/{q(args.tool, safe='')}/accept",
                                  {})
    except (urllib.error.URLError, OSError) as e:
        return _fail(f"cannot reach the gateway's admin API at {client.base}: {escape(getattr(e, 'reason', e))}", 1)
    if status != 200 or not isinstance(out, dict):
        msg = out.get("error") if isinstance(out, dict) else status
        return _fail(f"accept {escape(args.tool)}: refused: {escape(msg)}", 1)
    print(escape(f"{out['connection']} {out['tool']}: definition {out['sha256'][:16]} accepted by {out['reviewer']}"))
    return 0


def add_parser(sub, cfg):
    mcp = sub.add_parser("mcp", help="MCP: the stdio bridge, accepting changed tools").add_subparsers(
        dest="mcp_command", required=True, metavar="SUBCOMMAND")
    sp = mcp.add_parser("stdio", help="a stdio MCP server forwarding to hoopy's MCP endpoint (HOOPY_TOKEN)")
    sp.add_argument("url", help="hoopy's MCP endpoint, e.g. http://127.0.0.1:8765/mcp")
    sp.set_defaults(fn=cmd_stdio)
    sp = cfg(mcp.add_parser("accept", help="accept a changed tool definition (reviewer token in HOOPY_TOKEN)"))
    sp.add_argument("connection", help="the mcp connection whose tool changed")
    sp.add_argument("tool", help="the tool whose new definition to accept")
    sp.add_argument("--admin", help="the admin API: http://LOOPBACK-IP:PORT or https://HOST:PORT "
                                    "(default: from gateway.admin_listen)")
    sp.set_defaults(fn=cmd_accept)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(1)
