"""Attacks on the two response-head memos of the httpcpu5 round (the attackmemo round).

``response_head.clean_headers`` keeps the last plain head's cleaning (``HTTPSite.head_memo``),
keyed on ``tuple(response.headers.pairs)``, the status, HEAD or not, must_mask, opaque and the
masker; ``HTTPSite.head_scrub`` keeps the last (phrase, lines) found clean. Each attack: one site
answering heads in a row (its memos warm), compared with the same answer on a fresh site.
"""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from hoopy.http.record import Record
from hoopy.http.masker import Masker
from hoopy.http.response_head import clean_headers
from hoopy.http.upstream_response import RawHeaders
from hoopy.policy.verdicts import Allow
from tests.test_http_fastpaths import site as make_site
from tests.test_http_server import Site, connect, get


SECRET = b"upstream-secret"  # tests/test_http_server's injected credential (Bearer upstream-secret)


def _exchange(site, ch, t, raw: bytes, method: bytes = b"GET"):
    """One request on ``ch``, answered upstream with ``raw`` in one read: (bytes out, record)."""
    t.clear()
    n = len(site.script.events)
    ch.dataReceived(get(b"/v1/x").replace(b"GET ", method + b" ", 1))
    proto = next(p for p in site.endpoint.protocols if getattr(p, "exchange", None) is not None)
    proto.dataReceived(raw)
    out = re.sub(rb"Date: [^\r]*\r\n", b"", t.value())
    recs = [dict(d) for kind, _, d in site.script.events[n:] if kind == "http.request"]
    assert len(recs) == 1, (out, site.script.events[n:])
    recs[0].pop("duration_ms")
    return out, recs[0]


class MemoSite(Site):
    """tests/test_http_server's site with the real HTTPSite's head memos and scrubbers (its
    head_scrub searches every head, so no memo would ever be used)."""

    def __init__(self):
        super().__init__()
        real = make_site(b"Bearer " + SECRET)
        self.head_memo = None
        self.secrets = real.secrets
        self.head_scrub, self.scrub_header, self.scrub_body, self.scrubber = \
            real.head_scrub, real.scrub_header, real.scrub_body, real.scrubber


def _alone(raw: bytes, method: bytes = b"GET"):
    s, ch, t = connect(MemoSite())
    s.script.verdict = Allow("** /**")
    return _exchange(s, ch, t, raw, method)


def _in_a_row(raws, method: bytes = b"GET"):
    s, ch, t = connect(MemoSite())
    s.script.verdict = Allow("** /**")
    return [_exchange(s, ch, t, raw, method) for raw in raws]


# --- 1. trailers: llhttp hands a chunked body's trailer fields to on_header, after the head --------

CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n"
# the answer's trailer fields arrive in the same read as its head: the head's ``pairs`` (the memo's
# key) had them appended while its by-name view (what is cleaned) had not
WITH_TRAILER = CHUNKED + b"\r\n3\r\nabc\r\n0\r\nX-Trail: t\r\nSet-Cookie: sid=trailer\r\n\r\n"
AS_HEADERS = CHUNKED + b"X-Trail: t\r\nSet-Cookie: sid=trailer\r\n\r\n3\r\nabc\r\n0\r\n\r\n"


@pytest.mark.parametrize("order", [(WITH_TRAILER, AS_HEADERS), (AS_HEADERS, WITH_TRAILER)])
def test_trailer_fields_do_not_make_two_heads_one_key(order):
    """A trailer sent after a chunked body is not a header: the head that has it as a header and
    the head that has it as a trailer are different answers, whichever came first."""
    got = _in_a_row(list(order))
    for raw, (out, rec) in zip(order, got):
        assert (out, rec) == _alone(raw), raw
    # a trailer never goes out as a header (nor into the record as one)
    trailered = got[order.index(WITH_TRAILER)]
    assert b"sid=trailer" not in trailered[0].split(b"\r\n\r\n")[0]
    assert "set-cookie" not in trailered[1]["response_headers"]


def test_a_trailer_holding_the_credential_does_not_keep_a_head_clean():
    """The credential echoed in a trailer, then the same head without it: neither leaks, each as alone."""
    echo = CHUNKED + b"\r\n3\r\nabc\r\n0\r\nX-Echo: Bearer " + SECRET + b"\r\n\r\n"
    plain = CHUNKED + b"\r\n3\r\nabc\r\n0\r\n\r\n"
    for raws in ([echo, plain, echo], [plain, echo, plain]):
        for raw, (out, rec) in zip(raws, _in_a_row(raws)):
            assert SECRET not in out and SECRET.decode() not in repr(rec)
            assert (out, rec) == _alone(raw)


# --- 2. heads whose bytes are equal but whose handling differs ----------------------------------

_EQUAL_BYTES = [
    # HEAD then GET of one head (Content-Length is the body's on GET, and kept on HEAD)
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nETag: \"e\"\r\n\r\n", b"ok"),
    # 204 / 304 / 200 with the same lines
    (b"HTTP/1.1 204 No Content\r\nETag: \"e\"\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n", b""),
    (b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n", b""),
    (b"HTTP/1.1 200 OK\r\nETag: \"e\"\r\nConnection: x-hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n", b""),
    # the same lines but a name's case, a value's case, a duplicate, an added space
    (b"HTTP/1.1 200 OK\r\nconnection: X-Hop\r\nX-HOP: 1\r\nContent-Length: 0\r\n\r\n", b""),
    (b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nConnection: x-hop\r\nx-hop: 1\r\nContent-Length: 0\r\n\r\n", b""),
    (b"HTTP/1.1 200 OK\r\nConnection:  x-hop \r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n", b""),
    # the phrase changing (head_scrub's key), the credential in it
    (b"HTTP/1.1 200 Fine\r\nContent-Length: 0\r\n\r\n", b""),
    (b"HTTP/1.1 200 Fine Bearer " + SECRET + b"\r\nContent-Length: 0\r\n\r\n", b""),
    (b"HTTP/1.1 200 Fine\r\nContent-Length: 0\r\n\r\n", b""),
]


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_heads_alike_but_for_a_part_of_the_key_are_each_cleaned_as_alone(method):
    raws = []
    for head, body in _EQUAL_BYTES:
        raws.append(head + (b"" if method == b"HEAD" else body))
    for raw, (out, rec) in zip(raws * 2, _in_a_row(raws * 2, method)):
        assert SECRET not in out and b"X-Hop" not in out and b"x-hop: 1" not in out.lower(), out
        assert (out, rec) == _alone(raw, method), raw


def test_head_then_get_of_one_head_in_memory():
    """The site's memo, HEAD and GET alternating with must_mask and a masker swap: as cleaned alone."""
    lines = [(b"Content-Length", b"5"), (b"ETag", b'"v"'), (b"Content-Encoding", b"gzip")]
    maskers = [Masker(), Masker(fields=("ssn",))]
    warm = make_site(None)
    for method, mm, m in [("HEAD", False, 0), ("GET", False, 0), ("GET", True, 0), ("GET", False, 1),
                          ("HEAD", False, 1), ("GET", True, 1), ("GET", False, 0)]:
        got = []
        for s in (warm, make_site(None)):
            s.masker = maskers[m]
            ex = SimpleNamespace(site=s, method=method, record=Record(0))
            out, counts = clean_headers(ex, SimpleNamespace(headers=RawHeaders(list(lines)), code=200), mm, False,
                                        None)
            got.append((out, counts, ex.record.response_headers))
        assert got[0] == got[1], (method, mm, m)


def test_a_trailer_after_a_head_answered_alone_does_not_change_the_next_head():
    """The head in one read, its body and trailer later (the memo was filled before the trailer
    came), then the head that has the trailer as a header: each as alone."""
    s, ch, t = connect(MemoSite())
    s.script.verdict = Allow("** /**")
    head_end = WITH_TRAILER.index(b"\r\n\r\n") + 4
    t.clear()
    ch.dataReceived(get(b"/v1/x"))
    proto = next(p for p in s.endpoint.protocols if getattr(p, "exchange", None) is not None)
    proto.dataReceived(WITH_TRAILER[:head_end])
    proto.dataReceived(WITH_TRAILER[head_end:])
    assert b"sid=trailer" not in t.value()
    assert _exchange(s, ch, t, AS_HEADERS) == _alone(AS_HEADERS)


# --- 3. a compressed answer on a site that injects a credential (gzscrub's unzip, keyed as must_mask) --

def test_a_compressed_head_decoded_on_get_and_kept_on_head_each_as_alone():
    import gzip

    body = gzip.compress(b"hello")
    lines = (b"Content-Type: text/plain\r\nContent-Encoding: gzip\r\nETag: \"z\"\r\nContent-MD5: x\r\n"
             b"Content-Length: %d\r\n\r\n" % len(body))
    get_raw = b"HTTP/1.1 200 OK\r\n" + lines + body
    head_raw = b"HTTP/1.1 200 OK\r\n" + lines
    for order in ([(get_raw, b"GET"), (head_raw, b"HEAD"), (get_raw, b"GET")],
                  [(head_raw, b"HEAD"), (get_raw, b"GET"), (head_raw, b"HEAD")]):
        s, ch, t = connect(MemoSite())
        s.script.verdict = Allow("** /**")
        for raw, method in order:
            got = _exchange(s, ch, t, raw, method)
            assert got == _alone(raw, method), (method, got)
            if method == b"GET":  # decoded: no coding, digest nor the compressed length go out
                assert b"hello" in got[0] and b"gzip" not in got[0] and b"ETag" not in got[0]
                assert b"Content-Length: 5\r\n" in got[0]
