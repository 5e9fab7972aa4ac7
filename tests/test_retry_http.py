"""Retry-after-approval over HTTP with curl: 403 with the approval id at once, or 202 and a
status URL with Prefer: respond-async; the identical request runs once after approval."""
import json

import pytest

from tests.support import free_port, ident
from tests.test_core_e2e import curl, result, seen, upstream  # noqa: F401  (fixture)

AGENT, ALICE, OTHER = ident("agent"), ident("alice"), ident("other")


@pytest.fixture
def gateway(hoopy_gateway, upstream):
    up_port, _ = upstream
    port, hold_port = free_port(), free_port()
    body = f"""
{AGENT.toml()}
{OTHER.toml()}
{ALICE.toml(kind="human", roles=["reviewer"])}

[connections.api]
type = "http"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up_port}"
approvals = "retry"

[connections.held]
type = "http"
listen = "tcp:{hold_port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up_port}"

[[grants]]
identity = "agent"
connection = "api"
allow = ["GET /v1/*"]
approve = ["POST /v1/refunds"]

[[grants]]
identity = "other"
connection = "api"
approve = ["POST /v1/refunds"]

[[grants]]
identity = "agent"
connection = "held"
approve = ["POST /v1/refunds"]
"""
    gw = hoopy_gateway(body)
    gw.http = f"http://127.0.0.1:{port}"
    gw.held = f"http://127.0.0.1:{hold_port}"
    return gw


def post(url, body, token, *extra):
    return result(curl("-X", "POST", "-H", "Content-Type: application/json", "-d", body, *extra,
                       url + "/v1/refunds", token=token))


def refunds(log):
    return [r for r in seen(log) if r["path"] == "/v1/refunds"]


def test_refused_at_once_then_the_identical_request_runs_once(gateway, upstream):
    _, log = upstream
    code, body = post(gateway.http, '{"amount": 5}', AGENT.token)
    assert code == 403, body
    out = json.loads(body)
    aid = out["approval"]
    assert out["status"] == "pending" and out["rule"] == "POST /v1/refunds"
    assert out["error"].startswith(f"held for approval {aid}")
    assert "run the same request again after it is approved" in out["error"]
    assert out["status_url"] == f"/.hoopy/approvals/{aid}"
    assert refunds(log) == []  # nothing went upstream

    # Its status, with the caller's own token; nobody else's token reads it.
    code, body = result(curl(gateway.http + out["status_url"], token=AGENT.token))
    assert code == 200 and json.loads(body)["status"] == "pending", body
    code, body = result(curl(gateway.http + out["status_url"], token=OTHER.token))
    assert code == 404, body
    assert refunds(log) == [] and not any(r["path"].startswith("/.hoopy") for r in seen(log))

    assert gateway.hoopy("approve", aid, token=ALICE.token).returncode == 0
    code, body = result(curl(gateway.http + out["status_url"], token=AGENT.token))
    assert json.loads(body)["status"] == "approved" and "usable_until" in json.loads(body)

    # Another identity, or another body: refused (each its own approval).
    code, body = post(gateway.http, '{"amount": 5}', OTHER.token)
    assert code == 403 and json.loads(body)["approval"] != aid
    code, body = post(gateway.http, '{"amount": 500}', AGENT.token)
    assert code == 403 and json.loads(body)["approval"] != aid
    assert refunds(log) == []
    # The identical request runs, once.
    code, body = post(gateway.http, '{"amount": 5}', AGENT.token)
    assert code == 200, body
    assert [r["method"] for r in refunds(log)] == ["POST"]
    code, body = post(gateway.http, '{"amount": 5}', AGENT.token)
    assert code == 403 and json.loads(body)["approval"] != aid
    assert len(refunds(log)) == 1
    code, body = result(curl(gateway.http + f"/.hoopy/approvals/{aid}", token=AGENT.token))
    assert json.loads(body)["status"] == "used"
    ran = [e for e in gateway.events("operation") if e["outcome"] == "allowed" and e["data"].get("approval") == aid]
    assert len(ran) == 1
    assert gateway.hoopy("audit", "verify").returncode == 0


def test_prefer_respond_async_gets_202_even_where_the_connection_holds(gateway, upstream):
    _, log = upstream
    code, body = post(gateway.held, '{"amount": 7}', AGENT.token, "-H", "Prefer: wait=5, respond-async",
                      "-D", "-")
    assert code == 202, body
    head, _, rest = body.partition("\n\n")  # (text mode: CRLF read as LF)
    out = json.loads(rest)
    aid = out["approval"]
    assert out["status"] == "pending" and out["status_url"] == f"/.hoopy/approvals/{aid}"
    assert "error" not in out and aid in out["message"]
    assert f"location: /.hoopy/approvals/{aid}" in head.lower()
    assert "preference-applied: respond-async" in head.lower()
    assert refunds(log) == []
    assert gateway.hoopy("approve", aid, token=ALICE.token).returncode == 0
    # Resent without the preference: runs (the approval was asked for in retry mode).
    code, body = post(gateway.held, '{"amount": 7}', AGENT.token)
    assert code == 200, body
    assert len(refunds(log)) == 1
