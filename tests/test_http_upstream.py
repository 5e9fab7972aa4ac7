"""A real upstream HTTP server for the HTTP gateway tests (no tests in here).

Run as ``python tests/test_http_upstream.py PORT LOGFILE [CERT KEY]`` (https with CERT): a twisted.web
server on 127.0.0.1:PORT that appends one JSON line per request it receives
to LOGFILE (method, path, headers, body size), so a test can prove what did
or did not reach the upstream.

  /echo/**        JSON: the method, raw path, headers and body it received
  /customer       JSON holding an ssn, a card number and e-mail addresses
  /gzip/customer  the same, gzip-encoded whatever Accept-Encoding says
  /text           text/plain with an e-mail address
  /sse            text/event-stream: three events, JSON and text, 50 ms apart
  /big?size=N     N bytes of application/octet-stream, produced with backpressure
  /slow           answers after 10 s
  /reset          sends a head and half a body, then drops the connection
  /stall          sends a head and 1000 bytes, then nothing, connection open
  /upload         counts and hashes the request body
  /ws             a WebSocket echo (text frames), answering 101 itself (?choose=1: choosing the first
                  subprotocol offered; else none)
  /ws-refuse      answers a WebSocket upgrade with 403
  /ws-h2c         answers any upgrade with 101 to h2c
  /raw?b=B64&ct=TYPE&ce=ENC&h=NAME:VALUE  the body, Content-Type and headers the test asks for
                  (no Content-Type without ct); honours "Range: bytes=A-B" with a 206;
                  with stall=1 the body is sent and the response never ends (/files/* the same)
  /hostile?kind=K&size=N  a body built to cost a masker the most (see hostile())
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import struct
import json
import sys

CUSTOMER = {
    "id": 42,
    "name": "Ada",
    "ssn": "123-45-6789",
    "card": {"number": "4111 1111 1111 1111", "expiry": "12/29"},
    "contact": {"email": "ada@example.com", "note": "call ada@example.com after 5"},
    "orders": [{"id": 1, "ssn": "987-65-4320"}],
}


def hostile(kind: str, size: int) -> tuple[bytes, bytes, bytes | None]:
    """(Content-Type, body, Content-Encoding) of a body built to cost a masker the most."""
    import zlib

    def fill(unit: bytes, ct: bytes, head=b"", tail=b""):
        return ct, head + unit * max(1, (size - len(head) - len(tail)) // len(unit)) + tail, None

    if kind == "email-run":
        return fill(b"a", b"text/plain", tail=b"@")
    if kind == "email-labels":
        return fill(b"a" * 63 + b"@" + b"b" * 62 + b"-", b"text/plain")
    if kind == "unclosed-tags":
        return fill(b"<a ", b"text/html")
    if kind == "unclosed-attribute":
        return fill(b"y", b"text/html", head=b'<a ssn="')
    if kind == "deep-markup":
        return fill(b"<ssn>", b"application/xml")
    if kind == "end-tags":
        return fill(b"</a ", b"text/html", tail=b">ssn")
    if kind == "json-deep":
        n = size // 2
        return b"application/json", b"[" * n + b"]" * n, None
    if kind == "json-in-strings":
        inner = json.dumps({"ssn": "1" * 20})
        for _ in range(6):
            inner = json.dumps({"ssn": "x", "d": inner})
        return fill(inner.encode() + b",", b"application/json", head=b"[", tail=b"0]")
    if kind == "kv-nested":
        return fill(b"[", b"text/plain", head=b"ssn: ")
    if kind == "csv-wide":
        n = size // 4
        return b"text/csv", b"ssn," * n + b"\n" + b"1," * n + b"\n", None
    if kind == "backslashes":
        return fill(b"\\", b"text/plain", head=b"ssn ")
    if kind == "gzip-bomb":  # 64 MiB of zeros (32 times the tests' mask_limit), 64 KiB on the wire
        z = zlib.compressobj(9, zlib.DEFLATED, 31)
        block = b"0" * (1 << 20)
        return b"application/json", b"".join(z.compress(block) for _ in range(64)) + z.flush(), b"gzip"
    raise ValueError(kind)


def main(port: int, logfile: str, tls=()):
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    log = open(logfile, "a", buffering=1)

    class BigProducer:
        def __init__(self, request, size):
            self.request, self.left = request, size
            self.chunk = b"x" * 65536

        def resumeProducing(self):
            if self.left <= 0:
                return
            n = min(self.left, len(self.chunk))
            self.left -= n
            self.request.write(self.chunk[:n] if n < len(self.chunk) else self.chunk)
            if self.left <= 0:
                self.request.unregisterProducer()
                self.request.finish()

        def stopProducing(self):
            self.left = 0

    from twisted.internet.protocol import Protocol

    class WSEcho(Protocol):
        """Just enough RFC 6455 to echo masked client frames back unmasked."""

        buf = b""

        def dataReceived(self, data):
            self.buf += data
            while len(self.buf) >= 2:
                b0, b1 = self.buf[0], self.buf[1]
                n, i = b1 & 0x7F, 2
                if n == 126:
                    if len(self.buf) < 4:
                        return
                    n, i = struct.unpack("!H", self.buf[2:4])[0], 4
                elif n == 127:
                    if len(self.buf) < 10:
                        return
                    n, i = struct.unpack("!Q", self.buf[2:10])[0], 10
                if len(self.buf) < i + 4 + n:
                    return
                key, payload = self.buf[i:i + 4], self.buf[i + 4:i + 4 + n]
                self.buf = self.buf[i + 4 + n:]
                payload = bytes(c ^ key[j % 4] for j, c in enumerate(payload))
                if b0 & 0x0F == 8:  # close
                    self.transport.write(b"\x88\x00")
                    self.transport.loseConnection()
                    return
                self.transport.write(ws_frame(b"echo: " + payload))

    def ws_frame(payload: bytes, mask: bytes | None = None) -> bytes:
        n = len(payload)
        head = bytes([0x81]) + (bytes([n | (0x80 if mask else 0)]) if n < 126 else
                                bytes([126 | (0x80 if mask else 0)]) + struct.pack("!H", n))
        return head + payload

    class Root(Resource):
        isLeaf = True

        def render(self, request):
            if request.path == b"/upload":
                request.setHeader(b"content-type", b"application/json")
                return json.dumps({"bytes": request.seen, "sha256": request.sha.hexdigest()}).encode()
            body = request.content.read()
            path = request.uri.decode()
            headers = {k.decode().lower(): [v.decode() for v in vs]
                       for k, vs in request.requestHeaders.getAllRawHeaders()}
            log.write(json.dumps({"method": request.method.decode(), "path": path, "headers": headers,
                                  "body_bytes": len(body)}) + "\n")
            p = request.path.decode()
            if p == "/ws-h2c":  # switches to h2c whatever was asked
                request.channel.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
                                                b"Upgrade: h2c\r\n\r\n")
                request.channel.transport.loseConnection()
                return NOT_DONE_YET
            if p == "/ws-refuse":
                request.setResponseCode(403)
                return b"no"
            if p == "/ws" and (request.getHeader(b"upgrade") or b"").lower() == b"websocket":
                key = request.getHeader(b"sec-websocket-key")
                accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
                transport = request.channel.transport
                proto = WSEcho()
                request.channel.dataReceived = proto.dataReceived
                request.channel.connectionLost = lambda reason: None
                transport.unregisterProducer()
                proto.makeConnection(transport)
                chosen = b""
                offered = request.getHeader(b"sec-websocket-protocol")
                if offered and b"choose" in request.args:  # /ws?choose=1: the first protocol offered
                    chosen = b"Sec-WebSocket-Protocol: " + offered.split(b",")[0].strip() + b"\r\n"
                transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n" + chosen
                                + b"\r\n")
                transport.resumeProducing()
                return NOT_DONE_YET
            if p.startswith("/echo") or p.startswith("/v1/"):
                request.setHeader(b"content-type", b"application/json")
                request.setHeader(b"set-cookie", b"sid=upstream-cookie")
                return json.dumps({"method": request.method.decode(), "path": path, "headers": headers,
                                   "body": body.decode("utf-8", "replace")}).encode()
            if p == "/customer":
                request.setHeader(b"content-type", b"application/json; charset=utf-8")
                return json.dumps(CUSTOMER).encode()
            if p == "/gzip/customer":
                request.setHeader(b"content-type", b"application/json")
                request.setHeader(b"content-encoding", b"gzip")
                return gzip.compress(json.dumps(CUSTOMER).encode())
            if p == "/text":
                request.setHeader(b"content-type", b"text/plain")
                return b"write to ada@example.com or bob@example.org\n"
            if p == "/sse":
                request.setHeader(b"content-type", b"text/event-stream")
                request.setHeader(b"cache-control", b"no-cache")
                events = [
                    b'event: message\ndata: {"jsonrpc":"2.0","id":1,"result":{"ssn":"123-45-6789","who":"ada@example.com"}}\n\n',
                    b"data: plain text for ada@example.com\n\n",
                    b'data: {"done":true}\n\n',
                ]
                for i, ev in enumerate(events):
                    reactor.callLater(0.05 * i, request.write, ev)
                reactor.callLater(0.05 * len(events), request.finish)
                return NOT_DONE_YET
            if p == "/big":
                size = int(request.args.get(b"size", [b"1048576"])[0])
                request.setHeader(b"content-type", b"application/octet-stream")
                request.setHeader(b"content-length", str(size).encode())
                request.registerProducer(BigProducer(request, size), False)
                return NOT_DONE_YET
            if p == "/slow":
                call = reactor.callLater(10, lambda: request.finish() if not request.finished else None)
                request.notifyFinish().addErrback(lambda _: call.cancel() if call.active() else None)
                request.setHeader(b"content-type", b"text/plain")
                return NOT_DONE_YET
            if p == "/stall":  # a head and a little body, then silence (the connection stays open)
                request.setHeader(b"content-type", b"application/octet-stream")
                request.write(b"z" * 1000)
                return NOT_DONE_YET
            if p == "/reset":
                request.setHeader(b"content-type", b"application/octet-stream")
                request.setHeader(b"content-length", b"100000")
                request.write(b"y" * 1000)
                reactor.callLater(0.05, request.transport.abortConnection)
                return NOT_DONE_YET
            if p == "/raw" or p.startswith("/files/"):
                a = request.args
                data = base64.urlsafe_b64decode(a.get(b"b", [b""])[0])
                request.defaultContentType = None
                if b"ct" in a:
                    request.setHeader(b"content-type", a[b"ct"][0])
                for ce in a.get(b"ce", []):
                    request.responseHeaders.addRawHeader(b"content-encoding", ce)
                for h in a.get(b"h", []):
                    name, _, value = h.partition(b":")
                    value = value.strip().replace(b"{auth}", (request.getHeader(b"authorization") or b""))
                    request.responseHeaders.addRawHeader(name, value)
                rng = request.getHeader(b"range")
                if rng and rng.startswith(b"bytes="):
                    lo, _, hi = rng[6:].partition(b"-")
                    lo, hi = int(lo), min(int(hi), len(data) - 1)
                    request.setResponseCode(206)
                    request.setHeader(b"content-range", b"bytes %d-%d/%d" % (lo, hi, len(data)))
                    return data[lo:hi + 1]
                if b"stall" in a:  # the head and the body so far, then silence
                    request.write(data)
                    return NOT_DONE_YET
                return data
            if p == "/hostile":  # the worst bodies found for the maskers, about ?size= bytes
                kind = request.args[b"kind"][0].decode()
                size = int(request.args.get(b"size", [b"2000000"])[0])
                ct, body, ce = hostile(kind, size)
                request.setHeader(b"content-type", ct)
                if ce:
                    request.setHeader(b"content-encoding", ce)
                return body
            if p == "/health":
                return b"ok"
            request.setResponseCode(404)
            return b"not found"

    from twisted.web.server import Request

    class ProgressRequest(Request):
        """Hashes uploads as they arrive (no spooling: a 1 GiB upload is answered at once) and logs
        when the first MiB is in: proof that bodies stream through the gateway."""

        seen = 0

        def gotLength(self, length):
            super().gotLength(length)
            self.upload = self.channel._path.startswith(b"/upload")
            self.sha = hashlib.sha256()

        def handleContentChunk(self, data):
            before, self.seen = self.seen, self.seen + len(data)
            if before < 1 << 20 <= self.seen:
                log.write(json.dumps({"progress": self.channel._path.decode(), "bytes": self.seen}) + "\n")
            if self.upload:
                self.sha.update(data)
            else:
                super().handleContentChunk(data)

    site = Site(Root())
    site.requestFactory = ProgressRequest
    site.log = lambda request: None
    if tls:
        from twisted.internet import ssl

        cert = ssl.PrivateCertificate.loadPEM(open(tls[0]).read() + open(tls[1]).read())
        reactor.listenSSL(port, site, cert.options(), interface="127.0.0.1")
    else:
        reactor.listenTCP(port, site, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3:5])
