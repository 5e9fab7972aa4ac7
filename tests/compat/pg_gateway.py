"""A PostgreSQL gateway for the compatibility rows: a database of its own on the
local PostgreSQL, a real ``twistd -n hoopy`` in front of it offering TLS, one
identity with the grants a row needs."""
from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.support import HoopyProcess, free_port, ident

PG = "host=127.0.0.1 port=5432 user=postgres"

DUMPED = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, ssn text, email text);
INSERT INTO customers (name, ssn, email) VALUES
  ('Ann', '123-45-6789', 'ann@example.com'), ('Bob', '987-65-4321', 'bob@example.org');
CREATE TABLE invoices (id int PRIMARY KEY, cid int REFERENCES customers, amount numeric(10, 2), note jsonb);
INSERT INTO invoices VALUES (1, 1, 100.50, '{"a": 1}'), (2, 2, 7, NULL);
CREATE INDEX invoices_cid ON invoices (cid);
CREATE VIEW customer_names AS SELECT id, name FROM customers;
CREATE SEQUENCE counter START 42;
CREATE FUNCTION twice(x int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 2 * x';
CREATE SCHEMA other;
CREATE TABLE other.customers (id int, secret text);
INSERT INTO other.customers VALUES (1, 'other-secret');
"""


def admin_sql(sql: str, db: str = "postgres") -> str:
    r = subprocess.run(["psql", f"{PG} dbname={db}", "-XqAt", "-v", "ON_ERROR_STOP=1", "-c", sql],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


class PgGateway:
    def __init__(self, workdir: Path, grants: list[str], masked=("public.customers.ssn",)):
        from tests.test_postgres_tls import make_cert

        self.db = f"hoopy_compat_{secrets.token_hex(4)}"
        admin_sql(f"CREATE DATABASE {self.db}")
        admin_sql(DUMPED, self.db)
        self.agent = ident("compat-agent")
        self.port = free_port()
        make_cert(workdir)
        grant_list = ", ".join(f'"{g}"' for g in grants)
        columns = ", ".join(f'"{c}"' for c in masked)
        body = self.agent.toml() + f"""
[connections.pg]
type = "postgres"
listen = "tcp:{self.port}:interface=127.0.0.1"
upstream = "tcp:host=127.0.0.1:port=5432"
upstream_user = "postgres"
upstream_database = "{self.db}"
upstream_tls = "disable"
tls_cert = "file:{workdir}/server.crt"
tls_key = "file:{workdir}/server.key"

[[grants]]
identity = "compat-agent"
connection = "pg"
allow = [{grant_list}]

[[masking]]
connection = "pg"
columns = [{columns}]
"""
        self.proc = HoopyProcess(workdir, body).start()

    def env(self, tls: bool) -> dict:
        return {**os.environ, "PGPASSWORD": self.agent.token, "PGSSLMODE": "require" if tls else "disable",
                "PGCONNECT_TIMEOUT": "10"}

    def args(self) -> list[str]:
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", self.agent.name, "-d", "whatever"]

    def close(self):
        try:
            self.proc.stop()
        finally:
            admin_sql(f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)")


def gateway_fixture(grants: list[str]):
    @pytest.fixture(scope="module")
    def fixture(tmp_path_factory):
        g = PgGateway(tmp_path_factory.mktemp("pg-compat"), grants)
        yield g
        g.close()

    return fixture
