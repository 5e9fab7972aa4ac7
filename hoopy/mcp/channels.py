"""How JSON-RPC messages reach the upstream MCP server: Streamable HTTP or a child's stdio."""
from __future__ import annotations

import json

from twisted.internet import defer, protocol
from twisted.internet.error import ProcessExitedAlready
from twisted.logger import Logger
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer
from twisted.web.http_headers import Headers

from hoopy.mcp import wire
from hoopy.mcp.sse import SSEError, SSEParser

log = Logger()


class EraHint:
    """What the connection learned of its upstream's era (so later sessions skip a failed probe)."""

    def __init__(self):
        self.modern_known = None


@implementer(IBodyProducer)
class _Bytes:
    """A request body written at once (FileBodyProducer would wait for the cooperator's next turn)."""

    def __init__(self, data: bytes):
        self.data = data
        self.length = len(data)

    def startProducing(self, consumer):
        consumer.write(self.data)
        return defer.succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class _Body(protocol.Protocol):
    """Reads one response body: JSON (bounded) or SSE (each event as it comes)."""

    def __init__(self, sse: bool, limit: int, on_message, finished: defer.Deferred):
        self.sse = SSEParser(limit) if sse else None
        self.limit = limit
        self.on_message = on_message
        self.finished = finished
        self.buf: list = []
        self.size = 0

    def dataReceived(self, data):
        try:
            if self.sse is not None:
                for ev in self.sse.feed(data):
                    if ev.event == "message" and ev.data.strip():
                        self.on_message(json.loads(ev.data))
            else:
                self.size += len(data)
                if self.size > self.limit:
                    raise SSEError(f"a response larger than {self.limit} bytes")
                self.buf.append(data)
        except (SSEError, ValueError) as e:
            log.warn("upstream MCP response refused: {e}", e=e)
            self.transport.stopProducing()

    def connectionLost(self, reason):
        if self.sse is None and self.buf:
            try:
                self.on_message(json.loads(b"".join(self.buf)))
            except ValueError:
                log.warn("upstream MCP response is not JSON")
        if not self.finished.called:
            self.finished.callback(None)


class HTTPChannel:
    def __init__(self, agent, url: str, headers: dict, limit: int, hint: EraHint):
        self.agent = agent
        self.url = url.encode()
        self.extra = {k: v for k, v in headers.items()}
        self.limit = limit
        self.hint = hint
        self.peer = None  # the UpstreamSession
        self.session_id = None
        self.version = None
        self._get = None
        self._closed = False

    @property
    def modern_known(self):
        return self.hint.modern_known

    @modern_known.setter
    def modern_known(self, v):
        self.hint.modern_known = v

    def open(self):
        return defer.succeed(None)

    def _headers(self, modern_msg=None, modern=None) -> Headers:
        h = Headers()
        for k, v in self.extra.items():
            h.setRawHeaders(k, [v])
        h.setRawHeaders(b"accept", [b"application/json, text/event-stream"])
        if modern is not None:
            for k, v in wire.modern_headers(modern_msg, modern).items():
                h.setRawHeaders(k, [v])
        else:
            if self.session_id:
                h.setRawHeaders(b"mcp-session-id", [self.session_id])
            if self.version:
                h.setRawHeaders(b"mcp-protocol-version", [self.version])
        return h

    def send(self, msg, pending, modern=None, probe=False) -> defer.Deferred:
        if self._closed:
            return defer.fail(ConnectionError("the upstream session is closed"))
        h = self._headers(msg if modern else None, modern)
        h.setRawHeaders(b"content-type", [b"application/json"])
        body = _Bytes(wire.dumps(msg))
        d = self.agent.request(b"POST", self.url, h, body)
        state = {"body": None}
        if pending is not None:
            def abort():
                if state["body"] is not None and state["body"].transport is not None:
                    state["body"].transport.stopProducing()
                elif not d.called:
                    d.cancel()
            pending.abort = abort

        def got(response):
            if msg.get("method") == "initialize":
                sid = response.headers.getRawHeaders(b"mcp-session-id")
                if sid:
                    self.session_id = sid[0].decode("latin-1")
            if response.code == 202:
                return None
            ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0].split(b";")[0].strip().lower()
            finished = defer.Deferred()
            if response.code == 404 and self.session_id and not probe:
                self.peer.connection_lost("the upstream no longer knows its MCP session (404)")
            got_reply = []

            def on_message(m):
                got_reply.append(m)
                self.peer.received(m, pending)

            if ctype in (b"application/json", b"text/event-stream"):
                b = state["body"] = _Body(ctype == b"text/event-stream", self.limit, on_message, finished)
                response.deliverBody(b)
            else:
                response.deliverBody(_Body(False, 0, lambda m: None, finished))

            def done(_):
                if pending is not None and not pending.done.called:
                    if response.code >= 400:
                        pending.done.errback(wire.WireError(
                            wire.INTERNAL_ERROR, f"the upstream answered HTTP {response.code}"))
                    else:
                        pending.done.errback(ConnectionError(
                            "the upstream closed its response stream before answering"))

            return finished.addCallback(done)

        return d.addCallback(got)

    def after_handshake(self):
        """Open the GET stream on which a handshake-era server sends what belongs to no request."""
        h = self._headers()
        h.setRawHeaders(b"accept", [b"text/event-stream"])
        d = self.agent.request(b"GET", self.url, h)
        self._get = d

        def got(response):
            if response.code != 200:
                return None
            finished = defer.Deferred()
            b = _Body(True, self.limit, lambda m: self.peer.received(m, None), finished)
            self._get = b
            response.deliverBody(b)
            return finished

        d.addCallback(got).addErrback(lambda f: None)

    def close(self) -> defer.Deferred:
        if self._closed:
            return defer.succeed(None)
        self._closed = True
        g = self._get
        if isinstance(g, _Body) and g.transport is not None:
            g.transport.stopProducing()
        elif isinstance(g, defer.Deferred) and not g.called:
            g.cancel()
        if not self.session_id:
            return defer.succeed(None)
        d = self.agent.request(b"DELETE", self.url, self._headers())
        d.addCallback(lambda r: r.deliverBody(_Body(False, 0, lambda m: None, defer.Deferred())))
        return d.addErrback(lambda f: None)


class _ChildProtocol(protocol.ProcessProtocol):
    def __init__(self, channel):
        self.channel = channel
        self.buf = b""
        self.stderr = b""

    def outReceived(self, data):
        buf = self.buf + data
        lines = buf.split(b"\n")
        self.buf = lines.pop()
        if len(self.buf) > self.channel.limit:
            log.warn("mcp child sent a line larger than {n} bytes: stopped", n=self.channel.limit)
            self.channel.kill()
            return
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                log.warn("mcp child wrote a line that is not JSON: {l!r}", l=line[:200])
                continue
            self.channel.peer.received(msg, None)

    def errReceived(self, data):
        self.stderr = (self.stderr + data)[-8192:]

    def processEnded(self, reason):
        self.channel.ended(reason)


class StdioChannel:
    """A child process: requests on stdin, everything it says on stdout (one JSON message a line)."""

    def __init__(self, reactor, argv, env, limit, hint: EraHint, uid=None, gid=None, cwd=None, on_exit=None):
        self.reactor = reactor
        self.argv = argv
        self.env = env
        self.limit = limit
        self.hint = hint
        self.uid, self.gid, self.cwd = uid, gid, cwd
        self.on_exit = on_exit
        self.peer = None
        self.proto = None
        self.process = None
        self.version = None
        self.exit: defer.Deferred[str] = defer.Deferred()  # fires with the status
        self.status: str | None = None  # "exit status N" | "signal N" once ended
        self._kill_timers: list = []

    modern_known = HTTPChannel.modern_known

    def open(self):
        if self.proto is None:
            self.proto = _ChildProtocol(self)
            self.process = self.reactor.spawnProcess(
                self.proto, self.argv[0], self.argv, env=self.env, path=self.cwd,
                uid=self.uid, gid=self.gid, childFDs={0: "w", 1: "r", 2: "r"})
        return defer.succeed(None)

    @property
    def pid(self):
        return self.process.pid if self.process is not None else None

    def send(self, msg, pending, modern=None, probe=False) -> defer.Deferred:
        if self.process is None or self.status is not None:
            return defer.fail(ConnectionError("the MCP server process has exited"))
        self.process.write(wire.dumps(msg) + b"\n")
        return defer.succeed(None)

    def after_handshake(self):
        pass

    def ended(self, reason):
        code = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        self.status = f"signal {sig}" if sig else f"exit status {code}"
        for t in self._kill_timers:
            if t.active():
                t.cancel()
        if self.peer is not None:
            last = self.proto.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] if self.proto else []
            self.peer.connection_lost(f"the MCP server process ended ({self.status})"
                                      + (f": {last[0][:300]}" if last else ""))
        if self.on_exit is not None:
            self.on_exit(self)
        self.exit.callback(self.status)

    def kill(self):
        if self.process is not None and self.status is None:
            try:
                self.process.signalProcess("KILL")
            except ProcessExitedAlready:
                pass  # it ended on its own meanwhile: what kill wanted

    def close(self) -> defer.Deferred:
        """Close its stdin; TERM after 2 s, KILL after 5 s."""
        if self.process is None or self.status is not None:
            return defer.succeed(None)
        d = defer.Deferred()

        def exited(result):
            if not d.called:
                d.callback(None)
            return result

        self.exit.addBoth(exited)
        try:
            self.process.closeStdin()
        except OSError as e:  # its pipe is gone already; the signals below still end it
            log.info("mcp server process: stdin not closed: {e}", e=e)

        def signal(name):
            if self.status is None:
                try:
                    self.process.signalProcess(name)
                except ProcessExitedAlready:
                    # It has exited, but Twisted reports the end only once its stdout and stderr
                    # close, and something it started (a daemon) may hold them: close our ends.
                    self.process.loseConnection()

        self._kill_timers = [self.reactor.callLater(2, signal, "TERM"), self.reactor.callLater(5, signal, "KILL")]
        return d
