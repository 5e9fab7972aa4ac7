"""An in-process Gateway (real SQLite store, real admin API on a free port) for core tests."""
from __future__ import annotations

import subprocess
import sys

from twisted.internet.threads import deferToThread

from hoopy import config as cm
from hoopy.gateway import Gateway
from hoopy.policy.rules import Operation, Unit
from tests.support import free_port, ident

AGENT, ALICE, BOB, CAROL = ident("agent"), ident("alice"), ident("bob"), ident("carol")


def write_config(tmp_path, approval_timeout="30s", busy="0.5s", api_extra="", grant_extra="", extra=""):
    """``api_extra`` goes in [connections.api], ``grant_extra`` in the agent's grant,
    ``extra`` at the end (more tables)."""
    port = free_port()
    text = f"""
[gateway]
state = "hoopy.db"
recordings = "recordings"
admin_listen = "tcp:{port}:interface=127.0.0.1"
approval_timeout = "{approval_timeout}"
store_busy_timeout = "{busy}"

{AGENT.toml()}
{ALICE.toml(kind="human", roles=["reviewer"])}
{BOB.toml(kind="human", roles=["reviewer"])}
{CAROL.toml(kind="human", roles=["auditor"])}

[connections.api]
type = "http"
listen = "tcp:0"
upstream = "http://127.0.0.1:9"
{api_extra}

[[grants]]
identity = "agent"
connection = "api"
allow = ["GET /v1/*"]
approve = ["POST /v1/refunds"]
{grant_extra}

[[grants]]
identity = "bob"
connection = "api"
approve = ["POST /v1/refunds"]
{extra}
"""
    p = tmp_path / "hoopy.toml"
    p.write_text(text)
    return p


def start_gateway(tmp_path, **kw) -> Gateway:
    from twisted.internet import reactor

    cfg = cm.load(write_config(tmp_path, **kw))
    gw = Gateway(cfg, reactor)
    gw.add_admin()  # no protocol listeners: these tests drive the policy directly
    gw.startService()
    return gw


def request(method, path, **detail):
    return Operation("http", "request", f"{method} {path}", (Unit(method, path),),
                     {"method": method, "path": path, **detail})


def hoopy_cli(config, *args, token=None):
    """The real `hoopy` command, in a thread so the reactor keeps serving the admin API."""
    import os

    env = dict(os.environ)
    env.pop("HOOPY_TOKEN", None)
    if token:
        env["HOOPY_TOKEN"] = token
    return deferToThread(subprocess.run, [sys.executable, "-m", "hoopy", *args, "-c", str(config)],
                         capture_output=True, text=True, env=env, timeout=60)
