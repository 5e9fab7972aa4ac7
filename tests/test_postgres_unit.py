"""Unit tests of the pure parts of the PostgreSQL gateway: codec, classifier,
SCRAM and row masking (no sockets)."""
from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings, strategies as st

from hoopy.identity import ScramVerifier
from hoopy.policy.masking import BUILTIN
from hoopy.postgres import codec, scram
from hoopy.postgres.classify import ClassifyError, classify
from hoopy.postgres.scope import Scope
from hoopy.postgres.params import decode_param
from hoopy.postgres.startup import parse_options
from hoopy.postgres.rows import MaskRules


# --- codec -------------------------------------------------------------------

def test_startup_roundtrip_and_special_codes():
    raw = codec.startup_message({"user": "a", "database": "b"})
    r = codec.StartupReader()
    r.feed(raw[:3])
    assert r.next() is None
    r.feed(raw[3:])
    s = codec.parse_startup(r.next())
    assert s.code == codec.PROTOCOL_30 and s.params == {"user": "a", "database": "b"}
    assert codec.parse_startup(codec.ssl_request()[4:]).code == codec.SSL_REQUEST
    c = codec.parse_startup(codec.cancel_request(42, b"\x01\x02\x03\x04")[4:])
    assert (c.pid, c.key) == (42, b"\x01\x02\x03\x04")
    s32 = codec.parse_startup(codec.startup_message({"user": "u"}, codec.PROTOCOL_32)[4:])
    assert s32.code & 0xFFFF == 2


@pytest.mark.parametrize("payload", [
    b"\x00\x04\x00\x00user\x00a\x00",  # not terminated
    b"\x00\x04\x00\x00user\x00\x00",  # key without value... (odd items)
    b"\x00\x02\x00\x00\x00",  # protocol 2
    b"\x00",
])
def test_bad_startup_packets(payload):
    with pytest.raises(codec.ProtocolError):
        codec.parse_startup(payload)


def test_message_reader_and_builders():
    r = codec.MessageReader()
    bind = (codec.cstr("p") + codec.cstr("s") + struct.pack("!hh", 1, 0) + struct.pack("!h", 2)
            + struct.pack("!i", 1) + b"7" + struct.pack("!i", -1) + struct.pack("!hh", 1, 1))
    data = codec.query("select 1") + codec.msg(b"B", bind) + codec.SYNC
    for i in range(len(data)):  # any split works
        r = codec.MessageReader()
        r.feed(data[:i])
        got = list(r)
        r.feed(data[i:])
        got += list(r)
        assert [t for t, _ in got] == [b"Q", b"B", b"S"]
    b = codec.parse_bind(bind)
    assert b.params == (b"7", None) and b.result_formats == (1,)
    with pytest.raises(codec.ProtocolError):
        r = codec.MessageReader()
        r.feed(b"Q\x00\x00\x00\x01")
        r.next()


def _reading_rows():
    """A client side in the middle of a query's result (no masking rule)."""
    from hoopy.postgres.client_side import ClientSide
    from hoopy.postgres.pipeline import Expected, Kind

    cs = ClientSide(MaskRules(), max_statement=1 << 20)
    cs.queue.append(Expected(Kind.QUERY, sql="SELECT"))
    return cs


def test_whole_datarows_pass_as_they_came_and_a_partial_one_waits():
    one = codec.build_data_row([b"a"])
    rows = one * 3
    tail = codec.msg(b"C", b"SELECT 3\0")
    cs = _reading_rows()
    cs.receive_upstream(rows + tail + one[:-1])
    assert b"".join(cs.to_client) == rows + tail and cs.queue[0].rows == 3
    assert bytes(cs.ubuf) == one[:-1]
    cs.to_client.clear()
    cs.receive_upstream(one[-1:])
    assert b"".join(cs.to_client) == one and cs.queue[0].rows == 4 and not cs.ubuf


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_client_bytes_never_crash(data):
    r = codec.MessageReader()
    r.feed(data)
    try:
        for t, p in r:
            for f in (codec.parse_bind, codec.parse_parse, codec.parse_query, codec.parse_describe,
                      codec.parse_execute, codec.parse_sasl_initial, codec.parse_row_description,
                      codec.parse_data_row, codec.parse_fields):
                try:
                    f(p)
                except codec.ProtocolError:
                    pass
    except codec.ProtocolError:
        pass
    try:
        codec.parse_startup(data)
    except codec.ProtocolError:
        pass


# --- classification ----------------------------------------------------------

def units(sql):
    return sorted(str(u) for u in classify(sql).units)


@pytest.mark.parametrize("sql, expected", [
    ("SELECT * FROM customers", ["read public.customers"]),
    ("select 1", ["read"]),
    ("SELECT * FROM billing.invoices i JOIN customers c ON c.id = i.cid",
     ["read billing.invoices", "read public.customers"]),
    ("WITH d AS (DELETE FROM invoices RETURNING *) SELECT * FROM d", ["write public.invoices"]),
    ("EXPLAIN ANALYZE DELETE FROM t", ["write public.t"]),
    ("SELECT * FROM t FOR UPDATE", ["lock public.t", "read public.t"]),
    ("COPY t FROM STDIN", ["write public.t"]),
    ("COPY t TO PROGRAM 'sh'", ["admin (any object)", "read public.t"]),
    ("COPY t TO '/tmp/x'", ["admin (any object)", "read public.t"]),
    ("DO $$BEGIN END$$", ["admin (any object)"]),
    ("SET ROLE postgres", ["admin (any object)"]),
    ("SET statement_timeout = 5", ["read"]),
    ("SELECT pg_read_file('/etc/passwd')", ["admin pg_catalog.pg_read_file()"]),
    ("SELECT lo_import('/etc/passwd')", ["admin pg_catalog.lo_import()"]),
    ("SELECT nextval('s')", ["write pg_catalog.nextval()"]),
    # Not a built-in, and not in the session's schemas when last read: it may be
    # created in any of them before it runs.
    ("SELECT my_func(1)", ["write pg_catalog.my_func()", "write public.my_func()"]),
    ("SELECT billing.refund(1)", ["write billing.refund()"]),
    ("SELECT count(*), lower(name) FROM t", ["read public.t"]),
    ("PREPARE p AS DELETE FROM t", ["write public.t"]),
    ("CREATE TABLE x (a int)", ["ddl", "ddl public.x"]),
    ("DROP TABLE x", ["ddl", "ddl public.x"]),
    ("DROP SCHEMA public CASCADE", ["ddl (any object)"]),
    ("CREATE SCHEMA s CREATE TABLE t (a int)", ["ddl (any object)", "ddl public.t"]),
    ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'", ["ddl", "ddl public.f()"]),
    ("CALL wipe(1)", ["write pg_catalog.wipe()", "write public.wipe()"]),
    ("GRANT ALL ON ALL TABLES IN SCHEMA public TO bob", ["admin (any object)"]),
    ("GRANT SELECT ON t TO bob", ["admin", "admin public.t"]),
    ("TRUNCATE t", ["write public.t"]),
    ("BEGIN; UPDATE t SET a = 1; COMMIT", ["read", "write public.t"]),
    ("SELECT * FROM pg_class", ["read pg_catalog.pg_class"]),
    ("WITH t AS (SELECT 1) SELECT * FROM t", ["read"]),
    ("SELECT * FROM (WITH c AS (SELECT 1) SELECT * FROM c) a, c", ["read public.c"]),
    ("INSERT INTO a SELECT * FROM b", ["read public.b", "write public.a"]),
    ("SELECT dblink_exec('x', 'drop table t')", ["admin pg_catalog.dblink_exec()", "admin public.dblink_exec()"]),
    ("SELECT current_setting('jit'), set_config('jit', 'off', false)", ["read"]),
    ("SELECT pg_catalog.set_config('jit', $1, false)", ["read"]),
    ("SELECT set_config('role', 'postgres', false)", ["admin (any object)"]),
    ("SELECT set_config('pgaudit.log', 'none', true)", ["admin (any object)"]),
    ("SELECT set_config($1, 'x', false)", ["admin (any object)"]),
    ("SELECT set_config(name, 'x', false) FROM t", ["admin (any object)", "read public.t"]),
    ("SELECT other.set_config('jit', 'x', false)", ["write other.set_config()"]),
])
def test_classify(sql, expected):
    assert units(sql) == expected


def test_classify_details():
    c = classify("SELECT row_to_json(c) FROM customers c")
    assert c.whole_row
    c = classify("SELECT c.* FROM customers c")
    assert not c.whole_row
    c = classify("SELECT x FROM (SELECT * FROM customers) s")
    assert c.whole_row  # a star below the top
    assert classify("COPY (SELECT 1) TO STDOUT").copy_out
    assert classify("SET search_path = evil").sets_search_path
    unknown = Scope.unknown()
    assert classify("SELECT 1 FROM t", unknown).unresolved and not classify("SELECT 1 FROM public.t", unknown).unresolved
    assert classify("PREPARE p AS DELETE FROM t").prepares[0][0] == "p"
    assert classify("EXECUTE p").executes == ("p",)
    with pytest.raises(ClassifyError):
        classify("SELEC 1")


_SHAPE_CORPUS = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
    "COPY t TO PROGRAM 'sh'", "COPY t TO '/tmp/x'", "COPY t FROM STDIN",
    "SET search_path = 'evil'", "SET ROLE 'postgres'", "SET statement_timeout = 5",
    "SELECT pg_read_file('/etc/passwd')", "SELECT nextval('s')", "SELECT set_config('role', 'x', false)",
    "DO $$BEGIN END$$", "PREPARE p AS DELETE FROM t WHERE a = 1", "EXECUTE p(1, 'x')",
    "SELECT x::float(10), interval '1 day', B'01', X'1F', 1.5e3, E'a\\'b' FROM customers c LIMIT 5",
    "NOTIFY ch, 'payload'", "SELECT * FROM t /* 'comment' 1 */ WHERE a = 'x' -- 2",
]


@pytest.mark.parametrize("sql", _SHAPE_CORPUS)
def test_classify_cache_by_shape_matches_a_fresh_parse(sql):
    """Statements that differ only in constants share one cached result: it must
    be what parsing each of them gives."""
    import re

    from hoopy.postgres.classify import _classify

    first = classify(sql)
    assert first == _classify(sql)
    # Other constants, same shape: the cached result must still be right.
    variant = re.sub(r"\b\d+\b", "7", sql).replace("'x'", "'zz'").replace("'sh'", "'rm -rf /'")
    assert classify(variant) == _classify(variant)


def test_classify_cache_keeps_names_and_structure_apart():
    assert units("SELECT * FROM a WHERE x = 1") == ["read public.a"]
    assert units("SELECT * FROM b WHERE x = 1") == ["read public.b"]  # another name, another shape
    assert units("SELECT * FROM a WHERE x = 1; DELETE FROM a") == ["read public.a", "write public.a"]
    assert units("SELECT * FROM a WHERE x = '1; DELETE FROM a'") == ["read public.a"]
    assert units("COPY t TO STDOUT") == ["read public.t"]
    assert units("COPY t TO '/tmp/x'") == ["admin (any object)", "read public.t"]
    assert units("SELECT 1 -- ; DELETE FROM a") == ["read"]
    assert units("SELECT 1 /* */ ; DELETE FROM a") == ["write public.a"]
    with pytest.raises(ClassifyError):
        classify("SELECT 'unterminated")
    # set_config is classified by its constant: never cached by shape, however spelled.
    for spelling in ("set_config", '"set_config"', 'U&"set_config"', "pg_catalog.set_config"):
        assert units(f"SELECT {spelling}('jit', 'off', false)") == ["read"]
        assert units(f"SELECT {spelling}('role', 'x', false)") == ["admin (any object)"], spelling
    assert classify("SELECT set_config('search_path', 'x', false)").sets_search_path


# --- SCRAM ---------------------------------------------------------------------

def test_scram_client_and_server_agree_and_reject_wrong_password():
    v = ScramVerifier.make("sesame")
    for cb in (None, b"\x01" * 32):
        server = scram.ScramServer(v, cb)
        mechs = [scram.MECH_PLUS, scram.MECH] if cb else [scram.MECH]
        client = scram.ScramClient("sesame", mechs, cb)
        sf = server.first(client.mech, client.first())
        final = server.final(client.final(sf))
        client.verify(final)
    server = scram.ScramServer(v, None)
    client = scram.ScramClient("wrong", [scram.MECH], None)
    sf = server.first(client.mech, client.first())
    with pytest.raises(scram.ScramError):
        server.final(client.final(sf))


def test_scram_unknown_user_and_downgrade_fail():
    server = scram.ScramServer(None, None, "nobody")
    client = scram.ScramClient("anything", [scram.MECH], None)
    sf = server.first(client.mech, client.first())
    with pytest.raises(scram.ScramError):
        server.final(client.final(sf))
    server = scram.ScramServer(ScramVerifier.make("x"), b"\x02" * 32)
    with pytest.raises(scram.ScramError):
        server.first(scram.MECH, b"y,,n=,r=abc")  # client could bind, thinks we cannot


def _server_first_variants(nonce: str) -> list[bytes]:
    salt = "c2FsdHNhbHQ="
    return [f"r={nonce}x,i=4096".encode(),  # no salt: was a KeyError
            f"r={nonce}x,s={salt}".encode(),  # no iteration count
            f"s={salt},i=4096".encode(),  # no nonce
            f"r={nonce},s={salt},i=4096".encode(),  # the server added nothing to our nonce
            f"r=other{nonce}x,s={salt},i=4096".encode(),  # not our nonce
            f"r={nonce}x,s=not*base64,i=4096".encode(),
            f"r={nonce}x,s={salt},i=many".encode(),
            f"r={nonce}x,s={salt},i=0".encode(),
            f"r={nonce}x,s={salt},i=99999999999".encode(),
            f"r={nonce}x,s=,i=".encode(),
            f"r={nonce}x,,s={salt},i=4096".encode(),  # an empty attribute
            f"r={nonce}x,s{salt},i=4096".encode(),  # an attribute without "="
            b"", b"\xff\xfe", f"r={nonce}x,s={salt},i=4096".encode() + b"\xff"]


def test_scram_client_refuses_every_broken_server_first_with_a_scram_error():
    for i in range(len(_server_first_variants(""))):
        client = scram.ScramClient("pw", [scram.MECH], None)
        bad = _server_first_variants(client.cnonce)[i]
        with pytest.raises(scram.ScramError):
            client.final(bad)


# An iteration count is one of these (a large valid one would only be slow): the rest is anything.
_COUNTS = st.sampled_from(["4096", "1", "0", "-1", "10000001", "", "x", "\u0661\u0662"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.tuples(st.sampled_from("rsaxe,="), st.text(max_size=12)), st.tuples(st.just("i"), _COUNTS)),
                max_size=6), st.binary(max_size=8))
def test_scram_client_meets_any_server_first_with_a_proof_or_a_scram_error(attrs_, tail):
    client = scram.ScramClient("pw", [scram.MECH], None)
    text = ",".join(f"{k}={client.cnonce + v if k == 'r' else v}" for k, v in attrs_)
    try:
        out = client.final(text.encode() + tail)
    except scram.ScramError:
        return
    assert out.startswith(b"c=biws,r=" + client.cnonce.encode()) and b",p=" in out


def test_md5_password_matches_postgres_formula():
    inner = hashlib.md5(b"pwuser").hexdigest()
    assert scram.md5_password("user", "pw", b"salt") == \
        b"md5" + hashlib.md5(inner.encode() + b"salt").hexdigest().encode() + b"\0"


# --- rows ------------------------------------------------------------------------

def _fields(*specs):
    return [codec.Field(n, oid, att, typ, -1, -1, fmt) for n, oid, att, typ, fmt in specs]


def test_row_plan_by_origin_and_patterns():
    rules = MaskRules((BUILTIN["email"], BUILTIN["credit_card"]), configured=("public.customers.ssn",))
    rules.load(([("16384", "3", "public", "customers", "ssn")], [("16384", "r", "public", "customers")]))
    c = classify("SELECT ssn AS x, name, card FROM customers")
    plan = rules.plan(_fields(("x", 16384, 3, 25, 0), ("name", 16384, 2, 25, 0), ("card", 16384, 5, 20, 1)), c)
    row = codec.build_data_row([b"123-45-6789", b"ann@example.com", struct.pack("!q", 4111111111111111)])
    out = codec.parse_data_row(plan.apply(row[5:])[5:])
    assert out == [b"[REDACTED]", b"[REDACTED]", None]
    assert plan.summary() == {"columns": {"public.customers.ssn": 1}, "patterns": {"email": 1, "credit_card": 1}}
    # An expression over a masked column has no origin: masked (int -> NULL, text -> mask).
    c = classify("SELECT upper(ssn), length(ssn) FROM customers")
    plan = rules.plan(_fields(("upper", 0, 0, 25, 0), ("length", 0, 0, 23, 0)), c)
    assert codec.parse_data_row(plan.apply(codec.build_data_row([b"X", b"11"])[5:])[5:]) == [b"[REDACTED]", None]
    # No rule can apply: no plan, rows pass as bytes.
    rules2 = MaskRules((), configured=("public.customers.ssn",))
    rules2.load(([("16384", "3", "public", "customers", "ssn")], []))
    assert rules2.plan(_fields(("id", 16384, 1, 23, 0)), classify("SELECT id FROM customers")) is None


def test_params_decoding_and_options():
    assert decode_param(b"abc", 0, 25) == "abc"
    assert decode_param(struct.pack("!i", 7), 1, 23) == 7
    assert decode_param(b"\x00\xff", 1, 17) == "\\x00ff"
    ours, rest = parse_options("-c hoopy.model=gpt -c hoopy.tool_call=t\\ 1 -c work_mem=4MB --geqo=off")
    assert ours == {"model": "gpt", "tool_call": "t 1"}
    assert rest == ["-c", "work_mem=4MB", "-c", "geqo=off"]


def test_rows_pass_whole_however_the_chunks_are_cut():
    one = codec.build_data_row([b"a"])
    stream = one * 3 + codec.msg(b"C", b"SELECT 3\0")
    for cut in range(len(stream) + 1):
        cs = _reading_rows()
        cs.receive_upstream(stream[:cut])
        cs.receive_upstream(stream[cut:])
        assert b"".join(cs.to_client) == stream and cs.queue[0].rows == 3 and not cs.ubuf


def test_classify_namespace_changes_and_hidden_names():
    from hoopy.postgres.classify import classify

    # What CREATE TABLE AS EXECUTE runs is judged with what was prepared.
    assert classify("CREATE TABLE x AS EXECUTE s").executes == ("s",)
    assert classify("DEALLOCATE s; DEALLOCATE ALL").deallocates == ("s", None)
    assert classify("DISCARD ALL").deallocates == (None,)
    assert classify("BEGIN; DECLARE c CURSOR FOR SELECT 1").declares == ("c",)
    name, body = classify("PREPARE p AS SELECT upper(x) FROM t").prepares[0]
    assert name == "p" and body.refs[0][2:4] == (None, "t")
    assert (None, "upper", False) in body.calls
    # Column alias lists rename columns out of sight: whole-row references.
    assert classify("SELECT lower(x) FROM customers AS c(i, n, x)").whole_row
    assert classify("SELECT lower(t.x) FROM (customers JOIN invoices USING (id)) AS t(i, n, x)").whole_row
    assert not classify("SELECT lower(name) FROM customers AS c").whole_row


def test_binary_values_are_walked_for_patterns():
    import struct

    from hoopy.postgres.rows import binary_texts

    card = struct.pack("!q", 4111111111111111)
    arr = struct.pack("!iiiii", 1, 0, 20, 1, 1) + struct.pack("!i", 8) + card
    rec = struct.pack("!i", 2) + struct.pack("!ii", 1016, len(arr)) + arr + struct.pack("!ii", 25, -1)
    assert "4111111111111111" in binary_texts(2249, rec)
    num = struct.pack("!hhHh", 4, 3, 0, 0) + struct.pack("!hhhh", 4111, 1111, 1111, 1111)
    assert "4111111111111111" in binary_texts(1700, num)
    assert binary_texts(2249, b"\x00\x00\x00\x05junk") == ["\x00\x00\x00\x05junk"]  # not a record: bytes


def test_error_scrub_cuts_translated_messages_before_any_value():
    """lc_messages may be another language: values are quoted with »«, « », „“, ''."""
    import types

    from hoopy.postgres import codec
    from hoopy.postgres.replies import UpstreamReplies

    fake = types.SimpleNamespace(rules=MaskRules(configured=("public.customers.ssn",)))
    for m in ("Relation »123-45-6789« existiert nicht", "la relation « 123-45-6789 » n'existe pas",
              "relacja „123-45-6789” nie istnieje", "relation '123-45-6789' does not exist",
              "invalid input syntax for type integer: \"123-45-6789\""):
        p = b"SERROR\0C42P01\0M" + m.encode() + b"\0\0"
        out = codec.parse_fields(UpstreamReplies.scrub(fake, p, None))["M"]
        assert "6789" not in out, out
        assert "details withheld" in out


def test_functional_notation_is_seen():
    from hoopy.postgres.classify import classify

    assert classify("SELECT c.to_jsonb FROM customers c").whole_row
    from hoopy.postgres.classify import parse_statement

    assert ("zap", False) in parse_statement("SELECT i.zap FROM invoices i").dotted
    zap = Scope.default(functions={"public": {"zap"}})
    assert "write public.zap()" in [str(u) for u in classify("SELECT i.zap FROM invoices i", zap).units]
    assert not classify("SELECT c.id, c.name FROM customers c").whole_row


def test_settings_that_hide_or_weaken_the_server_are_admin():
    from hoopy.postgres.classify import classify

    for q in ("SET log_statement = 'none'", "SET LOCAL log_min_duration_statement = -1",
              "SET zero_damaged_pages = on", "SET pgaudit.log = 'none'", "SET lc_messages = 'de_DE'",
              "SET session_preload_libraries = 'x'", "SET client_encoding = 'LATIN1'", "SET ROLE postgres",
              "SET SESSION AUTHORIZATION postgres", "SELECT set_config('client_encoding', 'SQL_ASCII', false)"):
        assert classify(q).classes == {"admin"}, q
    # RESET of anything returns the session to its start state; the search path is
    # read again by the gateway after a change; row_security = off only makes a
    # query that row security would filter fail instead.
    for q in ("SET statement_timeout = 0", "SET TIME ZONE 'UTC'", "SET extra_float_digits = 3",
              "SET client_min_messages = warning", "SET application_name = 'x'", "RESET work_mem",
              "RESET track_activities", "RESET ROLE", "SET ROLE NONE", "SET SESSION AUTHORIZATION DEFAULT",
              "SET search_path = ''", "SELECT pg_catalog.set_config('search_path', '', false)",
              "SET client_encoding = 'UTF8'", "SET NAMES 'utf-8'", "SET client_encoding = 'unicode'",
              "SET row_security = off", "SET TRANSACTION SNAPSHOT '00000003-00000002-1'",
              "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", "RESET ALL", "DISCARD ALL"):
        assert classify(q).classes == {"read"}, q


def test_the_approval_form_is_made_late_from_the_values_of_the_moment():
    """An operation's canonical form (what a retry-mode approval is bound to) is made only
    when asked, yet from what was judged: the exact parameter bytes, every unit, the texts
    behind an EXECUTE's name, as they were when the statement was judged."""
    import json

    from hoopy.postgres.classify import classify
    from hoopy.postgres.client_side import ClientSide
    from hoopy.postgres.scope import Scope

    cs = ClientSide(MaskRules(), max_statement=1 << 20, scope=Scope.default())
    c = classify("SELECT * FROM t WHERE a = $1", Scope.default())
    params = ["7"]
    op = cs._operation("SELECT * FROM t WHERE a = $1", c, params, (b"7",))
    params[0] = "8"
    def inner(o):
        protocol, kind, exact = json.loads(o.canonical_form())
        assert (protocol, kind) == ("postgres", "statement")
        return json.loads(exact)

    assert inner(op) == ["SELECT * FROM t WHERE a = $1", [b"7".hex()], ["read public.t"]]
    values = ["1"]
    text = cs._operation("SELECT * FROM t WHERE a = 1", classify("SELECT * FROM t WHERE a = 1", Scope.default()),
                         params=values)
    values[0] = "2"
    assert inner(text)[1] == ["1"]
    cs.prepared["p"] = (classify("PREPARE p AS DELETE FROM t WHERE id = 1").prepares[0][1],)
    cs.prepared_sql["p"] = ("PREPARE p AS DELETE FROM t WHERE id = 1",)
    ex = cs._operation("EXECUTE p", classify("EXECUTE p", Scope.default()))
    cs.prepared_sql["p"] = ("PREPARE p AS DELETE FROM t",)  # prepared again after it was judged
    assert inner(ex)[3] == [["p", ["PREPARE p AS DELETE FROM t WHERE id = 1"], None]]
    assert "write public.t" in inner(ex)[2]
