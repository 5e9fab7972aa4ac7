"""Listeners that cannot bind, upstream reachability and quiet logs, on real
``twistd hoopy`` processes with real peers (issue 15, 1: misconfiguration never fails open)."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time

import pytest

from tests.support import TWISTD, HoopyProcess, free_port, ident, wait_ssh_listener
from tests.test_ssh import Sshd, connection_toml, grant, keygen

AGENT = ident("fc-agent")


def held_port(family=socket.AF_INET, host="127.0.0.1"):
    """A port some other process listens on (the test holds it)."""
    s = socket.socket(family, socket.SOCK_STREAM)
    s.bind((host, 0))
    s.listen()
    return s, s.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on."""
    return free_port()


def conn_toml(kind: str, name: str, listen: str, tmp_path, upstream_port: int | None = None) -> str:
    up = upstream_port or closed_port()
    if kind == "postgres":
        return f"""
[connections.{name}]
type = "postgres"
listen = "{listen}"
upstream = "tcp:host=127.0.0.1:port={up}"
upstream_user = "postgres"
upstream_tls = "disable"
"""
    if kind == "http":
        return f"""
[connections.{name}]
type = "http"
listen = "{listen}"
upstream = "http://127.0.0.1:{up}"
"""
    if kind == "mcp":
        return f"""
[connections.{name}]
type = "mcp"
listen = "{listen}"
upstream = "http://127.0.0.1:{up}/mcp"
"""
    if kind == "ssh":
        key = tmp_path / "gw_key"
        if not key.exists():
            keygen(key)
        kh = tmp_path / "kh"
        kh.write_text(f"[127.0.0.1]:{up} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n")
        return f"""
[connections.{name}]
type = "ssh"
listen = "{listen}"
upstream = "tcp:host=127.0.0.1:port={up}"
upstream_user = "root"
upstream_key = "file:{key}"
upstream_known_hosts = "file:{kh}"
"""
    raise AssertionError(kind)


def run_twistd(proc: HoopyProcess, daemon=False, timeout=60):
    args = [TWISTD, "-n", "--pidfile=", "hoopy", "-c", str(proc.config)]
    if daemon:
        args = [TWISTD, "--pidfile", str(proc.workdir / "h.pid"), "--logfile", str(proc.workdir / "h.log"),
                "hoopy", "-c", str(proc.config)]
    return subprocess.run(args, cwd=proc.workdir, env=proc.env, capture_output=True, text=True, timeout=timeout)


def one_line(r, key: str, why: str):
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    out = (r.stdout + r.stderr).strip()
    assert "Traceback" not in out, out
    lines = out.splitlines()
    assert len(lines) == 1, out
    assert key in lines[0] and why in lines[0], out


@pytest.mark.parametrize("kind", ["postgres", "http", "mcp", "ssh", "admin"])
@pytest.mark.parametrize("daemon", [False, True])
def test_a_listener_that_cannot_bind_is_one_line_and_status_1(tmp_path, kind, daemon):
    holder, port = held_port()
    try:
        listen = f"tcp:{port}:interface=127.0.0.1"
        if kind == "admin":
            other = free_port()
            body = AGENT.toml() + conn_toml("http", "api", f"tcp:{other}:interface=127.0.0.1", tmp_path)
            p = HoopyProcess(tmp_path, body, admin_port=port)
            key = "gateway.admin_listen"
        else:
            body = AGENT.toml() + conn_toml(kind, "c1", listen, tmp_path)
            p = HoopyProcess(tmp_path, body)
            key, other = "connections.c1.listen", p.admin_port
        t0 = time.monotonic()
        r = run_twistd(p, daemon=daemon)
        one_line(r, f"{key} = '{listen}'", "Address already in use")
        assert time.monotonic() - t0 < 30
        assert not (tmp_path / "h.pid").exists()
        # Nothing was left listening: the gateway's other ports are free again.
        with socket.socket() as s:
            s.bind(("127.0.0.1", other))
    finally:
        holder.close()


def test_an_address_not_on_this_host_and_a_later_listener(tmp_path):
    """Cannot assign the address (an interface this host does not have), on the second of
    several listeners: the first ones bound are released, the line names the right key."""
    good = f"tcp:{free_port()}:interface=127.0.0.1"
    body = (AGENT.toml() + conn_toml("http", "first", good, tmp_path)
            + conn_toml("postgres", "second", f"tcp:{free_port()}:interface=192.0.2.1", tmp_path))
    p = HoopyProcess(tmp_path, body)
    r = run_twistd(p)
    one_line(r, "connections.second.listen", "Cannot assign requested address")
    port = int(good.split(":")[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # released


def _without_bind_capability():
    """A prefix that runs a command without CAP_NET_BIND_SERVICE (root keeps file access)."""
    if not os.path.exists("/proc/sys/net/ipv4/ip_unprivileged_port_start"):
        return None
    if int(open("/proc/sys/net/ipv4/ip_unprivileged_port_start").read()) <= 81:
        return None
    if os.geteuid() != 0:
        return []  # an ordinary user has no such capability to begin with
    return ["setpriv", "--bounding-set", "-net_bind_service", "--inh-caps", "-net_bind_service"]


@pytest.mark.parametrize("kind", ["http", "postgres", "admin"])
def test_a_privileged_port_without_permission(tmp_path, kind):
    """A port below 1024 for a gateway without the right to bind it: one line, status 1."""
    prefix = _without_bind_capability()
    if prefix is None:
        pytest.skip("every port is unprivileged on this host")
    other = f"tcp:{free_port()}:interface=127.0.0.1"
    if kind == "admin":
        p = HoopyProcess(tmp_path, AGENT.toml() + conn_toml("http", "web", other, tmp_path), admin_port=81)
        key = "gateway.admin_listen = 'tcp:81:interface=127.0.0.1'"
    else:
        p = HoopyProcess(tmp_path, AGENT.toml() + conn_toml(kind, "web", "tcp:81:interface=127.0.0.1", tmp_path))
        key = "connections.web.listen = 'tcp:81:interface=127.0.0.1'"
    r = subprocess.run([*prefix, TWISTD, "-n", "--pidfile=", "hoopy", "-c", str(p.config)],
                       cwd=tmp_path, env=p.env, capture_output=True, text=True, timeout=60)
    one_line(r, key, "Permission denied")


def test_all_protocols_listen_on_their_bound_sockets(tmp_path, hoopy_gateway):
    """The sockets bound before daemonizing are the ones that serve: each protocol answers."""
    ports = {k: free_port() for k in ("postgres", "http", "mcp", "ssh")}
    body = AGENT.toml() + "".join(conn_toml(k, k, f"tcp:{p}:interface=127.0.0.1", tmp_path)
                                  for k, p in ports.items())
    gw = hoopy_gateway(body)
    wait_ssh_listener(ports["ssh"])
    with socket.create_connection(("127.0.0.1", ports["ssh"]), 5) as s:
        assert s.recv(64).startswith(b"SSH-2.0-hoopy")
    import urllib.request
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as e:  # no token: the gateway's own 401
        urllib.request.urlopen(f"http://127.0.0.1:{ports['http']}/x", timeout=5)
    assert e.value.code == 401
    r = subprocess.run(["psql", f"host=127.0.0.1 port={ports['postgres']} user=nobody dbname=x", "-XAtc", "select 1"],
                       capture_output=True, text=True, timeout=30, env={**os.environ, "PGPASSWORD": "wrong"})
    assert r.returncode != 0 and "password authentication failed" in r.stderr
    assert "Starting factory" not in gw.log_text() and "Stopping factory" not in gw.log_text()


def _wait(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    return cond()


def test_health_and_metrics_report_each_upstream(tmp_path, hoopy_gateway):
    """Reachability from the probe and from real sessions; a failure is a warning naming the
    connection; no factory start/stop lines in the log."""
    sshd = Sshd(tmp_path / "sshd").start()
    try:
        wrong_kh = tmp_path / "wrong_kh"
        wrong_kh.write_text(f"[127.0.0.1]:{sshd.port} {keygen(tmp_path / 'someone_else')}\n")
        agent_key = tmp_path / "agent_key"
        agent_pub = keygen(agent_key)
        pg_port, web_port, closed = free_port(), free_port(), closed_port()
        ssh_toml, ssh_port = connection_toml(sshd, name="box", known_hosts=wrong_kh)
        body = (AGENT.toml(ssh_keys=[agent_pub])
                + conn_toml("postgres", "pg", f"tcp:{pg_port}:interface=127.0.0.1", tmp_path, upstream_port=5432)
                + conn_toml("http", "web", f"tcp:{web_port}:interface=127.0.0.1", tmp_path, upstream_port=closed)
                + ssh_toml
                + f'\n[connections.tools]\ntype = "mcp"\nlisten = "tcp:{free_port()}:interface=127.0.0.1"\n'
                  'command = ["/bin/true"]\n'
                + grant(AGENT.name, ["read"], connection="pg") + grant(AGENT.name, ["GET /**"], connection="web")
                + grant(AGENT.name, ["exec *"], connection="box"))
        gw = hoopy_gateway(body)

        def ups():
            status, h = gw.get("/health")
            return status, h["upstreams"], h
        assert _wait(lambda: ups()[1]["pg"]["reachable"] is True and ups()[1]["web"]["reachable"] is False
                     and ups()[1]["box"]["reachable"] is True), ups()[1]  # (what each said, when it fails)
        status, up, health = ups()
        assert status == 200 and health["store_writable"] is True and health["store"] == "ok"
        assert up["web"]["checked_by"] == "probe" and "refused" in up["web"]["last_error"].lower()
        assert up["web"]["checked_at"].endswith("Z") and up["pg"]["last_error"] is None
        assert up["tools"]["reachable"] is None and "local command" in up["tools"]["note"]
        _, metrics = gw.get("/metrics")
        assert b'hoopy_upstream_up{connection="pg"} 1.0' in metrics
        assert b'hoopy_upstream_up{connection="web"} 0.0' in metrics
        assert _wait(lambda: re.search(r"#warn\] web: upstream http://127\.0\.0\.1:\d+ unreachable", gw.log_text()))

        # Real sessions report too: a psql session, an HTTP request, an SSH login refused upstream.
        r = subprocess.run(["psql", f"host=127.0.0.1 port={pg_port} user={AGENT.name} dbname=postgres", "-XAtc",
                            "select 1"], capture_output=True, text=True, timeout=30,
                           env={**os.environ, "PGPASSWORD": AGENT.token})
        assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
        assert _wait(lambda: ups()[1]["pg"]["checked_by"] == "session")
        import urllib.error
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{web_port}/x",
                                     headers={"Authorization": f"Bearer {AGENT.token}"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=20)
        assert e.value.code in (502, 503, 504)
        assert _wait(lambda: ups()[1]["web"]["checked_by"] == "session")
        wait_ssh_listener(ssh_port)
        r = subprocess.run(["ssh", "-p", str(ssh_port), "-i", str(agent_key), "-o", "StrictHostKeyChecking=no",
                            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-F", "/dev/null",
                            f"{AGENT.name}@127.0.0.1", "true"], capture_output=True, text=True, timeout=30)
        assert r.returncode != 0
        box = _wait(lambda: ups()[1]["box"] if ups()[1]["box"]["checked_by"] == "session" else None)
        assert box["reachable"] is True and "upstream_known_hosts" in box["last_error"]
        assert re.search(r"#warn\] box: upstream \S+ refused the gateway: the upstream host key", gw.log_text())
    finally:
        sshd.stop()
    gw.stop()
    log = gw.log_text()
    assert "Starting factory" not in log and "Stopping factory" not in log, log
