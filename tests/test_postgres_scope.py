"""What a statement touches, as the classifier judges it, against what the server does.

Each case runs on the real PostgreSQL in a transaction that is rolled back; a
second connection reads ``pg_locks`` of that backend (relation, mode). The
classifier, given the search path read from that same session, must judge
every relation the server locked with a class that covers the lock
(AccessShareLock: read; RowShareLock: lock; RowExclusiveLock: write; stronger:
lock, write, ddl or admin), and must name nothing the server did not touch.
The cases are attacks on scoping: WITH names in every position, nested WITH,
DML in WITH, MERGE, views, row locks in subqueries, WITH queries and views,
set-returning functions, LATERAL, qualified and quoted names, search paths.
"""
from __future__ import annotations

import re
import secrets
import subprocess

import pytest

from hoopy.postgres.classify import classify
from hoopy.postgres.scope import SCOPE_QUERY, Scope

psycopg = pytest.importorskip("psycopg")

PG = "host=127.0.0.1 port=5432 user=postgres"
SUFFIX = secrets.token_hex(4)
DB = f"hoopy_scope_{SUFFIX}"
ROLE = f"hoopy_scope_user_{SUFFIX}"

SCHEMA = f"""
CREATE TABLE customers (id int PRIMARY KEY, name text, email text);
CREATE TABLE invoices (id int PRIMARY KEY, cid int, amount int);
CREATE TABLE secrets (id int PRIMARY KEY, v text);
CREATE TABLE pg_payroll (id int, salary int);
CREATE TABLE "Customers" (id int, email text);
CREATE TABLE "we.ird" (id int);
CREATE TABLE parent (id int);
CREATE TABLE child () INHERITS (parent);
INSERT INTO customers VALUES (1, 'Ann', 'ann@example.com');
INSERT INTO invoices VALUES (1, 1, 100);
INSERT INTO secrets VALUES (1, 's3cret');
CREATE VIEW v_customers AS SELECT id, email FROM customers;
CREATE VIEW v_nested AS SELECT * FROM v_customers WHERE id IN (SELECT cid FROM invoices);
CREATE FUNCTION f_rows() RETURNS SETOF customers LANGUAGE sql AS 'SELECT * FROM customers';
CREATE SCHEMA other;
CREATE TABLE other.customers (id int PRIMARY KEY, email text);
CREATE TABLE other.pg_class (x int);
CREATE SCHEMA "We.Ird";
CREATE TABLE "We.Ird".t (id int);
CREATE ROLE {ROLE};
CREATE SCHEMA {ROLE} AUTHORIZATION {ROLE};
CREATE TABLE {ROLE}.customers (id int, email text);
GRANT ALL ON ALL TABLES IN SCHEMA public, other, {ROLE} TO {ROLE};
GRANT USAGE ON SCHEMA other, {ROLE} TO {ROLE};
"""

# Lock modes and the classes that cover them.
COVERS = {"AccessShareLock": {"read", "lock", "write", "ddl", "admin"},
          "RowShareLock": {"lock", "write", "ddl", "admin"},
          "RowExclusiveLock": {"write", "ddl", "admin"}}
STRONGER = {"lock", "write", "ddl", "admin"}
# What a unit of each class needs the server to have taken on its relation.
NEEDS = {"read": set(COVERS), "lock": set(COVERS) - {"AccessShareLock"} | {"*"},
         "write": {"RowExclusiveLock", "*"}}


def admin(sql, db="postgres"):
    r = subprocess.run(["psql", f"{PG} dbname={db}", "-XqAt", "-v", "ON_ERROR_STOP=1", "-c", sql],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def conns():
    admin(f"CREATE DATABASE {DB}")
    admin(SCHEMA, DB)
    conn = psycopg.connect(f"{PG} dbname={DB}", autocommit=True, prepare_threshold=None)
    monitor = psycopg.connect(f"{PG} dbname={DB}", autocommit=True, prepare_threshold=None)
    reach = _reach(monitor)
    yield conn, monitor, reach
    conn.close()
    monitor.close()
    admin(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    admin(f"DROP ROLE IF EXISTS {ROLE}")


def _reach(monitor) -> dict:
    """'schema.name' -> relations a lock on it also takes: a view's tables (recursively)
    and inheritance children."""
    rows = monitor.execute("""
        SELECT DISTINCT vn.nspname || '.' || v.relname, tn.nspname || '.' || t.relname
        FROM pg_rewrite r JOIN pg_class v ON v.oid = r.ev_class JOIN pg_namespace vn ON vn.oid = v.relnamespace
        JOIN pg_depend d ON d.objid = r.oid AND d.classid = 'pg_rewrite'::regclass
        JOIN pg_class t ON t.oid = d.refobjid AND t.oid <> v.oid JOIN pg_namespace tn ON tn.oid = t.relnamespace
        WHERE v.relkind = 'v'
        UNION
        SELECT pn.nspname || '.' || p.relname, cn.nspname || '.' || c.relname FROM pg_inherits i
        JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace
        JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace""").fetchall()
    out: dict = {}
    for a, b in rows:
        out.setdefault(a, set()).add(b)
    changed = True
    while changed:  # views over views
        changed = False
        for a in out:
            more = set().union(*(out.get(b, set()) for b in out[a])) - out[a]
            if more:
                out[a] |= more
                changed = True
    return out


def read_scope(conn) -> Scope:
    results = []
    for q in SCOPE_QUERY.rstrip(";").split(";"):
        results.append([[None if v is None else str(v) for v in row] for row in conn.execute(q).fetchall()])
    return Scope.from_results(results)


def server_locks(conn, monitor, sql) -> dict:
    """Run sql in a transaction; 'schema.name' -> lock modes the backend holds; rolled back."""
    pid = conn.info.backend_pid
    temp = conn.execute("SELECT CASE WHEN pg_my_temp_schema() <> 0 "
                        "THEN pg_my_temp_schema()::regnamespace::text END").fetchone()[0]
    conn.execute("BEGIN")
    try:
        try:
            if sql.lstrip().upper().startswith("COPY"):
                with conn.cursor().copy(sql) as cp:
                    for _ in cp:
                        pass
            else:
                conn.execute(sql)
            error = None
        except psycopg.Error as e:
            error = str(e)
        rows = monitor.execute("""
            SELECT n.nspname, c.relname, c.relkind, l.mode FROM pg_locks l
            JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE l.pid = %s AND l.locktype = 'relation' AND l.granted""", (pid,)).fetchall()
    finally:
        conn.execute("ROLLBACK")
    out: dict = {}
    for nsp, rel, kind, mode in rows:
        if kind not in ("r", "p", "v", "m", "f"):
            continue  # indexes, sequences, toast: taken on behalf of a table
        nsp = "pg_temp" if nsp == temp else nsp
        if nsp in ("pg_catalog", "information_schema", "pg_toast") and not re.search(
                rf"\b{re.escape(rel)}\b", sql):
            continue  # the server's own catalog lookups
        out.setdefault(f"{nsp}.{rel}", set()).add(mode)
    return out, error


def _plain(subject: str) -> str:
    return subject.replace('"', "")


def compare(units, locks, reach, via_function=False):
    """Problems, as text: relations the server locked that the units do not cover,
    and units on relations the server did not touch."""
    by_rel: dict = {}
    for u in units:
        if u.subject and not u.subject.endswith("()") and u.subject != "(any object)":
            by_rel.setdefault(_plain(u.subject), set()).add(u.kind)
    problems = []
    for rel, modes in locks.items():
        for mode in modes:
            ok = COVERS.get(mode, STRONGER)
            holders = [r for r, classes in by_rel.items() if classes & ok and (r == rel or rel in reach.get(r, ()))]
            if not holders and not via_function:
                problems.append(f"server took {mode} on {rel}; judged {sorted(by_rel.get(rel, ()))}")
    for rel, classes in by_rel.items():
        classes = classes - {"ddl", "admin"}  # a new relation holds no lock another session sees
        if not classes:
            continue
        reached = {rel} | reach.get(rel, set())
        if not reached & set(locks):
            problems.append(f"judged {sorted(classes)} on {rel}, which the server did not touch")
            continue
        modes = locks.get(rel, set())
        for cls in classes & {"write", "lock"}:
            if modes and not modes & NEEDS[cls] and "*" not in NEEDS[cls] | modes and not (
                    modes - set(COVERS)):
                problems.append(f"judged {cls} on {rel}, the server took only {sorted(modes)}")
    return problems


# (setup statements run first, outside the transaction; the statement)
CASES = [
    # WITH names where they are and are not in scope.
    ((), "WITH customers AS (SELECT * FROM customers) SELECT email FROM customers"),
    ((), "WITH customers AS (SELECT * FROM customers WHERE id = 1) SELECT * FROM customers"),
    ((), "WITH secrets AS (SELECT 1) INSERT INTO secrets VALUES (2, 'x')"),
    ((), "WITH secrets AS (SELECT 1 AS id) UPDATE secrets SET v = 'x'"),
    ((), "WITH secrets AS (SELECT 1 AS id) DELETE FROM secrets WHERE id IN (SELECT id FROM secrets)"),
    ((), "WITH secrets AS (SELECT 1 AS id, 'v' AS v) "
         "MERGE INTO secrets s USING secrets x ON s.id = x.id WHEN MATCHED THEN DELETE"),
    ((), "WITH customers AS (SELECT 1 AS id) "
         "MERGE INTO invoices i USING customers c ON i.id = c.id WHEN NOT MATCHED THEN INSERT VALUES (c.id + 5, 1, 1)"),
    ((), "MERGE INTO invoices i USING customers c ON i.id = c.id WHEN MATCHED THEN UPDATE SET amount = 0"),
    ((), "MERGE INTO invoices i USING (SELECT * FROM secrets) s ON i.id = s.id WHEN MATCHED THEN DELETE"),
    ((), "WITH x AS (SELECT * FROM invoices), invoices AS (SELECT * FROM secrets) SELECT * FROM x"),
    ((), "WITH invoices AS (SELECT * FROM secrets), x AS (SELECT * FROM invoices) SELECT * FROM x"),
    ((), "WITH RECURSIVE x AS (SELECT * FROM invoices), invoices AS (SELECT * FROM secrets) SELECT * FROM x"),
    ((), "WITH RECURSIVE customers AS (SELECT 1 AS id UNION ALL SELECT id + 1 FROM customers WHERE id < 3) "
         "SELECT * FROM customers"),
    ((), "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 3) SELECT * FROM t, secrets"),
    ((), "SELECT * FROM (WITH customers AS (SELECT 1 AS id) SELECT * FROM customers) s, customers"),
    ((), "WITH secrets AS (SELECT 1 AS id) SELECT * FROM customers WHERE id IN (SELECT id FROM secrets)"),
    ((), "WITH s AS (SELECT * FROM invoices) SELECT * FROM (WITH s AS (SELECT * FROM secrets) SELECT * FROM s) x"),
    ((), "WITH customers AS (SELECT 1) SELECT * FROM public.customers"),
    ((), f"WITH customers AS (SELECT 1) SELECT * FROM {DB}.public.customers"),
    ((), "WITH d AS (DELETE FROM secrets RETURNING *) SELECT * FROM d"),
    ((), "WITH secrets AS (SELECT 1 AS id), d AS (DELETE FROM secrets WHERE id IN (SELECT id FROM secrets) "
         "RETURNING *) SELECT * FROM d"),
    ((), "WITH x AS (SELECT * FROM secrets) INSERT INTO invoices SELECT id + 10, id, 0 FROM x"),
    ((), "INSERT INTO invoices WITH invoices AS (SELECT 9 AS id, 1 AS cid, 1 AS amount) SELECT * FROM invoices"),
    ((), "WITH customers AS (SELECT 1 AS id) UPDATE invoices SET amount = 1 FROM customers "
         "WHERE invoices.id = customers.id"),
    ((), "UPDATE invoices SET amount = 1 FROM customers WHERE invoices.cid = customers.id"),
    ((), "DELETE FROM invoices USING secrets WHERE invoices.id = secrets.id"),
    ((), "WITH secrets AS (SELECT 1 AS id) DELETE FROM invoices USING secrets WHERE invoices.id = secrets.id"),
    ((), "INSERT INTO customers SELECT id + 10, name, email FROM customers "
         "ON CONFLICT (id) DO UPDATE SET email = (SELECT v FROM secrets LIMIT 1)"),
    ((), "SELECT * FROM customers c WHERE EXISTS "
         "(WITH customers AS (SELECT 1 AS id) SELECT 1 FROM customers WHERE id = c.id)"),
    ((), "WITH generate_series AS (SELECT * FROM secrets) SELECT * FROM generate_series(1, 2)"),
    ((), "WITH pg_class AS (SELECT 1 AS x) SELECT * FROM pg_class"),
    ((), "WITH x AS MATERIALIZED (SELECT * FROM secrets) SELECT * FROM x"),
    ((), "WITH x AS NOT MATERIALIZED (SELECT * FROM secrets), y AS (SELECT * FROM x) SELECT * FROM y"),
    ((), "COPY (WITH customers AS (SELECT 1) SELECT * FROM customers) TO STDOUT"),
    ((), "COPY (SELECT * FROM secrets) TO STDOUT"),
    ((), "CREATE TABLE newt AS WITH customers AS (SELECT 1 AS id) SELECT * FROM customers"),
    ((), "CREATE VIEW newv AS WITH x AS (SELECT * FROM secrets) SELECT * FROM x"),
    ((), "SELECT 1 INTO newt2 FROM secrets"),
    ((), "PREPARE p1 AS WITH customers AS (SELECT 1) SELECT * FROM customers"),
    ((), "PREPARE p2 AS WITH x AS (SELECT 1) SELECT * FROM customers"),
    ((), "EXPLAIN WITH d AS (DELETE FROM secrets RETURNING *) SELECT * FROM d"),
    ((), "TABLE customers"),
    ((), "SELECT * FROM ONLY parent"),
    ((), "SELECT * FROM parent"),
    ((), "SELECT * FROM customers UNION SELECT * FROM other.customers JOIN secrets USING (id)"
         " WHERE false"),
    # Views.
    ((), "SELECT * FROM v_customers"),
    ((), "SELECT * FROM v_nested"),
    ((), "WITH v_customers AS (SELECT 1) SELECT * FROM v_customers"),
    ((), "SELECT * FROM v_customers FOR UPDATE"),
    ((), "SELECT * FROM (SELECT * FROM v_customers) s FOR SHARE"),
    ((), "SELECT * FROM customers WHERE id = ANY (SELECT id FROM v_customers)"),
    # Row locks reach FROM subqueries, not WITH queries, functions or sublinks.
    ((), "SELECT id FROM (SELECT id FROM customers) s FOR UPDATE"),
    ((), "SELECT * FROM customers c JOIN invoices i ON i.cid = c.id FOR UPDATE OF c"),
    ((), "SELECT * FROM customers c JOIN invoices i ON i.cid = c.id FOR SHARE OF i"),
    ((), "SELECT * FROM customers WHERE id IN (SELECT cid FROM invoices) FOR UPDATE"),
    ((), "WITH x AS (SELECT * FROM secrets FOR UPDATE) SELECT * FROM x"),
    ((), "WITH x AS (SELECT * FROM secrets) SELECT * FROM x FOR UPDATE"),
    ((), "WITH x AS (SELECT * FROM secrets) SELECT * FROM x, customers FOR UPDATE"),
    ((), "SELECT * FROM (SELECT * FROM (SELECT * FROM secrets) a) b FOR NO KEY UPDATE"),
    ((), "SELECT * FROM (SELECT * FROM (SELECT * FROM secrets) a) b FOR KEY SHARE OF b"),
    ((), "SELECT * FROM customers, LATERAL (SELECT * FROM invoices WHERE cid = customers.id) x FOR KEY SHARE"),
    ((), "SELECT * FROM customers, LATERAL (SELECT * FROM invoices WHERE cid = customers.id) x FOR SHARE OF x"),
    ((), "SELECT (SELECT count(*) FROM secrets) FROM customers FOR UPDATE"),
    ((), "SELECT * FROM customers WHERE id IN (SELECT id FROM secrets FOR UPDATE)"),
    ((), "SELECT * FROM f_rows() FOR UPDATE"),
    ((), "SELECT * FROM customers FOR UPDATE OF customers"),
    ((), "SELECT * FROM public.customers FOR UPDATE OF customers"),
    ((), "SELECT * FROM customers AS x, invoices FOR UPDATE OF x SKIP LOCKED"),
    ((), "SELECT * FROM customers TABLESAMPLE bernoulli (50) FOR UPDATE NOWAIT"),
    ((), "SELECT * FROM customers c JOIN (SELECT * FROM secrets) s USING (id) FOR UPDATE OF s"),
    ((), "SELECT * FROM (customers c JOIN invoices i ON i.cid = c.id) FOR UPDATE"),
    ((), "DECLARE c1 CURSOR FOR SELECT * FROM secrets FOR UPDATE"),
    ((), "EXPLAIN SELECT * FROM secrets FOR UPDATE"),
    ((), "SELECT * FROM parent FOR UPDATE"),
    # LOCK TABLE and TRUNCATE.
    ((), "LOCK TABLE customers IN ACCESS SHARE MODE"),
    ((), "LOCK TABLE customers IN ROW SHARE MODE"),
    ((), "LOCK TABLE customers IN SHARE MODE NOWAIT"),
    ((), "LOCK TABLE customers, secrets"),
    ((), "LOCK TABLE v_customers IN SHARE MODE"),
    ((), "TRUNCATE secrets"),
    # Functions in FROM, LATERAL.
    ((), "SELECT * FROM f_rows()"),
    ((), "SELECT * FROM customers c, LATERAL generate_series(1, c.id) g"),
    ((), "SELECT * FROM ROWS FROM (generate_series(1, 2), unnest(ARRAY['a'])) AS r(a, b), secrets"),
    # Qualified, quoted, catalog-like names and the search path.
    ((), 'SELECT * FROM "Customers"'),
    ((), 'SELECT * FROM public."we.ird"'),
    ((), 'SELECT * FROM "We.Ird".t'),
    ((), 'UPDATE "Customers" SET email = NULL'),
    ((), "SELECT * FROM pg_payroll"),
    ((), "SELECT * FROM pg_class"),
    ((), "SELECT * FROM pg_catalog.pg_class, public.pg_payroll"),
    (("SET search_path = other, public",), "SELECT * FROM customers"),
    (("SET search_path = other, public",), "SELECT * FROM invoices JOIN customers USING (id)"),
    (("SET search_path = other, public",), "DELETE FROM customers"),
    (("SET search_path = other, public",), "WITH customers AS (SELECT 1) SELECT * FROM public.customers"),
    (("SET search_path = other, pg_catalog",), "SELECT * FROM pg_class"),
    (("SET search_path = other",), "SELECT * FROM pg_class"),
    (("SET search_path = ''",), "SELECT * FROM public.customers, pg_class"),
    (("CREATE TEMP TABLE customers (id int, email text)",), "SELECT * FROM customers"),
    (("CREATE TEMP TABLE customers (id int, email text)",), "INSERT INTO customers VALUES (1, 'x')"),
    (("CREATE TEMP TABLE customers (id int, email text)", "SET search_path = public, pg_temp"),
     "SELECT * FROM customers"),
    (("CREATE TEMP TABLE customers (id int, email text)",), "SELECT * FROM pg_temp.customers, public.customers"),
    (("CREATE TEMP TABLE secrets2 (id int)",), "SELECT * FROM secrets2, secrets"),
    ((f"SET ROLE {ROLE}",), "SELECT * FROM customers"),
    ((f"SET ROLE {ROLE}",), "SELECT * FROM invoices"),
    ((f"SET ROLE {ROLE}", "SET search_path = public, \"$user\""), "SELECT * FROM customers"),
    ((f"SET ROLE {ROLE}",), "WITH customers AS (SELECT * FROM customers) SELECT * FROM customers"),
]


@pytest.mark.parametrize("setup, sql", CASES, ids=[c[1].replace(DB, "DB")[:70] for c in CASES])
def test_classifier_judges_what_the_server_locks(conns, setup, sql):
    conn, monitor, reach = conns
    try:
        for s in setup:
            conn.execute(s)
        scope = read_scope(conn)
        c = classify(sql, scope)
        locks, error = server_locks(conn, monitor, sql)
    finally:
        conn.execute("RESET ALL")
        conn.execute("RESET ROLE")
        conn.execute("DISCARD ALL")
    assert error is None, f"the case itself failed upstream: {error}"
    assert not c.unresolved
    via_function = any(u.kind == "write" and (u.subject or "").endswith("()") for u in c.units)
    problems = compare(c.units, locks, reach, via_function)
    assert not problems, (sql, sorted(map(str, c.units)), locks, problems)
