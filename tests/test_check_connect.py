"""``hoopy check --connect -c FILE`` against real peers: a PostgreSQL cluster of its own (SCRAM,
TLS with its own CA), the shared PostgreSQL, a real sshd, real HTTP and HTTPS servers.

Every kind of problem is one line naming the connection's key and exit 2; warnings alone
(a grant naming a table that does not exist) keep 0."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path


from tests.support import free_port, ident
from tests.test_postgres_tls import cluster, make_cert  # noqa: F401 - the module's own PostgreSQL
from tests.test_ssh import Sshd, keygen

AGENT = ident("cc-agent")


def config(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "hoopy.toml"
    p.write_text('[gateway]\nstate = "hoopy.db"\n\n' + AGENT.toml() + body)
    return p


def check(cfg: Path, env=None):
    r = subprocess.run([sys.executable, "-m", "hoopy", "check", "--connect", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    lines = {}
    for ln in r.stdout.splitlines():
        m = re.match(rf"^{re.escape(str(cfg))}: (\S+): (ok|warning|error): (.*)$", ln)
        if m:
            lines.setdefault(m.group(1), []).append((m.group(2), m.group(3)))
    return r, lines


def level(lines, key):
    assert key in lines, (key, lines)
    return [lvl for lvl, _ in lines[key]]


def pg_conn(name, port, user, password_env=None, tls="disable", ca=None, db="postgres"):
    out = f"""
[connections.{name}]
type = "postgres"
listen = "tcp:{free_port()}:interface=127.0.0.1"
upstream = "tcp:host=127.0.0.1:port={port}"
upstream_user = "{user}"
upstream_database = "{db}"
upstream_tls = "{tls}"
"""
    if password_env:
        out += f'upstream_password = "env:{password_env}"\n'
    if ca:
        out += f'upstream_ca = "file:{ca}"\n'
    return out


def pg_rules(name, columns, allow):
    q = lambda xs: "[" + ", ".join(f'"{x}"' for x in xs) + "]"  # noqa: E731
    return (f'\n[[grants]]\nidentity = "{AGENT.name}"\nconnection = "{name}"\nallow = {q(allow)}\n'
            f'\n[[masking]]\nconnection = "{name}"\ncolumns = {q(columns)}\n')


def test_postgres_all_well_then_every_problem(tmp_path, cluster):  # noqa: F811
    port, ca = cluster["port"], cluster["ca"]
    env = {"CC_GOOD": "scram-secret", "CC_BAD": "not-the-password"}
    good = config(tmp_path, pg_conn("pg", port, "scram_user", "CC_GOOD", "verify-full", ca)
                  + pg_rules("pg", ["public.t.v"], ["read public.t"]))
    r, lines = check(good, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert level(lines, "connections.pg.upstream") == ["ok"]
    assert level(lines, "connections.pg.upstream_user") == ["ok"]
    assert lines["connections.pg.upstream_tls"] == [("ok", "TLS, certificate and host name verified")]
    assert level(lines, "masking[0].columns[0]") == ["ok"]
    assert not any(lvl != "ok" for v in lines.values() for lvl, _ in v), r.stdout

    closed = free_port()
    bad = config(tmp_path, pg_conn("pw", port, "scram_user", "CC_BAD")
                 + pg_conn("tls", port, "scram_user", "CC_GOOD", "verify-full")  # no CA: not verifiable
                 + pg_conn("down", closed, "scram_user", "CC_GOOD")
                 + pg_conn("nodb", port, "scram_user", "CC_GOOD", db="no_such_db")
                 + pg_conn("cols", port, "scram_user", "CC_GOOD")
                 + pg_rules("cols", ["public.t.v", "public.t.vv", "public.tt.v"], ["read public.t", "read public.nope",
                                                                                  "read public.*", "write public.f()"]))
    r, lines = check(bad, env)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert level(lines, "connections.pw.upstream") == ["ok"]  # reachable; the login is what fails
    (lvl, msg), = lines["connections.pw.upstream_password"]
    assert lvl == "error" and "login refused as scram_user" in msg and "28P01" in msg
    (lvl, msg), = lines["connections.tls.upstream_tls"]
    assert lvl == "error" and "verify-full" in msg
    assert "connections.tls.upstream_user" not in lines  # no login is claimed over an unverified TLS
    (lvl, msg), = lines["connections.down.upstream"]
    assert lvl == "error" and "unreachable" in msg and str(closed) in msg
    (lvl, msg), = lines["connections.nodb.upstream_database"]
    assert lvl == "error" and "no_such_db" in msg
    assert level(lines, "masking[0].columns[0]") == ["ok"]
    (lvl, msg), = lines["masking[0].columns[1]"]
    assert lvl == "error" and "table public.t has no column vv" in msg and "connection cols" in msg
    (lvl, msg), = lines["masking[0].columns[2]"]
    assert lvl == "error" and "no table public.tt" in msg
    (lvl, msg), = lines["grants[0].allow[1]"]
    assert lvl == "warning" and "public.nope" in msg and "connection cols" in msg
    (lvl, msg), = lines["grants[0].allow[3]"]
    assert lvl == "warning" and "public.f()" in msg
    assert "grants[0].allow[0]" not in lines and "grants[0].allow[2]" not in lines  # exists; a glob


def test_grant_warnings_alone_keep_exit_0(tmp_path):
    """Against the shared PostgreSQL (trust): a grant naming a missing table is a warning."""
    cfg = config(tmp_path, pg_conn("pg", 5432, "postgres", db="postgres")
                 + f'\n[[grants]]\nidentity = "{AGENT.name}"\nconnection = "pg"\n'
                   'allow = ["read public.surely_no_such_table_here", "read pg_catalog.pg_class"]\n')
    r, lines = check(cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert level(lines, "grants[0].allow[0]") == ["warning"]
    assert "grants[0].allow[1]" not in lines
    assert "0 problem(s), 1 warning(s)" in r.stdout


def ssh_conn(name, port, user, key, known_hosts):
    return f"""
[connections.{name}]
type = "ssh"
listen = "tcp:{free_port()}:interface=127.0.0.1"
upstream = "tcp:host=127.0.0.1:port={port}"
upstream_user = "{user}"
upstream_key = "file:{key}"
upstream_known_hosts = "file:{known_hosts}"
upstream_shell = "sh"
"""


def test_ssh_host_key_login_and_reach(tmp_path):
    sshd = Sshd(tmp_path / "sshd").start()
    try:
        other = tmp_path / "other_host_key"
        other_pub = keygen(other)
        wrong_kh = tmp_path / "wrong_known_hosts"
        wrong_kh.write_text(f"[127.0.0.1]:{sshd.port} {other_pub}\n")
        stranger = tmp_path / "stranger_key"
        keygen(stranger)
        closed = free_port()
        cfg = config(tmp_path, ssh_conn("good", sshd.port, sshd.user, sshd.client_key, sshd.known_hosts)
                     + ssh_conn("hostkey", sshd.port, sshd.user, sshd.client_key, wrong_kh)
                     + ssh_conn("login", sshd.port, sshd.user, stranger, sshd.known_hosts)
                     + ssh_conn("down", closed, sshd.user, sshd.client_key, sshd.known_hosts))
        r, lines = check(cfg)
        assert r.returncode == 2, r.stdout + r.stderr
        for key in ("upstream", "upstream_known_hosts", "upstream_key", "upstream_shell"):
            assert level(lines, f"connections.good.{key}") == ["ok"], (key, r.stdout)
        (lvl, msg), = lines["connections.hostkey.upstream_known_hosts"]
        assert lvl == "error" and "not the one in upstream_known_hosts" in msg
        fingerprint = subprocess.run(["ssh-keygen", "-lf", str(sshd.host_key) + ".pub"], capture_output=True,
                                     text=True).stdout.split()[1]
        assert fingerprint in msg  # what it offers, to compare out of band
        assert "connections.hostkey.upstream_key" not in lines  # no login over an unknown host key
        (lvl, msg), = lines["connections.login.upstream_key"]
        assert lvl == "error" and "refused the gateway's key" in msg
        (lvl, msg), = lines["connections.down.upstream"]
        assert lvl == "error" and "unreachable" in msg
    finally:
        sshd.stop()


HTTPS_SERVER = r"""
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.headers.get("Authorization") == "Bearer right"
        self.send_response(200 if ok else 401); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H)
if len(sys.argv) > 2:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
"""


def serve(*args):
    port = free_port()
    p = subprocess.Popen([sys.executable, "-c", HTTPS_SERVER, str(port), *args])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise RuntimeError("server did not start")


def http_conn(name, url, token_env=None, ca=None):
    out = f'\n[connections.{name}]\ntype = "http"\nlisten = "tcp:{free_port()}:interface=127.0.0.1"\nupstream = "{url}"\n'
    if ca:
        out += f'upstream_ca = "file:{ca}"\n'
    if token_env:
        out += f'[connections.{name}.upstream_headers]\nAuthorization = "env:{token_env}"\n'
    return out


def test_http_reach_tls_and_credential(tmp_path):
    make_cert(tmp_path)
    plain, pport = serve()
    tls, tport = serve(str(tmp_path / "server.crt"), str(tmp_path / "server.key"))
    try:
        closed = free_port()
        cfg = config(tmp_path, http_conn("plain", f"http://127.0.0.1:{pport}", "CC_TOKEN")
                     + http_conn("tls", f"https://127.0.0.1:{tport}", "CC_TOKEN", ca=tmp_path / "server.crt")
                     + http_conn("untrusted", f"https://127.0.0.1:{tport}", "CC_TOKEN")
                     + http_conn("badcred", f"http://127.0.0.1:{pport}", "CC_WRONG")
                     + http_conn("down", f"http://127.0.0.1:{closed}"))
        r, lines = check(cfg, {"CC_TOKEN": "Bearer right", "CC_WRONG": "Bearer wrong"})
        assert r.returncode == 2, r.stdout + r.stderr
        assert level(lines, "connections.plain.upstream") == ["ok"]
        assert level(lines, "connections.plain.upstream_headers") == ["ok"]
        assert level(lines, "connections.tls.upstream_ca") == ["ok"]
        assert level(lines, "connections.tls.upstream_headers") == ["ok"]
        (lvl, msg), = lines["connections.untrusted.upstream_ca"]
        assert lvl == "error" and "TLS not verified" in msg
        (lvl, msg), = lines["connections.badcred.upstream_headers"]
        assert lvl == "warning" and "401" in msg
        (lvl, msg), = lines["connections.down.upstream"]
        assert lvl == "error" and "unreachable" in msg
        # Only the untrusted certificate and the closed port are problems.
        assert "2 problem(s), 1 warning(s)" in r.stdout, r.stdout
    finally:
        plain.kill()
        tls.kill()
