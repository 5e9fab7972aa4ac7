"""The admin side (issue 10 section 6): approving is the most powerful act in the system.

Ids that would change a URL, admin addresses that could be anyone, redirects and proxies
that would carry a reviewer's token away, an admin listener that stored what it had not
yet authorized, and failed admin logins that left no trace. Real admin HTTP, the real
`hoopy` command, real TLS."""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from hoopy.admin import api
from hoopy.policy.verdicts import Hold
from tests.gateway_fixtures import AGENT, ALICE, hoopy_cli, request, start_gateway
from tests.support import HoopyProcess, free_port


async def held(gw):
    s = gw.new_session("agent", gw.config.connections["api"], "127.0.0.1:40000")
    await s.start()
    v = await gw.policy.decide(s, request("POST", "/v1/refunds"))
    assert isinstance(v, Hold)
    return s, v


def port_of(gw) -> int:
    return int(gw.config.gateway.admin_listen.split(":")[1])


def raw(port: int, data: bytes, wait: float = 3.0, send_after: bytes | None = None) -> bytes:
    """Send ``data``, read what comes back until the server closes (or ``wait`` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        out = b""
        deadline = time.monotonic() + wait
        try:
            while time.monotonic() < deadline:
                c = s.recv(65536)
                if not c:
                    break
                out += c
        except (socket.timeout, ConnectionResetError):
            pass
        return out


class Recorder:
    """A plain HTTP server that records every request (a would-be thief of tokens)."""

    def __init__(self, answer=None):
        self.seen = []
        rec = self

        class H(BaseHTTPRequestHandler):
            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                rec.seen.append((self.command, self.path, dict(self.headers), self.rfile.read(n)))
                status, headers = answer(self) if answer else (200, {})
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = do_CONNECT = _any

            def log_message(self, *a):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


# --- ids ------------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_an_id_that_would_change_the_url_never_decides_anything(tmp_path):
    gw = start_gateway(tmp_path)
    try:
        s, hold = await held(gw)
        cfg = gw.config.path
        for bad in (f"{hold.id}/approve?", f"{hold.id}/approve#", f"{hold.id}%2Fapprove",
                    f"../approvals/{hold.id}/approve?x=", f"{hold.id}/../{hold.id}/approve?", f"{hold.id}?",
                    f"{hold.id} ", f"{hold.id}\x00", "", ".", "ap-..", f"{hold.id}\n/approve"):
            if "\x00" in bad:
                continue  # cannot be an argv element
            r = await hoopy_cli(cfg, "deny", bad, "--reason", "no", token=ALICE.token)
            assert r.returncode == 2 and "is not an approval id" in r.stderr, (bad, r)
            assert not hold.resolution.called, bad
        # The server refuses them too, whoever sends them.
        port = port_of(gw)
        for path in (f"/approvals/{hold.id}%2Fapprove%3F/deny", f"/approvals/{hold.id}%3F/approve",
                     f"/approvals/%2E%2E/approve"):
            resp = await deferToThread(raw, port, f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                                  f"Authorization: Bearer {ALICE.token}\r\nContent-Length: 0\r\n"
                                                  "Connection: close\r\n\r\n".encode())
            assert resp.startswith(b"HTTP/1.1 400") or resp.startswith(b"HTTP/1.1 404"), (path, resp[:200])
            assert not hold.resolution.called, path
        assert gw.approvals.get(hold.id) is not None
        r = await hoopy_cli(cfg, "deny", hold.id, "--reason", "no", token=ALICE.token)
        assert r.returncode == 0 and f"{hold.id} denied by alice" in r.stdout
    finally:
        await gw.stopService()


# --- where the token goes ------------------------------------------------------------------------


def test_admin_listen_must_be_an_ip_address(tmp_path):
    from tests.gateway_fixtures import write_config

    p = write_config(tmp_path)
    for bad, expected in (("tcp:8099:interface=evil.example.com", "must be an IP address"),
                          ("unix:/tmp/x.sock", "must be a tcp: or ssl: endpoint")):
        text = p.read_text()
        p.write_text(text.replace(text.split('admin_listen = "')[1].split('"')[0], bad, 1))
        r = subprocess.run([sys.executable, "-m", "hoopy", "check", "-c", str(p)], capture_output=True, text=True)
        assert r.returncode == 2 and "gateway.admin_listen" in r.stdout and expected in r.stdout, r.stdout


@pytest_twisted.ensureDeferred
async def test_a_token_never_goes_in_clear_to_a_name_or_another_host(tmp_path):
    gw = start_gateway(tmp_path)
    trap = Recorder()
    try:
        s, hold = await held(gw)
        cfg = gw.config.path
        for url in (f"http://localhost:{trap.port}", "http://evil.example.com:8099", "http://10.255.255.1:8099",
                    "http://[2001:db8::1]:8099", f"ftp://127.0.0.1:{trap.port}",
                    f"http://user:pw@127.0.0.1:{trap.port}", f"http://127.0.0.1:{trap.port}/x?y"):
            r = await hoopy_cli(cfg, "approve", hold.id, "--admin", url, token=ALICE.token)
            assert r.returncode == 2, (url, r.stdout, r.stderr)
        assert trap.seen == [] and not hold.resolution.called
    finally:
        trap.close()
        await gw.stopService()


@pytest_twisted.ensureDeferred
async def test_redirects_are_refused_and_proxies_never_used(tmp_path):
    thief = Recorder()
    codes = iter((302, 307, 308, 301))
    redirector = Recorder(lambda h: (next(codes), {"Location": f"http://127.0.0.1:{thief.port}{h.path}"}))
    proxy = Recorder()
    gw = start_gateway(tmp_path)
    try:
        s, hold = await held(gw)
        cfg = gw.config.path
        for n in range(1, 5):  # a 302 is followed by urllib as a GET that keeps Authorization
            r = await hoopy_cli(cfg, "approve", hold.id, "--admin", f"http://127.0.0.1:{redirector.port}",
                                token=ALICE.token)
            assert r.returncode == 1 and "redirect" in r.stderr, r.stderr
            assert len(redirector.seen) == n and thief.seen == []
        env = {k: f"http://127.0.0.1:{proxy.port}" for k in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY",
                                                                  "https_proxy", "ALL_PROXY", "all_proxy")}
        env["NO_PROXY"] = env["no_proxy"] = ""
        r = await deferToThread(subprocess.run, [sys.executable, "-m", "hoopy", "approve", hold.id, "-c", str(cfg)],
                                capture_output=True, text=True, timeout=60,
                                env={**os.environ, **env, "HOOPY_TOKEN": ALICE.token})
        assert r.returncode == 0, r.stderr
        assert proxy.seen == []
    finally:
        for x in (thief, redirector, proxy):
            x.close()
        await gw.stopService()


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hoopy-admin")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp_path / "admin.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "admin.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))


def test_admin_over_tls_is_verified(tmp_path):
    """admin_listen = "ssl:...": the command verifies the certificate (admin_ca), or sends nothing."""
    from tests.test_signing import ALICE as AL2, Upstream, body_toml

    _self_signed(tmp_path)
    up = Upstream(tmp_path)
    port = free_port()
    p = HoopyProcess(tmp_path, body_toml(up.port, free_port()), env={"API_AUTH": "x"}, admin_port=port)
    text = p.config.read_text().replace(
        f'admin_listen = "tcp:{port}:interface=127.0.0.1"',
        f'admin_listen = "ssl:{port}:privateKey=admin.key:certKey=admin.crt:interface=127.0.0.1"\n'
        'admin_ca = "file:admin.crt"')
    p.config.write_text(text)
    from tests.support import TWISTD

    log = open(tmp_path / "twistd.log", "ab")
    proc = subprocess.Popen([TWISTD, "-n", "--pidfile=", "hoopy", "-c", str(p.config)], cwd=tmp_path, env=p.env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        ctx = ssl.create_default_context(cafile=str(tmp_path / "admin.crt"))
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    with ctx.wrap_socket(s, server_hostname="127.0.0.1"):
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        r = p.hoopy("approvals", "--all")
        assert r.returncode == 0
        r = p.hoopy("approve", "ap-000000000000", token=AL2.token)
        assert r.returncode == 1 and "no pending approval" in r.stderr, r.stderr  # reached, over verified TLS
        # Without the CA the certificate does not verify: nothing is sent.
        p.config.write_text(text.replace('admin_ca = "file:admin.crt"\n', ""))
        r = p.hoopy("approve", "ap-000000000000", token=AL2.token)
        assert r.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in r.stderr, r.stderr
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()
        up.stop()


# --- the listener ------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_listener_refuses_before_it_stores(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "HEADER_TIMEOUT", 0.5)
    monkeypatch.setattr(api, "BODY_TIMEOUT", 0.5)
    gw = start_gateway(tmp_path)
    port = port_of(gw)
    try:
        s, hold = await held(gw)
        head = f"POST /approvals/{hold.id}/approve HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        # 50 MiB announced, no token, no body sent: refused from the header alone.
        t0 = time.monotonic()
        resp = await deferToThread(raw, port, (head + "Content-Length: 52428800\r\n\r\n").encode())
        assert resp.startswith(b"HTTP/1.1 413") and time.monotonic() - t0 < 0.45, resp[:200]
        # With a reviewer's token too: the size is checked before anything else.
        resp = await deferToThread(raw, port, (head + f"Authorization: Bearer {ALICE.token}\r\n"
                                               "Content-Length: 70000\r\n\r\n").encode())
        assert resp.startswith(b"HTTP/1.1 413")
        resp = await deferToThread(raw, port, (head + f"Authorization: Bearer {ALICE.token}\r\n"
                                               "Transfer-Encoding: chunked\r\n\r\n").encode())
        assert resp.startswith(b"HTTP/1.1 411")
        assert not hold.resolution.called
        # Slow headers (a byte at a time, never done) and a slow body: cut off.
        t0 = time.monotonic()
        resp = await deferToThread(raw, port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", 5.0)
        assert resp.startswith(b"HTTP/1.1 408") and time.monotonic() - t0 < 3
        resp = await deferToThread(raw, port, (head + f"Authorization: Bearer {ALICE.token}\r\n"
                                               "Content-Length: 100\r\n\r\n{\"reas").encode(), 5.0)
        assert resp.startswith(b"HTTP/1.1 408"), resp[:200]
        assert not hold.resolution.called
        # Host: only an IP address or localhost (a DNS-rebinding page names its own host).
        for host, ok in (("evil.example.com", False), (f"evil.example.com:{port}", False), ("", False),
                         (f"127.0.0.1:{port}", True), ("localhost", True), (f"[::1]:{port}", True)):
            resp = await deferToThread(raw, port, f"GET /health HTTP/1.1\r\nHost: {host}\r\n"
                                                  "Connection: close\r\n\r\n".encode())
            assert resp.startswith(b"HTTP/1.1 200" if ok else b"HTTP/1.1 421"), (host, resp[:100])
        resp = await deferToThread(raw, port, b"GET /health HTTP/1.1\r\nHost: a\r\nHost: 127.0.0.1\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 421")
    finally:
        await gw.stopService()


@pytest_twisted.ensureDeferred
async def test_connections_are_capped(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "PER_PEER", 3)
    gw = start_gateway(tmp_path)
    port = port_of(gw)
    socks = []
    try:
        for _ in range(3):
            socks.append(socket.create_connection(("127.0.0.1", port)))

        def refused():
            with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                try:
                    return s.recv(100)
                except ConnectionResetError:
                    return b""

        assert await deferToThread(refused) == b""
        for s in socks:
            s.close()
        socks = []
        await deferToThread(time.sleep, 0.2)
        resp = await deferToThread(raw, port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 200")
    finally:
        for s in socks:
            s.close()
        await gw.stopService()


# --- failed admin logins -------------------------------------------------------------------------


def test_failed_admin_logins_are_recorded_counted_and_summarized(hoopy_gateway):
    from tests.support import ident

    rev = ident("alice")
    gw = hoopy_gateway(rev.toml(kind="human", roles=["reviewer"]))
    for i in range(25):
        assert gw.get("/approvals", f"guess-{i}")[0] == 401
    assert gw.get("/approvals", rev.token)[0] == 200
    assert gw.get("/approvals")[0] == 401  # no token at all: not a guess, not recorded
    status, metrics = gw.get("/metrics")
    assert b'hoopy_auth_failures_total{connection="admin",protocol="admin"} 25.0' in metrics
    gw.stop()
    failed = gw.events("auth.failed")
    one_by_one = [e for e in failed if e["outcome"] == "refused"]
    summary = [e for e in failed if e["outcome"] == "suppressed"]
    assert len(one_by_one) == 20 and all(e["protocol"] == "admin" and e["connection"] is None for e in one_by_one)
    assert one_by_one[0]["data"]["method"] == "bearer" and "guess" not in json.dumps(failed)
    assert len(summary) == 1 and summary[0]["data"]["failures"] == 5
    r = gw.hoopy("events", "--type", "auth.failed", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 21
