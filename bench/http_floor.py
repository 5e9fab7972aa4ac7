"""The floor for bench/http.py: a bare twisted.web proxy with a raw keep-alive upstream client.

    python -P bench/http_floor.py LISTEN_PORT UPSTREAM_PORT   (-P: bench/http.py is not the stdlib http)

No policy, no events, no header rules, no masking: a twisted.web server (the same server hoopy
uses, on the same asyncio reactor) that sends each request to the upstream over a pool of
kept-alive connections with a forty-line client (Content-Length framing only), and writes the
answer back. What a Python gateway on this stack cannot beat; hoopy is measured against it.
"""
from __future__ import annotations

import sys


def main(listen: int, upstream: int):
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory, Protocol
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    idle: list = []
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", upstream)

    class Client(Protocol):
        request = None

        def connectionMade(self):
            self.transport.setTcpNoDelay(True)
            self.buf = b""

        def connectionLost(self, reason=None):
            # An upstream that closed an idle connection (nginx's keepalive_timeout, 75 s): never
            # handed out again. Without this a later run popped dead connections, its requests
            # hung until wrk's timeout, and the one-connection p50 read 0.000 (no request done).
            if self in idle:
                idle.remove(self)
            if self.request is not None:
                req, self.request = self.request, None
                req.setResponseCode(502)
                req.finish()

        def send(self, request):
            self.request, self.buf, self.need = request, b"", None
            self.transport.write(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % request.uri)

        def dataReceived(self, data):
            self.buf += data
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buf[:end].lower()
                i = head.find(b"content-length:")
                self.need = end + 4 + int(head[i + 15:head.find(b"\r\n", i)])
                self.head_len = end + 4
                self.head = self.buf[:end]
            if len(self.buf) >= self.need:
                req, body = self.request, self.buf[self.head_len:self.need]
                self.request = None
                idle.append(self)
                req.setHeader(b"content-type", b"application/json")
                req.setHeader(b"content-length", b"%d" % len(body))
                req.write(body)
                req.finish()

    class Proxy(Resource):
        isLeaf = True

        def render_GET(self, request):
            if idle:
                idle.pop().send(request)
            else:
                endpoint.connect(Factory.forProtocol(Client)).addCallback(lambda c: c.send(request))
            return NOT_DONE_YET

    site = Site(Proxy())
    site.log = lambda request: None
    reactor.listenTCP(listen, site, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
