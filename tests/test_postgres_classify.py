"""The classifier's pure parts: the bounded parse, the shape cache, scoping, resolution
through a search path, the reviewed function catalogue. (What the server does with
the same statements is checked in tests/test_postgres_scope.py.)"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from hoopy.postgres import functions, sqltree
from hoopy.postgres.classify import _classify, classify, classify_or_error, parse_statement
from hoopy.postgres.scope import Scope


def units(sql, scope=None):
    return sorted(str(u) for u in classify(sql, scope or Scope.default()).units)


# --- the bounded parse ---------------------------------------------------------------

def test_constants_fold_to_scalars_and_strings_keep_their_text():
    j = sqltree.folded("SELECT 'it''s', E'a\\\\b\"c', '', 1, 2.5, true, NULL, $1, B'1', X'ff' FROM t")
    vals = [t["ResTarget"]["val"] for t in sqltree.load(j)[0]["stmt"]["SelectStmt"]["targetList"]]
    assert [sqltree.const_text(v) for v in vals[:3]] == ["it's", 'a\\b"c', ""]
    assert vals[3:] == [0] * 7
    # Names are never taken for constants.
    assert sqltree.const_text("t") is None


def test_shape_leaves_out_constant_values_only():
    a = sqltree.shape(sqltree.folded("SELECT * FROM t WHERE a = 1 AND b = 'x'"))
    b = sqltree.shape(sqltree.folded("SELECT   *  FROM t WHERE a = 22 AND b = 'yy' -- c"))
    assert a == b
    for other in ("SELECT * FROM u WHERE a = 1 AND b = 'x'", "SELECT * FROM t WHERE a = 1 OR b = 'x'",
                  'SELECT * FROM "T" WHERE a = 1 AND b = \'x\'', "SELECT * FROM t WHERE a = 1 AND c = 'x'"):
        assert sqltree.shape(sqltree.folded(other)) != a, other


def test_the_flat_decoder_reads_what_json_reads():
    rnd = random.Random(7)

    def tree(depth):
        if depth == 0 or rnd.random() < 0.2:
            return rnd.choice([0, -3, 1.5, True, False, None, "x", 'q"\\\u00e9\u0000', ""])
        if rnd.random() < 0.5:
            return [tree(depth - 1) for _ in range(rnd.randrange(4))]
        return {f"k{i}": tree(depth - 1) for i in range(rnd.randrange(4))}

    for _ in range(300):
        t = {"stmts": tree(6)}
        text = json.dumps(t, separators=(",", ":"))
        assert sqltree._loads_flat(text) == json.loads(text)
    deep = "[" * 50_000 + "]" * 50_000
    assert sqltree._loads_flat(deep) is not None


@pytest.mark.parametrize("sql, why", [
    ("SELECT " + "1+" * 200_000 + "1", "nested too deeply"),
    ("SELECT 1" + ",1" * 300_000, "parse nodes"),
    ("SELECT " + ",".join("f(x)" for _ in range(100_000)), "parse nodes"),
])
def test_past_a_bound_is_refused_with_the_reason(sql, why):
    c = classify_or_error(sql)
    assert isinstance(c, sqltree.CannotJudge) and c.code == "54001" and why in c.reason, c
    assert c.__traceback__ is None  # holds no frame (and no parse tree) of the failed parse


def test_deep_but_within_bounds_is_judged():
    assert units("SELECT " + "1+" * 3000 + "1 FROM t") == ["read public.t"]
    assert units(" UNION ALL ".join(f"SELECT {i} FROM t{i % 3}" for i in range(1500))) == [
        "read public.t0", "read public.t1", "read public.t2"]
    with pytest.raises(sqltree.Heavy):
        classify("SELECT " + "1+" * 3000 + "1", inline=True)


def test_a_bulk_insert_of_a_megabyte_is_judged():
    sql = "INSERT INTO t VALUES " + ",".join(f"({i}, 'name {i}', {i}.5, NULL)" for i in range(30_000))
    assert len(sql) > 800_000 and units(sql) == ["write public.t"]


# --- the shape cache -------------------------------------------------------------------

VARIANTS = [
    ("SELECT set_config('jit', 'off', false)", "SELECT set_config('role', 'postgres', false)"),
    ("SELECT set_config($1, 'x', false)", "SELECT set_config('jit', 'x', false)"),
    ("SET client_encoding = 'UTF8'", "SET client_encoding = 'LATIN1'"),
    ("SELECT set_config('client_encoding', 'utf-8', false)", "SELECT set_config('client_encoding', 'SJIS', false)"),
    ("SET ROLE NONE", "SET ROLE postgres"),
    ("SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'jit'",
     "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'role'"),
    ("COPY t (a) TO STDOUT", "COPY t (a) TO STDOUT (FORMAT binary)"),
]


@pytest.mark.parametrize("a, b", VARIANTS)
def test_statements_judged_by_a_constant_are_never_served_from_the_cache(a, b):
    for first, second in ((a, b), (b, a)):
        classify(first)
        assert classify(second) == _classify(second)
        assert classify(first) == _classify(first)


def test_the_cache_serves_only_what_a_fresh_parse_gives():
    corpus = ["SELECT * FROM t WHERE a = %d", "SELECT * FROM t%d", "WITH t AS (SELECT %d) SELECT * FROM t",
              "SELECT * FROM (SELECT %d) s, t FOR UPDATE", "LOCK TABLE t IN ACCESS SHARE MODE; SELECT %d",
              "LOCK TABLE t IN SHARE MODE; SELECT %d", "SELECT pg_advisory_lock(%d)", "SELECT c.ssn FROM c WHERE 1 = %d"]
    for i in range(3):
        for q in corpus:
            sql = q % i if "%d" in q else q
            assert classify(sql) == _classify(sql), sql


# --- scoping ------------------------------------------------------------------------------

@pytest.mark.parametrize("sql, expected", [
    ("WITH customers AS (SELECT * FROM customers) SELECT email FROM customers", ["read public.customers"]),
    ("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a", ["read public.b"]),
    ("WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a", ["read"]),
    ("WITH s AS (SELECT 1) INSERT INTO s SELECT * FROM s", ["write public.s"]),
    ("WITH s AS (SELECT 1) UPDATE s SET a = 1 FROM s AS x", ["write public.s"]),
    ("WITH s AS (SELECT 1) DELETE FROM s USING s AS x", ["write public.s"]),
    ("WITH s AS (SELECT 1) MERGE INTO s USING s AS x ON true WHEN MATCHED THEN DELETE", ["write public.s"]),
    ("WITH s AS (SELECT 1) SELECT * FROM public.s", ["read public.s"]),
    ("WITH s AS (SELECT 1) SELECT * FROM db.public.s", ["read public.s"]),
    ("WITH s AS (SELECT 1) COPY s TO STDOUT", None),  # not valid SQL: COPY has no WITH
    ("WITH s AS (SELECT 1) SELECT * FROM (SELECT * FROM s) x, LATERAL (SELECT * FROM s) y", ["read"]),
    ("SELECT * FROM (WITH s AS (SELECT 1) SELECT * FROM s) x, s", ["read public.s"]),
    ("WITH s AS (SELECT 1) SELECT (SELECT count(*) FROM s), EXISTS (SELECT FROM s)", ["read"]),
    ("WITH s AS (SELECT 1) SELECT * FROM s TABLESAMPLE system (1)", ["read"]),
    ("WITH s AS (SELECT 1) SELECT * FROM s, LATERAL s() f", ["write pg_catalog.s()", "write public.s()"]),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d FOR UPDATE", ["write public.t"]),
    ("SELECT * FROM a JOIN b ON true FOR UPDATE OF a", ["lock public.a", "read public.a", "read public.b"]),
    ("SELECT * FROM a x JOIN (SELECT * FROM b) y ON true FOR SHARE OF y",
     ["lock public.b", "read public.a", "read public.b"]),
    ("SELECT * FROM a WHERE EXISTS (SELECT FROM b) FOR UPDATE", ["lock public.a", "read public.a", "read public.b"]),
    ("SELECT * FROM (SELECT * FROM a UNION SELECT * FROM b) u FOR UPDATE",
     ["lock public.a", "lock public.b", "read public.a", "read public.b"]),
    ("LOCK a, b IN ROW EXCLUSIVE MODE", ["lock public.a", "lock public.b"]),
    ("EXPLAIN (ANALYZE) SELECT * FROM a FOR NO KEY UPDATE", ["lock public.a", "read public.a"]),
])
def test_scoping(sql, expected):
    if expected is None:
        assert isinstance(classify_or_error(sql), sqltree.ClassifyError)
    else:
        assert units(sql) == expected


def test_names_resolve_through_the_path():
    path = Scope(("pg_temp_3", "pg_catalog", "alice", "public"), ("alice", "public"), "alice", "pg_temp_3",
                 {"pg_temp_3": frozenset({"scratch"}), "pg_catalog": frozenset({"pg_class", "pg_settings"}),
                  "alice": frozenset({"notes", "pg_settings"})},
                 {"alice": frozenset({"helper"}), "public": frozenset({"helper", "refund"})})
    assert units("SELECT * FROM notes, orders, scratch, pg_class, pg_payroll", path) == [
        "read alice.notes", "read pg_catalog.pg_class", "read pg_temp.scratch", "read public.orders",
        "read public.pg_payroll"]
    # pg_catalog comes first here: alice.pg_settings is not what pg_settings means.
    assert units("SELECT * FROM pg_settings", path) == ["read pg_catalog.pg_settings"]
    assert units("SELECT * FROM pg_temp_3.scratch, pg_temp.x", path) == ["read pg_temp.scratch", "read pg_temp.x"]
    # New objects go to the first schema of the explicit path (a temporary one to pg_temp).
    assert units("CREATE TABLE n (a int)", path) == ["ddl", "ddl alice.n"]
    assert units("CREATE TEMP TABLE n (a int)", path) == ["ddl", "ddl pg_temp.n"]
    assert units("SELECT 1 INTO n", path) == ["ddl alice.n"]
    # Functions: every schema of the path holding the name (overloads), never the temporary one.
    assert units("SELECT helper(1), refund(2), upper('x')", path) == [
        "write alice.helper()", "write public.helper()", "write public.refund()"]
    assert units("SELECT c.refund FROM notes c", path) == ["read alice.notes", "write public.refund()"]
    # Later in the path, pg_catalog loses to a schema before it.
    later = Scope(("alice", "pg_catalog"), ("alice", "pg_catalog"), "alice", None,
                  {"alice": frozenset({"pg_class"})})
    assert units("SELECT * FROM pg_class, pg_proc", later) == ["read alice.pg_class", "read pg_catalog.pg_proc"]
    empty = Scope(("pg_catalog",), (), "", None, {})
    assert units("SELECT * FROM customers", empty) == ["read pg_catalog.customers"]


def test_an_unknown_path_refuses_only_unqualified_names():
    unknown = Scope.unknown()
    assert classify("SELECT * FROM t", unknown).unresolved
    assert classify("SELECT f()", unknown).unresolved
    assert classify("SELECT x.f FROM public.t x", unknown).unresolved
    c = classify("SELECT * FROM public.t, pg_catalog.pg_class WHERE pg_catalog.upper('x') = 'X'", unknown)
    assert not c.unresolved and sorted(map(str, c.units)) == ["read pg_catalog.pg_class", "read public.t"]


@pytest.mark.parametrize("sql", [
    "SET search_path = x; SELECT * FROM t",
    "SELECT set_config('search_path', 'x', false); SELECT * FROM t",
    "RESET ALL; SELECT * FROM t",
    "DISCARD ALL; SELECT * FROM t",
    "SET ROLE x; SELECT * FROM t",
    "SELECT my_function(); SELECT * FROM t",
    "CALL p(); SELECT * FROM t",
    "DO $$BEGIN END$$; SELECT * FROM t",
    "CREATE TEMP TABLE t (a int); SELECT * FROM t",
    "SET search_path = x; SELECT f()",
    "SET search_path = x; PREPARE q AS SELECT * FROM t",
])
def test_a_statement_after_a_path_change_in_the_same_string_is_not_judged_blind(sql):
    c = classify(sql)
    assert c.unresolved and c.may_change_path, sql


def test_a_statement_before_a_path_change_is_judged():
    c = classify("SELECT * FROM t; SET search_path = x; SELECT * FROM public.u")
    assert not c.unresolved and c.may_change_path
    assert not classify("SELECT 1; SELECT upper('x'); SELECT * FROM t").unresolved


# --- functions -------------------------------------------------------------------------------

def test_the_catalogue_lists_do_not_overlap():
    lists = [functions.PURE, functions.EXPOSING, functions.ADMIN_ACTIONS, functions.ADVISORY_LOCKS,
             functions.ADVISORY_UNLOCKS, functions.WRITES | functions.NOTIFY | functions.SETTINGS]
    for i, a in enumerate(lists):
        for b in lists[i + 1:]:
            assert not a & b, a & b
    # No prefix decides: a pg_stat_get_ function can be pure or exposing.
    assert "pg_stat_get_numscans" in functions.PURE and "pg_stat_get_activity" in functions.EXPOSING
    assert "pg_stat_get_backend_activity" not in functions.PURE


@pytest.mark.parametrize("call, unit", [
    ("pg_stat_get_activity(NULL)", "admin pg_catalog.pg_stat_get_activity()"),
    ("pg_stat_get_backend_activity(1)", "admin pg_catalog.pg_stat_get_backend_activity()"),
    ("pg_read_file('x')", "admin pg_catalog.pg_read_file()"),
    ("pg_ls_dir('.')", "admin pg_catalog.pg_ls_dir()"),
    ("pg_mcv_list_items(NULL)", "admin pg_catalog.pg_mcv_list_items()"),
    ("table_to_xml('t', true, false, '')", "admin pg_catalog.table_to_xml()"),
    ("pg_terminate_backend(1)", "admin pg_catalog.pg_terminate_backend()"),
    ("lo_get(1)", "admin pg_catalog.lo_get()"),
    ("pg_advisory_lock(1)", "lock"),
    ("pg_try_advisory_xact_lock_shared(1)", "lock"),
    ("nextval('s')", "write pg_catalog.nextval()"),
    ("pg_notify('c', 'x')", "write"),
    ("pg_catalog.pg_stat_get_numscans(1)", "read"),
    ("pg_advisory_unlock_all()", "read"),
    ("current_setting('x')", "read"),
    ("pg_get_expr(NULL, 0)", "read"),
    ("has_table_privilege('t', 'SELECT')", "read"),
    ("pg_export_snapshot()", "read"),
    ("information_schema._pg_expandarray(ARRAY[1])", "read"),
    ("some_new_builtin()", "write pg_catalog.some_new_builtin()"),
])
def test_functions_are_judged_by_what_they_are(call, unit):
    assert unit in units(f"SELECT {call}")


def test_docs_list_every_function_refused_unless_named():
    text = (Path(__file__).resolve().parents[1] / "docs" / "postgres.md").read_text()
    missing = sorted(n for n in functions.EXPOSING | functions.ADMIN_ACTIONS | functions.SENSITIVE_CATALOG_VIEWS
                     if n not in text)
    assert not missing, missing


def test_parsed_statements_hold_no_session():
    p = parse_statement("SELECT * FROM t")
    assert classify("SELECT * FROM t", Scope.default()).units != classify(
        "SELECT * FROM t", Scope(("pg_catalog", "x"), ("x",))).units
    assert parse_statement("SELECT * FROM t") is p  # served from the cache, resolved per scope
