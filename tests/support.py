"""Helpers for tests that run the real gateway: ``twistd -n hoopy -c FILE``."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
import urllib.error
import urllib.request
from pathlib import Path

import attrs

from hoopy.identity import ScramVerifier, new_token

BIN = Path(sys.executable).parent
TWISTD = shutil.which("twistd", path=str(BIN)) or shutil.which("twistd")


_GIVEN: set = set()  # ports free_port handed out in this process


def free_port() -> int:
    """A port free now and not handed out before by this process: the kernel may give the same
    ephemeral port to two binds in a row once the first is closed, and a config holding it twice
    is refused ("port ... is already used by ..."), as a full run once found."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            return port
    return port


def wait_ssh_listener(port: int, version: bytes = b"SSH-2.0-", timeout: float = 30, alive=None) -> bytes:
    """Until an SSH server answers on 127.0.0.1:``port`` with a version line starting ``version``
    (``SSH-2.0-hoopy`` for the gateway, ``SSH-2.0-OpenSSH`` for sshd); returns that line.

    The one wait every SSH test uses before its first client connects: the gateway starts its
    SSH listeners after its admin API answers, and a bare TCP connect proves only that something
    listens there. ``alive``: a callable that raises if the server's process has died (no use
    waiting for it)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        if alive is not None:
            alive()
        try:
            with socket.create_connection(("127.0.0.1", port), 5) as c:
                c.settimeout(max(1.0, min(10.0, deadline - time.monotonic())))
                line = b""
                while not line.endswith(b"\n") and len(line) < 256:
                    got = c.recv(256 - len(line))
                    if not got:
                        break
                    line += got
            if line.startswith(version):
                return line.strip()
            last = f"answered {line[:80]!r}, not {version!r}"
        except OSError as e:
            last = repr(e)
        if time.monotonic() > deadline:
            raise AssertionError(f"no SSH server on 127.0.0.1:{port} after {timeout}s ({last})")
        time.sleep(0.05)


def ssh_listen_ports(config_text: str) -> list[int]:
    """The ports of the gateway's ssh connections (`listen = "tcp:PORT..."`, not port 0)."""
    import tomllib

    ports = []
    for c in tomllib.loads(config_text).get("connections", {}).values():
        if c.get("type") == "ssh" and str(c.get("listen", "")).startswith("tcp:"):
            port = str(c["listen"]).split(":")[1]
            if port.isdigit() and int(port):
                ports.append(int(port))
    return ports


@attrs.frozen
class Ident:
    name: str
    token: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.token.encode()).hexdigest()

    def toml(self, kind="agent", roles=(), ssh_keys=(), scram=True) -> str:
        lines = [f"[identities.{self.name}]", f'kind = "{kind}"', f'token_sha256 = "{self.sha256}"']
        if roles:
            lines.append("roles = [" + ", ".join(f'"{r}"' for r in roles) + "]")
        if ssh_keys:
            lines.append("ssh_keys = [" + ", ".join(json.dumps(k) for k in ssh_keys) + "]")
        if scram:
            lines.append(f'token_scram = "{ScramVerifier.make(self.token, iterations=4096)}"')
        return "\n".join(lines) + "\n"


def ident(name: str) -> Ident:
    return Ident(name, new_token())


class HoopyProcess:
    """A real gateway process; its admin API on a free port."""

    running: "weakref.WeakSet[HoopyProcess]" = weakref.WeakSet()  # read by conftest on a failure

    def __init__(self, workdir: Path, body: str, admin_port: int | None = None,
                 env: dict | None = None, approval_timeout: str = "30s", gateway_extra: str = "",
                 admin_scheme: str = "http", admin_ca: str | None = None):
        self.admin_scheme, self.admin_ca = admin_scheme, admin_ca
        self.workdir = Path(workdir)
        self.admin_port = admin_port or free_port()
        self.config = self.workdir / "hoopy.toml"
        self.config.write_text(
            "[gateway]\n"
            f'state = "hoopy.db"\nrecordings = "recordings"\n'
            f'admin_listen = "tcp:{self.admin_port}:interface=127.0.0.1"\n'
            f'approval_timeout = "{approval_timeout}"\nstore_busy_timeout = "1s"\n{gateway_extra}\n\n' + body)
        self.env = {**os.environ, **(env or {})}
        self.proc = None
        self.log = self.workdir / "twistd.log"

    @property
    def admin(self) -> str:
        return f"{self.admin_scheme}://127.0.0.1:{self.admin_port}"

    @property
    def db(self) -> Path:
        return self.workdir / "hoopy.db"

    @property
    def recordings(self) -> Path:
        return self.workdir / "recordings"

    def start(self, timeout: float = 20):
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "hoopy", "-c", str(self.config)],
            cwd=self.workdir, env=self.env, stdout=self._logf, stderr=subprocess.STDOUT)
        HoopyProcess.running.add(self)
        self.started_at = time.monotonic()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"twistd exited {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                status, _ = self.get("/health")
                if status in (200, 503):
                    break
            except OSError:
                pass
            # A refused connect costs next to nothing; every test that starts a gateway waits here.
            time.sleep(0.025)
        else:
            raise RuntimeError(f"gateway did not come up:\n{self.log.read_text()}")
        # Its ssh listeners start just after the admin API answers: every SSH test waits for them here.
        for port in ssh_listen_ports(self.config.read_text()):
            self.wait_ssh(port)
        return self

    def _alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"twistd exited {self.proc.returncode}:\n{self.log_text()}")

    def wait_ssh(self, port: int, timeout: float = 30) -> bytes:
        """Until this gateway's ssh listener on ``port`` answers (with hoopy's version line)."""
        return wait_ssh_listener(port, b"SSH-2.0-hoopy", timeout, alive=self._alive)

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"gateway did not stop on {sig!r}:\n{self.log.read_text()}")
        finally:
            self._logf.close()

    def request(self, method: str, path: str, token: str | None = None, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.admin + path, data=data, method=method)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        ctx = None
        if self.admin_ca:
            import ssl

            ctx = ssl.create_default_context(cafile=self.admin_ca)
        try:
            with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if r.headers.get_content_type() == "application/json" else raw)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw

    def get(self, path, token=None):
        return self.request("GET", path, token)

    def hoopy(self, *args, token: str | None = None, check=False, timeout=60) -> subprocess.CompletedProcess:
        """Run the real ``hoopy`` command against this gateway's config."""
        env = dict(self.env)
        if token:
            env["HOOPY_TOKEN"] = token
        args = list(args)
        if "-c" not in args:
            args += ["-c", str(self.config)]
        return subprocess.run([sys.executable, "-m", "hoopy", *args], cwd=self.workdir, env=env,
                              capture_output=True, text=True, check=check, timeout=timeout)

    def wait_pending(self, token: str, count: int = 1, timeout: float = 15) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status, rows = self.get("/approvals?state=pending", token)
            if status == 200 and len(rows) >= count:
                return rows
            time.sleep(0.05)
        raise AssertionError(f"no pending approval after {timeout}s")

    def events(self, kind: str | None = None) -> list[dict]:
        """Every event in the store (read straight from SQLite)."""
        from hoopy.audit.store import SQLiteReader, event_json

        r = SQLiteReader(self.db)
        try:
            return [event_json(e) for e in r.events() if kind is None or e["kind"] == kind]
        finally:
            r.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


# The local PostgreSQL the tests use (trust auth), and one statement run on it as its superuser.
PG = "host=127.0.0.1 port=5432 user=postgres"


def admin_sql(sql: str, db: str = "postgres") -> str:
    r = subprocess.run(["psql", f"{PG} dbname={db}", "-XqAt", "-v", "ON_ERROR_STOP=1", "-c", sql],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()



def pg_connection(port: int, db: str) -> str:
    """A `[connections.pg]` table for a hoopy.toml: a gateway on 127.0.0.1:``port`` in front of
    the local PostgreSQL's ``db`` as its superuser, plain TCP. More keys of the table may follow."""
    return f'''[connections.pg]
type = "postgres"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "tcp:host=127.0.0.1:port=5432"
upstream_user = "postgres"
upstream_database = "{db}"
upstream_tls = "disable"'''
