"""WebSocket through the gateway with real clients: the python ``websockets`` library and headless
Chromium, which cannot send Authorization and offers the token as a subprotocol instead
(``["hoopy", "hoopy.bearer." + token]``, issue 11 item 10)."""
from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse

import pytest
import websockets.sync.client as wsc
from websockets.exceptions import InvalidStatus

from tests.test_http_gateway import AGENT, UPSTREAM_SECRET, gw, raw_request, status_of, upstream, wait_events  # noqa: F401


def _url(gw, path="/ws"):
    return f"ws://127.0.0.1:{gw.plain_port}{path}"


def _protocols(token=AGENT.token, *more):
    return ["hoopy", f"hoopy.bearer.{token}", *more]


def test_the_token_in_the_subprotocol_offer_opens_a_websocket(gw, upstream):
    mark = upstream.mark()
    with wsc.connect(_url(gw), subprotocols=_protocols(), open_timeout=5) as ws:
        assert ws.subprotocol == "hoopy"  # the upstream chose none: the gateway answers ours
        ws.send("hello")
        assert ws.recv(timeout=5) == "echo: hello"
    seen = [r for r in upstream.since(mark) if r["path"].startswith("/ws")]
    assert seen, upstream.since(mark)
    h = seen[0]["headers"]
    # neither entry travels on; the upstream gets its own credential
    assert "sec-websocket-protocol" not in h and AGENT.token not in json.dumps(seen)
    assert h["authorization"] == [UPSTREAM_SECRET]
    # and the record never holds the token
    events = wait_events(gw, "http.request", 1)
    assert AGENT.token not in json.dumps(events) and AGENT.token not in json.dumps(gw.events())


def test_the_upstreams_own_choice_of_subprotocol_is_answered(gw, upstream):
    mark = upstream.mark()
    with wsc.connect(_url(gw, "/ws?choose=1"), subprotocols=_protocols(AGENT.token, "chat.v2"),
                     open_timeout=5) as ws:
        assert ws.subprotocol == "chat.v2"
        ws.send("x")
        assert ws.recv(timeout=5) == "echo: x"
    seen = [r for r in upstream.since(mark) if r["path"].startswith("/ws")]
    assert seen[0]["headers"]["sec-websocket-protocol"] == ["chat.v2"]


def test_the_authorization_header_still_works(gw):
    with wsc.connect(_url(gw), additional_headers={"Authorization": f"Bearer {AGENT.token}"},
                     open_timeout=5) as ws:
        assert ws.subprotocol is None
        ws.send("y")
        assert ws.recv(timeout=5) == "echo: y"


@pytest.mark.parametrize("protocols, headers", [
    (["hoopy", "hoopy.bearer.hpy_wrong"], {}),
    ([f"hoopy.bearer.{AGENT.token}"], {}),  # without the plain entry it is no credential
    (["hoopy"], {}),
    (["hoopy", f"hoopy.bearer.{AGENT.token}"], {"Authorization": "Bearer hpy_other"}),  # two that differ
])
def test_a_bad_or_half_offer_is_401(gw, upstream, protocols, headers):
    mark = upstream.mark()
    with pytest.raises(InvalidStatus) as e:
        wsc.connect(_url(gw), subprotocols=protocols, additional_headers=headers, open_timeout=5)
    assert e.value.response.status_code == 401
    assert [r for r in upstream.since(mark) if r["path"].startswith("/ws")] == []


def test_the_subprotocol_is_no_credential_outside_an_upgrade(gw, upstream):
    mark = upstream.mark()
    resp = raw_request(gw.plain_port, (f"GET /ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Protocol: hoopy, "
                                       f"hoopy.bearer.{AGENT.token}\r\nConnection: close\r\n\r\n").encode())
    assert status_of(resp) == 401
    assert upstream.since(mark) == []


def test_the_token_never_in_the_url(gw, upstream):
    mark = upstream.mark()
    q = urllib.parse.urlencode({"access_token": AGENT.token})
    with pytest.raises(InvalidStatus) as e:
        wsc.connect(_url(gw, f"/ws?{q}"), subprotocols=_protocols(), open_timeout=5)
    assert e.value.response.status_code == 400
    assert upstream.since(mark) == []


PAGE = """<!doctype html><title>pending</title><script>
const ws = new WebSocket(%(url)s, ["hoopy", "hoopy.bearer." + %(token)s]);
ws.onopen = () => ws.send("from the browser");
ws.onmessage = (m) => { document.title = "ok:" + ws.protocol + ":" + m.data; ws.close(); };
ws.onerror = () => { document.title = "error"; };
</script>"""


def _chromium_title(page_url: str, profile, until, timeout: float = 30.0) -> str:
    """Open a page in headless Chromium and read its title (over the DevTools protocol) until ``until``."""
    import time
    import urllib.request

    proc = subprocess.Popen(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        port_file = profile / "DevToolsActivePort"
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            assert time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        while True:
            try:
                pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5))
                target = next(p for p in pages if p.get("type") == "page")
                break
            except (OSError, StopIteration):
                assert time.monotonic() < deadline, "chromium has no page"
                time.sleep(0.1)
        with wsc.connect(target["webSocketDebuggerUrl"], open_timeout=10, max_size=None) as cdp:
            ids = iter(range(1, 10 ** 6))

            def call(method, **params):
                i = next(ids)
                cdp.send(json.dumps({"id": i, "method": method, "params": params}))
                while True:
                    msg = json.loads(cdp.recv(timeout=10))
                    if msg.get("id") == i:
                        return msg.get("result", {})

            call("Page.navigate", url=page_url)
            title = ""
            while time.monotonic() < deadline:
                title = call("Runtime.evaluate", expression="document.title")["result"].get("value", "")
                if until(title):
                    return title
                time.sleep(0.1)
            return title
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="apt: chromium (installed by .ci/run)")
def test_headless_chromium_opens_a_websocket_with_the_subprotocol_token(gw, tmp_path):
    page = tmp_path / "ws.html"
    page.write_text(PAGE % {"url": json.dumps(_url(gw)), "token": json.dumps(AGENT.token)})
    title = _chromium_title(page.as_uri(), tmp_path / "profile", lambda t: t.startswith("ok") or t == "error")
    assert title == "ok:hoopy:echo: from the browser", title
