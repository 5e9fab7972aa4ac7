"""The web console, at ``/ui/`` on the admin listener: inbox, sessions, replay, audit.

Reviewers decide held operations here as with ``hoopy approve`` (the same
approval service, the same rules: never their own request, nor one their tool
call caused); auditors read everything and decide nothing. Pages are rendered
on the server (``pages``) from the state store, read in a thread; the only
scripts are static files of this package (``static/``): the inbox's polling
and the terminal player, asciinema-player, shipped here (never fetched from
elsewhere at run time).

  GET  /ui/                      -> the inbox (or sign-in)
  GET  /ui/signin, POST /ui/signin, POST /ui/signout
  GET  /ui/inbox                 pending approvals, newest first
  GET  /ui/inbox/cards           the same cards alone (what the page polls)
  GET  /ui/approvals/ID          one approval (notifications link here)
  POST /ui/approvals/ID/approve, /ui/approvals/ID/deny   (reviewers; field reason)
  GET  /ui/sessions[?identity=&connection=&protocol=&since=&until=&outcome=]
  GET  /ui/sessions/ID, /ui/sessions/ID/replay, /ui/sessions/ID/cast
  GET  /ui/audit, POST /ui/audit/evidence (since, until: dates)
  GET  /ui/static/...
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from urllib.parse import quote

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.filepath import FilePath
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.template import flattenString

from hoopy.admin.caller import ADMIN, peer_text
from hoopy.admin.console import auth, pages
from hoopy.audit.events import parse_time
from hoopy.audit.store import StoreError, event_json
from hoopy.policy.approvals import ApprovalError, row_requesters

log = Logger()

STATIC = FilePath(__file__).sibling("static")
TYPES = {".js": b"text/javascript; charset=utf-8", ".css": b"text/css; charset=utf-8",
         ".png": b"image/png", ".svg": b"image/svg+xml"}
DONE = {"approved": "Approved.", "denied": "Denied."}
ERRORS = {"not_found": "No such pending approval.", "not_pending": "It was already decided or has expired.",
          "not_reviewer": "Only a reviewer decides.", "self_approval":
          "You cannot decide a request you made (or that your tool call caused).",
          "store": "Not recorded, nothing changed: the audit store cannot write.", "csrf":
          "The form had expired: nothing changed. Try again."}
MAX_SESSIONS_LISTED = 200


def _static_files() -> dict[str, FilePath]:
    """Every file under static/, by its path: nothing else is ever served."""
    out = {}
    for fp in STATIC.walk():
        if fp.isfile():
            out["/".join(fp.segmentsFrom(STATIC))] = fp
    return out


class Console(Resource):
    isLeaf = True

    def __init__(self, gateway):
        super().__init__()
        self.gateway = gateway
        self.sessions = auth.Sessions()
        self.static = _static_files()

    # --- plumbing ---------------------------------------------------------------------

    def _thread(self, fn, *args):
        reactor = self.gateway.reactor
        return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args)

    def _reading(self, fn):
        """fn(reader) in a thread."""
        def run():
            reader = self.gateway.store.reader()
            try:
                return fn(reader)
            finally:
                reader.close()

        return self._thread(run)

    def _page(self, request, title, body, user, active=None, csp=auth.CSP, head=(), status=200):
        auth.security_headers(request, csp)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        d = flattenString(request, pages.Page(title, body, user, active, head))

        def write(html):
            if not request._disconnected and not request.finished:
                request.write(html if html.startswith(b"<!DOCTYPE") else b"<!DOCTYPE html>\n" + html)
                request.finish()

        d.addCallbacks(write, lambda f: self._error(request, f))
        return NOT_DONE_YET

    def _error(self, request, failure):
        log.failure("console", failure)
        if request._disconnected or request.finished:
            return
        if not request.startedWriting:
            request.setResponseCode(503 if failure.check(StoreError) else 500)
            auth.security_headers(request)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(b"the state store cannot be read\n" if failure.check(StoreError)
                          else b"internal error\n")
        request.finish()

    def _async(self, request, d):
        d.addErrback(lambda f: self._error(request, f))
        return NOT_DONE_YET

    def _redirect(self, request, where: str) -> bytes:
        auth.security_headers(request)
        request.setResponseCode(303)
        request.setHeader(b"location", where.encode())
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b""

    def _plain(self, request, status: int, message: str) -> bytes:
        auth.security_headers(request)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return message.encode() + b"\n"

    # --- routes -----------------------------------------------------------------------

    def render_HEAD(self, request):
        return self.render_GET(request)

    def render_GET(self, request):
        parts = [p.decode("utf-8", "replace") for p in request.postpath[1:]]
        if parts and parts[-1] == "":
            parts = parts[:-1]
        if parts[:1] == ["static"]:
            return self._static(request, "/".join(parts[1:]))
        if parts == ["signin"]:
            return self._signin_form(request)
        user = self.sessions.get(request)
        if user is None:
            if parts[-1:] in (["cards"], ["cast"]):
                return self._plain(request, 401, "signed out")
            return self._redirect(request, "/ui/signin")
        args = {k.decode(): v[0].decode("utf-8", "replace") for k, v in request.args.items() if v}
        if not parts:
            return self._redirect(request, "/ui/inbox")
        if parts == ["inbox"]:
            return self._inbox(request, user, args)
        if parts == ["inbox", "cards"]:
            return self._cards(request, user)
        if len(parts) == 2 and parts[0] == "approvals":
            return self._approval(request, user, parts[1], args)
        if parts == ["sessions"]:
            return self._session_list(request, user, args)
        if len(parts) == 2 and parts[0] == "sessions":
            return self._session(request, user, parts[1])
        if len(parts) == 3 and parts[0] == "sessions" and parts[2] == "replay":
            return self._replay(request, user, parts[1])
        if len(parts) == 3 and parts[0] == "sessions" and parts[2] == "cast":
            return self._cast(request, parts[1])
        if parts == ["audit"]:
            return self._audit(request, user)
        return self._plain(request, 404, "not found")

    def render_POST(self, request):
        parts = [p.decode("utf-8", "replace") for p in request.postpath[1:]]
        if auth.cross_origin(request):
            return self._plain(request, 403, "refused: a form from another site")
        form = {k.decode(): v[0].decode("utf-8", "replace") for k, v in request.args.items() if v}
        if parts == ["signin"]:
            return self._signin(request, form)
        user = self.sessions.get(request)
        if user is None:
            return self._plain(request, 403, "signed out: sign in again")
        if not auth.same(form.get("csrf"), user.csrf):
            if len(parts) == 3 and parts[0] == "approvals":
                return self._redirect(request, f"/ui/approvals/{quote(parts[1])}?error=csrf")
            return self._plain(request, 403, "refused: the form's CSRF token is missing or wrong")
        if parts == ["signout"]:
            self.sessions.end(user)
            auth.set_cookie(request, auth.COOKIE, "", max_age=0)
            return self._redirect(request, "/ui/signin")
        if len(parts) == 3 and parts[0] == "approvals" and parts[2] in ("approve", "deny"):
            return self._decide(request, user, parts[1], parts[2] == "approve", form.get("reason"))
        if parts == ["audit", "evidence"]:
            return self._evidence(request, form)
        return self._plain(request, 404, "not found")

    # --- sign in ------------------------------------------------------------------------

    def _signin_form(self, request, error=None, status=200):
        if error is None and self.sessions.get(request) is not None:
            return self._redirect(request, "/ui/inbox")
        csrf = auth.secrets.token_urlsafe(32)
        auth.set_cookie(request, auth.PRE_COOKIE, csrf, max_age=3600)
        return self._page(request, "Sign in", pages.SignIn(csrf, error), None, status=status)

    def _signin(self, request, form):
        peer = getattr(request.getClientAddress(), "host", "unknown")
        if not auth.same(request.getCookie(auth.PRE_COOKIE), form.get("csrf", "")):
            return self._signin_form(request, "The sign-in form had expired. Try again.", 403)
        if self.sessions.too_many_failures(peer):
            return self._signin_form(request, "Too many failed sign-ins from your address: wait a minute.", 429)
        token = form.get("token", "").strip()
        ident = self.gateway.identities.by_token(token) if token else None
        if ident is None or not {"reviewer", "auditor"} & set(ident.roles):
            self.sessions.failed(peer)
            who = ident.name if ident is not None else ""
            if ident is None:  # a wrong token: as the admin API's, counted and flood-summarized
                d = self.gateway.auth_failed(ADMIN, peer_text(request), "", "console token", "bad credentials")
            else:
                d = self.gateway.record("auth.failed", "refused", peer=peer, identity=ident.name,
                                        listener="console", method="token", reason="not a reviewer or auditor")
            d.addErrback(lambda f: log.error("console sign-in failure not recorded: {e}", e=f.getErrorMessage()))
            msg = (f"{who} is neither a reviewer nor an auditor." if ident is not None
                   else "That token is not valid.")
            # Answered once the failure is on the record.
            return self._async(request, d.addCallback(lambda _: self._signin_form(request, msg, 403)))
        s = self.sessions.create(ident)
        auth.set_cookie(request, auth.COOKIE, s.id)
        auth.set_cookie(request, auth.PRE_COOKIE, "", max_age=0)
        log.info("console: {who} signed in from {peer}", who=ident.name, peer=peer)
        return self._redirect(request, "/ui/inbox")

    # --- approvals ------------------------------------------------------------------------

    def _pending(self, reader):
        rows = list(reversed(reader.approvals("pending")))  # newest first
        now = time.time_ns() // 1000
        rows = [r for r in rows if r["expires_us"] is None or r["expires_us"] > now]
        sessions = {}
        for r in rows:
            if r["session"] and r["session"] not in sessions:
                sessions[r["session"]] = reader.session(r["session"])
        for r in rows:
            r["_requesters"] = row_requesters(r)
        return rows, sessions

    def _inbox(self, request, user, args):
        flash = DONE.get(args.get("done")) or ERRORS.get(args.get("error"))
        return self._async(request, self._reading(self._pending).addCallback(
            lambda res: self._page(request, "Inbox", pages.Inbox(res[0], res[1], user, flash), user, "inbox")))

    def _cards(self, request, user):
        def render(res):
            auth.security_headers(request)
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            return flattenString(request, pages.cards(res[0], res[1], user, time.time_ns() // 1000))

        def write(html):
            if not request._disconnected:
                request.write(html)
                request.finish()

        return self._async(request, self._reading(self._pending).addCallback(render).addCallback(write))

    def _approval(self, request, user, aid, args):
        flash = DONE.get(args.get("done")) or ERRORS.get(args.get("error"))

        def read(reader):
            row = reader.approval(aid)
            if row is None:
                return None, None
            row["_requesters"] = row_requesters(row)
            return row, reader.session(row["session"]) if row["session"] else None

        def show(res):
            row, session = res
            if row is None:
                return self._page(request, "Not found", pages.Inbox([], {}, user, f"No approval {aid}."), user,
                                  status=404)
            return self._page(request, f"Approval {aid}", pages.ApprovalPage(row, session, user, flash), user,
                              "inbox")

        return self._async(request, self._reading(read).addCallback(show))

    def _decide(self, request, user, aid, approve, reason):
        back = f"/ui/approvals/{quote(aid)}"
        if not user.may_decide:
            return self._plain(request, 403, "refused: an auditor reads, never decides")
        reason = (reason or "").strip()[:2000] or None
        d = self.gateway.approvals.decide(aid, user.identity, approve, reason)

        def done(a):
            log.info("approval {id} {state} by {who} (console)", id=aid, state=a.state, who=user.identity)
            self._finish_redirect(request, f"{back}?done={a.state}")

        def refused(f):
            code = f.value.code if f.check(ApprovalError) else "store" if f.check(StoreError) else None
            if code is None:
                return f
            self._finish_redirect(request, f"{back}?error={code}")

        return self._async(request, d.addCallbacks(done, refused))

    def _finish_redirect(self, request, where):
        if not request._disconnected and not request.finished:
            self._redirect(request, where)
            request.finish()

    # --- sessions -------------------------------------------------------------------------

    def _session_list(self, request, user, args):
        f = {k: args.get(k, "").strip() for k in ("identity", "connection", "protocol", "since", "until",
                                                   "outcome")}
        try:
            since = parse_time(f["since"]) if f["since"] else None
            until = parse_time(f["until"]) + 86_400_000_000 - 1 if f["until"] and len(f["until"]) == 10 else (
                parse_time(f["until"]) if f["until"] else None)
        except ValueError:
            since = until = None
            f["since"] = f["until"] = ""

        def read(reader):
            rows = reader.sessions(since_us=since, until_us=until, limit=5000)
            rows = [s for s in rows if all(not f[k] or (s.get(k) or "") == f[k]
                                           for k in ("identity", "connection", "protocol"))]
            if f["outcome"] == "open":
                rows = [s for s in rows if not s["ended_us"]]
            counts = reader.session_counts([s["id"] for s in rows[:2000]])
            if f["outcome"] in ("refused", "held", "masked"):
                rows = [s for s in rows if counts.get(s["id"], {}).get(f["outcome"])]
            return rows[:MAX_SESSIONS_LISTED], counts

        protocols = sorted({c.type for c in self.gateway.config.connections.values()})
        return self._async(request, self._reading(read).addCallback(
            lambda res: self._page(request, "Sessions", pages.SessionList(res[0], res[1], f, protocols), user,
                                   "sessions")))

    def _recording(self, reader, sid):
        """The session's sealed recording (name, sha256), or the open one's name, or None."""
        sealed = None
        events = []
        for e in reader.events(session=sid):
            ev = event_json(e)
            events.append(ev)
            if ev["kind"] == "recording.sealed":
                sealed = ev["data"]
        name = sealed.get("path") if sealed else f"{sid}.cast"
        if not name or "/" in name or name.startswith("."):
            return None, None, events
        path = self.gateway.recordings / name
        return (path if path.is_file() else None), (sealed or {}).get("sha256"), events

    def _session(self, request, user, sid):
        def read(reader):
            row = reader.session(sid)
            if row is None:
                return None, None, None
            path, _, events = self._recording(reader, sid)
            return row, events, path is not None

        def show(res):
            row, events, cast = res
            if row is None:
                return self._page(request, "Not found", pages.Inbox([], {}, user, f"No session {sid}."), user,
                                  status=404)
            return self._page(request, f"Session {sid}", pages.SessionPage(row, events, cast), user, "sessions")

        return self._async(request, self._reading(read).addCallback(show))

    def _replay(self, request, user, sid):
        from hoopy.audit.asciicast import sha256_file

        def read(reader):
            if reader.session(sid) is None:
                return None
            path, sha, events = self._recording(reader, sid)
            if path is None:
                return None
            warning = None
            if sha and sha256_file(path)[0] != sha:
                warning = "This recording was changed after it was sealed: what plays is not what was recorded."
            return markers(path, events), warning

        def show(res):
            if res is None:
                return self._page(request, "Not found", pages.Inbox([], {}, user, f"No recording of {sid}."),
                                  user, status=404)
            head = (pages.tags.link(rel="stylesheet", href="/ui/static/vendor/asciinema-player/asciinema-player.css"),
                    pages.tags.script("", src="/ui/static/vendor/asciinema-player/asciinema-player.min.js"),
                    pages.tags.script("", src="/ui/static/replay.js"))
            return self._page(request, f"Replay {sid}", pages.ReplayPage(sid, res[0], res[1]), user, "sessions",
                              csp=auth.CSP_WASM, head=head)

        return self._async(request, self._reading(read).addCallback(show))

    def _cast(self, request, sid):
        def read(reader):
            if reader.session(sid) is None:
                return None
            path = self._recording(reader, sid)[0]
            return path.read_bytes() if path is not None else None

        def send(data):
            if data is None:
                return self._finish_plain(request, 404, "no recording")
            auth.security_headers(request)
            request.setHeader(b"content-type", b"application/x-asciicast")
            request.setHeader(b"content-disposition", b"inline")
            request.write(data)
            request.finish()

        return self._async(request, self._reading(read).addCallback(send))

    def _finish_plain(self, request, status, message):
        if not request._disconnected and not request.finished:
            request.write(self._plain(request, status, message))
            request.finish()

    # --- audit ----------------------------------------------------------------------------

    def _audit(self, request, user):
        from hoopy.audit.verify import verify

        return self._async(request, self._reading(lambda r: verify(r, self.gateway.recordings)).addCallback(
            lambda result: self._page(request, "Audit", pages.AuditPage(result, user.csrf), user, "audit")))

    def _evidence(self, request, form):
        from hoopy.audit.evidence import export

        try:
            since = parse_time(form["since"]) if form.get("since") else None
            until = parse_time(form["until"]) if form.get("until") else None
        except ValueError:
            return self._plain(request, 400, "since and until are dates (YYYY-MM-DD) or RFC 3339 times")
        if until is not None and len(form["until"]) == 10:
            until += 86_400_000_000 - 1  # the whole last day
        fd, name = tempfile.mkstemp(prefix="hoopy-evidence-", suffix=".tar.gz")
        os.close(fd)

        def make(reader):
            from pathlib import Path

            export(self.gateway.config, reader, Path(name), since, until)
            return open(name, "rb")

        def send(f):
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            auth.security_headers(request)
            request.setHeader(b"content-type", b"application/gzip")
            request.setHeader(b"content-disposition", f'attachment; filename="hoopy-evidence-{stamp}.tar.gz"'.encode())
            request.setHeader(b"content-length", str(os.fstat(f.fileno()).st_size).encode())
            d = FileSender().beginFileTransfer(f, request)

            def done(_):
                f.close()
                if not request.finished and not request._disconnected:
                    request.finish()

            return d.addBoth(done)

        def cleanup(r):
            try:
                os.unlink(name)
            except OSError:
                pass
            return r

        return self._async(request, self._reading(make).addCallback(send).addBoth(cleanup))

    # --- static files -----------------------------------------------------------------------

    def _static(self, request, name):
        fp = self.static.get(name)
        if fp is None:
            return self._plain(request, 404, "not found")
        auth.security_headers(request, cache=True)
        request.setHeader(b"content-type", TYPES.get(fp.splitext()[1], b"application/octet-stream"))
        return fp.getContent()


def markers(path, events) -> list[tuple[float, str]]:
    """Where approvals happened in a recording: its own "m" events, and the session's approval
    events (held, decided, used) not already marked, at their time from the recording's start."""
    out, start = [], None
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if i == 0:
                try:
                    start = float(json.loads(line).get("timestamp") or 0) or None
                except (ValueError, AttributeError):
                    start = None
                continue
            if '"m"' not in line:
                continue
            try:
                t, code, label = json.loads(line)
            except ValueError:
                continue
            if code == "m":
                out.append((float(t), str(label)))
    marked = " ".join(label for _, label in out)
    if start is not None:
        for e in events:
            aid = e["data"].get("approval")
            if not aid or aid in marked:
                continue
            label = {"held": "requested", "allowed": "used"}.get(e["outcome"], e["outcome"])
            t = e["time_us"] / 1e6 - start
            if t >= 0:
                out.append((t, f"approval {aid} {label}"))
    return sorted(out)


class AdminRoot(Resource):
    """The admin listener's root: /ui/ is the console, anything else the JSON API."""

    isLeaf = True

    def __init__(self, api, console):
        super().__init__()
        self.api, self.console = api, console

    def render(self, request):
        if request.postpath[:1] == [b"ui"]:
            if len(request.postpath) == 1:  # /ui -> /ui/
                request.setResponseCode(301)
                request.setHeader(b"location", b"/ui/")
                return b""
            return self.console.render(request)
        return self.api.render(request)


def mount(api, gateway) -> Resource:
    return AdminRoot(api, Console(gateway))
