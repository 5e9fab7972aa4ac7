"""Attacks on the two caches in front of PostgreSQL judging: the text key and the policy's memo.

1. ``sqltext.key`` in front of ``classify.parse_statement``: two texts with one key are served
   the Parsed of the first. Claimed sound because "the grammar never looks at a literal's value".
   It does: a string literal the grammar turns into a plain String (COPY's options, NOTIFY's
   payload, LOAD's file, ...) or an integer it turns into an Integer or a type name
   (``float(n)``, FETCH's count) is kept by the parse shape (``sqltree.shape`` leaves out only
   A_Const and ParamRef), so the walk may read it and still call the statement cacheable: the
   shape cache is right to, the text key is not.
2. ``PolicyService.judge``'s memo, keyed by the operation's units: units that compare equal but
   judge differently (an MCP ToolUnit's ``args`` is ``eq=False``) share one answer.

Tests named ``test_closed_hole_*`` failed on the caches as first written: each was a hole, now closed
(the text key kept only where every literal became a constant where it stands, ``classify.
_literals_are_constants``; the memo for plain, small Units only). Tests named ``test_guard_*`` passed
there too: attacks that found nothing, kept as regression guards.
"""
from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from pglast.parser import scan

from hoopy.config import Grant
from hoopy.mcp.rules import ToolUnit
from hoopy.policy.rules import Operation, Unit
from hoopy.policy.service import MEMO_MAX, PolicyService
from hoopy.postgres import classify as classify_mod, sqltree
from hoopy.postgres.classify import _walk, classify, parse_statement
from hoopy.postgres.scope import Scope
from hoopy.postgres.sqltext import _INTEGERS, _STRINGS, key
from hoopy.protocols import parse_rule


def fresh(sql):
    """What a parse of this very text gives (no cache), or the error's type name."""
    try:
        return _walk(sqltree.folded(sql))
    except sqltree.ClassifyError as e:
        return type(e).__name__


@pytest.fixture(autouse=True)
def empty_caches():
    # Each test starts from empty caches: the first text of a pair is the one stored.
    classify_mod._TEXTS.clear()
    classify_mod._SHAPES.clear()
    yield
    classify_mod._TEXTS.clear()
    classify_mod._SHAPES.clear()


# === 1. the text key ==========================================================================

# COPY (query) TO STDOUT: its DELIMITER / QUOTE / ESCAPE are String nodes (not A_Const), so the
# walk reads them (copy_quoting: refused where masking patterns apply) and, with a safe character,
# calls the statement cacheable. The text key writes every one of them ''.
COPY_PAIRS = [
    ("COPY (SELECT email FROM contacts) TO STDOUT (DELIMITER ',')",
     "COPY (SELECT email FROM contacts) TO STDOUT (DELIMITER '@')"),
    ("COPY (SELECT email FROM contacts) TO STDOUT WITH DELIMITER ','",
     "COPY (SELECT email FROM contacts) TO STDOUT WITH DELIMITER '.'"),
    ("COPY (SELECT email FROM contacts) TO STDOUT WITH CSV QUOTE ','",
     "COPY (SELECT email FROM contacts) TO STDOUT WITH CSV QUOTE '@'"),
    ("COPY (SELECT email FROM contacts) TO STDOUT (FORMAT csv, ESCAPE ',', QUOTE ',')",
     "COPY (SELECT email FROM contacts) TO STDOUT (FORMAT csv, ESCAPE '@', QUOTE '@')"),
]


@pytest.mark.parametrize("first, second", COPY_PAIRS)
def test_closed_hole_copy_of_a_query_served_the_safe_delimiters_judgement(first, second):
    """HOLE (masking bypass). ``COPY (query) TO STDOUT (DELIMITER '@')`` is refused where
    patterns apply (copy_quoting: the server escapes '@' inside a value, the email pattern no
    longer sees the address). Sent after the same COPY with DELIMITER ',' it is served that
    one's Parsed from the text cache: copy_quoting None, not refused."""
    assert key(first) is not None and key(first) == key(second)
    assert fresh(second).copy_quoting  # (a fresh parse refuses it: else this proves nothing)
    classify(first)
    assert classify(second).copy_quoting == fresh(second).copy_quoting


# Integers the grammar turns into something other than an A_Const, and values it refuses.
GRAMMAR_READS_THE_VALUE = [
    # float(p): float4 for p <= 24, float8 above, a syntax error for 0 or > 53.
    ("SELECT CAST(x AS float(5)) FROM t", "SELECT CAST(x AS float(25)) FROM t"),
    ("SELECT CAST(x AS float(5)) FROM t", "SELECT CAST(x AS float(0)) FROM t"),
    ("SELECT CAST(x AS float(5)) FROM t", "SELECT CAST(x AS float(54)) FROM t"),
    # the index column number is an Integer; 0 is a syntax error
    ("ALTER INDEX i ALTER COLUMN 1 SET STATISTICS 100", "ALTER INDEX i ALTER COLUMN 0 SET STATISTICS 100"),
]


@pytest.mark.parametrize("first, second", GRAMMAR_READS_THE_VALUE)
def test_closed_hole_integer_values_the_grammar_reads(first, second):
    """HOLE (low: no judgement found that differs). The claim "the grammar never looks at an
    integer literal's value" is false: ``float(25)`` is served the Parsed of ``float(5)`` (casts
    to pg_catalog.float4, not float8), ``float(0)`` / ``ALTER COLUMN 0`` (syntax errors) are
    served a judgement and forwarded. Casts to pg_catalog types resolve to no unit today, so
    the units agree; a walk that ever reads a cast's target breaks here."""
    assert key(first) is not None and key(first) == key(second)
    assert fresh(first).cacheable
    assert fresh(second) != fresh(first)  # (the parser tells them apart)
    parse_statement(first)
    try:
        got = parse_statement(second)
    except sqltree.ClassifyError as e:
        got = type(e).__name__
    assert got == fresh(second)


# A corpus of statements over the grammar's corners; every admitted one is varied in each literal
# and must get from the cache exactly what a fresh parse of it gives.
CORPUS = """
COPY (SELECT email FROM customers) TO STDOUT (DELIMITER ',')
COPY customers TO STDOUT (DELIMITER ',')
COPY (SELECT 1) TO STDOUT (FORMAT 'csv')
COPY customers TO '/tmp/x'
SELECT CAST(x AS float(5)) FROM t
SELECT CAST(x AS int[3]) FROM t
SELECT CAST(x AS varchar(5)), CAST(y AS numeric(10, 2)), CAST(z AS bit(3)) FROM t
FETCH 5 FROM c
MOVE 5 IN c
NOTIFY ch, 'payload'
LOAD 'plpgsql'
DO 'BEGIN NULL; END'
CREATE FUNCTION f() RETURNS int AS 'SELECT 1' LANGUAGE sql
EXPLAIN (ANALYZE 'off') DELETE FROM t
EXPLAIN (FORMAT 'json') SELECT 1
SET TIME ZONE 'UTC'
SET SESSION AUTHORIZATION 'alice'
SET ROLE 'alice'
SET SCHEMA 'public'
SET NAMES 'UTF8'
SET search_path = 'public'
SET statement_timeout = 5
SET standard_conforming_strings = 'on'
SET TRANSACTION SNAPSHOT '0001'
SELECT set_config('application_name', 'x', false)
SELECT current_setting('application_name')
PREPARE TRANSACTION 'g'
COMMIT PREPARED 'g'
CREATE SEQUENCE s INCREMENT 5 START 1
CREATE TABLE p1 PARTITION OF p FOR VALUES WITH (MODULUS 4, REMAINDER 1)
ALTER ROLE r CONNECTION LIMIT 5
COMMENT ON TABLE t IS 'x'
ALTER TYPE e ADD VALUE 'c'
CREATE VIEW v WITH (security_barrier = 'false') AS SELECT a FROM t
ALTER VIEW v SET (security_invoker = 'false')
SELECT a FROM t ORDER BY 1 LIMIT 5 OFFSET 1
SELECT a[1:2] FROM t
SELECT interval '1' day, interval(3) '1', date '2024-01-01', regclass 'pg_authid', timestamp(3) '2024-01-01'
SELECT CAST('x' AS regclass)
SELECT extract('year' FROM now()), 'x' AT TIME ZONE 'UTC'
SELECT * FROM t TABLESAMPLE SYSTEM (5) REPEATABLE (1)
SELECT nextval('s'), pg_read_file('x')
SELECT * FROM JSON_TABLE(j, '$' COLUMNS (a int PATH '$.a')) jt
SELECT * FROM XMLTABLE('/r' PASSING x COLUMNS a int PATH 'a') xt
SELECT JSON_VALUE(j, '$.a') FROM t
VACUUM (PARALLEL 4) t
CREATE DATABASE d ENCODING 'UTF8'
ALTER SYSTEM SET work_mem = '1MB'
CREATE SERVER s FOREIGN DATA WRAPPER w OPTIONS (host 'x')
CREATE SUBSCRIPTION s CONNECTION 'host=x' PUBLICATION p
SELECT 1 FROM t WHERE a = 1; SELECT 2 FROM u WHERE b = 'x'
SELECT set_config('search_path', 'x', false); SELECT a FROM t
SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'jit'
SELECT a FROM t WHERE b = - 1 AND c BETWEEN 1 AND 5
SELECT CASE a WHEN 1 THEN 'x' ELSE 'y' END FROM t
MERGE INTO t USING u ON t.a = u.a WHEN MATCHED THEN UPDATE SET b = 'x' WHEN NOT MATCHED THEN INSERT VALUES (1)
SELECT a FROM t WHERE a = 1 OFFSET 5 ROWS FETCH NEXT 5 ROWS WITH TIES
CREATE TABLE p1 PARTITION OF p FOR VALUES IN ('x')
ALTER FUNCTION f() SET search_path = 'x'
SELECT CURRENT_TIMESTAMP(3), LOCALTIME(3)
""".strip().splitlines()
STRING_VALUES = ["a", "@", ",", "on", "off", "true", "0", "1", "x y", "search_path", "UTF8", "LATIN1", "none",
                 "postgres", "pg_authid", "--", "csv", "binary", "''"]
INT_VALUES = ["0", "1", "5", "24", "25", "54", "100", "999999999"]


def _variants(sql):
    for m in _STRINGS.finditer(sql):
        for v in STRING_VALUES:
            yield sql[:m.start()] + "'" + v.replace("'", "''") + "'" + sql[m.end():]
    for m in _INTEGERS.finditer(sql):
        for v in INT_VALUES:
            yield sql[:m.start()] + v + sql[m.end():]


def test_closed_hole_statements_of_one_key_get_another_statements_parsed():
    """The strongest form over a corpus: for every admitted statement and every variant of one
    of its literals (same key), what parse_statement serves the variant after the statement
    is what a fresh parse of the variant gives. Fails on the COPY options and the float(p) /
    column-number cases above."""
    wrong = []
    admitted = [a for a in CORPUS if key(a) is not None]
    assert len(admitted) > 50
    for a in admitted:
        for b in _variants(a):
            assert key(b) == key(a), (a, b)
            classify_mod._TEXTS.clear()
            classify_mod._SHAPES.clear()
            try:
                parse_statement(a)
            except sqltree.ClassifyError:
                pass
            try:
                got = parse_statement(b)
            except sqltree.ClassifyError as e:
                got = type(e).__name__
            if got != fresh(b):
                wrong.append((a, b))
    assert wrong == []


# --- guards: the lexical claim holds ------------------------------------------------------

_WORDS = ["SELECT", "FROM", "WHERE", "t", "a", "x1", "AND", "IN", "LIMIT", "AS", "CAST", "int", "float", "regclass",
          "date", "interval", "day", "E", "U", "B", "X", "N", "e", "b", "x", "n", "u", "VALUES", "COPY", "TO",
          "STDOUT", "DELIMITER", "UESCAPE", "NOTIFY", "LOAD", "COLLATE", "OPERATOR", "ARRAY", "ROW", "_", "a_1"]
_PUNCT = ["(", ")", ",", ";", ".", "[", "]", "=", "<", ">", "<=", ">=", "<>", "!=", "+", "-", "*", "/", "%",
          "$1", "$2", "$01", "$", "!", "|", "&", ":", "::", "@", "\\", '"', "$$", "'", "--", "/*", "*/", "^", "#",
          "~", "?", "`", "=>", ":=", "..", "&&", "|/"]
_SPACES = ["", " ", "\n", "\t", "\r", "\f", "\v", "\u00a0", "\u2028", "\x00", "\r\n", "  \n  "]
_BODIES = ["", "a", "it''s", "--", "/*", "$$", '"', "\n", "\u00e9", "''", "\\", "\x00", "\u2028", "'"]
_INTS = ["0", "1", "007", "42", "123456789", "1234567890", "1.", ".5", "1e5", "0x1F", "1_000", "1.5", "00"]


_PLAIN = ["SELECT", "t", "a", "(", ")", ",", "=", "<>", "-", "1", "42", "'a'", "'it''s'", "$1", ";", "."]


def _tok():
    # Mostly the plain subset (else almost nothing is admitted), with the edges mixed in.
    return st.one_of(st.sampled_from(_PLAIN), st.sampled_from(_PLAIN), st.sampled_from(_PLAIN),
                     st.sampled_from(_WORDS), st.sampled_from(_PUNCT), st.sampled_from(_INTS),
                     st.sampled_from(_BODIES).map(lambda b: "'" + b + "'"))


@st.composite
def near_plain_sql(draw):
    toks = draw(st.lists(st.tuples(_tok(), st.sampled_from([" ", " ", "\n"] + _SPACES)), min_size=1, max_size=12))
    return "".join(t + s for t, s in toks)


def _tokens(sql):
    """The server lexer's tokens (libpg_query): kinds, and the text of all but literals."""
    try:
        return [(t.name, sql[t.start:t.end + 1] if t.name not in ("SCONST", "ICONST") else "")
                for t in scan(sql)]
    except Exception as e:  # an unterminated string or comment
        return type(e).__name__


def _vary(draw, sql):
    sql = _STRINGS.sub(lambda m: "'" + draw(st.sampled_from(["q", "--", "/*", "$$", "a''b", "", "\u00e9"])) + "'",
                       sql)
    return _INTEGERS.sub(lambda m: draw(st.sampled_from(["0", "5", "31337", "999999999", "000000000"])), sql)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(near_plain_sql(), st.data())
def test_guard_one_key_is_one_token_sequence_but_for_literal_values(sql, data):
    """Guard (passes): key(a) == key(b) implies the server's lexer reads the same tokens but
    for SCONST/ICONST values, over texts built near the plain subset's edges (prefixes E U B X
    N, typed literals, ``1.`` ``.5`` ``1e5`` ``0x`` ``1_000``, ``$1a``, backslash, NUL,
    \\f \\v U+00A0 U+2028, string continuation, operators, comments)."""
    k = key(sql)
    if k is None:
        return
    other = _vary(data.draw, sql)
    assert key(other) == k
    assert _tokens(other) == _tokens(sql), (sql, other)
    try:
        sa, sb = sqltree.shape(sqltree.folded(sql)), sqltree.shape(sqltree.folded(other))
    except sqltree.ClassifyError:
        return
    assert sa == sb, (sql, other)


def test_guard_one_key_is_one_token_sequence_in_volume():
    """Guard (passes): the same differential check as above, 30000 seeded texts without
    hypothesis's overhead (and the parse shapes compared too)."""
    import random

    rng = random.Random(20261130)
    pool = _PLAIN * 4 + _WORDS + _PUNCT + _INTS + ["'" + b + "'" for b in _BODIES]
    admitted = 0
    for _ in range(30000):
        sql = "".join(rng.choice(pool) + rng.choice([" ", " ", "\n"] + _SPACES) for _ in range(rng.randint(1, 12)))
        k = key(sql)
        if k is None:
            continue
        admitted += 1
        other = _vary(lambda s: rng.choice(s.elements), sql)
        assert key(other) == k, (sql, other)
        assert _tokens(other) == _tokens(sql), (sql, other)
        try:
            sa = sqltree.shape(sqltree.folded(sql))
        except sqltree.ClassifyError:
            continue
        assert sa == sqltree.shape(sqltree.folded(other)), (sql, other)
    assert admitted > 2000


def test_guard_the_admission_regex_is_linear_near_the_length_limit():
    import time

    for text in ["'" + "''" * 2040 + "'", "a " * 2048, "(" * 4096, "1 " * 2048, "'a' " * 1000 + "'",
                 "a" * 4095 + "$", "= " * 2048, ("'x'\n" * 1000) + "'y'"]:
        t = time.thread_time()
        key(text)
        assert time.thread_time() - t < 0.05, text[:20]


def test_guard_the_cached_parsed_is_resolved_in_each_sessions_own_scope():
    """Guard (passes): the cache holds what was parsed; resolution is per scope (another
    search path, or after CREATE TEMP TABLE) and never carried over with the Parsed."""
    public = Scope.default()
    temp = Scope(("pg_temp_3", "pg_catalog", "public"), ("public",), "public", "pg_temp_3",
                 {"pg_temp_3": frozenset({"t"}), "pg_catalog": frozenset()})
    a = classify("SELECT x FROM t WHERE a = 'a'", public)
    b = classify("SELECT x FROM t WHERE a = 'b'", temp)
    c = classify("SELECT x FROM t WHERE a = 'c'", public)
    assert parse_statement("SELECT x FROM t WHERE a = 'd'") is parse_statement("SELECT x FROM t WHERE a = 'a'")
    assert [str(u) for u in a.units] == [str(u) for u in c.units] == ["read public.t"]
    assert [str(u) for u in b.units] == ["read pg_temp.t"]


# --- through a real gateway: the COPY hole leaks a masked address ----------------------------

from tests.support import HoopyProcess, admin_sql, free_port, ident, pg_connection  # noqa: E402

AGENT = ident("agent")
MAIL = "ann@example.com"


@pytest.fixture(scope="module")
def pg_gateway(tmp_path_factory):
    db = f"hoopy_attack_{secrets.token_hex(4)}"
    admin_sql(f"CREATE DATABASE {db}")
    try:
        admin_sql(f"CREATE TABLE contacts (id int, email text); INSERT INTO contacts VALUES (1, '{MAIL}');", db)
        port = free_port()
        body = AGENT.toml() + f"""
{pg_connection(port, db)}

[[grants]]
identity = "agent"
connection = "pg"
allow = ["read public.contacts"]

[[masking]]
connection = "pg"
columns = []
patterns = ["email"]
"""
        proc = HoopyProcess(tmp_path_factory.mktemp("attackpg"), body).start()
        proc.port = port
        yield proc
        proc.stop()
    finally:
        admin_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def _copy_out(g, sql):
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(f"host=127.0.0.1 port={g.port} user={AGENT.name} password={AGENT.token} dbname=x "
                         "sslmode=disable", autocommit=True) as c:
        data = b""
        try:
            with c.cursor().copy(sql) as cp:
                for chunk in cp:
                    data += bytes(chunk)
        except psycopg.Error as e:
            return e
        return data


def test_closed_hole_gateway_copy_after_a_safe_delimiter_leaks_the_address(pg_gateway):
    """HOLE (high: masking bypass through a real gateway). Alone, ``COPY (SELECT email FROM
    contacts) TO STDOUT (DELIMITER '@')`` is refused; after the same text with DELIMITER ','
    it runs and the address comes out as ``ann\\@example.com``, unmasked."""
    safe = _copy_out(pg_gateway, "COPY (SELECT email FROM contacts) TO STDOUT (DELIMITER ',')")
    assert safe == b"[REDACTED]\n", safe
    got = _copy_out(pg_gateway, "COPY (SELECT email FROM contacts) TO STDOUT (DELIMITER '@')")
    assert b"ann" not in (got if isinstance(got, bytes) else b""), got
    assert isinstance(got, Exception) and getattr(got, "sqlstate", None) in ("42501", "22023", "0A000"), got  # refused, as it is on a fresh gateway


# === 2. the judgement memo ==========================================================================

def _policy(*grants, now=None):
    class Cfg:
        connections: dict = {}

        class gateway:
            approval_timeout = 60

    Cfg.grants = grants
    return PolicyService(Cfg, None, None, now=now)


def _grant(conn, proto, allow=(), approve=(), deny=(), expires=None, who="agent"):
    return Grant(who, conn, tuple(parse_rule(proto, t) for t in allow), tuple(parse_rule(proto, t) for t in approve),
                 tuple(parse_rule(proto, t) for t in deny), expires, 0)


def _tool(path):
    return Operation("mcp", "tool", "read_file", (ToolUnit("tool", "read_file", args={"path": path}),))


def test_closed_hole_mcp_tool_calls_with_other_arguments_share_one_judgement():
    """HOLE (high: an argument-constrained grant or deny rule bypassed). ToolUnit's ``args`` is
    ``eq=False``: every call of one tool has equal (and equally hashed) units, so the memo
    answers a call with the judgement of the tool's first call, whatever its arguments."""
    p = _policy(_grant("m", "mcp", allow=["tool read_file path=/srv/public/*"], deny=["tool read_file path=*shadow*"]))
    assert p.judge("agent", "m", _tool("/srv/public/a")).outcome == "allow"
    assert p.judge("agent", "m", _tool("/etc/shadow")).outcome == "deny"
    assert p.judge("agent", "m", _tool("/etc/passwd")).outcome == "deny"


def test_closed_hole_mcp_tool_approval_by_argument_is_skipped():
    p = _policy(_grant("m", "mcp", allow=["tool read_file"], approve=["tool read_file path=/secret/*"]))
    assert p.judge("agent", "m", _tool("/tmp/a")).outcome == "allow"
    assert p.judge("agent", "m", _tool("/secret/keys")).outcome == "approve"


def test_guard_units_that_differ_only_in_what_rules_read_are_other_keys():
    """Guard (passes): ssh's ``key`` and ``unjudgeable`` are part of Unit equality, so a unit
    spelled alike but keyed (or expanded) otherwise is judged afresh."""
    import attrs

    from hoopy.ssh import shell

    p = _policy(_grant("s", "ssh", allow=["exec ls *"]))
    (ok,) = shell.analyze("ls a").units
    assert p.judge("agent", "s", Operation("ssh", "exec", "ls a", (ok,))).outcome == "allow"
    wants = []
    for odd in (attrs.evolve(ok, key="rm\x1ea"), attrs.evolve(ok, unjudgeable="`$(x)` would be expanded")):
        assert odd != ok
        want = _policy(_grant("s", "ssh", allow=["exec ls *"])).judge("agent", "s", Operation("ssh", "exec", "x", (odd,)))
        assert p.judge("agent", "s", Operation("ssh", "exec", "x", (odd,))).outcome == want.outcome
        wants.append(want.outcome)
    assert wants[0] == "deny"  # (the other key is judged otherwise: else this proves nothing)


def test_guard_expiry_clock_back_and_the_memo_bound():
    from hoopy.ssh import shell

    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    clock = [t0]
    g1 = _grant("s", "ssh", allow=["exec uptime"], expires=t0 + timedelta(seconds=10))
    g2 = _grant("s", "ssh", deny=["exec uptime"], expires=t0 + timedelta(seconds=5))
    p = _policy(g1, g2, now=lambda: clock[0])
    up = Operation("ssh", "exec", "uptime", shell.analyze("uptime").units)
    assert p.judge("agent", "s", up).outcome == "deny"
    clock[0] = t0 + timedelta(seconds=5)
    assert p.judge("agent", "s", up).outcome == "allow"
    clock[0] = t0 + timedelta(seconds=4, microseconds=999999)  # back, before the deny expired
    assert p.judge("agent", "s", up).outcome == "deny"
    clock[0] = t0 + timedelta(seconds=10)
    assert p.judge("agent", "s", up).outcome == "deny"
    for i in range(MEMO_MAX + 5):  # past the bound: cleared, still right
        p.judge("agent", "s", Operation("ssh", "exec", f"x{i}", (Unit("exec", f"x{i}"),)))
    clock[0] = t0
    assert p.judge("agent", "s", up).outcome == "deny"
    assert len(p._memo[("agent", "s")][2]) <= MEMO_MAX


# --- through a real gateway: the MCP argument hole ------------------------------------------

B = ident("mcp-b")


@pytest.fixture(scope="module")
def mcp_world(tmp_path_factory):
    from tests.wire_peers import LenientMCPServer, RawUpstream

    up = RawUpstream()
    srv = LenientMCPServer(up)
    port = free_port()
    body = B.toml(scram=False) + f"""
[connections.tools]
type = "mcp"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up.port}/mcp"
upstream_timeout = "5s"
head_timeout = "4s"

[[grants]]
identity = "mcp-b"
connection = "tools"
allow = ["tool echo path=/srv/reports/*"]
"""
    gw = HoopyProcess(tmp_path_factory.mktemp("attackmcp"), body).start()
    gw.url, gw.srv = f"http://127.0.0.1:{port}/mcp", srv
    yield gw
    gw.stop()
    up.stop()


def _post(world, msg, headers):
    r = urllib.request.Request(world.url, data=json.dumps(msg).encode(), method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(r, timeout=15) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_closed_hole_gateway_mcp_call_with_a_path_outside_the_grant_runs(mcp_world):
    """HOLE (high, through a real gateway): `tool echo path=/srv/reports/*` allows reports only.
    After one allowed call, ``echo`` with path /etc/passwd reaches the MCP server."""
    auth = {"Authorization": f"Bearer {B.token}"}
    status, headers, body = _post(mcp_world, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}, auth)
    assert status == 200, body
    h = {**auth, "Mcp-Session-Id": headers["Mcp-Session-Id"], "MCP-Protocol-Version": "2025-06-18"}
    assert _post(mcp_world, {"jsonrpc": "2.0", "method": "notifications/initialized"}, h)[0] == 202

    def call(path, id_):
        return json.loads(_post(mcp_world, {"jsonrpc": "2.0", "id": id_, "method": "tools/call",
                                            "params": {"name": "echo", "arguments": {"path": path}}}, h)[2])

    assert not call("/srv/reports/q1.csv", 2)["result"].get("isError")
    ran = len(mcp_world.srv.calls)
    out = call("/etc/passwd", 3)
    assert out["result"].get("isError"), out
    assert mcp_world.srv.calls[ran:] == [], mcp_world.srv.args[ran:]


def test_closed_hole_memo_keeps_every_large_operation_it_judged():
    """HOLE (medium: authenticated memory DoS). The memo keeps each judged operation's units and
    its Judgement's ``parts`` (a dict with a reason per unit) until MEMO_MAX (4096) entries per
    identity and connection, whatever their size. One 400 KB SQL text naming 20000 tables
    (``SELECT 1 FROM s.t0, s.t1, ...``, allowed by max_statement's 1 MiB) leaves about 10 MB
    behind, denied or not: 4096 of them, about 40 GB. Before the memo nothing stayed."""
    import gc
    import tracemalloc

    from hoopy.postgres.rules import pg_table_unit

    p = _policy(_grant("pg", "postgres", allow=["read public.*"]))
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for k in range(4):
            units = tuple(pg_table_unit("read", f"s{k}", f"t{i}") for i in range(20000))
            assert p.judge("agent", "pg", Operation("postgres", "statement", "SELECT ...", units)).outcome == "deny"
            del units
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert kept < 4_000_000, f"{kept / 1e6:.1f} MB kept after judging 4 operations"
