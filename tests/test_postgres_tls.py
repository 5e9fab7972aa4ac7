"""Authentication and TLS both ways, against a PostgreSQL cluster this module
starts itself (initdb as the postgres user) with SCRAM, MD5 and cleartext
roles and TLS on; and TLS from clients to the gateway (SCRAM-SHA-256-PLUS)."""
from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support import free_port, ident

psycopg = pytest.importorskip("psycopg")

BIN = next((d for d in ("/usr/lib/postgresql/15/bin", "/usr/local/bin") if os.path.exists(f"{d}/initdb")), None)
pytestmark = pytest.mark.skipif(BIN is None or os.geteuid() != 0 or shutil.which("su") is None,
                                reason="needs initdb and root (to run it as postgres)")


def make_cert(directory: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1/localhost, its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    (directory / "server.crt").write_text(cert_pem)
    (directory / "server.key").write_text(key_pem)
    os.chmod(directory / "server.key", 0o600)
    return cert_pem, key_pem


def as_postgres(*args, **kw):
    return subprocess.run(["su", "postgres", "-s", "/bin/sh", "-c", " ".join(args)],
                          capture_output=True, text=True, timeout=60, **kw)


@pytest.fixture(scope="module")
def cluster():
    d = Path(tempfile.mkdtemp(prefix="hoopy-pg-"))
    os.chmod(d, 0o755)
    subprocess.run(["chown", "postgres", str(d)], check=True)
    data = d / "data"
    port = free_port()
    r = as_postgres(f"{BIN}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    assert r.returncode == 0, r.stderr
    make_cert(data)
    subprocess.run(["chown", "postgres", str(data / "server.crt"), str(data / "server.key")], check=True)
    (data / "pg_hba.conf").write_text(
        "local all postgres trust\n"
        "host all md5_user 127.0.0.1/32 md5\n"
        "host all pw_user 127.0.0.1/32 password\n"
        "host all trust_user 127.0.0.1/32 trust\n"
        "host all postgres 127.0.0.1/32 trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n")
    with open(data / "postgresql.conf", "a") as f:
        f.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{d}'\n"
                "ssl = on\nfsync = off\n")
    r = as_postgres(f"{BIN}/pg_ctl", "-D", str(data), "-l", str(d / "log"), "-w", "start")
    assert r.returncode == 0, r.stderr + (d / "log").read_text()
    sql = ("SET password_encryption = 'scram-sha-256'; CREATE ROLE scram_user LOGIN PASSWORD 'scram-secret';"
           "SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD 'md5-secret';"
           "CREATE ROLE pw_user LOGIN PASSWORD 'pw-secret'; CREATE ROLE trust_user LOGIN;"
           "CREATE TABLE t (v text); INSERT INTO t VALUES ('hello'); GRANT SELECT ON t TO PUBLIC;")
    r = subprocess.run(["psql", f"host=127.0.0.1 port={port} user=postgres dbname=postgres", "-Xq",
                        "-v", "ON_ERROR_STOP=1", "-c", sql], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    yield {"port": port, "ca": str(data / "server.crt"), "dir": d}
    as_postgres(f"{BIN}/pg_ctl", "-D", str(data), "-m", "immediate", "stop")
    shutil.rmtree(d, ignore_errors=True)


AGENT = ident("tls-agent")


def gateway(hoopy_gateway, upstream_port, user, password_env=None, tls="disable", extra="", env=None):
    port = free_port()
    pw = f'upstream_password = "env:{password_env}"\n' if password_env else ""
    g = hoopy_gateway(AGENT.toml() + f"""
[connections.pg]
type = "postgres"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "tcp:host=127.0.0.1:port={upstream_port}"
upstream_user = "{user}"
{pw}upstream_database = "postgres"
upstream_tls = "{tls}"
{extra}
[[grants]]
identity = "tls-agent"
connection = "pg"
allow = ["read public.t", "read pg_catalog.*", "read"]
""", env=env or {})
    g.pg_port = port
    return g


def query(g, sql="SELECT v FROM t", **conninfo):
    params = {"host": "127.0.0.1", "port": g.pg_port, "user": AGENT.name, "password": AGENT.token,
              "dbname": "x", "connect_timeout": 10, **conninfo}
    with psycopg.connect(**params, autocommit=True) as c:
        return c.execute(sql).fetchall()


@pytest.mark.parametrize("user, secret, tls", [
    ("scram_user", "scram-secret", "disable"),
    ("scram_user", "scram-secret", "require"),  # SCRAM-SHA-256-PLUS upstream (channel binding)
    ("md5_user", "md5-secret", "prefer"),
    ("pw_user", "pw-secret", "require"),
    ("trust_user", None, "disable"),
])
def test_upstream_authentication(hoopy_gateway, cluster, user, secret, tls):
    env = {"HOOPY_TEST_UPSTREAM_PW": secret} if secret else {}
    g = gateway(hoopy_gateway, cluster["port"], user, "HOOPY_TEST_UPSTREAM_PW" if secret else None, tls, env=env)
    assert query(g) == [("hello",)]
    got_ssl = query(g, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert got_ssl == [(tls != "disable",)]


def test_upstream_verify_full_checks_the_certificate(hoopy_gateway, cluster, tmp_path):
    env = {"HOOPY_TEST_UPSTREAM_PW": "scram-secret"}
    g = gateway(hoopy_gateway, cluster["port"], "scram_user", "HOOPY_TEST_UPSTREAM_PW", "verify-full",
                extra=f'upstream_ca = "file:{cluster["ca"]}"\n', env=env)
    assert query(g) == [("hello",)]
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    make_cert(other_dir)  # a CA that did not sign the server's certificate
    g2 = gateway(hoopy_gateway, cluster["port"], "scram_user", "HOOPY_TEST_UPSTREAM_PW", "verify-full",
                 extra=f'upstream_ca = "file:{other_dir / "server.crt"}"\n', env=env)
    with pytest.raises(psycopg.OperationalError) as e:
        query(g2)
    assert "upstream" in str(e.value)


def test_wrong_upstream_password_is_not_shown_to_the_client(hoopy_gateway, cluster):
    g = gateway(hoopy_gateway, cluster["port"], "scram_user", "HOOPY_TEST_UPSTREAM_PW",
                env={"HOOPY_TEST_UPSTREAM_PW": "wrong"})
    with pytest.raises(psycopg.OperationalError) as e:
        query(g)
    assert "could not authenticate upstream" in str(e.value)
    assert "scram_user" not in str(e.value)


def test_client_tls_with_scram_plus_and_cleartext_only_over_tls(hoopy_gateway, cluster, tmp_path):
    cert, key = make_cert(tmp_path)
    extra = f'tls_cert = "file:{tmp_path / "server.crt"}"\ntls_key = "file:{tmp_path / "server.key"}"\n'
    g = gateway(hoopy_gateway, cluster["port"], "trust_user", extra=extra)
    # channel_binding=require: libpq insists on SCRAM-SHA-256-PLUS.
    assert query(g, sslmode="verify-full", sslrootcert=str(tmp_path / "server.crt"),
                 channel_binding="require") == [("hello",)]
    assert query(g, sslmode="disable") == [("hello",)]  # plain SCRAM without TLS
    with pytest.raises(psycopg.OperationalError):
        query(g, sslmode="require", password="wrong")

    g2 = gateway(hoopy_gateway, cluster["port"], "trust_user", extra=extra + 'client_auth = "password"\n')
    assert query(g2, sslmode="require") == [("hello",)]
    with pytest.raises(psycopg.OperationalError) as e:
        query(g2, sslmode="disable")
    assert "requires TLS" in str(e.value)


def test_protocol_32_startup_is_negotiated_down(hoopy_gateway, cluster):
    """A PostgreSQL 18 libpq asks for 3.2; hoopy answers NegotiateProtocolVersion and carries on."""
    from hoopy.postgres import codec

    g = gateway(hoopy_gateway, cluster["port"], "trust_user")
    with socket.create_connection(("127.0.0.1", g.pg_port), timeout=5) as s:
        s.sendall(codec.startup_message({"user": AGENT.name, "database": "x"}, codec.PROTOCOL_32))
        time.sleep(0.3)
        data = s.recv(4096)
    r = codec.MessageReader()
    r.feed(data)
    msgs = list(r)
    assert msgs[0][0] == b"v" and codec.Cursor(msgs[0][1]).int32() == codec.PROTOCOL_30
    assert msgs[1][0] == b"R" and codec.Cursor(msgs[1][1]).int32() == 10  # SASL follows
