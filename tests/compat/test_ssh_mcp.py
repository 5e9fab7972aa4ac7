"""A third-party MCP SSH server, unmodified, attached to the gateway: ssh-mcp (npm, pinned in
tests/package.json, installed by .ci/run) driven by the MCP Python SDK client, through a real
`twistd -n hoopy` to a real sshd."""
from __future__ import annotations

import asyncio
import os
import shutil
import threading
from pathlib import Path

import pytest

from tests.compat.matrix import row
from tests.support import ident
from tests.test_ssh import agent_key, connection_toml, grant, sshd  # noqa: F401  (fixtures)

SSH_MCP = Path(__file__).resolve().parents[1] / "node_modules" / "ssh-mcp" / "build" / "index.js"
CLIENT = "ssh-mcp (npm) via the MCP Python SDK"


def _need():
    # .ci/run installs it (npm ci in tests/); a missing install is a failure, not a skip.
    assert SSH_MCP.exists(), f"{SSH_MCP} missing: run `npm ci --prefix tests` (.ci/run does)"
    assert shutil.which("node"), "node is needed for the npm MCP servers"


class Rig:
    def __init__(self, gw, port, marks, reviewer, home):
        self.gw, self.port, self.marks, self.reviewer, self.home = gw, port, marks, reviewer, home

    async def _call(self, calls):
        from mcp import ClientSession, StdioServerParameters
        from mcp.client.stdio import stdio_client

        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ")}
        env.update(XDG_CONFIG_HOME=str(self.home / "config"), HOME=str(self.home))
        params = StdioServerParameters(command="node", args=[str(SSH_MCP)], env=env)
        out = []
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w) as s:
                await s.initialize()
                for name, args in calls:
                    res = await s.call_tool(name, args)
                    text = "\n".join(getattr(c, "text", "") for c in res.content)
                    out.append((bool(res.is_error), text))
        return out

    def call(self, *calls):
        # Its own thread and event loop: the test process's loop belongs to the reactor.
        box = {}

        def run():
            try:
                box["r"] = asyncio.run(asyncio.wait_for(self._call(list(calls)), 120))
            except BaseException as e:  # noqa: BLE001 (re-raised in the test's thread)
                box["e"] = e

        t = threading.Thread(target=run)
        t.start()
        t.join(150)
        if "e" in box:
            raise box["e"]
        return box["r"]


@pytest.fixture
def rig(hoopy_gateway, sshd, agent_key, tmp_path):  # noqa: F811
    _need()
    key, pub = agent_key
    marks = tmp_path / "m"
    (marks / "pub").mkdir(parents=True)
    (marks / "in").mkdir()
    (marks / "pub" / "notes.txt").write_text("public notes\n")
    (marks / "secret.txt").write_text("secret\n")
    agent, alice = ident("agent"), ident("alice")
    conn, port = connection_toml(sshd)
    m = str(marks)
    allow = [f"exec touch {m}/ok-*", "exec echo *", "exec ls *", "exec grep *", "exec true",
             f"sftp read {m}/pub/**", f"sftp write {m}/in/**"]
    approve = [f"exec touch {m}/held-*"]
    body = (agent.toml(ssh_keys=[pub]) + 'model = "claude-test"\nmcp_server = "ssh-mcp"\n'
            + alice.toml(kind="human", roles=["reviewer"]) + conn + grant("agent", allow, approve))
    gw = hoopy_gateway(body)
    home = tmp_path / "mcphome"
    cfg = home / "config" / "ssh-mcp"
    cfg.mkdir(parents=True)
    os.chmod(home / "config", 0o700)
    os.chmod(cfg, 0o700)
    # The profile a user writes for a host, pointed at the gateway; `workdir` makes ssh-mcp
    # send every command as `cd '<dir>' && <command>`.
    (cfg / "config.toml").write_text(f"""
[defaults]
defaultProfile = "web"
approvalMode = "auto"

[[profiles]]
name = "web"
host = "127.0.0.1"
port = {port}
user = "agent"
auth = "key"
keyRef = "{key}"
role = "admin"
approvalPolicy = "auto"
workdir = "{m}"
""")
    os.chmod(cfg / "config.toml", 0o600)
    return Rig(gw, port, marks, alice, home)


@row("ssh", CLIENT, "run-command: an allowed compound command, sent wrapped (cd DIR && ...)")
def test_allowed_compound_command(rig):
    m = rig.marks
    ((err, text),) = rig.call(("run-command", {"command": f"touch {m}/ok-1 && ls {m} | grep ok"}))
    assert not err and "ok-1" in text, text
    assert (m / "ok-1").exists()
    op = [e for e in rig.gw.events("operation") if "ok-1" in e["data"]["text"]][-1]
    assert op["outcome"] == "allowed" and op["data"]["text"].startswith(f"cd '{m}' && ")
    assert [p["unit"] for p in op["data"]["parts"]] == [f"exec touch {m}/ok-1", f"exec ls {m}", "exec grep ok"]
    start = rig.gw.events("session.attribution")
    assert any(a["data"].get("model") == "claude-test" and a["data"]["source"] == "identity" for a in start)


@row("ssh", CLIENT, "run-command: a refused command returns the refusal as the tool's error")
def test_refused_command_is_the_tools_error(rig):
    m = rig.marks
    ((err, text),) = rig.call(("run-command", {"command": f"touch {m}/ok-2; touch {m}/no-2"}))
    assert "hoopy: refused:" in text and "no grant allows" in text, text
    assert err or "126" in text, text
    assert not (m / "ok-2").exists() and not (m / "no-2").exists()


@row("ssh", CLIENT, "run-command: a held command runs after hoopy approve")
def test_held_command_runs_after_approve(rig):
    m = rig.marks
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("r", rig.call(
        ("run-command", {"command": f"touch {m}/held-3"}))))
    t.start()
    try:
        (pending,) = rig.gw.wait_pending(rig.reviewer.token, timeout=60)
        assert not (m / "held-3").exists()
        assert rig.gw.hoopy("approve", pending["id"], token=rig.reviewer.token).returncode == 0
    finally:
        t.join(120)
    ((err, text),) = result["r"]
    assert not err, text
    assert (m / "held-3").exists()


@row("ssh", CLIENT, "sftp-upload / sftp-download obey sftp read/write rules")
def test_file_tools_obey_sftp_rules(rig):
    m = rig.marks
    got = rig.call(("sftp-download", {"remotePath": f"{m}/pub/notes.txt"}),
                   ("sftp-download", {"remotePath": f"{m}/secret.txt"}),
                   ("sftp-upload", {"remotePath": f"{m}/in/up.txt", "content": "uploaded\n"}),
                   ("sftp-upload", {"remotePath": f"{m}/pub/up.txt", "content": "nope\n"}))
    (ok_err, ok_text), (no_err, no_text), (up_err, up_text), (bad_err, bad_text) = got
    assert not ok_err and "public notes" in ok_text, ok_text
    assert no_err and "secret" not in no_text.replace("secret.txt", ""), no_text
    assert not up_err and (m / "in" / "up.txt").read_text() == "uploaded\n", up_text
    assert bad_err and not (m / "pub" / "up.txt").exists(), bad_text
    refused = [e for e in rig.gw.events("operation") if e["outcome"] == "refused"]
    assert any(f"sftp.read {m}/secret.txt" in e["data"]["units"] for e in refused)
    assert any(f"sftp.write {m}/pub/up.txt" in e["data"]["units"] for e in refused)
