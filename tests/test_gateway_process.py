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
