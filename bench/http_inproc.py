"""The HTTP gateway's own CPU per request, in memory: no sockets, no store, no other process.

    PYTHONPATH=. python -P bench/http_inproc.py [--requests 20000] [--channel] [--profile]

Runs small GETs through a real ``Exchange`` (checks, judgement, header plan, the upstream client
on StringTransport, the response path, the record) with the in-memory session of
tests/test_http_exchange.py, and prints CPU microseconds per request: a number that a loaded,
shared machine does not move much, for relative progress (what bench/http.py adds on top is
the socket calls and the store's durable writes). ``--channel``: the client side too, request
bytes in and response bytes out through hoopy/http/server.py's channel on a StringTransport.
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

from twisted.internet.testing import StringTransport

from hoopy.http.exchange import Exchange
from hoopy.http.upload import BodyPipe
from tests.test_http_exchange import FakeSite, MemorySink, Script

_BODY = b'{"id": 42, "name": "Ada", "plan": "pro", "active": true}'
# (its Content-Length its own: a wrong one left bytes after each answer, and the upstream connection
# was dropped and made again every request)
ANSWER = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b' % (len(_BODY), _BODY)
REQUEST = (b"GET /small.json HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAuthorization: Bearer good-token\r\n"
           b"User-Agent: wrk\r\nAccept: */*\r\n\r\n")
PAIRS = [(b"Host", [b"127.0.0.1:8080"]), (b"Authorization", [b"Bearer good-token"]), (b"User-Agent", [b"wrk"]),
         (b"Accept", [b"*/*"])]


def one(site):
    pipe = BodyPipe(StringTransport(), 0)
    pipe.end()
    sink = MemorySink()
    Exchange(site, sink, None, b"GET", b"/small.json", PAIRS, ("127.0.0.1", 40000), pipe).run()
    site.endpoint.protocols[-1].dataReceived(ANSWER)
    assert sink.code == 200, sink.code
    site.endpoint.transports[-1].clear()


def one_on_channel(site, channel, client):
    channel.dataReceived(REQUEST)
    site.endpoint.protocols[-1].dataReceived(ANSWER)
    assert client.value().startswith(b"HTTP/1.1 200 "), client.value()[:100]
    client.clear()
    site.endpoint.transports[-1].clear()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--channel", action="store_true", help="the client side's channel too (bytes in, bytes out)")
    args = ap.parse_args()
    if args.channel:
        from hoopy.http.server import GatewayChannel
        from tests.test_http_server import Site

        site = Site(Script())
        channel, client = GatewayChannel(site), StringTransport()
        channel.makeConnection(client)
        run = lambda: one_on_channel(site, channel, client)  # noqa: E731
    else:
        site = FakeSite(Script())
        run = lambda: one(site)  # noqa: E731
    site.script.events = _Nothing()
    for _ in range(200):
        run()  # warm, and one pooled upstream connection
    t = time.process_time()
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
    for _ in range(args.requests):
        run()
    if args.profile:
        prof.disable()
    cpu = time.process_time() - t
    what = "the client side's channel and the exchange" if args.channel else "the exchange"
    print(f"{args.requests} requests, {cpu / args.requests * 1e6:.1f} us of CPU each (in memory: {what}, "
          f"no sockets, no store){' (under cProfile)' if args.profile else ''}")
    if args.profile:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


class _Nothing(list):
    def append(self, item):
        pass


if __name__ == "__main__":
    main()
