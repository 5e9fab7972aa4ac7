"""A request's answer on its client connection: hoopy/http/server.py's ``IResponseSink``.

The head is held until the first body bytes (or the end) and goes out with them in one send
(``write_now``): a small answer is one send() instead of two buffered writes. The framing is
HTTP/1.1's: the upstream's Content-Length kept, else chunked (HTTP/1.0: until the close); no body
to HEAD, 204 and 304.
"""
from __future__ import annotations

from twisted.web.http import RESPONSES
from zope.interface import implementer

from hoopy.http.sink import IResponseSink

_NO_BODY_CODES = frozenset((204, 304))


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


@implementer(IResponseSink)
class Response:
    """One request's answer, written on its connection: the head with the first body bytes."""

    __slots__ = ("channel", "request", "started", "finished", "_status", "_headers", "_chunked", "_body")

    def __init__(self, channel, request):  # a hoopy.http.server.GatewayChannel and its _Request
        self.channel, self.request = channel, request
        self.started = False
        self.finished = False
        self._status = b"200 OK"
        self._headers: list = []
        self._chunked = False
        self._body = True

    def head(self, code, phrase, headers):
        self._status = b"%d %b" % (code, phrase or RESPONSES.get(code, b"Unknown Status"))
        self._headers = headers
        for name, value in headers:
            if value == b"close" and name.lower() == b"connection":
                self.channel.persistent = False  # no pipelined request after this one is read

    def _head(self) -> bytes:
        self.started = True
        req, headers = self.request, self._headers
        code = int(self._status[:3])
        self._body = req.method != b"HEAD" and code not in _NO_BODY_CODES
        lines = [req.version, b" ", self._status, b"\r\n"]
        n_lines = 2 + len(headers)  # the status line, one a header, the blank line
        length = close = False
        for name, value in headers:
            lines += (name, b": ", value, b"\r\n")
            n = name.lower()
            if n == b"content-length":
                length = True
            elif n == b"connection":
                close = True
        if self._body and not length and req.version == b"HTTP/1.1":
            self._chunked = True
            lines.append(b"Transfer-Encoding: chunked\r\n")
            n_lines += 1
        if not close and req.version == b"HTTP/1.1" and not (req.persistent and self.channel.persistent):
            lines.append(b"Connection: close\r\n")
            n_lines += 1
        lines.append(b"\r\n")
        out = b"".join(lines)
        if out.count(b"\n") != n_lines or out.count(b"\r") != out.count(b"\n"):
            # a CR or LF inside a name or value would split it: spaces instead (as twisted.web did)
            return self._head_clean()
        return out

    def _head_clean(self) -> bytes:
        self._headers = [(n.replace(b"\r", b" ").replace(b"\n", b" "), v.replace(b"\r", b" ").replace(b"\n", b" "))
                         for n, v in self._headers]
        self._chunked = False
        return self._head()

    def write(self, data):
        if self.finished or self.channel.lost:
            return
        out = b"" if self.started else self._head()
        if data and self._body:
            out += _chunk(data) if self._chunked else data
        if out:
            self.channel.send(out)

    def finish(self):
        if self.finished:
            return
        out = b"" if self.started else self._head()
        if self._chunked:
            out += b"0\r\n\r\n"
        self.finished = True
        if out:  # (nothing left to send after a body with its length: most answers)
            self.channel.send(out)
        self.channel.request_done(self.request)

    def abort(self):
        transport = self.channel.transport
        if transport is not None:
            transport.abortConnection()

    def register_producer(self, producer):
        if self.channel.transport is not None:
            self.channel.transport.registerProducer(producer, True)

    def unregister_producer(self):
        if self.channel.transport is not None:
            self.channel.transport.unregisterProducer()

    def close_later(self, seconds, done):
        """The answer is out but the body still arrives: finish when it is in, unless the
        connection is closed first (after ``seconds``)."""
        self.channel.close_in(seconds)
        done.addCallback(self._finish_when_in)

    def _finish_when_in(self, result):
        if not self.finished and not self.channel.lost and self.channel.answering(self.request):
            self.finish()
        return result

    def take_over(self, upstream, answer, on_lost):
        from hoopy.http.upgrade import take_over

        return take_over(self.channel, upstream, answer, on_lost)
