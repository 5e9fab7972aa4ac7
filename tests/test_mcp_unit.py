"""In-memory tests of the MCP gateway's pure parts: rules, lists, wire checks, SSE, masking,
pinning digests, the causal registry and per-child credentials."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from hoopy import config as cm
from hoopy.causal import InFlight, ToolCall
from hoopy.http.bodies import Masker
from hoopy.identity import Directory, ScramVerifier, parse_ssh_key
from hoopy.mcp import lists, wire
from hoopy.mcp.conversation import MCPSession
from hoopy.mcp.pinning import Pins, digest
from hoopy.mcp.results import mask_result
from hoopy.mcp.rules import ToolUnit, parse
from hoopy.mcp.sse import SSEError, SSEParser
from hoopy.policy.masking import parse_detector
from hoopy.policy.rules import RuleError, Unit
from hoopy.postgres import scram
from tests.support import ident


def test_tool_rules_match_names_and_arguments():
    m = parse('tool run_* command="ls *" opts.depth=3')
    assert m(ToolUnit("tool", "run_sh", args={"command": "ls -l", "opts": {"depth": 3}}))
    assert not m(ToolUnit("tool", "run_sh", args={"command": "rm -rf /", "opts": {"depth": 3}}))
    assert not m(ToolUnit("tool", "run_sh", args={"command": "ls"}))  # a missing argument matches nothing
    assert not m(ToolUnit("tool", "other", args={"command": "ls -l", "opts": {"depth": 3}}))
    # other JSON as compact JSON; strings as written
    assert parse("tool q 'flags=[[]\"a\",*'")(ToolUnit("tool", "q", args={"flags": ["a", "b"]}))  # [ is a glob class
    assert not parse("tool q 'flags=[[]\"a\",*'")(ToolUnit("tool", "q", args={"flags": ["b", "a"]}))
    assert parse("tool q n=1*")(ToolUnit("tool", "q", args={"n": 12}))
    assert not parse("tool q n=1*")(ToolUnit("tool", "q", args={"n": "x1"}))
    assert parse("resource file:///srv/*")(Unit("resource", "file:///srv/a.txt"))
    assert not parse("resource file:///srv/*")(Unit("tool", "file:///srv/a.txt"))
    assert parse("sampling")(Unit("sampling", None))
    for bad in ("tool", "tool x notanarg", "resource", "prompt a b", "sampling x", "exec ls", 'tool "x'):
        with pytest.raises(RuleError):
            parse(bad)


def _grants(tmp_path, allow=(), approve=(), deny=()):
    a = ident("a")
    q = lambda xs: json.dumps(list(xs))  # noqa: E731
    p = tmp_path / "h.toml"
    p.write_text(a.toml() + f"""
[connections.t]
type = "mcp"
listen = "tcp:0"
upstream = "http://127.0.0.1:9/mcp"
[[grants]]
identity = "a"
connection = "t"
allow = {q(allow)}
approve = {q(approve)}
deny = {q(deny)}
""")
    cfg = cm.load(p)
    return lists.grants_of(cfg, "a", "t")


def test_lists_show_what_some_rule_could_cover(tmp_path):
    g = _grants(tmp_path, allow=["tool read_*", "tool run command=ls*"], approve=["tool deploy"],
                deny=["tool read_secrets", "tool run command=rm*"])
    assert lists.visible(g, "tool", "read_file") and lists.visible(g, "tool", "deploy")
    assert not lists.visible(g, "tool", "read_secrets")  # an unconditional deny hides it
    assert lists.visible(g, "tool", "run")  # a deny with arguments refuses only those
    assert not lists.visible(g, "tool", "write_file") and not lists.visible(g, "tool", None)
    assert not lists.granted(g, "sampling")


def test_mcp_settings_are_checked(tmp_path):
    a = ident("a")
    p = tmp_path / "h.toml"
    p.write_text(a.toml() + """
[connections.t]
type = "mcp"
listen = "tcp:0"
upstream = "http://127.0.0.1:9/mcp"
command = ["x"]
env = { K = "{nope}", T = "{token}" }
run_as = "nobody"
allowed_origins = ["not an origin"]

[connections.u]
type = "mcp"
listen = "tcp:0"
upstream = "http://127.0.0.1:9/mcp"
acts_as = "nobody-here"
""")
    with pytest.raises(cm.ConfigError) as e:
        cm.load(p)
    text = str(e.value)
    for key in ("connections.t.upstream", "connections.t.env.K", "connections.t.env", "connections.t.allowed_origins[0]"):
        assert key in text
    assert "unknown placeholder {nope}" in text and "set acts_as" in text
    assert "connections.u.acts_as: unknown identity 'nobody-here'" in text


def test_modern_envelope_and_headers_are_checked():
    meta = {wire.META_VERSION: "2026-07-28", wire.META_CLIENT_CAPS: {}, wire.META_CLIENT_INFO: {"name": "c"}}
    msg = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "ä x", "_meta": meta}}
    good = {"mcp-protocol-version": ["2026-07-28"], "mcp-method": ["tools/call"],
            "mcp-name": [wire.encode_header_value("ä x")]}
    env = wire.check_modern(msg, lambda h: good.get(h, []))
    assert env["version"] == "2026-07-28" and env["client_info"] == {"name": "c"}
    for change in ({"mcp-name": ["other"]}, {"mcp-method": ["tools/list"]}, {"mcp-protocol-version": []},
                   {"mcp-method": ["tools/call", "tools/call"]}):
        with pytest.raises(wire.WireError) as e:
            wire.check_modern(msg, lambda h: {**good, **change}.get(h, []))
        assert e.value.code == wire.HEADER_MISMATCH
    with pytest.raises(wire.WireError) as e:
        wire.check_modern({**msg, "params": {"name": "x"}}, lambda h: good.get(h, []))
    assert e.value.code == wire.INVALID_PARAMS
    old = {**meta, wire.META_VERSION: "2099-01-01"}
    with pytest.raises(wire.WireError) as e:
        wire.check_modern({**msg, "params": {"name": "ä x", "_meta": old}},
                          lambda h: {**good, "mcp-protocol-version": ["2099-01-01"]}.get(h, []))
    assert e.value.code == wire.UNSUPPORTED_VERSION
    # the bridge's envelope is added and removed whole
    p = wire.add_envelope({"_meta": {"progressToken": 1}}, "2026-07-28", {"name": "c"}, {})
    assert wire.strip_envelope(p) == {"_meta": {"progressToken": 1}}
    assert wire.modern_headers({"method": "resources/read", "params": {"uri": "a b "}}, "2026-07-28")["Mcp-Name"] \
        .startswith("=?base64?")


def test_messages_are_one_bounded_jsonrpc_object():
    for bad in (b"[]", b'{"jsonrpc":"1.0","id":1,"method":"x"}', b'{"jsonrpc":"2.0","id":true,"method":"x"}',
                b'{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}'):
        with pytest.raises(wire.WireError):
            wire.check_message(wire.loads(bad, 100))
    with pytest.raises(wire.WireError) as e:
        wire.loads(b"{" * 50, 10)
    assert "larger" in str(e.value)
    with pytest.raises(wire.WireError):
        wire.loads(b"{nope", 100)


def test_sse_parser_framing_and_bounds():
    p = SSEParser(64)
    got = p.feed(b"event: message\r") + p.feed(b"\ndata: {\"a\":1}\r\n\r\n: comment\n\nid: 7\ndata: x\ndata: y\n\n")
    assert [(e.event, e.data, e.id) for e in got] == [("message", '{"a":1}', None), ("message", "x\ny", "7")]
    with pytest.raises(SSEError):
        SSEParser(16).feed(b"data: " + b"x" * 40)
    with pytest.raises(SSEError):
        SSEParser(16).feed(b"data: " + b"y" * 40 + b"\n")


def test_results_masked_in_text_structured_content_and_embedded_resources():
    m = Masker(("ssn",), (parse_detector("email"), parse_detector("credit_card")))
    result = {"content": [{"type": "text", "text": '{"ssn": "1", "mail": "a@b.example"}'},
                          {"type": "text", "text": "card 4111 1111 1111 1111 please"},
                          {"type": "resource", "resource": {"uri": "x:", "text": "c@d.example"}},
                          {"type": "image", "data": "AAAA"}],
              "structuredContent": {"result": '{"ssn": "2"}', "who": {"ssn": 3, "mail": "e@f.example"}}}
    out, counts = mask_result(m, result)
    text = json.dumps(out)
    for secret in ("a@b.example", "4111", "c@d.example", "e@f.example", '"2"', ": 3"):
        assert secret not in text
    assert counts["email"] == 3 and counts["field:ssn"] == 3 and counts["credit_card"] == 1
    assert out["content"][3] == {"type": "image", "data": "AAAA"}
    same, none = mask_result(m, {"content": [{"type": "text", "text": "nothing here"}]})
    assert not none and same == {"content": [{"type": "text", "text": "nothing here"}]}


def test_pin_digest_covers_the_definition_only():
    t = {"name": "x", "description": "d", "inputSchema": {"type": "object"}}
    assert digest(t) == digest({**t, "icons": []}) != digest({**t, "description": "d2"})
    assert digest(t) != digest({**t, "annotations": {"destructiveHint": True}})


def test_a_listed_tool_without_a_string_name_is_hidden_and_never_pinned(tmp_path):
    """An upstream's tools/list is untrusted: a nameless tool, or one named by a list or an object,
    once crashed the whole listing (an unhashable pin key) or was pinned as tool null."""
    from twisted.internet import defer

    recorded = []

    class Gateway:
        def record(self, kind, outcome, **data):
            recorded.append((kind, data["tool"]))
            return defer.succeed(None)

    class Connection:
        name = "t"

    class Service:
        pins = Pins(Gateway(), Connection())
        definitions: dict = {}

    class Session:
        def trailing_event(self, *a, **kw):
            pass

    conv = object.__new__(MCPSession)  # only what _list reads: no gateway, no upstream
    conv.service, conv.session, conv.era = Service(), Session(), "modern"
    conv.grants = _grants(tmp_path, allow=["tool *"])
    tools = [{"name": "read_file"}, {"description": "no name"}, {"name": None}, {"name": ["x"]},
             {"name": {"a": 1}}, {"name": 5}, "not a tool"]

    async def forward(msg, reply):
        return {"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}}

    conv._forward = forward
    out = []
    defer.ensureDeferred(conv._list({"method": "tools/list"}, None)).addBoth(out.append)
    assert out and isinstance(out[0], dict), out
    assert out[0]["result"]["tools"] == [{"name": "read_file"}]
    assert recorded == [("mcp.pin", "read_file")] and list(Service.pins.pinned) == ["read_file"]
    assert list(Service.definitions) == ["read_file"]
    for bad in (None, ["x"], 5):
        with pytest.raises(TypeError):
            Service.pins.check({"name": bad})


def _call(id_, actor="svc", child=None):
    return ToolCall(id=id_, session="s", request=1, tool="t", connection="m", caller="agent",
                    acts_as=actor, child=child, client="c", model=None)


class _S:
    def __init__(self, identity, credential=None, protocol="ssh"):
        self.identity, self.credential, self.protocol = identity, credential, protocol


def test_causes_exact_per_child_and_every_call_when_ambiguous():
    f = InFlight()
    a, b = _call("tc-a", child="cr-1"), _call("tc-b", child="cr-2")
    f.begin(a)
    f.begin(b)
    assert f.causes(_S("svc", "cr-1")) == [a]  # exact
    assert {c.id for c in f.causes(_S("svc"))} == {"tc-a", "tc-b"}  # the static key: every call in flight
    assert f.causes(_S("svc", "cr-9")) == []  # a credential whose child has no call in flight
    assert f.causes(_S("other")) == [] and f.causes(_S("svc", protocol="mcp")) == []
    f.end(a)
    f.end(b)
    assert f.causes(_S("svc")) == []


def test_per_child_credentials_authenticate_until_revoked_or_expired():
    now = [1000.0]
    agent = ident("svc")
    from hoopy.identity import Identity

    base = Identity("svc", "agent", frozenset(), (), bytes.fromhex(agent.sha256),
                    ScramVerifier.make(agent.token))
    d = Directory({"svc": base}, clock=lambda: now[0])
    c = d.issue("svc", 60)
    assert d.by_token(c.token).credential == c.id and d.by_token(agent.token).credential is None
    assert d.authenticate_token("svc", c.token).credential == c.id
    pub = parse_ssh_key(c.ssh_key.algorithm + " " + __import__("base64").b64encode(c.ssh_key.blob).decode())
    assert d.match_ssh_key("svc", pub.algorithm, pub.blob).credential == c.id
    assert d.match_ssh_key("other", pub.algorithm, pub.blob) is None
    # SCRAM: the per-child token proves itself against its own verifier (same salt as the identity's)
    for password, expect in ((c.token, c.id), (agent.token, None)):
        server = scram.ScramServer(base.token_scram, None, "svc", d.scram_alternates("svc"))
        client = scram.ScramClient(password, [scram.MECH], None)
        sf = server.first(scram.MECH, client.first())
        final = client.final(sf)
        server.final(final)
        assert server.credential == expect
    bad = scram.ScramServer(base.token_scram, None, "svc", d.scram_alternates("svc"))
    cl = scram.ScramClient("hpy_wrong", [scram.MECH], None)
    with pytest.raises(scram.ScramError):
        bad.final(cl.final(bad.first(scram.MECH, cl.first())))
    now[0] += 61  # expired
    assert d.by_token(c.token) is None and d.match_ssh_key("svc", pub.algorithm, pub.blob) is None
    c2 = d.issue("svc", 60)
    d.revoke(c2.id)
    assert d.by_token(c2.token) is None and d.scram_alternates("svc") == {}
