"""A hostile MCP client against a real ``twistd -n hoopy``, over Streamable HTTP.

The MCP server behind it is tests/wire_peers.LenientMCPServer on a raw-socket HTTP server: a
handshake-era server that, as some do, looks tools up by a case-folded, NFKC-normalized name, and
lists what it ran. Identity ``mcp-a`` may call any tool but ``delete_*``; ``mcp-b`` only ``read_*``.
"""
from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from tests.support import HoopyProcess, free_port, ident
from tests.wire_peers import LenientMCPServer, RawUpstream, raw, statuses

A, B = ident("mcp-a"), ident("mcp-b")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    up = RawUpstream()
    srv = LenientMCPServer(up)
    port = free_port()
    body = A.toml(scram=False) + B.toml(scram=False) + f"""
[connections.tools]
type = "mcp"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up.port}/mcp"
upstream_timeout = "5s"
head_timeout = "4s"

[[grants]]
identity = "mcp-a"
connection = "tools"
allow = ["tool *", "resource *", "prompt *"]
deny = ["tool delete_*", "tool echo path=/etc/*", "resource file:///etc/*", "prompt secret_*"]

[[grants]]
identity = "mcp-b"
connection = "tools"
allow = ["tool read_*", "tool echo path=/srv/reports/*", "resource file:///srv/reports/*"]
"""
    gw = HoopyProcess(tmp_path_factory.mktemp("mcpwire"), body)
    gw.start()
    gw.port, gw.url, gw.srv = port, f"http://127.0.0.1:{port}/mcp", srv
    yield gw
    gw.stop()
    up.stop()
    assert "Traceback" not in gw.log_text(), gw.log_text()[-4000:]


def post(world, msg, headers=None, data: bytes | None = None):
    body = data if data is not None else json.dumps(msg).encode()
    r = urllib.request.Request(world.url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **(headers or {})})
    try:
        with urllib.request.urlopen(r, timeout=15) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def other(world, method, headers):
    r = urllib.request.Request(world.url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(r, timeout=5) as resp:
            return resp.status, resp.read(40)
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def session(world, who) -> dict:
    status, headers, body = post(world, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}},
        {"Authorization": f"Bearer {who.token}"})
    assert status == 200, body
    h = {"Authorization": f"Bearer {who.token}", "Mcp-Session-Id": headers["Mcp-Session-Id"],
         "MCP-Protocol-Version": "2025-06-18"}
    assert post(world, {"jsonrpc": "2.0", "method": "notifications/initialized"}, h)[0] == 202
    return h


def call(world, h, name, id_=5, args=None):
    status, _, body = post(world, {"jsonrpc": "2.0", "id": id_, "method": "tools/call",
                                   "params": {"name": name, "arguments": args or {}}}, h)
    return status, json.loads(body)


# --- tool names --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["DELETE_DB", "Delete_db", "\uff44elete_db", "\uff24\uff25\uff2c\uff25\uff34\uff25_\uff24\uff22",
                                  " delete_db", "delete_db ", "delete_db\u200b", "de\u00adlete_db", "delete_\u064b"])
def test_a_tool_name_in_another_case_or_unicode_form_is_refused(world, name):
    """A deny rule names delete_*; a server that folds case or Unicode would run delete_db for
    these. Only names the server lists, exactly, are called."""
    h = session(world, A)
    ran = len(world.srv.calls)
    status, out = call(world, h, name)
    assert status == 200 and out["result"]["isError"], out
    assert "refused by hoopy" in out["result"]["content"][0]["text"], out
    assert world.srv.calls[ran:] == [], world.srv.calls
    # a listed tool, by its own name, still runs
    status, out = call(world, h, "echo")
    assert out["result"]["content"][0]["text"] == "ran echo"


# --- JSON-RPC shapes ----------------------------------------------------------------------------

def test_a_batch_mixing_allowed_and_refused_calls_is_refused_whole(world):
    h = session(world, B)
    ran = len(world.srv.calls)
    batch = [{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "read_report"}},
             {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "delete_db"}}]
    status, _, body = post(world, None, h, json.dumps(batch).encode())
    assert status == 400 and json.loads(body)["error"]["code"] == -32600
    assert world.srv.calls[ran:] == []


@pytest.mark.parametrize("id_", [None, True, 1.5, {"a": 1}, [1], "x" * 300, 2 ** 64])
def test_odd_request_ids_are_refused(world, id_):
    h = session(world, B)
    ran = len(world.srv.calls)
    status, _, body = post(world, {"jsonrpc": "2.0", "id": id_, "method": "tools/call",
                                   "params": {"name": "read_report"}}, h)
    assert status == 400, body
    assert world.srv.calls[ran:] == []


@pytest.mark.parametrize("id_", [0, -1, "", "hoopy-1", "1", 2 ** 53])
def test_ids_of_any_ordinary_shape_are_answered_as_sent(world, id_):
    """Ids are mapped to hoopy's own upstream: one that looks like hoopy's or another client's is
    just this client's id."""
    h = session(world, B)
    status, out = call(world, h, "read_report", id_=id_)
    assert status == 200 and out["id"] == id_ and out["result"]["content"][0]["text"] == "ran read_report", out


def test_a_call_smuggled_as_a_notification_or_a_response_never_runs(world):
    h = session(world, B)
    ran = len(world.srv.calls)
    status, _, body = post(world, {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "delete_db"}}, h)
    assert status == 400 and b"Method not found" in body
    for msg in ({"jsonrpc": "2.0", "id": "hoopy-1", "result": {"name": "delete_db"}},
                {"jsonrpc": "2.0", "id": 3, "error": {"code": 1, "message": "x"}, "params": {"name": "delete_db"}}):
        assert post(world, msg, h)[0] == 202
    status, out = call(world, h, "delete_db")  # a request that also says "result": judged as the call it is
    assert out["result"]["isError"]
    assert world.srv.calls[ran:] == []


@pytest.mark.parametrize("raw_body", [
    b'{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"read\\ud800"}}',
    b'{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"read_report","arguments":{"a":"\\udfff"}}}',
    b'{"jsonrpc":"2.0","id":13,"method":"tools/call","params":{"name":"read_report","arguments":{"\\uDBFF":1}}}',
])
def test_lone_surrogates_are_refused_as_unparseable(world, raw_body):
    """JSON whose strings are no Unicode (a lone surrogate escape) cannot be recorded or forwarded
    as it was judged: refused at the door, not failed half-way (after the operation was recorded)."""
    h = session(world, B)
    ran = len(world.srv.calls)
    status, _, body = post(world, None, h, raw_body)
    assert status == 400 and json.loads(body)["error"]["code"] == -32700, body
    assert world.srv.calls[ran:] == []


# --- sessions and credentials -------------------------------------------------------------------

def test_another_identitys_session_cannot_be_used_streamed_or_deleted(world):
    ha, hb = session(world, A), session(world, B)
    stolen = {**hb, "Mcp-Session-Id": ha["Mcp-Session-Id"]}
    status, _, body = post(world, {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo"}},
                           stolen)
    assert status == 404, body
    assert other(world, "GET", {**stolen, "Accept": "text/event-stream", "Last-Event-ID": "1"})[0] == 404
    assert other(world, "DELETE", stolen)[0] == 404
    # and A's session is untouched
    assert call(world, ha, "echo")[1]["result"]["content"][0]["text"] == "ran echo"


def test_last_event_id_of_another_session_replays_nothing(world):
    """There is no resumption: a GET stream starts afresh whatever Last-Event-ID says."""
    ha, hb = session(world, A), session(world, B)
    s = socket.create_connection(("127.0.0.1", world.port), timeout=3)
    try:
        s.sendall(b"GET /mcp HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nAuthorization: " +
                  hb["Authorization"].encode() + b"\r\nMcp-Session-Id: " + hb["Mcp-Session-Id"].encode() +
                  b"\r\nLast-Event-ID: " + ha["Mcp-Session-Id"].encode() + b"-1\r\n\r\n")
        got = b""
        while b": hoopy" not in got:
            got += s.recv(4096)
    finally:
        s.close()
    assert b"200" in got.split(b"\r\n")[0] and b"data:" not in got, got


def test_two_different_tokens_are_a_bad_credential(world):
    ha = session(world, A)
    msg = json.dumps({"jsonrpc": "2.0", "id": 14, "method": "tools/call", "params": {"name": "echo"}}).encode()
    for order in ((B, A), (A, B)):
        out = raw(world.port, b"POST /mcp HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"Authorization: Bearer " + who.token.encode() + b"\r\n" for who in order) +
            b"Mcp-Session-Id: " + ha["Mcp-Session-Id"].encode() + b"\r\nMCP-Protocol-Version: 2025-06-18\r\n"
            b"Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: %d\r\n\r\n" % len(msg)
            + msg, wait_close=False, timeout=5)
        assert statuses(out) == [401], out[:300]


def test_two_session_ids_are_refused(world):
    ha, hb = session(world, A), session(world, A)
    msg = json.dumps({"jsonrpc": "2.0", "id": 15, "method": "tools/call", "params": {"name": "echo"}}).encode()
    out = raw(world.port, b"POST /mcp HTTP/1.1\r\nHost: x\r\nAuthorization: " + ha["Authorization"].encode() +
              b"\r\nMcp-Session-Id: " + ha["Mcp-Session-Id"].encode() + b"\r\nMcp-Session-Id: " +
              hb["Mcp-Session-Id"].encode() + b"\r\nMCP-Protocol-Version: 2025-06-18\r\n"
              b"Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: %d\r\n\r\n" % len(msg)
              + msg, timeout=5)
    assert statuses(out) == [400], out[:300]


def test_a_per_request_client_instance_is_not_shared_across_identities(world):
    """At 2026-07-28 a session is the identity plus the client's name: B naming A's client gets its own."""
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "shared-client", "version": "1"}}
    ran = len(world.srv.calls)
    outs = {}
    for who in (A, B):
        status, _, body = post(world, {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                       "params": {"name": "echo", "arguments": {}, "_meta": meta}},
                               {"Authorization": f"Bearer {who.token}", "MCP-Protocol-Version": "2026-07-28",
                                "Mcp-Method": "tools/call", "Mcp-Name": "echo"})
        outs[who.name] = json.loads(body)
    assert outs["mcp-a"]["result"]["content"][0]["text"] == "ran echo"
    assert outs["mcp-b"]["result"]["isError"], outs
    assert world.srv.calls[ran:] == ["echo"]


def test_a_call_the_server_never_answers_in_time_fails_once_and_says_why(world):
    h = session(world, A)
    status, out = call(world, h, "slow")
    assert out["result"]["isError"] and "did not answer tools/call within 5s" in out["result"]["content"][0]["text"], out
    assert "AlreadyCalledError" not in world.log_text()
    assert call(world, h, "echo")[1]["result"]["content"][0]["text"] == "ran echo"


# --- paths in arguments and resource URIs ---------------------------------------------------------

ESCAPES = ["/srv/reports/../../etc/passwd", "/srv/reports/./../../etc/passwd", "/srv/reports/%2e%2e/%2e%2e/etc/passwd",
           "/srv/reports/%2E%2E%2F%2E%2E%2Fetc/passwd", "/srv/reports/..\\..\\etc\\passwd", "/srv/reports/..",
           "/srv/reports/q1/../../../etc/passwd"]


@pytest.mark.parametrize("path", ESCAPES)
def test_an_allowed_argument_path_cannot_climb_out_with_dot_segments(world, path):
    """`tool echo path=/srv/reports/*` grants files under /srv/reports: a server resolves `..`
    (and decodes %2e, reads \\ as / on Windows), so the glob must see what the server will."""
    h = session(world, B)
    ran = len(world.srv.calls)
    status, out = call(world, h, "echo", args={"path": path})
    assert out["result"]["isError"], out
    assert world.srv.calls[ran:] == []
    assert call(world, h, "echo", args={"path": "/srv/reports/q1.csv"})[1]["result"]["content"][0]["text"] == "ran echo"


@pytest.mark.parametrize("path", ["/srv/../etc/passwd", "//etc/passwd", "/srv/%2e%2e/etc/shadow", "/./etc/passwd",
                                  "/tmp/..\\etc/passwd"])
def test_a_denied_argument_path_cannot_be_reached_by_another_spelling(world, path):
    h = session(world, A)
    ran = len(world.srv.calls)
    status, out = call(world, h, "echo", args={"path": path})
    assert out["result"]["isError"] and "path=/etc/*" in out["result"]["content"][0]["text"], out
    assert world.srv.calls[ran:] == []


@pytest.mark.parametrize("uri", ["file://" + p for p in ESCAPES] + ["file:///srv/reports/%2fetc%2fpasswd"])
def test_a_resource_uri_cannot_climb_out_of_its_glob(world, uri):
    h = session(world, B)
    reads = len(world.srv.reads)
    status, _, body = post(world, {"jsonrpc": "2.0", "id": 9, "method": "resources/read", "params": {"uri": uri}}, h)
    assert "error" in json.loads(body), body
    assert world.srv.reads[reads:] == []
    status, _, body = post(world, {"jsonrpc": "2.0", "id": 9, "method": "resources/read",
                                   "params": {"uri": "file:///srv/reports/q1.csv"}}, h)
    assert json.loads(body)["result"]["contents"][0]["text"] == "read", body


@pytest.mark.parametrize("uri", ["file:///srv/../etc/passwd", "file:////etc/passwd", "file:///tmp/%2e%2e/etc/passwd"])
def test_a_denied_resource_cannot_be_reached_by_another_spelling(world, uri):
    h = session(world, A)
    reads = len(world.srv.reads)
    status, _, body = post(world, {"jsonrpc": "2.0", "id": 9, "method": "resources/read", "params": {"uri": uri}}, h)
    assert "error" in json.loads(body), body
    assert world.srv.reads[reads:] == []


def test_a_server_sending_a_head_without_end_is_cut_in_bounded_memory(world):
    h = session(world, A)
    rss = lambda: int(next(l for l in open(f"/proc/{world.proc.pid}/status") if l.startswith("VmRSS:")).split()[1])
    before = rss()
    status, out = call(world, h, "flood")
    grown = rss() - before
    assert grown < 40 * 1024, grown
    assert out["result"]["isError"], out
    assert call(world, h, "echo")[1]["result"]["content"][0]["text"] == "ran echo"


@pytest.mark.parametrize("first", [b"POST /mcp HTTP/1.1\r\nHost: x\r\nX-Slow: ", b""])
def test_a_request_head_dripped_byte_by_byte_is_cut_off(world, first):
    """Slowloris on the MCP listener: the head must be in within head_timeout (4 s here) of its first byte."""
    s = socket.create_connection(("127.0.0.1", world.port))
    s.settimeout(1.0)
    t = time.monotonic()
    out = b""
    try:
        if first:
            s.sendall(first)
        while time.monotonic() - t < 30:
            try:
                s.sendall(b"X")
                c = s.recv(4096)
                if not c:
                    break
                out += c
            except socket.timeout:
                continue
            except OSError:
                break
    finally:
        s.close()
    assert time.monotonic() - t < 12, out  # the default (20 s) would fail this
    assert out.startswith(b"HTTP/1.1 408"), out


@pytest.mark.parametrize("name", ["SECRET_PLAN", "Secret_plan", "\uff53ecret_plan", " secret_plan"])
def test_a_prompt_name_in_another_case_or_unicode_form_is_refused(world, name):
    h = session(world, A)
    ran = len(world.srv.calls)
    status, _, body = post(world, {"jsonrpc": "2.0", "id": 4, "method": "prompts/get", "params": {"name": name}}, h)
    assert "error" in json.loads(body) and "refused by hoopy" in json.loads(body)["error"]["message"], body
    assert world.srv.calls[ran:] == []
    status, _, body = post(world, {"jsonrpc": "2.0", "id": 4, "method": "prompts/get", "params": {"name": "summarize"}}, h)
    assert json.loads(body)["result"]["messages"][0]["content"]["text"] == "prompt summarize", body


@pytest.mark.parametrize("spelled", ["plain", "escaped"])
def test_the_callers_token_in_a_message_never_reaches_the_server_or_the_record(world, spelled):
    h = session(world, B)
    ran = len(world.srv.calls)
    tok = B.token if spelled == "plain" else "".join(f"\\u{ord(c):04x}" for c in B.token)
    data = ('{"jsonrpc":"2.0","id":21,"method":"tools/call","params":{"name":"read_report","arguments":'
            '{"note":"my token is ' + tok + '"}}}').encode()
    status, _, body = post(world, None, h, data)
    assert status == 400 and b"token" in body, body
    assert world.srv.calls[ran:] == []
    time.sleep(0.3)
    assert B.token not in json.dumps(world.events())
