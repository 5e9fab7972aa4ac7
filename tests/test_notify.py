"""Notifications through a real gateway process to a real webhook receiver that verifies
every signature; Slack's format; delivery that never blocks or fails an operation."""
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from hoopy.notify import messages
from tests.support import free_port, ident
from tests.test_core_e2e import curl, result, upstream  # noqa: F401  (fixture)

RECEIVER = Path(__file__).with_name("webhook_receiver.py")
AGENT, ALICE = ident("agent"), ident("alice")
SECRET = "whsec-test-" + "x" * 20


def start_receiver(tmp_path, name, fail_first=0):
    port = free_port()
    log = tmp_path / f"{name}.jsonl"
    log.touch()
    p = subprocess.Popen([sys.executable, str(RECEIVER), str(port), str(log), SECRET, str(fail_first)])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=1)
        except urllib.error.HTTPError:
            break
        except OSError:
            time.sleep(0.05)
    return p, port, log


def received(log):
    return [json.loads(x) for x in log.read_text().splitlines()]


def wait_for(fn, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
def receivers(tmp_path):
    procs = []

    def start(name, fail_first=0):
        p, port, log = start_receiver(tmp_path, name, fail_first)
        procs.append(p)
        return port, log

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


def test_signed_json_and_slack_notifications(hoopy_gateway, upstream, receivers, tmp_path):
    up_port, _ = upstream
    jport, jlog = receivers("json", fail_first=1)  # the first post fails: retried
    sport, slog = receivers("slack")
    hang_port, _ = receivers("hang")
    port = free_port()
    (tmp_path / "hook-secret").write_text(SECRET + "\n")
    gw = hoopy_gateway(f"""
{AGENT.toml()}
{ALICE.toml(kind="human", roles=["reviewer"])}

[connections.api]
type = "http"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up_port}"
approvals = "retry"

[[grants]]
identity = "agent"
connection = "api"
allow = ["GET /v1/*"]
approve = ["POST /v1/refunds"]

[[notify]]
url = "http://127.0.0.1:{jport}/json"
secret = "file:hook-secret"

[[notify]]
url = "env:SLACK_HOOK"
format = "slack"
events = ["approval.requested"]

[[notify]]
url = "http://127.0.0.1:{hang_port}/hang"
secret = "env:HOOK_SECRET"
""", env={"SLACK_HOOK": f"http://127.0.0.1:{sport}/slack", "HOOK_SECRET": SECRET},
                      gateway_extra='console_url = "https://hoopy.example:8099/ui/"')
    http = f"http://127.0.0.1:{port}"

    # A receiver that never answers costs the caller nothing.
    t0 = time.monotonic()
    code, body = result(curl("-X", "POST", "-d", "{\"amount\": 5}", http + "/v1/refunds", token=AGENT.token))
    assert code == 403 and json.loads(body)["status"] == "pending", body
    aid = json.loads(body)["approval"]
    assert time.monotonic() - t0 < 3
    code, _ = result(curl(http + "/v2/forbidden", token=AGENT.token))
    assert code == 403

    posts = wait_for(lambda: [p for p in received(jlog) if p["status"] == 204 and len(received(jlog)) >= 3])
    first = received(jlog)[0]
    assert first["status"] == 503  # retried after this
    for p in received(jlog):
        assert p["valid"], p  # every post verifies with the secret
        assert p["headers"]["Content-Type"] == "application/json"
    names = [json.loads(p["body"])["event"] for p in received(jlog) if p["status"] == 204]
    assert "approval.requested" in names and "operation.refused" in names
    req = next(json.loads(p["body"]) for p in received(jlog) if json.loads(p["body"])["event"] == "approval.requested")
    assert req["approval"] == aid and req["requester"] == "agent" and req["mode"] == "retry"
    assert req["operation"] == 'POST /v1/refunds\n\n{"amount": 5}'
    assert req["console"] == f"https://hoopy.example:8099/ui/approvals/{aid}"
    # The same delivery id on the retry, so a receiver can drop a duplicate.
    same = [p for p in received(jlog) if json.loads(p["body"])["delivery"] == json.loads(first["body"])["delivery"]]
    assert [p["status"] for p in same] == [503, 204]

    r = gw.hoopy("approve", aid, token=ALICE.token)
    assert r.returncode == 0, r.stderr
    decided = wait_for(lambda: [json.loads(p["body"]) for p in received(jlog)
                                if json.loads(p["body"])["event"] == "approval.decided"])
    assert decided[0]["state"] == "approved" and decided[0]["reviewer"] == "alice"

    slack = wait_for(lambda: received(slog))
    assert len(slack) == 1  # only the events it asked for
    msg = json.loads(slack[0]["body"])
    assert aid in msg["text"]
    texts = "\n".join(b["text"]["text"] for b in msg["blocks"])
    assert '```POST /v1/refunds\n\n{"amount": 5}```' in texts
    assert f"<https://hoopy.example:8099/ui/approvals/{aid}|" in texts

    # Every delivery outcome is an event; the secret URL's path is never recorded.
    outcomes = wait_for(lambda: [(e["data"]["target"], e["outcome"]) for e in gw.events("notification")
                                 if e["data"]["event"] == "approval.decided"])
    assert ("notify[0]", "delivered") in outcomes
    every = gw.events("notification")
    assert ("notify[0]", "retrying") in [(e["data"]["target"], e["outcome"]) for e in every]
    assert ("notify[1]", "delivered") in [(e["data"]["target"], e["outcome"]) for e in every]
    assert all("/slack" not in json.dumps(e) for e in every)
    assert gw.hoopy("audit", "verify").returncode == 0


def test_a_forged_or_stale_post_does_not_verify():
    body = b'{"event":"approval.requested"}'
    now = int(time.time())
    good = messages.signature(SECRET, now, body)
    assert messages.verify_signature(SECRET, good, body, now)
    assert not messages.verify_signature(SECRET, good, body + b" ", now)
    assert not messages.verify_signature("another", good, body, now)
    assert not messages.verify_signature(SECRET, good, body, now + 301)
    assert not messages.verify_signature(SECRET, "t=abc,v1=00", body, now)


def test_slack_text_cannot_escape_its_code_block_or_mention_anyone():
    payload = {"event": "approval.requested", "approval": "ap-1", "requester": "agent", "connection": "c",
               "protocol": "ssh", "rule": "exec `x`",
               "operation": "echo ```\n<!channel> *bold* <https://evil.example|click> & done"}
    msg = json.loads(messages.slack_body(payload, "https://h/ui/"))
    code = msg["blocks"][1]["text"]["text"]
    assert code.startswith("```") and code.endswith("```") and code[3:-3].count("```") == 0
    assert "<!channel>" not in code and "&lt;!channel&gt;" in code and "&amp; done" in code
    assert "<https://evil" not in json.dumps(msg)
    assert msg["blocks"][2]["text"]["text"] == "<https://h/ui/approvals/ap-1|Review in the hoopy console>"
