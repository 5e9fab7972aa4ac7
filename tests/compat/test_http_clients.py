"""HTTP clients people use, through a real gateway to a real upstream, with TLS off and on.

Each test is one row of docs/compatibility.md (tests/compat/matrix.py)."""
from __future__ import annotations

import json
import ssl
import subprocess
import threading

import pytest

from tests.compat.matrix import row
from tests.support import HoopyProcess, free_port, ident
from tests.test_http_gateway import UPSTREAM_SECRET, Upstream, make_ca_and_cert

AGENT = ident("compat-agent")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = tmp_path_factory.mktemp("compat-http")
    ca, cert, key = make_ca_and_cert(d, names=("localhost",))
    up = Upstream(d)
    plain, tls = free_port(), free_port()
    conns = ""
    for name, port, extra in (("plain", plain, ""), ("tls", tls, f'tls_cert = "file:{cert}"\ntls_key = "file:{key}"\n')):
        conns += f"""
[connections.{name}]
type = "http"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up.port}"
upstream_headers = {{ Authorization = "env:API_AUTH" }}
{extra}
[[grants]]
identity = "compat-agent"
connection = "{name}"
allow = ["GET /echo/**", "POST /echo/**", "GET /ws", "GET /gzip/customer", "GET /files/*"]
"""
    gw = HoopyProcess(d, AGENT.toml(scram=False) + conns, env={"API_AUTH": UPSTREAM_SECRET})
    gw.start()
    gw.urls = {False: f"http://127.0.0.1:{plain}", True: f"https://localhost:{tls}"}
    gw.ca = str(ca)
    yield gw
    gw.stop()
    up.stop()


def _ctx(site):
    return ssl.create_default_context(cafile=site.ca)


def _check_echo(body: bytes, method="GET", sent=None):
    seen = json.loads(body)
    assert seen["method"] == method and seen["path"].startswith("/echo/")
    assert AGENT.token not in body.decode()
    if sent is not None:
        assert seen["body"] == sent


def _curl(site, tls):
    base = site.urls[tls]
    common = ["curl", "-sS", "--fail", "-H", f"Authorization: Bearer {AGENT.token}"] + (["--cacert", site.ca] if tls else [])
    _check_echo(subprocess.run(common + [base + "/echo/a?x=1"], capture_output=True, check=True).stdout)
    _check_echo(subprocess.run(common + ["-H", "Content-Type: application/json", "--data", '{"n": 1}',
                                         base + "/echo/b"], capture_output=True, check=True).stdout,
                "POST", '{"n": 1}')


def _curl_compressed_and_ranges(site, tls):
    """Where a credential is injected the upstream is asked for identity and no range: the body is
    read whole and searched for the credential (docs/compatibility.md, "What HTTP clients see")."""
    import base64


    base = site.urls[tls]
    common = ["curl", "-sS", "--fail", "-H", f"Authorization: Bearer {AGENT.token}"] + (["--cacert", site.ca] if tls else [])
    seen = json.loads(subprocess.run(common + ["--compressed", base + "/echo/c"], capture_output=True,
                                     check=True).stdout)
    assert seen["headers"].get("accept-encoding", seen["headers"].get("Accept-Encoding")) in ("identity", ["identity"])
    # an upstream that compresses anyway: curl --compressed reads the decoded body as it is
    out = subprocess.run(common + ["--compressed", "-D", "-", base + "/gzip/customer"], capture_output=True,
                         check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"content-encoding" not in head.lower() and json.loads(body)["id"] == 42
    data = bytes(range(256)) * 4
    b = base64.urlsafe_b64encode(data).decode()
    out = subprocess.run(common + ["-r", "100-199", "-D", "-", f"{base}/files/blob?b={b}"], capture_output=True,
                         check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == data, head


@row("http", "curl", "--compressed and -r (a byte range) where a credential is injected", tls=False,
     outcome="limited", note="answers come uncompressed and whole: a range gets the whole body with 200")
def test_curl_compressed_and_ranges_plain(site):
    _curl_compressed_and_ranges(site, False)


@row("http", "curl", "--compressed and -r (a byte range) where a credential is injected", tls=True,
     outcome="limited", note="answers come uncompressed and whole: a range gets the whole body with 200")
def test_curl_compressed_and_ranges_tls(site):
    _curl_compressed_and_ranges(site, True)


def _requests(site, tls):
    import requests

    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {AGENT.token}"
    s.verify = site.ca if tls else True
    for _ in range(3):  # keep-alive: several requests on one connection
        r = s.get(site.urls[tls] + "/echo/a", verify=s.verify)
        assert r.status_code == 200
        _check_echo(r.content)
    r = s.post(site.urls[tls] + "/echo/b", json={"n": 1}, verify=s.verify)
    assert r.status_code == 200
    _check_echo(r.content, "POST", '{"n": 1}')
    assert s.get(site.urls[tls] + "/other", verify=s.verify).status_code == 403


def _httpx(site, tls):
    import httpx

    with httpx.Client(headers={"Authorization": f"Bearer {AGENT.token}"},
                      verify=_ctx(site) if tls else True) as c:
        for _ in range(3):
            r = c.get(site.urls[tls] + "/echo/a")
            assert r.status_code == 200
            _check_echo(r.content)
        with c.stream("POST", site.urls[tls] + "/echo/b", content=(b"x" * 1000 for _ in range(64))) as r:
            assert r.status_code == 200
            assert len(json.loads(r.read())["body"]) == 64000


def _websockets(site, tls, browser_style):
    """websockets' asyncio client. Its threaded sync client reads and writes one TLS connection from
    two threads at once, which OpenSSL does not support: when a TLS 1.3 server's session tickets
    arrive while the client sends its upgrade request, the client fails (SSLEOFError, or "did not
    receive a valid HTTP response") on about 0.2% of connections to any server that sends tickets
    (measured against a plain Python TLS server too: 3-9 in 2,000; 0 without tickets; 0 with this
    client). docs/compatibility.md says so."""
    import asyncio

    from websockets.asyncio.client import connect

    url = site.urls[tls].replace("http", "ws", 1) + "/ws"
    kw = {"ssl": _ctx(site)} if tls else {}
    if browser_style:
        kw["subprotocols"] = ["hoopy", f"hoopy.bearer.{AGENT.token}"]
    else:
        kw["additional_headers"] = {"Authorization": f"Bearer {AGENT.token}"}

    async def session():
        async with connect(url, open_timeout=30, **kw) as ws:  # a loaded CI machine: the suite runs beside
            assert ws.subprotocol == ("hoopy" if browser_style else None)
            for i in range(3):
                await ws.send(f"m{i}")
                assert await asyncio.wait_for(ws.recv(), 5) == f"echo: m{i}"

    # Its own loop in its own thread: this process's asyncio loop is the Twisted reactor's.
    failure: list = []
    t = threading.Thread(target=lambda: _run(asyncio, session, failure))
    t.start()
    t.join(60)
    assert not t.is_alive(), "the WebSocket session did not end within 60 s"
    if failure:
        raise failure[0]


def _run(asyncio, session, failure):
    try:
        asyncio.run(session())
    except BaseException as e:  # re-raised in the test's thread
        failure.append(e)


@row("http", "curl", "GET and POST with a bearer token", tls=False)
def test_curl_plain(site):
    _curl(site, False)


@row("http", "curl", "GET and POST with a bearer token", tls=True)
def test_curl_tls(site):
    _curl(site, True)


@row("http", "requests", "a keep-alive session: GETs, a JSON POST, a refused route", tls=False)
def test_requests_plain(site):
    _requests(site, False)


@row("http", "requests", "a keep-alive session: GETs, a JSON POST, a refused route", tls=True)
def test_requests_tls(site):
    _requests(site, True)


@row("http", "httpx", "a keep-alive client: GETs, a chunked streaming upload", tls=False)
def test_httpx_plain(site):
    _httpx(site, False)


@row("http", "httpx", "a keep-alive client: GETs, a chunked streaming upload", tls=True)
def test_httpx_tls(site):
    _httpx(site, True)


@row("http", "websockets", "WebSocket with an Authorization header", tls=False)
def test_websockets_header_plain(site):
    _websockets(site, False, browser_style=False)


@row("http", "websockets", "WebSocket with an Authorization header", tls=True)
def test_websockets_header_tls(site):
    _websockets(site, True, browser_style=False)


@row("http", "websockets", "WebSocket with the token as subprotocol (as browsers must)", tls=False)
def test_websockets_subprotocol_plain(site):
    _websockets(site, False, browser_style=True)


@row("http", "websockets", "WebSocket with the token as subprotocol (as browsers must)", tls=True)
def test_websockets_subprotocol_tls(site):
    _websockets(site, True, browser_style=True)


@row("http", "chromium (headless)", "WebSocket from a page: new WebSocket(url, ['hoopy', 'hoopy.bearer.' + token])",
     tls=False)
def test_chromium_websocket_plain(site, tmp_path):
    from tests.test_http_websocket import PAGE, _chromium_title

    page = tmp_path / "ws.html"
    url = site.urls[False].replace("http", "ws", 1) + "/ws"
    page.write_text(PAGE % {"url": json.dumps(url), "token": json.dumps(AGENT.token)})
    title = _chromium_title(page.as_uri(), tmp_path / "profile", lambda t: t.startswith("ok") or t == "error")
    assert title == "ok:hoopy:echo: from the browser", title
