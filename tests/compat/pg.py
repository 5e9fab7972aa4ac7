"""A PostgreSQL gateway for the compatibility tests: one per test module.

Each module gets a database of its own on the local PostgreSQL (127.0.0.1:5432),
a real ``twistd -n hoopy`` in front of it with TLS offered to clients (so every
client can be run with TLS on and off), an agent identity and masking by pattern
and by column.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

import attrs

from tests.support import HoopyProcess, admin_sql, free_port, ident

SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text);
INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com', '123-45-6789'),
                             (2, 'Bob', 'bob@example.org', '987-65-4321');
CREATE TABLE notes (id int PRIMARY KEY, body text, n bigint, tags text[]);
INSERT INTO notes VALUES (1, 'hello', 7, '{a,b}'), (2, 'mail me at zed@example.net', 8, '{c}');
CREATE TABLE ledger (id serial PRIMARY KEY, amount int, memo text);
"""


@attrs.define
class PgGateway:
    proc: HoopyProcess
    port: int
    db: str
    agent: object  # tests.support.Ident
    ca: str  # the gateway's certificate, for verify-full

    def conninfo(self, tls: bool, **extra) -> str:
        parts = {"host": "127.0.0.1", "port": self.port, "user": self.agent.name, "password": self.agent.token,
                 "dbname": self.db, "sslmode": "require" if tls else "disable", "connect_timeout": 10, **extra}
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def env(self, tls: bool) -> dict:
        return {**os.environ, "PGPASSWORD": self.agent.token, "PGSSLMODE": "require" if tls else "disable",
                "PGCONNECT_TIMEOUT": "10"}

    def psql(self, *args, tls: bool, timeout=30, input=None, extra_env=None):
        cmd = ["psql", f"host=127.0.0.1 port={self.port} user={self.agent.name} dbname={self.db}", "-XAt",
               *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input,
                              env={**self.env(tls), **(extra_env or {})})

    def events(self, kind=None):
        return self.proc.events(kind)

    def wait_events(self, pred, kind=None, timeout=10.0):
        deadline = time.monotonic() + timeout
        while True:
            got = [e for e in self.events(kind) if pred(e)]
            if got or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def sessions(self) -> list:
        import json

        r = self.proc.hoopy("sessions", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)


def start(workdir: Path, *, allow=('"all"',), patterns=("email",), columns=("public.customers.ssn",),
          extra_sql: str = "", gateway_extra: str = "") -> PgGateway:
    """A database and a gateway in front of it; stop with ``stop(g)``."""
    from tests.test_postgres_tls import make_cert

    db = f"hoopy_compat_{secrets.token_hex(4)}"
    admin_sql(f"CREATE DATABASE {db}")
    admin_sql(SCHEMA + extra_sql, db)
    make_cert(workdir)
    agent = ident(f"compat-{secrets.token_hex(2)}")
    port = free_port()
    masking = ""
    if patterns or columns:
        masking = ("[[masking]]\nconnection = \"pg\"\n"
                   f"columns = [{', '.join(repr(c).replace(chr(39), chr(34)) for c in columns)}]\n"
                   f"patterns = [{', '.join(repr(p).replace(chr(39), chr(34)) for p in patterns)}]\n")
    body = agent.toml() + f"""
[connections.pg]
type = "postgres"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "tcp:host=127.0.0.1:port=5432"
upstream_user = "postgres"
upstream_database = "{db}"
upstream_tls = "disable"
tls_cert = "file:{workdir / 'server.crt'}"
tls_key = "file:{workdir / 'server.key'}"

[[grants]]
identity = "{agent.name}"
connection = "pg"
allow = [{', '.join(allow)}]

{masking}"""
    proc = HoopyProcess(workdir, body)
    if gateway_extra:
        text = proc.config.read_text().replace("[gateway]\n", "[gateway]\n" + gateway_extra, 1)
        proc.config.write_text(text)
    try:
        proc.start()
    except Exception:
        admin_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        raise
    return PgGateway(proc, port, db, agent, str(workdir / "server.crt"))


def stop(g: PgGateway) -> None:
    try:
        g.proc.stop()
    finally:
        admin_sql(f"DROP DATABASE IF EXISTS {g.db} WITH (FORCE)")


def backend_pids(db: str) -> set:
    out = admin_sql(f"SELECT pid FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()")
    return {int(x) for x in out.split()} if out else set()


def terminate_backends(db: str) -> None:
    admin_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' "
              "AND pid <> pg_backend_pid()")


def wait_until(cond, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()
