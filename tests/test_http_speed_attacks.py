"""Attacks on the httpcpu round's shortcuts (a pooled connection keeping its llhttp parser, the
asyncio reactor's callLater, the Scrubber's fresh() copies, the path fast path).

A kept parser must hold nothing of the last response: bytes an upstream sent after a complete
answer, in the same read, must not become the head of the next caller's answer on that connection.
"""
from __future__ import annotations

import re
import socket

import pytest
from hypothesis import given, settings, strategies as st

from hoopy.http.bodies import Scrubber
from tests.support import HoopyProcess, free_port, ident
from tests.wire_peers import RawUpstream, raw, response, statuses

ATTACKER = ident("attacker")
VICTIM = ident("victim")
KEY = "sk-live-0123456789abcdef"  # the injected credential: token characters only (fits a header name)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    up = RawUpstream()
    port = free_port()
    body = ATTACKER.toml(scram=False) + VICTIM.toml(scram=False) + f"""
[connections.api]
type = "http"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up.port}"
upstream_timeout = "3s"
pool_size = 1
upstream_headers = {{ X-Api-Key = "env:API_KEY" }}

[[grants]]
identity = "attacker"
connection = "api"
allow = ["GET /v1/customers/*"]

[[grants]]
identity = "victim"
connection = "api"
allow = ["* /**"]
"""
    gw = HoopyProcess(tmp_path_factory.mktemp("speed"), body, env={"API_KEY": KEY})
    gw.start()
    gw.port = port
    gw.up = up
    yield gw
    gw.stop()
    up.stop()
    assert "Traceback" not in gw.log_text(), gw.log_text()[-4000:]


def req(who, target: bytes) -> bytes:
    return (b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + who.token.encode()
            + b"\r\n\r\n")


# What an upstream sends after a complete answer, in the same write: the start of a head that the
# next answer on the connection would complete (an open header value swallows its status line).
TAILS = {
    "an open header": b"HTTP/1.1 200 OK\r\nSet-Cookie: pwned=1\r\nX-Pad: ",
    "a status line": b"HTTP/1.1 200 OK\r\nSet-Cookie: pwned=1\r\n",
    "half a status line": b"HTTP/1.1 2",
    "a 1xx's start": b"HTTP/1.1 103 Early Hints\r\nSet-Cookie: pwned=1\r\nX-Pad: ",
}


# The answer the tail follows: each leaves llhttp at a message's start (a kept parser)
FIRSTS = {
    "Content-Length": (response(200, b"first"), [200]),
    "chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n\r\n", [200]),
    "chunked with a trailer": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n0\r\n"
                               b"X-T: 1\r\n\r\n", [200]),
    "204": (b"HTTP/1.1 204 No Content\r\n\r\n", [204]),
    "304": (b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", [304]),
    "after a 100": (b"HTTP/1.1 100 Continue\r\n\r\n" + response(200, b"first"), [200]),
}


@pytest.mark.parametrize("first", list(FIRSTS))
@pytest.mark.parametrize("name", list(TAILS))
def test_a_partial_head_after_an_answer_never_reaches_the_next_caller(world, name, first):
    answer, expect = FIRSTS[first]
    path = "/v1/customers/tail-" + re.sub(r"[^a-z0-9]+", "-", f"{name}-{first}".lower())
    world.up.script[path] = lambda h, b: answer + TAILS[name]
    out = raw(world.port, req(ATTACKER, path.encode()), timeout=2)
    assert statuses(out) == expect and b"pwned" not in out, out
    # pool_size 1: the victim's request goes on the same upstream connection, if it was kept
    for i in range(2):
        target = path.replace("tail-", "victim-").encode() + b"-%d" % i
        out = raw(world.port, req(VICTIM, target))
        assert statuses(out) == [200], (name, out[:400])
        assert b"pwned" not in out and b"X-Pad" not in out and target in out, (name, out[:400])


def test_stray_line_ends_after_an_answer_keep_the_connection(world):
    """CRLFs between responses begin no message (llhttp skips them): the connection stays pooled."""
    world.up.script["/v1/customers/crlf"] = lambda h, b: response(200, b"first") + b"\r\n\r\n"
    n = len(world.up.conns)
    for i in range(3):
        out = raw(world.port, req(ATTACKER, b"/v1/customers/crlf"))
        assert statuses(out) == [200] and out.endswith(b"first"), out
    assert len(world.up.conns) - n <= 1  # one connection (a new one at most if the last was closed)


def test_a_call_moved_sooner_moves_asyncios_timer_though_only_later_calls_follow(monkeypatch):
    """hoopy's callLater compares only the new call's due time with asyncio's timer (Twisted's took
    the earliest call's): a DelayedCall.reset() to sooner (the HTTP server's one deadline timer
    moving from the idle deadline to a head's) must move the timer itself (Twisted's asyncio reactor
    does, in _moveCallLaterSooner), or it fires at the old time when only later calls follow."""
    import asyncio

    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    from hoopy import sockwrite

    monkeypatch.setattr(AsyncioSelectorReactor, "callLater", sockwrite._call_later)
    # A reactor of its own (not installed, never run): the process's reactor may hold calls of
    # other tests due sooner, which would hide whether the timer moves.
    loop = asyncio.new_event_loop()
    reactor = AsyncioSelectorReactor(loop)
    try:
        calls = [reactor.callLater(3000, lambda: None), reactor.callLater(2000, lambda: None)]
        assert reactor._scheduledAt - loop.time() > 1000
        calls[1].reset(0.05)
        calls.append(reactor.callLater(2500, lambda: None))  # due after the timer: moves nothing itself
        assert reactor._scheduledAt - loop.time() < 1
        for c in calls:
            c.cancel()
    finally:
        loop.close()


@pytest.mark.parametrize("spelled", [KEY, KEY.upper(), "x-" + KEY])
def test_the_credential_in_a_response_header_name_never_reaches_the_caller(world, spelled):
    """An upstream that echoes request headers as names (X-Echo-<value>: 1, a debug route): the
    credential is scrubbed from values, and a name must not carry it either."""
    path = "/v1/customers/name-" + re.sub(r"[^a-z0-9]+", "-", spelled.lower())
    world.up.script[path] = lambda h, b: response(200, b"ok", [(spelled.encode(), b"1"), (b"X-Other", b"2")])
    out = raw(world.port, req(ATTACKER, path.encode()))
    assert statuses(out) == [200] and out.endswith(b"ok") and b"X-Other: 2" in out, out
    assert KEY.encode() not in out.lower(), out


@pytest.mark.parametrize("spelled", [KEY, KEY.upper(), "X-Api-Key: " + KEY])
def test_the_credential_in_a_status_reason_never_reaches_the_caller(world, spelled):
    """A reason phrase that echoes the request ("401 bad key <key>") is upstream text like a header."""
    path = "/v1/customers/reason-" + re.sub(r"[^a-z0-9]+", "-", spelled.lower())
    world.up.script[path] = lambda h, b: b"HTTP/1.1 401 bad " + spelled.encode() + b"\r\nContent-Length: 2\r\n\r\nno"
    out = raw(world.port, req(ATTACKER, path.encode()))
    assert statuses(out) == [401] and out.endswith(b"no"), out
    assert KEY.encode() not in out.lower(), out


@pytest.mark.parametrize("cut", [1, 7, len(KEY) - 1])
@pytest.mark.parametrize("spelled", [KEY, KEY.upper()])
def test_the_credential_split_across_reads_of_two_responses_is_starred(world, spelled, cut):
    """Each response's Scrubber is a fresh() copy of the site's: the tail one holds back at a read's
    end is its own (two answers on one connection, each cut inside the credential)."""
    import time

    def answer(h, b):
        def gen(sock):
            sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"x" + spelled[:cut].encode(), spelled[cut:].encode() + b"y"):
                sock.sendall(b"%x\r\n%b\r\n" % (len(part), part))
                time.sleep(0.05)
            sock.sendall(b"0\r\n\r\n")
            yield None
        return gen
    path = "/v1/customers/split-%d-%s" % (cut, "up" if spelled.isupper() else "low")
    world.up.script[path] = answer
    with socket.create_connection(("127.0.0.1", world.port), timeout=5) as s:
        s.sendall(req(ATTACKER, path.encode()) * 2)  # pipelined: the same upstream connection, in turn
        out = b""
        t = time.monotonic()
        while out.count(b"0\r\n\r\n") < 2 and time.monotonic() - t < 5:
            c = s.recv(65536)
            if not c:
                break
            out += c
    assert statuses(out) == [200, 200], out
    assert KEY.encode() not in out.lower() and spelled[:cut].encode() + spelled[cut:cut + 1].encode() not in out, out
    assert out.count(b"x") >= 2 and out.count(b"y") >= 2 and out.count(b"*" * len(KEY)) == 2, out
