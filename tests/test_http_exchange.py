"""The HTTP gateway in memory, no sockets: the upstream client over StringTransport, and scripted
exchanges in the mitmproxy style: the client sends X, the policy answers Y, the upstream sees Z.

Hypothesis checks that the client reads a response the same however its bytes are split.
"""
from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer
from zope.interface.verify import verifyObject

from hoopy.http.checks import Refusal, check_shape, token_of
from hoopy.http.exchange import Exchange
from hoopy.http.sink import IResponseSink
from hoopy.http.masker import Masker
from hoopy.http.upload import BodyPipe
from hoopy.http.upstream import UpstreamClient
from hoopy.upstream import UpstreamError
from hoopy.policy.masking import BUILTIN
from hoopy.policy.verdicts import Allow, Deny, Hold, Judgement

# --- the upstream client -------------------------------------------------------------------------


class _Endpoint:
    """Connects at once, to a StringTransport per connection (kept in ``transports``)."""

    def __init__(self):
        self.transports = []
        self.protocols = []

    def connect(self, factory):
        p = factory.buildProtocol(None)
        t = StringTransport()
        self.transports.append(t)
        self.protocols.append(p)
        p.makeConnection(t)
        return defer.succeed(p)


class _Body:
    def __init__(self):
        self.data, self.reason = [], None

    def makeConnection(self, transport):
        self.transport = transport

    def dataReceived(self, data):
        self.data.append(data)

    def connectionLost(self, reason):
        self.reason = reason


def _client():
    c = UpstreamClient(Clock(), "http://up.example:8080", pool_size=4)
    ep = _Endpoint()
    c.endpoint = lambda: ep
    return c, ep


def _ask(c, method=b"GET", target=b"/x", body=None):
    results = []
    c.request(method, target, [(b"Host", b"up.example:8080")], body).addBoth(results.append)
    return results


def _feed(proto, data: bytes, cuts):
    pos = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        if cut > pos:
            proto.dataReceived(data[pos:cut])
            pos = cut


def _read(c, ep, response: bytes, cuts=(), method=b"GET"):
    got = _ask(c, method)
    _feed(ep.protocols[-1], response, cuts)
    assert got, "no response head"
    if isinstance(got[0], Failure):
        return got[0], None
    body = _Body()
    got[0].deliverBody(body)
    return got[0], body


RESPONSES = [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello", b"hello", ResponseDone),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=1\r\nlo\r\n0\r\nT: 1\r\n\r\n",
     b"hello", ResponseDone),
    (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"ok", ResponseDone),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", b"", ResponseDone),
]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(RESPONSES), st.lists(st.integers(0, 120), max_size=8))
def test_a_response_reads_the_same_however_its_bytes_are_split(case, cuts):
    raw, body, done = case
    c, ep = _client()
    resp, b = _read(c, ep, raw, cuts)
    assert b"".join(b.data) == body and b.reason.check(done)
    assert len(c.idle) == 1  # complete and kept alive: back in the pool


def test_head_has_no_body_and_the_connection_reads_the_next_response():
    c, ep = _client()
    resp, b = _read(c, ep, b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n", method=b"HEAD")
    assert resp.length == 0 and b.reason.check(ResponseDone) and len(c.idle) == 1
    resp, b = _read(c, ep, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert b"".join(b.data) == b"ok" and len(ep.transports) == 1  # the same connection, reused


def test_a_body_until_close_is_potential_data_loss():
    c, ep = _client()
    resp, b = _read(c, ep, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nsome")
    ep.protocols[-1].connectionLost(Failure(ConnectionError("closed")))
    assert b"".join(b.data) == b"some" and b.reason.check(PotentialDataLoss) and not c.idle


def test_a_length_cut_short_is_a_failure_not_an_end():
    c, ep = _client()
    resp, b = _read(c, ep, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    ep.protocols[-1].connectionLost(Failure(ConnectionError("reset")))
    assert b.reason.check(ResponseFailed)


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n",  # bytes nobody asked for
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
])
def test_what_the_strict_parser_refuses_never_reaches_the_caller_as_good(raw):
    c, ep = _client()
    got = _ask(c)
    ep.protocols[-1].dataReceived(raw)
    if got and not isinstance(got[0], Failure):  # a head that was fine, then what followed was not
        body = _Body()
        got[0].deliverBody(body)
        assert body.reason is not None
    assert ep.transports[-1].disconnecting and not c.idle  # never back in the pool


def test_a_stale_pooled_connection_is_retried_once_for_idempotent_requests():
    c, ep = _client()
    _read(c, ep, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert len(c.idle) == 1
    got = _ask(c)  # goes out on the pooled connection, which the upstream had closed
    ep.protocols[0].connectionLost(Failure(ConnectionError("reset by peer")))
    assert len(ep.transports) == 2 and not got  # sent again, on a new connection
    assert ep.transports[1].value().startswith(b"GET /x HTTP/1.1\r\n")
    ep.protocols[1].dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert got and got[0].code == 200
    # a POST is never sent twice
    got = _ask(c, b"POST", body=b"x")
    ep.protocols[1].connectionLost(Failure(ConnectionError("reset by peer")))
    assert isinstance(got[0], Failure) and got[0].check(UpstreamError)


def test_a_streamed_body_is_chunked_and_a_failed_one_aborts_the_connection():
    c, ep = _client()
    pipe = BodyPipe(StringTransport(), None)
    got = _ask(c, b"POST", body=pipe)
    t = ep.transports[-1]
    pipe.feed(b"abc")
    assert t.value().endswith(b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    pipe.abort(Failure(ConnectionError("the client went away")))
    assert t.disconnecting or getattr(t, "aborted", False) or isinstance(got[0], Failure)
    assert not c.idle


def test_cancel_before_the_head_aborts_and_never_pools():
    c, ep = _client()
    d = c.request(b"GET", b"/x", [])
    d.addErrback(lambda f: None)
    d.cancel()
    assert not c.idle


# --- scripted exchanges ----------------------------------------------------------------------------


@attrs.define
class Script:
    """What the policy answers and what the test saw of the session."""

    verdict: object = attrs.field(factory=lambda: Allow("GET /**"))
    judged: list = attrs.field(factory=list)
    events: list = attrs.field(factory=list)


class FakeSession:
    def __init__(self, script: Script, identity: str):
        self.script, self.identity, self.ended = script, identity, False

    def judge(self, op):
        return Judgement("allow", "GET /**", "")

    def decide(self, op, approvals=None):
        self.script.judged.append(op)
        return defer.succeed(self.script.verdict)

    def attribute(self, **kw):
        self.script.events.append(("attribution", kw))
        return defer.succeed(None)

    def redacted(self, count, **data):
        self.script.events.append(("redaction", data))
        return defer.succeed(None)

    def event(self, kind, outcome=None, **data):
        self.script.events.append((kind, outcome, data))
        return defer.succeed(None)

    def trailing_event(self, kind, outcome=None, **data):
        self.script.events.append((kind, outcome, data))

    def count_bytes(self, direction, n):
        pass

    def cancel_holds(self, reason):
        self.script.events.append(("cancel_holds", reason))
        return []


@attrs.define
class _Settings:
    upstream: str = "http://up.example:8080"
    upstream_timeout: float = 5.0
    mask_limit: int = 1 << 20
    record_body_limit: int = 256
    pool_size: int = 4


@attrs.frozen
class _Ident:
    name: str
    credential: str | None = None  # a per-child credential's id (hoopy/identity.py)


_AGENT = _Ident("agent")


class FakeSite:
    """The per-connection state an exchange reads, with the real upstream client in memory."""

    def __init__(self, script: Script, masker=Masker()):
        from hoopy.http.checks import HeaderPlan

        self.script = script
        self.reactor = Clock()
        self.settings = _Settings()
        self.masker = masker
        self.upstream, self.endpoint = _client()
        self.upstream_prefix = b""
        self.header_plan = HeaderPlan([(b"Authorization", b"Bearer upstream-secret")], b"up.example:8080",
                                      b"up.example:8080", "http")
        self.identities = self
        self.failed = []

    def by_token(self, token):
        return _AGENT if token == "good-token" else None

    def identity_for(self, channel, token):
        return self.by_token(token)

    def auth_failed(self, peer, why):
        self.failed.append(why)

    def session_for(self, channel, identity, peer, credential=None):
        return defer.succeed(FakeSession(self.script, identity))

    secrets = (b"upstream-secret",)

    def scrub_header(self, v):
        return v.replace(b"upstream-secret", b"[REDACTED]")

    def head_scrub(self, phrase, pairs):
        return self.scrub_header  # every head searched

    def scrub_body(self, data):
        return data.replace(b"upstream-secret", b"*" * 15)

    def scrubber(self):
        from hoopy.http.bodies import Scrubber

        return Scrubber([b"upstream-secret"])


@implementer(IResponseSink)
class MemorySink:
    def __init__(self):
        self.started = False
        self.code, self.headers, self.body, self.done, self.aborted = None, [], [], False, False
        self.producer = None

    def head(self, code, phrase, headers):
        self.code, self.headers = code, list(headers)

    def write(self, data):
        self.started = True
        self.body.append(data)

    def finish(self):
        self.started = True
        self.done = True

    def abort(self):
        self.aborted = True

    def register_producer(self, producer):
        self.producer = producer

    def unregister_producer(self):
        self.producer = None

    def close_later(self, seconds, done):
        pass

    def take_over(self, upstream, answer, on_lost):
        raise AssertionError("no upgrades here")

    def json(self):
        return json.loads(b"".join(self.body))


def exchange(site, method=b"GET", uri=b"/v1/x", headers=(), body=None):
    """Client sends X: run one exchange; returns (sink, the exchange)."""
    pairs = [(b"Host", [b"gw"]), (b"Authorization", [b"Bearer good-token"])] + [(n, [v]) for n, v in headers]
    pipe = BodyPipe(StringTransport(), len(body) if body is not None else 0)
    if body is None:
        pipe.end()
    sink = MemorySink()
    ex = Exchange(site, sink, object(), method, uri, pairs, ("127.0.0.1", 5555), pipe)
    ex.run()
    if body is not None:
        pipe.feed(body)
        pipe.end()
    return sink, ex


def upstream_saw(site) -> bytes:
    return site.endpoint.transports[-1].value() if site.endpoint.transports else b""


def answer(site, raw: bytes):
    site.endpoint.protocols[-1].dataReceived(raw)


def test_the_sink_adapter_provides_the_interface():
    from hoopy.http.reply import Response

    assert IResponseSink.implementedBy(Response)
    verifyObject(IResponseSink, MemorySink())


def test_allowed_get_goes_upstream_with_the_injected_credential_and_comes_back():
    site = FakeSite(Script())
    sink, ex = exchange(site, uri=b"/v1/x?a=1", headers=[(b"X-Forwarded-For", b"6.6.6.6"), (b"Cookie", b"c=1")])
    seen = upstream_saw(site)
    assert seen.startswith(b"GET /v1/x?a=1 HTTP/1.1\r\nHost: up.example:8080\r\n")
    assert b"Authorization: Bearer upstream-secret\r\n" in seen and b"good-token" not in seen
    assert b"6.6.6.6" not in seen and b"Cookie: c=1\r\n" in seen and b"X-Forwarded-For: 127.0.0.1" in seen
    answer(site, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nETag: x\r\n\r\nok")
    assert sink.code == 200 and b"".join(sink.body) == b"ok" and sink.done
    assert (b"ETag", b"x") in sink.headers  # no masking here: nothing to hide behind a hash
    kind, outcome, data = site.script.events[-1]
    assert kind == "http.request" and outcome == "ok" and data["status"] == 200 and "good-token" not in json.dumps(data)


def test_denied_request_never_reaches_the_upstream():
    site = FakeSite(Script(verdict=Deny("no", "DELETE /**")))
    sink, ex = exchange(site, method=b"DELETE", uri=b"/v1/x")
    assert sink.code == 403 and sink.json() == {"error": "no", "rule": "DELETE /**", "approval": None}
    assert upstream_saw(site) == b""


def test_a_bad_token_is_401_and_nothing_is_judged():
    site = FakeSite(Script())
    sink = MemorySink()
    ex = Exchange(site, sink, object(), b"GET", b"/v1/x", [(b"Authorization", [b"Bearer nope"])],
                  ("127.0.0.1", 1), BodyPipe(StringTransport(), 0))
    ex.pipe.end()
    ex.run()
    assert sink.code == 401 and (b"WWW-Authenticate", b'Bearer realm="hoopy"') in sink.headers
    assert site.failed == ["bad credentials"] and site.script.judged == []


def test_masked_json_answer_is_masked_and_its_hash_dropped():
    site = FakeSite(Script(), Masker(("ssn",), (BUILTIN["email"],)))
    sink, ex = exchange(site)
    assert b"Accept-Encoding: identity\r\n" in upstream_saw(site)
    body = b'{"SSN": "123-45-6789", "mail": "ada@example.com", "echo": "upstream-secret"}'
    answer(site, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nETag: e\r\nContent-Length: %d\r\n\r\n%b"
           % (len(body), body))
    out = sink.json()
    assert out == {"SSN": "[REDACTED]", "mail": "[REDACTED]", "echo": "*" * 15}
    assert not any(n.lower() == b"etag" for n, _ in sink.headers)
    assert (b"Content-Length", b"%d" % len(b"".join(sink.body))) in sink.headers
    assert ("redaction", {"direction": "response", "path": "/v1/x", "counts": {"field:ssn": 1, "email": 1}}) \
        in site.script.events


def test_an_unreadable_body_is_refused_with_an_event_and_a_passthrough_route_streams_it():
    from hoopy.http.rules import route_matcher

    masker = Masker(("ssn",), (), (("GET /files/*", route_matcher("GET /files/*")),))
    for uri, code in ((b"/v1/x", 502), (b"/files/a.png", 200)):
        site = FakeSite(Script(), masker)
        sink, ex = exchange(site, uri=uri)
        answer(site, b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 4\r\n\r\n\x89PN\x00")
        assert sink.code == code, (uri, sink.code)
        if code == 502:
            assert "cannot be masked" in sink.json()["error"]
            assert any(e[0] == "redaction" and e[1] == "refused" for e in site.script.events)
        else:
            assert b"".join(sink.body) == b"\x89PN\x00"


def test_an_upstream_that_breaks_before_its_head_is_502():
    site = FakeSite(Script())
    sink, ex = exchange(site)
    site.endpoint.protocols[-1].connectionLost(Failure(ConnectionError("reset")))
    assert sink.code == 502 and "could not be reached" in sink.json()["error"]


def test_an_upstream_silent_for_upstream_timeout_is_504():
    site = FakeSite(Script())
    sink, ex = exchange(site)
    site.reactor.advance(5.1)
    assert sink.code == 504 and site.endpoint.transports[-1].disconnecting is not None


def test_the_client_gone_mid_response_stops_the_upstream():
    site = FakeSite(Script())
    sink, ex = exchange(site)
    answer(site, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    ex.client_gone(Failure(ConnectionError("client gone")))
    assert not site.upstream.idle  # that connection is not reused
    assert site.script.events[-1][1] in ("client gone", "ok", "error")


def test_a_post_body_streams_to_the_upstream_as_it_arrives():
    site = FakeSite(Script(verdict=Allow("POST /**")))
    pairs = [(b"Authorization", [b"Bearer good-token"]), (b"Content-Type", [b"application/octet-stream"]),
             (b"Content-Length", [b"6"])]
    pipe = BodyPipe(StringTransport(), 6)
    sink = MemorySink()
    Exchange(site, sink, object(), b"POST", b"/up", pairs, ("127.0.0.1", 1), pipe).run()
    pipe.feed(b"abc")
    assert upstream_saw(site).endswith(b"Content-Length: 6\r\n\r\nabc")
    pipe.feed(b"def")
    pipe.end()
    assert upstream_saw(site).endswith(b"\r\n\r\nabcdef")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([b"GET", b"POST", b"get", b"CONNECT", b"DELETE"]))
def test_check_shape_refuses_or_returns_a_path_it_would_forward(target, method):
    try:
        path, query, ws = check_shape(method, b"/" + target, {}, masking=False)
    except Refusal as r:
        assert r.status in (400, 405, 501)
        return
    assert path.startswith("/") and "//" not in path and not ws


@given(st.text(alphabet="abc-_", min_size=1, max_size=20))
def test_a_subprotocol_token_counts_only_beside_the_plain_entry_and_only_on_upgrades(tok):
    up = {b"upgrade": [b"websocket"], b"sec-websocket-protocol": [b"hoopy, hoopy.bearer." + tok.encode()]}
    assert token_of(b"GET", up) == tok
    assert token_of(b"POST", up) is None
    assert token_of(b"GET", {b"sec-websocket-protocol": up[b"sec-websocket-protocol"]}) is None
    assert token_of(b"GET", {**up, b"sec-websocket-protocol": [b"hoopy.bearer." + tok.encode()]}) is None


# --- held for a reviewer ---------------------------------------------------------------------------

def _held():
    from types import SimpleNamespace

    return Hold(SimpleNamespace(id="ap-7"), defer.Deferred(), "POST /v1/refunds")


def test_a_held_request_waits_paused_and_goes_up_once_approved():
    hold = _held()
    site = FakeSite(Script(verdict=hold))
    sink, ex = exchange(site, method=b"POST", uri=b"/v1/refunds", body=b'{"amount": 5}',
                        headers=[(b"Content-Type", b"application/json"), (b"Content-Length", b"13")])
    assert upstream_saw(site) == b"" and sink.code is None  # held: nothing went up, nothing came back
    hold.resolution.callback(Allow("POST /v1/refunds", approval="ap-7"))
    seen = upstream_saw(site)
    assert seen.startswith(b"POST /v1/refunds HTTP/1.1\r\n") and seen.endswith(b'\r\n\r\n{"amount": 5}')
    answer(site, b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    assert sink.code == 201 and b"".join(sink.body) == b"ok"
    kind, outcome, data = site.script.events[-1]
    assert kind == "http.request" and data["approval"] == "ap-7"


@pytest.mark.parametrize("deny", [Deny("rejected by alice", "POST /v1/refunds", "ap-7"),
                                  Deny("approval timed out", "POST /v1/refunds", "ap-7")])
def test_a_held_request_refused_by_the_reviewer_never_goes_up(deny):
    hold = _held()
    site = FakeSite(Script(verdict=hold))
    sink, ex = exchange(site, method=b"POST", uri=b"/v1/refunds", body=b"{}", headers=[(b"Content-Length", b"2")])
    hold.resolution.callback(deny)
    assert upstream_saw(site) == b""
    assert sink.code == 403 and sink.json()["approval"] == "ap-7" and sink.json()["error"] == deny.reason


def test_a_caller_gone_while_held_withdraws_the_approval_and_nothing_goes_up():
    hold = _held()
    site = FakeSite(Script(verdict=hold))
    sink, ex = exchange(site, method=b"POST", uri=b"/v1/refunds", body=b"{}", headers=[(b"Content-Length", b"2")])
    ex.client_gone(Failure(ConnectionError("gone")))
    assert ("cancel_holds", "the caller went away while held") in site.script.events
    hold.resolution.callback(Allow("POST /v1/refunds"))  # approved after all: too late
    assert upstream_saw(site) == b""


# --- the same however the bytes are split ------------------------------------------------------------

SPLIT_CASES = [
    # (content type of the answer, its body framing, the body): masked JSON, chunked; SSE, masked by event;
    # plain text with a length
    (b"application/json", b"chunked", b'{"mail": "ada@example.com", "n": [1, 2, 3], "s": "upstream-secret"}'),
    (b"text/event-stream", b"chunked", b"data: ada@example.com\n\nevent: x\ndata: plain\n\ndata: bob@example.org\n\n"),
    (b"text/plain", b"length", b"hello ada@example.com and upstream-secret, twice: upstream-secret"),
]


def _framed(ctype, framing, body):
    if framing == b"length":
        return b"HTTP/1.1 200 OK\r\nContent-Type: %b\r\nContent-Length: %d\r\n\r\n%b" % (ctype, len(body), body)
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
    return b"HTTP/1.1 200 OK\r\nContent-Type: %b\r\nTransfer-Encoding: chunked\r\n\r\n%b0\r\n\r\n" % (ctype, chunks)


def _pieces(data: bytes, cuts) -> list:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


def _steady(events):
    """Events without what a clock decides."""
    out = []
    for e in events:
        if len(e) == 3 and isinstance(e[2], dict):
            e = (e[0], e[1], {k: v for k, v in e[2].items() if "duration" not in k and not k.endswith("_ms")})
        out.append(e)
    return out


def _run_split(case, body_cuts, answer_cuts):
    ctype, framing, answer_body = case
    site = FakeSite(Script(verdict=Allow("POST /**")), Masker((), (BUILTIN["email"],)))
    request_body = b'{"q": "' + b"x" * 40 + b'"}'
    pipe = BodyPipe(StringTransport(), len(request_body))
    sink = MemorySink()
    pairs = [(b"Authorization", [b"Bearer good-token"]), (b"Content-Type", [b"application/json"]),
             (b"Content-Length", [b"%d" % len(request_body)])]
    Exchange(site, sink, object(), b"POST", b"/v1/x", pairs, ("127.0.0.1", 1), pipe).run()
    for piece in _pieces(request_body, body_cuts):
        pipe.feed(piece)
    pipe.end()
    for piece in _pieces(_framed(ctype, framing, answer_body), answer_cuts):
        answer(site, piece)
    return upstream_saw(site), sink.code, sink.headers, b"".join(sink.body), sink.done, _steady(site.script.events)


@settings(max_examples=120, deadline=None)
@given(st.sampled_from(SPLIT_CASES), st.lists(st.integers(0, 60), max_size=6), st.lists(st.integers(0, 400), max_size=12))
def test_an_exchange_is_the_same_however_the_request_and_the_answer_are_split(case, body_cuts, answer_cuts):
    got = _run_split(case, body_cuts, answer_cuts)
    assert got == _run_split(case, [], [])
    up, code, headers, body, done, events = got
    assert code == 200 and done and b"ada@example.com" not in body and b"upstream-secret" not in body


# --- one timer a request: the body's stall watch takes the upstream timer over (httpcpu4) ------------

def _timers(site):
    return [c for c in site.reactor.getDelayedCalls() if c.active()]


@pytest.mark.parametrize("masked", [False, True], ids=["streamed", "read-whole"])
def test_the_stall_watch_takes_over_the_upstream_timer_and_counts_from_the_head(masked):
    site = FakeSite(Script(), Masker(("ssn",), ()) if masked else Masker())
    site.reactor.advance(100)
    sink, ex = exchange(site)
    timer = _timers(site)
    assert len(timer) == 1  # the upstream's answer is awaited: one timer
    site.reactor.advance(4.0)  # 4 of the 5 s gone waiting for the head
    answer(site, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n")
    assert _timers(site) == timer and ex.timer is None  # the same one, now the body's, from the head on
    site.reactor.advance(4.0)  # 8 s since the request, 4 since the head: not yet
    assert not sink.aborted and not sink.done and sink.code in (None, 200)
    answer(site, b"{\"a\": ")  # bytes: the watch starts again
    site.reactor.advance(4.9)
    assert not sink.aborted and not sink.done
    answer(site, b"1")
    site.reactor.advance(4.9)
    assert not sink.aborted and not sink.done
    site.reactor.advance(0.2)  # silent for the timeout: cut (a streamed answer) or 504 (read whole)
    kind, outcome, data = site.script.events[-1]
    assert kind == "http.request" and outcome == "error" and "stalled" in data["error"]
    if masked:
        assert sink.code == 504
    else:
        assert sink.aborted
    assert _timers(site) == []


def test_a_head_that_never_comes_is_still_a_504_and_a_complete_answer_leaves_no_timer():
    site = FakeSite(Script())
    sink, ex = exchange(site)
    site.reactor.advance(5.1)
    assert sink.code == 504 and _timers(site) == []
    site = FakeSite(Script())
    sink, ex = exchange(site)
    answer(site, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert sink.done and b"".join(sink.body) == b"ok" and _timers(site) == []
    # a head without a body to watch (HEAD): the timer is disarmed, not left to fire
    sink, ex = exchange(site, method=b"HEAD")
    answer(site, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
    assert sink.done and _timers(site) == []
    site.reactor.advance(10)
    assert sink.done and not sink.aborted and not ex.timed_out


def test_a_streamed_answer_that_breaks_off_or_whose_client_goes_ends_the_exchange_as_before():
    # (the stream ends the exchange by callbacks now, not by the coroutine waiting on it)
    site = FakeSite(Script())
    sink, ex = exchange(site)
    answer(site, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    site.endpoint.transports[-1].loseConnection()
    site.endpoint.protocols[-1].connectionLost(Failure(ConnectionError("reset")))
    kind, outcome, data = site.script.events[-1]
    assert sink.aborted and outcome == "error" and "broke off" in data["error"] and ex.pending is None
    site = FakeSite(Script())
    sink, ex = exchange(site)
    answer(site, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    ex.client_gone()
    kind, outcome, data = site.script.events[-1]
    assert outcome == "client gone" and site.endpoint.transports[-1].disconnecting
    site.endpoint.protocols[-1].connectionLost(Failure(ConnectionError("aborted")))  # (a real transport's)
    assert _timers(site) == []


# --- the exchange's own coroutine driver (httpcpu4): what it awaits, as Twisted's driver had it ------

class _LateSession(FakeSession):
    """A session whose decision comes later, through a chain: a Deferred paused on another."""

    def __init__(self, script, identity):
        super().__init__(script, identity)
        self.inner: defer.Deferred = defer.Deferred()

    def decide(self, op, approvals=None):
        self.script.judged.append(op)
        outer: defer.Deferred = defer.Deferred()
        outer.addCallback(lambda _: self.inner)  # paused on inner until it fires
        outer.callback(None)
        return outer


class _LateSite(FakeSite):
    def session_for(self, channel, identity, peer, credential=None):
        self.session = _LateSession(self.script, identity)
        return self.session  # (the session itself, as the real site gives a channel's next request)


@pytest.mark.parametrize("outcome", ["allow", "deny", "store down", "client gone", "bug"])
def test_a_decision_that_comes_later_is_awaited_as_before(outcome):
    from hoopy.session import StoreError

    site = _LateSite(Script())
    sink, ex = exchange(site)
    assert sink.code is None and upstream_saw(site) == b"" and ex._coro is not None  # waiting on the decision
    inner = site.session.inner
    if outcome == "allow":
        inner.callback(Allow("GET /**"))
        answer(site, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        assert sink.code == 200 and b"".join(sink.body) == b"ok" and sink.done
    elif outcome == "deny":
        inner.callback(Deny("no", "GET /**"))
        assert sink.code == 403 and upstream_saw(site) == b""
    elif outcome == "store down":
        inner.errback(StoreError("disk full"))
        assert sink.code == 503 and upstream_saw(site) == b""
    elif outcome == "client gone":
        ex.client_gone()
        inner.callback(Allow("GET /**"))  # (the store's Deferred is let fire: the exchange ends after)
        assert sink.code is None and upstream_saw(site) == b""
        assert site.script.events[-1][1] == "client gone"
    else:
        inner.callback("not a verdict")  # a bug: answered 502, recorded, nothing forwarded
        assert sink.code == 502 and upstream_saw(site) == b""
    assert ex._coro is None and ex.finished  # the coroutine ran to its end, and nothing is left waiting
    assert inner.result is None or not isinstance(inner.result, Failure)  # a failure was handled, not left


def test_run_starts_the_exchange_and_returns_nothing_to_wait_on():
    site = FakeSite(Script())
    sink = MemorySink()
    pipe = BodyPipe(StringTransport(), 0)
    pipe.end()
    ex = Exchange(site, sink, object(), b"GET", b"/v1/x", [(b"Authorization", [b"Bearer good-token"])],
                  ("127.0.0.1", 1), pipe)
    assert ex.run() is None and upstream_saw(site).startswith(b"GET /v1/x ")


class _SlowRedactions(FakeSession):
    pending: list = []

    def redacted(self, count, **data):
        d: defer.Deferred = defer.Deferred()
        self.pending.append(d)
        return d


class _SlowRedactionSite(FakeSite):
    def session_for(self, channel, identity, peer, credential=None):
        return _SlowRedactions(self.script, identity)


def test_a_masked_stream_taken_after_its_connection_went_back_to_the_pool_never_pauses_that_connection():
    # Its head is handed over once the read is parsed: a whole event stream in that read has ended and
    # its connection is back in the pool when the stream pauses it for a redaction being written.
    _SlowRedactions.pending = []
    site = _SlowRedactionSite(Script(), Masker(("ssn",), ()))
    sink, ex = exchange(site)
    body = b'data: {"ssn": "123-45-6789"}\n\n'
    answer(site, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%b"
           % (len(body), body))
    up = site.endpoint.transports[-1]
    assert _SlowRedactions.pending and up.producerState == "producing"  # pooled, and read as ever
    _SlowRedactions.pending[0].callback(None)
    assert sink.done and b"123-45-6789" not in b"".join(sink.body) and up.producerState == "producing"
