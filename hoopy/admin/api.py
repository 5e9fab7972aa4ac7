"""The admin API (JSON over twisted.web) on ``gateway.admin_listen``.

  GET  /health                          200 ok, 503 when the store cannot write; each upstream's reach
  GET  /metrics                         Prometheus text
  GET  /approvals[?state=pending][&prefix=ap-12]   reviewer or auditor token
  GET  /approvals/ID
  POST /approvals/ID/approve            reviewer token; body {"reason": "..."} optional
  POST /approvals/ID/deny
  GET  /sessions[?limit=N]              reviewer or auditor token
  GET  /sessions/ID
  GET  /sessions/ID/events
  POST /mcp/CONNECTION/tools/TOOL/accept reviewer token: accept a changed tool definition (pinning)

Tokens come as ``Authorization: Bearer TOKEN``; a wrong one is an
``auth.failed`` event (protocol ``admin``), summarized in a flood like the
protocols' (hoopy.audit.failures).

Approving is the most powerful act in the system, so the listener is strict
before anything is stored or parsed (``AdminChannel``, ``AdminSite``): a body
larger than MAX_BODY is refused from its Content-Length (chunked bodies are
refused), the request line and headers must arrive within HEADER_TIMEOUT and
the body within BODY_TIMEOUT, at most MAX_CONNECTIONS are open (PER_PEER from
one address), and ``Host`` must be an IP address or ``localhost`` (a DNS name
pointing a browser at the admin port is refused), except over TLS.
"""
from __future__ import annotations

import ipaddress
import json
import re

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.interfaces import IProtocolFactory, ISSLTransport
from twisted.internet.threads import deferToThread
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from hoopy import __version__
from hoopy.admin.caller import ADMIN, peer_text
from hoopy.audit.views import approval_json, session_json  # noqa: F401 (the JSON shapes, shared with the CLI)
from hoopy.audit.store import StoreError, event_json
from hoopy.listening import Listener
from hoopy.policy.approvals import ApprovalError

log = Logger()

MAX_BODY = 64 * 1024
READ_ROLES = {"reviewer", "auditor"}
HEADER_TIMEOUT = 10.0  # seconds for the request line and headers
BODY_TIMEOUT = 30.0  # seconds for the body, once the headers are in
IDLE_TIMEOUT = 30.0  # a kept-alive connection with nothing to say
MAX_CONNECTIONS = 128
PER_PEER = 32
# Ids as hoopy makes them; anything else (a "/", "?", "%", "..") is refused before any lookup.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class AdminResource(Resource):
    isLeaf = True

    def __init__(self, gateway):
        super().__init__()
        self.gateway = gateway

    # --- plumbing -------------------------------------------------------------

    def _json(self, request, status: int, body) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body, default=str).encode() + b"\n"

    def _finish(self, request, status, body):
        if request._disconnected or request.finished:
            return
        request.write(self._json(request, status, body))
        request.finish()

    def _identity(self, request):
        auth = (request.getHeader(b"authorization") or b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        ident = self.gateway.identities.by_token(token.strip())
        if ident is None:  # a guess, or a revoked token: on the record, counted, flood-summarized
            self.gateway.auth_failed(ADMIN, peer_text(request), "", "bearer", "unknown admin token")
        return ident

    def _unauthorized(self, request):
        request.setHeader(b"www-authenticate", b'Bearer realm="hoopy-admin"')
        return self._json(request, 401, {"error": "a valid bearer token is required"})

    def _async(self, request, d):
        def ok(result):
            status, body = result
            self._finish(request, status, body)

        def err(f):
            log.failure("admin API", f)
            self._finish(request, 500, {"error": f.getErrorMessage()})

        d.addCallbacks(ok, err)
        return NOT_DONE_YET

    def _read(self, request, fn):
        """Run a blocking read of the store in a thread."""
        def run():
            reader = self.gateway.store.reader()
            try:
                return fn(reader)
            finally:
                reader.close()

        return self._async(request, deferToThread(run))

    # --- routes -----------------------------------------------------------------

    def render_GET(self, request):
        parts = [p.decode("utf-8", "replace") for p in request.postpath if p]
        if parts == ["health"]:
            return self._health(request)
        if parts == ["metrics"]:
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
            return generate_latest(self.gateway.metrics.registry)
        if not parts or parts[0] not in ("approvals", "sessions"):
            return self._json(request, 404, {"error": "not found"})
        ident = self._identity(request)
        if ident is None:
            return self._unauthorized(request)
        if not READ_ROLES & ident.roles:
            return self._json(request, 403, {"error": f"{ident.name} is neither reviewer nor auditor"})
        args = {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
                for k, v in request.args.items() if v}
        if len(parts) >= 2 and not _ID.match(parts[1]):
            return self._json(request, 400, {"error": f"not an id: {parts[1][:80]!r}"})
        if parts[0] == "approvals":
            if len(parts) == 1:
                state = args.get("state")
                prefix = args.get("prefix")
                if prefix is not None:
                    if not _ID.match(prefix):
                        return self._json(request, 400, {"error": "prefix: not the beginning of an id"})

                    def matching(r):
                        rows = [r.approval(i) for i in r.ids_with_prefix("approvals", prefix, limit=21)]
                        return 200, [approval_json(a) for a in rows if a and (state is None or a["state"] == state)]
                    return self._read(request, matching)
                return self._read(request, lambda r: (200, [approval_json(a) for a in r.approvals(state)]))
            if len(parts) == 2:
                def one(r, aid=parts[1]):
                    row = r.approval(aid)
                    return (200, approval_json(row)) if row else (404, {"error": f"no approval {aid}"})
                return self._read(request, one)
        if parts[0] == "sessions":
            if len(parts) == 1:
                try:
                    limit = int(args.get("limit", "200"))
                except ValueError:
                    return self._json(request, 400, {"error": "limit must be a number"})
                return self._read(request, lambda r: (200, [session_json(s) for s in r.sessions(limit=limit)]))
            sid = parts[1]
            if len(parts) == 2:
                def sess(r):
                    row = r.session(sid)
                    return (200, session_json(row)) if row else (404, {"error": f"no session {sid}"})
                return self._read(request, sess)
            if len(parts) == 3 and parts[2] == "events":
                def events(r):
                    if r.session(sid) is None:
                        return 404, {"error": f"no session {sid}"}
                    return 200, [event_json(e) for e in r.events(session=sid)]
                return self._read(request, events)
        return self._json(request, 404, {"error": "not found"})

    def render_POST(self, request):
        parts = [p.decode("utf-8", "replace") for p in request.postpath if p]
        if len(parts) == 5 and parts[0] == "mcp" and parts[2] == "tools" and parts[4] == "accept":
            return self._mcp_accept(request, parts[1], parts[3])
        if len(parts) != 3 or parts[0] != "approvals" or parts[2] not in ("approve", "deny"):
            return self._json(request, 404, {"error": "not found"})
        if not _ID.match(parts[1]):
            return self._json(request, 400, {"error": f"not an approval id: {parts[1][:80]!r}"})
        ident = self._identity(request)
        if ident is None:
            return self._unauthorized(request)
        body = request.content.read(MAX_BODY + 1) if request.content else b""
        if len(body) > MAX_BODY:
            return self._json(request, 413, {"error": "body too large"})
        reason = None
        if body.strip():
            try:
                data = json.loads(body)
                reason = data.get("reason") if isinstance(data, dict) else None
            except ValueError:
                return self._json(request, 400, {"error": "the body must be JSON"})
            if reason is not None and not isinstance(reason, str):
                return self._json(request, 400, {"error": "reason must be a string"})
        aid, verb = parts[1], parts[2]
        # Not held here: with a shared store another node may hold it, and
        # decide() takes the cross-node path; otherwise say what it is.
        if self.gateway.approvals.get(aid) is None and not self.gateway.approvals.shared:
            return self._read(request, lambda r: (
                (409, {"error": f"approval {aid} is already {row['state']}", "state": row["state"]})
                if (row := r.approval(aid)) else (404, {"error": f"no pending approval {aid}"})))
        d = self.gateway.approvals.decide(aid, ident.name, verb == "approve", reason)

        def done(a):
            log.info("approval {id} {state} by {who}", id=a.id, state=a.state, who=ident.name)
            return 200, a.summary()

        def refused(f):
            if f.check(ApprovalError):
                code = {"not_found": 404, "not_pending": 409}.get(f.value.code, 403)
                return code, {"error": str(f.value), "code": f.value.code}
            f.trap(StoreError)
            return 503, {"error": f"not recorded, nothing changed: {f.getErrorMessage()}"}

        return self._async(request, d.addCallbacks(done, refused))

    def _mcp_accept(self, request, connection: str, tool: str):
        """POST /mcp/CONNECTION/tools/TOOL/accept: a reviewer accepts a changed tool definition."""
        ident = self._identity(request)
        if ident is None:
            return self._unauthorized(request)
        if not ident.is_reviewer:
            return self._json(request, 403, {"error": f"{ident.name} is not a reviewer"})
        try:
            svc = self.gateway.getServiceNamed(f"connection:{connection}")
        except KeyError:
            svc = None
        if svc is None or not hasattr(svc, "accept"):
            return self._json(request, 404, {"error": f"no mcp connection {connection}"})
        d = svc.accept(tool, ident.name)
        if d is None:
            return self._json(request, 409, {"error": f"tool {tool} has no changed definition waiting"})

        def refused(f):
            f.trap(StoreError)
            return 503, {"error": f"not recorded, nothing changed: {f.getErrorMessage()}"}

        return self._async(request, d.addCallbacks(lambda out: (200, out), refused))

    def _health(self, request):
        store_ok = self.gateway.store.healthy
        body = {
            "status": "ok" if store_ok else "degraded",
            "store": "ok" if store_ok else "failing",
            "gateway": self.gateway.name_,
            "version": __version__,
            "store_writable": store_ok,
            "sessions_open": len(self.gateway.sessions),
            "approvals_pending": len(self.gateway.approvals.pending),
            # Reported, not judged: an upstream that is down is not this node's fault, and a load
            # balancer taking every node out for it would help nobody.
            "upstreams": self.gateway.upstreams.snapshot(),
        }
        return self._json(request, 200 if store_ok else 503, body)


class AdminChannel(HTTPChannel):
    """HTTP/1.1 for the admin API, strict before anything is stored: see the module's docstring."""

    maxHeaders = 64
    totalHeadersSize = 16384

    def connectionMade(self):
        super().connectionMade()
        self._rejected = False
        self._deadline = None
        self._arm(HEADER_TIMEOUT, "request line and headers")

    def _arm(self, seconds, what):
        self._disarm()
        self._deadline = self.callLater(seconds, self._too_slow, what)

    def _disarm(self):
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _too_slow(self, what):
        self._deadline = None
        self._refuse(408, f"{what} took too long")

    def _refuse(self, status: int, message: str):
        """Answer and close, and read nothing more of this connection."""
        if self._rejected:
            return
        self._rejected = True
        self._disarm()
        body = json.dumps({"error": message}).encode() + b"\n"
        reason = {400: b"Bad Request", 408: b"Request Timeout", 411: b"Length Required",
                  413: b"Content Too Large", 421: b"Misdirected Request"}.get(status, b"Error")
        # Every transport here (TCP, TLS, the tests' StringTransport) has ``disconnecting``;
        # ITransport does not declare it.
        if self.transport is not None and not getattr(self.transport, "disconnecting", False):
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                                 % (status, reason, len(body), body))
            self.transport.loseConnection()

    def dataReceived(self, data):
        if self._rejected:
            return
        super().dataReceived(data)

    def rawDataReceived(self, data):
        if self._rejected:
            return
        super().rawDataReceived(data)

    def lineReceived(self, line):
        if self._rejected:
            return
        return super().lineReceived(line)

    def _host_ok(self, req) -> bool:
        if ISSLTransport.providedBy(self.transport):
            return True  # a name the certificate verifies: DNS rebinding cannot present it
        hosts = req.requestHeaders.getRawHeaders(b"host") or []
        if len(hosts) != 1:
            return False
        host = hosts[0].decode("latin-1").strip()
        if host.startswith("["):
            host = host[1:host.find("]")] if "]" in host else ""
        else:
            host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        if host.lower() == "localhost":
            return True
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return False

    def allHeadersReceived(self):
        req = self.requests[-1]
        if not self._host_ok(req):
            return self._refuse(421, "Host must be this gateway's IP address (or localhost)")
        if self.length is None and self._transferDecoder is not None:
            return self._refuse(411, "a body needs a Content-Length")
        if self.length is not None and self.length > MAX_BODY:
            return self._refuse(413, f"a body is at most {MAX_BODY} bytes")
        super().allHeadersReceived()
        if self.length:
            self._arm(BODY_TIMEOUT, "the body")
        else:
            self._disarm()

    def allContentReceived(self):
        self._disarm()
        if self._rejected:
            return  # answered already: the request is never processed
        super().allContentReceived()

    def requestDone(self, request):
        super().requestDone(request)
        if self.persistent and not self._rejected:
            self._arm(HEADER_TIMEOUT, "request line and headers")

    def connectionLost(self, reason):
        self._disarm()
        self.site._lost(self)
        super().connectionLost(reason)


class AdminSite(Site):
    # HTTP/1.1 channels, not twisted's HTTP/2-negotiating wrapper, which its stubs name as the
    # only type: any HTTPChannel works here at run time (as hoopy.http.site.GatewaySite).
    protocol = AdminChannel  # type: ignore[assignment]

    def __init__(self, resource, **kw):
        super().__init__(resource, timeout=IDLE_TIMEOUT, **kw)
        self.open = 0
        self.by_peer: dict = {}

    def admits(self, addr) -> bool:
        host = getattr(addr, "host", None)
        if self.open >= MAX_CONNECTIONS or self.by_peer.get(host, 0) >= PER_PEER:
            log.warn("admin API: connection from {host} refused: too many open", host=host)
            return False
        return True

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        if not self.admits(addr):
            return None
        p = super().buildProtocol(addr)
        p._host = host
        self.open += 1
        self.by_peer[host] = self.by_peer.get(host, 0) + 1
        return p

    def _lost(self, channel):
        host = getattr(channel, "_host", None)
        self.open -= 1
        n = self.by_peer.get(host, 1) - 1
        if n:
            self.by_peer[host] = n
        else:
            self.by_peer.pop(host, None)


class _CappedTLSFactory(TLSMemoryBIOFactory):
    """TLS around the admin site; a connection over the site's caps is closed before TLS starts."""

    def buildProtocol(self, addr):
        if not self.wrappedFactory.admits(addr):
            return None
        return super().buildProtocol(addr)


def make_service(gateway, listen: str):
    from hoopy.admin.console import mount

    site = AdminSite(mount(AdminResource(gateway), gateway), reactor=gateway.reactor)  # /ui/: the web console
    site.displayTracebacks = False
    site.noisy = False
    factory: IProtocolFactory = site
    gw = gateway.config.gateway
    if gw.admin_tls_cert is not None:
        from twisted.internet import ssl

        cert = ssl.PrivateCertificate.loadPEM(gw.admin_tls_cert.value + "\n" + gw.admin_tls_key.value)
        factory = _CappedTLSFactory(cert.options(), False, site)
    return Listener(gateway, "admin API", listen, factory, key="gateway.admin_listen")
