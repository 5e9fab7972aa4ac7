"""A PostgreSQL masking rule that does not resolve upstream fails closed (issue 15, 1).

Against the real PostgreSQL on 127.0.0.1:5432 through a real ``twistd -n hoopy``, with psql,
psycopg (simple, extended, pipeline) and asyncpg: a mistyped column or table in a `columns`
rule masked nothing before; now every statement of such a session is refused naming the rule,
nothing reaches the upstream, an error event and a log line say so, and the connection serves
again (masked) as soon as the rule resolves.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import threading

import pytest

from tests.support import admin_sql, free_port, ident, pg_connection

psycopg = pytest.importorskip("psycopg")
asyncpg = pytest.importorskip("asyncpg")

AGENT = ident("fc-agent")
CARD = "4111111111111111"


@pytest.fixture
def database():
    name = f"hoopy_fc_{secrets.token_hex(4)}"
    admin_sql(f"CREATE DATABASE {name}")
    admin_sql(f"""
        CREATE TABLE customers (id int PRIMARY KEY, name text, card_number text);
        INSERT INTO customers VALUES (1, 'Ann', '{CARD}');
        CREATE TABLE audit_trail (n int);
        CREATE FUNCTION public.touch() RETURNS int LANGUAGE sql
          AS 'INSERT INTO audit_trail VALUES (1) RETURNING 1';
    """, name)
    yield name
    admin_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def body(db, port, columns):
    cols = ", ".join(f'"{c}"' for c in columns)
    return AGENT.toml() + f"""
{pg_connection(port, db)}

[[grants]]
identity = "fc-agent"
connection = "pg"
allow = ["read public.customers", "read public.custmers", "read billing.customers",
         "write public.audit_trail", "write public.touch()"]

[[masking]]
connection = "pg"
patterns = ["email"]

[[masking]]
connection = "pg"
columns = [{cols}]
"""


def psql(port, *sql):
    args = ["psql", f"host=127.0.0.1 port={port} user={AGENT.name} dbname=x", "-XAt"]
    for s in sql:
        args += ["-c", s]
    env = {**os.environ, "PGPASSWORD": AGENT.token, "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run(args, capture_output=True, text=True, timeout=30, env=env)


def in_thread(coro_fn):
    """asyncpg on its own event loop (pytest-twisted runs one in this thread)."""
    box = {}

    def target():
        try:
            box["r"] = asyncio.run(coro_fn())
        except BaseException as e:  # re-raised in the test's thread
            box["e"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join(60)
    if "e" in box:
        raise box["e"]
    return box.get("r")


def refused_everywhere(port, db, rule_text):
    """Every client and protocol path is refused with the rule's name; nothing runs upstream."""
    # psql: simple protocol, several statements, COPY, a meta-command's catalog query.
    for sql in ("SELECT card_number FROM customers", "SELECT 1", "SELECT public.touch()",
                "INSERT INTO audit_trail VALUES (2)", "SELECT 1; SELECT public.touch()",
                "COPY customers (id, card_number) TO STDOUT", "\\d customers"):
        r = psql(port, sql)
        assert r.returncode != 0, (sql, r.stdout)
        assert CARD not in r.stdout
        assert rule_text in r.stderr and "refuses every statement" in r.stderr, (sql, r.stderr)
    dsn = f"host=127.0.0.1 port={port} user={AGENT.name} password={AGENT.token} dbname=x"
    with psycopg.connect(dsn, autocommit=True) as c:
        for prepare in (False, True):  # extended protocol: unnamed and named statements
            with pytest.raises(psycopg.Error) as e:
                c.execute("SELECT card_number FROM customers WHERE id = %s", (1,), prepare=prepare)
            assert rule_text in str(e.value)
        with pytest.raises(psycopg.Error) as e:  # a pipeline of several Parse/Bind/Execute, one Sync
            with c.pipeline():
                c.execute("SELECT public.touch()")
                c.execute("SELECT card_number FROM customers")
        assert rule_text in str(e.value)
        with pytest.raises(psycopg.Error):
            c.execute("SELECT 1")  # the session stays refusing, never serving

    async def apg():
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user=AGENT.name, password=AGENT.token,
                                     database="x")
        try:
            for q in ("SELECT card_number FROM customers", "SELECT public.touch()"):
                with pytest.raises(asyncpg.PostgresError) as e:
                    await conn.fetch(q)
                assert rule_text in str(e.value)
        finally:
            await conn.close()

    in_thread(apg)
    assert admin_sql("SELECT count(*) FROM audit_trail", db) == "0"  # nothing ran upstream


@pytest.mark.parametrize("typo,fix", [
    # a mistyped column; fixed by renaming the column upstream
    ("public.customers.card_numbr", "ALTER TABLE customers RENAME COLUMN card_number TO card_numbr"),
    # a mistyped table; fixed by creating it
    ("public.custmers.card_number",
     f"CREATE TABLE custmers (id int, card_number text); INSERT INTO custmers VALUES (1, '{CARD}')"),
    # a schema that does not exist
    ("billing.customers.card_number",
     f"CREATE SCHEMA billing; CREATE TABLE billing.customers (card_number text); "
     f"INSERT INTO billing.customers VALUES ('{CARD}')"),
])
def test_unresolved_masking_rule_refuses_every_statement_until_it_resolves(hoopy_gateway, database, typo, fix):
    port = free_port()
    # One good rule beside the bad one: a partly resolved set is still refused.
    gw = hoopy_gateway(body(database, port, ["public.customers.name", typo]))
    rule_text = f"masking[1].columns[1] = '{typo}'"
    refused_everywhere(port, database, rule_text)

    events = gw.events("masking.unresolved")
    assert events and all(e["outcome"] == "error" and e["data"]["rules"] == [rule_text] for e in events)
    assert all(e["data"]["columns"] == [typo] for e in events)
    assert f"postgres pg: hoopy: masking rule {rule_text} does not resolve" in gw.log_text()

    # The rule resolves upstream: the next connection serves, with the column masked.
    admin_sql(fix, database)
    schema, table, column = typo.split(".")
    r = psql(port, f"SELECT {column} FROM {schema}.{table}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[REDACTED]", r.stdout
    r = psql(port, "SELECT name FROM customers")
    assert r.returncode == 0 and r.stdout.strip() == "[REDACTED]", r.stderr  # the good rule masks
    r = psql(port, "SELECT public.touch()")
    assert r.returncode == 0, r.stderr
    assert admin_sql("SELECT count(*) FROM audit_trail", database) == "1"


def test_a_column_dropped_upstream_refuses_new_sessions(hoopy_gateway, database):
    """A rule that resolved yesterday and no longer does (the column dropped, the table renamed)
    fails closed from the next connection on; one already open keeps its resolved catalog."""
    port = free_port()
    gw = hoopy_gateway(body(database, port, ["public.customers.card_number"]))
    r = psql(port, "SELECT card_number FROM customers")
    assert r.returncode == 0 and r.stdout.strip() == "[REDACTED]", r.stderr
    admin_sql("ALTER TABLE customers RENAME TO clients", database)
    r = psql(port, "SELECT 1")
    assert r.returncode != 0 and "masking[1].columns[0] = 'public.customers.card_number'" in r.stderr
    assert gw.events("masking.unresolved")


CHECK_BODY = """
[gateway]
state = "hoopy.db"

[identities.a]
kind = "agent"
token_sha256 = "{sha}"

[connections.pg]
type = "postgres"
listen = "tcp:15432"
upstream = "tcp:host=127.0.0.1:port=5432"
upstream_user = "postgres"

[connections.api]
type = "http"
listen = "tcp:18080"
upstream = "http://127.0.0.1:9"

[connections.box]
type = "ssh"
listen = "tcp:12222"
upstream = "tcp:host=127.0.0.1:port=22"
upstream_user = "root"
upstream_key = "file:{key}"
upstream_known_hosts = "file:{kh}"

[[masking]]
connection = "{conn}"
{rule}
"""


@pytest.mark.parametrize("conn,rule,key,message", [
    ("pg", 'columns = ["customers.ssn"]', "masking[0].columns[0]", "is not schema.table.column"),
    ("pg", 'columns = ["public..ssn"]', "masking[0].columns[0]", "is not schema.table.column"),
    ("pg", 'columns = ["public.customers.ssn.x"]', "masking[0].columns[0]", "is not schema.table.column"),
    ("pg", 'patterns = ["regex:(unclosed"]', "masking[0].patterns[0]", "bad regular expression"),
    ("pg", 'patterns = ["regex:x*"]', "masking[0].patterns[0]", "matches the empty string"),
    ("api", 'fields = ["card..number"]', "masking[0].fields[0]", "is not a key or a dotted path"),
    ("api", 'fields = [".ssn"]', "masking[0].fields[0]", "is not a key or a dotted path"),
    ("api", 'fields = [""]', "masking[0].fields[0]", "is not a key or a dotted path"),
    ("api", 'patterns = ["regex:[a-"]', "masking[0].patterns[0]", "bad regular expression"),
    ("api", 'passthrough = ["GET nopath"]', "masking[0].passthrough[0]", "the path must start with /"),
    ("box", 'patterns = ["regex:(?P<x"]', "masking[0].patterns[0]", "bad regular expression"),
    ("box", 'patterns = ["phone"]', "masking[0].patterns[0]", "unknown pattern"),
    ("box", 'fields = ["ssn"]', "masking[0].fields", "apply to"),
    ("box", 'columns = ["public.t.c"]', "masking[0].columns", "apply to postgres connections only"),
])
def test_check_refuses_masking_rules_that_can_never_match(tmp_path, conn, rule, key, message):
    """A rule whose syntax or target is invalid fails `hoopy check` (exit 2, named by its key),
    so it cannot reach a gateway that would mask nothing with it."""
    import hashlib
    import sys

    from tests.test_ssh import keygen

    keygen(tmp_path / "k")
    (tmp_path / "kh").write_text("[127.0.0.1]:22 " + (tmp_path / "k.pub").read_text())
    cfg = tmp_path / "hoopy.toml"
    cfg.write_text(CHECK_BODY.format(sha=hashlib.sha256(b"x").hexdigest(), key=tmp_path / "k",
                                     kh=tmp_path / "kh", conn=conn, rule=rule))
    r = subprocess.run([sys.executable, "-m", "hoopy", "check", "-c", str(cfg)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert any(ln.startswith(f"{cfg}: {key}: ") and message in ln for ln in r.stdout.splitlines()), r.stdout
