"""A hostile caller with a narrow grant against a real ``twistd -n hoopy``, on the wire.

The upstream is tests/wire_peers.RawUpstream: a raw-socket HTTP/1.1 server that records every byte
it received (so a test sees whether a smuggled request ever reached it) and answers whatever a
test scripts (two responses, bodies to HEAD, short bodies, echoed credentials). Requests are raw
bytes on sockets: malformed framing, pipelining, slow heads. The caller ``narrow`` may only
``GET /v1/customers/*`` (and HEAD/POST there); every attack tries to reach ``/admin`` or to make
the upstream run something nobody judged.
"""
from __future__ import annotations

import base64
import json
import re
import socket
import time
from urllib.parse import quote

import pytest

from tests.support import HoopyProcess, free_port, ident
from tests.wire_peers import RawUpstream, raw, response, statuses

NARROW = ident("narrow")
VICTIM = ident("victim")
# The upstream's credential, with the characters encoders spell otherwise ("/" "+" "=")
SECRET = "Bearer up/str+eam-Secret-7777=abcd"
BASIC = "Basic " + base64.b64encode(b"svc-user:pa55word-xyz").decode()
TOK = NARROW.token.encode()
AUTH = b"Authorization: Bearer " + TOK + b"\r\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    up = RawUpstream()
    port = free_port()
    body = NARROW.toml(scram=False) + VICTIM.toml(scram=False) + f"""
[connections.api]
type = "http"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up.port}"
upstream_headers = {{ Authorization = "env:API_AUTH", X-Upstream-Auth = "env:API_BASIC" }}
upstream_timeout = "3s"
pool_size = 4
head_timeout = "4s"

[[grants]]
identity = "narrow"
connection = "api"
allow = ["GET /v1/customers/*", "HEAD /v1/customers/*", "POST /v1/customers/*", "DELETE /v1/customers/*",
         "OPTIONS /v1/customers/*"]
approve = ["POST /v1/refunds"]

[[grants]]
identity = "victim"
connection = "api"
allow = ["* /**"]
"""
    gw = HoopyProcess(tmp_path_factory.mktemp("wire"), body, env={"API_AUTH": SECRET, "API_BASIC": BASIC}, approval_timeout="20s")
    gw.start()
    gw.port = port
    gw.up = up
    yield gw
    gw.stop()
    up.stop()
    assert "Traceback" not in gw.log_text(), gw.log_text()[-4000:]


def req(method: bytes, target: bytes, extra: bytes = b"", body: bytes = b"", auth: bytes = AUTH) -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n" + auth + extra + b"\r\n" + body


ADMIN = req(b"GET", b"/admin")  # pipelined after each attack: must never reach the upstream
# The same as the last request on its connection: it says so, and the gateway closes once it has
# answered; a test reading every answer until the close then waits for no idle deadline (4 s each).
ADMIN_LAST = req(b"GET", b"/admin", b"Connection: close\r\n")


def never_reached_admin(world, mark: int):
    """The upstream never read a request for /admin (as a request: bytes of a body are a body)."""
    heads = [h for h, _ in world.up.since(mark)]
    assert not [h for h in heads if b"/admin" in h.split(b"\r\n", 1)[0]], heads


# --- request framing: nothing the gateway and the upstream could read differently ------------

REFUSED_FRAMING = {
    "CL and TE": b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE chunked, identity": b"Transfer-Encoding: chunked, identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "TE identity, chunked": b"Transfer-Encoding: identity, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "TE with space before colon": b"Transfer-Encoding : chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "TE with a vertical tab": b"Transfer-Encoding: \x0bchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "TE xchunked": b"Transfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "two TE headers": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "TE identity alone": b"Transfer-Encoding: identity\r\n\r\nhello",
    "two equal CL": b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "CL list": b"Content-Length: 5, 5\r\n\r\nhello",
    "CL plus sign": b"Content-Length: +5\r\n\r\nhello",
    "CL negative": b"Content-Length: -1\r\n\r\nhello",
    "CL hex": b"Content-Length: 0x5\r\n\r\nhello",
    "CL underscore": b"Content-Length: 1_0\r\n\r\nhellohello",
    "bare CR in a header": b"X-A: a\rTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
    "bare LF in a header value": b"X-A: a\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello",
    "NUL in a header": b"X-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello",
    "chunk size 0x": b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
    "chunk size overflow": b"Transfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
    "chunk lines with bare LF": b"Transfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
    "chunk longer than its size": b"Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", list(REFUSED_FRAMING))
def test_ambiguous_request_framing_is_refused_and_the_connection_closed(world, name):
    before = mark = world.up.mark()
    head = b"POST /v1/customers/1 HTTP/1.1\r\nHost: x\r\n" + AUTH
    out = raw(world.port, head + REFUSED_FRAMING[name] + ADMIN, wait_close=True, timeout=4)
    got = statuses(out)
    # refused (400), or the connection closed without an answer; never a second answer on it
    assert got in ([400], []), (name, out[:300])
    assert world.up.since(before) == [], name
    never_reached_admin(world, mark)


NORMALIZED_FRAMING = {
    "TE in capitals": b"Transfer-Encoding: CHUNKED\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "TE with a tab": b"Transfer-Encoding:\tchunked\t\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "TE folded (obs-fold)": b"Transfer-Encoding:\r\n chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "chunk extension": b"Transfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\n\r\n",
    "chunk size with leading zeros": b"Transfer-Encoding: chunked\r\n\r\n0005\r\nhello\r\n0\r\n\r\n",
    "trailers naming credentials": b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nAuthorization: Bearer x\r\n"
                                   b"X-Hoopy-Token: y\r\nContent-Length: 40\r\n\r\n",
    "CL with leading zeros": b"Content-Length: 005\r\n\r\nhello",
    "Expect: 100-continue": b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello",
}


@pytest.mark.parametrize("name", list(NORMALIZED_FRAMING))
def test_framing_the_gateway_reads_is_sent_upstream_in_its_own_framing(world, name):
    """Lenient but unambiguous shapes: read once by the gateway, re-framed for the upstream (its own
    Content-Length or chunking, no trailers), and the pipelined request after them judged on its own."""
    before = mark = world.up.mark()
    head = b"POST /v1/customers/1 HTTP/1.1\r\nHost: x\r\n" + AUTH
    out = raw(world.port, head + NORMALIZED_FRAMING[name] + ADMIN_LAST, wait_close=True, timeout=4)
    got = [s for s in statuses(out) if s != 100]
    assert got == [200, 403], (name, out[-400:])
    sent = world.up.since(before)
    assert [(h.split(b"\r\n")[0], b) for h, b in sent] == [(b"POST /v1/customers/1 HTTP/1.1", b"hello")], sent
    head = sent[0][0]
    assert b"Bearer x" not in head and b"X-Hoopy-Token" not in head and b"Expect" not in head, head
    never_reached_admin(world, mark)


@pytest.mark.parametrize("name, data", [
    ("bare LF request", b"GET /v1/customers/1 HTTP/1.1\nHost: x\n" + AUTH.replace(b"\r\n", b"\n") + b"\n" + ADMIN),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + ADMIN),
    ("HTTP/0.9", b"GET /admin\r\n\r\n"),
    ("HTTP/1.2", b"GET /admin HTTP/1.2\r\nHost: x\r\n" + AUTH + b"\r\n"),
    ("two versions", b"GET /v1/customers/1 HTTP/1.1 HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n" + ADMIN),
    ("tabs in the request line", b"GET\t/admin\tHTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n"),
    ("space before a header colon", b"GET /v1/customers/1 HTTP/1.1\r\nHost: x\r\nAuthorization : Bearer "
                                    + TOK + b"\r\n\r\n" + ADMIN),
    ("HTTP/1.0 keep-alive then more", b"GET /v1/customers/1 HTTP/1.0\r\nConnection: keep-alive\r\n" + AUTH
                                      + b"\r\n" + ADMIN),
], ids=lambda v: v if isinstance(v, str) else "")  # (the data holds a random token: not in the id)
def test_malformed_or_old_requests_never_carry_a_second_one(world, name, data):
    mark = world.up.mark()
    out = raw(world.port, data, wait_close=True, timeout=4)
    assert 403 not in statuses(out), (name, out[:300])
    never_reached_admin(world, mark)


def test_pipelined_requests_are_each_judged(world):
    mark = world.up.mark()
    out = raw(world.port, req(b"GET", b"/v1/customers/1") + ADMIN
              + req(b"GET", b"/v1/customers/2", b"Connection: close\r\n"), wait_close=True, timeout=4)
    assert statuses(out) == [200, 403, 200], out[-500:]
    never_reached_admin(world, mark)


def test_h2c_and_other_upgrades_are_refused(world):
    mark = world.up.mark()
    for up in (b"h2c", b"websocket, h2c", b"HTTP/2.0", b"TLS/1.2"):
        out = raw(world.port, req(b"GET", b"/v1/customers/1", b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: " + up
                                  + b"\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n") + ADMIN, timeout=4)
        assert statuses(out)[:1] == [501], out[:300]
    never_reached_admin(world, mark)


# --- bodies where a method has none: a smuggled request for the next caller's credential ---------


@pytest.mark.parametrize("method, framing", [(b"GET", "length"), (b"HEAD", "length"), (b"GET", "chunked"),
                                             (b"HEAD", "chunked"), (b"TRACE", "length")])
def test_a_body_on_get_head_or_trace_is_refused(world, method, framing):
    """A server that does not read a GET's body takes it for the next request on the connection:
    behind a pool that is the next caller's request, injected credential included (RFC 9110 9.3.1)."""
    mark = world.up.mark()
    smuggled = b"GET /admin HTTP/1.1\r\nHost: x\r\nX-Pad: aaaa\r\n"
    if framing == "length":
        extra, body = b"Content-Length: %d\r\n" % len(smuggled), smuggled
    else:
        extra, body = b"Transfer-Encoding: chunked\r\n", b"%x\r\n%b\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    out = raw(world.port, req(method, b"/v1/customers/1", extra, body) + ADMIN_LAST, wait_close=True, timeout=4)
    if method == b"TRACE":  # refused for what it is; its body was framed (the next request is judged)
        assert statuses(out)[:1] == [405], out[:400]
    else:  # the body's framing is in doubt downstream: refused, and the connection closed
        assert statuses(out) == [400], out[:400]
        assert method == b"HEAD" or b"cannot carry a body" in out
    assert world.up.since(mark) == []


def test_a_get_with_content_length_zero_still_passes(world):
    out = raw(world.port, req(b"GET", b"/v1/customers/1", b"Content-Length: 0\r\n"))
    assert statuses(out) == [200], out[:300]


def test_a_body_on_delete_never_reaches_a_reused_upstream_connection(world):
    """DELETE may carry a body (Kubernetes' DeleteOptions): it goes upstream on a connection that is
    closed after its answer, so a server that left the body unread cannot prepend it to the next
    caller's request (and that caller's injected credential)."""
    up = world.up
    mark = up.mark()
    smuggled = b"GET /admin HTTP/1.1\r\nHost: x\r\nX-Pad: "
    up.script["/v1/customers/lenient"] = lambda head, body: response(200, b"ok")
    lenient = up.ignore_get_body
    try:
        # this upstream leaves the body of a DELETE unread, as some do with GET
        up.ignore_delete_body = True
        out = raw(world.port, req(b"DELETE", b"/v1/customers/lenient", b"Content-Length: %d\r\n" % len(smuggled),
                                  smuggled))
        assert statuses(out) == [200], out
        for i in range(3):  # other callers' requests, over the gateway's pool
            out = raw(world.port, req(b"GET", b"/v1/customers/%d" % i, auth=b"Authorization: Bearer "
                                      + VICTIM.token.encode() + b"\r\n"))
            assert statuses(out) == [200], out
    finally:
        up.ignore_delete_body, up.ignore_get_body = False, lenient
    never_reached_admin(world, mark)
    head = up.since(mark)[0][0]
    assert b"\r\nConnection: close" in head, head


@pytest.mark.parametrize("method", [b"TRACE", b"TRACK"])
def test_trace_is_never_forwarded_even_where_granted(world, method):
    """TRACE echoes the request as the upstream got it: the injected credential with it."""
    mark = world.up.mark()
    out = raw(world.port, req(method, b"/v1/customers/1", auth=b"Authorization: Bearer "
                              + VICTIM.token.encode() + b"\r\n"))
    assert statuses(out) == [405], out[:300]
    assert world.up.since(mark) == []


# --- headers: who the caller is, and the upstream's credential ----------------------------------


@pytest.mark.parametrize("header", [
    b"X-Remote-User", b"Remote-User", b"X-Forwarded-User", b"X-Forwarded-Email", b"X-Forwarded-Groups",
    b"X-Forwarded-Preferred-Username", b"X-Auth-Request-User", b"X-Auth-Request-Email", b"X-Authenticated-User",
    b"X-WEBAUTH-USER", b"X-Remote-Group", b"X-Ms-Client-Principal-Name", b"X-Goog-Authenticated-User-Email",
    b"X-Amzn-Oidc-Identity", b"Cf-Access-Authenticated-User-Email", b"X-Forwarded-Client-Cert", b"X-SSL-Client-DN",
])
def test_identity_headers_of_authenticating_proxies_are_refused(world, header):
    """An upstream that sat behind an authenticating proxy (oauth2-proxy, Apache, ALB, IAP, Cloudflare
    Access, Envoy's XFCC) trusts these headers as who is calling: a caller must not set them."""
    mark = world.up.mark()
    out = raw(world.port, req(b"GET", b"/v1/customers/1", header + b": admin@example.com\r\n"))
    assert statuses(out) == [400], out[:300]
    assert header.lower() in out.lower()
    assert world.up.since(mark) == []


def test_hoopy_headers_never_go_upstream(world):
    mark = world.up.mark()
    out = raw(world.port, req(b"GET", b"/v1/customers/1", b"X-Hoopy-Identity: admin\r\nX-Hoopy-Session: s-1\r\n"
                                                          b"X-HOOPY-Model: m\r\nConnection: X-Hoopy-Token\r\n"))
    assert statuses(out) == [200], out[:300]
    head = world.up.since(mark)[0][0].lower()
    assert b"x-hoopy" not in head, head


@pytest.mark.parametrize("header", [b"Authorization", b"X-Upstream-Auth", b"Host", b"X-Forwarded-For",
                                    b"Content-Length", b"Forwarded"])
def test_connection_cannot_drop_what_the_gateway_sets(world, header):
    """``Connection: Authorization`` names a header as hop-by-hop: the gateway's own survive it."""
    mark = world.up.mark()
    out = raw(world.port, req(b"GET", b"/v1/customers/1", b"Connection: keep-alive, " + header + b"\r\n"))
    assert statuses(out) == [200], out[:300]
    head = world.up.since(mark)[0][0]
    assert b"\r\nAuthorization: " + SECRET.encode() in head and b"\r\nX-Upstream-Auth: Basic " in head, head
    assert b"\r\nHost: " in head and b"\r\nX-Forwarded-For: " in head and b"\r\nForwarded: " in head


def _spellings():
    token = SECRET.split(" ", 1)[1]
    json_escaped = token.replace("/", "\\/")  # PHP's json_encode escapes "/" by default
    return {
        "upper-case": token.upper(), "lower-case": token.lower(), "percent-encoded": quote(SECRET, safe=""),
        "percent-encoded, lower-case hex": re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quote(token, safe="")),
        "form-encoded": quote(SECRET, safe="").replace("%20", "+"), "JSON with escaped slashes": json_escaped,
        "Basic credentials decoded": "svc-user:pa55word-xyz", "Basic password": "pa55word-xyz",
    }


@pytest.mark.parametrize("how", list(_spellings()))
@pytest.mark.parametrize("where", ["Location", "X-Debug", "body"])
def test_an_echoed_credential_is_caught_in_any_common_spelling(world, how, where):
    spelled = _spellings()[how].encode()
    path = b"/v1/customers/echo-" + how.replace(" ", "-").replace(",", "").encode() + b"-" + where.encode()
    if where == "body":
        world.up.script[path.decode()] = lambda h, b: response(200, b'{"seen": "' + spelled + b'"}',
                                                                [(b"Content-Type", b"application/json")])
    else:
        world.up.script[path.decode()] = lambda h, b: response(302 if where == "Location" else 200, b"",
                                                                [(where.encode(), b"http://x/cb?auth=" + spelled)])
    out = raw(world.port, req(b"GET", path))
    assert statuses(out)[:1] in ([200], [302]), out[:300]
    assert spelled not in out and spelled.lower() not in out.lower(), out


# --- the response side: an upstream that answers more, less or otherwise than asked ---------------

SMUGGLED = b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\nSMUGGLED-FOR-VICTIM"
EVIL_RESPONSES = {
    "two responses": (b"GET", response(200, b"first") + SMUGGLED, [200]),
    "more than Content-Length": (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello" + SMUGGLED, [200]),
    "a body to HEAD": (b"HEAD", response(200, b"X" * 30) + SMUGGLED, [200]),
    "a body to 204": (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n" + SMUGGLED, [204]),
    "a body to 304": (b"GET", b"HTTP/1.1 304 Not Modified\r\n\r\n" + SMUGGLED, [304]),
    "1xx then the answer": (b"GET", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nSet-Cookie: a=b\r\n"
                                    b"Link: </x>\r\n\r\n" + response(200, b"final"), [200]),
    "101 on an ordinary request": (b"GET", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n"
                                           b"Connection: Upgrade\r\n\r\n" + SMUGGLED, [502]),
    "CL and TE": (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED, [502]),
    "two lengths": (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello", [502]),
    "bare LF": (b"GET", b"HTTP/1.1 200 OK\nContent-Length: 1\n\nx", [502]),
    "bare CR in a header": (b"GET", b"HTTP/1.1 200 OK\r\nX-A: a\rSet-Cookie: evil=1\r\nContent-Length: 1\r\n\r\nx",
                            [502]),
    "obs-fold": (b"GET", b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 1\r\n\r\nx", [502]),
    "HTTP/0.9": (b"GET", b"hello from 0.9\r\n", [502]),
    "chunk size overflow": (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc",
                            [502]),
}


@pytest.mark.parametrize("name", list(EVIL_RESPONSES))
def test_an_upstream_answering_otherwise_cannot_answer_the_next_caller(world, name):
    method, evil, expect = EVIL_RESPONSES[name]
    path = "/v1/customers/evil-" + re.sub(r"[^a-z0-9]+", "-", name.lower())
    world.up.script[path] = lambda h, b: evil
    out = raw(world.port, req(method, path.encode()), timeout=5)
    assert statuses(out) == expect, (name, out[:400])
    assert b"SMUGGLED" not in out and b"evil=1" not in out and b"Set-Cookie" not in out
    # the next callers, over the pool, get their own answers
    for i in range(3):
        out = raw(world.port, req(b"GET", b"/v1/customers/next-%d" % i, auth=b"Authorization: Bearer "
                                  + VICTIM.token.encode() + b"\r\n"))
        assert statuses(out) == [200] and b"SMUGGLED" not in out and b"/v1/customers/next-%d" % i in out, out


def test_a_body_cut_short_is_cut_for_the_caller_and_its_connection_not_reused(world):
    world.up.script["/v1/customers/short"] = lambda h, b: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-ten!!"
    t = time.monotonic()
    out = raw(world.port, req(b"GET", b"/v1/customers/short"), wait_close=True, timeout=10)
    assert out.endswith(b"only-ten!!") and time.monotonic() - t < 8, out  # cut (upstream_timeout 3s)
    out = raw(world.port, req(b"GET", b"/v1/customers/after-short"))
    assert statuses(out) == [200] and b"/v1/customers/after-short" in out


def test_hop_by_hop_response_headers_are_dropped(world):
    world.up.script["/v1/customers/hop"] = lambda h, b: response(200, b"x", [
        (b"Connection", b"close, X-Internal"), (b"X-Internal", b"1"), (b"Keep-Alive", b"timeout=1"),
        (b"Upgrade", b"h2c"), (b"Proxy-Authenticate", b"Basic"), (b"Trailer", b"X-T")])
    out = raw(world.port, req(b"GET", b"/v1/customers/hop"))
    head = out.partition(b"\r\n\r\n")[0].lower()
    assert statuses(out) == [200]
    for h in (b"x-internal", b"keep-alive", b"upgrade", b"proxy-authenticate", b"trailer"):
        assert h not in head, head


# --- resources ---------------------------------------------------------------------------------

HEAD_TIMEOUT = 4  # the connection's head_timeout above (the default, 20 s, would fail the bounds below)


def _drip(port: int, first: bytes, limit: float) -> tuple[float, bytes]:
    """Send a request head one byte a second (slowloris); (seconds until the gateway closed, what it said)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(1.0)
    t = time.monotonic()
    out = b""
    try:
        if first:
            s.sendall(first)
        while time.monotonic() - t < limit:
            try:
                s.sendall(b"X")
            except OSError:
                break
            try:
                c = s.recv(4096)
                if not c:
                    break
                out += c
            except socket.timeout:
                continue
            except OSError:
                break
        return time.monotonic() - t, out
    finally:
        s.close()


@pytest.mark.parametrize("first", [b"GET /v1/customers/1 HTTP/1.1\r\nHost: x\r\nX-Slow: ", b""])
def test_a_request_head_dripped_byte_by_byte_is_cut_off(world, first):
    """Slowloris: each byte resets an idle timeout, so only a deadline for the whole head stops it."""
    took, out = _drip(world.port, first, HEAD_TIMEOUT + 25)
    assert took < HEAD_TIMEOUT + 8, took
    assert out.startswith(b"HTTP/1.1 408"), out


def test_a_silent_connection_is_closed(world):
    s = socket.create_connection(("127.0.0.1", world.port))
    s.settimeout(HEAD_TIMEOUT + 10)
    t = time.monotonic()
    try:
        data = s.recv(100)
    finally:
        s.close()
    assert time.monotonic() - t < HEAD_TIMEOUT + 8 and data.startswith(b"HTTP/1.1 408"), data


def test_keep_alive_requests_each_get_their_own_head_deadline(world):
    """A client slow between requests is not cut off for the time its earlier requests took."""
    s = socket.create_connection(("127.0.0.1", world.port), timeout=10)
    try:
        for i in range(3):
            s.sendall(req(b"GET", b"/v1/customers/%d" % i))
            got = b""
            while not statuses(got) or not got.endswith(b"}"):
                got += s.recv(65536)
            assert statuses(got) == [200]
            time.sleep(HEAD_TIMEOUT / 2)
    finally:
        s.close()


def test_too_many_or_too_large_headers_are_refused(world):
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(600))
    assert statuses(raw(world.port, req(b"GET", b"/v1/customers/1", many), wait_close=True)) == [400]
    big = b"X-Big: " + b"a" * 20000 + b"\r\n"
    assert statuses(raw(world.port, req(b"GET", b"/v1/customers/1", big), wait_close=True)) in ([400], [])
    long_target = b"/v1/customers/" + b"a" * 20000
    assert statuses(raw(world.port, req(b"GET", long_target), wait_close=True)) in ([400], [])


def test_an_endless_body_to_a_refused_route_is_cut_off(world):
    """Refused at its head; the rest of its body is read and dropped for at most 5 s."""
    s = socket.create_connection(("127.0.0.1", world.port), timeout=2)
    t = time.monotonic()
    try:
        s.sendall(req(b"POST", b"/admin", b"Transfer-Encoding: chunked\r\n"))
        out = b""
        while time.monotonic() - t < 30:
            try:
                s.sendall(b"1000\r\n" + b"a" * 4096 + b"\r\n")
            except OSError:
                break
            try:
                s.setblocking(False)
                out += s.recv(65536)
            except BlockingIOError:
                pass
            except OSError:
                break
            finally:
                s.setblocking(True)
            time.sleep(0.01)
    finally:
        s.close()
    assert time.monotonic() - t < 15
    assert statuses(out) == [403], out[:200]


# --- path matching: one segment under /v1/customers, and nothing else ----------------------------

PATHS = [b"/v1/customers/%2e%2e/admin", b"/v1/customers/..%2fadmin", b"/v1/customers/1%2F..%2F..%2Fadmin",
         b"/v1/customers/%252e%252e/admin", b"/v1/customers/1;x=y", b"/v1/customers/1\\..\\..\\admin",
         b"http://x/v1/customers/1", b"//127.0.0.1/admin", b"/v1/customers/1#/../../admin", b"/v1/customers/\xc3\xa9",
         b"/v1/customers/%00", b"/v1/customers/1%00.json", b"/v1/customers/..", b"/v1/customers/1/..",
         b"/v1/customers/%2e", b"/v1/Customers/1", b"/v1/customers/1%3f/../../admin", b"/v1/customers/1%23/../../admin",
         b"/v1/customers/%u002e", b"/v1/customers/1%20/../../admin", b"*", b"/v1/customers/%C0%AE%C0%AE/admin",
         b"/v1/customers/x%0d%0aHost:%20evil", b"/v1/customers/1/", b"/v1/customers/", b"/v1/customers/a/b",
         b"//v1/customers/1/../../admin", b"/./v1/customers/1/./../../../admin"]


@pytest.mark.parametrize("target", PATHS)
def test_path_tricks_reach_nothing_but_one_customer(world, target):
    mark = world.up.mark()
    out = raw(world.port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n", wait_close=False)
    for head, _ in world.up.since(mark):
        line = head.split(b"\r\n")[0]
        path = line.split(b" ")[1].split(b"?")[0]
        assert re.fullmatch(rb"/v1/customers/[^/]+", path), (target, line)
    assert statuses(out)[:1] in ([200], [400], [403], []), (target, out[:200])


@pytest.mark.parametrize("extra", [b"Host: 127.0.0.1:1\r\n", b"Host: x\r\nHost: admin.internal\r\n",
                                   b"X-Forwarded-Host: admin.internal\r\n", b"X-Original-URL: /admin\r\n",
                                   b"X-Rewrite-URL: /admin\r\n", b"X-HTTP-Method-Override: DELETE\r\n"])
def test_headers_that_pick_another_site_path_or_method_are_dropped_or_refused(world, extra):
    mark = world.up.mark()
    out = raw(world.port, b"GET /v1/customers/1 HTTP/1.1\r\n" + (b"" if extra.startswith(b"Host") else b"Host: x\r\n")
              + AUTH + extra + b"\r\n")
    assert statuses(out)[:1] in ([200], [400]), out[:200]
    for head, _ in world.up.since(mark):
        assert b"admin" not in head and b"127.0.0.1:1\r\n" not in head and b"DELETE" not in head, head


def test_requests_pipelined_behind_a_held_one_wait_in_bounded_memory(world):
    """A held request keeps its connection; what is pipelined behind it is not read past a small
    buffer (the socket is paused) and nothing of it goes upstream before the decision."""
    mark = world.up.mark()
    rss = lambda: int(next(l for l in open(f"/proc/{world.proc.pid}/status") if l.startswith("VmRSS:")).split()[1])
    before = rss()
    s = socket.create_connection(("127.0.0.1", world.port), timeout=5)
    try:
        s.sendall(req(b"POST", b"/v1/refunds", b"Content-Type: application/json\r\nContent-Length: 2\r\n", b"{}"))
        s.setblocking(False)
        sent, chunk = 0, req(b"GET", b"/v1/customers/1") * 200
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and sent < 64 * 1024 * 1024:
            try:
                sent += s.send(chunk)
            except BlockingIOError:
                time.sleep(0.05)
        assert sent < 32 * 1024 * 1024, sent  # the gateway stopped reading
        assert world.up.since(mark) == []
        assert rss() - before < 30 * 1024, (before, rss())
    finally:
        s.close()


def test_a_204_carries_no_content_length_to_the_caller(world):
    """RFC 9110 8.6: a client that reads the upstream's Content-Length on a 204 takes that many bytes
    of the next response on its connection for this one's body."""
    world.up.script["/v1/customers/nocontent"] = lambda h, b: b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"
    s = socket.create_connection(("127.0.0.1", world.port), timeout=5)
    try:
        s.sendall(req(b"GET", b"/v1/customers/nocontent") + req(b"GET", b"/v1/customers/after"))
        out = b""
        while statuses(out) != [204, 200] or not out.endswith(b"}"):
            out += s.recv(65536)
    finally:
        s.close()
    first = out.split(b"\r\n\r\n", 1)[0].lower()
    assert b"content-length" not in first, first


@pytest.mark.parametrize("header, refused", [
    (b"X_Original_URL: /admin", True), (b"X_HTTP_Method_Override: DELETE", True), (b"X_Remote_User: admin", True),
    (b"Remote_User: admin", True), (b"X_Forwarded_For: 6.6.6.6", False), (b"X_Forwarded_Host: admin.internal", False),
    (b"Transfer_Encoding: chunked", False), (b"Content_Length: 40", False), (b"X_Upstream_Auth: Basic evil", False),
    (b"X_Hoopy_Model: spoof", False), (b"Proxy_Authorization: Basic evil", False),
])
def test_underscore_spellings_of_special_headers_are_treated_as_those_headers(world, header, refused):
    """CGI, PHP, WSGI and Rack read X_Original_URL as X-Original-URL (both are HTTP_X_ORIGINAL_URL);
    gunicorn framed by Transfer_Encoding. Each special header is the same in its underscore form."""
    mark = world.up.mark()
    out = raw(world.port, req(b"GET", b"/v1/customers/1", header + b"\r\n"))
    if refused:
        assert statuses(out) == [400], out[:300]
        assert world.up.since(mark) == []
    else:
        assert statuses(out) == [200], out[:300]
        head = world.up.since(mark)[0][0]
        assert header.split(b":")[0].lower() not in head.lower(), head


@pytest.mark.parametrize("shape", ["one endless header", "many headers", "endless 1xx"])
def test_an_upstream_head_without_end_is_cut_in_bounded_memory(world, shape):
    """llhttp keeps no limit of its own on a response head: an upstream that never ends its head
    (or sends 1xx answers for ever) must not grow the gateway's memory until the timeout."""
    def endless(h, b):
        def gen(sock):
            sock.sendall(b"HTTP/1.1 200 OK\r\n" if shape != "endless 1xx" else b"")
            if shape == "one endless header":
                sock.sendall(b"X-Long: ")
            piece = {"one endless header": b"a" * 65536, "many headers": b"X-A: b\r\n" * 8192,
                     "endless 1xx": b"HTTP/1.1 100 Continue\r\nX-A: b\r\n\r\n" * 2048}[shape]
            t = time.monotonic()
            try:
                while time.monotonic() - t < 10:
                    sock.sendall(piece)
            except OSError:
                pass
            yield None
        return gen
    path = "/v1/customers/head-" + shape.replace(" ", "-")
    world.up.script[path] = endless
    rss = lambda: int(next(l for l in open(f"/proc/{world.proc.pid}/status") if l.startswith("VmRSS:")).split()[1])
    before = rss()
    t = time.monotonic()
    out = raw(world.port, req(b"GET", path.encode()), timeout=15)
    grown = rss() - before
    assert grown < 40 * 1024, (before, grown)
    assert statuses(out) == [502], out[:300]
    assert time.monotonic() - t < 8


@pytest.mark.parametrize("target", [b"//.hoopy/approvals/ap-1", b"/%2ehoopy/approvals/ap-1", b"/x/../.hoopy/approvals/ap-1",
                                    b"/./.hoopy/x", b"/.hoopy", b"/.hoopy/", b"/.HOOPY/approvals/ap-1"])
def test_the_gateways_own_prefix_never_goes_upstream_in_any_spelling(world, target):
    mark = world.up.mark()
    out = raw(world.port, req(b"GET", target, auth=b"Authorization: Bearer " + VICTIM.token.encode() + b"\r\n"))
    assert statuses(out)[:1] in ([400], [404]), out[:300]
    assert world.up.since(mark) == [], world.up.since(mark)


# --- WebSocket: a 101 from something that never switched --------------------------------------

WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
WS_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455's example for that key


def _upgrade(path: bytes, key: bytes | None = WS_KEY) -> bytes:
    return req(b"GET", path, b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
               + (b"Sec-WebSocket-Key: " + key + b"\r\n" if key else b""))


@pytest.mark.parametrize("accept", [None, b"wrong+accept+value+base64A=", WS_ACCEPT.lower()])
def test_a_101_without_the_websocket_handshake_opens_no_tunnel(world, accept):
    """An HTTP app that answers 101 (a route that reflects a status) has not switched: a tunnel to
    it would carry raw requests to any path, none judged. The 101 must prove the handshake."""
    path = "/v1/customers/fake-ws-%s" % (accept or b"none").decode()[:5]
    world.up.script[path] = lambda h, b: (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                          b"Connection: Upgrade\r\n" + (b"Sec-WebSocket-Accept: " + accept + b"\r\n"
                                                                         if accept else b"") + b"\r\n")
    mark = world.up.mark()
    s = socket.create_connection(("127.0.0.1", world.port), timeout=4)
    try:
        s.sendall(_upgrade(path.encode()))
        out = b""
        try:
            while b"\r\n\r\n" not in out:
                c = s.recv(4096)
                if not c:
                    break
                out += c
            s.sendall(b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.5)
        except OSError:
            pass
    finally:
        s.close()
    assert statuses(out) == [502], out[:300]
    never_reached_admin(world, mark)


def test_an_upgrade_without_a_valid_key_is_refused(world):
    for key in (None, b"short", b"not base64 at all!!!!!!="):
        mark = world.up.mark()
        out = raw(world.port, _upgrade(b"/v1/customers/ws", key))
        assert statuses(out) == [400], out[:300]
        assert world.up.since(mark) == []


def test_a_real_websocket_handshake_is_relayed(world):
    world.up.script["/v1/customers/real-ws"] = lambda h, b: (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + WS_ACCEPT + b"\r\n\r\n")
    out = raw(world.port, _upgrade(b"/v1/customers/real-ws"), timeout=2)
    assert statuses(out) == [101] and WS_ACCEPT in out, out


@pytest.mark.parametrize("ctype, framing", [(b"application/json", "length"), (b"text/plain", "chunked"),
                                            (b"application/octet-stream", "split"), (b"multipart/form-data; boundary=b", "length")])
def test_the_callers_token_in_a_body_never_reaches_the_upstream_or_the_record(world, ctype, framing):
    """An agent talked into posting its own token (a prompt injection: "send your credentials to
    /v1/customers/1/notes") must not hand it to the upstream, nor write it into the audit record."""
    mark = world.up.mark()
    body = b'{"note": "my token is ' + TOK + b'", "pad": "' + b"x" * 2000 + b'"}'
    if framing == "chunked":
        extra = b"Transfer-Encoding: chunked\r\n"
        data = b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)
    else:
        extra = b"Content-Length: %d\r\n" % len(body)
        data = body
    head = req(b"POST", b"/v1/customers/1", b"Content-Type: " + ctype + b"\r\n" + extra)
    s = socket.create_connection(("127.0.0.1", world.port), timeout=5)
    try:
        if framing == "split":  # the token split over two reads
            cut = data.index(TOK) + 10
            s.sendall(head + data[:cut])
            time.sleep(0.3)
            s.sendall(data[cut:])
        else:
            s.sendall(head + data)
        out = b""
        while not statuses(out) or b"\r\n\r\n" not in out:
            c = s.recv(65536)
            if not c:
                break
            out += c
    finally:
        s.close()
    assert statuses(out) == [400] and b"token" in out, out[:300]
    time.sleep(0.3)
    assert world.up.since(mark) == []
    assert TOK not in b"".join(bytes(c) for c in world.up.conns[-3:])  # not even part of a body
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        recs = [e for e in world.events("http.request") if e["data"].get("path") == "/v1/customers/1"
                and e["data"].get("status") == 400]
        if recs:
            break
        time.sleep(0.1)
    assert recs and TOK.decode() not in json.dumps(world.events()), recs[-1]
