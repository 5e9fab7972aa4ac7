"""The httpcpu4 round's shortcuts attacked on the wire, against a real ``twistd -n hoopy``.

What that round changed: an answer whose body came whole with its head is written in one piece (no
stream, stall watch or Deferred), its head handed over once the read is parsed; the body's stall
watch takes the exchange's upstream timer over; the response stream ends its exchange by
callbacks; a checked head's upstream request head is made once per connection; a body's transport
pauses only its own request's connection; a small GET's cycles are cut when it is done. The
upstream is tests/wire_peers.RawUpstream (a real socket peer that answers what each test scripts:
two answers in one send, bodies to HEAD/204/304, lengths that lie, heads and bodies that stall or
trickle); the caller speaks raw bytes (pipelining, HTTP/1.0, disconnecting mid-answer).
"""
from __future__ import annotations

import base64
import gzip
import json
import re
import socket
import threading
import time
from urllib.parse import quote

import pytest

from tests.support import HoopyProcess, free_port, ident
from tests.wire_peers import RawUpstream, raw, read_all, response, statuses

CALLER = ident("caller")
OTHER = ident("other")
SECRET = "Bearer up/str+eam-Secret-4444=wxyz"
CORE = b"up/str+eam-secret-4444=wxyz"  # lower case, without its scheme
BASIC = "Basic " + base64.b64encode(b"svc-user:pa55word-q4").decode()
TIMEOUT = 2.0  # both connections' upstream_timeout
MASK_LIMIT = 4096


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    up = RawUpstream()
    port, masked_port = free_port(), free_port()
    body = CALLER.toml(scram=False) + OTHER.toml(scram=False) + f"""
[connections.api]
type = "http"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up.port}"
upstream_headers = {{ Authorization = "env:API_AUTH", X-Upstream-Auth = "env:API_BASIC" }}
upstream_timeout = "{TIMEOUT:g}s"
pool_size = 2

[connections.masked]
type = "http"
listen = "tcp:{masked_port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up.port}"
upstream_headers = {{ Authorization = "env:API_AUTH" }}
upstream_timeout = "{TIMEOUT:g}s"
mask_limit = "{MASK_LIMIT}"
pool_size = 2

[[masking]]
connection = "masked"
patterns = ["email"]

[[grants]]
identity = "caller"
connection = "api"
allow = ["GET /v1/**", "HEAD /v1/**", "POST /v1/**"]

[[grants]]
identity = "caller"
connection = "masked"
allow = ["GET /v1/**", "HEAD /v1/**"]

[[grants]]
identity = "other"
connection = "api"
allow = ["GET /v1/other/**"]
"""
    gw = HoopyProcess(tmp_path_factory.mktemp("fastpath4"), body, env={"API_AUTH": SECRET, "API_BASIC": BASIC})
    gw.start()
    gw.port, gw.masked_port, gw.up = port, masked_port, up
    yield gw
    gw.stop()
    up.stop()
    assert "Traceback" not in gw.log_text(), gw.log_text()[-4000:]


def auth(who=CALLER) -> bytes:
    return b"Authorization: Bearer " + who.token.encode() + b"\r\n"


def req(target: bytes, extra: bytes = b"", who=CALLER, method: bytes = b"GET", version: bytes = b"HTTP/1.1") -> bytes:
    return method + b" " + target + b" " + version + b"\r\nHost: x\r\n" + (auth(who) if who else b"") + extra + b"\r\n"


def answers(out: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each Content-Length answer in ``out`` (bodiless: HEAD/204/304 give b"")."""
    got = []
    rest = out
    while True:
        head, sep, tail = rest.partition(b"\r\n\r\n")
        if not sep:
            return got
        m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
        if not m:
            return got
        code = int(m.group(1))
        ln = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        n = int(ln.group(1)) if ln and code not in (204, 304) else 0
        got.append((code, tail[:n]))
        rest = tail[n:]


def until_answered_or_closed(s, timeout: float) -> bytes:
    """What comes until one whole answer is in, or the connection ends (cut), or ``timeout``."""
    s.settimeout(timeout)
    out = b""
    try:
        while not answers(out) or len(answers(out)[0][1]) < int(
                (re.search(rb"(?im)^content-length:\s*(\d+)", out) or [b"", b"0"])[1]):
            c = s.recv(65536)
            if not c:
                break
            out += c
    except (socket.timeout, ConnectionResetError):
        pass
    return out


def leaked(data: bytes) -> bool:
    low = data.lower()
    return any(x in low for x in (CORE, quote(CORE.decode(), safe="").lower().encode(), b"pa55word-q4",
                                  BASIC.split()[1].lower().encode()))


def records(world, path: str, n: int = 1, timeout: float = 5) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        got = [e for e in world.events("http.request") if e["data"].get("path") == path]
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def script(world, path: str, fn):
    world.up.script[path] = fn
    return path.encode()


# --- one piece: a whole answer in the read that brought its head ------------------------------

def _echoes():
    sec, core = SECRET.encode(), SECRET.split(" ", 1)[1].encode()
    return {
        "json": response(200, b'{"token": "' + sec + b'", "again": "' + core.upper() + b'"}',
                         [(b"Content-Type", b"application/json")]),
        "json escaped slash": response(200, b'{"t": "' + core.replace(b"/", b"\\/") + b'"}',
                                       [(b"Content-Type", b"application/json")]),
        "text": response(200, b"x" * 5000 + core + b"y" * 10, [(b"Content-Type", b"text/plain")]),
        "pct in html": response(200, b'<a href="/cb?t=' + quote(core.decode(), safe="").encode() + b'">',
                                [(b"Content-Type", b"text/html")]),
        "basic decoded": response(200, b"user svc-user:pa55word-q4", [(b"Content-Type", b"text/plain")]),
        "and in a header": response(200, b"{}", [(b"X-Echo", core), (b"Content-Type", b"application/json")]),
        "error status": response(401, b'{"error": "bad key ' + core + b'"}', [(b"Content-Type", b"application/json")]),
        "octet": response(200, b"\x00\x01" + core + b"\x02", [(b"Content-Type", b"application/octet-stream")]),
    }


ECHOES = _echoes()


@pytest.mark.parametrize("name", list(ECHOES))
def test_the_credential_echoed_in_a_one_piece_answer_never_reaches_the_caller_or_the_record(world, name):
    path = script(world, "/v1/echo1-" + re.sub(r"[^a-z]+", "-", name), lambda h, b: ECHOES[name])
    with socket.create_connection(("127.0.0.1", world.port), timeout=6) as s:
        # twice on one connection (the second one with its upstream head made once), then closed
        s.sendall(req(path) + req(path, b"Connection: close\r\n"))
        out = read_all(s)
    got = answers(out)
    assert [c for c, _ in got] == [int(ECHOES[name][9:12])] * 2, out
    assert not leaked(out), out
    assert got[0][1] == got[1][1] and len(got[0][1]) == len(ECHOES[name].partition(b"\r\n\r\n")[2]), out
    recs = records(world, path.decode(), 2)
    assert len(recs) == 2 and not leaked(json.dumps(recs).encode()), recs


MASKED = {
    "json": (response(200, b'{"email": "ada@example.com", "n": 1}', [(b"Content-Type", b"application/json")]), 200),
    "text": (response(200, b"mail ada@example.com now", [(b"Content-Type", b"text/plain")]), 200),
    "gzip json": (response(200, gzip.compress(b'{"email": "ada@example.com"}'),
                           [(b"Content-Type", b"application/json"), (b"Content-Encoding", b"gzip")]), 200),
    "past the limit": (response(200, b'{"e": "ada@example.com", "pad": "' + b"p" * MASK_LIMIT + b'"}',
                                [(b"Content-Type", b"application/json")]), 502),
    "gzip past the limit": (response(200, gzip.compress(b'{"e": "ada@example.com", "p": "' + b"p" * 3 * MASK_LIMIT
                                                        + b'"}'),
                                     [(b"Content-Type", b"application/json"), (b"Content-Encoding", b"gzip")]), 502),
    "untyped": (response(200, b'{"email": "ada@example.com"}'), 200),
    "event stream": (response(200, b"data: ada@example.com\n\n", [(b"Content-Type", b"text/event-stream")]), 200),
}


@pytest.mark.parametrize("name", list(MASKED))
def test_a_one_piece_answer_that_must_be_masked_is_masked_or_refused(world, name):
    answer, status = MASKED[name]
    path = script(world, "/v1/mask1-" + re.sub(r"[^a-z]+", "-", name), lambda h, b: answer)
    out = raw(world.masked_port, req(path, b"Connection: close\r\n"), wait_close=True)
    assert statuses(out) == [status], out
    assert b"ada@example.com" not in out and b"ada@example.com" not in gzip_safe(out), out
    recs = records(world, path.decode())
    assert recs and "ada@example.com" not in json.dumps(recs), recs


def gzip_safe(out: bytes) -> bytes:
    body = out.partition(b"\r\n\r\n")[2]
    try:
        return gzip.decompress(body)
    except Exception:
        return b""


# --- a second answer, or a body where none may be, in the same read --------------------------------

TRAILING = {
    "second response": response(200, b"first") + response(200, b"EVIL-SECOND"),
    "content-length too short": b"HTTP/1.1 200 X\r\nContent-Length: 5\r\n\r\nfirstHTTP/1.1 200 X\r\n"
                                b"Content-Length: 11\r\n\r\nEVIL-SECOND",
    "204 with a body": b"HTTP/1.1 204 X\r\n\r\nHTTP/1.1 200 X\r\nContent-Length: 11\r\n\r\nEVIL-SECOND",
    "304 with a body": b"HTTP/1.1 304 X\r\nContent-Length: 11\r\n\r\nEVIL-SECOND",
    "100 then two": b"HTTP/1.1 100 Continue\r\n\r\n" + response(200, b"first") + response(200, b"EVIL-SECOND"),
    "chunked with trailers then another": (b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n"
                                           b"X-T: 1\r\n\r\n" + response(200, b"EVIL-SECOND")),
}


@pytest.mark.parametrize("name", list(TRAILING))
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_bytes_after_a_one_piece_answer_never_answer_the_next_request(world, name, method):
    """Whatever follows a complete answer in its read is nobody's: never the answer of the request
    pipelined behind it (which goes upstream on this very connection if it is pooled), never of
    another caller's."""
    path = script(world, "/v1/trail-" + re.sub(r"[^a-z0-9]+", "-", name), lambda h, b: TRAILING[name])
    mark = world.up.mark()
    with socket.create_connection(("127.0.0.1", world.port), timeout=6) as s:
        s.sendall(req(path, method=method) + req(b"/v1/after-" + path[4:]) + req(b"/v1/after2", b"Connection: close\r\n"))
        out = read_all(s)
    assert b"EVIL-SECOND" not in out, out
    # the two requests behind it get their own answers (the upstream's echo of their own request line)
    assert out.count(b"GET /v1/after-" + path[4:] + b" HTTP/1.1") == 1, out
    assert out.count(b"GET /v1/after2 HTTP/1.1") == 1, out
    lines = [h.split(b"\r\n", 1)[0] for h, _ in world.up.since(mark)]
    assert lines == [method + b" " + path + b" HTTP/1.1", b"GET /v1/after-" + path[4:] + b" HTTP/1.1",
                     b"GET /v1/after2 HTTP/1.1"], lines


def test_a_content_length_longer_than_what_came_is_cut_for_the_caller(world):
    path = script(world, "/v1/short-body", lambda h, b: b"HTTP/1.1 200 X\r\nContent-Length: 50\r\nConnection: close"
                  b"\r\n\r\nonly-twenty-bytes...")
    with socket.create_connection(("127.0.0.1", world.port), timeout=6) as s:
        s.sendall(req(path) + req(b"/v1/next"))
        out = read_all(s)
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Content-Length: 50" in head and len(body) < 50 and b"/v1/next" not in body, out
    recs = records(world, "/v1/short-body")
    assert recs and recs[-1]["outcome"] != "ok", recs


# --- the stall watch, on the upstream's timer ------------------------------------------------------

def _timed(sends, after: float = TIMEOUT * 3):
    """An answer sent in pieces: (delay before, bytes) each; the socket held open ``after`` (unread)."""
    def fn(h, b):
        def gen(sock):
            for delay, data in sends:
                time.sleep(delay)
                sock.sendall(data)
            time.sleep(after)
            yield None
        return gen
    return fn


@pytest.mark.parametrize("port", ["port", "masked_port"])
@pytest.mark.parametrize("shape", ["head only", "head and a byte", "a trickle then silence"])
def test_an_upstream_that_stalls_after_its_head_is_cut_at_the_timeout(world, port, shape):
    head = b"HTTP/1.1 200 X\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    sends = {"head only": [(0, head)], "head and a byte": [(0, head + b"{")],
             "a trickle then silence": [(0, head)] + [(0.4, b" ")] * 6}[shape]
    path = script(world, f"/v1/stall-{port}-{shape.replace(' ', '-')}", _timed(sends))
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", getattr(world, port)), timeout=10) as s:
        s.sendall(req(path))
        out = until_answered_or_closed(s, timeout=TIMEOUT * 4)
    took = time.monotonic() - t
    last = sum(d for d, _ in sends)
    assert last + TIMEOUT - 0.3 < took < last + TIMEOUT + 1.5, (took, out)
    # never a complete answer: refused before its head went out, or cut short
    assert statuses(out) in ([502], [504]) or (statuses(out) == [200] and len(out.partition(b"\r\n\r\n")[2]) < 100), out
    recs = records(world, path.decode())
    assert recs and recs[-1]["outcome"] != "ok" and "stalled" in json.dumps(recs[-1]), recs


@pytest.mark.parametrize("port", ["port", "masked_port"])
@pytest.mark.parametrize("shape", ["nothing", "a 100 then nothing", "a head dripped"])
def test_an_upstream_without_a_whole_head_is_cut_at_the_timeout_from_the_request(world, port, shape):
    head = b"HTTP/1.1 200 X\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"
    sends = {"nothing": [], "a 100 then nothing": [(0.2, b"HTTP/1.1 100 Continue\r\n\r\n")],
             "a head dripped": [(0.3, head[i:i + 4]) for i in range(0, len(head), 4)]}[shape]
    path = script(world, f"/v1/nohead-{port}-{shape.replace(' ', '-')}", _timed(sends))
    t = time.monotonic()
    with socket.create_connection(("127.0.0.1", getattr(world, port)), timeout=10) as s:
        s.sendall(req(path))
        out = until_answered_or_closed(s, timeout=TIMEOUT * 4)
    took = time.monotonic() - t
    assert statuses(out) == [504] and TIMEOUT - 0.3 < took < TIMEOUT + 1.5, (took, out)


@pytest.mark.parametrize("port", ["port", "masked_port"])
def test_a_late_head_and_a_slow_body_are_timed_from_their_last_byte_not_from_the_request(world, port):
    """The head comes just before the upstream timeout, the body a byte every 0.6 s for longer than
    the timeout: each gap is under it, so the answer completes (the timer taken over is reset)."""
    body = b'{"a": 12345}'
    head = b"HTTP/1.1 200 X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    sends = [(TIMEOUT - 0.4, head)] + [(0.6, body[i:i + 2]) for i in range(0, len(body), 2)]
    path = script(world, f"/v1/late-{port}", _timed(sends, after=0))
    with socket.create_connection(("127.0.0.1", getattr(world, port)), timeout=15) as s:
        s.sendall(req(path))
        s.settimeout(15)
        out = b""
        while not out.endswith(body):
            c = s.recv(65536)
            if not c:
                break
            out += c
    assert statuses(out) == [200] and out.endswith(body), out


# --- pipelining, a caller gone mid-answer, the pool ---------------------------------------------------

def test_pipelined_requests_each_get_their_own_one_piece_answer(world):
    paths = [b"/v1/pipe/a", b"/v1/pipe/b", b"/v1/pipe/a", b"/v1/pipe/c?x=1", b"/v1/pipe/a", b"/v1/pipe/b"]
    with socket.create_connection(("127.0.0.1", world.port), timeout=6) as s:
        s.sendall(b"".join(req(p) for p in paths[:-1]) + req(paths[-1], b"Connection: close\r\n"))
        out = read_all(s)
    got = answers(out)
    assert [c for c, _ in got] == [200] * len(paths), out
    for p, (_, b) in zip(paths, got):
        assert json.loads(b)["line"] == "GET " + p.decode() + " HTTP/1.1", (p, b)


def test_a_caller_gone_mid_answer_is_recorded_and_the_pool_not_poisoned(world):
    head = b"HTTP/1.1 200 X\r\nContent-Type: text/plain\r\nContent-Length: 40\r\n\r\n"
    path = script(world, "/v1/gone-mid", _timed([(0, head + b"a" * 10), (0.8, b"b" * 10), (0.3, b"c" * 20)]))
    with socket.create_connection(("127.0.0.1", world.port), timeout=6) as s:
        s.sendall(req(path) + req(b"/v1/gone-next"))
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
    # the same and other callers on new connections get their own answers
    for p in (b"/v1/after-gone-1", b"/v1/after-gone-2", b"/v1/after-gone-3"):
        out = raw(world.port, req(p))
        assert json.loads(out.partition(b"\r\n\r\n")[2])["line"] == "GET " + p.decode() + " HTTP/1.1", out
    recs = records(world, "/v1/gone-mid")
    assert recs and recs[-1]["outcome"] == "client gone", recs


def test_requests_on_one_connection_after_every_kind_of_failure_see_no_stale_state(world):
    """A keep-alive connection through answered, refused, unauthenticated, broken-upstream and
    stalled requests, with the same head again between them: each answered as its own."""
    script(world, "/v1/ka/broken", lambda h, b: None)  # closes without answering
    script(world, "/v1/ka/half", lambda h, b: b"HTTP/1.1 200 X\r\nContent-Length: 9\r\n\r\nhalf")
    same = req(b"/v1/ka/same")
    seq = [(same, 200), (req(b"/admin"), 403), (req(b"/v1/ka/x", who=None), 401), (same, 200),
           (req(b"/v1/ka/broken"), 502), (same, 200), (req(b"/v1/ka/x", who=OTHER), 403), (same, 200),
           (req(b"/v1/other/x", who=OTHER), 200), (same, 200)]
    mark = world.up.mark()
    with socket.create_connection(("127.0.0.1", world.port), timeout=8) as s:
        for data, status in seq:
            s.sendall(data)
            got = b""
            s.settimeout(8)
            while len(answers(got)) < 1:
                c = s.recv(65536)
                assert c, (data, got)
                got += c
            (code, body), = answers(got)
            assert code == status, (data, got)
            if status == 200:
                line = json.loads(body)["line"]
                assert line == data.split(b"\r\n", 1)[0].decode(), (line, data)
        # a body cut by its upstream: the connection is cut too, nothing of it taken for an answer
        s.sendall(req(b"/v1/ka/half") + same)
        tail = read_all(s, timeout=4)
    assert tail.startswith(b"HTTP/1.1 200") and b"ka/same" not in tail, tail
    sent = [h.split(b"\r\n", 1)[0] for h, _ in world.up.since(mark)]
    assert b"GET /admin HTTP/1.1" not in sent and b"GET /v1/ka/x HTTP/1.1" not in sent, sent


# --- the upstream request head made once per connection --------------------------------------------

def test_the_same_head_in_http10_and_http11_goes_upstream_alike_and_is_answered_in_its_own_version(world):
    mark = world.up.mark()
    with socket.create_connection(("127.0.0.1", world.port), timeout=6) as s:
        s.sendall(req(b"/v1/ver") + req(b"/v1/ver") + req(b"/v1/ver", version=b"HTTP/1.0"))
        out = read_all(s)
    assert re.findall(rb"HTTP/1\.[01] ", out) == [b"HTTP/1.1 ", b"HTTP/1.1 ", b"HTTP/1.0 "], out
    heads = [h for h, _ in world.up.since(mark)]
    assert len(heads) == 3 and heads[0] == heads[1] == heads[2], heads


@pytest.mark.parametrize("a,b", [
    (b"/v1/h/x", b"/v1/h/%78"), (b"/v1/h/x", b"/v1/h/x."), (b"/v1/h/x", b"/v1/h/X"), (b"/v1/h/x", b"/v1/h/x/"),
    (b"/v1/h/x?a=1", b"/v1/h/x?a=%31"), (b"/v1/h/x?a=1", b"/v1/h/x?a=1&a=2"),
])
def test_targets_that_differ_in_spelling_each_go_upstream_as_their_own(world, a, b):
    mark = world.up.mark()
    with socket.create_connection(("127.0.0.1", world.port), timeout=6) as s:
        s.sendall(req(a) + req(b) + req(a) + req(b, b"Connection: close\r\n"))
        out = read_all(s)
    got = answers(out)
    lines = [h.split(b"\r\n", 1)[0] for h, _ in world.up.since(mark)]
    assert len(lines) == len(got) == 4, (lines, out)
    assert lines[0] == lines[2] and lines[1] == lines[3], lines
    for (_, body), line in zip(got, lines):
        assert json.loads(body)["line"] == line.decode(), (body, line)


@pytest.mark.parametrize("extra", [
    b"Connection: X-Drop\r\nX-Drop: 1\r\n", b"X-Drop: 1\r\nConnection: x-drop\r\n", b"Connection: keep-alive, X-Drop\r\n",
    b"TE: trailers\r\n", b"Expect: 100-continue\r\n", b"Upgrade: h2c\r\nConnection: Upgrade\r\n",
])
def test_hop_by_hop_named_headers_never_go_upstream_on_a_head_made_once(world, extra):
    mark = world.up.mark()
    with socket.create_connection(("127.0.0.1", world.port), timeout=6) as s:
        s.sendall(req(b"/v1/hop", extra) + req(b"/v1/hop", extra) + req(b"/v1/hop", b"Connection: close\r\n"))
        out = read_all(s)
    got = world.up.since(mark)
    if b"Upgrade: h2c" in extra:
        assert statuses(out)[:1] in ([400], [403], [426], [501]) or not any(b"h2c" in h for h, _ in got), out
        return
    assert len(got) == 3, (got, out)
    for h, _ in got:
        low = h.lower()
        assert b"\r\nx-drop:" not in low and b"\r\nte:" not in low and b"\r\nexpect:" not in low \
            and b"\r\nconnection: x-drop" not in low, h
    assert not leaked(out), out


# --- a mask slot waited for by a caller that leaves -----------------------------------------------------

def test_a_caller_gone_while_its_answer_waits_for_a_mask_slot_lets_its_upstream_connection_go(world):
    """Four masked bodies trickling hold the four mask slots; a fifth answer's head is in, its body
    behind it, and it waits for a slot with its upstream connection paused. Its caller leaves: the
    upstream connection must be let go (closed), not left paused (open, unread) for ever."""
    head = b"HTTP/1.1 200 X\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n"
    hold = _timed([(0, head + b'{"a": "')] + [(0.5, b"x")] * 16)
    closed = threading.Event()

    def fifth(h, b):
        def gen(sock):
            sock.sendall(head + b'{"a": "')
            time.sleep(0.3)
            sock.sendall(b"y" * 10)  # read after the head was handed: the socket is paused for it
            sock.settimeout(8)
            try:
                while sock.recv(65536):
                    pass
                closed.set()
            except ConnectionResetError:
                closed.set()
            except OSError:
                pass
            yield None
        return gen
    for i in range(4):
        script(world, f"/v1/slot-{i}", hold)
    script(world, "/v1/slot-5", fifth)
    holders = []
    mark = world.up.mark()
    for i in range(4):
        s = socket.create_connection(("127.0.0.1", world.masked_port), timeout=12)
        s.sendall(req(b"/v1/slot-%d" % i))
        holders.append(s)
    deadline = time.monotonic() + 10
    while len(world.up.since(mark)) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # (their heads in: each holds a slot)
    s5 = socket.create_connection(("127.0.0.1", world.masked_port), timeout=5)
    s5.sendall(req(b"/v1/slot-5"))
    while len(world.up.since(mark)) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(world.up.since(mark)) == 5, world.up.since(mark)
    time.sleep(1.0)
    s5.close()
    try:
        assert closed.wait(7), "the upstream connection of a caller gone while waiting for a mask slot stays open"
    finally:
        for s in holders:
            s.close()


# --- an upstream that answers before the request body is all in ---------------------------------------

class EarlyUpstream:
    """Answers each request as soon as its head is in (as servers that refuse or stream do), then
    reads its body as its framing says (as a server draining it before the next request does).
    ``seen``: (request line, body) of each request, as this upstream framed them."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.seen: list = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                s, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        buf = b""
        s.settimeout(20)

        def need(n):
            nonlocal buf
            while len(buf) < n:
                c = s.recv(65536)
                if not c:
                    raise EOFError
                buf += c

        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    c = s.recv(65536)
                    if not c:
                        return
                    buf += c
                head, _, buf = buf.partition(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0]
                low = head.lower()
                data = json.dumps({"line": line.decode("latin-1")}).encode()
                s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                          % (len(data), data))
                body = b""
                m = re.search(rb"\r\ncontent-length: *(\d+)", low)
                if b"\r\ntransfer-encoding: chunked" in low:
                    while True:
                        while b"\r\n" not in buf:
                            need(len(buf) + 1)
                        size_line, _, buf = buf.partition(b"\r\n")
                        size = int(size_line.split(b";")[0], 16)
                        need(size + 2)
                        body += buf[:size]
                        buf = buf[size + 2:]
                        if size == 0:
                            break
                elif m:
                    need(int(m.group(1)))
                    body, buf = buf[:int(m.group(1))], buf[int(m.group(1)):]
                self.seen.append((line, body))
        except (OSError, EOFError, ValueError):
            return
        finally:
            s.close()

    def stop(self):
        self.closed = True
        self.sock.close()


@pytest.fixture(scope="module")
def early(tmp_path_factory):
    up = EarlyUpstream()
    port = free_port()
    body = CALLER.toml(scram=False) + OTHER.toml(scram=False) + f"""
[connections.early]
type = "http"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up.port}"
upstream_timeout = "{TIMEOUT:g}s"
pool_size = 1

[[grants]]
identity = "caller"
connection = "early"
allow = ["GET /v1/**", "POST /v1/**"]

[[grants]]
identity = "other"
connection = "early"
allow = ["GET /v1/**"]
"""
    gw = HoopyProcess(tmp_path_factory.mktemp("early"), body)
    gw.start()
    gw.port, gw.up = port, up
    yield gw
    gw.stop()
    up.stop()
    assert "Traceback" not in gw.log_text(), gw.log_text()[-4000:]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_an_upstream_answering_before_the_body_is_in_never_gets_a_short_body_nor_anothers_request(early, framing):
    """The caller sends half its body, gets the upstream's early answer, then the rest. The rest is
    dropped (the answer is out), so the upstream got a short body: it must never see it complete
    (a chunked body ended by the gateway), and its connection, still waiting for the rest of a
    Content-Length body, must never carry the next caller's request (its head read as that body)."""
    if framing == "chunked":
        head = b"Transfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n"
        first, rest = b"5\r\nhello\r\n", b"5\r\nworld\r\n0\r\n\r\n"
    else:
        head = b"Content-Length: 40\r\nContent-Type: application/octet-stream\r\n"
        first, rest = b"hello", b"w" * 35
    with socket.create_connection(("127.0.0.1", early.port), timeout=8) as s:
        s.sendall(req(b"/v1/upload-" + framing.encode(), head, method=b"POST") + first)
        got = until_answered_or_closed(s, 5)
        assert statuses(got) == [200], got
        time.sleep(0.3)
        s.sendall(rest)
        time.sleep(0.5)
    # another caller, on the pooled connection if it went back to the pool
    for i in range(2):
        out = raw(early.port, req(b"/v1/victim-%d" % i, who=OTHER))
        assert statuses(out) == [200] and b"GET /v1/victim-%d HTTP/1.1" % i in out, out
    time.sleep(0.3)
    for line, body in early.up.seen:
        assert not (line.startswith(b"POST /v1/upload-") and len(body) < (10 if framing == "chunked" else 40)), \
            ("the upstream took a short body as whole", line, body)
        assert b"GET /v1/victim" not in body, ("another caller's request read as a body", line, body)
