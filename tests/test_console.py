"""The web console over HTTP(S), as an attacker and as its users would use it: sign-in, cookies,
CSRF, security headers, roles, escaping, the evidence download, TLS. (The real browser test
is tests/test_console_browser.py.)"""
import http.cookiejar
import io
import json
import re
import subprocess
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from tests.support import free_port, ident
from tests.test_core_e2e import curl, result, upstream  # noqa: F401  (fixture)

AGENT, ALICE, BOB, CAROL = ident("agent"), ident("alice"), ident("bob"), ident("carol")
EVIL = '<script>alert(1)</script><img src=x onerror=alert(2)>\x1b[2J\x1b]0;pwned\x07\u202eevil'


class Browser:
    """Cookies and forms, as a browser sends them (no redirects followed)."""

    def __init__(self, base, context=None):
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        handlers = [urllib.request.HTTPCookieProcessor(self.jar), NoRedirect()]
        if context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self.opener = urllib.request.build_opener(*handlers)

    def go(self, method, path, form=None, headers=None):
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        if data is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            with self.opener.open(req, timeout=20) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def get(self, path, **kw):
        return self.go("GET", path, **kw)

    def post(self, path, form, **kw):
        return self.go("POST", path, form, **kw)

    def csrf(self, html: bytes) -> str:
        return re.search(rb'name="csrf" value="([^"]+)"', html).group(1).decode()

    def sign_in(self, token):
        status, _, html = self.get("/ui/signin")
        assert status == 200
        return self.post("/ui/signin", {"csrf": self.csrf(html), "token": token})


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **kw):
        return None


@pytest.fixture
def gateway(hoopy_gateway, upstream):
    up_port, _ = upstream
    port = free_port()
    body = f"""
{AGENT.toml()}
{ALICE.toml(kind="human", roles=["reviewer"])}
{BOB.toml(kind="human", roles=["reviewer"])}
{CAROL.toml(kind="human", roles=["auditor"])}

[connections.api]
type = "http"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up_port}"

[[grants]]
identity = "agent"
connection = "api"
allow = ["GET /v1/*"]
approve = ["POST /v1/refunds"]

[[grants]]
identity = "bob"
connection = "api"
approve = ["POST /v1/refunds"]
"""
    gw = hoopy_gateway(body)
    gw.http = f"http://127.0.0.1:{port}"
    return gw


def held(gw, token, body):
    return curl("-X", "POST", "-H", "Content-Type: text/plain", "--data-binary", body,
                gw.http + "/v1/refunds", token=token)


def test_sign_in_cookies_headers_and_roles(gateway):
    b = Browser(gateway.admin)
    status, headers, _ = b.get("/ui/inbox")
    assert status == 303 and headers["Location"] == "/ui/signin"
    status, headers, html = b.get("/ui/signin")
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert "frame-ancestors 'none'" in csp and "wasm" not in csp
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin" and headers["Cache-Control"] == "no-store"
    assert b"<script>" not in html and b" on" not in html.lower().replace(b" one", b"")  # no inline script or handler

    # A wrong token, an identity without a console role: refused and recorded.
    assert b.post("/ui/signin", {"csrf": b.csrf(html), "token": "hpy_wrong"})[0] == 403
    status, _, html = b.get("/ui/signin")
    status, _, page = b.post("/ui/signin", {"csrf": b.csrf(html), "token": AGENT.token})
    assert status == 403 and b"neither a reviewer nor an auditor" in page
    failed = gateway.events("auth.failed")
    assert [e["data"]["reason"] for e in failed] == ["bad credentials", "not a reviewer or auditor"]
    # Without the sign-in form's token (a login CSRF): refused.
    assert Browser(gateway.admin).post("/ui/signin", {"csrf": "x", "token": ALICE.token})[0] == 403

    status, headers, _ = b.sign_in(ALICE.token)
    assert status == 303 and headers["Location"] == "/ui/inbox"
    cookie = [v for k, v in headers.items() if k.lower() == "set-cookie" and v.startswith("hoopy_console=")][0]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/ui/" in cookie
    assert "Secure" not in cookie  # plain HTTP here (see the TLS test)
    status, _, html = b.get("/ui/inbox")
    assert status == 200 and b"alice" in html and b"Nothing waits" in html
    for page in ("/ui/sessions", "/ui/audit"):
        assert b.get(page)[0] == 200
    assert b"intact" in b.get("/ui/audit")[2]
    # Sign out ends the session on the server, not only the cookie.
    sid = next(c.value for c in b.jar if c.name == "hoopy_console")
    assert b.post("/ui/signout", {"csrf": b.csrf(html)})[0] == 303
    stale = Browser(gateway.admin)
    stale.jar.set_cookie(next(c for c in b.jar if c.name == "hoopy_console") if any(
        c.name == "hoopy_console" for c in b.jar) else _cookie("hoopy_console", sid))
    assert stale.get("/ui/inbox")[0] == 303


def _cookie(name, value):
    return http.cookiejar.Cookie(0, name, value, None, False, "127.0.0.1", False, False, "/ui/", True, False,
                                 None, False, None, None, {})


def test_deciding_in_the_console(gateway):
    p = held(gateway, AGENT.token, "amount=5&note=" + EVIL)
    (row,) = gateway.wait_pending(ALICE.token)
    aid = row["id"]

    # The auditor sees it all and decides nothing.
    carol = Browser(gateway.admin)
    carol.sign_in(CAROL.token)
    status, _, html = carol.get("/ui/inbox")
    assert aid.encode() in html and b"Auditors read" in html and b"/approve" not in html
    csrf = carol.csrf(html)
    assert carol.post(f"/ui/approvals/{aid}/approve", {"csrf": csrf})[0] == 403
    assert p.poll() is None

    alice = Browser(gateway.admin)
    alice.sign_in(ALICE.token)
    status, _, html = alice.get("/ui/inbox")
    # Untrusted text is inert: escaped HTML, terminal escapes and bidi overrides shown, not acted on.
    assert b"<script>alert(1)" not in html and b"<img src=x" not in html
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert b"\\x1b[2J\\x1b]0;pwned\\x07\\u202eevil" in html and b"\x1b" not in html
    cards = alice.get("/ui/inbox/cards")[2]
    assert aid.encode() in cards and b"&lt;script&gt;" in cards

    # No CSRF token, a wrong one, or another site's form: nothing changes.
    status, headers, _ = alice.post(f"/ui/approvals/{aid}/approve", {"reason": "ok"})
    assert status == 303 and headers["Location"].endswith("error=csrf")
    assert alice.post(f"/ui/approvals/{aid}/approve", {"csrf": "forged"})[1]["Location"].endswith("error=csrf")
    csrf = alice.csrf(html)
    assert alice.post(f"/ui/approvals/{aid}/approve", {"csrf": csrf},
                      headers={"Origin": "https://evil.example"})[0] == 403
    assert alice.post(f"/ui/approvals/{aid}/approve", {"csrf": csrf},
                      headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
    assert gateway.get(f"/approvals/{aid}", ALICE.token)[1]["state"] == "pending" and p.poll() is None

    status, headers, _ = alice.post(f"/ui/approvals/{aid}/approve", {"csrf": csrf, "reason": "refund ok <b>"})
    assert status == 303 and headers["Location"] == f"/ui/approvals/{aid}?done=approved"
    code, _ = result(p)
    assert code == 200
    row = gateway.get(f"/approvals/{aid}", ALICE.token)[1]
    assert row["state"] == "approved" and row["reviewer"] == "alice" and row["reason"] == "refund ok <b>"
    page = alice.get(f"/ui/approvals/{aid}?done=approved")[2]
    assert b"Approved." in page and b"refund ok &lt;b&gt;" in page
    # A made-up message in the link is not shown: only known codes are.
    assert b"go to evil" not in alice.get(f"/ui/approvals/{aid}?done=go+to+evil")[2]


def test_nobody_decides_their_own_request_in_the_console(gateway):
    p = held(gateway, BOB.token, "amount=1")
    (row,) = gateway.wait_pending(ALICE.token)
    bob = Browser(gateway.admin)
    bob.sign_in(BOB.token)
    html = bob.get("/ui/inbox")[2]
    assert b"You asked for this" in html and f"/ui/approvals/{row['id']}/approve".encode() not in html
    status, headers, _ = bob.post(f"/ui/approvals/{row['id']}/approve", {"csrf": bob.csrf(html)})
    assert headers["Location"].endswith("error=self_approval")
    assert p.poll() is None
    assert gateway.hoopy("deny", row["id"], token=ALICE.token).returncode == 0
    assert result(p)[0] == 403


def test_sessions_filters_and_the_evidence_download(gateway):
    assert result(curl(gateway.http + "/v1/customers", token=AGENT.token))[0] == 200
    assert result(curl(gateway.http + "/v2/nothing", token=AGENT.token))[0] == 403
    b = Browser(gateway.admin)
    b.sign_in(CAROL.token)
    html = b.get("/ui/sessions?identity=agent")[2]
    sid = re.search(rb'href="/ui/sessions/([^"/]+)"', html).group(1).decode()
    assert b"1 refused" in html
    assert sid.encode() not in b.get("/ui/sessions?identity=alice")[2]
    assert sid.encode() in b.get("/ui/sessions?outcome=refused&protocol=http")[2]
    assert sid.encode() not in b.get("/ui/sessions?outcome=held")[2]
    page = b.get(f"/ui/sessions/{sid}")[2]
    assert b'class="operation refusal' in page and b"/v2/nothing" in page

    html = b.get("/ui/audit")[2]
    status, headers, data = b.post("/ui/audit/evidence", {"csrf": b.csrf(html), "since": "2000-01-01",
                                                          "until": time.strftime("%Y-%m-%d", time.gmtime())})
    assert status == 200 and headers["Content-Type"] == "application/gzip"
    assert "attachment" in headers["Content-Disposition"]
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        manifest = json.load(tar.extractfile("hoopy-evidence/manifest.json"))
    assert manifest["counts"]["sessions"] >= 1
    # Without the form's token: refused.
    assert b.post("/ui/audit/evidence", {"since": "2000-01-01"})[0] == 403
    # Only the package's own static files are served.
    for bad in ("/ui/static/../../hoopy.toml", "/ui/static/%2e%2e/__init__.py", "/ui/static/console.js/x"):
        assert b.get(bad)[0] == 404
    status, headers, _ = b.get("/ui/static/console.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")


def test_the_console_over_tls(hoopy_gateway, tmp_path):
    cert, key = tmp_path / "admin.crt", tmp_path / "admin.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    gw = hoopy_gateway(ALICE.toml(kind="human", roles=["reviewer"]),
                       gateway_extra=f'admin_tls_cert = "file:{cert}"\nadmin_tls_key = "file:{key}"',
                       admin_scheme="https", admin_ca=str(cert))
    import ssl

    ctx = ssl.create_default_context(cafile=str(cert))
    b = Browser(f"https://127.0.0.1:{gw.admin_port}", ctx)
    status, headers, _ = b.sign_in(ALICE.token)
    cookie = [v for k, v in headers.items() if k.lower() == "set-cookie" and v.startswith("hoopy_console=")][0]
    assert "Secure" in cookie and "HttpOnly" in cookie
    status, headers, _ = b.get("/ui/inbox")
    assert status == 200 and headers["Strict-Transport-Security"].startswith("max-age=")
    # Plain HTTP on the TLS listener gets nothing.
    with pytest.raises(Exception):
        urllib.request.urlopen(f"http://127.0.0.1:{gw.admin_port}/health", timeout=5).read()
    # The hoopy command reaches the TLS admin API (it trusts the listener's own certificate).
    r = gw.hoopy("approve", "ap-000000000000", token=ALICE.token)
    assert r.returncode == 1 and "no pending approval" in r.stderr, r.stderr


def test_guessing_tokens_is_slowed_down_and_recorded(gateway):
    b = Browser(gateway.admin)
    for i in range(10):
        html = b.get("/ui/signin")[2]
        assert b.post("/ui/signin", {"csrf": b.csrf(html), "token": f"hpy_guess{i}"})[0] == 403
    html = b.get("/ui/signin")[2]
    status, _, page = b.post("/ui/signin", {"csrf": b.csrf(html), "token": ALICE.token})
    assert status == 429 and b"Too many failed sign-ins" in page  # even the right token, for a minute
    assert len(gateway.events("auth.failed")) == 10
