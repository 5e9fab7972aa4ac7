"""Attacks on the gateway's event loop (hoopy/eventloop.py): what runs on the standard library's
loop must run the same on uvloop, with real peers through a real ``twistd hoopy``. Each test runs
on both loops (HOOPY_EVENT_LOOP), so a difference shows as one side failing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support import HoopyProcess, ident, pg_connection
from tests.test_ssh import CLIENT_OPTS, Sshd, connection_toml, grant, keygen

pytest.importorskip("uvloop")

LOOPS = ["asyncio", "uvloop"]


def _initialize(port: int, token: str) -> None:
    """An MCP initialize through the gateway: its stdio server is started and answered."""
    import json
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/mcp", method="POST", data=json.dumps({
        "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    }).encode(), headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                          "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=15) as r:
        assert r.status == 200


def _rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def ssh_world(tmp_path):
    made = []

    def make(loop, allow):
        sshd = Sshd(tmp_path / "sshd").start()
        key = tmp_path / "agent_key"
        pub = keygen(key)
        agent = ident("agent")
        conn, port = connection_toml(sshd)
        gw = HoopyProcess(tmp_path, agent.toml(ssh_keys=[pub]) + conn + grant("agent", allow),
                          env={"HOOPY_EVENT_LOOP": loop}).start()
        made.append((gw, sshd))
        argv = ["ssh", "-p", str(port), "-i", str(key), *CLIENT_OPTS, "agent@127.0.0.1"]
        return gw, port, key, argv

    yield make
    for gw, sshd in made:
        try:
            gw.stop()
        finally:
            sshd.stop()



# --- SSH: asyncssh on the loop's own transports --------------------------------------------------

@pytest.mark.parametrize("loop", LOOPS)
def test_ssh_output_to_a_client_that_stops_reading_is_held_back_not_buffered(ssh_world, loop):
    """On uvloop the relay writes with the transport's writelines and is told to pause by uvloop's
    flow control: a client that reads nothing for a while must not make the gateway hold the
    upstream's output in memory, and gets all of it once it reads again."""
    gw, port, key, argv = ssh_world(loop, ["exec head -c 300000000 /dev/zero"])
    before = _rss_mib(gw.proc.pid)
    p = subprocess.Popen(argv + ["head -c 300000000 /dev/zero"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(1)
        os.kill(p.pid, signal.SIGSTOP)
        time.sleep(3)
        held = _rss_mib(gw.proc.pid)
        os.kill(p.pid, signal.SIGCONT)
        n = 0
        while chunk := p.stdout.read(1 << 20):
            n += len(chunk)
        p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
    assert n == 300_000_000
    assert held - before < 64, (before, held)  # (measured: 6-8 MiB on either loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_sigterm_with_ssh_commands_running_ends_and_records_every_session(ssh_world, loop):
    gw, port, key, argv = ssh_world(loop, ["exec sleep *"])
    clients = [subprocess.Popen(argv + ["sleep 60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    try:
        deadline = time.monotonic() + 20
        while len(gw.events("ssh.exec")) + len(gw.events("session.start")) < 4:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)
        assert gw.stop(signal.SIGTERM) == -signal.SIGTERM
        for c in clients:
            _, err = c.communicate(timeout=20)
            assert c.returncode == 255 and b"gateway shutdown" in err, err
    finally:
        for c in clients:
            if c.poll() is None:
                c.kill()
    assert [e["data"]["reason"] for e in gw.events("session.end")] == ["gateway shutdown"] * 4
    assert "Traceback" not in gw.log_text()

# --- HOOPY_EVENT_LOOP where the reactor was chosen by someone else, and in `hoopy check` ---------

def _config(tmp_path):
    (tmp_path / "hoopy.toml").write_text('[gateway]\nstate = "hoopy.db"\n')
    return tmp_path / "hoopy.toml"


@pytest.mark.parametrize("value", ["libev", "uvloop"])
def test_twistd_r_asyncio_does_not_bypass_the_choice(tmp_path, value):
    """``-r asyncio`` is accepted (docs/operators.md), and twistd installs its reactor, on the
    standard library's loop, before hoopy's options are read: a wrong HOOPY_EVENT_LOOP was then
    not refused, and ``uvloop`` (required, "no fallback") ran the stdlib's loop quietly."""
    from tests.support import TWISTD

    _config(tmp_path)
    r = subprocess.run([TWISTD, "-r", "asyncio", "-n", "--pidfile=", "hoopy", "-c", "hoopy.toml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=20, env={**os.environ, "HOOPY_EVENT_LOOP": value})
    out = r.stdout + r.stderr
    assert r.returncode not in (0, None) and "HOOPY_EVENT_LOOP" in out and "not starting" in out, out[-2000:]
    assert "Traceback" not in out and not (tmp_path / "hoopy.db").exists()


@pytest.mark.parametrize("value", ["asyncio", ""])
def test_twistd_r_asyncio_starts_where_the_stdlib_loop_is_asked_for_or_nothing_is(tmp_path, value):
    from tests.support import TWISTD

    _config(tmp_path)
    with open(tmp_path / "log", "wb") as log:
        p = subprocess.Popen([TWISTD, "-r", "asyncio", "-n", "--pidfile=", "hoopy", "-c", "hoopy.toml"], cwd=tmp_path,
                             stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HOOPY_EVENT_LOOP": value})
        try:
            deadline = time.monotonic() + 20
            while "hoopy gateway" not in (tmp_path / "log").read_text() and p.poll() is None:
                assert time.monotonic() < deadline, (tmp_path / "log").read_text()
                time.sleep(0.05)
        finally:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            p.wait(20)
    text = (tmp_path / "log").read_text()
    assert "event loop: asyncio" in text and "started" in text and "Traceback" not in text, text


NO_UVLOOP = """
import sys
class _NoUvloop:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "uvloop":
            raise ImportError("uvloop kept out by the test")
sys.meta_path.insert(0, _NoUvloop())
"""


@pytest.mark.parametrize("connect", [False, True])
def test_hoopy_check_refuses_what_the_gateway_would_refuse(tmp_path, connect):
    """``hoopy check`` said ok (and ``--connect`` died with a traceback) for a HOOPY_EVENT_LOOP on
    which the gateway does not start."""
    _config(tmp_path)
    (tmp_path / "nouv").mkdir()
    (tmp_path / "nouv" / "sitecustomize.py").write_text(NO_UVLOOP)
    no_uvloop = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "nouv"), os.environ.get("PYTHONPATH", "")])}
    for env, why in (({"HOOPY_EVENT_LOOP": "libev"}, "must be one of"),
                     ({"HOOPY_EVENT_LOOP": "uvloop", **no_uvloop}, "cannot be imported")):
        r = subprocess.run([sys.executable, "-m", "hoopy", "check", *(["--connect"] if connect else []),
                            "-c", "hoopy.toml"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                           env={**os.environ, **env})
        out = r.stdout + r.stderr
        assert r.returncode == 2, out
        assert "HOOPY_EVENT_LOOP" in out and why in out and "Traceback" not in out, out
    for env in ({"HOOPY_EVENT_LOOP": " UVLOOP "}, {"HOOPY_EVENT_LOOP": ""}, no_uvloop):  # (unset: falls back)
        r = subprocess.run([sys.executable, "-m", "hoopy", "check", "-c", "hoopy.toml"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60, env={**os.environ, **env})
        assert r.returncode == 0, r.stdout + r.stderr


# --- child processes -----------------------------------------------------------------------------

DAEMONIZING_MCP = r"""
import json, os, sys, time
for line in sys.stdin:
    m = json.loads(line)
    if "id" in m:
        r = {"protocolVersion": m["params"]["protocolVersion"], "capabilities": {"tools": {}},
             "serverInfo": {"name": "d", "version": "1"}} if m.get("method") == "initialize" else {}
        print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
# Told to stop (stdin closed): it leaves a daemon behind that still holds its stdout and stderr.
if os.fork() == 0:
    os.setsid()
    with open(sys.argv[1], "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)
os._exit(0)
"""


@pytest.mark.parametrize("loop", LOOPS)
def test_a_stdio_mcp_server_that_daemonizes_does_not_hold_the_gateway_at_stop(tmp_path, loop):
    """The server exits, but a process it started keeps its stdout and stderr: Twisted reports the
    child's end only when those pipes close, and the gateway, waiting for it at SIGTERM, stopped
    only when the daemon did (on both loops)."""

    from tests.support import free_port

    agent, port = ident("agent"), free_port()
    (tmp_path / "d.py").write_text(DAEMONIZING_MCP)
    pidfile = tmp_path / "daemon.pid"
    gw = HoopyProcess(tmp_path, agent.toml(scram=False) + f'''
[connections.tools]
type = "mcp"
listen = "tcp:{port}:interface=127.0.0.1"
command = ["{sys.executable}", "{tmp_path / 'd.py'}", "{pidfile}"]

[[grants]]
identity = "agent"
connection = "tools"
allow = ["tool *"]
''', env={"HOOPY_EVENT_LOOP": loop}).start()
    try:
        _initialize(port, agent.token)  # (the stdio server started)
        t0 = time.monotonic()
        assert gw.stop(signal.SIGTERM, timeout=30) == -signal.SIGTERM
        assert time.monotonic() - t0 < 12  # (stdin closed, TERM at 2 s, KILL at 5 s: then its pipes)
        assert pidfile.exists()  # (the daemon was made: this test did what it says)
        ends = gw.events("session.end")
        assert [e["data"]["reason"] for e in ends] == ["gateway shutdown"], ends
        assert "Traceback" not in gw.log_text()
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("loop", LOOPS)
def test_a_daemonized_gateway_relays_ssh_and_stops(tmp_path, loop):
    """twistd without -n forks to daemonize after hoopy made the loop (libuv's, on uvloop) and bound
    its listeners; the suite's gateways all run with -n. The daemon relays SSH (uvloop's own
    transports) and stops on SIGTERM."""
    from tests.support import TWISTD

    sshd = Sshd(tmp_path / "sshd").start()
    try:
        key = tmp_path / "agent_key"; pub = keygen(key)
        agent = ident("agent")
        conn, port = connection_toml(sshd)
        gw = HoopyProcess(tmp_path, agent.toml(ssh_keys=[pub]) + conn + grant("agent", ["exec echo *", "exec head *"]),
                          env={"HOOPY_EVENT_LOOP": loop})
        r = subprocess.run([TWISTD, "--pidfile", "gw.pid", "--logfile", "gw.log", "hoopy", "-c", str(gw.config)],
                           cwd=tmp_path, env=gw.env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        gw.wait_ssh(port)
        argv = ["ssh", "-p", str(port), "-i", str(key), *CLIENT_OPTS, "agent@127.0.0.1"]
        out = [subprocess.run(argv + [f"echo hi {i}"], capture_output=True, text=True, timeout=30) for i in range(5)]
        big = subprocess.run(argv + ["head -c 20000000 /dev/zero"], capture_output=True, timeout=60)
        pid = int((tmp_path / "gw.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(pid):
            assert time.monotonic() < deadline, "the daemon did not stop on SIGTERM"
            time.sleep(0.05)
        log = (tmp_path / "gw.log").read_text()
        assert [o.stdout for o in out] == [f"hi {i}\n" for i in range(5)], (out[0].stderr, log[-3000:])
        assert len(big.stdout) == 20000000 and "Traceback" not in log
    finally:
        sshd.stop()


# --- SIGHUP ---------------------------------------------------------------------------------------

def _start_twistd(tmp_path, loop, hup):
    """``twistd -n hoopy`` with SIGHUP's disposition as given (SIG_DFL, or SIG_IGN as under nohup)."""
    from tests.support import TWISTD

    from tests.support import free_port

    port, agent = free_port(), ident("agent")
    (tmp_path / "hoopy.toml").write_text('[gateway]\nstate = "hoopy.db"\n' + agent.toml()
                                         + pg_connection(port, "postgres")
                                         + '\n[[grants]]\nidentity = "agent"\nconnection = "pg"\nallow = ["read"]\n')
    log = open(tmp_path / "log", "wb")
    p = subprocess.Popen([TWISTD, "-n", "--pidfile=", "hoopy", "-c", "hoopy.toml"], cwd=tmp_path, stdout=log,
                         stderr=subprocess.STDOUT, env={**os.environ, "HOOPY_EVENT_LOOP": loop},
                         preexec_fn=lambda: signal.signal(signal.SIGHUP, hup))
    log.close()
    deadline = time.monotonic() + 20
    while "hoopy gateway" not in (tmp_path / "log").read_text():
        assert p.poll() is None and time.monotonic() < deadline, (tmp_path / "log").read_text()
        time.sleep(0.05)
    dsn = f"host=127.0.0.1 port={port} user=agent password={agent.token} dbname=postgres sslmode=disable"
    return p, dsn


@pytest.mark.parametrize("loop", LOOPS)
def test_a_hang_up_stops_the_gateway_as_sigterm_does(tmp_path, loop):
    """SIGHUP (the terminal of a ``twistd -n`` closed) killed the gateway where it stood, on both
    loops: no session's end on the record, recordings not sealed."""
    import psycopg

    from hoopy.audit.store import SQLiteReader

    p, dsn = _start_twistd(tmp_path, loop, signal.SIG_DFL)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            p.send_signal(signal.SIGHUP)
            assert p.wait(20) == -signal.SIGHUP
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    text = (tmp_path / "log").read_text()
    assert "Server Shut Down" in text and "Traceback" not in text, text[-3000:]
    assert "Received SIGHUP" in text, text[-3000:]  # (the log says which signal stopped it)
    r = SQLiteReader(tmp_path / "hoopy.db")
    try:
        ends = [e for e in r.events() if e["kind"] == "session.end"]
    finally:
        r.close()
    assert len(ends) == 1


def test_a_hang_up_is_still_ignored_under_nohup(tmp_path):
    p, dsn = _start_twistd(tmp_path, "uvloop", signal.SIG_IGN)
    try:
        p.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert p.poll() is None
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == -signal.SIGTERM


STUBBORN_MCP = r"""
import json, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)  # (and stays after stdin closes: KILL at 5 s ends it)
for line in sys.stdin:
    m = json.loads(line)
    if "id" in m:
        r = {"protocolVersion": m["params"]["protocolVersion"], "capabilities": {"tools": {}},
             "serverInfo": {"name": "s", "version": "1"}} if m.get("method") == "initialize" else {}
        print(json.dumps({"jsonrpc": "2.0", "id": m["id"], "result": r}), flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("loop", LOOPS)
def test_a_second_signal_while_stopping_is_noted_not_a_traceback(tmp_path, loop):
    """An operator's second Ctrl-C (or a SIGTERM, a hang-up) while the gateway waits for a child to
    stop: Twisted's handler stopped the reactor again and logged ReactorNotRunning, on both loops."""

    from tests.support import free_port

    agent, port = ident("agent"), free_port()
    (tmp_path / "s.py").write_text(STUBBORN_MCP)
    gw = HoopyProcess(tmp_path, agent.toml(scram=False) + f'''
[connections.tools]
type = "mcp"
listen = "tcp:{port}:interface=127.0.0.1"
command = ["{sys.executable}", "{tmp_path / 's.py'}"]

[[grants]]
identity = "agent"
connection = "tools"
allow = ["tool *"]
''', env={"HOOPY_EVENT_LOOP": loop}).start()
    _initialize(port, agent.token)  # (the stdio server started)
    gw.proc.send_signal(signal.SIGTERM)
    time.sleep(1)
    assert gw.proc.poll() is None  # (waiting for the child: KILL at 5 s)
    gw.proc.send_signal(signal.SIGINT)
    gw.proc.send_signal(signal.SIGHUP)
    assert gw.proc.wait(20) == -signal.SIGTERM  # (the first signal's status)
    log = gw.log_text()
    assert "Traceback" not in log and "ReactorNotRunning" not in log, log[-3000:]
    assert "stopping already" in log
    assert [e["data"]["reason"] for e in gw.events("session.end")] == ["gateway shutdown"]
