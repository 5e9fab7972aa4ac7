"""The core through a real gateway process and a real protocol (HTTP, driven with curl):
approvals and the four-eyes rule, fail-closed when the store cannot write, SIGTERM with
sessions open."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import free_port, ident

UPSTREAM = Path(__file__).with_name("test_http_upstream.py")
AGENT, ALICE, BOB = ident("agent"), ident("alice"), ident("bob")


@pytest.fixture
def upstream(tmp_path):
    port = free_port()
    log = tmp_path / "upstream.jsonl"
    log.touch()
    p = subprocess.Popen([sys.executable, str(UPSTREAM), str(port), str(log)])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            f"http://127.0.0.1:{port}/health"], capture_output=True, text=True)
        if r.stdout == "200":
            break
        time.sleep(0.1)
    yield port, log
    p.terminate()
    p.wait(10)


def seen(log: Path) -> list[dict]:
    return [json.loads(x) for x in log.read_text().splitlines()]


@pytest.fixture
def gateway(hoopy_gateway, upstream):
    up_port, _ = upstream
    port = free_port()
    body = f"""
{AGENT.toml()}
{ALICE.toml(kind="human", roles=["reviewer"])}
{BOB.toml(kind="human", roles=["reviewer"])}

[connections.api]
type = "http"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up_port}"

[[grants]]
identity = "agent"
connection = "api"
allow = ["GET /v1/*"]
approve = ["POST /v1/refunds"]

[[grants]]
identity = "bob"
connection = "api"
approve = ["POST /v1/refunds"]
"""
    gw = hoopy_gateway(body, approval_timeout="20s")
    gw.http = f"http://127.0.0.1:{port}"
    return gw


def curl(*args, token=None):
    cmd = ["curl", "-s", "-S", "-w", "\n%{http_code}", "--max-time", "30"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    return subprocess.Popen(cmd + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def result(p):
    out, err = p.communicate(timeout=40)
    body, _, code = out.rpartition("\n")
    return int(code), body


def test_four_eyes_in_the_real_process(gateway, upstream):
    _, log = upstream
    held = curl("-X", "POST", "-d", '{"amount": 5}', gateway.http + "/v1/refunds", token=BOB.token)
    pending = gateway.wait_pending(ALICE.token)
    aid = pending[0]["id"]
    assert pending[0]["requester"] == "bob" and pending[0]["operation"] == 'POST /v1/refunds\n\n{"amount": 5}'
    assert not any(r["path"] == "/v1/refunds" for r in seen(log))  # held: not upstream yet

    r = gateway.hoopy("approve", aid, token=BOB.token)
    assert r.returncode == 1 and "cannot decide its own request" in r.stderr
    r = gateway.hoopy("approve", aid, token=AGENT.token)
    assert r.returncode == 1 and "not a reviewer" in r.stderr
    time.sleep(0.3)
    assert held.poll() is None  # still waiting
    assert not any(r["path"] == "/v1/refunds" for r in seen(log))

    r = gateway.hoopy("approve", aid, token=ALICE.token)
    assert r.returncode == 0, r.stderr
    code, body = result(held)
    assert code == 200, body
    assert [r["method"] for r in seen(log) if r["path"] == "/v1/refunds"] == ["POST"]
    decided = gateway.events("approval.decided")
    assert decided[-1]["data"]["reviewer"] == "alice" and decided[-1]["data"]["requester"] == "bob"
    assert gateway.hoopy("audit", "verify").returncode == 0


def test_denied_request_never_reaches_upstream(gateway, upstream):
    _, log = upstream
    held = curl("-X", "POST", "-d", "{}", gateway.http + "/v1/refunds", token=AGENT.token)
    aid = gateway.wait_pending(ALICE.token)[0]["id"]
    r = gateway.hoopy("deny", aid, "--reason", "no", token=ALICE.token)
    assert r.returncode == 0, r.stderr
    code, body = result(held)
    assert code == 403 and json.loads(body)["approval"] == aid
    assert not any(r["path"] == "/v1/refunds" for r in seen(log))


def test_unwritable_store_refuses_operations(gateway, upstream):
    _, log = upstream
    code, _ = result(curl(gateway.http + "/v1/customers", token=AGENT.token))
    assert code == 200
    before = len(seen(log))
    locker = subprocess.Popen([sys.executable, "-c",
                               "import sqlite3,sys\n"
                               f"c=sqlite3.connect({str(gateway.db)!r},isolation_level=None)\n"
                               "c.execute('BEGIN EXCLUSIVE')\nprint('locked',flush=True)\nsys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert locker.stdout.readline().strip() == "locked"
        code, body = result(curl(gateway.http + "/v1/customers", token=AGENT.token))
        assert code in (403, 503), body
        assert "audit store" in body
        assert len(seen(log)) == before  # nothing went upstream unrecorded
        assert gateway.get("/health")[0] == 503
    finally:
        locker.stdin.close()
        locker.wait()
    code, _ = result(curl(gateway.http + "/v1/customers", token=AGENT.token))
    assert code == 200
    assert gateway.get("/health")[0] == 200
    assert gateway.hoopy("audit", "verify").returncode == 0


def test_sigterm_ends_open_sessions_on_the_record(gateway):
    held = curl("-X", "POST", "-d", "{}", gateway.http + "/v1/refunds", token=AGENT.token)
    aid = gateway.wait_pending(ALICE.token)[0]["id"]
    assert gateway.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    code, body = result(held)
    assert code != 200
    kinds = [(e["kind"], e["outcome"]) for e in gateway.events()]
    assert ("approval.expired", "expired") in kinds
    ends = [e for e in gateway.events("session.end")]
    assert ends and all(e["data"]["reason"] for e in ends)
    sessions = json.loads(gateway.hoopy("sessions", "--json").stdout)
    assert sessions and all(s["end"] for s in sessions)  # nothing left open
    assert gateway.hoopy("audit", "verify").returncode == 0
    row = json.loads(gateway.hoopy("approvals", "--all", "--json").stdout)
    assert [a["state"] for a in row if a["id"] == aid] == ["expired"]
