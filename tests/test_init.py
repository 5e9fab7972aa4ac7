"""``hoopy init`` and the way to a first connection, with real peers: the local PostgreSQL
(127.0.0.1:5432, trust), a real sshd, a real HTTP upstream, psql, ssh and curl through a real
``twistd -n hoopy``. The README's quickstart is run as written, line by line; docs/hoopy.toml
passes ``hoopy check`` unchanged once the secrets its header names exist."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from tests.support import TWISTD, free_port
from tests.test_core_e2e import seen, upstream  # noqa: F401  (fixture)
from tests.test_ssh import CLIENT_OPTS, sshd  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def hoopy(*args, cwd, env=None, input=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "hoopy", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, input=input, timeout=timeout)


def tokens(out: str) -> dict:
    return dict(re.findall(r"^  (agent|reviewer) +(hpy_\S+)$", out, flags=re.M))


def printed(out: str, program: str) -> str:
    """The command line init printed for this client."""
    lines = [ln.strip() for ln in out.splitlines() if re.match(rf"^  (\S+=\S+ )?{program} ", ln)]
    assert len(lines) == 1, out
    return lines[0]


def wait_port(port: int, proc, log: Path, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the gateway exited {proc.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}:\n{log.read_text()}")


class Gateway:
    """``twistd -n hoopy -c FILE`` as the README says, stopped (SIGTERM) after the test."""

    def __init__(self, argv, cwd, env=None):
        self.log = Path(cwd) / "gateway.log"
        self._f = open(self.log, "ab")
        self.proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **(env or {})}, stdout=self._f,
                                     stderr=subprocess.STDOUT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._f.close()


@pytest.fixture
def gateways():
    started = []

    def start(argv, cwd, env=None):
        g = Gateway(argv, cwd, env)
        started.append(g)
        return g

    yield start
    for g in started:
        g.stop()


def twistd_argv(config: str) -> list:
    return [TWISTD, "-n", "--pidfile=", "hoopy", "-c", config]


# --- the README's quickstart, as written ---------------------------------------------------------


def quickstart_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return [ln for b in blocks for ln in b.splitlines() if ln.strip()]


def test_the_readme_keeps_its_first_lines_and_the_quickstart_follows():
    text = (ROOT / "README.md").read_text()
    first = re.search(r"```sh\n(.*?)```", text, flags=re.S).group(1).splitlines()
    assert first == ["pip install -e '.[test]' && twistd -n hoopy -c hoopy.toml",
                     "python3 -m pytest -q -n 2 --dist loadfile"]
    # and CI runs exactly that command
    assert (ROOT / ".ci" / "run").read_text().rstrip().splitlines()[-1] == first[1]
    # the quickstart is the next section, and three commands make the first connection
    headings = re.findall(r"^## (.*)$", text, flags=re.M)
    assert headings[0].startswith("Quickstart")
    r = hoopy("--help", cwd=ROOT)
    assert "twistd -n hoopy -c hoopy.toml" in r.stdout and "hoopy init --postgres" in r.stdout
    lines = quickstart_lines()
    assert lines[0].startswith("hoopy init --postgres postgresql://") and lines[1].startswith("twistd -n hoopy")
    assert "psql" in lines[2]


def test_the_readme_quickstart(tmp_path, gateways):
    """A newcomer's path: init against the local PostgreSQL, the gateway, psql with the printed token
    reads, a write is refused, `hoopy events` shows both, the evidence report is made."""
    lines = quickstart_lines()
    init, run, read, write, events, export = lines
    argv = shlex.split(init)
    assert argv[:2] == ["hoopy", "init"]
    r = hoopy(*argv[1:], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    tok = tokens(r.stdout)
    config = argv[argv.index("-o") + 1]
    text = (tmp_path / config).read_text()
    assert tok["agent"] not in text and tok["reviewer"] not in text  # hashes only
    assert hashlib.sha256(tok["agent"].encode()).hexdigest() in text

    # The psql line init printed is the README's, with the token (and the port it found free).
    line = printed(r.stdout, "psql")
    port = re.search(r"port=(\d+)", line).group(1)
    assert line == read.replace("TOKEN", tok["agent"]).replace("port=15432", f"port={port}")

    # twistd -n hoopy -c demo/hoopy.toml (its pid file in this folder: --pidfile= changes nothing else)
    assert shlex.split(run) == ["twistd", "-n", "hoopy", "-c", config]
    gw = gateways(twistd_argv(config), tmp_path)
    wait_port(int(port), gw.proc, gw.log)

    def sh(command):
        command = command.replace("TOKEN", tok["agent"]).replace("port=15432", f"port={port}")
        if command.startswith("hoopy "):
            command = f"{shlex.quote(sys.executable)} -m {command}"
        return subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PGCONNECT_TIMEOUT": "10"})

    r = sh(read)
    assert r.returncode == 0 and "postgres" in r.stdout, r.stderr
    r = sh(write)
    assert r.returncode != 0 and "no grant allows ddl" in r.stderr, r.stdout + r.stderr
    r = sh(events)
    assert r.returncode == 0, r.stderr
    ops = [ln for ln in r.stdout.splitlines() if " operation " in ln]
    assert any(" allowed " in ln and "select current_user" in ln for ln in ops), r.stdout
    assert any(" refused " in ln and "create table t" in ln for ln in ops), r.stdout
    r = sh(export)
    assert r.returncode == 0, r.stderr
    out = tmp_path / shlex.split(export)[-1]
    with tarfile.open(out) as tar:
        report = tar.extractfile("hoopy-evidence/report.html").read().decode()
        manifest = json.load(tar.extractfile("hoopy-evidence/manifest.json"))
    assert "report.html" in {f["path"] for f in manifest["files"]}
    assert re.search(r'data-count="operations\.allowed">1<', report)
    assert re.search(r'data-count="operations\.refused">1<', report)
    assert "<script" not in report


# --- what init writes --------------------------------------------------------------------------


def test_init_writes_a_checked_file_with_hashes_only_and_a_password_by_reference(tmp_path):
    secret = "s3cr'et $HOME `x`"
    url = "postgresql://app:" + secret.replace("'", "%27").replace(" ", "%20").replace("$", "%24").replace(
        "`", "%60") + "@127.0.0.1:5432/billing?sslmode=require"
    r = hoopy("init", "--postgres", url, "-o", "conf/hoopy.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    path = tmp_path / "conf" / "hoopy.toml"
    text = path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    # never the password, nor any token; the password is an env: reference, and its export printed
    blob = b"".join(p.read_bytes() for p in (tmp_path / "conf").iterdir())
    assert secret.encode() not in blob and b"s3cr" not in blob
    tok = tokens(r.stdout)
    assert set(tok) == {"agent", "reviewer"}
    for t in tok.values():
        assert t.encode() not in blob
    assert 'upstream_password = "env:HOOPY_POSTGRES_PASSWORD"' in text
    assert 'upstream_tls = "require"' in text and 'upstream_user = "app"' in text
    assert 'upstream_database = "billing"' in text
    export = re.search(r"^  export HOOPY_POSTGRES_PASSWORD=(.*)$", r.stdout, flags=re.M).group(1)
    assert shlex.split(export) == [secret]  # what the shell gives back is the password, exactly
    # read-only: the only grant allows read; the reviewer is a reviewer
    assert re.search(r'^allow = \["read"\]', text, flags=re.M) and "\napprove =" not in text
    assert 'roles = ["reviewer"]' in text
    # `hoopy check` passes once the password is exported, and refuses it without
    r = hoopy("check", "-c", str(path), cwd=tmp_path, env={"HOOPY_POSTGRES_PASSWORD": secret})
    assert r.returncode == 0, r.stdout + r.stderr
    env = {k: v for k, v in os.environ.items() if k != "HOOPY_POSTGRES_PASSWORD"}
    r = subprocess.run([sys.executable, "-m", "hoopy", "check", "-c", str(path)], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode == 2 and "HOOPY_POSTGRES_PASSWORD is not set" in r.stdout
    # the tokens printed are the ones the file's hashes are of
    from hoopy.config import load

    os.environ["HOOPY_POSTGRES_PASSWORD"] = secret
    try:
        cfg = load(path)
    finally:
        del os.environ["HOOPY_POSTGRES_PASSWORD"]
    assert cfg.identities["agent"].token_sha256 == hashlib.sha256(tok["agent"].encode()).digest()
    assert cfg.identities["reviewer"].is_reviewer

    # never overwritten without --force; with it, new tokens
    before = path.read_bytes()
    r = hoopy("init", "--postgres", url, "-o", "conf/hoopy.toml", cwd=tmp_path)
    assert r.returncode == 1 and "already exists" in r.stderr and "--force" in r.stderr
    assert path.read_bytes() == before
    r = hoopy("init", "--postgres", url, "-o", "conf/hoopy.toml", "--force", cwd=tmp_path)
    assert r.returncode == 0 and path.read_bytes() != before


@pytest.mark.parametrize("args, message", [
    ([], "say what the gateway fronts"),
    (["--postgres", "mysql://root@127.0.0.1/x"], "is not a postgresql://"),
    (["--postgres", "postgresql://u@127.0.0.1/x?sslmode=verify-ca"], "verify-ca is not offered"),
    (["--postgres", "postgresql://u@127.0.0.1/x?options=-c%20x"], "understands only the sslmode and host"),
    (["--postgres", "postgresql:///x"], "names no host"),
    (["--postgres", "postgresql://u@127.0.0.1:99999/x"], "not a URL"),
    (["--ssh", "127.0.0.1", "--ssh-key", "/dev/null"], "USER@HOST"),
    (["--ssh", "u@127.0.0.1:port", "--ssh-key", "/dev/null"], "is not a port"),
    (["--ssh", "u@127.0.0.1"], "needs --ssh-key"),
    (["--ssh", "u@127.0.0.1", "--ssh-key", "/nonexistent/key"], "cannot read it"),
    (["--ssh", "u@127.0.0.1", "--ssh-key", "/etc/hostname"], "not a private key"),
    (["--ssh-key", "/dev/null", "--http", "http://127.0.0.1:1"], "--ssh-key goes with --ssh"),
    (["--http", "ftp://127.0.0.1/"], "not an http:// or https:// URL"),
    (["--http", "http://user:pw@127.0.0.1/"], "no user, query or fragment"),
    (["--http", "http://127.0.0.1/?q=1"], "no user, query or fragment"),
])
def test_init_refuses_what_it_cannot_make_work(tmp_path, args, message):
    r = hoopy("init", *args, "-o", "x.toml", cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "x.toml").exists() and list(tmp_path.iterdir()) == []
    assert "Traceback" not in r.stderr


def test_ssh_host_key_is_shown_and_refused_without_a_terminal_or_the_flag(tmp_path, sshd):
    tmp_path = tmp_path / "w"  # (the sshd lives in tmp_path/sshd)
    tmp_path.mkdir()
    target = f"{sshd.user}@127.0.0.1:{sshd.port}"
    fp = subprocess.run(["ssh-keygen", "-lf", str(sshd.host_key) + ".pub"], capture_output=True,
                        text=True).stdout.split()[1]
    r = hoopy("init", "--ssh", target, "--ssh-key", str(sshd.client_key), "-o", "h.toml", cwd=tmp_path,
              input="y\n")  # a pipe is not a terminal: "y" on it is not a confirmation
    assert r.returncode == 1, r.stderr
    assert fp in r.stderr and "--accept-host-key" in r.stderr and "without a terminal" in r.stderr
    assert list(tmp_path.iterdir()) == []
    # nothing listening there: a clear message, nothing written
    r = hoopy("init", "--ssh", f"u@127.0.0.1:{free_port()}", "--ssh-key", str(sshd.client_key),
              "--accept-host-key", "-o", "h.toml", cwd=tmp_path)
    assert r.returncode == 1 and "cannot reach" in r.stderr and list(tmp_path.iterdir()) == []


def test_ssh_host_key_confirmation_at_a_terminal(sshd):
    import asyncssh

    from hoopy.init import InitError, confirm_host_key, parse_ssh

    t = parse_ssh(f"{sshd.user}@127.0.0.1:{sshd.port}", str(sshd.client_key))
    key = asyncssh.read_public_key(str(sshd.host_key) + ".pub")  # (init fetches it: the test above)

    class Tty(io.StringIO):
        def isatty(self):
            return True

    for answer in ("n\n", "\n", "yes please\n", ""):
        err = io.StringIO()
        with pytest.raises(InitError, match="not accepted"):
            confirm_host_key(t, key, False, stdin=Tty(answer), stderr=err)
        assert key.get_fingerprint("sha256") in err.getvalue()
    for answer in ("y\n", "YES\n"):
        confirm_host_key(t, key, False, stdin=Tty(answer), stderr=io.StringIO())


def test_init_for_ssh_and_http_then_the_printed_commands_work(tmp_path, sshd, upstream, gateways):
    up_port, up_log = upstream
    r = hoopy("init", "--ssh", f"{sshd.user}@127.0.0.1:{sshd.port}", "--ssh-key", str(sshd.client_key),
              "--accept-host-key", "--http", f"http://127.0.0.1:{up_port}", "-o", "gw/hoopy.toml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    conf = tmp_path / "gw"
    # the host key written is the sshd's own, and the agent's key pair was made beside the file
    assert (conf / "ssh.known_hosts").read_text().split()[1:] == \
        (sshd.host_key.with_suffix(".pub")).read_text().split()[:2]
    assert (conf / "ssh.known_hosts").read_text().startswith(f"[127.0.0.1]:{sshd.port} ")
    assert oct((conf / "agent_ed25519").stat().st_mode & 0o777) == "0o600"
    assert hoopy("check", "-c", "gw/hoopy.toml", cwd=tmp_path).returncode == 0
    ssh_line, curl_line = printed(r.stdout, "ssh"), printed(r.stdout, "curl")
    ssh_port = int(re.search(r"-p (\d+)", ssh_line).group(1))
    http_port = int(re.search(r"127\.0\.0\.1:(\d+)/", curl_line).group(1))
    gw = gateways(twistd_argv("gw/hoopy.toml"), tmp_path)
    wait_port(ssh_port, gw.proc, gw.log)
    wait_port(http_port, gw.proc, gw.log)

    argv = shlex.split(ssh_line)
    argv[1:1] = CLIENT_OPTS  # the test's own known_hosts handling, nothing else changed
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "load average" in out.stdout, out.stderr
    argv[-1] = "rm -rf /tmp/nothing-here"  # a write: no grant allows it
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 126, out.stderr

    out = subprocess.run(shlex.split(curl_line) + ["-s", "-o", "/dev/null", "-w", "%{http_code}"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout == "404"  # the upstream's own answer for /: the request reached it
    assert [(x["method"], x["path"]) for x in seen(up_log)][-1] == ("GET", "/")
    token = tokens(r.stdout)["agent"]
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H",
                          f"Authorization: Bearer {token}", f"http://127.0.0.1:{http_port}/v1/refunds"],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout == "403"  # read-only
    # another host key at that address is refused by the gateway (what was confirmed is pinned)
    kh = conf / "ssh.known_hosts"
    import asyncssh

    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    kh.write_text(f"[127.0.0.1]:{sshd.port} {other}")
    gw.stop()
    gw = gateways(twistd_argv("gw/hoopy.toml"), tmp_path)
    wait_port(ssh_port, gw.proc, gw.log)
    argv[-1] = "uptime"
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "load average" not in out.stdout


# --- docs/hoopy.toml ---------------------------------------------------------------------------


def test_the_documented_config_passes_check_as_shipped(tmp_path):
    """docs/hoopy.toml, byte for byte, with the secrets its header says to make."""
    shipped = ROOT / "docs" / "hoopy.toml"
    shutil.copyfile(shipped, tmp_path / "hoopy.toml")
    header = [ln[4:] for ln in shipped.read_text().splitlines() if ln.startswith("#   ")]
    export = next(ln for ln in header if ln.startswith("export "))
    keygen = next(ln for ln in header if "ssh-keygen" in ln)
    assert any(ln.startswith("ssh-keyscan") and "> known_hosts" in ln for ln in header)
    script = "\n".join([
        export.replace("'...'", "'pw'").replace("'Bearer ...'", "'Bearer x'"),
        keygen.split("#")[0] + " -q",
        # ssh-keyscan of 10.0.0.5 (not reachable here): a host key line in its place
        "echo \"10.0.0.5 $(cut -d' ' -f1,2 keys/web-1.pub)\" > known_hosts",
        f"{shlex.quote(sys.executable)} -m hoopy check -c hoopy.toml",
    ])
    r = subprocess.run(["bash", "-c", "set -e\n" + script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hoopy.toml: ok:" in r.stdout
    assert (tmp_path / "hoopy.toml").read_bytes() == shipped.read_bytes()
    # and without the secrets, check names each one (it resolves every secret, as the gateway)
    r = hoopy("check", "-c", str(tmp_path / "hoopy.toml"), cwd=tmp_path,
              env={"BILLING_DB_PASSWORD": "pw"})
    env = {k: v for k, v in os.environ.items() if k not in ("BILLING_DB_PASSWORD", "INTERNAL_API_AUTH")}
    r = subprocess.run([sys.executable, "-m", "hoopy", "check", "-c", "hoopy.toml"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "BILLING_DB_PASSWORD is not set" in r.stdout \
        and "INTERNAL_API_AUTH is not set" in r.stdout


@pytest.mark.parametrize("url, upstream, user, password, db, tls", [
    ("postgresql://postgres@127.0.0.1:5432/postgres", "tcp:host=127.0.0.1:port=5432", "postgres", None,
     "postgres", "prefer"),
    ("postgres://app:p%40ss%3Aw@db.internal/app?sslmode=verify-full", "tcp:host=db.internal:port=5432", "app",
     "p@ss:w", "app", "verify-full"),
    ("postgresql://app@[::1]:6543/x?sslmode=allow", "tcp:host=\\:\\:1:port=6543", "app", None, "x", "prefer"),
    ("postgresql://app@/x?host=/var/run/postgresql", "unix:path=/var/run/postgresql/.s.PGSQL.5432", "app", None,
     "x", "prefer"),
    ("postgresql://app:@h/x?sslmode=disable", "tcp:host=h:port=5432", "app", "", "x", "disable"),
])
def test_postgres_urls(url, upstream, user, password, db, tls):
    from hoopy.init import parse_postgres

    p = parse_postgres(url)
    assert (p.upstream, p.user, p.password, p.database, p.tls) == (upstream, user, password, db, tls)
