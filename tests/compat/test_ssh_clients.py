"""SSH clients through hoopy: one gateway and one real sshd for the module, one row per test."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.compat.matrix import row
from tests.support import HoopyProcess, ident
from tests.test_ssh import Sshd, connection_toml, grant, keygen

pytestmark = pytest.mark.timeout(300)


class Env:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.sshd = Sshd(tmp / "sshd").start()
        self.key = tmp / "agent_key"
        pub = keygen(self.key)
        self.remote = tmp / "remote"
        self.remote.mkdir()
        self.repo = self.remote / "repo.git"
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.repo)], check=True)
        agent = ident("agent")
        conn, self.port = connection_toml(self.sshd)
        allow = [
            "exec echo *", "exec exit *", "exec cat", "exec true", "exec sh", "sftp",
            "exec scp -t *", "exec scp -f *", "exec scp -d -t *",
            "exec rsync --server *",
            f"exec git-upload-pack {self.repo}", f"exec git-receive-pack {self.repo}",
            # Ansible with pipelining: `/bin/sh -c 'echo ~agent && sleep 0'`, then
            # `/bin/sh -c '/usr/bin/python3 && sleep 0'` (the wrapper is seen through).
            "exec echo ~agent", "exec /usr/bin/python3", "exec sleep 0",
        ]
        (tmp / "gw").mkdir()
        self.gw = HoopyProcess(tmp / "gw", agent.toml(ssh_keys=[pub]) + conn + grant("agent", allow)).start()
        self.ssh_config = tmp / "ssh_config"
        self.ssh_config.write_text(f"""\
Host hoopy
    HostName 127.0.0.1
    Port {self.port}
    User agent
    IdentityFile {self.key}
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    BatchMode yes
    LogLevel ERROR
""")

    def ssh(self, *args, input=None, timeout=60, **kw):
        return subprocess.run(["ssh", "-F", str(self.ssh_config), *args], capture_output=True, text=True,
                              input=input, timeout=timeout, **kw)

    def stop(self):
        self.gw.stop()
        self.sshd.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("ssh-compat"))
    yield e
    e.stop()


OPENSSH = "OpenSSH"


@row("ssh", OPENSSH, "exec: output, stdin, exit status")
def test_openssh_exec(env):
    before = len(env.gw.events("operation"))  # the gateway is the module's: other tests' refusals are theirs
    r = env.ssh("hoopy", "echo plain-ok")
    assert (r.returncode, r.stdout) == (0, "plain-ok\n"), r.stderr
    assert env.ssh("hoopy", "exit 3").returncode == 3
    r = env.ssh("hoopy", "cat", input="through stdin\n")
    assert (r.returncode, r.stdout) == (0, "through stdin\n"), r.stderr
    # What OpenSSH sends on its own (no-more-sessions@openssh.com) is no refusal.
    assert not [e for e in env.gw.events("operation")[before:] if e["outcome"] == "refused"]


@row("ssh", OPENSSH, "ControlMaster/ControlPersist: exit status of every command")
def test_openssh_controlmaster(env):
    ctl = Path(tempfile.mkdtemp(prefix="hoopy-cm-")) / "%C"  # a socket path must be short
    opts = ["-o", "ControlMaster=auto", "-o", f"ControlPath={ctl}", "-o", "ControlPersist=60"]
    try:
        statuses = []
        for i in range(20):
            r = env.ssh(*opts, "hoopy", f"exit {i % 4}" if i % 2 else f"echo run-{i}")
            statuses.append(r.returncode)
            if not i % 2:
                assert r.stdout == f"run-{i}\n", (i, r.stdout, r.stderr)
        assert statuses == [0 if not i % 2 else i % 4 for i in range(20)], statuses
    finally:
        env.ssh(*opts, "-O", "exit", "hoopy")
        shutil.rmtree(ctl.parent, ignore_errors=True)


def _ssh_cmd(env) -> str:
    return f"ssh -F {env.ssh_config}"


@row("ssh", "scp (OpenSSH)", "upload and download (SFTP protocol, the default)")
def test_scp(env, tmp_path):
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(300_000))
    r = subprocess.run(["scp", "-F", str(env.ssh_config), str(src), f"hoopy:{env.remote}/scp.bin"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["scp", "-F", str(env.ssh_config), f"hoopy:{env.remote}/scp.bin", str(tmp_path / "down.bin")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "down.bin").read_bytes() == src.read_bytes() == (env.remote / "scp.bin").read_bytes()


@row("ssh", "scp -O (OpenSSH)", "legacy protocol: upload and download",
     outcome="limited", note="runs `scp -t PATH` / `scp -f PATH` as an exec: needs `exec scp -t *`, "
                             "`exec scp -f *` rules; the file is not an sftp.* event")
def test_scp_legacy(env, tmp_path):
    src = tmp_path / "legacy.bin"
    src.write_bytes(os.urandom(200_000))
    r = subprocess.run(["scp", "-O", "-F", str(env.ssh_config), str(src), f"hoopy:{env.remote}/legacy.bin"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["scp", "-O", "-F", str(env.ssh_config), f"hoopy:{env.remote}/legacy.bin",
                        str(tmp_path / "back.bin")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    cmds = [e["data"]["command"] for e in env.gw.events("ssh.exec")]
    assert f"scp -t {env.remote}/legacy.bin" in cmds and f"scp -f {env.remote}/legacy.bin" in cmds


@row("ssh", "sftp (OpenSSH)", "batch: put, get, ls, rename, rm")
def test_sftp(env, tmp_path):
    src = tmp_path / "f.txt"
    src.write_text("sftp through hoopy\n")
    batch = tmp_path / "batch"
    batch.write_text(f"put {src} {env.remote}/f.txt\nget {env.remote}/f.txt {tmp_path}/g.txt\nls {env.remote}\n"
                     f"rename {env.remote}/f.txt {env.remote}/h.txt\nrm {env.remote}/h.txt\n")
    r = subprocess.run(["sftp", "-F", str(env.ssh_config), "-b", str(batch), "hoopy"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "g.txt").read_text() == "sftp through hoopy\n"
    assert not (env.remote / "h.txt").exists()


RSYNC = "rsync"


@row("ssh", RSYNC, "push and pull a tree over ssh (-e ssh)", outcome="limited",
     note="runs `rsync --server ...` as an exec: needs an `exec rsync --server *` rule")
def test_rsync(env, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a\n")
    (tree / "sub" / "b.bin").write_bytes(os.urandom(100_000))
    r = subprocess.run(["rsync", "-az", "-e", _ssh_cmd(env), f"{tree}/", f"hoopy:{env.remote}/tree/"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["rsync", "-az", "-e", _ssh_cmd(env), f"hoopy:{env.remote}/tree/", f"{tmp_path}/back/"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "back" / "sub" / "b.bin").read_bytes() == (tree / "sub" / "b.bin").read_bytes()


GIT = "git"


@row("ssh", GIT, "clone, push, clone again over ssh", outcome="limited",
     note="runs `git-upload-pack 'PATH'` / `git-receive-pack 'PATH'` as an exec: needs "
          "`exec git-upload-pack PATH` / `exec git-receive-pack PATH` rules")
def test_git(env, tmp_path):
    genv = {**os.environ, "GIT_SSH_COMMAND": _ssh_cmd(env), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    url = f"hoopy:{env.repo}"
    work = tmp_path / "work"
    r = subprocess.run(["git", "clone", "-q", url, str(work)], capture_output=True, text=True, env=genv, timeout=60)
    assert r.returncode == 0, r.stderr
    (work / "README").write_text("through hoopy\n")
    for cmd in (["git", "add", "README"], ["git", "commit", "-qm", "first"], ["git", "push", "-q", "origin", "HEAD:main"]):
        r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=genv, timeout=60)
        assert r.returncode == 0, (cmd, r.stderr)
    r = subprocess.run(["git", "clone", "-q", url, str(tmp_path / "again")], capture_output=True, text=True,
                       env=genv, timeout=60)
    assert r.returncode == 0 and (tmp_path / "again" / "README").read_text() == "through hoopy\n", r.stderr


PARAMIKO_CLIENT = r'''
import sys, paramiko
port, key = int(sys.argv[1]), sys.argv[2]
c = paramiko.SSHClient()
c.set_missing_host_key_policy(paramiko.AutoAddPolicy())
c.connect("127.0.0.1", port, username="agent", key_filename=key, look_for_keys=False, allow_agent=False)
for cmd in ("echo paramiko-ok", "exit 4"):
    _, out, err = c.exec_command(cmd, environment={"HOOPY_TOOL_CALL": "call-p"})
    print(cmd, repr(out.read().decode()), out.channel.recv_exit_status())
sftp = c.open_sftp()
with sftp.open(sys.argv[3], "w") as f:
    f.write("via paramiko\n")
print("sftp", sftp.open(sys.argv[3]).read().decode().strip())
c.close()
'''


@row("ssh", "paramiko",
     "exec (output, exit status, environment) and SFTP")
def test_paramiko(env):
    r = subprocess.run([sys.executable, "-c", PARAMIKO_CLIENT, str(env.port), str(env.key),
                        f"{env.remote}/paramiko.txt"], capture_output=True, text=True, timeout=60)
    assert r.stdout.splitlines() == ["echo paramiko-ok 'paramiko-ok\\n' 0", "exit 4 '' 4", "sftp via paramiko"], \
        (r.stdout, r.stderr)


ASYNCSSH_CLIENT = r'''
import asyncio, sys
import asyncssh

async def main(port, key, path):
    async with asyncssh.connect("127.0.0.1", int(port), username="agent", client_keys=[key],
                                known_hosts=None, agent_path=None, config=[]) as c:
        r = await c.run("echo asyncssh-ok", env={"HOOPY_TOOL_CALL": "call-a"})
        print("exec", r.exit_status, r.stdout.strip())
        r = await c.run("cat", input="in and out\n")
        print("stdin", r.exit_status, r.stdout.strip())
        print("status", (await c.run("exit 5")).exit_status)
        async with c.start_sftp_client() as sftp:
            async with sftp.open(path, "w") as f:
                await f.write("via asyncssh\n")
            async with sftp.open(path) as f:
                print("sftp", (await f.read()).strip())

asyncio.run(main(*sys.argv[1:]))
'''


@row("ssh", "asyncssh",
     "exec (output, stdin, exit status, environment) and SFTP")
def test_asyncssh(env):
    r = subprocess.run([sys.executable, "-c", ASYNCSSH_CLIENT, str(env.port), str(env.key),
                        f"{env.remote}/asyncssh.txt"], capture_output=True, text=True, timeout=60)
    assert r.stdout.splitlines() == ["exec 0 asyncssh-ok", "stdin 0 in and out", "status 5", "sftp via asyncssh"], \
        (r.stdout, r.stderr)


ANSIBLE = "Ansible (ansible-core)"


def _ansible(env, tmp_path, *args, pipelining=False):
    inv = tmp_path / "inventory"
    inv.write_text(f"gw ansible_host=127.0.0.1 ansible_port={env.port} ansible_user=agent "
                   f"ansible_ssh_private_key_file={env.key} ansible_python_interpreter=/usr/bin/python3\n")
    cp = Path(tempfile.mkdtemp(prefix="hoopy-ans-"))  # its ControlMaster sockets (ControlPersist=60s)
    aenv = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "False", "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_SSH_CONTROL_PATH_DIR": str(cp), "ANSIBLE_PIPELINING": str(pipelining),
            "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local")}
    cfg = tmp_path / "ansible.cfg"  # an empty config: the defaults, whatever the machine has
    cfg.write_text("[defaults]\n")
    aenv["ANSIBLE_CONFIG"] = str(cfg)
    try:
        return subprocess.run(["ansible", "gw", "-i", str(inv), *args], capture_output=True, text=True,
                              env=aenv, timeout=180)
    finally:
        for sock in cp.glob("*"):  # stop the persisted master
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "gw"], capture_output=True)
        shutil.rmtree(cp, ignore_errors=True)


@row("ssh", ANSIBLE, "ad-hoc `-m command`, pipelining on (ControlMaster as by default)",
     outcome="limited", note="with `ANSIBLE_PIPELINING=True` its command lines are constant: "
     "`/bin/sh -c 'echo ~agent && sleep 0'` and `/bin/sh -c '/usr/bin/python3 && sleep 0'`, granted by "
     "`exec echo ~agent`, `exec /usr/bin/python3`, `exec sleep 0`; the module arrives on stdin (in the ssh.exec event)")
def test_ansible_command_pipelined(env, tmp_path):
    r = _ansible(env, tmp_path, "-m", "command", "-a", "echo hi-from-ansible", pipelining=True)
    assert r.returncode == 0 and "hi-from-ansible" in r.stdout, (r.stdout, r.stderr)


@row("ssh", ANSIBLE, "ad-hoc `-m command` and `-m copy`, default settings", outcome="refused",
     note="each task first makes a remote temporary directory with `/bin/sh -c '( umask 77 && mkdir -p \"` echo "
          "~/.ansible/tmp `\"&& ...ansible-tmp-RANDOM...'`: backquote substitutions cannot be judged before "
          "they run, so it is refused (held with `unjudgeable = \"approve\"`); Ansible reports hoopy's "
          "refusal (exit 126), the connection stays up")
def test_ansible_defaults_are_refused_with_the_status(env, tmp_path):
    (tmp_path / "src.txt").write_text("copied\n")
    for args in (["-m", "command", "-a", "echo hi"], ["-m", "copy", "-a", f"src={tmp_path}/src.txt dest={env.remote}/c"]):
        r = _ansible(env, tmp_path, *args)
        assert r.returncode != 0, r.stdout
        # The refusal's status reaches Ansible through its ControlMaster (it used to be 255: "unreachable").
        assert "exited with result 126" in r.stdout, (r.stdout, r.stderr)
    assert not (env.remote / "c").exists()
    refused = [e["data"]["text"] for e in env.gw.events("operation") if e["outcome"] == "refused"]
    assert any("ansible-tmp-" in t for t in refused), refused
