"""The text cache in front of the parser (hoopy/postgres/sqltext.py, classify.parse_statement).

Two texts with one key are served one Parsed without the second being parsed: each test
here is an attempt to make that key lie. The key must be refused (None) for anything its
regular expressions might read otherwise than PostgreSQL's lexer, and two admitted texts
with one key must have one parse shape; a statement judged by a literal's value must
never be served from it.
"""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from hoopy.postgres import classify as classify_mod, sqltree
from hoopy.postgres.classify import _classify, classify, classify_or_error, parse_statement
from hoopy.postgres.scope import Scope
from hoopy.postgres.sqltext import key


@pytest.mark.parametrize("sql", [
    "SELECT 'secret'::regclass",  # a cast by ::
    "SELECT E'\\'' FROM secret --'",  # an escape string: the quote is escaped
    "SELECT e'x'", "SELECT U&'d\\0061t'", "SELECT B'101'", "SELECT X'1F'", "SELECT N'x'", "SELECT date'2024-01-01'",
    "SELECT $$ ' $$ FROM secret", "SELECT $a$x$a$", "SELECT 1 -- ' FROM secret",
    "SELECT 1 /* ' */ FROM t", "SELECT 1 /* x */", "SELECT 1--x",
    'SELECT "a\'b" FROM t', 'SELECT "x" FROM t', "SELECT 'a\\' FROM secret --'",
    "SELECT 1.5", "SELECT .5", "SELECT 5.", "SELECT 1e5", "SELECT 0x1F", "SELECT 1_000", "SELECT 1234567890",
    "SELECT 'a'\n'b'", "SELECT 'a' 'b'", "SELECT 'a'\t\n 'b'", "SELECT 'unterminated",
    "SELECT 1=-1", "SELECT 1 @> 2", "SELECT 'a' || 'b'", "SELECT a!b", "SELECT 1 <=> 2", "SELECT x::int",
    "SELECT é", "SELECT\u00a01", "SELECT\f1", "SELECT 'a\x00b'", "SELECT a$1 FROM t", "SELECT $1x", "SELECT $",
    "SELECT $1.5", "SELECT 1'x'", "SELECT :x", "SELECT t.1",
])
def test_texts_outside_the_plain_subset_have_no_key(sql):
    assert key(sql) is None


def test_literals_are_left_out_and_everything_else_kept():
    assert key("SELECT abalance FROM pgbench_accounts WHERE aid = 123;") == \
        key("SELECT abalance FROM pgbench_accounts WHERE aid = 987654321;") == \
        "SELECT abalance FROM pgbench_accounts WHERE aid = 0;"
    assert key("select 'it''s', x1, $12 from t2 where a <> 'b' and b>=3") == \
        "select '', x1, $12 from t2 where a <> '' and b>=0"
    assert key("SELECT '--', '/*', '$$', '\"', 'é', ':: x' FROM t") == "SELECT '', '', '', '', '', '' FROM t"
    # Names, keywords, case, spacing and parameters are the key.
    assert key("SELECT a FROM t WHERE x = 1") != key("SELECT a FROM u WHERE x = 1")
    assert key("SELECT a FROM t") != key("select a from t")
    assert key("SELECT $1") != key("SELECT $2")
    assert key("SELECT 1 - 1") != key("SELECT 1 -1")


# Pairs that differ in a literal's value only, and are judged differently: the second is
# never served what the first was judged as.
PAIRS = [
    ("SELECT set_config('application_name', 'x', false)", "SELECT set_config('search_path', 'evil', false)"),
    ("SELECT set_config('jit', 'off', false)", "SELECT set_config('role', 'postgres', false)"),
    ("SELECT current_setting('application_name')", "SELECT current_setting('data_directory')"),
    ("SET client_encoding = 'UTF8'", "SET client_encoding = 'LATIN1'"),
    ("SET role = 'none'", "SET role = 'postgres'"),
    ("SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'jit'",
     "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'search_path'"),
    ("COPY t (a) TO STDOUT (DELIMITER ',')", "COPY t (a) TO STDOUT (DELIMITER '@')"),
    ("COPY t (a) TO STDOUT (FORMAT 'text')", "COPY t (a) TO STDOUT (FORMAT 'binary')"),
]


@pytest.mark.parametrize("a, b", PAIRS)
def test_statements_judged_by_a_literal_are_never_served_by_their_key(a, b):
    assert key(a) is not None and key(a) == key(b)
    assert _classify(a) != _classify(b)  # (else the pair proves nothing)
    for first, second in ((a, b), (b, a)):
        classify(first)
        assert classify(second) == _classify(second)
        assert classify(first) == _classify(first)
    assert key(a) not in classify_mod._TEXTS


@pytest.mark.parametrize("a, b", [
    ("SELECT nextval('s')", "SELECT nextval('t')"),
    ("SELECT pg_read_file('/etc/hostname')", "SELECT pg_read_file('/etc/shadow')"),
    ("SELECT CAST('a' AS regclass)", "SELECT CAST('pg_authid' AS regclass)"),
    ("SELECT '--' FROM t", "SELECT ' FROM secret --' FROM t"),
    ("SELECT x FROM t WHERE y = '/*'", "SELECT x FROM t WHERE y = '*/ FROM secret'"),
    ("SELECT a[1] FROM t LIMIT 5", "SELECT a[2] FROM t LIMIT 999999999"),
])
def test_texts_sharing_a_key_are_judged_as_a_fresh_parse_judges_them(a, b):
    assert key(a) == key(b) is not None
    classify(a)
    assert classify(b) == _classify(b)
    assert parse_statement(b) is parse_statement(a)  # (served: else this tests nothing)


def test_the_key_does_not_carry_the_search_path_the_resolution_does():
    # The cache holds what was parsed, never what names resolved to: after SET search_path
    # or a CREATE TEMP TABLE (a new scope) the same key resolves again in the new scope.
    public = Scope.default()
    other = Scope(("pg_catalog", "other", "public"), ("other", "public"), "other", None,
                  {"other": frozenset({"t"}), "pg_catalog": frozenset()})
    temp = Scope(("pg_temp_3", "pg_catalog", "public"), ("public",), "public", "pg_temp_3",
                 {"pg_temp_3": frozenset({"t"}), "pg_catalog": frozenset()})
    assert [str(u) for u in classify("SELECT x FROM t WHERE a = 1", public).units] == ["read public.t"]
    assert [str(u) for u in classify("SELECT x FROM t WHERE a = 2", other).units] == ["read other.t"]
    assert [str(u) for u in classify("SELECT x FROM t WHERE a = 3", temp).units] == ["read pg_temp.t"]
    assert classify("SELECT x FROM t WHERE a = 4", Scope.unknown()).unresolved


def test_syntax_errors_are_not_cached_and_still_refused():
    bad = "SELECT FROM FROM t WHERE a = 1"
    assert key(bad) is not None
    for _ in range(2):
        assert isinstance(classify_or_error(bad), sqltree.ClassifyError)


# --- the claim itself: one key, one parse shape ------------------------------------------

_WORDS = ["SELECT", "FROM", "WHERE", "t", "a", "x1", "AND", "OR", "NOT", "IN", "LIMIT", "AS", "CAST", "int",
          "regclass", "date", "interval", "set_config", "nextval", "E", "U", "B", "X", "N", "e", "b", "x",
          "VALUES", "INSERT", "INTO", "IS", "NULL", "BETWEEN", "LIKE", "ORDER", "BY", "COPY", "TO", "STDOUT"]
_PUNCT = ["(", ")", ",", ";", ".", "[", "]", "=", "<", ">", "<=", ">=", "<>", "!=", "+", "-", "*", "/", "%",
          "$1", "$2", "!", "|", "&", ":", "::", "@", "\\", '"', "$$", "'", "--", "/*", "*/"]
_STRING_BODIES = ["", "a", "it''s", "--", "/*", "*/", "$$", '"', "\n", "é", " ' ", "''", "1.5", "::x", "\\"]


def _token(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.35:
        return rng.choice(_WORDS)
    if r < 0.55:
        return rng.choice(_PUNCT)
    if r < 0.75:
        return str(rng.choice([0, 1, 7, 42, 99999, 123456789, 1234567890]))
    return "'" + rng.choice(_STRING_BODIES) + "'"


def _text(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 12)):
        out.append(_token(rng))
        out.append(rng.choice(["", " ", " ", "\n", "\t"]))
    return "".join(out)


def _shape(sql: str):
    try:
        return sqltree.shape(sqltree.folded(sql))
    except sqltree.ClassifyError:
        return "error"


def _vary(rng: random.Random, sql: str) -> str:
    """The same text with other literal values (as key() finds them: admitted texts only)."""
    sql = sqltext_strings.sub(lambda m: "'" + rng.choice(["q", "--", "/*", "$$", "a''b", ""]) + "'", sql)
    return sqltext_integers.sub(lambda m: str(rng.choice([0, 5, 31337, 999999999])), sql)


from hoopy.postgres.sqltext import _INTEGERS as sqltext_integers, _STRINGS as sqltext_strings  # noqa: E402


def test_texts_with_one_key_have_one_parse_shape():
    rng = random.Random(16)
    admitted = 0
    for _ in range(4000):
        sql = _text(rng)
        k = key(sql)
        if k is None:
            continue
        admitted += 1
        other = _vary(rng, sql)
        assert key(other) == k, (sql, other)
        assert _shape(other) == _shape(sql), (sql, other)
    assert admitted > 300  # (else the generator tests nothing)


def _memo_texts():
    base = ["SELECT abalance FROM pgbench_accounts WHERE aid = 1;", "select abalance from pgbench_accounts where aid = 1;",
            "SELECT abalance FROM pgbench_accounts WHERE aid =  1;", "SELECT abalance FROM pgbench_accounts WHERE aid = 12;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = '1';", "SELECT abalance FROM pgbench_accounts WHERE aid = 1.5;",
            "SELECT 'a''b' FROM t", "SELECT 'a' 'b'", "SELECT 1 -- x", "SELECT x::int", "SELECT $1", "SELECT $2",
            "SELECT 1234567890", "SELECT 123456789", "SELECT 'é'", "SELECT é", "SELECT a1 FROM t2 WHERE b = 3",
            "SELECT a FROM t WHERE b = $1 AND c = 4", "SELECT '7' FROM t9", "SELECT 1e5", "SELECT 0x1F", "SELECT 1_000",
            "SELECT t.1", "SELECT 1.", "SELECT .5", "SELECT a$1", "SELECT $1x", "SELECT 1'x'", "SELECT x FROM t WHERE y IN (1, 22, 333)"]
    return base + [t + " " for t in base] + [t.replace("1", "7") for t in base] + [t.replace("1", "0") for t in base]


def test_the_memo_answers_what_the_key_computes():
    """``key`` remembers its answers (by the text's digit shape, else by the exact text): every
    answer, first or remembered, is what ``_key`` computes, for texts one character (case, space,
    a digit, a quote) apart, sent in turns, and after the tables were emptied when full."""
    from hoopy.postgres import sqltext

    texts = _memo_texts()
    sqltext._MEMO.clear()
    sqltext._SHAPES.clear()
    rng = random.Random(5)
    for _ in range(3):
        for t in rng.sample(texts, len(texts)):
            fresh = "".join(list(t))  # a fresh str of the same characters each time, as a decoded message is
            assert sqltext.key(fresh) == sqltext._key(t), t
    # the pgbench statement: one shape a number of digits, its key for every aid
    assert sqltext.key("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;") == \
        "SELECT abalance FROM pgbench_accounts WHERE aid = 0;"
    assert sqltext._SHAPES[b"SELECT abalance FROM pgbench_accounts WHERE aid = 00000;"] == \
        "SELECT abalance FROM pgbench_accounts WHERE aid = 0;"
    assert sqltext._SHAPES[b"SELECT $0"] is sqltext._OWN  # a digit the key keeps: by the exact text
    # Emptied when full, and right again after.
    old = sqltext.MEMO_MAX
    try:
        sqltext.MEMO_MAX = 5
        sqltext._MEMO.clear()
        sqltext._SHAPES.clear()
        for t in texts + texts:
            assert sqltext.key(t) == sqltext._key(t), t
            assert len(sqltext._MEMO) <= 5 and len(sqltext._SHAPES) <= 5
    finally:
        sqltext.MEMO_MAX = old
    # A long text is answered but not remembered.
    long = "SELECT " + ", ".join(["a1"] * 600)
    assert sqltext.key(long) == sqltext._key(long)
    assert long not in sqltext._MEMO and long.encode().translate(sqltext._ZEROS) not in sqltext._SHAPES


_PIECES = ["SELECT", "a", "a1", "t12", "_x9", "$1", "$12", "1", "12", "007", "123456789", "1234567890", "'1'", "'a1b'",
           "'it''s 2'", "1.5", ".5", "5.", "1e5", "0x1F", "1_000", "=", "<>", "-", "--", "/*", "(", ")", ",", ";", "[", "]",
           ".", "'", "\"", "é", "'é1'", "::", "$", "1'x'", "a$1"]


@given(st.lists(st.tuples(st.sampled_from(_PIECES), st.sampled_from(["", " ", "  ", "\n"])), min_size=1, max_size=12),
       st.lists(st.integers(0, 9), min_size=1, max_size=4))
@settings(max_examples=400, deadline=None)
def test_texts_of_one_digit_shape_get_their_own_key(pieces, digits):
    """Texts alike but for their digits (each digit of the text replaced by others, in turn): each
    answer of ``key`` is ``_key``'s, whichever text of the shape came first."""
    from hoopy.postgres import sqltext

    text = "".join(p + sep for p, sep in pieces)
    for d in digits:
        variant = "".join(str((int(ch) + d) % 10) if ch in "0123456789" else ch for ch in text)
        assert sqltext.key(variant) == sqltext._key(variant), variant


def test_the_expressions_see_a_digit_only_as_the_class():
    """The digit-shape memo is sound only while the three expressions name a digit only through
    [0-9] (a text and its shape then read alike): no other digit in their patterns, but counts."""
    import re as _re

    from hoopy.postgres import sqltext

    for pattern in (sqltext._ADMIT.pattern, sqltext._STRINGS.pattern, sqltext._INTEGERS.pattern):
        rest = _re.sub(r"\[0-9\]|0-9|\{1,9\}|\{1,5\}|\\x00", "", pattern)
        assert not _re.search(r"[0-9]|\\d|\\[0-7]", rest), pattern
