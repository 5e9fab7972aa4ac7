"""SSH clients through hoopy: one gateway and one real sshd for the module, one row per test."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.compat.matrix import row
from tests.support import HoopyProcess, ident
from tests.test_ssh import CLIENT_OPTS, Sshd, connection_toml, grant, keygen

pytestmark = pytest.mark.timeout(300)


def _version(argv, pick=lambda out: out.split()[0]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return pick((r.stdout + r.stderr).strip())
    except (OSError, IndexError):
        return "?"


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
            f"exec git-upload-pack '{self.repo}'", f"exec git-receive-pack '{self.repo}'",
            # Ansible with pipelining: its command lines are constant, spelled out literally.
            "exec /bin/sh -c 'echo ~ && sleep 0'",
            "exec /bin/sh -c '/usr/bin/python3 && sleep 0'",
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


OPENSSH = _version(["ssh", "-V"], lambda out: out.split(",")[0].replace("OpenSSH_", "OpenSSH "))


@row("ssh", OPENSSH, "exec: output, stdin, exit status")
def test_openssh_exec(env):
    r = env.ssh("hoopy", "echo plain-ok")
    assert (r.returncode, r.stdout) == (0, "plain-ok\n"), r.stderr
    assert env.ssh("hoopy", "exit 3").returncode == 3
    r = env.ssh("hoopy", "cat", input="through stdin\n")
    assert (r.returncode, r.stdout) == (0, "through stdin\n"), r.stderr
    # What OpenSSH sends on its own (no-more-sessions@openssh.com) is no refusal.
    assert not [e for e in env.gw.events("operation") if e["outcome"] == "refused"]


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
