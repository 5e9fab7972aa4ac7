"""What the gateway judges, end to end through a real ``twistd -n hoopy`` and the real
PostgreSQL: names as PostgreSQL scopes them, the session's real search path (read
upstream and re-read after it may change), row and advisory locks (``lock``),
functions by what they are, pool resets that need no rule."""
from __future__ import annotations

import os
import secrets
import subprocess

import pytest

from tests.support import HoopyProcess, admin_sql, free_port, ident, pg_connection

psycopg = pytest.importorskip("psycopg")


SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text, ssn text, email text);
INSERT INTO customers VALUES (1, 'Ann', '123-45-6789', 'ann@example.com'), (2, 'Bob', '987-65-4321', 'b@x.org');
CREATE TABLE invoices (id int PRIMARY KEY, amount int);
INSERT INTO invoices VALUES (1, 100);
CREATE TABLE secrets (id int, v text);
INSERT INTO secrets VALUES (1, 'the secret');
CREATE TABLE pg_payroll (id int, salary int);
INSERT INTO pg_payroll VALUES (1, 99999);
CREATE SCHEMA shadow;
CREATE TABLE shadow.customers (id int, name text, ssn text, email text);
INSERT INTO shadow.customers VALUES (1, 'Shadow', 'shadow-ssn', 'shadow@x.org');
CREATE FUNCTION public.go_shadow() RETURNS int LANGUAGE plpgsql
  AS $$BEGIN PERFORM set_config('search_path', 'shadow, public', false); RETURN 1; END$$;
"""

READER = ident("reader")
LOCKER = ident("locker")
WATCHER = ident("watcher")


@pytest.fixture(scope="module")
def g(tmp_path_factory):
    db = f"hoopy_judge_{secrets.token_hex(4)}"
    admin_sql(f"CREATE DATABASE {db}")
    admin_sql(SCHEMA, db)
    port = free_port()
    body = READER.toml() + LOCKER.toml() + WATCHER.toml() + f"""
{pg_connection(port, db)}

[[grants]]
identity = "reader"
connection = "pg"
allow = ["read public.customers", "read public.invoices", "read pg_catalog.*", "write public.go_shadow()"]

[[grants]]
identity = "locker"
connection = "pg"
allow = ["read public.customers", "lock public.customers", "lock", "write public.invoices"]

[[grants]]
identity = "watcher"
connection = "pg"
allow = ["read pg_catalog.pg_stat_activity", "admin pg_catalog.pg_stat_get_activity()"]

[[masking]]
connection = "pg"
columns = ["public.customers.ssn", "shadow.customers.ssn"]
patterns = ["email"]
"""
    proc = HoopyProcess(tmp_path_factory.mktemp("judging"), body).start()
    proc.port, proc.database = port, db
    yield proc
    proc.stop()
    admin_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def connect(g, who=READER, **kw):
    return psycopg.connect(f"host=127.0.0.1 port={g.port} user={who.name} password={who.token} dbname=x "
                           "sslmode=disable", autocommit=True, **kw)


def refused(conn, sql, code="42501") -> str:
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql)
    assert e.value.sqlstate == code, (sql, e.value.sqlstate, str(e.value))
    return str(e.value)


def test_with_names_are_scoped_as_postgresql_scopes_them(g):
    with connect(g) as c:
        # The first example: the WITH body reads the real table; masked all the same.
        rows = c.execute("WITH customers AS (SELECT * FROM customers) SELECT ssn, email FROM customers "
                         "ORDER BY id").fetchall()
        assert rows == [("[REDACTED]", "[REDACTED]"), ("[REDACTED]", "[REDACTED]")]
        rows = c.execute("WITH c AS (SELECT * FROM customers), customers AS (SELECT * FROM c) "
                         "SELECT upper(ssn) FROM customers ORDER BY id").fetchall()
        assert rows == [("[REDACTED]",), ("[REDACTED]",)]
        # The second: the target of INSERT is the table, never the WITH query.
        msg = refused(c, "WITH secrets AS (SELECT 1) INSERT INTO secrets VALUES (2, 'x')")
        assert "write public.secrets" in msg
        refused(c, "WITH secrets AS (SELECT 1 AS id) UPDATE secrets SET v = 'x'")
        refused(c, "WITH secrets AS (SELECT 1 AS id) DELETE FROM secrets WHERE id IN (SELECT id FROM secrets)")
        refused(c, "WITH secrets AS (SELECT 1 AS id, 'v' AS v) MERGE INTO secrets s USING secrets x "
                   "ON s.id = x.id WHEN MATCHED THEN DELETE")
        # An earlier sibling does not see a later one; the body of a non-recursive one not itself.
        refused(c, "WITH x AS (SELECT * FROM secrets), secrets AS (SELECT 1) SELECT * FROM x")
        # Where a WITH name does shadow, nothing real is read.
        assert c.execute("WITH secrets AS (SELECT 1 AS v) SELECT v FROM secrets").fetchone() == (1,)
        assert c.execute("WITH RECURSIVE secrets(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM secrets "
                         "WHERE n < 3) SELECT count(*) FROM secrets").fetchone() == (3,)
    assert admin_sql("SELECT v FROM secrets", g.database) == "the secret"


def test_row_locks_need_lock_wherever_they_are(g):
    with connect(g) as c:
        for sql in ("SELECT id FROM (SELECT id FROM customers) s FOR UPDATE",
                    "SELECT * FROM customers FOR KEY SHARE",
                    "WITH x AS (SELECT * FROM customers FOR SHARE) SELECT * FROM x",
                    "SELECT * FROM customers WHERE id IN (SELECT id FROM customers FOR UPDATE)"):
            assert "lock public.customers" in refused(c, sql), sql
        # A row lock clause on a WITH query's reference locks nothing (PostgreSQL ignores it).
        assert len(c.execute("WITH x AS (SELECT * FROM customers) SELECT * FROM x FOR UPDATE").fetchall()) == 2
        refused(c, "SELECT pg_advisory_lock(1)")
        refused(c, "SELECT pg_try_advisory_xact_lock(1)")
        c.execute("BEGIN")
        assert "lock public.invoices" in refused(c, "LOCK TABLE invoices IN EXCLUSIVE MODE")
        c.execute("ROLLBACK")
        c.execute("BEGIN")
        c.execute("LOCK TABLE invoices IN ACCESS SHARE MODE")  # what a read takes
        c.execute("ROLLBACK")
    with connect(g, LOCKER) as c:
        assert c.execute("SELECT id FROM (SELECT id FROM customers) s ORDER BY id FOR UPDATE").fetchall() == [(1,), (2,)]
        assert c.execute("SELECT pg_advisory_lock(7), pg_advisory_unlock(7)").fetchone() == ("", True)
        c.execute("BEGIN")
        c.execute("LOCK TABLE invoices IN SHARE ROW EXCLUSIVE MODE")  # write TABLE implies lock TABLE
        c.execute("ROLLBACK")
        refused(c, "SELECT * FROM invoices FOR UPDATE")  # lock without read


def test_functions_are_judged_by_what_they_are(g):
    with connect(g) as c:
        # Other sessions' activity: refused even under read pg_catalog.*.
        assert "pg_catalog.pg_stat_get_activity()" in refused(c, "SELECT * FROM pg_stat_get_activity(NULL)")
        refused(c, "SELECT pid, query FROM pg_stat_activity")
        refused(c, "SELECT pg_catalog.pg_read_file('/etc/passwd')")
        refused(c, "SELECT table_to_xml('secrets', true, false, '')")
        refused(c, "SELECT query_to_xml('SELECT * FROM secrets', true, false, '')")
        # Ordinary reads of drivers, psql and pg_dump stay reads.
        row = c.execute("SELECT current_setting('search_path'), version() IS NOT NULL, "
                        "pg_catalog.format_type(23, NULL), pg_get_userbyid(10) IS NOT NULL, "
                        "has_table_privilege('customers', 'SELECT'), obj_description(1259, 'pg_class'), "
                        "count(*) > 0 FROM pg_settings").fetchone()
        assert row[0] == '"$user", public' and row[2] == "integer" and row[6] is True
        # A table named like a catalog table is the table, not the catalog.
        assert "read public.pg_payroll" in refused(c, "SELECT * FROM pg_payroll")
    with connect(g, WATCHER) as c:
        # A rule that names them allows them.
        assert c.execute("SELECT count(*) > 0 FROM pg_stat_activity").fetchone() == (True,)
        assert c.execute("SELECT count(*) > 0 FROM pg_stat_get_activity(NULL)").fetchone() == (True,)


def test_pool_resets_need_no_rule_and_keep_the_path_known(g):
    with connect(g) as c:
        for sql in ("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;",
                    "DISCARD ALL", "DEALLOCATE ALL", "SELECT pg_advisory_unlock(1)",
                    "SELECT pg_advisory_unlock_shared(1)", "RESET ROLE", "SET SESSION AUTHORIZATION DEFAULT",
                    "DISCARD TEMP", "DISCARD PLANS", "DISCARD SEQUENCES"):
            c.execute(sql)
            assert c.execute("SELECT count(*) FROM customers").fetchone() == (2,), sql


def test_names_resolve_through_the_sessions_real_search_path(g):
    with connect(g) as c:
        c.execute("SET search_path = shadow, public")
        assert "read shadow.customers" in refused(c, "SELECT * FROM customers")
        assert c.execute("SELECT count(*) FROM public.customers").fetchone() == (2,)
        assert c.execute("SELECT count(*) FROM invoices").fetchone() == (1,)  # public.invoices: not in shadow
        c.execute("RESET search_path")
        assert c.execute("SELECT count(*) FROM customers").fetchone() == (2,)
        # pg_dump's first statement, then the catalog by its qualified names.
        c.execute("SELECT pg_catalog.set_config('search_path', '', false)")
        assert c.execute("SELECT count(*) > 0 FROM pg_catalog.pg_class").fetchone() == (True,)
        # Judged as pg_catalog.customers (read pg_catalog.* allows it): the server finds none.
        refused(c, "SELECT * FROM customers", "42P01")
        assert any("read pg_catalog.customers" in e["data"].get("units", [])
                   for e in g.events("operation") if e.get("outcome") == "allowed")
        c.execute("SET search_path TO DEFAULT")
        # A change and a use in one string: the second is looked up only after the first ran.
        msg = refused(c, "SET search_path = shadow, public; SELECT ssn FROM customers")
        assert "search path may have changed" in msg
        assert c.execute("SELECT count(*) FROM customers").fetchone() == (2,)
        # SET LOCAL ends with the transaction; a rolled back SET too.
        c.execute("BEGIN; SET LOCAL search_path = shadow, public; COMMIT")
        assert c.execute("SELECT count(*) FROM customers").fetchone() == (2,)
        c.execute("BEGIN")
        c.execute("SET search_path = shadow, public")
        refused(c, "SELECT * FROM customers", "42501")
        c.execute("ROLLBACK")
        assert c.execute("SELECT count(*) FROM customers").fetchone() == (2,)
        # A function may change it too: after it runs, the path is read again.
        assert c.execute("SELECT go_shadow()").fetchone() == (1,)
        assert "read shadow.customers" in refused(c, "SELECT * FROM customers")
        c.execute("RESET search_path")
        # A prepared statement is analysed again in today's path: so it is judged.
        c.execute("PREPARE p AS SELECT count(*) FROM customers")
        assert c.execute("EXECUTE p").fetchone() == (2,)
        c.execute("SET search_path = shadow, public")
        assert "read shadow.customers" in refused(c, "EXECUTE p")
        c.execute("RESET search_path")
        assert c.execute("EXECUTE p").fetchone() == (2,)


def test_a_search_path_change_in_a_pipeline_refuses_unqualified_names_until_read(g):
    with connect(g) as c:
        with c.pipeline() as p:
            c.execute("SET search_path = shadow, public", prepare=False)
            cur = c.cursor()
            cur.execute("SELECT count(*) FROM customers WHERE id > %s", (0,))
            with pytest.raises(psycopg.Error) as e:
                p.sync()
        assert "search path may have changed" in str(e.value)
        c.execute("RESET search_path")
        assert c.execute("SELECT count(*) FROM customers WHERE id > %s", (0,)).fetchone() == (2,)


def test_the_search_path_given_at_startup_is_the_one_judged(g):
    env = {**os.environ, "PGPASSWORD": READER.token, "PGOPTIONS": "-c search_path=shadow,public"}
    r = subprocess.run(["psql", f"host=127.0.0.1 port={g.port} user={READER.name} dbname=x sslmode=disable",
                        "-XAt", "-c", "SELECT count(*) FROM invoices", "-c", "SELECT ssn FROM customers"],
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.stdout.strip() == "1", r.stdout
    assert "no grant allows read shadow.customers" in r.stderr and "shadow-ssn" not in r.stdout


def test_statements_that_cannot_be_judged_are_refused_and_recorded(g):
    with connect(g) as c:
        refused(c, "SELECT 1 FROM customers WHERE id IN (" + "1+" * 100_000 + "1)", "54001")
        refused(c, "SELECT 1" + ",1" * 300_000, "54001")
        assert c.execute("SELECT count(*) FROM customers").fetchone() == (2,)
    reasons = [e["data"].get("reason", "") for e in g.events("operation") if e.get("outcome") == "refused"]
    assert any("hoopy cannot judge this statement: it is nested too deeply" in r for r in reasons)
    assert any("hoopy cannot judge this statement: it has more than" in r for r in reasons)


def test_the_path_is_read_again_after_a_copy_from_stdin_not_in_its_middle(g):
    """A query slipped in after COPY FROM STDIN would arrive in the middle of the copy:
    the gateway reads the path before the next statement instead."""
    env = {**os.environ, "PGPASSWORD": LOCKER.token}
    r = subprocess.run(["psql", f"host=127.0.0.1 port={g.port} user={LOCKER.name} dbname=x sslmode=disable",
                        "-XAt", "-c", "SET search_path = shadow, public; COPY public.invoices (id, amount) FROM STDIN",
                        "-c", "SELECT count(*) FROM customers"],
                       input="41\t1\n42\t2\n\\.\n", capture_output=True, text=True, env=env, timeout=30)
    assert "no grant allows read shadow.customers" in r.stderr, (r.stdout, r.stderr)
    assert admin_sql("SELECT count(*) FROM invoices WHERE id IN (41, 42)", g.database) == "2"
    admin_sql("DELETE FROM invoices WHERE id IN (41, 42)", g.database)


def test_a_retry_approval_is_bound_to_what_the_text_meant(g, tmp_path):
    """Retry mode: an approved statement runs once when sent again. Sent again under another
    search path, the same text names another table: that is not what was approved."""
    # the module's database is shared: shadow.invoices would change what the other tests' paths resolve to
    admin_sql("CREATE TABLE IF NOT EXISTS shadow.invoices (id int PRIMARY KEY, amount int);"
              "INSERT INTO shadow.invoices VALUES (1, 5) ON CONFLICT DO NOTHING", g.database)
    try:
        _a_retry_approval_is_bound_to_what_the_text_meant(g, tmp_path)
    finally:
        admin_sql("DROP TABLE shadow.invoices", g.database)


def _a_retry_approval_is_bound_to_what_the_text_meant(g, tmp_path):
    agent, reviewer = ident("retrier"), ident("approver")
    port = free_port()
    body = agent.toml() + reviewer.toml(kind="human", roles=["reviewer"]) + f"""
[connections.pg]
type = "postgres"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "tcp:host=127.0.0.1:port=5432"
upstream_user = "postgres"
upstream_database = "{g.database}"
upstream_tls = "disable"
approvals = "retry"

[[grants]]
identity = "retrier"
connection = "pg"
allow = ["read public.invoices"]
approve = ["write public.invoices", "write shadow.invoices"]
"""
    proc = HoopyProcess(tmp_path, body).start()
    try:
        dsn = f"host=127.0.0.1 port={port} user={agent.name} password={agent.token} dbname=x sslmode=disable"
        update = "UPDATE invoices SET amount = amount + 1 WHERE id = 1"
        with psycopg.connect(dsn, autocommit=True) as c:
            msg = refused(c, update)
            aid = msg.split("held for approval ", 1)[1].split(" ", 1)[0].rstrip(";")
        assert proc.hoopy("approve", aid, token=reviewer.token).returncode == 0
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("SET search_path = shadow, public")
            msg = refused(c, update)  # write shadow.invoices: another operation, held anew
            assert "held for approval" in msg and aid not in msg
            c.execute("RESET search_path")
            c.execute(update)  # the approved one
        assert admin_sql("SELECT amount FROM shadow.invoices WHERE id = 1", g.database) == "5"
        assert admin_sql("SELECT amount FROM invoices WHERE id = 1", g.database) == "101"
    finally:
        proc.stop()
        admin_sql("UPDATE invoices SET amount = 100 WHERE id = 1", g.database)
