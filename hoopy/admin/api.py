"""The admin API (JSON over twisted.web) on ``gateway.admin_listen``.

  GET  /health                          200 ok, 503 when the store cannot write
  GET  /metrics                         Prometheus text
  GET  /approvals[?state=pending]       reviewer or auditor token
  GET  /approvals/ID
  POST /approvals/ID/approve            reviewer token; body {"reason": "..."} optional
  POST /approvals/ID/deny
  GET  /sessions[?limit=N]              reviewer or auditor token
  GET  /sessions/ID
  GET  /sessions/ID/events
  POST /mcp/CONNECTION/tools/TOOL/accept reviewer token: accept a changed tool definition (pinning)

Tokens come as ``Authorization: Bearer TOKEN``.
"""
from __future__ import annotations

import json

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.application import strports
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from hoopy import __version__
from hoopy.audit.events import iso
from hoopy.audit.store import StoreError, event_json
from hoopy.policy.approvals import ApprovalError

log = Logger()

MAX_BODY = 64 * 1024
READ_ROLES = {"reviewer", "auditor"}


def approval_json(row: dict) -> dict:
    out = {k: v for k, v in row.items() if not k.endswith("_us")}
    for k in ("created_us", "expires_us", "decided_us", "used_us"):
        out[k[:-3]] = iso(row.get(k))
    if row.get("mode") == "retry" and row.get("decided_us") and row.get("state") == "approved":
        out["usable_until"] = iso(row["decided_us"] + int(row.get("ttl_s") or 0) * 1_000_000)
    return out


def session_json(row: dict) -> dict:
    out = {k: v for k, v in row.items() if not k.endswith("_us")}
    out["start"] = iso(row.get("started_us"))
    out["end"] = iso(row.get("ended_us"))
    return out


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
        return self.gateway.identities.by_token(token.strip())

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
        args = {k.decode(): v[0].decode() for k, v in request.args.items() if v}
        if parts[0] == "approvals":
            if len(parts) == 1:
                state = args.get("state")
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
            "sessions_open": len(self.gateway.sessions),
            "approvals_pending": len(self.gateway.approvals.pending),
        }
        return self._json(request, 200 if store_ok else 503, body)


def make_service(gateway, listen: str):
    from hoopy.admin.console import mount

    site = Site(mount(AdminResource(gateway), gateway))  # /ui/: the web console
    site.displayTracebacks = False
    site.noisy = False
    factory = site
    gw = gateway.config.gateway
    if gw.admin_tls_cert is not None:
        from twisted.internet import ssl
        from twisted.protocols.tls import TLSMemoryBIOFactory

        cert = ssl.PrivateCertificate.loadPEM(gw.admin_tls_cert.value + "\n" + gw.admin_tls_key.value)
        factory = TLSMemoryBIOFactory(cert.options(), False, site)
    return strports.service(listen, factory, reactor=gateway.reactor)
