"""Attacks on what the PostgreSQL gateway lets run, through a real ``twistd -n hoopy``
and the real server.

An identity with ``read public.customers`` (``ssn`` masked, the ``email`` pattern)
and nothing else tries to read other relations, write anything, or hold locks it
has no grant for. What the server did is the judge: a marker table that must not
change, the locks the backend holds (``pg_locks``), the settings it runs with.
Each test is one class of mistake the gateway made, with the variants found.
"""
from __future__ import annotations

import secrets
import socket
import time

import pytest

from hoopy.postgres import codec, scram
from tests.support import HoopyProcess, admin_sql, free_port, ident, pg_connection

psycopg = pytest.importorskip("psycopg")


SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text, ssn text, email text);
INSERT INTO customers VALUES (1, 'Ann', '123-45-6789', 'ann@example.com'), (2, 'Bob', '987-65-4321', 'b@x.org');
CREATE TABLE secrets (id int, v text);
INSERT INTO secrets VALUES (1, 'the secret');
CREATE TABLE marker (n int);
INSERT INTO marker VALUES (0);
CREATE TABLE scratch (v text);
CREATE VIEW v_customers AS SELECT id, ssn AS tax_id FROM customers;
CREATE SCHEMA shadow;
CREATE TABLE shadow.customers (id int, name text, ssn text, email text);
INSERT INTO shadow.customers VALUES (1, 'Shadow', 'shadow-ssn', 'shadow@x.org');
CREATE FUNCTION public.go_shadow() RETURNS int LANGUAGE plpgsql
  AS $$BEGIN PERFORM set_config('search_path', 'shadow, public', false); RETURN 1; END$$;
CREATE FUNCTION public.bump() RETURNS int LANGUAGE plpgsql
  AS $$BEGIN UPDATE public.marker SET n = n + 1; RETURN 1; END$$;
CREATE FUNCTION public.bump_plus(int, int) RETURNS int LANGUAGE plpgsql
  AS $$BEGIN UPDATE public.marker SET n = n + 1; RETURN $1 + $2; END$$;
CREATE OPERATOR public.## (FUNCTION = public.bump_plus, LEFTARG = int, RIGHTARG = int);
CREATE OPERATOR public.%%% (FUNCTION = public.bump_plus, LEFTARG = int, RIGHTARG = int);
CREATE FUNCTION public.bump_check(int) RETURNS bool LANGUAGE plpgsql
  AS $$BEGIN UPDATE public.marker SET n = n + 1; RETURN true; END$$;
CREATE DOMAIN public.checked AS int CHECK (public.bump_check(VALUE));
CREATE DOMAIN public.checked_twice AS public.checked;
CREATE TYPE public.boxed AS (a int);
CREATE FUNCTION public.box_it(int) RETURNS public.boxed LANGUAGE plpgsql
  AS $$BEGIN UPDATE public.marker SET n = n + 1; RETURN ROW($1)::public.boxed; END$$;
CREATE CAST (int AS public.boxed) WITH FUNCTION public.box_it(int);
CREATE FUNCTION public.same_plus(int, int) RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT $1 + $2';
CREATE OPERATOR public.+++# (FUNCTION = public.same_plus, LEFTARG = int, RIGHTARG = int);
CREATE FUNCTION public.positive(int) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT $1 > 0';
CREATE DOMAIN public.posint AS int CHECK (public.positive(VALUE));
"""

AGENT = ident("agent")
APPROVED = ident("needs-approval")
COPIER = ident("copier")
CALLER = ident("caller")
REVIEWER = ident("reviewer")


@pytest.fixture(scope="module")
def g(tmp_path_factory):
    db = f"hoopy_attack_{secrets.token_hex(4)}"
    admin_sql(f"CREATE DATABASE {db}")
    admin_sql(SCHEMA, db)
    port = free_port()
    body = (AGENT.toml() + APPROVED.toml() + COPIER.toml() + CALLER.toml()
            + REVIEWER.toml(kind="human", roles=["reviewer"]) + f"""
{pg_connection(port, db)}
approvals = "retry"

[[grants]]
identity = "agent"
connection = "pg"
allow = ["read public.customers"]

[[grants]]
identity = "needs-approval"
connection = "pg"
allow = ["read public.customers"]
approve = ["write public.marker"]

[[grants]]
identity = "copier"
connection = "pg"
allow = ["read public.v_customers", "write public.scratch"]

[[grants]]
identity = "caller"
connection = "pg"
allow = ["read public.customers", "write public.go_shadow()"]

[[masking]]
connection = "pg"
columns = ["public.customers.ssn", "shadow.customers.ssn"]
patterns = ["email"]
""")
    proc = HoopyProcess(tmp_path_factory.mktemp("attacks"), body).start()
    proc.port, proc.database = port, db
    yield proc
    proc.stop()
    admin_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def connect(g, who=AGENT, **kw):
    return psycopg.connect(f"host=127.0.0.1 port={g.port} user={who.name} password={who.token} dbname=x "
                           "sslmode=disable", autocommit=True, **kw)


def refused(conn, sql, code="42501") -> str:
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql)
    assert e.value.sqlstate == code, (sql, e.value.sqlstate, str(e.value))
    return str(e.value)


def marker(g) -> str:
    return admin_sql("SELECT n FROM marker", g.database)


class Raw:
    """A client on a plain socket (hoopy's own codec and SCRAM client): the test
    decides which messages go, in which order, and when to read."""

    def __init__(self, g, who=AGENT, params=None):
        self.s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
        self.r = codec.MessageReader()
        self.s.sendall(codec.startup_message({"user": who.name, "database": "x", **(params or {})}))
        self.error = None
        t, p = self.recv()
        if t == b"E":
            self.error = codec.parse_fields(p)
            return
        client = scram.ScramClient(who.token, [scram.MECH], None)
        self.s.sendall(codec.sasl_initial(client.mech, client.first()))
        t, p = self.recv()
        self.s.sendall(codec.password(client.final(p[4:])))
        while True:
            t, p = self.recv()
            if t == b"E":
                self.error = codec.parse_fields(p)
                return
            if t == b"K":
                self.pid = int.from_bytes(p[:4], "big")  # the upstream backend's own pid
            if t == b"Z":
                return

    def recv(self):
        while True:
            m = self.r.next()
            if m is not None:
                return m
            data = self.s.recv(65536)
            assert data, "the gateway closed the connection"
            self.r.feed(data)

    def send(self, *messages):
        self.s.sendall(b"".join(messages))

    def until_ready(self) -> list:
        got = []
        while True:
            t, p = self.recv()
            got.append((t, p))
            if t == b"Z":
                return got

    def query(self, sql) -> list:
        self.send(codec.query(sql))
        return self.until_ready()

    def close(self):
        self.s.close()


def errors(got) -> list:
    return [codec.parse_fields(p) for t, p in got if t == b"E"]


def rows(got) -> list:
    return [codec.parse_data_row(p) for t, p in got if t == b"D"]


def parse(name, sql):
    return codec.msg(b"P", codec.cstr(name) + codec.cstr(sql) + b"\0\0")


def bind(portal, stmt):
    return codec.msg(b"B", codec.cstr(portal) + codec.cstr(stmt) + b"\0\0\0\0\0\0")


def execute(portal):
    return codec.msg(b"E", codec.cstr(portal) + b"\0\0\0\0")


def describe_statement(name):
    return codec.msg(b"D", b"S" + codec.cstr(name))


def close_statement(name):
    return codec.msg(b"C", b"S" + codec.cstr(name))


FLUSH = codec.msg(b"H", b"")


# --- startup: what the client's options become upstream ----------------------------

@pytest.mark.parametrize("space", ["\t", "\n", "\r", "\x0b", "\x0c", "\u00a0"], ids=["tab", "lf", "cr", "vt", "ff", "nbsp"])
def test_an_escaped_space_in_an_allowed_option_cannot_smuggle_another_setting(g, space):
    """The server splits ``options`` at every C whitespace character; a backslash keeps one
    in a word. An allowed option whose value holds ``\\<TAB>-c\\<TAB>name=value`` is one word
    to the gateway's check; passed on with the tab unescaped, it was three to the server,
    which set ``session_replication_role = replica`` (triggers and foreign keys off)."""
    bs = "\\"
    options = f"-c application_name=x{bs}{space}-c{bs}{space}session_replication_role=replica"
    c = Raw(g, params={"options": options})
    try:
        if c.error is None:
            assert rows(c.query("SHOW session_replication_role")) == [[b"origin"]]
        else:
            assert c.error["C"] == "42501", c.error
    finally:
        c.close()


# --- prepared statements: a name holds what the server says it holds ------------------

def _forgotten_by(c, how):
    """Make the gateway believe statement "p" is gone while the server keeps it."""
    if how == "deallocate in a failed transaction":
        c.query("BEGIN")
        c.query("SELECT 1/0")
        assert errors(c.query("DEALLOCATE p"))[0]["C"] == "25P02"  # the server refused it
        c.query("ROLLBACK")
    elif how == "deallocate all in a failed transaction":
        c.query("BEGIN")
        c.query("SELECT 1/0")
        assert errors(c.query("DEALLOCATE ALL"))[0]["C"] == "25P02"
        c.query("ROLLBACK")
    elif how == "discard all in a transaction block":
        c.query("BEGIN")
        assert errors(c.query("DISCARD ALL"))[0]["C"] == "25001"
        c.query("ROLLBACK")
    elif how == "close skipped after an error":
        c.send(parse("", "SELECT 1/0"), bind("", ""), execute(""), close_statement("p"), codec.SYNC)
        assert errors(c.until_ready())[0]["C"] == "22012"
    elif how == "deallocate bound and never executed":
        c.send(parse("", "DEALLOCATE p"), bind("", ""), codec.SYNC)
        c.until_ready()
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["deallocate in a failed transaction", "deallocate all in a failed transaction",
                                 "discard all in a transaction block", "close skipped after an error",
                                 "deallocate bound and never executed"])
def test_a_statement_name_the_server_still_holds_is_judged_as_what_it_holds(g, how):
    """The gateway dropped a prepared statement's name when a DEALLOCATE (or DISCARD ALL, or
    a protocol Close) was allowed, not when the server carried it out. Where the server did
    not (a failed transaction, a Close skipped after an error, a DEALLOCATE bound but never
    executed), a later ``PREPARE p AS <a read>`` failed upstream (the name exists) but was
    taken as p's statement, and ``EXECUTE p`` ran the UPDATE the server still held, without
    the approval its rule asks for."""
    before = marker(g)
    c = Raw(g, APPROVED)
    try:
        c.send(parse("p", "UPDATE marker SET n = n + 1"), codec.SYNC)
        assert not errors(c.until_ready())
        _forgotten_by(c, how)
        assert errors(c.query("PREPARE p AS SELECT id FROM customers"))[0]["C"] == "42P05"
        got = c.query("EXECUTE p")
        assert errors(got) and errors(got)[0]["C"] == "42501", got
        assert "approval" in errors(got)[0]["M"]  # write public.marker: held, nothing ran
        c.send(bind("", "p"), execute(""), codec.SYNC)
        assert errors(c.until_ready())[0]["C"] == "42501"
        # The session goes on, and a name the server did drop is free again.
        c.query("DEALLOCATE p")
        c.send(parse("p", "SELECT count(*) FROM customers"), bind("", "p"), execute(""), codec.SYNC)
        assert rows(c.until_ready()) == [[b"2"]]
    finally:
        c.close()
    assert marker(g) == before


def test_an_sql_prepared_statement_that_reads_nothing_runs(g):
    with connect(g) as c:
        c.execute("PREPARE one AS SELECT 1")
        assert c.execute("EXECUTE one").fetchone() == (1,)
        c.execute("DEALLOCATE one")


# --- the search path, read again in a failed transaction -------------------------------

@pytest.mark.parametrize("fail, sql", [
    (None, "DISCARD ALL"),  # fails by itself in a transaction block
    ("SELECT 1/0", "SET search_path = shadow, public"),
    ("SELECT 1/0", "RESET ALL"),
    ("SELECT 1/0", "SET ROLE NONE"),
    ("SELECT 1/0", "SELECT set_config('search_path', 'shadow', true)"),
])
def test_a_statement_after_a_failed_path_change_in_a_transaction_gets_its_answer(g, fail, sql):
    """After a statement that may change the search path the gateway reads it upstream again.
    In a failed transaction that read fails, and the gateway asked again, and again, for ever:
    the client's next statement (its ROLLBACK) never got an answer, and the server logged an
    error per try."""
    c = Raw(g)
    try:
        c.query("BEGIN")
        if fail:
            assert errors(c.query(fail))
        assert errors(c.query(sql))
        assert errors(c.query("SELECT count(*) FROM customers"))  # still the failed transaction
        got = c.query("ROLLBACK")
        assert not errors(got) and got[-1][1] == b"I", got
        assert rows(c.query("SELECT count(*) FROM customers")) == [[b"2"]]
    finally:
        c.close()



# --- Parse: judged before the server analyses (and locks) anything ---------------------

def backend_locks(g, pid) -> dict:
    out = {}
    for line in admin_sql(f"SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                          f"WHERE l.pid = {pid} AND c.relnamespace <> 'pg_catalog'::regnamespace",
                          g.database).splitlines():
        rel, mode = line.split("|")
        out.setdefault(rel, set()).add(mode)
    return out


@pytest.mark.parametrize("sql", [
    "INSERT INTO secrets VALUES (9, 'x')",
    "UPDATE marker SET n = n + 1",
    "DELETE FROM secrets",
    "MERGE INTO marker m USING secrets s ON false WHEN NOT MATCHED THEN INSERT VALUES (1)",
    "SELECT * FROM secrets FOR UPDATE",
    "SELECT * FROM secrets",
    "WITH customers AS (SELECT * FROM secrets) SELECT * FROM customers",
    "SELECT * FROM customers c JOIN secrets s USING (id)",
    "DECLARE c CURSOR FOR SELECT * FROM secrets",
    "CREATE TABLE x AS SELECT * FROM secrets",
    "EXPLAIN SELECT * FROM secrets",
    "SELECT * FROM pg_catalog.pg_authid",
])
def test_a_parse_the_grant_refuses_takes_no_lock_and_shows_no_columns(g, sql):
    """Parse went upstream unjudged (only the Bind was judged): the server's parse analysis
    locked every relation named until the transaction ended (RowExclusiveLock on an INSERT's
    target: a caller with a read grant on one table could hold it for as long as it liked,
    stalling any ALTER, CREATE INDEX or VACUUM FULL of it and every query queued behind those),
    and a Describe of the statement listed the columns and types of tables it may not read."""
    c = Raw(g)
    try:
        c.send(parse("", sql), describe_statement(""), FLUSH)
        t, p = c.recv()  # before Sync: the refusal, or (unjudged) ParseComplete
        assert t == b"E" and codec.parse_fields(p)["C"] == "42501", (t, p)
        locks = backend_locks(g, c.pid)
        assert not {"secrets", "marker"} & set(locks), locks
        c.send(codec.SYNC)
        got = c.until_ready()
        assert not [m for m, _ in got if m in (b"t", b"T", b"n")], got  # no description of anything
        assert rows(c.query("SELECT count(*) FROM customers")) == [[b"2"]]
    finally:
        c.close()
    assert marker(g) == "0" and admin_sql("SELECT count(*) FROM secrets", g.database) == "1"
    refusals = [e for e in g.events("operation") if e.get("outcome") == "refused" and e["data"].get("sql") == sql]
    assert refusals and refusals[-1]["data"].get("stage") == "parse", refusals


def test_a_parse_the_grant_allows_goes_upstream_as_it_came(g):
    c = Raw(g)
    try:
        c.send(parse("s1", "SELECT name FROM customers WHERE id = $1"), describe_statement("s1"), codec.SYNC)
        got = c.until_ready()
        assert [m for m, _ in got] == [b"1", b"t", b"T", b"Z"], got
        c.send(codec.msg(b"B", b"\0s1\0" + b"\0\0" + b"\0\x01" + b"\0\0\0\x011" + b"\0\0"), execute(""),
               codec.SYNC)
        assert rows(c.until_ready()) == [[b"Ann"]]
        # Refused at its Parse: the name stays free.
        c.send(parse("s2", "SELECT * FROM secrets"), codec.SYNC)
        assert errors(c.until_ready())[0]["C"] == "42501"
        c.send(parse("s2", "SELECT 2"), bind("", "s2"), execute(""), codec.SYNC)
        assert rows(c.until_ready()) == [[b"2"]]
    finally:
        c.close()


# --- server configuration: the settings PostgreSQL keeps from ordinary roles -------------

@pytest.mark.parametrize("sql", [
    "SHOW data_directory", 'SHOW "HBA_FILE"', "SHOW ALL", "SELECT current_setting('config_file')",
    "SELECT current_setting('Primary_Conninfo', true)", "SELECT pg_catalog.current_setting('ssl_passphrase_command')",
    "SELECT current_setting(n) FROM (VALUES ('data_directory')) v(n)",
    "SELECT * FROM pg_show_all_settings() WHERE name = 'data_directory'",
])
def test_superuser_only_settings_need_a_rule_for_pg_settings(g, sql):
    """SHOW, current_setting() and pg_show_all_settings() were reads needing no rule, while the
    pg_settings view needs one: with the gateway's upstream user a superuser, a caller with a read
    grant on one table read the data directory, hba_file, primary_conninfo (a replication password)
    and ssl_passphrase_command. Reading them is now reading pg_settings."""
    with connect(g) as c:
        assert "read pg_catalog.pg_settings" in refused(c, sql)


def test_ordinary_settings_stay_reads(g):
    with connect(g) as c:
        assert c.execute("SHOW work_mem").fetchone()[0]
        assert c.execute("SELECT current_setting('search_path'), current_setting('server_version_num')"
                         ).fetchone()[0] == '"$user", public'


# --- a query string: later names are looked up after earlier statements ran -------------

@pytest.mark.parametrize("sql", [
    "SELECT public.go_shadow(); SELECT name FROM customers",
    "SELECT 1 FROM customers WHERE public.go_shadow() = 1; SELECT name FROM customers",
    "SELECT customers.go_shadow FROM customers; SELECT name FROM customers",
])
def test_a_qualified_call_before_an_unqualified_name_in_one_string(g, sql):
    """The server looks a statement's names up when it gets to it. A function that may change the
    search path made later unqualified names unjudgeable only when it was called unqualified:
    ``SELECT public.go_shadow(); SELECT name FROM customers`` was judged as reading
    public.customers and read shadow.customers, which no rule allows."""
    with connect(g, CALLER) as c:
        try:
            msg = refused(c, sql)
            assert "search path may have changed" in msg
        finally:
            c.execute("RESET search_path")
        assert c.execute("SELECT name FROM customers ORDER BY id").fetchall() == [("Ann",), ("Bob",)]


# --- writes that would carry a masked column out of its table --------------------------

@pytest.mark.parametrize("sql", [
    "INSERT INTO scratch SELECT tax_id FROM v_customers",
    "INSERT INTO scratch SELECT upper(tax_id) FROM v_customers",
    "UPDATE scratch SET v = (SELECT tax_id FROM v_customers LIMIT 1)",
    "INSERT INTO scratch SELECT x FROM (SELECT tax_id AS x FROM v_customers) s",
])
def test_a_write_copying_a_masked_column_through_a_renaming_view_is_refused(g, sql):
    """A write that would copy a masked column into another table is refused (its rows never
    come back to be masked). The check looked for the masked column's own name: through a view
    that renames it (``ssn AS tax_id``) the value was copied into a table the caller reads in clear."""
    with connect(g, COPIER) as c:
        assert "would copy a masked column" in refused(c, sql)
        assert c.execute("SELECT tax_id FROM v_customers ORDER BY id").fetchall() == [("[REDACTED]",), ("[REDACTED]",)]
        c.execute("INSERT INTO scratch VALUES ('plain')")  # a write that copies nothing masked
    assert admin_sql("SELECT v FROM scratch", g.database) == "plain"
    admin_sql("DELETE FROM scratch", g.database)


def test_prepare_transaction_is_admin(g):
    """PREPARE TRANSACTION leaves a transaction that outlives the session, holding its locks and
    holding back vacuum, which only COMMIT/ROLLBACK PREPARED (admin) end: it was a read.
    (The shared server has max_prepared_transactions = 0; the refusal is the gateway's own.)"""
    with connect(g) as c:
        c.execute("BEGIN")
        c.execute("SELECT count(*) FROM customers")
        assert "admin" in refused(c, "PREPARE TRANSACTION 'keep-my-locks'")
        c.execute("ROLLBACK")



# --- expressions the walk did not look into ----------------------------------------------

HIDDEN = [
    "SELECT CASE WHEN true THEN {} END",
    "SELECT CASE WHEN false THEN NULL ELSE {} END",
    "SELECT CASE {} WHEN 1 THEN 1 END",
    "SELECT ({}) IS NULL",
    "SELECT ({}) IS NOT NULL",
    "SELECT ({}) IS DISTINCT FROM 1",
    "SELECT (({}) = 1) IS TRUE",
    "SELECT (({}) = 1) IS NOT UNKNOWN",
    "SELECT json_array({})",
    "SELECT json_scalar({})",
    "SELECT json_object('k' : {})",
    "SELECT 1 FROM customers WHERE CASE WHEN id = 1 THEN ({}) IS NULL END",
]


@pytest.mark.parametrize("expr, check", [
    ("bump()", "marker"),
    ("pg_catalog.pg_read_file('postgresql.conf')", "admin pg_catalog.pg_read_file()"),
    ("query_to_xml('SELECT * FROM secrets', true, false, '')", "admin pg_catalog.query_to_xml()"),
    ("set_config('session_replication_role', 'replica', false)", "admin"),
    ("nextval('pg_class_oid_index')", "write pg_catalog.nextval()"),
    ("pg_advisory_lock(42)", "no grant allows lock"),
], ids=["user-function", "server-file", "query-as-text", "admin-setting", "sequence", "advisory-lock"])
@pytest.mark.parametrize("shape", HIDDEN)
def test_a_call_inside_any_expression_is_judged(g, shape, expr, check):
    """Fields PostgreSQL's parse tree declares as an abstract expression (CASE's WHEN, THEN and
    ELSE, IS [NOT] NULL, IS TRUE, json_array, ...) hold their node with its type; the walk read
    them as a struct of the declared type and never saw the call inside: ``SELECT CASE WHEN true
    THEN query_to_xml('SELECT * FROM secrets', ...) END`` returned the secrets under a one-table
    read grant, ``... THEN bump() END`` wrote. (A walk that misses a call, a column or a relation
    the parser produced now refuses the statement instead: 54001.)"""
    sql = shape.format(expr)
    before = marker(g)
    with connect(g) as c:
        msg = refused(c, sql)
        if check != "marker":
            assert check in msg, msg
    assert marker(g) == before


@pytest.mark.parametrize("sql", [
    "SELECT CASE WHEN true THEN ssn END FROM customers",
    "SELECT CASE WHEN false THEN NULL ELSE ssn END FROM customers",
    "SELECT CASE ssn WHEN '' THEN NULL ELSE ssn END FROM customers",
    "SELECT CASE WHEN ssn IS NOT NULL THEN ssn END FROM customers",
])
def test_a_masked_column_inside_any_expression_is_masked(g, sql):
    with connect(g) as c:
        got = c.execute(sql + " ORDER BY id").fetchall()
    assert "45-6789" not in repr(got) and "65-4321" not in repr(got), got



# --- operators and casts: functions by another name --------------------------------------

@pytest.mark.parametrize("sql", [
    "SELECT 1 ## 2",  # a built-in operator name, overloaded for (int, int) in public
    "SELECT 1 OPERATOR(public.##) 2",
    "SELECT 1 %%% 2",
    "SELECT count(*) FROM customers WHERE id %%% 1 > 0",
    "SELECT 1::checked",
    "SELECT CAST('1' AS public.checked)",
    "SELECT 1::checked_twice",
    "SELECT ARRAY[1]::checked[]",
    "SELECT 1::boxed",
    "SELECT * FROM xmltable('/a' PASSING '<a>1</a>' COLUMNS x checked PATH '.')",
])
def test_operators_casts_and_domain_checks_that_run_volatile_functions_are_judged(g, sql):
    """An operator is a function under another name, and so are a cast's function and a
    domain's CHECK: ``SELECT 1 ## 2`` (## overloaded for integers by a plpgsql function),
    ``SELECT 1::checked`` (a domain whose CHECK calls one) and ``SELECT 1::boxed`` (a cast WITH
    FUNCTION) each ran an UPDATE under a one-table read grant. A VOLATILE function reached so is
    judged as called (write on it)."""
    before = marker(g)
    with connect(g) as c:
        msg = refused(c, sql)
        assert "write public.bump_" in msg or "write public.box_it()" in msg, msg
    assert marker(g) == before


def test_a_parameter_typed_as_such_a_domain_is_judged(g):
    """The extended protocol's Parse may give parameter types by OID: the server converts the
    Bind's value to that type, running the domain's CHECK. (So does EXECUTE of a statement
    PREPAREd with such parameter types: judged at the PREPARE and at each EXECUTE.)"""
    with connect(g) as conn:
        assert "write public.bump_check()" in refused(conn, "PREPARE typed(checked) AS SELECT $1")
    oid = int(admin_sql("SELECT 'public.checked'::regtype::oid", g.database))
    before = marker(g)
    c = Raw(g)
    try:
        c.send(codec.parse_message("", "SELECT $1", (oid,)), bind("", ""), execute(""), codec.SYNC)
        got = c.until_ready()
        assert errors(got) and "write public.bump_check()" in errors(got)[0]["M"], got
    finally:
        c.close()
    assert marker(g) == before


def test_immutable_operators_and_domain_checks_stay_reads(g):
    """What extensions declare (citext, PostGIS: IMMUTABLE C functions behind their operators
    and casts) is the type's own behaviour, as a built-in's is."""
    with connect(g) as c:
        assert c.execute("SELECT 1 +++# 2, 5::posint").fetchone() == (3, 5)
        assert c.execute("SELECT count(*) FROM customers WHERE id = 1").fetchone() == (1,)
