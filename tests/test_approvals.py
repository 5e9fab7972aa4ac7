"""Held operations, decided through the real admin API by the real `hoopy approve` / `hoopy deny`."""
import time

import pytest_twisted
from twisted.internet import defer

from hoopy.policy.service import Allow, Deny, Hold
from tests.gateway_fixtures import AGENT, ALICE, BOB, hoopy_cli, request, start_gateway


async def held(gw, who="agent"):
    s = gw.new_session(who, gw.config.connections["api"], "127.0.0.1:40000")
    await s.start()
    v = await gw.policy.decide(s, request("POST", "/v1/refunds"))
    assert isinstance(v, Hold)
    return s, v


@pytest_twisted.ensureDeferred
async def test_reviewer_approves_and_the_caller_resumes_at_once(tmp_path):
    gw = start_gateway(tmp_path)
    try:
        s, hold = await held(gw)
        resolved_at = []
        hold.resolution.addCallback(lambda v: resolved_at.append(time.monotonic()) or v)
        listing = await hoopy_cli(gw.config.path, "approvals")
        assert hold.id in listing.stdout and "agent" in listing.stdout and "POST /v1/refunds" in listing.stdout

        # Not a reviewer: refused, nothing changes.
        r = await hoopy_cli(gw.config.path, "approve", hold.id, token=AGENT.token)
        assert r.returncode == 1 and "not a reviewer" in r.stderr
        # No token at all.
        r = await hoopy_cli(gw.config.path, "approve", hold.id)
        assert r.returncode == 1 and "HOOPY_TOKEN" in r.stderr
        assert not hold.resolution.called

        r = await hoopy_cli(gw.config.path, "approve", hold.id, token=ALICE.token)
        done = time.monotonic()
        assert r.returncode == 0, r.stderr
        assert f"{hold.id} approved by alice" in r.stdout
        verdict = await hold.resolution
        assert verdict == Allow("POST /v1/refunds", hold.id)
        assert resolved_at and resolved_at[0] - done < 1.0  # resumed within a second

        # A second decision is refused: it is no longer pending.
        r = await hoopy_cli(gw.config.path, "deny", hold.id, token=BOB.token)
        assert r.returncode == 1 and "already approved" in r.stderr

        decided = [e for e in gw.store.reader().events() if e["kind"] == "approval.decided"]
        assert len(decided) == 1 and decided[0]["outcome"] == "approved"
        assert '"reviewer":"alice"' in decided[0]["data"] and '"requester":"agent"' in decided[0]["data"]
        row = gw.store.reader().approval(hold.id)
        assert row["state"] == "approved" and row["reviewer"] == "alice" and row["requester"] == "agent"
    finally:
        await gw.stopService()


@pytest_twisted.ensureDeferred
async def test_a_reviewer_can_never_approve_its_own_request(tmp_path):
    gw = start_gateway(tmp_path)
    try:
        s, hold = await held(gw, who="bob")  # bob is a reviewer, and the requester here
        r = await hoopy_cli(gw.config.path, "approve", hold.id, token=BOB.token)
        assert r.returncode == 1 and "cannot decide its own request" in r.stderr
        assert not hold.resolution.called and gw.approvals.get(hold.id) is not None
        r = await hoopy_cli(gw.config.path, "deny", hold.id, "--reason", "too large", token=ALICE.token)
        assert r.returncode == 0, r.stderr
        v = await hold.resolution
        assert isinstance(v, Deny) and "denied by alice: too large" in v.reason
    finally:
        await gw.stopService()


@pytest_twisted.ensureDeferred
async def test_approval_timeout_refuses(tmp_path):
    gw = start_gateway(tmp_path, approval_timeout="1s")
    try:
        s, hold = await held(gw)
        t0 = time.monotonic()
        v = await hold.resolution
        assert isinstance(v, Deny) and "timed out" in v.reason
        assert 0.9 < time.monotonic() - t0 < 3
        assert gw.store.reader().approval(hold.id)["state"] == "expired"
        r = await hoopy_cli(gw.config.path, "approve", hold.id, token=ALICE.token)
        assert r.returncode == 1 and "already expired" in r.stderr
    finally:
        await gw.stopService()


@pytest_twisted.ensureDeferred
async def test_admin_api_reads_need_a_reviewer_or_auditor(tmp_path):
    import json
    import urllib.request

    from twisted.internet.threads import deferToThread

    from tests.gateway_fixtures import CAROL

    gw = start_gateway(tmp_path)
    port = gw.config.gateway.admin_listen.split(":")[1]

    def get(path, token=None):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    try:
        s, hold = await held(gw)
        status, body = await deferToThread(get, "/approvals?state=pending")
        assert status == 401
        status, body = await deferToThread(get, "/approvals?state=pending", AGENT.token)
        assert status == 403
        status, body = await deferToThread(get, "/approvals?state=pending", CAROL.token)
        assert status == 200 and [a["id"] for a in json.loads(body)] == [hold.id]
        status, body = await deferToThread(get, f"/sessions/{s.id}/events", CAROL.token)
        kinds = [e["kind"] for e in json.loads(body)]
        assert status == 200 and kinds == ["session.start", "operation"]
        status, body = await deferToThread(get, "/metrics")
        assert status == 200 and b"hoopy_approvals_pending 1.0" in body
        assert b'hoopy_operations_total{connection="api",outcome="held",protocol="http"} 1.0' in body
        assert b'hoopy_sessions_open{connection="api",protocol="http"} 1.0' in body
        status, body = await deferToThread(get, "/health")
        assert status == 200 and json.loads(body)["approvals_pending"] == 1
    finally:
        await gw.stopService()
        # Shutdown ended the session and expired its approval, on the record.
        kinds = [e["kind"] for e in gw.store.reader().events()]
        assert kinds[-2:] in (["approval.expired", "session.end"], ["session.end", "approval.expired"])


def test_what_a_reviewer_reads_cannot_redraw_or_reorder_itself():
    from hoopy.policy.review import review_text

    body = 'amount=1000000&n=\x1b[2K\x1b[G    amount=1\x00 \u202eevil\u202c\tok\nnext'
    text = review_text("POST /v1/refunds", {"body": body})
    assert text == ("POST /v1/refunds\n\namount=1000000&n=\\x1b[2K\\x1b[G    amount=1\\x00 \\u202eevil\\u202c"
                    "\tok\nnext")
    sql = review_text("UPDATE t SET a = $1, b = $2, c = $3, d = $4", {"params": ["it's\x1b[8m", None, 2.5, False]})
    assert sql.endswith("-- parameters: $1 = 'it''s\\x1b[8m', $2 = NULL, $3 = 2.5, $4 = false")
