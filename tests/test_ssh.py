"""The SSH gateway against a real OpenSSH sshd, through a real twistd gateway,
with the real ssh, scp and sftp clients."""
from __future__ import annotations

import json
import sys
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support import free_port, ident, wait_ssh_listener

SSHD = "/usr/sbin/sshd"
CLIENT_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
               "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-F", "/dev/null"]


UPSTREAM_LOGIN = "hoopy-upstream"


def upstream_login() -> str:
    """The account the gateway logs in as upstream.

    root's own login shell here is bash, which runs ~/.bashrc on every ssh
    login (pyenv init: a rehash behind a lock it waits up to 60 s for, and a
    shell killed mid-rehash leaves that lock behind). So the tests use a
    second uid-0 account whose shell is /bin/sh with no rc files, created
    once; if that cannot be made they fall back to root.
    """
    import pwd

    try:
        pwd.getpwnam(UPSTREAM_LOGIN)
        return UPSTREAM_LOGIN
    except KeyError:
        pass
    if os.geteuid() == 0:
        subprocess.run(["useradd", "-o", "-u", "0", "-g", "0", "-M", "-d", "/", "-s", "/bin/sh",
                        "-p", "*", UPSTREAM_LOGIN], capture_output=True)
        try:
            pwd.getpwnam(UPSTREAM_LOGIN)
            return UPSTREAM_LOGIN
        except KeyError:
            pass
    return "root"


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True)
    return path.with_suffix(".pub").read_text().strip()


class Sshd:
    """A real OpenSSH server on a free port, with its own config, keys and authorized_keys."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = upstream_login()
        self.host_key = self.root / "ssh_host_ed25519_key"
        self.host_pub = keygen(self.host_key)
        self.client_key = self.root / "gateway_key"  # what the gateway logs in with
        (self.root / "authorized_keys").write_text(keygen(self.client_key) + "\n")
        self.known_hosts = self.root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.host_pub}\n")
        self.config = self.root / "sshd_config"
        self.config.write_text(f"""\
Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.host_key}
AuthorizedKeysFile {self.root}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
PermitRootLogin yes
StrictModes no
PidFile none
AcceptEnv LANG HOOPY_TEST_*
AllowTcpForwarding yes
Subsystem sftp internal-sftp
LogLevel VERBOSE
MaxStartups 500
MaxSessions 500
""")
        self.log = self.root / "sshd.log"
        self.proc = None

    def start(self):
        os.makedirs("/run/sshd", exist_ok=True)
        self._logf = open(self.log, "ab")
        # Its own process group: killing it kills the per-connection sshd children too.
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)],
                                     stdout=self._logf, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ssh_listener(self.port, b"SSH-2.0-OpenSSH", alive=self._alive)
        return self

    def _alive(self):
        if self.proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {self.log.read_text()}")

    def kill(self):
        """Kill sshd and every sshd it forked (an upstream host that dies mid-session)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        # Only the sshd processes: the session's shell then gets its hangup as on a real
        # crash (a SIGKILLed login shell can leave locks behind, e.g. pyenv's rehash lock).
        pids = [self.proc.pid, *(p for p in _descendants(self.proc.pid) if _comm(p) == "sshd")]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()

    def stop(self):
        self.kill()
        if getattr(self, "_logf", None):
            self._logf.close()


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), ()):
            out.append(c)
            todo.append(c)
    return out


@pytest.fixture
def sshd(tmp_path):
    s = Sshd(tmp_path / "sshd").start()
    yield s
    s.stop()


@pytest.fixture
def agent_key(tmp_path):
    path = tmp_path / "agent_key"
    return path, keygen(path)


def connection_toml(sshd: Sshd, name="web", port=None, known_hosts=None, extra="") -> tuple[str, int]:
    port = port or free_port()
    return f"""
[connections.{name}]
type = "ssh"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "tcp:host=127.0.0.1:port={sshd.port}"
upstream_user = "{sshd.user}"
upstream_key = "file:{sshd.client_key}"
upstream_known_hosts = "file:{known_hosts or sshd.known_hosts}"
{extra}
""", port


def grant(identity, allow=(), approve=(), deny=(), connection="web") -> str:
    q = lambda xs: "[" + ", ".join(json.dumps(x) for x in xs) + "]"  # noqa: E731
    return (f'\n[[grants]]\nidentity = "{identity}"\nconnection = "{connection}"\n'
            f"allow = {q(allow)}\napprove = {q(approve)}\ndeny = {q(deny)}\n")


class Setup:
    def __init__(self, gw, port, key, agent, reviewer, sshd, tmp):
        self.gw, self.port, self.key, self.agent, self.reviewer = gw, port, key, agent, reviewer
        self.sshd = sshd
        self.tmp = tmp

    def ssh_args(self, *args, user=None, key=None):
        return ["ssh", "-p", str(self.port), "-i", str(key or self.key), *CLIENT_OPTS, *args,
                f"{user or self.agent.name}@127.0.0.1"]

    def ssh(self, command, *args, user=None, key=None, input=None, timeout=30):
        argv = self.ssh_args(*args, user=user, key=key)
        if command is not None:
            argv.append(command)
        return subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)

    def sessions(self):
        return self.gw.events("session.start")


@pytest.fixture
def setup(hoopy_gateway, sshd, agent_key, tmp_path):
    """A gateway with one ssh connection; make(allow=..., approve=...) starts it."""

    def make(allow=(), approve=(), deny=(), extra="", known_hosts=None, approval_timeout="20s"):
        key, pub = agent_key
        agent, reviewer = ident("agent"), ident("alice")
        conn, port = connection_toml(sshd, known_hosts=known_hosts, extra=extra)
        body = (agent.toml(ssh_keys=[pub]) + reviewer.toml(kind="human", roles=["reviewer"])
                + conn + grant("agent", allow, approve, deny))
        gw = hoopy_gateway(body, approval_timeout=approval_timeout)  # (its ssh listener answers: support.py)
        return Setup(gw, port, key, agent, reviewer, sshd, tmp_path)

    return make


def exec_events(gw):
    return [e for e in gw.events("ssh.exec")]


# --- exec ----------------------------------------------------------------------------

def test_allowed_exec_returns_output_and_exit_status(setup):
    s = setup(allow=["exec echo *", "exec ls *", "exec false"])
    r = s.ssh("echo hello through hoopy")
    assert (r.returncode, r.stdout) == (0, "hello through hoopy\n"), r.stderr
    r = s.ssh("false")
    assert r.returncode == 1
    r = s.ssh("ls /nonexistent-hoopy")
    assert r.returncode == 2 and "nonexistent-hoopy" in r.stderr

    evs = exec_events(s.gw)
    assert [e["data"]["command"] for e in evs] == ["echo hello through hoopy", "false", "ls /nonexistent-hoopy"]
    assert [e["data"]["exit_status"] for e in evs] == [0, 1, 2]
    assert evs[0]["data"]["output"] == "hello through hoopy\n"
    assert evs[0]["data"]["bytes_out"] == len("hello through hoopy\n")
    ops = s.gw.events("operation")
    assert [o["outcome"] for o in ops] == ["allowed"] * 3
    # Each operation is recorded before its result.
    assert ops[0]["seq"] < evs[0]["seq"]


def test_exec_output_bound_is_configurable(setup):
    s = setup(allow=["exec head -c 5000 /dev/zero"], extra='exec_output_limit = "1KiB"')
    r = subprocess.run(s.ssh_args() + ["head -c 5000 /dev/zero"], capture_output=True, timeout=30)
    assert r.returncode == 0 and len(r.stdout) == 5000  # the client gets all of it
    (ev,) = exec_events(s.gw)
    assert len(ev["data"]["output"]) == 1024 and ev["data"]["output_truncated"] is True
    assert ev["data"]["bytes_out"] == 5000


def test_refused_and_smuggled_commands_never_run_upstream(setup, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    control = marks / "control"
    s = setup(allow=["exec echo *", f"exec touch {control}"])
    # The marker mechanism works: an allowed touch does create its file.
    assert s.ssh(f"touch {control}").returncode == 0 and control.exists()

    attempts = {
        "refused": f"touch {marks}/refused",
        "semicolon": f"echo a; touch {marks}/semicolon",
        "and": f"echo a && touch {marks}/and",
        "or": f"echo a || touch {marks}/or",
        "subst": f"echo $(touch {marks}/subst)",
        "backtick": f"echo `touch {marks}/backtick`",
        "newline": f"echo a\ntouch {marks}/newline",
        "pipe": f"echo a | tee {marks}/pipe",
        "redirect": f"echo a > {marks}/redirect",
        "background": f"echo a & touch {marks}/background",
    }
    for name, cmd in attempts.items():
        r = s.ssh(cmd)
        assert r.returncode == 126, (name, r)
        assert "hoopy: refused:" in r.stderr and r.stdout == "", (name, r)
    time.sleep(0.3)
    assert sorted(p.name for p in marks.iterdir()) == ["control"]
    refused = s.gw.events("operation")
    assert sum(1 for e in refused if e["outcome"] == "refused") == len(attempts)
    # sshd never saw a command it was not allowed to run.
    log = s.sshd.log.read_text()
    assert "semicolon" not in log and "subst" not in log


def test_held_command_runs_after_approve_and_not_after_deny(setup, tmp_path):
    ok, no = tmp_path / "approved", tmp_path / "denied"
    s = setup(approve=["exec touch *"])

    p = subprocess.Popen(s.ssh_args() + [f"touch {ok}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (row,) = s.gw.wait_pending(s.reviewer.token)
    assert not ok.exists()
    r = s.gw.hoopy("approve", row["id"], token=s.reviewer.token)
    assert r.returncode == 0, r.stderr
    out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert row["id"] in err and "held for approval" in err
    assert ok.exists()

    # The requester cannot approve its own request.
    p = subprocess.Popen(s.ssh_args() + [f"touch {no}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (row,) = s.gw.wait_pending(s.reviewer.token)
    assert s.gw.hoopy("approve", row["id"], token=s.agent.token).returncode == 1
    r = s.gw.hoopy("deny", row["id"], "--reason", "not today", token=s.reviewer.token)
    assert r.returncode == 0, r.stderr
    out, err = p.communicate(timeout=20)
    assert p.returncode == 126
    assert "not today" in err
    assert not no.exists()


def test_held_command_times_out_as_refused(setup, tmp_path):
    s = setup(approve=["exec touch *"], approval_timeout="3s")
    t0 = time.monotonic()
    r = s.ssh(f"touch {tmp_path}/never")
    assert r.returncode == 126 and "timed out" in r.stderr
    assert 2.5 < time.monotonic() - t0 < 15
    assert not (tmp_path / "never").exists()


# --- authentication ------------------------------------------------------------------

def test_unknown_user_and_wrong_key_are_refused_alike(setup, tmp_path):
    s = setup(allow=["exec echo *"])
    other = tmp_path / "other_key"
    keygen(other)
    wrong_key = s.ssh("echo hi", key=other)
    unknown_user = s.ssh("echo hi", user="mallory")
    assert wrong_key.returncode == unknown_user.returncode == 255
    assert "Permission denied (publickey)" in wrong_key.stderr
    assert wrong_key.stderr.replace("agent@", "X@") == unknown_user.stderr.replace("mallory@", "X@")
    time.sleep(0.5)
    fails = s.gw.events("auth.failed")
    assert sorted(e["data"]["user"] for e in fails) == ["agent", "mallory"]
    assert not s.gw.events("session.start")


def test_unknown_upstream_host_key_refuses_with_a_message(setup, sshd, tmp_path):
    kh = tmp_path / "wrong_known_hosts"
    kh.write_text(f"[127.0.0.1]:{sshd.port} {keygen(tmp_path / 'imposter')}\n")
    s = setup(allow=["exec echo *"], known_hosts=kh)
    r = s.ssh("echo hi")
    assert r.returncode == 255
    assert "host key" in r.stderr and "refused" in r.stderr
    assert r.stdout == ""
    time.sleep(0.5)
    (ev,) = s.gw.events("ssh.upstream")
    assert ev["outcome"] == "failed"


def test_unreachable_upstream_gives_a_message(hoopy_gateway, agent_key, tmp_path):
    dead = Sshd(tmp_path / "dead")  # configured, never started: nothing listens
    key, pub = agent_key
    agent = ident("agent")
    conn, port = connection_toml(dead)
    gw = hoopy_gateway(agent.toml(ssh_keys=[pub]) + conn + grant("agent", ["exec echo *"]))
    r = subprocess.run(["ssh", "-p", str(port), "-i", str(key), *CLIENT_OPTS, "agent@127.0.0.1", "echo hi"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 255 and "unreachable" in r.stderr
    # The gateway carries on.
    assert gw.get("/health")[0] == 200


# --- terminals, attribution, recordings -------------------------------------------------------

def test_interactive_session_is_recorded_and_verified(setup):
    s = setup(allow=["shell"])
    script = "echo typed-$((6*7))\nexit 0\n"
    r = s.ssh(None, "-tt", "-o", "SetEnv=HOOPY_MODEL=claude-test HOOPY_TOOL_CALL=call-7", input=script)
    assert r.returncode == 0, r.stderr
    assert "typed-42" in r.stdout

    (start,) = s.sessions()
    sid = start["session"]
    cast = s.gw.recordings / f"{sid}.cast"
    shown = subprocess.run(["asciinema", "cat", str(cast)], capture_output=True, text=True, check=True).stdout
    assert "echo typed-$((6*7))" in shown and "typed-42" in shown
    lines = cast.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2 and "agent on web" in header["title"]
    codes = {json.loads(line)[1] for line in lines[1:]}
    assert {"o", "i"} <= codes

    sessions = s.gw.hoopy("sessions")
    assert "claude-test" in sessions.stdout and "call-7" in sessions.stdout

    (sealed,) = s.gw.events("recording.sealed")
    assert sealed["data"]["path"] == cast.name
    replay = s.gw.hoopy("replay", sid, "--speed", "1000")
    assert replay.returncode == 0 and "typed-42" in replay.stdout, replay.stderr
    v = s.gw.hoopy("audit", "verify")
    assert v.returncode == 0, v.stdout + v.stderr
    data = bytearray(cast.read_bytes())
    data[len(data) // 2] ^= 0x01
    cast.write_bytes(bytes(data))
    v = s.gw.hoopy("audit", "verify")
    assert v.returncode == 1 and cast.name in (v.stdout + v.stderr)


def test_refused_shell_gets_a_message(setup):
    s = setup(allow=["exec echo *"])
    r = s.ssh(None, "-tt", input="echo never\n")
    assert r.returncode == 126
    assert "hoopy: refused" in r.stdout + r.stderr


def test_held_shell_marks_the_recording(setup):
    s = setup(approve=["shell"])
    p = subprocess.Popen(s.ssh_args("-tt"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    (row,) = s.gw.wait_pending(s.reviewer.token)
    assert s.gw.hoopy("approve", row["id"], token=s.reviewer.token).returncode == 0
    out, err = p.communicate("echo after-approval\nexit\n", timeout=30)
    assert p.returncode == 0 and "after-approval" in out
    (start,) = s.sessions()
    lines = (s.gw.recordings / f"{start['session']}.cast").read_text().splitlines()
    markers = [json.loads(line)[2] for line in lines[1:] if json.loads(line)[1] == "m"]
    assert markers == [f"approval {row['id']} requested", f"approval {row['id']} approved"]


def _wait_for_output(s, text, timeout=15):
    """The recording of the session's shell, once it shows ``text`` (as JSON-escaped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        starts = s.sessions()
        if starts:
            cast = s.gw.recordings / f"{starts[0]['session']}.cast"
            if cast.exists() and text in cast.read_text():
                return cast
        time.sleep(0.1)
    raise AssertionError(f"the shell never showed {text!r}")


def test_killed_upstream_leaves_a_sealed_recording(setup):
    s = setup(allow=["shell"])
    p = subprocess.Popen(s.ssh_args("-tt"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdin.write(b"echo before-the-crash\n")
    p.stdin.flush()
    cast = _wait_for_output(s, "before-the-crash\\r\\n")
    s.sshd.kill()
    out, err = p.communicate(timeout=30)
    assert p.returncode != 0
    assert b"upstream connection was lost" in out + err
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not s.gw.events("session.end"):
        time.sleep(0.1)
    (sealed,) = s.gw.events("recording.sealed")
    assert sealed["data"]["path"] == cast.name
    assert s.gw.events("session.end")
    v = s.gw.hoopy("audit", "verify")
    assert v.returncode == 0, v.stdout + v.stderr
    subprocess.run(["asciinema", "cat", str(cast)], check=True, capture_output=True)
    # The gateway carries on: a new session gets a clear message, not a hang.
    r = s.ssh("echo hi")
    assert r.returncode == 255 and "unreachable" in r.stderr


def test_gateway_shutdown_ends_and_records_open_sessions(setup):
    s = setup(allow=["shell"])
    p = subprocess.Popen(s.ssh_args("-tt"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdin.write(b"echo still-here\n")
    p.stdin.flush()
    _wait_for_output(s, "still-here\\r\\n")
    s.gw.stop()
    p.communicate(timeout=20)
    assert p.returncode != 0
    (end,) = s.gw.events("session.end")
    assert end["data"]["reason"] == "gateway shutdown"
    assert s.gw.events("recording.sealed")


# --- sftp, scp, forwarding -----------------------------------------------------------------------

def test_sftp_and_scp_file_operations_are_events(setup, tmp_path):
    s = setup(allow=["sftp"])
    remote = tmp_path / "remote"
    remote.mkdir()
    local = tmp_path / "local.bin"
    local.write_bytes(os.urandom(5_000_000))
    batch = tmp_path / "batch"
    batch.write_text(f"put {local} {remote}/up.bin\nget {remote}/up.bin {tmp_path}/down.bin\n"
                     f"rename {remote}/up.bin {remote}/moved.bin\nrm {remote}/moved.bin\n")
    r = subprocess.run(["sftp", "-P", str(s.port), "-i", str(s.key), *CLIENT_OPTS, "-b", str(batch),
                        "agent@127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "down.bin").read_bytes() == local.read_bytes()
    assert not (remote / "moved.bin").exists()

    r = subprocess.run(["scp", "-P", str(s.port), "-i", str(s.key), *CLIENT_OPTS, str(local),
                        f"agent@127.0.0.1:{remote}/scp.bin"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (remote / "scp.bin").read_bytes() == local.read_bytes()

    time.sleep(0.5)
    kinds = [(e["kind"], e["data"].get("path")) for e in s.gw.events() if e["kind"].startswith("sftp.")]
    assert ("sftp.open", f"{remote}/up.bin") in kinds
    assert ("sftp.rename", f"{remote}/up.bin") in kinds
    assert ("sftp.remove", f"{remote}/moved.bin") in kinds
    assert ("sftp.open", f"{remote}/scp.bin") in kinds
    closes = {(e["data"]["path"], e["data"]["mode"]): e["data"] for e in s.gw.events("sftp.close")}
    assert any(d["bytes_written"] == 5_000_000 for (p, m), d in closes.items() if p.endswith("up.bin"))
    assert any(d["bytes_read"] == 5_000_000 for (p, m), d in closes.items() if p.endswith("up.bin"))
    assert any(d["bytes_written"] == 5_000_000 for (p, m), d in closes.items() if p.endswith("scp.bin"))


def test_sftp_without_a_rule_is_refused(setup, tmp_path):
    s = setup(allow=["exec echo *"])
    batch = tmp_path / "batch"
    batch.write_text("ls /\n")
    r = subprocess.run(["sftp", "-P", str(s.port), "-i", str(s.key), *CLIENT_OPTS, "-b", str(batch),
                        "agent@127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "hoopy: refused" in r.stderr
    assert [e["outcome"] for e in s.gw.events("operation")] == ["refused"]


def _echo_server():
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                while data := c.recv(65536):
                    c.sendall(data.upper())

    threading.Thread(target=serve, daemon=True).start()
    return srv


def test_port_forward_only_where_granted(setup):
    srv = _echo_server()
    port = srv.getsockname()[1]
    try:
        s = setup(allow=[f"forward 127.0.0.1:{port}"])
        r = s.ssh(None, "-W", f"127.0.0.1:{port}", input="ping through hoopy\n")
        assert r.stdout == "PING THROUGH HOOPY\n", r.stderr
        other = free_port()
        argv = ["ssh", "-p", str(s.port), "-i", str(s.key), "-o", "LogLevel=INFO", *CLIENT_OPTS,
                "-W", f"127.0.0.1:{other}", "agent@127.0.0.1"]
        r = subprocess.run(argv, capture_output=True, text=True, input="x\n", timeout=30)
        assert r.returncode != 0
        assert "administratively prohibited: hoopy: refused" in r.stderr, r.stderr
        time.sleep(0.3)
        ops = [(e["outcome"], e["data"].get("units")) for e in s.gw.events("operation")]
        assert ops == [("allowed", [f"forward 127.0.0.1:{port}"]), ("refused", [f"forward 127.0.0.1:{other}"])]
        (fwd,) = s.gw.events("ssh.forward")
        assert fwd["data"]["bytes_in"] == len("ping through hoopy\n")
    finally:
        srv.close()


# --- faults ----------------------------------------------------------------------------------

def test_malformed_ssh_traffic_ends_only_that_connection(setup):
    import socket

    s = setup(allow=["exec echo *"])
    for junk in (b"GET / HTTP/1.0\r\n\r\n", b"SSH-2.0-x\r\n" + b"\x00\x00\xff\xff" + os.urandom(64)):
        c = socket.create_connection(("127.0.0.1", s.port), 5)
        c.settimeout(2)
        c.sendall(junk)
        try:
            while c.recv(4096):
                pass
        except (ConnectionResetError, socket.timeout):
            pass
        c.close()
    r = s.ssh("echo still serving")
    assert (r.returncode, r.stdout) == (0, "still serving\n")


def test_vanished_client_closes_its_upstream(setup):
    s = setup(allow=["exec sleep 41"])
    p = subprocess.Popen(s.ssh_args("-tt") + ["sleep 41"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "Starting session" not in s.sshd.log.read_text():
        time.sleep(0.1)
    time.sleep(0.3)
    p.kill()
    p.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if f"Disconnected from user {s.sshd.user}" in s.sshd.log.read_text() and s.gw.events("session.end"):
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the upstream connection stayed open after the client vanished")
    (ev,) = s.gw.events("ssh.exec")
    assert ev["data"]["command"] == "sleep 41" and ev["data"]["exit_status"] is None
    assert s.gw.events("recording.sealed")


def test_config_names_a_bad_ssh_key(tmp_path, sshd):
    conn, _ = connection_toml(sshd, extra='ciphers = ["rot13"]\nexec_output_limit = "lots"')
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[gateway]\nstate = "hoopy.db"\n' + conn)
    r = subprocess.run([sys.executable, "-m", "hoopy", "check", "-c", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 2
    out = r.stdout + r.stderr
    assert "connections.web.ciphers[0]" in out and "rot13" in out
    assert "connections.web.exec_output_limit" in out

    # A key file that is not a key and a known_hosts with no lines are named too.
    notakey, empty = tmp_path / "notakey", tmp_path / "empty_known_hosts"
    notakey.write_text("hello\n")
    empty.write_text("# nothing\n")
    conn, _ = connection_toml(sshd, known_hosts=empty)
    cfg.write_text('[gateway]\nstate = "hoopy.db"\n' + conn.replace(str(sshd.client_key), str(notakey)))
    r = subprocess.run([sys.executable, "-m", "hoopy", "check", "-c", str(cfg)], capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 2
    assert "connections.web.upstream_key" in out and "connections.web.upstream_known_hosts" in out
    conn, _ = connection_toml(sshd)
    cfg.write_text('[gateway]\nstate = "hoopy.db"\n' + conn)
    r = subprocess.run([sys.executable, "-m", "hoopy", "check", "-c", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_masking_patterns_apply_to_exec_output(setup):
    s = setup(allow=["exec echo *", "exec head -c 3000 /bin/true"],
              extra='\n[[masking]]\nconnection = "web"\npatterns = ["email"]\n')
    r = s.ssh("echo contact alice@example.com or bob@example.org today")
    assert r.returncode == 0
    assert r.stdout == "contact [REDACTED] or [REDACTED] today\n"
    (red,) = s.gw.events("redaction")
    assert red["data"]["patterns"] == {"email": 2}
    # The command line is the operation and is recorded as sent; the output kept is the masked one.
    (ev,) = s.gw.events("ssh.exec")[:1]
    assert ev["data"]["output"] == "contact [REDACTED] or [REDACTED] today\n"
    assert ev["data"]["redacted"] == {"email": 2}
    # Binary output with nothing to mask passes unchanged (byte count checked end to end).
    r = subprocess.run(s.ssh_args() + ["head -c 3000 /bin/true"], capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout == Path("/bin/true").read_bytes()[:3000]


WINDOW_CLIENT = r'''
import asyncio, sys
import asyncssh

async def until(stream, text):
    buf = ""
    while text not in buf:
        buf += await asyncio.wait_for(stream.read(4096), 10)
    return buf

async def main(port, key):
    async with asyncssh.connect("127.0.0.1", int(port), username="agent", client_keys=[key],
                                known_hosts=None, agent_path=None, config=[]) as c:
        p = await c.create_process(term_type="xterm", term_size=(80, 24))
        p.stdin.write("stty size\n")
        await until(p.stdout, "24 80")
        p.change_terminal_size(100, 40)
        await asyncio.sleep(0.3)
        p.stdin.write("stty size\n")
        await until(p.stdout, "40 100")
        p.stdin.write("exit\n")
        await asyncio.wait_for(p.wait(), 10)
        print("ok", p.exit_status)

asyncio.run(main(*sys.argv[1:]))
'''


def test_window_changes_pass_through_and_are_recorded(setup):
    s = setup(allow=["shell"])
    r = subprocess.run([sys.executable, "-c", WINDOW_CLIENT, str(s.port), str(s.key)],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "ok 0", r.stderr
    (start,) = s.sessions()
    lines = (s.gw.recordings / f"{start['session']}.cast").read_text().splitlines()
    assert json.loads(lines[0])["width"] == 80
    resizes = [json.loads(line)[2] for line in lines[1:] if json.loads(line)[1] == "r"]
    assert resizes == ["100x40"]


def test_exit_signal_passes_through(setup):
    s = setup(allow=["exec kill -TERM $$"])
    r = s.ssh("kill -TERM $$")
    assert r.returncode != 0
    (ev,) = s.gw.events("ssh.exec")
    assert ev["data"]["exit_signal"] == "TERM" and ev["outcome"] == "failed"


def test_agent_forwarding_is_refused(setup, tmp_path):
    s = setup(allow=["exec echo agent=$SSH_AUTH_SOCK"])
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        cmd = "echo agent=$SSH_AUTH_SOCK"
        # Control: straight to sshd, -A does forward the agent.
        direct = subprocess.run(["ssh", "-p", str(s.sshd.port), "-i", str(s.sshd.client_key), *CLIENT_OPTS,
                                 "-A", f"{s.sshd.user}@127.0.0.1", cmd], capture_output=True, text=True,
                                env=env, timeout=30)
        assert direct.stdout.strip() not in ("", "agent="), direct
        via = subprocess.run(s.ssh_args("-A") + [cmd], capture_output=True, text=True, env=env, timeout=30)
        assert via.returncode == 0 and via.stdout.strip() == "agent=", via
    finally:
        agent.kill()
        agent.wait()


MUX_CLIENT = r'''
import asyncio, sys
import asyncssh

async def main(port, key):
    async with asyncssh.connect("127.0.0.1", int(port), username="agent", client_keys=[key],
                                known_hosts=None, agent_path=None, config=[]) as c:
        for word in ("first", "second"):
            p = await c.create_process(term_type="xterm", term_size=(80, 24))
            p.stdin.write(f"echo {word}-terminal; exit\n")
            await asyncio.wait_for(p.wait(), 15)
        print("ok")

asyncio.run(main(*sys.argv[1:]))
'''


def test_two_terminals_in_one_session_get_two_recordings(setup):
    s = setup(allow=["shell"])
    r = subprocess.run([sys.executable, "-c", MUX_CLIENT, str(s.port), str(s.key)],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "ok", r.stderr
    time.sleep(0.5)
    (start,) = s.sessions()
    sid = start["session"]
    sealed = sorted(e["data"]["path"] for e in s.gw.events("recording.sealed"))
    assert sealed == [f"{sid}.1.cast", f"{sid}.cast"]
    assert "second-terminal" in (s.gw.recordings / f"{sid}.1.cast").read_text()
    assert s.gw.hoopy("audit", "verify").returncode == 0


def test_nothing_runs_when_the_audit_store_cannot_write(setup, tmp_path):
    import sqlite3

    mark = tmp_path / "ran"
    s = setup(allow=["exec touch *"])
    lock = sqlite3.connect(s.gw.db, timeout=5, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        r = s.ssh(f"touch {mark}")
        assert r.returncode != 0
        assert "audit store" in r.stderr, r.stderr
        assert not mark.exists()
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    r = s.ssh(f"touch {mark}")
    assert r.returncode == 0 and mark.exists()


def _rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def test_input_waits_in_the_window_while_held_then_all_of_it_flows(setup):
    """A held command's stdin is flow-controlled, not buffered in the gateway, and none is lost."""
    s = setup(approve=["exec sha256sum"])
    before = _rss_kib(s.gw.proc.pid)
    p = subprocess.Popen(f"head -c 100M /dev/zero | {' '.join(s.ssh_args())} sha256sum",
                         shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (row,) = s.gw.wait_pending(s.reviewer.token)
    time.sleep(2)  # the client pushes as much as it may
    held = _rss_kib(s.gw.proc.pid)
    assert held - before < 40 * 1024, f"the gateway grew by {(held - before) // 1024} MiB while holding"
    assert s.gw.hoopy("approve", row["id"], token=s.reviewer.token).returncode == 0
    out, err = p.communicate(timeout=60)
    expected = subprocess.run("head -c 100M /dev/zero | sha256sum", shell=True, capture_output=True,
                              text=True).stdout
    assert out == expected, err


def test_a_slow_reader_slows_the_upstream_instead_of_filling_the_gateway(setup, tmp_path):
    s = setup(allow=["exec head -c 120M /dev/zero"])
    before = _rss_kib(s.gw.proc.pid)
    flag = tmp_path / "read-now"
    # The client reads nothing until the flag exists: everything in between is backpressure.
    reader = f"while [ ! -e {flag} ]; do sleep 0.1; done; wc -c"
    p = subprocess.Popen(f"{' '.join(s.ssh_args())} 'head -c 120M /dev/zero' | sh -c '{reader}'",
                         shell=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    grown = _rss_kib(s.gw.proc.pid) - before
    flag.touch()
    out, err = p.communicate(timeout=90)
    assert out.strip() == str(120 << 20), err
    assert grown < 50 * 1024, f"the gateway grew by {grown // 1024} MiB for a reader that did not read"


def test_env_passes_upstream_but_attribution_stays_at_the_gateway(setup):
    s = setup(allow=["exec echo x=$HOOPY_TEST_X m=$HOOPY_MODEL"])
    r = s.ssh("echo x=$HOOPY_TEST_X m=$HOOPY_MODEL", "-o", "SetEnv=HOOPY_TEST_X=42 HOOPY_MODEL=secret-model")
    assert r.stdout == "x=42 m=\n", r.stderr
    (attr,) = s.gw.events("session.attribution")
    assert attr["data"] == {"model": "secret-model", "source": "claimed"}  # a client's value is its claim


def test_exec_with_a_terminal_is_recorded(setup):
    s = setup(allow=["exec echo on-a-pty"])
    r = s.ssh("echo on-a-pty", "-tt")
    assert r.returncode == 0 and "on-a-pty" in r.stdout
    (start,) = s.sessions()
    cast = s.gw.recordings / f"{start['session']}.cast"
    header = json.loads(cast.read_text().splitlines()[0])
    assert header["command"] == "echo on-a-pty"
    assert "on-a-pty" in subprocess.run(["asciinema", "cat", str(cast)], capture_output=True,
                                        text=True, check=True).stdout
    (ev,) = s.gw.events("ssh.exec")
    assert ev["data"]["pty"] is True and ev["data"]["recording"] == cast.name and "output" not in ev["data"]


# --- attacks of a hostile agent with a granted identity -------------------------------------------

def permissive_sshd(root: Path) -> Sshd:
    """An upstream that accepts every environment variable a client sends (`AcceptEnv *`)."""
    up = Sshd(root)
    up.config.write_text(up.config.read_text().replace("AcceptEnv LANG HOOPY_TEST_*", "AcceptEnv *"))
    return up.start()


def test_env_requests_cannot_change_what_a_granted_command_runs(hoopy_gateway, agent_key, tmp_path):
    up = permissive_sshd(tmp_path / "permissive")
    try:
        # A granted command that happens to be a bash script (as many deploy and status tools are).
        tool, evil, mark = tmp_path / "status.sh", tmp_path / "evil.sh", tmp_path / "hijacked"
        tool.write_text("#!/bin/bash\necho status-ok\n")
        tool.chmod(0o755)
        evil.write_text(f"touch {mark}\n")
        key, pub = agent_key
        agent = ident("agent")
        conn, port = connection_toml(up)
        gw = hoopy_gateway(agent.toml(ssh_keys=[pub]) + conn + grant("agent", [f"exec {tool}", "exec env"]))
        # Control: straight to this sshd, a BASH_ENV sent with the command runs another program.
        direct = subprocess.run(["ssh", "-p", str(up.port), "-i", str(up.client_key), *CLIENT_OPTS,
                                 "-o", f"SetEnv=BASH_ENV={evil}", f"{up.user}@127.0.0.1", str(tool)],
                                capture_output=True, text=True, timeout=30)
        assert direct.stdout == "status-ok\n" and mark.exists(), direct
        mark.unlink()

        def via(command, setenv):
            return subprocess.run(["ssh", "-p", str(port), "-i", str(key), *CLIENT_OPTS, "-o", setenv,
                                   "agent@127.0.0.1", command], capture_output=True, text=True, timeout=30)

        r = via(str(tool), f"SetEnv=BASH_ENV={evil}")
        assert r.returncode == 0 and r.stdout == "status-ok\n", r
        assert not mark.exists()
        r = via("env", "SetEnv=BASH_ENV=/tmp/x ENV=/tmp/x LD_PRELOAD=/tmp/x.so SHELLOPTS=xtrace "
                       "PROMPT_COMMAND=id BASH_FUNC_f%%=x PS4=x LC_ALL=C LC_EVIL=x HOOPY_TEST_OK=1 LANG=C.UTF-8")
        assert r.returncode == 0, r
        names = {line.split("=", 1)[0] for line in r.stdout.splitlines()}
        for bad in ("BASH_ENV", "ENV", "LD_PRELOAD", "SHELLOPTS", "PROMPT_COMMAND", "BASH_FUNC_f%%", "PS4",
                    "LC_EVIL"):
            assert bad not in names, (bad, r.stdout)
        assert {"LC_ALL", "HOOPY_TEST_OK", "LANG"} <= names
        # The operation's event names what passed and what was dropped.
        op = gw.events("operation")[-1]
        assert op["data"]["env"] == ["HOOPY_TEST_OK", "LANG", "LC_ALL"]
        assert "BASH_ENV" in op["data"]["env_dropped"] and "LD_PRELOAD" in op["data"]["env_dropped"]
    finally:
        up.stop()


def test_a_shell_without_a_terminal_is_recorded_too(setup):
    """`ssh -T` with a script on stdin: the commands are only input; they must be on the record."""
    s = setup(allow=["shell"])
    r = s.ssh(None, "-T", input="echo no-tty-$((6*7))\nexit 3\n")
    assert r.returncode == 3 and r.stdout == "no-tty-42\n", r
    (start,) = s.sessions()
    cast = s.gw.recordings / f"{start['session']}.cast"
    lines = [json.loads(line) for line in cast.read_text().splitlines()]
    typed = "".join(ev[2] for ev in lines[1:] if ev[1] == "i")
    assert "echo no-tty-$((6*7))" in typed
    assert "no-tty-42" in subprocess.run(["asciinema", "cat", str(cast)], capture_output=True, text=True,
                                         check=True).stdout
    (ev,) = s.gw.events("ssh.shell")
    assert ev["data"]["recording"] == cast.name and ev["data"]["pty"] is False
    (sealed,) = s.gw.events("recording.sealed")
    assert sealed["data"]["path"] == cast.name


def test_sftp_server_side_copy_and_link_chmod_are_events(setup, tmp_path):
    """`cp` (copy-data), `chmod -h` (lsetstat@openssh.com) and `ln` change files too."""
    s = setup(allow=["sftp"])
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "f").write_text("data\n")
    batch = tmp_path / "batch"
    batch.write_text(f"cp {remote}/f {remote}/copy\nchmod -h 600 {remote}/f\nln {remote}/f {remote}/hard\n")
    r = subprocess.run(["sftp", "-P", str(s.port), "-i", str(s.key), *CLIENT_OPTS, "-b", str(batch),
                        "agent@127.0.0.1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (remote / "copy").read_text() == "data\n" and (remote / "f").stat().st_mode & 0o777 == 0o600
    time.sleep(0.5)
    # (Each event also names the rule that allowed it: issue 12.)
    events = [(e["kind"], {k: v for k, v in e["data"].items() if k != "rule"}) for e in s.gw.events()
              if e["kind"].startswith("sftp.")]
    assert all(e["data"].get("rule") == "sftp" for e in s.gw.events() if e["kind"] in ("sftp.setstat", "sftp.link"))
    assert ("sftp.copy", {"path": f"{remote}/f", "to": f"{remote}/copy"}) in events, events
    assert ("sftp.setstat", {"path": f"{remote}/f"}) in events, events
    assert ("sftp.link", {"path": f"{remote}/f", "to": f"{remote}/hard"}) in events, events


LATE_PTY_CLIENT = r'''
import asyncio, sys
import asyncssh
from asyncssh.packet import String, UInt32

async def main(port, key):
    async with asyncssh.connect("127.0.0.1", int(port), username="agent", client_keys=[key],
                                known_hosts=None, agent_path=None, config=[]) as c:
        out = []

        class S(asyncssh.SSHClientSession):
            def data_received(self, data, datatype):
                out.append(data)

        chan, _ = await c.create_session(S, "tty")
        # A terminal asked for after the exec: the decision has been made without one.
        late = await chan._make_request(b"pty-req", String("xterm"), UInt32(80), UInt32(24), UInt32(0),
                                        UInt32(0), String(b""))
        await chan.wait_closed()
        print("late-pty", late, "".join(out).strip())

asyncio.run(main(*sys.argv[1:]))
'''


def test_a_terminal_asked_for_after_exec_is_refused(setup):
    s = setup(allow=["exec tty"])
    r = subprocess.run([sys.executable, "-c", LATE_PTY_CLIENT, str(s.port), str(s.key)],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "late-pty False not a tty", (r.stdout, r.stderr)
    (ev,) = s.gw.events("ssh.exec")
    assert ev["data"]["pty"] is False


def _fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_connections_that_never_log_in_are_bounded_and_timed_out(setup):
    """A flood of connections that never log in: the gateway holds at most MAX_UNAUTHENTICATED of
    them at any moment, closes each it holds after login_timeout, and goes on serving.

    Robust under load: the client connects without blocking (a connection the kernel queues
    while the gateway is busy is waited for, not failed), and every step waits for a condition
    (each connection answered, then closed) with generous deadlines; what is asserted is counted
    and timed per connection, not guessed from one sleep."""
    import selectors
    import socket

    from hoopy.ssh.server import MAX_UNAUTHENTICATED
    from hoopy.ssh.service import LISTEN_BACKLOG

    login_timeout = 8
    s = setup(allow=["exec echo *"], extra=f'login_timeout = "{login_timeout}s"')
    pid = s.gw.proc.pid
    before = _fds(pid)
    n = MAX_UNAUTHENTICATED + 300
    sel = selectors.DefaultSelector()
    state = {}  # socket -> {"sent", "banner" (time), "closed" (time)}
    peak = 0
    settled = None  # what the gateway held once every connection had its answer
    try:
        for _ in range(n):
            c = socket.socket()
            c.setblocking(False)
            c.connect_ex(("127.0.0.1", s.port))
            state[c] = {"sent": False, "banner": None, "closed": None}
            sel.register(c, selectors.EVENT_WRITE | selectors.EVENT_READ)
        deadline = time.monotonic() + 60 + login_timeout
        open_ = set(state)
        while open_ and time.monotonic() < deadline:
            for key, events in sel.select(0.2):
                c, st = key.fileobj, state[key.fileobj]
                if events & selectors.EVENT_WRITE and not st["sent"]:
                    st["sent"] = True
                    try:
                        c.send(b"SSH-2.0-silent\r\n")  # then nothing: no key exchange, no login
                    except OSError:
                        pass
                    sel.modify(c, selectors.EVENT_READ)
                if events & selectors.EVENT_READ:
                    try:
                        data = c.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    now = time.monotonic()
                    if data and st["banner"] is None:
                        st["banner"] = now
                    if not data:
                        st["closed"] = now
                        sel.unregister(c)
                        open_.discard(c)
            fds = _fds(pid) - before
            peak = max(peak, fds)
            if settled is None and all(st["banner"] or st["closed"] for st in state.values()):
                settled = fds
        assert not open_, f"{len(open_)} connections still open after {login_timeout}s + 60s"
    finally:
        sel.close()
        for c in state:
            c.close()
    # Once each has its answer the gateway holds at most MAX_UNAUTHENTICATED of them, not every one
    # a client opens. (For a moment it holds more: asyncio accepts up to LISTEN_BACKLOG a loop
    # iteration and the gateway counts them an iteration or two later; `peak` says how many.)
    assert settled is not None and settled < MAX_UNAUTHENTICATED + 50, (settled, peak, LISTEN_BACKLOG)
    # Those it held (answered, then kept) it closed at login_timeout, no earlier and not much later
    # (each counted from its own answer: under load the gateway answers some later than others).
    held = [st["closed"] - st["banner"] for st in state.values() if st["banner"] is not None
            and st["closed"] - st["banner"] > login_timeout / 2]
    assert len(held) >= MAX_UNAUTHENTICATED // 2, len(held)
    assert max(held) < login_timeout + 30, max(held)
    assert min(held) > login_timeout - 1, min(held)
    # The rest were closed at once, past the bound.
    assert sum(1 for st in state.values() if st["banner"] is None or st["closed"] - st["banner"] < 2) >= n - len(held)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _fds(pid) - before > 20:
        time.sleep(0.2)
    assert _fds(pid) - before <= 20
    r = s.ssh("echo still serving")
    assert (r.returncode, r.stdout) == (0, "still serving\n"), r.stderr
    assert not s.gw.events("auth.failed")  # nobody tried a name


def test_a_terminal_that_cannot_be_recorded_does_not_run(setup, tmp_path):
    import shutil

    mark = tmp_path / "ran"
    s = setup(allow=["shell", f"exec touch {mark}"])
    shutil.rmtree(s.gw.recordings, ignore_errors=True)
    s.gw.recordings.write_text("not a directory\n")  # no recording can be created
    r = s.ssh(None, "-tt", input=f"touch {mark}\nexit\n")
    assert r.returncode == 126 and "recording" in r.stdout + r.stderr, r
    r = s.ssh(f"touch {mark}", "-tt")
    assert r.returncode == 126, r
    time.sleep(0.3)
    assert not mark.exists()
    # Without a terminal an exec is recorded in its event, and runs.
    assert s.ssh(f"touch {mark}").returncode == 0 and mark.exists()


EMPTY_EXEC_CLIENT = r'''
import asyncio, sys
import asyncssh

class Empty(str):
    def __bool__(self):  # an exec request whose command line is empty (asyncssh would send `shell`)
        return True

async def main(port, key):
    async with asyncssh.connect("127.0.0.1", int(port), username="agent", client_keys=[key],
                                known_hosts=None, agent_path=None, config=[]) as c:
        try:
            r = await c.run(Empty(""), input="echo pwned-$((6*7))\n", request_pty=False)
            print("ran", r.exit_status, r.stdout.strip())
        except asyncssh.ChannelOpenError as e:
            print("refused", e)
        except asyncssh.Error as e:
            print("refused", e)

asyncio.run(main(*sys.argv[1:]))
'''


def test_an_empty_exec_is_not_a_shell(setup):
    """exec "" matches `exec *`; upstream it would be the user's login shell, running stdin."""
    s = setup(allow=["exec *"])
    r = subprocess.run([sys.executable, "-c", EMPTY_EXEC_CLIENT, str(s.port), str(s.key)],
                       capture_output=True, text=True, timeout=60)
    assert "pwned-42" not in r.stdout, r.stdout
    assert r.stdout.startswith("refused"), (r.stdout, r.stderr)


MANY_SESSIONS_CLIENT = r'''
import asyncio, sys
import asyncssh

async def main(port, key, n):
    async with asyncssh.connect("127.0.0.1", int(port), username="agent", client_keys=[key],
                                known_hosts=None, agent_path=None, config=[]) as c:
        async def one():
            try:
                p = await c.create_process("cat")  # held: each waits, holding its input window
                return p
            except asyncssh.ChannelOpenError:
                return None
        procs = await asyncio.gather(*(one() for _ in range(int(n))))
        print("opened", sum(p is not None for p in procs))
        for p in procs:
            if p is not None:
                p.close()
        # Closed channels make room again.
        await asyncio.sleep(1)
        p = await c.create_process("cat")
        print("again", p is not None)
        p.close()

asyncio.run(main(*sys.argv[1:]))
'''


def test_one_connection_holds_a_bounded_number_of_session_channels(setup):
    from hoopy.ssh.server import MAX_SESSIONS

    s = setup(approve=["exec cat"])
    r = subprocess.run([sys.executable, "-c", MANY_SESSIONS_CLIENT, str(s.port), str(s.key),
                        str(MAX_SESSIONS + 15)], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["opened", str(MAX_SESSIONS), "again", "True"], (r.stdout, r.stderr)


TWO_HELD_CLIENT = r'''
import asyncio, sys
import asyncssh

async def main(port, key, flag):
    async with asyncssh.connect("127.0.0.1", int(port), username="agent", client_keys=[key],
                                known_hosts=None, agent_path=None, config=[]) as c:
        first = await c.create_process("echo first")
        second = await c.create_process("echo second")
        await asyncio.sleep(1.5)  # both held
        first.close()  # the tool gave up on one of them
        await first.wait_closed()
        print("closed-first", flush=True)
        r = await asyncio.wait_for(second.wait(), 30)
        print("second", r.exit_status, r.stdout.strip())

asyncio.run(main(*sys.argv[1:]))
'''


def test_closing_one_held_channel_leaves_the_others_held(setup):
    s = setup(approve=["exec echo *"])
    p = subprocess.Popen([sys.executable, "-c", TWO_HELD_CLIENT, str(s.port), str(s.key), "x"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "closed-first"
    deadline = time.monotonic() + 10
    while True:
        rows = s.gw.wait_pending(s.reviewer.token)
        if len(rows) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    (row,) = rows
    assert "second" in json.dumps(row)
    assert s.gw.hoopy("approve", row["id"], token=s.reviewer.token).returncode == 0
    out, err = p.communicate(timeout=30)
    assert out.strip() == "second 0 second", (out, err)


def test_a_held_forward_expires_when_its_client_goes(setup):
    port = free_port()
    s = setup(approve=[f"forward 127.0.0.1:{port}"])
    p = subprocess.Popen(s.ssh_args("-W", f"127.0.0.1:{port}"), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    (row,) = s.gw.wait_pending(s.reviewer.token)
    p.kill()
    p.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and s.gw.get("/approvals?state=pending", s.reviewer.token)[1]:
        time.sleep(0.1)
    assert s.gw.get("/approvals?state=pending", s.reviewer.token)[1] == []
    while time.monotonic() < deadline and not s.gw.events("session.end"):
        time.sleep(0.1)
    (exp,) = s.gw.events("approval.expired")
    assert exp["data"]["approval"] == row["id"] and exp["data"]["reason"] == "the client went away"
    (end,) = s.gw.events("session.end")
    assert exp["seq"] < end["seq"]


def test_what_an_exec_reads_is_in_its_event(setup):
    """A granted interpreter (`exec sh`) runs what arrives on stdin: that must be on the record too."""
    s = setup(allow=["exec sh"], extra='exec_output_limit = "1KiB"')
    r = s.ssh("sh", input="echo piped-$((6*7))\n")
    assert r.stdout == "piped-42\n", r
    (ev,) = s.gw.events("ssh.exec")
    assert ev["data"]["input"] == "echo piped-$((6*7))\n" and ev["data"]["input_truncated"] is False
    r = s.ssh("sh", input="true\n" * 1000)
    ev = s.gw.events("ssh.exec")[-1]
    assert len(ev["data"]["input"]) == 1024 and ev["data"]["input_truncated"] is True
    assert ev["data"]["bytes_in"] == 5000


ENV_FLOOD_CLIENT = r'''
import asyncio, sys
import asyncssh
from asyncssh.packet import String

async def main(port, key, n):
    async with asyncssh.connect("127.0.0.1", int(port), username="agent", client_keys=[key],
                                known_hosts=None, agent_path=None, config=[]) as c:
        chan, _ = await c.create_session(asyncssh.SSHClientSession, "sleep 4")
        for i in range(int(n)):
            chan._send_request(b"env", String(f"HOOPY_FLOOD_{i}"), String("x" * 16000))
            if i % 100 == 0:
                await asyncio.sleep(0)
        print("sent", flush=True)
        await chan.wait_closed()
        r = await c.run("env", env={"HOOPY_TEST_AFTER": "1"})
        print("after", "HOOPY_TEST_AFTER=1" in r.stdout)

asyncio.run(main(*sys.argv[1:]))
'''


def test_env_requests_without_end_do_not_fill_the_gateway(setup):
    s = setup(allow=["exec sleep 4", "exec env"])
    before = _rss_kib(s.gw.proc.pid)
    p = subprocess.Popen([sys.executable, "-c", ENV_FLOOD_CLIENT, str(s.port), str(s.key), "6000"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "sent", p.stderr.read()
    time.sleep(1)
    grown = _rss_kib(s.gw.proc.pid) - before
    out, err = p.communicate(timeout=30)
    assert out.strip() == "after True", (out, err)
    assert grown < 30 * 1024, f"the gateway grew by {grown // 1024} MiB keeping 96 MB of env requests"


MANY_FORWARDS_CLIENT = r'''
import asyncio, sys
import asyncssh

async def main(port, key, target, n):
    async with asyncssh.connect("127.0.0.1", int(port), username="agent", client_keys=[key],
                                known_hosts=None, agent_path=None, config=[]) as c:
        async def one():
            try:
                await c.create_connection(asyncssh.SSHTCPSession, "127.0.0.1", int(target))
                return "open"
            except asyncssh.ChannelOpenError:
                return "refused"
        tasks = [asyncio.ensure_future(one()) for _ in range(int(n))]
        done, pending = await asyncio.wait(tasks, timeout=4)  # the rest wait for a reviewer
        print("refused", sum(t.result() == "refused" for t in done), "held", len(pending), flush=True)
        for t in pending:
            t.cancel()

asyncio.run(main(*sys.argv[1:]))
'''


def test_one_connection_holds_a_bounded_number_of_forwards(setup):
    from hoopy.ssh.server import MAX_FORWARDS

    target = free_port()
    s = setup(approve=[f"forward 127.0.0.1:{target}"])
    r = subprocess.run([sys.executable, "-c", MANY_FORWARDS_CLIENT, str(s.port), str(s.key), str(target),
                        str(MAX_FORWARDS + 20)], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["refused", "20", "held", str(MAX_FORWARDS)], (r.stdout, r.stderr)
    assert len(s.gw.get("/approvals?state=pending", s.reviewer.token)[1]) <= MAX_FORWARDS
