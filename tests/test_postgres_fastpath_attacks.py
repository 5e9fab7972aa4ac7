"""Attacks on the pgfast and pgreply shortcuts (the attackpg round).

pgfast: resolve's answers kept on the Scope, the policy memo looked up before its units are
vetted, the connection's last answer reused. pgreply: a statement's unmasked rows found in one
pass (replyrun.scan, C and Python), plans cached per session by RowDescription bytes, taint and
formats. Each test is an attack as a caller with a token and some grants, or a hostile upstream,
would make it; each must find the shortcut answering as the slow path does.

In memory: a hostile upstream's random reply stream (lengths at every boundary, NULL and
negative lengths, DataRows with more or fewer columns than described, a RowDescription change
mid-statement, errors and notices between rows, wrong replies for the head) split at random,
read with and without the shortcut, masking on (configured columns and patterns) and off; the
plan cache asked alternately for one RowDescription's bytes with and without taint; memory the
resolve memo keeps. Through a real gateway and PostgreSQL: the same text after the search path
changes (a function that sets it, SET in a rolled-back transaction, a savepoint released, a
temporary table that shadows, DISCARD ALL), in the simple and the extended protocol, binary
results of masked and computed columns.
"""
from __future__ import annotations

import gc
import secrets
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from hoopy.policy.masking import BUILTIN
from hoopy.postgres import classify as classify_mod, codec, pipeline as cmd, replies, replyrun
from hoopy.postgres.rows import MaskRules
from hoopy.postgres.scope import Scope
from tests.test_postgres_machines import Exchange

# --- a hostile upstream, in memory ---------------------------------------------------------
OID = 16384  # public.customers; column 3 is ssn (configured)
F_SSN = codec.Field("ssn", OID, 3, 25, -1, -1, 0)
F_EXPR = codec.Field("u", 0, 0, 25, -1, -1, 0)  # a computed column: masked only when tainted
F_INT = codec.Field("n", 0, 0, 23, 4, -1, 0)
F_BIN = codec.Field("ssn", OID, 3, 25, -1, -1, 1)


def _rules(patterns: bool) -> MaskRules:
    r = MaskRules((BUILTIN["email"],) if patterns else (), configured=("public.customers.ssn",))
    r.load(([("16384", "3", "public", "customers", "ssn", "25")], [("16384", "r", "public", "customers")]))
    return r


CLIENT = (
    codec.query("SELECT ssn, upper(ssn) AS u FROM customers")
    + codec.query("SELECT upper('abc') AS u; SELECT 1 AS n")
    + codec.parse_message("", "SELECT ssn FROM customers") + codec.bind_message("", "", result_formats=(1,))
    + codec.execute("", 0) + codec.SYNC
    + codec.parse_message("", "SELECT upper('x') AS u") + codec.bind_message("", "") + codec.describe(b"P", "")
    + codec.execute("", 1) + codec.execute("", 0) + codec.SYNC
    + codec.query("SELECT ssn FROM customers")
    + codec.query("SELECT upper('abc') AS u"))

SECRET = b"123-45-6789"
_value = st.sampled_from([None, b"", SECRET, b"ann@example.com", b"x" * 40, b"\0\0\0\x05", b"Z\0\0\0\x05I"])


def _data_row(values, lie: int) -> bytes:
    body = bytearray(codec.build_data_row(values)[5:])
    if lie == 1 and body:  # a column count larger than the values sent
        body[0:2] = struct.pack("!h", len(values) + 3)
    elif lie == 2 and len(body) >= 6:  # a value length past the row
        body[2:6] = struct.pack("!i", 1 << 20)
    elif lie == 3 and len(body) >= 6:  # a negative length other than NULL's -1
        body[2:6] = struct.pack("!i", -7)
    return codec.msg(b"D", bytes(body))


_message = st.one_of(
    st.sampled_from([codec.row_description([F_SSN, F_EXPR]), codec.row_description([F_SSN]),
                     codec.row_description([F_EXPR]), codec.row_description([F_INT]),
                     codec.row_description([F_BIN]), codec.msg(b"n"), codec.msg(b"1"), codec.msg(b"2"),
                     codec.msg(b"s"), codec.msg(b"I"), codec.msg(b"3"),
                     codec.command_complete("SELECT 1"), codec.command_complete("INSERT 0 7"),
                     codec.command_complete("DEALLOCATE ALL"),
                     codec.ready(b"I"), codec.ready(b"T"), codec.ready(b"E"),
                     codec.error("22012", "boom 123-45-6789"), codec.notice("note ann@example.com"),
                     codec.parameter_status("application_name", "x"), codec.notification(1, "c", "ann@example.com"),
                     codec.msg(b"Z", b"II"), b"D\0\0\0\x03", b"D\0\0\0\x04"]),
    st.tuples(st.lists(_value, max_size=3), st.integers(0, 3)).map(lambda v: _data_row(*v)),
)


def _exchange(server: bytes, cuts, patterns: bool, fast: bool, monkeypatch, scan=None):
    monkeypatch.setattr(replies, "_FAST", fast)
    if scan is not None:
        monkeypatch.setattr(replies, "scan", scan)
    x = Exchange()
    x.cs.rules = _rules(patterns)
    x.send(CLIENT)
    pos = 0
    for n in list(cuts) + [len(server)]:
        x.reply(server[pos:pos + n])
        pos += n
    records = []
    for r in x.records:
        if isinstance(r, cmd.Trailing):
            r = cmd.Trailing(r.kind, r.outcome, {k: v for k, v in r.data.items() if k != "duration_ms"})
        records.append(r)
    return x.client, records, x.cs.tx_status, x.cs.state, len(x.cs.queue)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_message, max_size=30).map(b"".join), st.lists(st.integers(1, 23), max_size=40), st.booleans())
def test_a_hostile_upstream_reads_the_same_with_and_without_the_shortcut(monkeypatch, server, cuts, patterns):
    # (the same cuts both ways: what reached the client before a fatal reply depends on them)
    for cut in (cuts, [], [1] * len(server)):
        slow = _exchange(server, cut, patterns, False, monkeypatch)
        for scan in (None, replyrun.scan_py):
            _same(_exchange(server, cut, patterns, True, monkeypatch, scan), slow)


def _same(fast, slow):
    """Equal; but when the upstream broke the protocol (the session ends with 08006), the
    shortcut may have held back whole messages that the general code had already copied out
    before the broken one (it copies a run out at every message it reads, the shortcut only
    at a statement's end): the fast client's bytes before the FATAL are then a prefix of the
    slow one's. Never more, never other bytes: nothing the slow path withholds gets out."""
    if fast == slow:
        return
    fatal = b"C08006\0Mupstream protocol error"
    assert fast[1:] == slow[1:], "the records, state and queue"
    assert fatal in slow[0] and fatal in fast[0], (fast[0], slow[0])
    f_at, s_at = fast[0].rindex(b"E\0", 0, fast[0].index(fatal)), slow[0].rindex(b"E\0", 0, slow[0].index(fatal))
    assert fast[0][f_at:] == slow[0][s_at:]
    assert slow[0][:s_at].startswith(fast[0][:f_at])


def _skips_descriptions(buf, pos, end, also_t):
    return replyrun.scan_py(buf, pos, end, True)  # a masked statement's RowDescription passed unread


def _drops_a_row(buf, pos, end, also_t):
    p, n, t, nxt = replyrun.scan_py(buf, pos, end, also_t)
    return p, max(n - 1, 0), t, nxt


@pytest.mark.parametrize("broken", [_skips_descriptions, _drops_a_row])
def test_the_hostile_differential_catches_a_broken_scanner(monkeypatch, broken):
    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_message, max_size=30).map(b"".join), st.booleans())
    def differential(server, patterns):
        _same(_exchange(server, [], patterns, True, monkeypatch, broken),
              _exchange(server, [], patterns, False, monkeypatch))

    with pytest.raises((AssertionError, ExceptionGroup)):
        differential()


def _a_well_behaved_reply():
    ssn_rows = codec.row_description([F_SSN, F_EXPR]) + _data_row([SECRET, SECRET], 0)
    return (ssn_rows + codec.command_complete("SELECT 1") + codec.ready(b"I")
            + codec.row_description([F_EXPR]) + _data_row([SECRET], 0) + codec.command_complete("SELECT 1")
            + codec.row_description([F_INT]) + _data_row([b"1"], 0) + codec.command_complete("SELECT 1")
            + codec.ready(b"I"))


@pytest.mark.parametrize("fast", [False, True])
def test_the_differential_sees_masking(monkeypatch, fast):
    """The stream above reaches masking: the tainted statement's expression is masked, the
    untainted one with the same RowDescription bytes is not (the plan cache keys on taint)."""
    client = _exchange(_a_well_behaved_reply(), [3] * 40, False, fast, monkeypatch)[0]
    assert client.count(SECRET) == 1  # SELECT upper('abc') AS u: no taint, passes


def _ignores_taint(monkeypatch):
    real = MaskRules.plan_for

    def plan_for(self, description, classified, formats=None):
        return real(self, description, None if classified is None else _UNTAINTED, formats)
    monkeypatch.setattr(MaskRules, "plan_for", plan_for)


_UNTAINTED = classify_mod.classify("SELECT 1")


def test_a_plan_cache_that_ignores_taint_is_caught(monkeypatch):
    slow = _exchange(_a_well_behaved_reply(), [], False, False, monkeypatch)
    _ignores_taint(monkeypatch)
    assert _exchange(_a_well_behaved_reply(), [], False, True, monkeypatch) != slow


def test_the_plan_cache_alternates_taint_on_the_same_bytes():
    rules = _rules(False)
    desc = codec.row_description([F_EXPR])[5:]
    row = codec.build_data_row([SECRET])[5:]
    tainted = classify_mod.classify("SELECT upper(ssn) AS u FROM customers")
    clean = classify_mod.classify("SELECT upper('abc') AS u")
    for _ in range(3):
        assert SECRET not in rules.plan_for(desc, tainted).apply(row)
        assert rules.plan_for(desc, clean) is None
        assert SECRET not in rules.plan_for(desc, tainted, (1,)).apply(row)


# --- the C scanner at its boundaries -----------------------------------------------------------
@pytest.mark.skipif(replyrun.scan_c is None, reason="the C module is not built")
@pytest.mark.parametrize("n", [-(1 << 31), -1, 0, 3, 4, 5, (1 << 31) - 1])
def test_the_c_scanner_at_every_length_boundary(n):
    for t in b"DTCZ":
        buf = bytes([t]) + struct.pack("!i", n) + b"\0" * 8
        for end in range(len(buf) + 1):
            for also_t in (False, True):
                assert replyrun.scan_c(buf, 0, end, also_t) == replyrun.scan_py(buf, 0, end, also_t)
                assert replyrun.scan_c(bytearray(buf), 0, end, also_t) == replyrun.scan_py(buf, 0, end, also_t)


# --- memory the resolve memo keeps (a hole: fixed) ------------------------------------------
def test_distinct_long_statements_are_not_pinned_by_the_scope():
    """Before the fix every Parsed resolved in a scope stayed alive beside its answer, the ones
    no cache shares too: 20 distinct 350 kB statements (the thread path) kept 113 MB alive on one
    connection's Scope, and RESOLVED_MAX (1024) of them would keep gigabytes; main kept none."""
    scope = Scope.default()
    for k in range(3):
        sql = "SELECT " + ", ".join(f"t.c{i}_{k}" for i in range(3000)) + " FROM public.t"
        assert len(sql) > classify_mod._SHAPE_MAX
        assert not isinstance(classify_mod.classify_or_error(sql, scope), Exception)
    gc.collect()
    assert not [v for k, v in scope.resolved.items() if k != 0]


def test_the_scope_memo_is_bounded_by_the_text_behind_it():
    """What the memo keeps alive, a connection's distinct statements each under the caches'
    bound: 300 of 3-4 kB (about 100 kB of Parsed and Classified each) kept 30 MB a Scope
    before the fix; now at most RESOLVED_CHARS characters of text are behind it."""
    scope = Scope.default()
    budget = 256 * 1024
    for k in range(300):
        sql = "SELECT " + ", ".join(f"t.c{i}_{k}" for i in range(330)) + " FROM public.t"
        assert 3000 < len(sql) <= classify_mod._SHAPE_MAX
        classify_mod.classify(sql, scope)
    kept = sum(len(v[0].column_names) for k, v in scope.resolved.items() if k != 0)
    assert kept * 10 <= budget  # each column name here stands for more than 10 characters of text
    assert len(scope.resolved) <= classify_mod.RESOLVED_MAX + 1
    # and the steady state still answers from the memo
    c = classify_mod.classify("SELECT x FROM public.t WHERE a = 1", scope)
    assert classify_mod.classify("SELECT x FROM public.t WHERE a = 2", scope) is c


# --- through a real gateway and PostgreSQL ---------------------------------------------------
psycopg = pytest.importorskip("psycopg")

SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, ssn text, email text);
INSERT INTO customers VALUES (1, '123-45-6789', 'ann@example.com');
CREATE SCHEMA shadow;
CREATE TABLE shadow.customers (id int, ssn text, email text);
INSERT INTO shadow.customers VALUES (1, 'shadow-ssn', 'shadow@x.org');
CREATE FUNCTION public.go_shadow() RETURNS int LANGUAGE plpgsql
  AS $$BEGIN PERFORM set_config('search_path', 'shadow, public', false); RETURN 1; END$$;
"""


@pytest.fixture(scope="module")
def g(tmp_path_factory):
    from tests.support import HoopyProcess, admin_sql, free_port, ident, pg_connection

    db = f"hoopy_attackpg_{secrets.token_hex(4)}"
    role = db + "_r"
    admin_sql(f"CREATE DATABASE {db}")
    admin_sql(SCHEMA + f"CREATE ROLE {role}; CREATE SCHEMA {role} AUTHORIZATION {role}; "
              f"CREATE TABLE {role}.customers (id int, ssn text, email text); "
              f"INSERT INTO {role}.customers VALUES (1, 'role-ssn', 'role@x.org'); "
              f"GRANT ALL ON ALL TABLES IN SCHEMA public, {role} TO {role}; GRANT USAGE ON SCHEMA {role} TO {role};", db)
    port = free_port()
    reader, maker, roler = ident("reader"), ident("maker"), ident("roler")
    body = reader.toml() + maker.toml() + roler.toml() + f"""
{pg_connection(port, db)}

[[grants]]
identity = "reader"
connection = "pg"
allow = ["read public.customers", "read pg_catalog.*", "write public.go_shadow()"]

[[grants]]
identity = "maker"
connection = "pg"
allow = ["read public.customers", "read pg_catalog.*", "ddl"]

[[grants]]
identity = "roler"
connection = "pg"
allow = ["read public.customers", "read pg_catalog.*", "admin"]

[[masking]]
connection = "pg"
columns = ["public.customers.ssn", "shadow.customers.ssn"]
patterns = ["email"]
"""
    proc = HoopyProcess(tmp_path_factory.mktemp("attackpg"), body).start()
    proc.port, proc.database, proc.role = port, db, role
    proc.who = {"reader": reader, "maker": maker, "roler": roler}
    yield proc
    proc.stop()
    admin_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    admin_sql(f"DROP ROLE IF EXISTS {role}")


def connect(g, who="reader", **kw):
    i = g.who[who]
    return psycopg.connect(f"host=127.0.0.1 port={g.port} user={i.name} password={i.token} dbname=x "
                           "sslmode=disable", autocommit=True, **kw)


def refused(conn, sql, prepare=None, mentions="shadow.customers"):
    with pytest.raises(psycopg.Error) as e:
        conn.execute(sql, prepare=prepare)
    assert e.value.sqlstate == "42501", (sql, e.value.sqlstate, str(e.value))
    assert mentions in str(e.value), str(e.value)


WARM = "SELECT ssn, email FROM customers WHERE id = 1"
MASKED = [("[REDACTED]", "[REDACTED]")]


def _warm(c, prepare):
    for _ in range(6):  # past psycopg's prepare threshold, and the memo's and last answer's
        assert c.execute(WARM, prepare=prepare).fetchall() == MASKED


@pytest.mark.parametrize("prepare", [False, True])
def test_a_function_that_sets_the_path_is_not_answered_from_the_cache(g, prepare):
    with connect(g) as c:
        _warm(c, prepare)
        c.execute("SELECT public.go_shadow()")
        refused(c, WARM, prepare)  # shadow.customers: not granted
        c.execute("SET search_path TO public")
        assert c.execute(WARM, prepare=prepare).fetchall() == MASKED


@pytest.mark.parametrize("prepare", [False, True])
def test_set_config_in_a_select(g, prepare):
    with connect(g) as c:
        _warm(c, prepare)
        c.execute("SELECT set_config('search_path', 'shadow, public', false)")
        refused(c, WARM, prepare)
        c.execute("SELECT set_config('search_path', 'public', false)")
        assert c.execute(WARM, prepare=prepare).fetchall() == MASKED


@pytest.mark.parametrize("prepare", [False, True])
def test_set_config_after_the_same_text_key_with_another_setting(g, prepare):
    """'application_name' and 'search_path' give one text key (literals left out): the cached
    Parsed of the first must not answer for the second. (A setting's name as a parameter is
    admin on any object: roler has that.)"""
    with connect(g, "roler") as c:
        _warm(c, prepare)
        for _ in range(6):
            c.execute("SELECT set_config('application_name', 'x', false)", prepare=prepare)
        c.execute("SELECT set_config('search_path', 'shadow, public', false)", prepare=prepare)
        refused(c, WARM, prepare)
        c.execute("SELECT set_config('search_path', 'public', false)", prepare=prepare)
        for _ in range(6):  # parameters: the value is not in the text at all
            c.execute("SELECT set_config(%s, %s, false)", ("application_name", "y"), prepare=prepare)
        assert c.execute(WARM, prepare=prepare).fetchall() == MASKED
        c.execute("SELECT set_config(%s, %s, false)", ("search_path", "shadow, public"), prepare=prepare)
        refused(c, WARM, prepare)


@pytest.mark.parametrize("prepare", [False, True])
@pytest.mark.parametrize("become, back", [("SET ROLE {}", "RESET ROLE"),
                                          ("SET SESSION AUTHORIZATION {}", "RESET SESSION AUTHORIZATION")])
def test_another_role_makes_user_another_schema(g, prepare, become, back):
    with connect(g, "roler") as c:
        c.execute('SET search_path TO "$user", public')
        _warm(c, prepare)
        c.execute(become.format(g.role))
        refused(c, WARM, prepare, f"{g.role}.customers")
        c.execute(back)
        assert c.execute(WARM, prepare=prepare).fetchall() == MASKED


@pytest.mark.parametrize("prepare", [False, True])
def test_a_rolled_back_or_released_path_change(g, prepare):
    with connect(g) as c:
        _warm(c, prepare)
        c.execute("BEGIN")
        c.execute("SET search_path TO shadow, public")
        refused(c, WARM, prepare)
        c.execute("ROLLBACK")
        assert c.execute(WARM, prepare=prepare).fetchall() == MASKED
        c.execute("BEGIN")
        c.execute("SAVEPOINT a")
        c.execute("SET LOCAL search_path TO shadow, public")
        c.execute("RELEASE a")  # still in force until the transaction ends
        refused(c, WARM, prepare)
        c.execute("COMMIT")
        assert c.execute(WARM, prepare=prepare).fetchall() == MASKED
        c.execute("BEGIN")
        c.execute("SAVEPOINT b")
        c.execute("SET search_path TO shadow, public")
        c.execute("ROLLBACK TO SAVEPOINT b")
        assert c.execute(WARM, prepare=prepare).fetchall() == MASKED
        c.execute("COMMIT")


@pytest.mark.parametrize("prepare", [False, True])
def test_a_temporary_table_that_shadows_then_discard_all(g, prepare):
    with connect(g, "maker") as c:
        _warm(c, prepare)
        c.execute("CREATE TEMP TABLE customers (id int, ssn text, email text)")
        refused(c, WARM, prepare, "pg_temp")  # pg_temp's customers: not granted
        c.execute("DISCARD ALL")
        assert c.execute(WARM, prepare=prepare).fetchall() == MASKED


@pytest.mark.parametrize("spelling", [
    "select SSN, Email from CUSTOMERS where id = 1", 'SELECT "ssn", "email" FROM "customers" WHERE id = 1',
    "SELECT ssn, email FROM customers WHERE id = 1 -- x", "SELECT ssn, email /* c */ FROM customers WHERE id = 1",
    'SELECT U&"\\0073sn", email FROM customers WHERE id = 1', "SELECT ssn, email FROM customers WHERE id = 01"])
def test_other_spellings_after_a_path_change(g, spelling):
    with connect(g) as c:
        _warm(c, False)
        assert c.execute(spelling).fetchall() == MASKED
        c.execute("SET search_path TO shadow, public")
        refused(c, spelling)
        refused(c, WARM)


def test_same_description_bytes_other_taint_and_binary_results(g):
    with connect(g) as c:
        for _ in range(4):
            for binary in (False, True):
                cur = c.cursor(binary=binary)
                assert cur.execute("SELECT upper(ssn) AS u FROM customers", prepare=True).fetchall() \
                    == [("[REDACTED]",)]
                assert cur.execute("SELECT upper('abc') AS u", prepare=True).fetchall() == [("ABC",)]
                assert cur.execute("SELECT ssn FROM customers", prepare=True).fetchall() == [("[REDACTED]",)]


def test_another_identity_on_the_same_gateway(g):
    """The module caches (text, shape) are shared by every connection: a text warmed by one
    identity is judged by another's grants."""
    with connect(g) as a, connect(g, "maker") as b:
        _warm(a, True)
        a.execute("SELECT public.go_shadow()")
        refused(b, "SELECT public.go_shadow()", mentions="go_shadow")  # maker has no grant for it
        _warm(b, True)


def test_prepared_bodies_count_in_the_memo_bound():
    """The same through SQL PREPARE: EXECUTE resolves the PREPARE's body, which the memo kept
    counted as no text at all (so unbounded by RESOLVED_CHARS) after DEALLOCATE had dropped it."""
    x = Exchange()
    scope = x.cs.scope
    for k in range(100):
        body = "SELECT " + ", ".join(f"t.c{i}_{k}" for i in range(330)) + " FROM public.t"
        for sql, tag in ((f"PREPARE p AS {body}", "PREPARE"), ("EXECUTE p", "SELECT 0"), ("DEALLOCATE p", "DEALLOCATE")):
            x.send(codec.query(sql))
            x.reply(codec.command_complete(tag) + codec.ready(b"I"))
        assert x.cs.scope is scope and "p" not in x.cs.prepared
    kept = sum(len(v[0].column_names) for k, v in scope.resolved.items() if k != 0)
    assert kept * 9 <= scope.resolved.get(0, 0)  # each name here stands for 9 characters or more


def test_the_last_answer_is_refused_once_the_session_reads_sql_otherwise():
    """standard_conforming_strings off between two sends of one text: the cached answer (last
    answer, memo, text cache) is still refused, as every statement but setting it back is."""
    x = Exchange()
    sql = "SELECT x FROM public.t WHERE a = 'it\\\\'' OR true --'"
    for _ in range(3):
        x.send(codec.query(sql))
        x.reply(codec.command_complete("SELECT 0") + codec.ready(b"I"))
    before = len(x.upstream)
    x.reply(codec.parameter_status("standard_conforming_strings", "off"))
    x.send(codec.query(sql))
    assert len(x.upstream) == before  # not forwarded
    assert b"standard_conforming_strings" in x.client.rsplit(b"C\0\0\0", 1)[-1]
