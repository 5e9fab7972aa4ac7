"""What the gateway knows of each connection's upstream: reachable or not, the last error, when.

Learned from real connection attempts (each protocol reports its sessions' upstream connects:
``succeeded``, ``failed``) and from a bounded periodic probe for the connections nobody used
lately: a TCP connect (a TLS handshake, verified as the gateway verifies, for https; the SSH
banner for ssh), never a login, so a probe leaves nothing in the upstream's records beyond a
connection. At most PARALLEL probes run at once, each connection at most once per INTERVAL,
each bounded by TIMEOUT: no storms, nothing blocks the reactor.

``/health`` shows ``snapshot()``; ``hoopy_upstream_up{connection}`` is 1 or 0. A failure is a
warning log line naming the connection (repeated at most once a minute while it lasts).
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()

INTERVAL = 60.0  # seconds between two checks of one upstream (a real attempt counts as one)
TICK = 5.0  # how often the prober looks for a due upstream
FIRST = 1.0  # the first look, soon after start: a wrong upstream is in the log at once
TIMEOUT = 10.0  # one probe, connect and handshake
PARALLEL = 4  # probes at once, gateway-wide
REPEAT = 60.0  # seconds before the same failure is logged again


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@attrs.define
class Reach:
    connection: str
    kind: str  # the connection's type
    target: str | None  # what is probed ("host:port", a URL), None: nothing to probe (stdio MCP)
    reachable: bool | None = None  # None: not checked yet
    last_error: str | None = None
    last_error_at: float | None = None
    checked_at: float | None = None  # wall clock
    checked_mono: float | None = None  # reactor clock, for scheduling
    via: str | None = None  # "session" or "probe"
    probing: bool = False
    logged_at: float | None = None  # reactor clock of the last warning
    logged_error: str | None = None

    def json(self) -> dict:
        out = {"type": self.kind, "reachable": self.reachable, "last_error": self.last_error,
               "last_error_at": _iso(self.last_error_at), "checked_at": _iso(self.checked_at),
               "checked_by": self.via}
        if self.target is None:
            out["note"] = "a local command: nothing to reach"
        return out


class _Probe(Protocol):
    """Connected (and, over TLS, handshaken; for ssh, the server's banner read): done."""

    def __init__(self, done: defer.Deferred, tls: bool, banner: bytes | None):
        self.done = done
        self.tls = tls
        self.banner = banner
        self.buf = b""

    def connectionMade(self):
        if not self.tls and self.banner is None:
            self._ok()

    def handshakeCompleted(self):
        if self.banner is None:
            self._ok()

    def dataReceived(self, data):
        if self.banner is None or self.done.called:
            return
        self.buf += data
        if len(self.buf) >= len(self.banner) or b"\n" in self.buf:
            if self.buf.startswith(self.banner):
                self._ok()
            else:
                self._fail(f"not an SSH server: it said {self.buf[:40]!r}")

    def _ok(self):
        if not self.done.called:
            self.done.callback(None)
        self.transport.loseConnection()

    def _fail(self, why):
        if not self.done.called:
            self.done.errback(ConnectionError(why))
        self.transport.abortConnection()

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.errback(reason)


implementer(IHandshakeListener)(_Probe)


class _ProbeFactory(Factory):
    noisy = False

    def __init__(self, done, tls, banner):
        self.args = (done, tls, banner)

    def buildProtocol(self, addr):
        return _Probe(*self.args)


def _http_endpoint(reactor, url: str, ca=None):
    """A client endpoint for an http(s) URL, TLS verified as the gateway verifies it."""
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    u = urlsplit(url)
    tls = u.scheme == "https"
    port = u.port or (443 if tls else 80)
    host = u.hostname or ""
    ep: Any = HostnameEndpoint(reactor, host, port, timeout=TIMEOUT)
    if tls:
        from hoopy.http.tls import upstream_tls_policy as _tls_policy

        policy = _tls_policy(_CA(ca))
        ep = wrapClientTLS(policy.creatorForNetloc(host.encode("idna"), port), ep)
    return ep, tls, f"{host}:{port}"


@attrs.frozen
class _CA:
    upstream_ca: object = None


def probe_target(reactor, connection):
    """(endpoint, tls, banner, label) the probe connects to, or None (nothing to reach)."""
    from twisted.internet.endpoints import clientFromString

    s = connection.settings
    if connection.type == "postgres":
        return clientFromString(reactor, s.upstream), False, None, s.upstream
    if connection.type == "ssh":
        return clientFromString(reactor, s.upstream), False, b"SSH-", s.upstream
    if connection.type == "http":
        ep, tls, label = _http_endpoint(reactor, s.upstream, s.upstream_ca)
        return ep, tls, None, s.upstream
    if connection.type == "mcp" and getattr(s, "upstream", None):
        ep, tls, label = _http_endpoint(reactor, s.upstream)
        return ep, tls, None, s.upstream
    return None


def probe(reactor, target) -> defer.Deferred:
    """Fires None when the upstream answered, fails with why not (within TIMEOUT)."""
    ep, tls, banner, _ = target
    done: defer.Deferred = defer.Deferred()
    d = ep.connect(_ProbeFactory(done, tls, banner))

    def connected(p):
        return None

    def refused(f):
        if not done.called:
            done.errback(f)

    d.addCallbacks(connected, refused)

    def too_slow():
        if not done.called:
            d.cancel()
            if not done.called:
                done.errback(TimeoutError(f"no answer within {TIMEOUT:g}s"))

    timer = reactor.callLater(TIMEOUT, too_slow)

    def stop(result):
        if timer.active():
            timer.cancel()
        return result

    return done.addBoth(stop)


def describe(f) -> str:
    """A short reason from a Failure or exception (no traceback, no class paths)."""
    e = getattr(f, "value", f)
    msg = getattr(e, "message", None) or str(e) or type(e).__name__
    if hasattr(e, "reason") and not isinstance(e, str):  # twisted's SSL errors
        msg = str(e)
    return " ".join(msg.split())[:300]


class Upstreams:
    def __init__(self, gateway):
        self.gateway = gateway
        self.reactor = gateway.reactor
        self.gauge = gateway.metrics.upstream_up
        self.state: dict[str, Reach] = {}
        self.targets: dict = {}
        for conn in gateway.config.connections.values():
            try:
                target = probe_target(self.reactor, conn)
            except Exception as e:  # a setting the gateway itself will refuse at start: say so here too
                log.warn("{c}: its upstream cannot be probed: {e}", c=conn.name, e=e)
                target = None
            self.targets[conn.name] = target
            label = target[3] if target is not None else None
            self.state[conn.name] = Reach(conn.name, conn.type, label)
        self._timer = None
        self._running = 0

    # --- what the protocols report ----------------------------------------------------------
    def succeeded(self, connection, via: str = "session"):
        r = self.state.get(getattr(connection, "name", connection))
        if r is None:
            return
        was = r.reachable
        self._checked(r, via)
        r.reachable = True
        self.gauge.labels(r.connection).set(1)
        if was is False:
            log.info("{c}: upstream {t} reachable again", c=r.connection, t=r.target)
            r.logged_at = r.logged_error = None

    # A session that reached the upstream but could not use it (a refused login) is reachable.
    reached = succeeded

    def failed(self, connection, error: str, reachable: bool = False, via: str = "session"):
        r = self.state.get(getattr(connection, "name", connection))
        if r is None:
            return
        self._checked(r, via)
        r.reachable = reachable
        r.last_error, r.last_error_at = error, r.checked_at
        self.gauge.labels(r.connection).set(1 if reachable else 0)
        now = self.reactor.seconds()
        if r.logged_error != error or r.logged_at is None or now - r.logged_at >= REPEAT:
            r.logged_at, r.logged_error = now, error
            log.warn("{c}: upstream {t} {what}: {e}", c=r.connection, t=r.target or "",
                     what="refused the gateway" if reachable else "unreachable", e=error)

    def _checked(self, r: Reach, via: str):
        r.checked_at = time.time()
        r.checked_mono = self.reactor.seconds()
        r.via = via

    def snapshot(self) -> dict:
        return {name: r.json() for name, r in self.state.items()}

    # --- the probe ---------------------------------------------------------------------------------
    def start(self):
        self._timer = self.reactor.callLater(FIRST, self._tick)

    def stop(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self):
        self._timer = self.reactor.callLater(TICK, self._tick)
        now = self.reactor.seconds()
        for name, r in self.state.items():
            if self._running >= PARALLEL:
                break
            target = self.targets.get(name)
            if target is None or r.probing:
                continue
            if r.checked_mono is not None and now - r.checked_mono < INTERVAL:
                continue
            self._probe(r, target)

    def _probe(self, r: Reach, target):
        r.probing = True
        self._running += 1

        def done(result):
            r.probing = False
            self._running -= 1
            if result is None:
                self.succeeded(r.connection, via="probe")
            else:
                self.failed(r.connection, describe(result), via="probe")

        try:
            d = probe(self.reactor, target)
        except Exception as e:  # fail closed: an endpoint that cannot even be tried is down
            done(e)
            return
        d.addBoth(done)
