"""The real `twistd -n hoopy -c FILE` process: admin API, metrics, clean SIGTERM."""
import signal
import sqlite3

from tests.support import ident

AGENT, ALICE = ident("agent"), ident("alice")
BODY = AGENT.toml() + ALICE.toml(kind="human", roles=["reviewer"])


def test_admin_api_of_a_running_gateway(hoopy_gateway):
    gw = hoopy_gateway(BODY)
    status, health = gw.get("/health")
    assert status == 200 and health["status"] == "ok" and health["store"] == "ok"
    status, text = gw.get("/metrics")
    assert status == 200
    for name in (b"hoopy_sessions_open", b"hoopy_operations_total", b"hoopy_approvals_pending",
                 b"hoopy_proxied_bytes_total", b"hoopy_operation_duration_seconds"):
        assert b"# TYPE " + name.replace(b"_total", b"") in text or name in text, name
    assert b"_created" not in text  # no series doubling every counter
    assert gw.get("/approvals")[0] == 401
    assert gw.get("/approvals", "not-a-token")[0] == 401
    assert gw.get("/approvals", AGENT.token)[0] == 403  # an agent is not a reviewer
    assert gw.get("/approvals?state=pending", ALICE.token) == (200, [])
    assert gw.get("/sessions/nope", ALICE.token)[0] == 404
    assert gw.request("POST", "/approvals/ap-nope/approve", ALICE.token)[0] == 404
    r = gw.hoopy("approve", "ap-nope", token=ALICE.token)
    assert r.returncode == 1 and "refused" in r.stderr
    r = gw.hoopy("approvals")
    assert r.returncode == 0 and "no pending approvals" in r.stdout
    assert gw.hoopy("audit", "verify").returncode == 0


def test_sigterm_stops_cleanly(hoopy_gateway):
    gw = hoopy_gateway(BODY)
    # twistd re-raises the signal that stopped it, so the exit status says SIGTERM.
    assert gw.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    log = gw.log_text()
    assert "Server Shut Down" in log and "Traceback" not in log
    db = sqlite3.connect(gw.db)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert gw.hoopy("audit", "verify").returncode == 0


def test_daemonizes_without_n(tmp_path):
    """Without -n it daemonizes like any twistd service (--pidfile, --logfile)."""
    import os
    import subprocess
    import time

    from tests.support import TWISTD, HoopyProcess

    p = HoopyProcess(tmp_path, BODY)
    r = subprocess.run([TWISTD, "--pidfile", str(tmp_path / "h.pid"), "--logfile", str(tmp_path / "h.log"),
                        "hoopy", "-c", str(p.config)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if p.get("/health")[0] == 200:
                break
        except OSError:
            time.sleep(0.1)
    pid = int((tmp_path / "h.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    while time.monotonic() < deadline and (tmp_path / "h.pid").exists():
        time.sleep(0.1)
    assert not (tmp_path / "h.pid").exists()
    assert "Server Shut Down" in (tmp_path / "h.log").read_text()


def _taken_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


CONNECTIONS = {
    "http": 'type = "http"\nlisten = "tcp:{port}:interface=127.0.0.1"\nupstream = "http://127.0.0.1:9"\n',
    "postgres": 'type = "postgres"\nlisten = "tcp:{port}:interface=127.0.0.1"\n'
                'upstream = "tcp:host=127.0.0.1:port=5432"\nupstream_user = "postgres"\nupstream_tls = "disable"\n',
    "mcp": 'type = "mcp"\nlisten = "tcp:{port}:interface=127.0.0.1"\nupstream = "http://127.0.0.1:9/mcp"\n',
    "ssh": 'type = "ssh"\nlisten = "tcp:{port}:interface=127.0.0.1"\nupstream = "tcp:host=127.0.0.1:port=9"\n'
           'upstream_user = "u"\nupstream_key = "file:{dir}/key"\nupstream_known_hosts = "file:{dir}/known_hosts"\n',
}


def test_a_listener_that_cannot_open_stops_the_gateway(tmp_path):
    """Every kind of listener, the admin API's too: the gateway never runs with one missing."""
    import subprocess

    from tests.support import HoopyProcess

    for kind in [*CONNECTIONS, "admin"]:
        sock, port = _taken_port()
        try:
            d = tmp_path / kind
            d.mkdir()
            if kind == "ssh":
                import asyncssh

                (d / "key").write_bytes(asyncssh.generate_private_key("ssh-ed25519").export_private_key())
                (d / "key").chmod(0o600)
                host = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
                (d / "known_hosts").write_text(f"[127.0.0.1]:9 {host}")
            body = BODY + (f"[connections.c{kind}]\n" + CONNECTIONS[kind].format(port=port, dir=d)
                           if kind != "admin" else "")
            p = HoopyProcess(tmp_path / kind, body, admin_port=port if kind == "admin" else None)
            try:
                p.start(timeout=20)
            except RuntimeError:
                pass  # it may stop before its admin API answers: that is the point
            try:
                p.proc.wait(20)
            except subprocess.TimeoutExpired:
                p.stop()
                raise AssertionError(f"{kind}: the gateway kept running without its listener")
            log = p.log_text()
            # Bound before twistd daemonizes (hoopy.listen): one line naming the key, status 1.
            key = "gateway.admin_listen" if kind == "admin" else f"connections.c{kind}.listen"
            assert p.proc.returncode == 1, (kind, log[-2000:])
            assert f"hoopy: {key} = 'tcp:{port}" in log and "cannot listen" in log, (kind, log[-2000:])
            assert "Traceback" not in log
        finally:
            sock.close()
