"""The PostgreSQL gateway against the real PostgreSQL on 127.0.0.1:5432,
through a real ``twistd -n hoopy``, with real clients (psql, psycopg, asyncpg)."""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from tests.support import HoopyProcess, free_port, ident

psycopg = pytest.importorskip("psycopg")
asyncpg = pytest.importorskip("asyncpg")

PG = "host=127.0.0.1 port=5432 user=postgres"
PSQL = "psql"


def admin_sql(sql: str, db: str = "postgres") -> str:
    r = subprocess.run([PSQL, f"{PG} dbname={db}", "-XqAt", "-v", "ON_ERROR_STOP=1", "-c", sql],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.fixture(scope="module")
def database():
    """A database of our own, so parallel runs never collide."""
    name = f"hoopy_test_{secrets.token_hex(4)}"
    admin_sql(f"CREATE DATABASE {name}")
    admin_sql("""
        CREATE TABLE customers (id int PRIMARY KEY, name text, ssn text, email text, card bigint);
        INSERT INTO customers VALUES
          (1, 'Ann', '123-45-6789', 'ann@example.com', 4111111111111111),
          (2, 'Bob', '987-65-4321', 'bob@example.org', 42);
        CREATE TABLE invoices (id int PRIMARY KEY, amount int);
        INSERT INTO invoices VALUES (1, 100), (2, 200);
        CREATE VIEW customer_view AS SELECT id, ssn FROM customers;
        CREATE VIEW renamed_view AS SELECT id, ssn AS x FROM customers;
        -- A user function named like a harmless built-in: upper(int) is not pg_catalog's.
        CREATE FUNCTION public.upper(x int) RETURNS bigint LANGUAGE sql
          AS 'WITH d AS (DELETE FROM invoices WHERE id = x RETURNING 1) SELECT count(*) FROM d';
    """, name)
    yield name
    admin_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


AGENT = ident("pg-agent")
REVIEWER = ident("pg-reviewer")


def body(db: str, port: int, upstream_port: int = 5432, extra: str = "") -> str:
    return (AGENT.toml() + REVIEWER.toml(kind="human", roles=["reviewer"]) + f"""
[connections.pg]
type = "postgres"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "tcp:host=127.0.0.1:port={upstream_port}"
upstream_user = "postgres"
upstream_database = "{db}"
upstream_tls = "disable"
{extra}
[[grants]]
identity = "pg-agent"
connection = "pg"
allow = ["read public.customers", "read public.invoices", "read public.customer_view",
         "read public.renamed_view", "read public.customers_archive"]
approve = ["write public.invoices"]

[[masking]]
connection = "pg"
columns = ["public.customers.ssn"]
patterns = ["email", "credit_card"]
""")


def _pg_attrs(g, port):
    g.pg_port = port
    g.dsn = f"host=127.0.0.1 port={port} user={AGENT.name} password={AGENT.token} dbname=whatever"
    return g


@pytest.fixture
def gw(hoopy_gateway, database):
    """A gateway of the test's own: for tests that read its events, approvals, metrics or store,
    or stop it or its upstream."""
    port = free_port()
    return _pg_attrs(hoopy_gateway(body(database, port), approval_timeout="5s"), port)


@pytest.fixture(scope="module")
def shared_gw(database, tmp_path_factory):
    """The same gateway, one for the module: for tests that only connect and read what their own
    statements get (a gateway start each was ~20 of this file's starts)."""
    port = free_port()
    g = _pg_attrs(HoopyProcess(tmp_path_factory.mktemp("pg-shared"), body(database, port),
                               approval_timeout="5s").start(), port)
    yield g
    g.stop()


def psql(g, *sql, user=AGENT, password=None, extra_env=None, timeout=30):
    args = [PSQL, f"host=127.0.0.1 port={g.pg_port} user={user.name} dbname=x", "-XAt"]
    for s in sql:
        args += ["-c", s]
    env = {**os.environ, "PGPASSWORD": password or user.token, "PGCONNECT_TIMEOUT": "10", **(extra_env or {})}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def invoices(db):
    return admin_sql("SELECT id, amount FROM invoices ORDER BY id", db)


def customers_count(db):
    return admin_sql("SELECT count(*) FROM customers", db)


def test_psql_reads_refusals_and_masking(gw, database):
    r = psql(gw, "SELECT id, name FROM customers ORDER BY id")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["1|Ann", "2|Bob"]

    # Masked by origin: aliases and expressions do not unmask; views neither.
    r = psql(gw, "SELECT ssn AS s, lower(ssn), ssn || '' AS e, (SELECT ssn FROM customers LIMIT 1) "
                 "FROM customers c WHERE id = 1")
    assert r.returncode == 0, r.stderr
    assert "123-45-6789" not in r.stdout and r.stdout.strip() == "|".join(["[REDACTED]"] * 4)
    for q in ("SELECT row_to_json(c) FROM customers c", "SELECT json_agg(ssn) FROM customers",
              "SELECT * FROM customer_view", "SELECT s FROM (SELECT ssn AS s FROM customers) t",
              "SELECT c FROM customers c"):
        r = psql(gw, q)
        assert "45-6789" not in r.stdout and "65-4321" not in r.stdout, (q, r.stdout)
    # Patterns: every text value, and a card number stored as a bigint becomes NULL.
    r = psql(gw, "SELECT email, card, 'write to ann@example.com' FROM customers WHERE id = 1")
    assert r.stdout.strip() == "[REDACTED]||write to [REDACTED]", r.stdout

    # Refused: a plain write, a smuggled write, a CTE write, EXPLAIN ANALYZE, COPY of a masked table.
    for q in ("DELETE FROM customers",
              "SELECT 1; DELETE FROM customers",
              "WITH d AS (DELETE FROM customers RETURNING id) SELECT * FROM d",
              "EXPLAIN ANALYZE DELETE FROM customers",
              "SELECT id FROM customers FOR UPDATE",
              "SELECT set_config('role', 'postgres', false)",
              "DO $$BEGIN DELETE FROM customers; END$$",
              "COPY customers TO STDOUT",
              "SET ROLE postgres"):
        r = psql(gw, q)
        assert r.returncode != 0, q
        assert "hoopy" in r.stderr, (q, r.stderr)
    assert customers_count(database) == "2"
    # In a transaction block a refusal aborts the transaction: COMMIT rolls back.
    r = psql(gw, "BEGIN", "SELECT 1", "DELETE FROM customers", "SELECT 2", "COMMIT")
    assert "no grant allows write public.customers" in r.stderr
    assert "current transaction is aborted" in r.stderr and r.stdout.splitlines()[-1] == "ROLLBACK", r.stdout
    # The connection stays usable after a refusal.
    r = psql(gw, "DELETE FROM customers", "SELECT count(*) FROM invoices")
    assert "no grant allows write public.customers" in r.stderr
    assert r.stdout.strip() == "2"
    refused = [e for e in gw.events("operation") if e["outcome"] == "refused"]
    assert any("DELETE FROM customers" in e["data"].get("sql", "") for e in refused)
    redactions = gw.events("redaction")
    assert redactions and all("123-45-6789" not in json.dumps(e) for e in redactions)
    assert any(e["data"]["columns"].get("public.customers.ssn") for e in redactions)


def test_psycopg_text_binary_pipeline(shared_gw, database):
    with psycopg.connect(shared_gw.dsn, autocommit=True) as c:
        assert c.execute("SELECT id, name, ssn FROM customers WHERE id = %s", (1,)).fetchall() == \
            [(1, "Ann", "[REDACTED]")]
        cur = c.cursor(binary=True)
        rows = cur.execute("SELECT id, name, ssn AS x, email, card FROM customers ORDER BY id").fetchall()
        assert rows == [(1, "Ann", "[REDACTED]", "[REDACTED]", None), (2, "Bob", "[REDACTED]", "[REDACTED]", 42)]
        with c.pipeline():
            a = c.execute("SELECT count(*) FROM invoices")
            b = c.execute("SELECT name FROM customers WHERE id = %s", (2,))
            d = c.execute("SELECT amount FROM invoices WHERE id = %s", (2,), binary=True)
        assert a.fetchall() == [(2,)] and b.fetchall() == [("Bob",)] and d.fetchall() == [(200,)]
        # One refusal in a pipeline: the rest up to Sync is skipped, then all goes on.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with c.pipeline():
                c.execute("SELECT 1")
                c.execute("DELETE FROM customers WHERE id = %s", (1,))
        assert c.execute("SELECT count(*) FROM customers").fetchone() == (2,)
        # A transaction through the gateway; a refusal inside it aborts it, as a server error would.
        c.autocommit = False
        assert c.execute("SELECT amount FROM invoices WHERE id = 1").fetchone() == (100,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("DELETE FROM customers WHERE id = %s", (1,))
        assert c.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            c.execute("SELECT 1")
        c.rollback()
        assert c.execute("SELECT 1").fetchone() == (1,)
        c.rollback()
    assert customers_count(database) == "2"


def test_asyncpg_prepared_binary(gw, database):
    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=gw.pg_port, user=AGENT.name,
                                     password=AGENT.token, database="x")
        try:
            st = await conn.prepare("SELECT id, name, ssn, card FROM customers WHERE id = $1")
            r1 = await st.fetchrow(1)
            r2 = await st.fetchrow(2)
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.execute("DELETE FROM customers WHERE id = $1", 1)
            n = await conn.fetchval("SELECT count(*) FROM customers")
            return r1, r2, n
        finally:
            await conn.close()

    r1, r2, n = in_thread(run)
    assert tuple(r1) == (1, "Ann", "[REDACTED]", None)
    assert tuple(r2) == (2, "Bob", "[REDACTED]", 42)
    assert n == 2 and customers_count(database) == "2"


def in_thread(coro_fn):
    """asyncpg on its own event loop (pytest-twisted runs one in this thread)."""
    box = {}

    def target():
        try:
            box["r"] = asyncio.run(coro_fn())
        except BaseException as e:  # re-raised below in the test's thread
            box["e"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join(60)
    if "e" in box:
        raise box["e"]
    return box["r"]


def _held_update(gw, decide, before):
    result = {}

    def client():
        result["r"] = psql(gw, "UPDATE invoices SET amount = amount + 1 WHERE id = 1", timeout=30)

    t = threading.Thread(target=client)
    t.start()
    rows = gw.wait_pending(REVIEWER.token)
    assert invoices(gw.database) == before  # nothing ran while held
    r = gw.hoopy(decide, rows[0]["id"], token=REVIEWER.token)
    assert r.returncode == 0, r.stdout + r.stderr
    t.join(30)
    return rows[0]["id"], result["r"]


def test_held_update_approved_then_denied(gw, database):
    gw.database = database
    aid, r = _held_update(gw, "approve", "1|100\n2|200")
    assert r.returncode == 0, r.stderr
    assert aid in r.stderr  # the NoticeResponse named the approval at once
    assert invoices(database) == "1|101\n2|200"
    aid, r = _held_update(gw, "deny", "1|101\n2|200")
    assert r.returncode != 0 and "42501" not in r.stdout
    assert aid in r.stderr and "denied" in r.stderr
    assert invoices(database) == "1|101\n2|200"
    admin_sql("UPDATE invoices SET amount = 100 WHERE id = 1", database)


def test_the_reviewer_of_a_held_statement_reads_its_bind_parameters(gw, database):
    """ "UPDATE invoices SET amount = $1" says nothing of the amount: the approval shows the values."""
    gw.database = database
    result = {}

    def client():
        with psycopg.connect(gw.dsn, autocommit=True) as c:  # psycopg binds server-side (Parse/Bind)
            try:
                c.execute("UPDATE invoices SET amount = %s WHERE id = %s AND 'x' <> %s", (555, 1, "it's"))
            except psycopg.errors.InsufficientPrivilege as e:
                result["error"] = str(e)

    t = threading.Thread(target=client)
    t.start()
    rows = gw.wait_pending(REVIEWER.token)
    op = rows[0]["operation"]
    assert op == ("UPDATE invoices SET amount = $1 WHERE id = $2 AND 'x' <> $3\n"
                  "-- parameters: $1 = 555, $2 = 1, $3 = 'it''s'"), op
    shown = gw.hoopy("approvals", rows[0]["id"])
    assert shown.returncode == 0 and "    -- parameters: $1 = 555" in shown.stdout, shown
    assert gw.hoopy("deny", rows[0]["id"], token=REVIEWER.token).returncode == 0
    t.join(30)
    assert "denied" in result["error"] and invoices(database) == "1|100\n2|200"
    assert gw.hoopy("audit", "verify").returncode == 0


def test_cancel_from_psql_stops_pg_sleep(gw):
    env = {**os.environ, "PGPASSWORD": AGENT.token}
    p = subprocess.Popen([PSQL, f"host=127.0.0.1 port={gw.pg_port} user={AGENT.name} dbname=x", "-XAt",
                          "-c", "SELECT pg_sleep(30)"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "pg_sleep" not in admin_sql(
            "SELECT string_agg(query, ',') FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"):
        time.sleep(0.1)
    start = time.monotonic()
    p.send_signal(signal.SIGINT)  # psql sends a CancelRequest with the key hoopy gave it
    out, err = p.communicate(timeout=15)
    assert time.monotonic() - start < 5
    assert "canceling statement due to user request" in err, err
    assert any(e["kind"] == "cancel" for e in gw.events())


def test_wrong_password_and_unknown_user_get_28P01(gw):
    r1 = psql(gw, "SELECT 1", password="wrong")
    r2 = psql(gw, "SELECT 1", user=ident("nobody"))
    for r in (r1, r2):
        assert r.returncode != 0
        assert "password authentication failed" in r.stderr
    # Same words, no hint which it was.
    assert r1.stderr.replace(AGENT.name, "U") == r2.stderr.replace("nobody", "U")
    with pytest.raises(psycopg.OperationalError) as e:
        psycopg.connect(gw.dsn.replace(AGENT.token, "nope"))
    assert "28P01" in str(getattr(e.value, "sqlstate", "")) or "password authentication failed" in str(e.value)
    assert wait_for(lambda: len(gw.events("auth.failed")) >= 3)


def test_show_lists_statements_with_parameters_and_audit_verifies(gw):
    with psycopg.connect(gw.dsn + " application_name=billing-bot options='-c hoopy.model=gpt-x "
                                  "-c hoopy.tool_call=call-7'", autocommit=True) as c:
        c.execute("SELECT name FROM customers WHERE id = %s AND name <> %s", (2, "zed")).fetchall()
        c.cursor(binary=True).execute("SELECT amount FROM invoices WHERE id = %s", (1,)).fetchall()
        # the hoopy.* options never reach upstream
        assert "hoopy" not in (c.execute("SHOW application_name").fetchone()[0] or "x") + \
            str(c.execute("SELECT current_setting('hoopy.model', true)").fetchone()[0] or "")
    r = gw.hoopy("sessions", "--json")
    sessions = json.loads(r.stdout)
    s = [s for s in sessions if s.get("identity") == AGENT.name][-1]
    assert s["model"] == "gpt-x" and s["tool_call"] == "call-7" and s["application_name"] == "billing-bot"
    r = gw.hoopy("show", s["id"])
    assert r.returncode == 0
    assert "SELECT name FROM customers WHERE id = $1" in r.stdout
    assert 'params=[2, "zed"]' in r.stdout, r.stdout
    assert 'params=[1]' in r.stdout, r.stdout  # binary int4 decoded by type
    statements = [e for e in gw.events("statement") if e["session"] == s["id"]]
    assert statements and all("duration_ms" in e["data"] for e in statements)
    assert any(e["data"].get("rows") == 1 for e in statements)
    r = gw.hoopy("audit", "verify")
    assert r.returncode == 0, r.stdout + r.stderr


def test_upstream_down_gives_08001_and_malformed_bytes_08P01(hoopy_gateway, database):
    port, dead = free_port(), free_port()
    g = hoopy_gateway(body(database, port, upstream_port=dead))
    g.pg_port = port
    r = psql(g, "SELECT 1")
    assert r.returncode != 0 and "upstream" in r.stderr, r.stderr
    assert wait_for(lambda: g.events("session.end")), "the session is sealed"
    # Garbage after a valid startup: 08P01 and that connection closes; the gateway carries on.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"\x00\x00\x00\x08\xff\xff\xff\xff")
        data = s.recv(1000)
    assert b"08P01" in data
    # Before authenticating, a message may not claim more than 64 KiB: a peer
    # without a password cannot make the gateway buffer 256 MiB.
    from hoopy.postgres import codec

    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(codec.startup_message({"user": "nobody", "database": "x"}))
        s.recv(1000)  # AuthenticationSASL
        s.sendall(b"p" + (100 * 1024 * 1024).to_bytes(4, "big") + b"x" * 1000)
        data = s.recv(1000)
    assert b"08P01" in data and b"invalid length" in data, data
    status, _ = g.get("/health")
    assert status in (200, 503)


def raw_client(port, user, token):
    """A minimal client on a plain socket (our own codec and SCRAM client), so
    the test decides when, and whether, to read."""
    from hoopy.postgres import codec, scram

    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(codec.startup_message({"user": user, "database": "x"}))
    r = codec.MessageReader()

    def recv_msg():
        while True:
            m = r.next()
            if m is not None:
                return m
            data = s.recv(65536)
            assert data, "closed"
            r.feed(data)

    t, p = recv_msg()
    assert t == b"R"
    client = scram.ScramClient(token, [scram.MECH], None)
    s.sendall(codec.sasl_initial(client.mech, client.first()))
    t, p = recv_msg()
    s.sendall(codec.password(client.final(p[4:])))
    while True:
        t, p = recv_msg()
        if t == b"Z":
            return s, recv_msg
        assert t != b"E", p


def gateway_rss_kib(g) -> int:
    for line in open(f"/proc/{g.proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_backpressure_and_client_gone_mid_result_cancels_upstream(gw):
    marker = f"hoopy_bp_{secrets.token_hex(3)}"
    s, recv_msg = raw_client(gw.pg_port, AGENT.name, AGENT.token)
    from hoopy.postgres import codec

    # About 2 GB of rows if drained; the client reads one message and stops.
    s.sendall(codec.query(f"SELECT g, repeat('{marker}', 100) FROM generate_series(1, 20000000) g"))
    assert recv_msg()[0] == b"T"
    before = gateway_rss_kib(gw)
    time.sleep(3)
    grown = gateway_rss_kib(gw) - before
    assert grown < 64 * 1024, f"gateway grew {grown} KiB while the client did not read"
    active = f"SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND state = 'active' " \
             "AND pid <> pg_backend_pid()"
    assert admin_sql(active) == "1"
    s.close()
    assert wait_for(lambda: admin_sql(active) == "0", timeout=10), "upstream query still running"
    assert wait_for(lambda: any(e["data"].get("reason") == "client disconnected mid-result"
                                for e in gw.events("session.end")))


def test_sigterm_ends_and_records_open_sessions(gw):
    c = psycopg.connect(gw.dsn, autocommit=True)
    assert c.execute("SELECT 1").fetchone() == (1,)
    assert gw.stop() in (0, -signal.SIGTERM)  # twistd 26 re-raises the signal after a clean stop
    ends = [e for e in gw.events("session.end") if e["data"].get("reason") == "gateway shutdown"]
    assert len(ends) == 1
    with pytest.raises(psycopg.OperationalError):
        c.execute("SELECT 1")
    c.close()


def test_copy_to_stdout_is_pattern_masked_binary_too(shared_gw, database):
    r = psql(shared_gw, "COPY (SELECT id, 'mail ann@example.com' FROM public.invoices ORDER BY id) TO STDOUT")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["1\tmail [REDACTED]", "2\tmail [REDACTED]"]
    r = psql(shared_gw, "COPY (SELECT id, email FROM public.customers) TO STDOUT")  # names a masked table
    assert r.returncode != 0 and "masked" in r.stderr
    # Binary COPY carries no types: a value with a pattern match becomes NULL (issue 11 item 5).
    r = subprocess.run([PSQL, f"host=127.0.0.1 port={shared_gw.pg_port} user={AGENT.name} dbname=x", "-XAt", "-c",
                        "COPY (SELECT 'x@example.com', 4111111111111111::int8, 'plain') TO STDOUT (FORMAT binary)"],
                       capture_output=True, timeout=30, env={**os.environ, "PGPASSWORD": AGENT.token})
    assert r.returncode == 0, r.stderr
    assert b"example" not in r.stdout and (4111111111111111).to_bytes(8, "big") not in r.stdout
    assert b"\x00\x03\xff\xff\xff\xff\xff\xff\xff\xff\x00\x00\x00\x05plain" in r.stdout, r.stdout


def test_held_statement_notice_names_the_approval_at_once(gw, database):
    from hoopy.postgres import codec

    s, recv_msg = raw_client(gw.pg_port, AGENT.name, AGENT.token)
    s.sendall(codec.query("UPDATE invoices SET amount = amount WHERE id = 2"))
    t, p = recv_msg()  # before any reviewer acts
    assert t == b"N"
    pending = gw.wait_pending(REVIEWER.token)
    assert pending[0]["id"] in codec.parse_fields(p)["M"]
    assert gw.hoopy("deny", pending[0]["id"], "--reason", "not now", token=REVIEWER.token).returncode == 0
    t, p = recv_msg()
    fields = codec.parse_fields(p)
    assert t == b"E" and fields["C"] == "42501" and pending[0]["id"] in fields["M"]
    assert recv_msg() == (b"Z", b"I")
    s.sendall(codec.query("SELECT 1"))  # still usable
    assert recv_msg()[0] == b"T"
    s.close()


def test_upstream_dies_mid_session_then_the_gateway_carries_on(gw):
    c = psycopg.connect(gw.dsn, autocommit=True)
    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
    admin_sql(f"SELECT pg_terminate_backend({pid})")
    with pytest.raises(psycopg.OperationalError):
        c.execute("SELECT 1")
    c.close()
    assert wait_for(lambda: any(e["data"].get("reason", "").startswith("upstream")
                                for e in gw.events("session.end")))
    with psycopg.connect(gw.dsn, autocommit=True) as c2:
        assert c2.execute("SELECT 1").fetchone() == (1,)


def test_statement_refused_when_the_audit_store_cannot_write(gw, database):
    """A lock on the SQLite file (another process in a write transaction): a statement's event is
    durable in the event log, so the statement runs and is in the file once the lock goes; a new
    session, whose row the file itself must take, is refused with the audit store's message.
    (A statement whose event the log cannot take is refused: tests/test_event_log.py.)"""
    import sqlite3

    with psycopg.connect(gw.dsn, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM invoices").fetchone() == (2,)
        lock = sqlite3.connect(gw.db, timeout=5, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            assert c.execute("SELECT count(*) FROM invoices WHERE id > 0").fetchone() == (2,)
            with pytest.raises(psycopg.OperationalError) as e:
                psycopg.connect(gw.dsn, autocommit=True, connect_timeout=10).close()
            assert "cannot record this session" in str(e.value)
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        assert c.execute("SELECT count(*) FROM invoices").fetchone() == (2,)
    texts = [e["data"].get("sql") or e["data"].get("text") for e in gw.events("operation")]
    assert any("WHERE id > 0" in (t or "") for t in texts), texts


JDBC_JAR = next(iter(sorted(__import__("glob").glob(
    os.path.expanduser("~/.m2/repository/org/postgresql/postgresql/*/postgresql-*.jar")))), None)

JDBC_SOURCE = r"""
import java.sql.*;
public class HoopyJdbc {
  public static void main(String[] a) throws Exception {
    try (Connection c = DriverManager.getConnection(a[0], a[1], a[2])) {
      PreparedStatement ps = c.prepareStatement("SELECT id, name, ssn FROM customers WHERE id = ?");
      for (int i = 0; i < 7; i++) {  // past prepareThreshold: a named server-side statement
        ps.setInt(1, 1 + i % 2);
        try (ResultSet rs = ps.executeQuery()) { rs.next(); System.out.println(rs.getInt(1) + "|" + rs.getString(2) + "|" + rs.getString(3)); }
      }
      try { c.createStatement().executeUpdate("DELETE FROM customers"); System.out.println("deleted?!"); }
      catch (SQLException e) { System.out.println("refused " + e.getSQLState()); }
      try (ResultSet rs = c.createStatement().executeQuery("SELECT count(*) FROM customers")) { rs.next(); System.out.println("count " + rs.getInt(1)); }
    }
  }
}
"""


@pytest.mark.skipif(JDBC_JAR is None or shutil.which("java") is None, reason="needs java and the pgjdbc jar")
def test_jdbc_prepared_statements(shared_gw, tmp_path):
    src = tmp_path / "HoopyJdbc.java"
    src.write_text(JDBC_SOURCE)
    url = f"jdbc:postgresql://127.0.0.1:{shared_gw.pg_port}/x?sslmode=disable"
    r = subprocess.run(["java", "-cp", JDBC_JAR, str(src), url, AGENT.name, AGENT.token],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:7] == ["1|Ann|[REDACTED]", "2|Bob|[REDACTED]"] * 3 + ["1|Ann|[REDACTED]"]
    assert lines[7:] == ["refused 42501", "count 2"]


def test_large_statement_is_judged_off_the_reactor(shared_gw):
    big = "x" * 200_000

    def run(sql):  # on stdin: too long for one argument
        return subprocess.run([PSQL, f"host=127.0.0.1 port={shared_gw.pg_port} user={AGENT.name} dbname=x", "-XAt"],
                              input=sql + ";\n", capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PGPASSWORD": AGENT.token})

    r = run(f"SELECT length('{big}') FROM invoices WHERE id = 1")
    assert r.returncode == 0 and r.stdout.strip() == "200000", r.stderr
    r = run(f"DELETE FROM customers WHERE name = '{big}'")
    assert "no grant allows write public.customers" in r.stderr
    r = run(f"SELEC '{big}'")
    assert "syntax error" in r.stderr


def test_startup_settings_that_would_change_identity_or_parsing_are_refused(shared_gw):
    for options in ("-c role=postgres", "-c standard_conforming_strings=off", "-c session_authorization=x"):
        r = psql(shared_gw, "SELECT 1", extra_env={"PGOPTIONS": options})
        assert r.returncode != 0 and "not allowed through hoopy" in r.stderr, (options, r.stderr)
    r = psql(shared_gw, "SELECT 1", extra_env={"PGCLIENTENCODING": "SJIS"})
    assert r.returncode != 0 and "UTF8" in r.stderr
    r = psql(shared_gw, "SELECT 1", extra_env={"PGOPTIONS": "-c statement_timeout=5s -c hoopy.model=m"})
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr


def test_lexing_settings_changed_mid_session_refuse_everything(hoopy_gateway, database):
    port = free_port()
    boss = ident("pg-boss")
    g = hoopy_gateway(boss.toml() + f"""
[connections.pg]
type = "postgres"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "tcp:host=127.0.0.1:port=5432"
upstream_user = "postgres"
upstream_database = "{database}"
upstream_tls = "disable"

[[grants]]
identity = "pg-boss"
connection = "pg"
allow = ["all", "read public.customers"]
deny = ["write public.customers"]
""")
    g.pg_port = port
    # With standard_conforming_strings off the server reads 'x\\' , $$' as one string and then
    # runs the DELETE, while a parser with it on sees a SELECT of two strings.
    smuggle = "SELECT 'x\\' , $$'; DELETE FROM customers; --$$"
    r = psql(g, "SELECT set_config('standard_conforming_strings', 'off', false)", smuggle, user=boss)
    assert "cannot read its SQL as the server does" in r.stderr, r.stderr
    assert customers_count(database) == "2"


def test_sql_prepared_statements_and_cursors_reached_by_protocol_messages(gw, database):
    """SQL PREPARE and DECLARE share the namespace of protocol statements and portals."""
    from hoopy.postgres import codec

    s, recv_msg = raw_client(gw.pg_port, AGENT.name, AGENT.token)

    def until_ready():
        got = []
        while True:
            t, p = recv_msg()
            got.append((t, p))
            if t == b"Z":
                return got

    # A Bind of an SQL-prepared name is judged as EXECUTE of it, with the units it was prepared with,
    # and its result masked by origin.
    s.sendall(codec.query("PREPARE q AS SELECT ssn, name FROM customers ORDER BY id"))
    until_ready()
    s.sendall(codec.msg(b"B", b"\0q\0" + b"\0\0\0\0\0\0") + codec.msg(b"E", b"\0\0\0\0\0") + codec.SYNC)
    got = until_ready()
    rows = [codec.parse_data_row(p) for t, p in got if t == b"D"]
    assert rows == [[b"[REDACTED]", b"Ann"], [b"[REDACTED]", b"Bob"]], got
    assert any(e["data"].get("sql") == 'EXECUTE "q"' for e in gw.events("operation"))
    # A cursor read through Execute is a FETCH: no-origin columns of a masked table stay masked.
    s.sendall(codec.query("BEGIN; DECLARE cur CURSOR FOR SELECT lower(ssn) FROM customers"))
    until_ready()
    s.sendall(codec.msg(b"E", b"cur\0\0\0\0\0") + codec.SYNC)
    got = until_ready()
    rows = [codec.parse_data_row(p) for t, p in got if t == b"D"]
    assert rows == [[b"[REDACTED]"], [b"[REDACTED]"]], got
    s.close()


def test_error_messages_do_not_leak_masked_values(shared_gw):
    r = psql(shared_gw, "SELECT ssn::int FROM customers")
    assert r.returncode != 0 and "invalid input syntax" in r.stderr
    assert "45-6789" not in r.stderr and "65-4321" not in r.stderr, r.stderr
    r = psql(shared_gw, "SELECT 'ann@example.com'::int")  # psql itself echoes the query: look at the message
    assert r.returncode != 0 and r.stderr.splitlines()[0].endswith('"[REDACTED]"'), r.stderr


def test_random_messages_after_login_never_take_the_gateway_down(gw):
    """Well-framed garbage of every message type: each connection ends or answers; the gateway lives."""
    import random

    from hoopy.postgres import codec

    rnd = random.Random(4)
    for i in range(40):
        s, recv_msg = raw_client(gw.pg_port, AGENT.name, AGENT.token)
        t = bytes([rnd.choice(b"QPBDECSHdcfFXpzZ\x00")])
        body = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 40)))
        s.sendall(codec.msg(t, body) + codec.SYNC)
        s.settimeout(5)
        try:
            while True:
                m, p = recv_msg()
                if m == b"Z" or (m == b"E" and codec.parse_fields(p).get("S") == "FATAL"):
                    break
        except (AssertionError, OSError):
            pass  # closed: fine
        s.close()
    with psycopg.connect(gw.dsn, autocommit=True) as c:
        assert c.execute("SELECT 1").fetchone() == (1,)
    assert "Traceback" not in gw.log_text(), gw.log_text()[-3000:]


def test_user_function_named_like_a_builtin_is_not_taken_for_a_read(shared_gw, database):
    """public.upper(int) deletes rows: a call to "upper" is judged a write, not a read."""
    r = psql(shared_gw, "SELECT upper(2)")
    assert r.returncode != 0 and "no grant allows write public.upper()" in r.stderr, r.stderr
    r = psql(shared_gw, "SELECT pg_catalog.upper('abc'), lower('X')")
    assert r.returncode == 0 and r.stdout.strip() == "ABC|x", r.stderr
    assert invoices(database) == "1|100\n2|200"


def test_notification_payloads_are_pattern_masked(shared_gw, database):
    from hoopy.postgres import codec

    s, recv_msg = raw_client(shared_gw.pg_port, AGENT.name, AGENT.token)
    s.sendall(codec.query("LISTEN hoopy_chan"))
    while recv_msg()[0] != b"Z":
        pass
    admin_sql("SELECT pg_notify('hoopy_chan', 'card 4111 1111 1111 1111 for ann@example.com')", database)
    s.sendall(codec.query("SELECT 1"))  # notifications are delivered between statements
    seen = []
    while True:
        t, p = recv_msg()
        seen.append((t, p))
        if t == b"Z":
            break
    notes = [p for t, p in seen if t == b"A"]
    assert notes and b"4111" not in notes[0] and b"ann@" not in notes[0] and b"[REDACTED]" in notes[0]
    s.close()


def _proto(shared_gw):
    """A raw protocol client and helpers for the namespace tests below."""
    from hoopy.postgres import codec

    s, recv_msg = raw_client(shared_gw.pg_port, AGENT.name, AGENT.token)

    def until_ready():
        got = []
        while True:
            t, p = recv_msg()
            got.append((t, p))
            if t == b"Z":
                return got

    def parse(name, sql):
        return codec.msg(b"P", codec.cstr(name) + codec.cstr(sql) + b"\0\0")

    def bind(portal, stmt):
        return codec.msg(b"B", codec.cstr(portal) + codec.cstr(stmt) + b"\0\0\0\0\0\0")

    def execute(portal):
        return codec.msg(b"E", codec.cstr(portal) + b"\0\0\0\0")

    until_ready.recv_msg = recv_msg
    return s, until_ready, parse, bind, execute


def test_a_statement_is_judged_before_its_bind_reaches_the_server(shared_gw, database):
    """Planning an unnamed statement at Bind folds IMMUTABLE functions with constant arguments:
    the function runs before any Execute. A mislabelled one with a side effect (here it advances a
    sequence) must not run for a caller whose grant does not cover it."""
    from hoopy.postgres import codec

    shared_gw.database = database
    admin_sql("CREATE SEQUENCE side_effects; CREATE FUNCTION sneaky(int) RETURNS int IMMUTABLE "
              "LANGUAGE plpgsql AS $$ BEGIN PERFORM nextval('side_effects'); RETURN $1; END $$", database)
    before = admin_sql("SELECT last_value, is_called FROM side_effects", database)
    s, until_ready, parse, _, execute = _proto(shared_gw)
    bind = codec.msg(b"B", b"\0\0" + b"\0\0" + b"\0\x01" + b"\0\0\0\x01" + b"7" + b"\0\0")  # $1 = '7'
    s.sendall(parse("", "SELECT sneaky($1::int)") + bind + execute("") + codec.SYNC)
    got = until_ready()
    errors = [codec.parse_fields(p) for t, p in got if t == b"E"]
    assert errors and errors[0]["C"] == "42501" and "sneaky" in errors[0]["M"], got
    assert admin_sql("SELECT last_value, is_called FROM side_effects", database) == before  # it never ran
    s.sendall(codec.query("SELECT 1"))
    assert [t for t, _ in until_ready()] == [b"T", b"D", b"C", b"Z"]  # the connection goes on
    s.close()


def test_parse_of_a_name_in_use_does_not_change_what_the_gateway_judges(shared_gw, database):
    """The server refuses a Parse of a statement name that exists and keeps the old
    statement: the gateway must not judge the refused text instead of the kept one."""
    from hoopy.postgres import codec

    before = invoices(database)
    s, until_ready, parse, bind, execute = _proto(shared_gw)
    s.sendall(parse("s1", "DELETE FROM invoices") + codec.SYNC)  # parsed, not run
    until_ready()
    s.sendall(parse("s1", "SELECT 1") + codec.SYNC)  # the server: "already exists"
    until_ready()
    s.sendall(bind("", "s1") + execute("") + codec.SYNC)
    got = until_ready()
    assert any(t == b"E" for t, _ in got), got
    assert invoices(database) == before
    # The same through SQL PREPARE of a name the protocol already holds.
    s.sendall(parse("s2", "DELETE FROM invoices") + codec.SYNC)
    until_ready()
    s.sendall(codec.query("PREPARE s2 AS SELECT 1"))
    until_ready()
    s.sendall(codec.query("EXECUTE s2"))
    got = until_ready()
    assert any(t == b"E" for t, _ in got), got
    assert invoices(database) == before
    s.close()


def test_unnamed_portal_survives_sync_inside_a_transaction(shared_gw, database):
    """In a transaction block the unnamed portal outlives Sync: an Execute of it
    after Sync runs what was bound, and must be judged as that."""
    from hoopy.postgres import codec

    before = invoices(database)
    s, until_ready, parse, bind, execute = _proto(shared_gw)
    s.sendall(codec.query("BEGIN"))
    until_ready()
    s.sendall(parse("", "DELETE FROM invoices") + bind("", "") + codec.SYNC)
    until_ready()
    s.sendall(execute("") + codec.SYNC)
    got = until_ready()
    s.sendall(codec.query("COMMIT"))
    until_ready()
    assert any(t == b"E" for t, _ in got), got
    assert invoices(database) == before
    s.close()


def test_cursor_declared_with_the_name_of_an_old_portal_is_masked(shared_gw, database):
    """A portal's judgement dies with it: a cursor DECLAREd later under its name is a FETCH."""
    from hoopy.postgres import codec

    s, until_ready, parse, bind, execute = _proto(shared_gw)
    s.sendall(parse("", "SELECT 1") + bind("p", "") + execute("p") + codec.SYNC)
    until_ready()  # the implicit transaction ends: portal p is gone upstream
    s.sendall(codec.query("BEGIN; DECLARE p CURSOR FOR SELECT ssn, lower(ssn) FROM customers ORDER BY id"))
    until_ready()
    s.sendall(execute("p") + codec.SYNC)
    got = until_ready()
    s.sendall(codec.query("COMMIT"))
    until_ready()
    data = b"".join(p for t, p in got if t == b"D")
    assert b"45-6789" not in data and b"65-4321" not in data, got
    s.close()


def test_table_alias_column_names_do_not_unmask(shared_gw):
    for q in ("SELECT lower(x) FROM customers AS c(i, n, x)",
              "SELECT x || '' FROM customers c(i, n, x) WHERE i = 1",
              "SELECT t.x || '' FROM (customers JOIN invoices USING (id)) AS t(i, n, x)",
              "SELECT row_to_json(j) FROM (customers JOIN invoices USING (id)) AS j",
              "SELECT j::text FROM (customers NATURAL JOIN invoices) j"):
        r = psql(shared_gw, q)
        assert "45-6789" not in r.stdout and "65-4321" not in r.stdout, (q, r.stdout, r.stderr)


def test_messages_skipped_after_an_upstream_error_do_not_shift_the_replies(shared_gw):
    """After an error the server ignores messages until Sync and answers none of
    them: the gateway must not expect replies to them, or later rows reach the
    client under the wrong expectation (unmasked)."""
    from hoopy.postgres import codec

    s, until_ready, parse, bind, execute = _proto(shared_gw)
    s.sendall(parse("", "SELECT no_such_column FROM customers") + codec.msg(b"H"))
    assert until_ready.recv_msg()[0] == b"E"  # flushed; the server now skips to Sync
    time.sleep(0.2)
    s.sendall(parse("", "SELECT 1") + bind("", "") + execute("") + codec.SYNC)
    until_ready()
    s.sendall(codec.query("SELECT ssn FROM customers ORDER BY id"))
    got = until_ready()
    data = b"".join(p for t, p in got if t == b"D")
    assert b"45-6789" not in data and b"65-4321" not in data, got
    s.sendall(codec.query("SELECT 1"))
    assert [t for t, _ in until_ready()] == [b"T", b"D", b"C", b"Z"]
    s.close()


def test_expressions_over_a_view_that_renames_a_masked_column_are_masked(shared_gw):
    for q in ("SELECT lower(x) FROM renamed_view", "SELECT x || '' FROM renamed_view v",
              "SELECT x FROM renamed_view", "SELECT json_agg(x) FROM renamed_view"):
        r = psql(shared_gw, q)
        assert r.returncode == 0 and "45-6789" not in r.stdout and "65-4321" not in r.stdout, (q, r.stdout)


def test_a_masked_column_read_through_an_inheritance_child_is_masked(hoopy_gateway, database):
    admin_sql("CREATE TABLE customers_archive () INHERITS (customers);"
              "INSERT INTO customers_archive VALUES (9, 'Old', '111-22-3333', 'o@x', 1)", database)
    try:
        port = free_port()
        g = hoopy_gateway(body(database, port))
        g.pg_port = port
        for q in ("SELECT ssn FROM customers_archive", "SELECT lower(ssn) FROM customers_archive",
                  "SELECT a FROM customers_archive a", "SELECT ssn FROM ONLY customers_archive"):
            r = psql(g, q)
            assert r.returncode == 0 and "22-3333" not in r.stdout, (q, r.stdout, r.stderr)
    finally:
        admin_sql("DROP TABLE customers_archive", database)


def test_a_failed_or_skipped_bind_or_close_keeps_the_portal_judged_as_it_is(shared_gw, database):
    """Bind of a name in use fails; a Close skipped after an error does nothing:
    after ROLLBACK TO SAVEPOINT the old portal runs, and must be judged as itself."""
    from hoopy.postgres import codec

    before = invoices(database)
    s, until_ready, parse, bind, execute = _proto(shared_gw)
    s.sendall(codec.query("BEGIN"))
    until_ready()
    s.sendall(parse("", "DELETE FROM invoices") + bind("p", "") + codec.SYNC)
    until_ready()
    # A failing Bind of the same portal name.
    s.sendall(codec.query("SAVEPOINT a"))
    until_ready()
    s.sendall(parse("", "SELECT 1") + bind("p", "") + codec.SYNC)
    until_ready()
    s.sendall(codec.query("ROLLBACK TO SAVEPOINT a"))
    until_ready()
    # A Close the server skips after an error.
    s.sendall(parse("", "SELECT no_such_column FROM customers") + codec.msg(b"C", b"Pp\0") + codec.SYNC)
    until_ready()
    s.sendall(codec.query("ROLLBACK TO SAVEPOINT a"))
    until_ready()
    # A Close and a Bind of the name, both skipped after an error.
    s.sendall(parse("", "SELECT no_such_column FROM customers") + codec.msg(b"C", b"Pp\0") + bind("p", "")
              + codec.SYNC)
    until_ready()
    s.sendall(codec.query("ROLLBACK TO SAVEPOINT a"))
    until_ready()
    # A DECLARE of the name fails too.
    s.sendall(codec.query("DECLARE p CURSOR FOR SELECT 1"))
    until_ready()
    s.sendall(codec.query("ROLLBACK TO SAVEPOINT a"))
    until_ready()
    s.sendall(execute("p") + codec.SYNC)
    got = until_ready()
    s.sendall(codec.query("COMMIT"))
    until_ready()
    assert any(t == b"E" for t, _ in got), got
    assert invoices(database) == before
    s.close()


def test_bind_over_a_holdable_cursor_name_does_not_unmask_it(shared_gw):
    from hoopy.postgres import codec

    s, until_ready, parse, bind, execute = _proto(shared_gw)
    s.sendall(codec.query("DECLARE h CURSOR WITH HOLD FOR SELECT lower(ssn) FROM customers ORDER BY id"))
    until_ready()
    s.sendall(parse("", "SELECT 1") + bind("h", "") + codec.SYNC)  # fails: the cursor exists
    until_ready()
    s.sendall(execute("h") + codec.SYNC)
    got = until_ready()
    data = b"".join(p for t, p in got if t == b"D")
    assert data and b"45-6789" not in data and b"65-4321" not in data, got
    s.sendall(codec.query("CLOSE h"))
    until_ready()
    s.close()


def test_refusal_in_a_transaction_after_an_upstream_error_does_not_hang(shared_gw):
    """Our stand-in for a refused Sync must still be answered when the server is
    already skipping after an error of its own."""
    from hoopy.postgres import codec

    s, until_ready, parse, bind, execute = _proto(shared_gw)
    s.sendall(codec.query("BEGIN"))
    until_ready()
    s.sendall(parse("", "SELECT no_such_column FROM customers") + parse("d", "DELETE FROM invoices")
              + bind("", "d") + execute("") + codec.SYNC)
    got = until_ready()
    assert got[-1] == (b"Z", b"E"), got
    s.sendall(codec.query("ROLLBACK"))
    assert until_ready()[-1] == (b"Z", b"I")
    s.sendall(codec.query("SELECT 1"))
    assert [t for t, _ in until_ready()] == [b"T", b"D", b"C", b"Z"]
    s.close()


def test_patterns_reach_into_arrays_records_and_other_types(shared_gw):
    """Pattern masking is not only for text columns: an email in an array, a record,
    a tsvector or xml, a card number as numeric, in text and binary formats."""
    for q in ("SELECT array_agg(email) FROM customers", "SELECT ROW(email, 1) FROM customers",
              "SELECT c FROM customers c", "SELECT to_tsvector('simple', email) FROM customers",
              "SELECT xmlelement(name x, email) FROM customers", "SELECT card::numeric FROM customers",
              "SELECT ARRAY[card] FROM customers", "SELECT ARRAY[[email]]::varchar[] FROM customers"):
        r = psql(shared_gw, q)
        assert r.returncode == 0 and "example" not in r.stdout and "4111111111111111" not in r.stdout, \
            (q, r.stdout, r.stderr)

    async def go():
        conn = await asyncpg.connect(host="127.0.0.1", port=shared_gw.pg_port, user=AGENT.name,
                                     password=AGENT.token, database="x")
        try:
            out = []
            for q in ("SELECT card::numeric AS n FROM customers", "SELECT ROW(card, email) AS r FROM customers",
                      "SELECT array_agg(email) FROM customers", "SELECT -card::numeric * 10000 AS d FROM customers"):
                out.append(repr(await conn.fetch(q)))
            return out
        finally:
            await conn.close()

    texts = in_thread(go)
    with psycopg.connect(shared_gw.dsn) as conn:  # binary arrays of numbers
        for q in ("SELECT array_agg(card) FROM customers", "SELECT ARRAY[card::numeric] FROM customers"):
            texts.append(repr(conn.execute(q, binary=True).fetchall()))
    for text in texts:
        assert "4111111111111111" not in text and "example" not in text, text
    # Harmless values stay.
    r = psql(shared_gw, "SELECT ARRAY[id], ROW(name), 42::numeric FROM customers WHERE id = 2")
    assert r.stdout.strip() == "{2}|(Bob)|42", r.stdout


def test_column_statistics_do_not_show_masked_values(hoopy_gateway, database):
    """pg_stats holds sample values of every column (histogram, most common values):
    with masked columns configured, the statistics views are refused."""
    admin_sql("ANALYZE customers", database)
    port = free_port()
    g = hoopy_gateway(body(database, port).replace('"read public.customers",',
                                                   '"read public.customers", "read pg_catalog.*",'))
    g.pg_port = port
    for q in ("SELECT histogram_bounds FROM pg_stats WHERE tablename = 'customers'",
              "SELECT histogram_bounds::text FROM pg_catalog.pg_stats WHERE attname = 'ssn'",
              "SELECT s.* FROM pg_stats s"):
        r = psql(g, q)
        assert "45-6789" not in r.stdout and "65-4321" not in r.stdout, (q, r.stdout)
    r = psql(g, "SELECT count(*) FROM pg_class WHERE relname = 'customers'")  # the catalog still reads
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr


def test_search_path_set_at_startup_under_another_spelling_is_noticed(shared_gw, database):
    """The server folds case and dashes in setting names: Search_Path, --search-path,
    -c search-path all move unqualified names to another schema."""
    from hoopy.postgres import codec, scram

    admin_sql("CREATE SCHEMA IF NOT EXISTS shadow; CREATE TABLE IF NOT EXISTS shadow.invoices (secret text);"
              "DELETE FROM shadow.invoices; INSERT INTO shadow.invoices VALUES ('top secret')", database)
    for opts in ("--search-path=shadow", "-c search-path=shadow", "-c Search-Path=shadow"):
        r = psql(shared_gw, "SELECT * FROM invoices", extra_env={"PGOPTIONS": opts})
        assert "top secret" not in r.stdout, (opts, r.stdout)
    # As a startup parameter of its own.
    s = socket.create_connection(("127.0.0.1", shared_gw.pg_port), timeout=10)
    s.sendall(codec.startup_message({"user": AGENT.name, "database": "x", "Search_Path": "shadow"}))
    rd = codec.MessageReader()

    def recv_msg():
        while True:
            m = rd.next()
            if m is not None:
                return m
            data = s.recv(65536)
            assert data, "closed"
            rd.feed(data)

    assert recv_msg()[0] == b"R"
    client = scram.ScramClient(AGENT.token, [scram.MECH], None)
    s.sendall(codec.sasl_initial(client.mech, client.first()))
    t, p = recv_msg()
    s.sendall(codec.password(client.final(p[4:])))
    while recv_msg()[0] != b"Z":
        pass
    s.sendall(codec.query("SELECT * FROM invoices"))
    got = []
    while True:
        t, p = recv_msg()
        got.append((t, p))
        if t == b"Z":
            break
    assert not any(b"top secret" in p for t, p in got), got
    s.close()


def test_prepared_statement_executed_later_is_masked_and_scrubbed(shared_gw):
    r = psql(shared_gw, "PREPARE q AS SELECT lower(ssn), ssn || '' FROM customers ORDER BY id", "EXECUTE q")
    assert r.returncode == 0 and "45-6789" not in r.stdout and "65-4321" not in r.stdout, (r.stdout, r.stderr)
    r = psql(shared_gw, "PREPARE q AS SELECT ssn::int FROM customers", "EXECUTE q")
    assert "45-6789" not in r.stderr and "65-4321" not in r.stderr, r.stderr
    r = psql(shared_gw, "PREPARE q AS SELECT ssn FROM customers", "EXPLAIN ANALYZE EXECUTE q",
             "CREATE TEMP TABLE t AS EXECUTE q")
    assert "45-6789" not in r.stdout + r.stderr


def test_functional_notation_is_a_call_with_the_whole_row(shared_gw, database):
    """t.f is f(t) in PostgreSQL: a masked row through c.to_jsonb, and a user
    function called as i.zap, are not column reads."""
    for q in ("SELECT c.to_jsonb FROM customers c", "SELECT c.row_to_json FROM customers c",
              "SELECT customers.to_json FROM customers", "SELECT c.record_out FROM customers c"):
        r = psql(shared_gw, q)
        assert "45-6789" not in r.stdout and "65-4321" not in r.stdout, (q, r.stdout, r.stderr)
    admin_sql("CREATE OR REPLACE FUNCTION public.zap(i invoices) RETURNS int LANGUAGE sql "
              "AS 'DELETE FROM invoices WHERE id = i.id RETURNING 1'", database)
    try:
        before = invoices(database)
        r = psql(shared_gw, "SELECT i.zap FROM invoices i")
        assert r.returncode != 0 and "42501" not in r.stdout, (r.stdout, r.stderr)
        assert invoices(database) == before
    finally:
        admin_sql("DROP FUNCTION public.zap(invoices)", database)


def test_a_rule_for_one_table_does_not_grant_statements_about_other_objects(hoopy_gateway, database):
    """ddl/admin/write on public.scratch: DROP of another table, DO, CALL of any
    procedure, CREATE OR REPLACE of any function are not about scratch."""
    admin_sql("CREATE TABLE IF NOT EXISTS victim (a int);"
              "CREATE OR REPLACE PROCEDURE public.wipe() LANGUAGE sql AS 'DELETE FROM victim'", database)
    try:
        port = free_port()
        g = hoopy_gateway(body(database, port).replace(
            '"read public.customers",', '"read public.customers", "ddl public.scratch", "admin public.scratch", '
                                        '"write public.scratch",'))
        g.pg_port = port
        for q in ("DROP TABLE public.victim", "DROP TABLE IF EXISTS victim, scratch",
                  "CREATE OR REPLACE FUNCTION public.upper(x int) RETURNS bigint LANGUAGE sql AS 'SELECT 1::bigint'",
                  "DO $$BEGIN DELETE FROM victim; END$$", "CALL public.wipe()", "DROP SCHEMA public CASCADE",
                  "COPY (SELECT 1) TO PROGRAM 'true'"):
            r = psql(g, q)
            assert r.returncode != 0 and "no grant allows" in r.stderr, (q, r.stdout, r.stderr)
        assert admin_sql("SELECT count(*) FROM pg_class WHERE relname = 'victim'", database) == "1"
        r = psql(g, "CREATE TABLE public.scratch (a int)", "INSERT INTO scratch VALUES (1)", "DROP TABLE scratch")
        assert r.returncode == 0, r.stderr
    finally:
        admin_sql("DROP TABLE IF EXISTS victim, scratch; DROP PROCEDURE IF EXISTS public.wipe()", database)


def test_a_held_execute_approved_after_an_upstream_error_expects_no_reply(gw, database):
    """The server skips to Sync after an error that arrives while an Execute is held:
    approved later, that Execute is ignored upstream, and no reply may be waited
    for (later rows would reach the client under the wrong expectation)."""
    from hoopy.postgres import codec

    gw.database = database
    s, until_ready, parse, bind, execute = _proto(gw)
    s.sendall(parse("", "SELECT no_such_column FROM customers") + codec.msg(b"H")
              + parse("u", "UPDATE invoices SET amount = amount WHERE id = 1") + bind("", "u") + execute(""))
    rows = gw.wait_pending(REVIEWER.token)
    time.sleep(0.3)  # the error reaches the gateway while the Execute is held
    r = gw.hoopy("approve", rows[0]["id"], token=REVIEWER.token)
    assert r.returncode == 0, r.stdout + r.stderr
    time.sleep(0.3)
    s.sendall(codec.SYNC)
    until_ready()
    s.sendall(codec.query("SELECT lower(ssn) FROM customers ORDER BY id"))
    got = until_ready()
    data = b"".join(p for t, p in got if t == b"D")
    assert b"45-6789" not in data and b"65-4321" not in data, got
    s.sendall(codec.query("SELECT 1"))
    assert [t for t, _ in until_ready()] == [b"T", b"D", b"C", b"Z"]
    s.close()


def test_asyncpg_custom_types_introspect_through_a_read_grant(hoopy_gateway, database):
    """asyncpg looks up an enum's type in pg_catalog, first turning jit off with
    set_config('jit', ...): that is a SET of a harmless setting (read), while
    set_config of role or search_path stays admin."""
    admin_sql("CREATE TYPE mood AS ENUM ('sad', 'happy'); CREATE TABLE pets (id int, m mood);"
              "INSERT INTO pets VALUES (1, 'happy')", database)
    port = free_port()
    g = hoopy_gateway(body(database, port).replace(
        'allow = ["read public.customers"', 'allow = ["read pg_catalog.*", "read public.pets", "read public.customers"'))

    async def go():
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user=AGENT.name, password=AGENT.token,
                                     database="x")
        try:
            rows = await conn.fetch("SELECT id, m FROM pets")
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.fetch("SELECT set_config('role', 'postgres', false)")
            with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
                await conn.fetch("SELECT set_config($1, 'postgres', false)", "role")
            return [tuple(r) for r in rows]
        finally:
            await conn.close()

    assert in_thread(go) == [(1, "happy")]
    sqls = [e["data"]["sql"] for e in g.events("operation") if e["outcome"] == "allowed"]
    assert any("set_config('jit'" in s for s in sqls), sqls


def test_metrics_name_bytes_and_latency_by_protocol(gw):
    """Prometheus names: the unit as suffix, one direction vocabulary, a latency histogram per outcome."""
    r = psql(gw, "SELECT id FROM customers ORDER BY id", "SELECT * FROM nope_no_table")
    assert "does not exist" in r.stderr or "no grant" in r.stderr
    assert wait_for(lambda: b'hoopy_operation_duration_seconds_count{outcome="ok",protocol="postgres"}'
                    in gw.get("/metrics")[1])
    text = gw.get("/metrics")[1].decode()
    for direction in ("in", "out"):
        line = next(ln for ln in text.splitlines() if ln.startswith("hoopy_proxied_bytes_total{")
                    and f'direction="{direction}"' in ln and 'protocol="postgres"' in ln)
        assert float(line.rsplit(" ", 1)[1]) > 0, line
    assert "_created" not in text
    assert 'direction="up"' not in text and 'direction="down"' not in text
