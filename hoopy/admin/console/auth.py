"""Who is signed in to the console, and what every console response carries.

A reviewer or auditor signs in with its token; the console keeps a session in
memory (a random id in a cookie: HttpOnly, SameSite=Strict, Path=/ui/, Secure
over TLS), ended after ``IDLE`` without use or ``LIFETIME`` in all, at sign-out
or at restart. Every form carries the session's CSRF token (the sign-in form, a
token bound to a pre-session cookie); a POST without it, or from another origin
(``Origin``, ``Sec-Fetch-Site``), is refused.
"""
from __future__ import annotations

import hmac
import secrets
import time

import attrs

COOKIE = b"hoopy_console"
PRE_COOKIE = b"hoopy_console_signin"
IDLE = 30 * 60.0
LIFETIME = 12 * 3600.0
MAX_SESSIONS = 10_000
SIGNIN_FAILURES_PER_MINUTE = 10  # per peer address

# Each page may load scripts, styles and images only from here; no inline script or style.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# The replay page's terminal player runs WebAssembly: that, and nothing more.
CSP_WASM = CSP.replace("script-src 'self'", "script-src 'self' 'wasm-unsafe-eval'")


@attrs.define
class ConsoleSession:
    id: str
    identity: str
    roles: frozenset
    csrf: str
    created: float
    seen: float

    @property
    def may_decide(self) -> bool:
        return "reviewer" in self.roles

    def expired(self, now: float) -> bool:
        return now - self.seen > IDLE or now - self.created > LIFETIME


class Sessions:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.by_id: dict[str, ConsoleSession] = {}
        self.failures: dict[str, list[float]] = {}

    def create(self, identity) -> ConsoleSession:
        now = self.clock()
        self._sweep(now)
        s = ConsoleSession(secrets.token_urlsafe(32), identity.name, frozenset(identity.roles),
                           secrets.token_urlsafe(32), now, now)
        self.by_id[s.id] = s
        return s

    def get(self, request) -> ConsoleSession | None:
        sid = request.getCookie(COOKIE)
        if not sid:
            return None
        s = self.by_id.get(sid.decode("ascii", "replace"))
        now = self.clock()
        if s is None or s.expired(now):
            self.by_id.pop(s.id, None) if s else None
            return None
        s.seen = now
        return s

    def end(self, s: ConsoleSession) -> None:
        self.by_id.pop(s.id, None)

    def _sweep(self, now):
        if len(self.by_id) >= MAX_SESSIONS:
            for sid in [k for k, v in self.by_id.items() if v.expired(now)]:
                del self.by_id[sid]
            while len(self.by_id) >= MAX_SESSIONS:  # the oldest go first
                del self.by_id[min(self.by_id, key=lambda k: self.by_id[k].seen)]

    def too_many_failures(self, peer: str) -> bool:
        now = self.clock()
        recent = [t for t in self.failures.get(peer, ()) if now - t < 60]
        self.failures[peer] = recent
        if len(self.failures) > 10_000:
            self.failures = {k: v for k, v in self.failures.items() if v}
        return len(recent) >= SIGNIN_FAILURES_PER_MINUTE

    def failed(self, peer: str) -> None:
        self.failures.setdefault(peer, []).append(self.clock())


def same(a: str | bytes | None, b: str) -> bool:
    if not a:
        return False
    if isinstance(a, bytes):
        a = a.decode("ascii", "replace")
    return hmac.compare_digest(a.encode(), b.encode())


def cross_origin(request) -> bool:
    """A POST another site's page made (the browser says so)."""
    site = request.getHeader(b"sec-fetch-site")
    if site and site.lower() not in (b"same-origin", b"none"):
        return True
    origin = request.getHeader(b"origin")
    if origin and origin != b"null":  # ("null": a browser hiding it; the CSRF token still guards)
        host = request.getHeader(b"host") or b""
        scheme = b"https" if request.isSecure() else b"http"
        return origin.lower() != scheme + b"://" + host.lower()
    return False


def set_cookie(request, name: bytes, value: str, max_age: int | None = None) -> None:
    request.addCookie(name, value.encode(), path=b"/ui/", httpOnly=True, secure=request.isSecure(),
                      sameSite=b"strict", max_age=str(max_age).encode() if max_age is not None else None)


def security_headers(request, csp: str = CSP, cache: bool = False) -> None:
    h = request.setHeader
    h(b"content-security-policy", csp.encode())
    h(b"x-content-type-options", b"nosniff")
    h(b"x-frame-options", b"DENY")
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on our own forms
    h(b"referrer-policy", b"same-origin")
    h(b"cross-origin-opener-policy", b"same-origin")
    h(b"cross-origin-resource-policy", b"same-origin")
    h(b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=(), usb=()")
    if request.isSecure():
        h(b"strict-transport-security", b"max-age=31536000")
    h(b"cache-control", b"private, max-age=3600" if cache else b"no-store")
