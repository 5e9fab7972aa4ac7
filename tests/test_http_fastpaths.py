"""The httpcpu3 round's shortcuts on the request path, attacked: each must answer exactly what the
long way answers, for every input an attacker picks (a credential spelled or placed otherwise, another
peer, a request with or without a body)."""
from __future__ import annotations

from types import SimpleNamespace

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy.bytesearch import contains
from hoopy.http import checks
from hoopy.http.checks import HeaderPlan
from hoopy.http.masker import Masker
from hoopy.http.site import HTTPSite, spellings

CREDENTIAL = b"Bearer sk-live-Upstream/Tok+en=42"


def site(value: bytes | None = CREDENTIAL) -> HTTPSite:
    inject = {"Authorization": SimpleNamespace(value=value.decode("latin-1"))} if value is not None else {}
    settings_ = SimpleNamespace(upstream="http://up.example:8080/api", upstream_headers=inject)
    gateway = SimpleNamespace(reactor=None, identities=None, config=SimpleNamespace(masking_for=lambda name: ()))
    return HTTPSite(gateway, SimpleNamespace(name="api", settings=settings_), upstream=None, tls=False)


def slow_scrub(s: HTTPSite, phrase: bytes, pairs) -> tuple:
    """What the head looked like scrubbed part by part (the code before the shortcut)."""
    return s.scrub_header(phrase), [(s.scrub_header(n), s.scrub_header(v)) for n, v in pairs]


def fast_scrub(s: HTTPSite, phrase: bytes, pairs) -> tuple:
    scrub = s.head_scrub(phrase, pairs)
    if scrub is None:
        return phrase, list(pairs)
    return scrub(phrase), [(scrub(n), scrub(v)) for n, v in pairs]


SPELLED = sorted(spellings(CREDENTIAL))


@pytest.mark.parametrize("spelled", SPELLED)
@pytest.mark.parametrize("where", ["phrase", "name", "value", "second value", "last of many"])
@pytest.mark.parametrize("case", [bytes.upper, bytes.swapcase, lambda b: b])
def test_an_echoed_credential_is_found_wherever_the_head_holds_it(spelled, where, case):
    s = site()
    secret = case(spelled)
    phrase, pairs = b"OK", [(b"Server", b"nginx"), (b"Content-Length", b"5")]
    if where == "phrase":
        phrase = b"bad key " + secret
    elif where == "name":
        pairs.insert(1, (b"X-" + secret, b"1"))
    elif where == "value":
        pairs.insert(0, (b"Location", b"http://x/cb?auth=" + secret))
    elif where == "second value":
        pairs += [(b"X-Echo", b"a"), (b"X-Echo", secret)]
    else:
        pairs += [(b"X-%d" % i, b"v") for i in range(40)] + [(b"X-Z", b"..." + secret + b"...")]
    assert s.head_scrub(phrase, pairs) is not None
    assert fast_scrub(s, phrase, pairs) == slow_scrub(s, phrase, pairs)
    scrubbed_phrase, scrubbed = fast_scrub(s, phrase, pairs)
    everything = (scrubbed_phrase + b"".join(n + v for n, v in scrubbed)).lower()
    # every spelling of the credential that is at least as long as its core is gone (as before)
    assert all(sp.lower() not in everything for sp in SPELLED), everything


def test_a_head_without_the_credential_is_not_searched_header_by_header():
    s = site()
    assert s.head_scrub(b"OK", [(b"Server", b"nginx"), (b"Content-Type", b"application/json")]) is None
    # a part of the credential is not the credential: nothing of it is scrubbed (a part holding the
    # run of unreserved characters every spelling shares is searched with the pattern, and found not)
    assert fast_scrub(s, b"OK", [(b"X-A", CREDENTIAL[:-3])]) == (b"OK", [(b"X-A", CREDENTIAL[:-3])])
    assert s.head_scrub(b"OK", [(b"X-A", CREDENTIAL[-10:])]) is None
    # no injected headers: nothing to search, ever
    assert site(None).head_scrub(b"OK", [(b"X-A", CREDENTIAL)]) is None


_HEADER = st.binary(min_size=0, max_size=40)
_PIECES = st.sampled_from([b"", b"sk-live-", b"Upstream", b"/Tok+en=42", b"SK-LIVE-UPSTREAM/TOK+EN=42", b"Bearer ",
                           b"sk-live-upstream%2Ftok%2Ben%3D42", b"%2F", b"\r\n", b"\x00"])


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.lists(_PIECES | _HEADER, max_size=4).map(b"".join),
                          st.lists(_PIECES | _HEADER, max_size=4).map(b"".join)), max_size=8),
       st.lists(_PIECES | _HEADER, max_size=3).map(b"".join))
def test_the_whole_head_search_gives_what_the_part_by_part_scrub_gives(pairs, phrase):
    s = site()
    assert fast_scrub(s, phrase, pairs) == slow_scrub(s, phrase, pairs)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.binary(min_size=1, max_size=8))
def test_contains_is_in(haystack, needle):
    assert contains(haystack, needle) == (needle in haystack)
    assert contains(haystack + needle, needle)


def test_each_peer_gets_its_own_forwarding_headers():
    plan = HeaderPlan([(b"Authorization", b"Bearer x")], b"up:80", b"up", "https")

    def forwarded(peer):
        out = plan.build(b"GET", [(b"Accept", [b"*/*"])], {b"accept": [b"*/*"]}, peer, False)
        return {n: v for n, v in out if n in (b"X-Forwarded-For", b"Forwarded", b"X-Forwarded-Proto")}

    a, b, v6 = forwarded("10.0.0.1"), forwarded("10.0.0.2"), forwarded("::1")
    assert a[b"X-Forwarded-For"] == b"10.0.0.1" and b"for=10.0.0.1;" in a[b"Forwarded"]
    assert b[b"X-Forwarded-For"] == b"10.0.0.2" and b"for=10.0.0.2;" in b[b"Forwarded"]
    assert v6[b"Forwarded"] == b'for="[::1]";proto=https'
    assert forwarded("10.0.0.1") == a and a[b"X-Forwarded-Proto"] == b"https"
    # a caller's own forwarding headers never pass, cached or not
    out = plan.build(b"GET", [(b"X-Forwarded-For", [b"6.6.6.6"])], {b"x-forwarded-for": [b"6.6.6.6"]}, "10.0.0.1",
                     False)
    assert [v for n, v in out if n.lower() == b"x-forwarded-for"] == [b"10.0.0.1"]
    # the cache stays bounded whatever peers come
    for i in range(5000):
        plan.forwarding(f"10.1.{i // 256}.{i % 256}")
    assert len(plan._forwarded) <= 4096


def test_attribution_headers_are_noticed_in_any_of_their_names():
    for h in (b"x-hoopy-model", b"x-hoopy-tool-call", b"x-hoopy-mcp-server"):
        hdrs = {h: [b"m"], b"accept": [b"*/*"]}
        assert checks.claims_attribution(hdrs) and any(checks.attribution(hdrs).values())
    assert not checks.claims_attribution({b"accept": [b"*/*"], b"x-hoopy-token": [b"t"]})


def test_masker_activity_follows_its_rules():
    assert not Masker().active
    assert Masker(fields=("ssn",)).active
    import attrs

    assert not attrs.evolve(Masker(fields=("ssn",)), fields=()).active
    assert attrs.evolve(Masker(), fields=("card.number",)).active


# --- HeadChecks: what a connection's last request head passed, for the same head again -------------

from hoopy.http.checks import HeaderPlan as _Plan  # noqa: E402
from hoopy.policy.verdicts import Allow, Deny  # noqa: E402
from tests.test_http_server import answer_upstream, connect, get, statuses  # noqa: E402

_SAME = get(b"/v1/items?page=2", extra=b"Accept: */*\r\nX-Forwarded-For: 6.6.6.6\r\n")


def _upstream_requests(site) -> list[bytes]:
    return [t.value() for t in site.endpoint.transports]


def _allowed_twice(site, ch, t, head=_SAME):
    for _ in range(2):
        t.clear()
        ch.dataReceived(head)
        answer_upstream(site, b"fine")
        assert statuses(t.value()) == [200], t.value()


def test_the_same_head_again_is_answered_as_the_first_and_still_judged():
    site, ch, t = connect()
    _allowed_twice(site, ch, t)
    checked = ch.head_checks
    assert checked is not None and checked.path == "/v1/items" and checked.query == "page=2"
    assert len(site.script.judged) == 2  # the policy judged both
    sent = b"".join(_upstream_requests(site))
    assert sent.count(b"GET /v1/items?page=2 HTTP/1.1\r\n") == 2
    assert b"6.6.6.6" not in sent and sent.count(b"X-Forwarded-For: 192.168.1.1") == 2
    assert b"good-token" not in sent and sent.count(b"Authorization: Bearer upstream-secret") == 2
    records = [data for kind, _, data in site.script.events if kind == "http.request"]
    assert len(records) == 2 and records[0]["request_headers"] == records[1]["request_headers"]
    assert records[0]["request_headers"] is not records[1]["request_headers"]
    records[0]["request_headers"]["x"] = "changed"  # a reader's change stays its own
    assert "x" not in checked.record


def test_a_policy_that_changes_is_asked_again_for_the_same_head():
    site, ch, t = connect()
    _allowed_twice(site, ch, t)
    site.script.verdict = Deny("grant revoked", "GET /**")
    t.clear()
    ch.dataReceived(_SAME)
    assert statuses(t.value()) == [403] and b"grant revoked" in t.value()
    site.script.verdict = Allow("GET /**")
    t.clear()
    ch.dataReceived(_SAME)
    answer_upstream(site)
    assert statuses(t.value()) == [200]


@pytest.mark.parametrize("variant, status", [
    (get(b"/v1/items?page=2", extra=b"Accept: */*\r\nX-Forwarded-For: 6.6.6.6\r\nCookie: t=good-token\r\n"), 400),
    (get(b"/v1/items?page=2&token=good-token", extra=b"Accept: */*\r\nX-Forwarded-For: 6.6.6.6\r\n"), 400),
    (get(b"/.hoopy/x?page=2", extra=b"Accept: */*\r\nX-Forwarded-For: 6.6.6.6\r\n"), 404),
    (get(b"//.HOOPY/x", extra=b"Accept: */*\r\nX-Forwarded-For: 6.6.6.6\r\n"), 404),
    (get(b"/v1/items?_method=DELETE", extra=b"Accept: */*\r\nX-Forwarded-For: 6.6.6.6\r\n"), 400),
    (get(b"/v1/items?page=2", extra=b"Accept: */*\r\nX-Original-URL: /admin\r\n"), 400),
    (get(b"/v1/items?page=2", extra=b"Accept: */*\r\nX_Original_URL: /admin\r\n"), 400),
    (get(b"/v1/items?page=2", extra=b"Accept: */*\r\nX-HTTP-Method-Override: DELETE\r\n"), 400),
    (get(b"/v1/items?page=2", extra=b"Accept: */*\r\nRemote-User: admin\r\n"), 400),
    (get(b"/v1/items?page=2", extra=b"Accept: */*\r\nX-Forwarded-For: 6.6.6.6\r\nHost: other\r\n"), 400),
    (get(b"/v1/items?page=2", extra=b"Accept: */*\r\nContent-Length: 5\r\n") + b"hello", 400),
    (get(b"/v1/items?page=2", extra=b"Accept: */*\r\nX-Forwarded-For: 6.6.6.6\r\n",
         auth=b"Authorization: Bearer bad-token\r\n"), 401),
    (get(b"/v1/items?page=2", extra=b"Accept: */*\r\nX-Forwarded-For: 6.6.6.6\r\n",
         auth=b"Authorization: Bearer good-token\r\nX-Hoopy-Token: other-token\r\n"), 401),
    (get(b"/v1/items?page=2", extra=b"Accept: */*\r\nX-Forwarded-For: 6.6.6.6\r\n", auth=b""), 401),
])
def test_a_head_that_differs_from_the_checked_one_is_checked_itself(variant, status):
    site, ch, t = connect()
    _allowed_twice(site, ch, t)
    t.clear()
    ch.dataReceived(variant)
    assert statuses(t.value())[:1] == [status], t.value()
    if status != 401 and not t.disconnecting:  # and the checked head still passes after it
        t.clear()
        ch.dataReceived(_SAME)
        answer_upstream(site)
        assert statuses(t.value()) == [200]


def test_a_method_or_a_name_spelled_otherwise_is_another_head():
    site, ch, t = connect()
    _allowed_twice(site, ch, t)
    first = ch.head_checks
    t.clear()
    ch.dataReceived(_SAME.replace(b"GET ", b"TRACE ", 1))
    assert statuses(t.value()) == [405] and ch.head_checks is first
    t.clear()
    ch.dataReceived(_SAME.replace(b"Accept:", b"accept:"))
    answer_upstream(site)
    assert statuses(t.value()) == [200] and ch.head_checks is not first  # checked, and kept anew


def test_each_connection_checks_its_own_heads():
    site, ch, t = connect()
    _allowed_twice(site, ch, t)
    site2, ch2, t2 = connect(site)
    assert ch2.head_checks is None
    ch2.dataReceived(_SAME.replace(b"Accept: */*\r\n", b"Accept: */*\r\nCookie: t=good-token\r\n"))
    assert statuses(t2.value()) == [400]


def test_a_site_whose_masker_or_header_plan_changed_checks_the_head_again():
    site, ch, t = connect()
    _allowed_twice(site, ch, t)
    site.masker = Masker(fields=("ssn",))  # a reload: masking now (Accept-Encoding: identity upstream)
    t.clear()
    ch.dataReceived(_SAME)
    answer_upstream(site, b"plain")
    assert statuses(t.value()) == [200]
    assert _upstream_requests(site)[-1].count(b"Accept-Encoding: identity") >= 1 or any(
        b"Accept-Encoding: identity" in r for r in _upstream_requests(site))
    assert ch.head_checks.masker is site.masker
    site.header_plan = _Plan([(b"Authorization", b"Bearer rotated-secret")], b"up.example:8080",
                             b"up.example:8080", "http")
    t.clear()
    ch.dataReceived(_SAME)
    answer_upstream(site)
    assert statuses(t.value()) == [200]
    assert any(b"Bearer rotated-secret" in r for r in _upstream_requests(site))
    assert ch.head_checks.plan is site.header_plan


def test_a_websocket_upgrade_is_never_kept():
    site, ch, t = connect()
    up = (b"GET /ws HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer good-token\r\nUpgrade: websocket\r\n"
          b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    ch.dataReceived(up)
    assert ch.head_checks is None


# --- httpcpu4: a checked head's upstream request head is made once ---------------------------------

_HEADS = [
    _SAME,
    get(b"/v1/items?page=3", extra=b"Accept: */*\r\nX-Forwarded-For: 6.6.6.6\r\n"),
    get(b"/v1/other", extra=b"Accept: */*\r\n"),
    get(b"/v1/items?page=2", extra=b"Accept: */*\r\nX-Forwarded-For: 7.7.7.7\r\n"),
    get(b"/v1/items?page=2", extra=b"Accept: application/json\r\nConnection: close\r\n"),
    get(b"/v1/items?page=2", extra=b"Accept: */*\r\n").replace(b"GET ", b"POST ", 1)[:-2] + b"Content-Length: 0\r\n\r\n",
    get(b"/v1/items?page=2", extra=b"Accept: */*\r\n").replace(b"GET ", b"DELETE ", 1),
    get(b"/v1/items?page=2", extra=b"Accept: */*\r\n").replace(b"GET ", b"HEAD ", 1),
]


def _sent_alone(head: bytes) -> bytes:
    """What the upstream gets for ``head`` on a connection of its own (checked the long way)."""
    site, ch, t = connect()
    site.script.verdict = Allow("** /**")
    ch.dataReceived(head)
    sent = _upstream_requests(site)
    assert len(sent) == 1, sent
    return sent[0]


@pytest.mark.parametrize("order", [[0, 0, 1, 1, 0], [2, 3, 2, 3, 0, 0], [4, 4], [5, 5, 6, 6, 7, 7, 5]],
                         ids=["query", "path-and-peer-header", "close", "methods"])
def test_the_upstream_gets_the_same_bytes_for_a_kept_head_as_for_a_head_checked_alone(order):
    alone = {i: _sent_alone(_HEADS[i]) for i in set(order)}
    site, ch, t = connect()
    site.script.verdict = Allow("** /**")
    for i in order:
        if t.disconnecting:  # (Connection: close asked: the next request on a new connection)
            site2, ch, t = connect(site)
        before = sum(len(r) for r in _upstream_requests(site))
        t.clear()
        ch.dataReceived(_HEADS[i])
        sent = b"".join(_upstream_requests(site))[before:]
        assert sent == alone[i], (i, sent, alone[i])
        proto = next(p for p in site.endpoint.protocols if getattr(p, "exchange", None) is not None)
        head_only = _HEADS[i].startswith(b"HEAD ")
        proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n" + (b"" if head_only else b"ok"))
        assert statuses(t.value()) == [200], t.value()
    if b"Content-Length" not in _HEADS[order[-1]]:  # (made for a request without a body only)
        assert ch.head_checks is not None and ch.head_checks.request is not None


# --- httpcpu4: a body that came whole with its head is answered as the stream answers it -----------

_ANSWERS = [
    (b"200 OK", [b"Content-Type: application/json"], b'{"id": 42, "name": "Ada"}'),
    (b"200 OK", [b"Content-Type: application/json"], b'{"echo": "Bearer upstream-secret", "again": "upstream-secret"}'),
    (b"200 OK", [b"Content-Type: text/plain"], b"x" * 300 + b"upstream-secret" + b"y" * 300),  # past the record's limit
    (b"200 OK", [b"Content-Type: application/octet-stream"], bytes(range(256)) + b"upstream-secret"),
    (b"200 OK", [b"Content-Type: text/event-stream"], b"data: upstream-secret\n\n"),
    (b"200 OK", [b"Content-Type: application/json", b"Content-Encoding: gzip"], b"\x1f\x8bnot really gzip"),
    (b"200 OK", [], b""),
    (b"204 No Content", [], b""),
    (b"304 Not Modified", [b"ETag: \"v1\""], b""),
    (b"404 Not Found", [b"Content-Type: application/json", b"X-Echo: upstream-secret"], b'{"error": "no"}'),
]


def _answered(raw: bytes, cuts: list[int], method: bytes = b"GET"):
    """What the client gets and what is recorded when the upstream's answer ``raw`` arrives in
    reads cut at ``cuts`` (none: head and body in one read, taken whole)."""
    site, ch, t = connect()
    site.script.verdict = Allow("** /**")
    ch.dataReceived(get(b"/v1/x").replace(b"GET ", method + b" ", 1))
    proto = next(p for p in site.endpoint.protocols if getattr(p, "exchange", None) is not None)
    last = 0
    for cut in cuts + [len(raw)]:
        if cut > last:
            proto.dataReceived(raw[last:cut])
            last = cut
    out = re.sub(rb"Date: [^\r]*\r\n", b"", t.value())
    records = [data for kind, _, data in site.script.events if kind == "http.request"]
    assert len(records) == 1, (out, site.script.events)
    rec = dict(records[0])
    rec.pop("duration_ms")
    return out, rec, t.disconnecting


@pytest.mark.parametrize("i", range(len(_ANSWERS)))
@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_a_body_that_came_with_its_head_is_answered_and_recorded_as_a_streamed_one(i, method):
    status, headers, body = _ANSWERS[i]
    no_body = method == b"HEAD" or status[:3] in (b"204", b"304")
    length = [] if status[:3] in (b"204", b"304") else [b"Content-Length: %d" % len(body)]
    raw = b"HTTP/1.1 " + status + b"\r\n" + b"".join(h + b"\r\n" for h in headers + length) + b"\r\n"
    head_end = len(raw)
    raw += b"" if no_body else body
    whole = _answered(raw, [], method)
    assert b"upstream-secret" not in whole[0] and "upstream-secret" not in repr(whole[1])
    # the long way: the head alone first (the stream takes the body), then the body in pieces
    for cuts in ([head_end], [head_end, head_end + 1], [head_end - 2, head_end + 7, head_end + 20, len(raw) - 1]):
        cuts = sorted({c for c in cuts if 0 < c < len(raw)} | {head_end} if head_end < len(raw) else
                      {c for c in cuts if 0 < c < len(raw)})
        assert _answered(raw, cuts, method) == whole, cuts


def test_a_body_still_arriving_after_its_head_is_streamed_and_the_socket_not_paused_for_it():
    site, ch, t = connect()
    ch.dataReceived(get(b"/v1/x"))
    proto = next(p for p in site.endpoint.protocols if getattr(p, "exchange", None) is not None)
    up = site.endpoint.transports[-1]
    paused = []
    pause = up.pauseProducing
    up.pauseProducing = lambda: (paused.append(1), pause())  # type: ignore[method-assign]
    proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    # what came with the head waited for the stream without the socket being paused and resumed
    # for it (two epoll changes a response)
    assert up.producerState == "producing" and paused == []
    assert t.value().endswith(b"abc")
    proto.dataReceived(b"defghij")
    assert t.value().endswith(b"abcdefghij") and statuses(t.value()) == [200]


# --- httpcpu5: a plain response head's cleaning kept by the site (response_head.clean_headers) ----

from hoopy.http.record import Record  # noqa: E402
from hoopy.http.response_head import clean_headers  # noqa: E402
from hoopy.http.upstream_response import RawHeaders  # noqa: E402

_HEAD_LINES = [
    (b"Content-Type", b"application/json"), (b"Content-Length", b"25"), (b"Content-Length", b"26"),
    (b"Date", b"Tue, 01 Dec 2026 01:00:00 GMT"), (b"Date", b"Tue, 01 Dec 2026 01:00:01 GMT"),
    (b"Connection", b"keep-alive"), (b"Connection", b"x-drop"), (b"X-Drop", b"1"), (b"Keep-Alive", b"timeout=5"),
    (b"ETag", b'"v1"'), (b"Content-MD5", b"abc"), (b"Content-Encoding", b"gzip"), (b"Set-Cookie", b"a=1"),
    (b"Set-Cookie", b"b=2"), (b"X-Api-Key", b"k"), (b"content-type", b"text/plain"),
]
_MASKERS = [Masker(), Masker(fields=("ssn",))]


def _cleaned(s: HTTPSite, lines, code: int, method: str, must_mask: bool, opaque: bool):
    ex = SimpleNamespace(site=s, method=method, record=Record(0))
    response = SimpleNamespace(headers=RawHeaders(list(lines)), code=code)
    out, counts = clean_headers(ex, response, must_mask, opaque, None)
    return out, counts, ex.record.response_headers


_heads = st.tuples(st.lists(st.sampled_from(_HEAD_LINES), max_size=8), st.sampled_from([200, 204, 304, 404]),
                   st.sampled_from(["GET", "HEAD"]), st.booleans(), st.booleans(), st.sampled_from([0, 1]))


def _variants(head):
    """The head, then each of its key's parts changed alone, each right after the head (a hit if that
    part were left out of the key)."""
    lines, code, method, must_mask, opaque, m = head
    yield head
    for other in ([*lines, (b"X-More", b"1")], lines[:-1], lines[::-1]):
        yield (other, code, method, must_mask, opaque, m)
        yield head
    for c in (200, 204, 304):
        yield (lines, c, method, must_mask, opaque, m)
        yield head
    for v in ((lines, code, "HEAD" if method == "GET" else "GET", must_mask, opaque, m),
              (lines, code, method, not must_mask, opaque, m), (lines, code, method, must_mask, not opaque, m),
              (lines, code, method, must_mask, opaque, 1 - m)):
        yield v
        yield head


@settings(max_examples=200, deadline=None)
@given(st.lists(_heads, min_size=1, max_size=3))
def test_a_kept_response_head_cleaning_is_what_cleaning_it_alone_gives(heads):
    """Heads answered in a row by one site (its memo warm, hits and misses) clean to the same headers,
    counts and record as each head cleaned by a site of its own."""
    kept = site(None)
    for head in heads:
        for lines, code, method, must_mask, opaque, m in _variants(head):
            kept.masker = _MASKERS[m]
            alone = site(None)
            alone.masker = _MASKERS[m]
            got, want = _cleaned(kept, lines, code, method, must_mask, opaque), \
                _cleaned(alone, lines, code, method, must_mask, opaque)
            assert got == want, (lines, code, method, must_mask, opaque, m)
            assert kept.head_memo is not None  # (a plain head: kept)


def test_a_kept_response_head_is_given_as_a_copy():
    s = site(None)
    lines = [(b"Content-Type", b"application/json"), (b"Content-Length", b"2")]
    want = _cleaned(s, lines, 200, "GET", False, False)
    out, _, rec = _cleaned(s, lines, 200, "GET", False, False)  # (a hit)
    assert (out, rec) == want[0::2]
    out.append((b"X-Added", b"by a caller"))
    rec["added"] = "by a caller"
    assert _cleaned(s, lines, 200, "GET", False, False) == want


# --- httpcpu5: the last response head found clean is kept by the site (HTTPSite.head_scrub) ---------

def _echoing(phrase: bytes, pairs: list, where: int, secret: bytes) -> tuple:
    """The head with the credential put in its phrase (-1), a name (even) or a value (odd)."""
    if where == -1 or not pairs:
        return phrase + secret, pairs
    i = (where // 2) % len(pairs)
    n, v = pairs[i]
    return phrase, pairs[:i] + [(n + secret, v) if where % 2 == 0 else (n, v + secret)] + pairs[i + 1:]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(_HEADER, _HEADER), max_size=5), _HEADER,
                          st.integers(-1, 9), st.sampled_from(SPELLED)), min_size=1, max_size=4))
def test_a_head_kept_as_clean_is_searched_again_when_anything_of_it_differs(heads):
    """One site, heads in a row: each clean head, again (a hit), then itself with the credential in
    one place (twice), then clean again: each scrubbed as the part-by-part scrub does."""
    s = site()
    for pairs, phrase, where, secret in heads:
        echoed_phrase, echoed = _echoing(phrase, pairs, where, secret)
        for p, ps in ((phrase, pairs), (phrase, pairs), (echoed_phrase, echoed), (echoed_phrase, echoed),
                      (phrase, pairs)):
            assert fast_scrub(s, p, ps) == slow_scrub(s, p, ps), (p, ps)
