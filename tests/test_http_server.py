"""The client side's channel (hoopy/http/server.py) in memory: bytes in, answers out, in order.

The upstream is the real upstream client over in-memory transports (tests/test_http_exchange.py's
FakeSite); a request allowed by the script goes there, and a test answers for the upstream.
"""
from __future__ import annotations

import re

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from hoopy.http.server import GatewayChannel
from tests.test_http_exchange import FakeSite, Script, _Settings

AUTH = b"Authorization: Bearer good-token\r\n"


@attrs.define
class _ServerSettings(_Settings):
    head_timeout: float = 4.0


class Site(FakeSite):
    def __init__(self, script=None):
        super().__init__(script or Script())
        self.settings = _ServerSettings()
        self.channels: set = set()
        self.closed: list = []

    def channel_closed(self, channel):
        self.closed.append(channel)


def connect(site=None):
    site = site or Site()
    ch = GatewayChannel(site)
    t = StringTransport()
    ch.makeConnection(t)
    return site, ch, t


def get(path: bytes = b"/v1/x", extra: bytes = b"", auth: bytes = AUTH, version: bytes = b"1.1") -> bytes:
    return b"GET " + path + b" HTTP/" + version + b"\r\nHost: gw\r\n" + auth + extra + b"\r\n"


def statuses(out: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.[01] (\d{3}) ", out)]


def answer_upstream(site, body: bytes = b"ok"):
    """The upstream answers the request waiting on one of its connections."""
    for proto in site.endpoint.protocols:
        if getattr(proto, "exchange", None) is not None:
            proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
            return
    raise AssertionError("no request waits upstream")


def test_a_refused_request_is_answered_in_one_write_and_the_connection_kept():
    site, ch, t = connect()
    ch.dataReceived(get(auth=b""))
    out = t.value()
    assert statuses(out) == [401] and out.count(b"HTTP/1.1") == 1
    assert b"Content-Length:" in out and not t.disconnecting
    t.clear()
    ch.dataReceived(get(auth=b""))
    assert statuses(t.value()) == [401]


def test_pipelined_requests_wait_their_turn_and_are_answered_in_order():
    site, ch, t = connect()
    ch.dataReceived(get(b"/v1/a") + get(b"/v1/b") + get(b"/v1/c", auth=b""))
    assert len(site.endpoint.protocols) == 1  # only the first went upstream
    assert t.value() == b""
    answer_upstream(site, b"first")
    out = t.value()
    assert statuses(out) == [200] and out.endswith(b"first")
    assert len(site.endpoint.transports) >= 1
    sent = b"".join(tr.value() for tr in site.endpoint.transports)
    assert sent.count(b"GET /v1/b ") == 1  # the second started once the first was answered
    answer_upstream(site, b"second")
    assert statuses(t.value()) == [200, 200, 401]


def test_http_1_0_is_answered_in_its_version_and_closed():
    site, ch, t = connect()
    ch.dataReceived(get(version=b"1.0", auth=b"", extra=b"Connection: keep-alive\r\n") + get())
    assert t.value().startswith(b"HTTP/1.0 401 ") and t.disconnecting
    assert statuses(t.value()) == [401]


def test_connection_close_is_said_and_done():
    site, ch, t = connect()
    ch.dataReceived(get(auth=b"", extra=b"Connection: close\r\n") + get())
    assert statuses(t.value()) == [401] and b"Connection: close\r\n" in t.value() and t.disconnecting


def test_a_chunked_body_goes_upstream_in_the_gateways_framing():
    site, ch, t = connect()
    ch.dataReceived(b"POST /v1/x HTTP/1.1\r\nHost: gw\r\n" + AUTH + b"Transfer-Encoding: chunked\r\n"
                    b"Content-Type: text/plain\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n")
    sent = site.endpoint.transports[-1].value()
    assert b"hello" in sent and b"X-Trailer" not in sent
    answer_upstream(site)
    assert statuses(t.value()) == [200]


def test_expect_100_continue_is_answered_before_the_response():
    site, ch, t = connect()
    ch.dataReceived(b"POST /v1/x HTTP/1.1\r\nHost: gw\r\n" + AUTH + b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n")
    assert t.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    ch.dataReceived(b"hello")
    answer_upstream(site)
    assert statuses(t.value()) == [100, 200]


BAD = [
    b"POST /v1/x HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /v1/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: identity\r\n\r\nhello",
    b"GET /v1/x HTTP/1.2\r\nHost: gw\r\n\r\n",
    b"GET /v1/x\r\n\r\n",
    b"GET /v1/x HTTP/1.1\r\nX-A: a\rb\r\n\r\n",
    b"GET /v1/x HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(600)) + b"\r\n",
]


def test_malformed_requests_get_400_and_the_connection_closes():
    for data in BAD:
        site, ch, t = connect()
        ch.dataReceived(data + get())
        assert statuses(t.value()) == [400] and t.disconnecting, data[:60]
        assert site.endpoint.protocols == [], data[:60]
    # a body that turns out malformed: its answer is cut there, and the connection closed
    site, ch, t = connect()
    ch.dataReceived(b"POST /v1/x HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n"
                    + get())
    assert statuses(t.value()) in ([400], [401]) and t.disconnecting


def test_a_bad_request_pipelined_behind_a_good_one_is_answered_after_it():
    site, ch, t = connect()
    ch.dataReceived(get() + b"GET /v1/x HTTP/1.2\r\n\r\n")
    assert t.value() == b""
    answer_upstream(site)
    assert statuses(t.value()) == [200, 400] and t.disconnecting


def test_optional_whitespace_and_folds_are_read_as_rfc_9112_says():
    site, ch, t = connect()
    ch.dataReceived(b"POST /v1/x HTTP/1.1\r\nHost: gw\r\n" + AUTH + b"Content-Type: text/plain\r\n"
                    b"Transfer-Encoding:\r\n chunked\t\r\n\r\n5\r\nhe \r\n\r\n0\r\n\r\n")
    sent = site.endpoint.transports[-1].value()
    assert b"he \r\n" in sent  # the body untouched


def test_a_head_that_never_ends_gets_408_after_head_timeout():
    site, ch, t = connect()
    ch.dataReceived(b"GET /v1/x HTTP/1.1\r\nX-Slow: ")
    for _ in range(3):
        site.reactor.advance(1)
        ch.dataReceived(b"x")
    site.reactor.advance(1.5)
    assert t.value().startswith(b"HTTP/1.1 408 ") and t.disconnecting


def test_a_request_line_refused_at_its_first_byte_is_answered_when_it_ends_or_late():
    site, ch, t = connect()
    ch.dataReceived(b"X")
    assert t.value() == b""
    ch.dataReceived(b"Y\r\n")
    assert statuses(t.value()) == [400]
    site, ch, t = connect()
    ch.dataReceived(b"X")
    site.reactor.advance(5)
    assert t.value().startswith(b"HTTP/1.1 408 ")


def test_an_idle_keep_alive_connection_is_closed_quietly_and_a_busy_one_is_not():
    site, ch, t = connect()
    site.settings.upstream_timeout = 100.0
    ch.dataReceived(get())
    site.reactor.advance(30)  # a slow upstream is not the client's idleness (upstream_timeout decides)
    assert not t.disconnecting
    answer_upstream(site)
    site.reactor.advance(59)
    assert not t.disconnecting
    site.reactor.advance(2)
    assert t.disconnecting and statuses(t.value()) == [200]


def test_requests_pipelined_behind_a_waiting_one_stop_the_socket_being_read():
    site, ch, t = connect()
    ch.dataReceived(get())
    ch.dataReceived(get() * 200)
    assert t.producerState == "paused"
    answer_upstream(site)  # the next ones start, answered one by one
    while len(ch._queue) > 10:
        answer_upstream(site)
    assert t.producerState == "producing"


def test_a_closed_connection_whose_client_does_not_read_is_cut_after_a_while():
    site, ch, t = connect()
    aborted = []
    t.abortConnection = lambda: aborted.append(True)
    ch.dataReceived(get(auth=b"", extra=b"Connection: close\r\n"))
    assert t.disconnecting and not aborted
    site.reactor.advance(16)
    assert aborted


def test_the_connection_gone_mid_request_tells_the_exchange():
    site, ch, t = connect()
    ch.dataReceived(get())
    ex = ch._active.exchange
    ch.connectionLost(None)
    assert ex.gone and site.closed == [ch]


REQUESTS = (get(b"/v1/a") + b"POST /v1/b HTTP/1.1\r\nHost: gw\r\n" + AUTH + b"Content-Type: text/plain\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            + b"POST /v1/c HTTP/1.1\r\nHost: gw\r\n" + AUTH + b"Content-Length: 4\r\nContent-Type: text/plain\r\n\r\nwxyz"
            + get(b"/v1/d", auth=b""))


def _run(cuts) -> tuple[bytes, bytes]:
    site, ch, t = connect()
    points = sorted(set(c % len(REQUESTS) for c in cuts))
    start = 0
    for p in points + [len(REQUESTS)]:
        if p > start:
            ch.dataReceived(REQUESTS[start:p])
            start = p
    for i in range(3):
        if any(getattr(p, "exchange", None) is not None for p in site.endpoint.protocols):
            answer_upstream(site, b"r%d" % i)
    # what went upstream: the same requests (which pooled connection took which, and how a streamed
    # body was chunked on the way, follow the splits)
    sent = sorted(re.findall(rb"(?:GET|POST) /v1/\w+ HTTP/1.1", b"".join(tr.value() for tr in site.endpoint.transports)))
    return re.sub(rb"Date: [^\r]*", b"Date: -", t.value()), sent  # (the clock may turn a second meanwhile)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_the_same_requests_and_answers_however_the_bytes_are_split(cuts):
    assert _run(cuts) == _run([])


def test_an_answered_request_frees_by_reference_count_not_by_the_garbage_collector():
    """(httpcpu4) A small GET on a keep-alive connection leaves nothing in reference cycles: its
    _Request, Response, Exchange, request body and stall watch are freed as the answer ends, not
    by a collection later (the collector's passes were 3.7% of the reactor thread)."""
    import gc

    site, ch, t = connect()
    for _ in range(3):  # warm: the pooled upstream connection, the connection's checked head
        ch.dataReceived(get())
        answer_upstream(site, b"warm")
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for i in range(6):
            t.clear()
            ch.dataReceived(get())
            if i % 2:  # the body after its head (streamed)
                proto = next(p for p in site.endpoint.protocols if getattr(p, "exchange", None) is not None)
                proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
                proto.dataReceived(b'{"id": 42}')
            else:  # the body with its head (taken whole)
                answer_upstream(site, b'{"id": 42}')
            assert statuses(t.value()) == [200] and t.value().endswith(b'{"id": 42}')
        gc.collect()
        left = [type(o).__qualname__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if enabled:
            gc.enable()
    assert left == []
