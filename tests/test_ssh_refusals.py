"""Every refusal of an SSH request is an event with its reason (issue 10 §4), against real clients."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.test_ssh import agent_key, setup, sshd  # noqa: F401  (fixtures)


def refusals(gw, timeout=10, want=1):
    deadline = time.monotonic() + timeout
    while True:
        evs = [e for e in gw.events("operation") if e["outcome"] == "refused"]
        if len(evs) >= want or time.monotonic() > deadline:
            return evs
        time.sleep(0.1)


def test_openssh_x11_agent_and_remote_forward_refusals_are_recorded(setup, tmp_path):
    s = setup(allow=["exec echo *"])
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock), "DISPLAY": "127.0.0.1:77"}
        r = subprocess.run(s.ssh_args("-X", "-A", "-R", "0:127.0.0.1:9", "-R", f"{tmp_path}/r.sock:/tmp/x",
                                      "-o", "ForwardX11Trusted=yes") + ["echo still-runs"],
                           capture_output=True, text=True, env=env, timeout=30)
    finally:
        agent.kill()
        agent.wait()
    assert r.stdout == "still-runs\n", r.stderr
    evs = refusals(s.gw, want=4)
    by_op = {e["data"]["operation"]: e["data"] for e in evs}
    assert {"x11", "agent-forwarding", "remote-forward"} <= set(by_op), evs
    assert "X11" in by_op["x11"]["reason"] and "agent forwarding" in by_op["agent-forwarding"]["reason"]
    texts = sorted(e["data"]["text"] for e in evs if e["data"]["operation"] == "remote-forward")
    # (OpenSSH asks for "localhost" when -R names no bind address.)
    assert texts == [f"streamlocal-forward {tmp_path}/r.sock", "tcpip-forward localhost:0"], texts
    # Each refusal names the session, like every other event, and comes before its end.
    (start,) = s.sessions()
    assert all(e["session"] == start["session"] for e in evs)


REFUSALS_CLIENT = r'''
import asyncio, sys
import asyncssh
from asyncssh.packet import String, UInt32

async def attempt(name, coro):
    try:
        r = await coro
        print(name, "accepted", r)
    except (asyncssh.Error, OSError) as e:
        print(name, "refused", getattr(e, "reason", e))

async def main(port, key):
    async with asyncssh.connect("127.0.0.1", int(port), username="agent", client_keys=[key],
                                known_hosts=None, agent_path=None, config=[]) as c:
        await attempt("direct-streamlocal", c.open_unix_connection("/run/sshd.sock"))
        await attempt("tun", c.open_tun())
        await attempt("subsystem", c.create_session(asyncssh.SSHClientSession, subsystem="netconf"))
        chan, _ = await c.create_session(asyncssh.SSHClientSession, "echo x")
        print("custom-request", await chan._make_request(b"hoopy-test@example.com", String("x")))
        print("global", await c._make_global_request(b"hoopy-global@example.com"))
        await chan.wait_closed()

asyncio.run(main(*sys.argv[1:]))
'''


def test_asyncssh_refusals_of_every_kind_are_recorded(setup):
    s = setup(allow=["exec echo *"])
    r = subprocess.run([sys.executable, "-c", REFUSALS_CLIENT, str(s.port), str(s.key)],
                       capture_output=True, text=True, timeout=60)
    out = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert out["direct-streamlocal"].startswith("refused hoopy: refused"), (r.stdout, r.stderr)
    assert out["tun"].startswith("refused hoopy: refused"), r.stdout
    assert out["subsystem"].startswith("refused"), r.stdout
    assert out["custom-request"] == "False", r.stdout
    assert out["global"].startswith("(82"), r.stdout  # MSG_REQUEST_FAILURE
    evs = refusals(s.gw, want=5)
    got = {e["data"]["operation"]: e["data"] for e in evs}
    assert set(got) == {"direct-streamlocal", "tun", "subsystem", "channel-request", "global-request"}, got
    assert got["direct-streamlocal"]["text"] == "direct-streamlocal /run/sshd.sock"
    assert "netconf" in got["subsystem"]["reason"]
    assert got["channel-request"]["text"] == "hoopy-test@example.com"
    assert got["channel-request"]["command"] == "echo x"
    assert got["global-request"]["text"] == "global request hoopy-global@example.com"
    for e in evs:
        assert e["data"]["reason"] and e["data"]["rule"] is None


FLOOD_CLIENT = r'''
import asyncio, sys
import asyncssh

async def main(port, key, n):
    async with asyncssh.connect("127.0.0.1", int(port), username="agent", client_keys=[key],
                                known_hosts=None, agent_path=None, config=[]) as c:
        for _ in range(int(n)):
            await c._make_global_request(b"flood@example.com")
        print("done")

asyncio.run(main(*sys.argv[1:]))
'''


def test_a_flood_of_refusals_is_counted_not_recorded_one_by_one(setup):
    from hoopy.ssh.server import MAX_REFUSALS_RECORDED

    s = setup(allow=["exec echo *"])
    n = MAX_REFUSALS_RECORDED + 150
    r = subprocess.run([sys.executable, "-c", FLOOD_CLIENT, str(s.port), str(s.key), str(n)],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "done", r.stderr
    deadline = time.monotonic() + 10
    while not s.gw.events("session.end") and time.monotonic() < deadline:
        time.sleep(0.1)
    ops = s.gw.events("operation")
    assert sum(e["outcome"] == "refused" for e in ops) == MAX_REFUSALS_RECORDED
    (summary,) = [e for e in ops if e["outcome"] == "suppressed"]
    assert summary["data"]["counts"] == {"global-request": 150}
    assert summary["seq"] < s.gw.events("session.end")[0]["seq"]
