"""Retry-after-approval in the core: refused at once with the approval id; after approval the
identical operation, by the same identity on the same connection within approval_ttl, runs
once; consumed atomically in the store (also across two nodes on one PostgreSQL state)."""
import sqlite3

import pytest_twisted
from twisted.internet import defer, task

from hoopy.policy.service import Allow, Deny, Hold
from tests.gateway_fixtures import ALICE, BOB, hoopy_cli, request, start_gateway
from tests.test_pgstore import pg  # noqa: F401  (the fixture: a fresh PostgreSQL database)

RETRY = 'approvals = "retry"'


def sleep(seconds):
    from twisted.internet import reactor

    return task.deferLater(reactor, seconds, lambda: None)


async def session(gw, who="agent"):
    s = gw.new_session(who, gw.config.connections["api"], "127.0.0.1:40000")
    await s.start()
    return s


def refund(amount=5, **detail):
    return request("POST", "/v1/refunds", body=f'{{"amount": {amount}}}', **detail)


def events(gw, kind=None):
    import json

    rows = list(gw.store.reader().events())
    return [dict(r, data=json.loads(r["data"])) for r in rows if kind is None or r["kind"] == kind]


async def approve(gw, aid, token=ALICE.token):
    r = await hoopy_cli(gw.config.path, "approve", aid, token=token)
    assert r.returncode == 0, r.stderr
    return r


@pytest_twisted.ensureDeferred
async def test_refused_at_once_then_runs_once_after_approval(tmp_path):
    gw = start_gateway(tmp_path, api_extra=RETRY)
    try:
        s = await session(gw)
        v = await s.decide(refund())
        assert isinstance(v, Deny) and v.status == "pending" and v.approval.startswith("ap-")
        aid = v.approval
        assert v.reason.startswith(f"held for approval {aid}")
        assert "run the same request again after it is approved" in v.reason
        assert f"hoopy approve {aid}" in v.detail and "15m" in v.detail
        row = gw.store.reader().approval(aid)
        assert row["state"] == "pending" and row["mode"] == "retry" and row["ttl_s"] == 900

        # Asked again before anyone decided: the same approval, not a second one in the inbox.
        v2 = await s.decide(refund())
        assert isinstance(v2, Deny) and v2.approval == aid and "still pending" in v2.reason
        assert [a["id"] for a in gw.store.reader().approvals("pending")] == [aid]

        await approve(gw, aid)
        # A different operation (another body) is not what was approved.
        v3 = await s.decide(refund(6))
        assert isinstance(v3, Deny) and v3.approval != aid and v3.status == "pending"
        # The identical one runs, once.
        v4 = await s.decide(refund())
        assert v4 == Allow("POST /v1/refunds", aid)
        assert gw.store.reader().approval(aid)["state"] == "used"
        assert gw.store.reader().approval(aid)["used_session"] == s.id
        ran = [e for e in events(gw, "operation") if e["outcome"] == "allowed"]
        assert len(ran) == 1 and ran[0]["data"]["approval"] == aid and ran[0]["data"]["approved_by"] == "alice"
        # And never twice: the next identical one needs a new approval.
        v5 = await s.decide(refund())
        assert isinstance(v5, Deny) and v5.approval not in (aid, v3.approval) and v5.status == "pending"
        r = await hoopy_cli(gw.config.path, "audit", "verify")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        await gw.stopService()


@pytest_twisted.ensureDeferred
async def test_another_identity_or_a_later_time_is_refused(tmp_path):
    gw = start_gateway(tmp_path, api_extra=RETRY + '\napproval_ttl = "1s"',
                       extra='[[grants]]\nidentity = "alice"\nconnection = "api"\napprove = ["POST /v1/refunds"]\n')
    try:
        agent = await session(gw)
        v = await agent.decide(refund())
        await approve(gw, v.approval, token=BOB.token)
        # Another identity sending the identical request: not its approval.
        alice = await session(gw, "alice")
        va = await alice.decide(refund())
        assert isinstance(va, Deny) and va.approval != v.approval
        assert gw.store.reader().approval(v.approval)["state"] == "approved"
        # After approval_ttl it is no longer usable.
        await sleep(1.2)
        vl = await agent.decide(refund())
        assert isinstance(vl, Deny) and vl.approval != v.approval
        assert gw.store.reader().approval(v.approval)["state"] == "approved"  # never used
        st = await agent.approval_status(v.approval)
        assert st["status"] == "expired" and "approval_ttl" in st["reason"]
        assert await alice.approval_status(v.approval) is None  # not hers to read
    finally:
        await gw.stopService()


@pytest_twisted.ensureDeferred
async def test_the_approval_outlives_the_session_that_asked(tmp_path):
    gw = start_gateway(tmp_path, api_extra=RETRY)
    try:
        s1 = await session(gw)
        aid = (await s1.decide(refund())).approval
        await s1.end("closed")
        for d in s1.cancel_holds("the client went away"):
            await d
        assert gw.store.reader().approval(aid)["state"] == "pending"
        await approve(gw, aid)
        s2 = await session(gw)
        assert await s2.decide(refund()) == Allow("POST /v1/refunds", aid)
    finally:
        await gw.stopService()
    assert gw.store.reader().approval(aid)["state"] == "used"


@pytest_twisted.ensureDeferred
async def test_the_grant_says_how_and_hold_stays_the_default(tmp_path):
    # The connection says retry, the grant says hold: the grant wins.
    gw = start_gateway(tmp_path, api_extra=RETRY, grant_extra='approvals = "hold"')
    try:
        s = await session(gw)
        v = await s.decide(refund())
        assert isinstance(v, Hold)
        # A caller that asks not to wait (HTTP Prefer: respond-async) is refused at once instead,
        # and its approval is a retry approval whatever the grant says.
        v2 = await s.decide(refund(7), approvals="retry")
        assert isinstance(v2, Deny) and v2.status == "pending"
        await approve(gw, v2.approval)
        assert await s.decide(refund(7)) == Allow("POST /v1/refunds", v2.approval)
        await approve(gw, v.id)
        assert await v.resolution == Allow("POST /v1/refunds", v.id)
    finally:
        await gw.stopService()
    (tmp_path / "b").mkdir()
    gw2 = start_gateway(tmp_path / "b")
    try:
        s = await session(gw2)
        assert isinstance(await s.decide(refund()), Hold)  # no key: hold, the contract
    finally:
        await gw2.stopService()


@pytest_twisted.ensureDeferred
async def test_two_identical_operations_at_once_run_once(tmp_path):
    gw = start_gateway(tmp_path, api_extra=RETRY)
    try:
        s = await session(gw)
        aid = (await s.decide(refund())).approval
        await approve(gw, aid)
        verdicts = await defer.gatherResults([s.decide(refund()) for _ in range(4)])
        allowed = [v for v in verdicts if isinstance(v, Allow)]
        assert allowed == [Allow("POST /v1/refunds", aid)]
        assert all(isinstance(v, Deny) and v.approval != aid for v in verdicts if not isinstance(v, Allow))
    finally:
        await gw.stopService()


@pytest_twisted.ensureDeferred
async def test_nobody_approves_what_their_own_tool_call_caused(tmp_path):
    gw = start_gateway(tmp_path, api_extra=RETRY)
    try:
        s = await session(gw)
        # The MCP gateway records which tool call (and whose) caused an operation: bob's call.
        caused = {"identity": "bob", "session": "s-mcp", "tool_call": "call-1", "tool": "refund"}
        v = await s.decide(refund(caused_by=caused))
        r = await hoopy_cli(gw.config.path, "approve", v.approval, token=BOB.token)
        assert r.returncode == 1 and "tool call caused" in r.stderr
        # Several calls in flight (honestly ambiguous): none of their identities decides.
        v2 = await s.decide(refund(9, caused_by=[caused, {"identity": "alice", "tool_call": "c2"}]))
        for tok in (BOB.token, ALICE.token):
            r = await hoopy_cli(gw.config.path, "approve", v2.approval, token=tok)
            assert r.returncode == 1, r.stdout
        await approve(gw, v.approval, token=ALICE.token)
        # The agent's retry comes from another tool call: still the identical operation.
        again = await s.decide(refund(caused_by={**caused, "tool_call": "call-2"}))
        assert again == Allow("POST /v1/refunds", v.approval)
    finally:
        await gw.stopService()


@pytest_twisted.ensureDeferred
async def test_an_edited_approval_row_is_found_by_verify(tmp_path):
    gw = start_gateway(tmp_path, api_extra=RETRY)
    try:
        s = await session(gw)
        aid = (await s.decide(refund())).approval
    finally:
        await gw.stopService()
    # Someone with the database file widens the approval to another operation.
    db = sqlite3.connect(tmp_path / "hoopy.db")
    db.execute("UPDATE approvals SET canonical = ? WHERE id = ?", ("0" * 64, aid))
    db.commit()
    db.close()
    r = await hoopy_cli(gw.config.path, "audit", "verify")
    assert r.returncode == 1 and "canonical" in r.stdout


@pytest_twisted.ensureDeferred
async def test_two_nodes_on_one_postgres_state_cannot_both_run_it(pg, tmp_path):
    from tests.test_pgstore import admin_of, start_node

    a = start_node(tmp_path, pg, "gw-a", api_extra=RETRY)
    b = start_node(tmp_path, pg, "gw-b", api_extra=RETRY)
    try:
        sa, sb = await session(a), await session(b)
        aid = (await sa.decide(refund())).approval
        # Asked again through the other node while pending: the same approval.
        again = await sb.decide(refund())
        assert again.approval == aid and again.status == "pending"
        # Decided on node b (which does not hold it).
        r = await hoopy_cli(b.config.path, "approve", aid, "--admin", admin_of(b), token=ALICE.token)
        assert r.returncode == 0, r.stderr
        # Both nodes at once, twice each: one run in all.
        verdicts = await defer.gatherResults([sa.decide(refund()), sb.decide(refund()),
                                              sa.decide(refund()), sb.decide(refund())])
        allowed = [v for v in verdicts if isinstance(v, Allow)]
        assert allowed == [Allow("POST /v1/refunds", aid)], verdicts
        row = a.store.reader().approval(aid)
        assert row["state"] == "used" and row["used_session"] in (sa.id, sb.id)
        runs = [e for e in events(a, "operation") if e["outcome"] == "allowed" and e["data"].get("approval") == aid]
        assert len(runs) == 1
        r = await hoopy_cli(a.config.path, "audit", "verify")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        await a.stopService()
        await b.stopService()


def test_the_configuration_names_each_problem(tmp_path, monkeypatch):
    from hoopy import config as cm
    from tests.gateway_fixtures import write_config

    monkeypatch.setenv("HOOK_URL", "https://hooks.example/T0/B0/secret")
    p = write_config(tmp_path, api_extra='approvals = "later"\napproval_ttl = "soon"',
                     grant_extra='approvals = "retry"\napproval_ttl = "2m"', extra="""
[[notify]]
url = "https://hooks.example/x"

[[notify]]
url = "ftp://hooks.example/x"
secret = "inline-secret"
events = ["approval.requested", "approval.exploded"]

[[notify]]
url = "env:HOOK_URL"
format = "slack"
colour = "red"
""")
    text = p.read_text().replace("[gateway]\n", '[gateway]\nconsole_url = "hoopy.example"\n'
                                 'admin_tls_cert = "file:nowhere.pem"\n', 1)
    p.write_text(text)
    try:
        cm.load(p)
        raise AssertionError("accepted")
    except cm.ConfigError as e:
        problems = {str(x) for x in e.problems}
    for want in ('connections.api.approvals: \'later\' is not one of hold, retry',
                 "connections.api.approval_ttl: 'soon' is not a duration such as \"30s\" or \"5m\"",
                 'notify[0].secret: is required for format = "json" (it signs each post: Hoopy-Signature)',
                 "notify[1].url: must be an http:// or https:// URL (or an env:/file: reference to one)",
                 'notify[1].secret: secrets are never inline: use "env:NAME" or "file:/path"',
                 "notify[1].events[1]: 'approval.exploded' is not one of approval.requested, approval.decided, "
                 "approval.expired, operation.refused, audit.failed",
                 "notify[2].colour: unknown key",
                 "gateway.console_url: must be an http:// or https:// URL (where the console is reached)",
                 "gateway.admin_tls_key: admin_tls_cert and admin_tls_key go together"):
        assert want in problems, (want, problems)
    # The good parts parse: a grant's own mode and ttl; a Slack URL from the environment.
    p = write_config(tmp_path, grant_extra='approvals = "retry"\napproval_ttl = "2m"',
                     extra='[[notify]]\nurl = "env:HOOK_URL"\nformat = "slack"\n')
    cfg = cm.load(p)
    g = next(g for g in cfg.grants if g.identity == "agent")
    assert (g.approvals, g.approval_ttl) == ("retry", 120.0)
    assert cfg.connections["api"].approvals == "hold" and cfg.connections["api"].approval_ttl == 900.0
    assert cfg.notify[0].url == "https://hooks.example/T0/B0/secret" and "secret" not in repr(cfg.notify[0])
