"""Getting a masked value out of the PostgreSQL gateway, through a real ``twistd -n hoopy``,
the real server and psycopg (text and binary formats, simple and extended protocol).

The identity may read ``contacts`` and ``customers`` (``ssn`` masked by column; the patterns
``email`` and ``credit_card`` everywhere). Each test is a class of seam found by attack: the
value left in a notation the server chose for its type (bytea's hex, a float's exponent), or in
a COPY whose options quote or escape it so that the pattern no longer sees it.
"""
from __future__ import annotations

import secrets

import pytest

from tests.support import HoopyProcess, admin_sql, free_port, ident, pg_connection

psycopg = pytest.importorskip("psycopg")

MAIL, CARD = "ann@example.com", "4111111111111111"
# What must never come out, in any notation psycopg or a person reads back.
LEAKS = ("ann@example", "ann\\@", "ann@@", "616e6e40", CARD, "4.111111111111111e+15", "4111111111111111.0")

SCHEMA = f"""
CREATE TABLE contacts (id int, email text, card text, bt bytea, n numeric, f float8);
INSERT INTO contacts VALUES (1, '{MAIL}', '{CARD}', '{MAIL}', {CARD}, {CARD});
CREATE TABLE links (id int, url text, shown text, label varchar(80));
INSERT INTO links VALUES (1, 'https://crm.example/find?email=ann%40example.com', E'ann\\u200b@example.com',
                          'ann&#64;example.com');
CREATE TABLE customers (id int, name text, ssn text);
INSERT INTO customers VALUES (1, 'Ann', '123-45-6789');
"""

AGENT = ident("agent")


@pytest.fixture(scope="module")
def g(tmp_path_factory):
    db = f"hoopy_mask_{secrets.token_hex(4)}"
    admin_sql(f"CREATE DATABASE {db}")
    admin_sql(SCHEMA, db)
    port = free_port()
    body = AGENT.toml() + f"""
{pg_connection(port, db)}

[[grants]]
identity = "agent"
connection = "pg"
allow = ["read public.contacts", "read public.customers", "read public.links"]

[[masking]]
connection = "pg"
columns = ["public.customers.ssn"]
patterns = ["email", "credit_card"]
"""
    proc = HoopyProcess(tmp_path_factory.mktemp("mask"), body).start()
    proc.port, proc.database = port, db
    yield proc
    proc.stop()
    admin_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def connect(g, **kw):
    return psycopg.connect(f"host=127.0.0.1 port={g.port} user={AGENT.name} password={AGENT.token} dbname=x "
                           "sslmode=disable", autocommit=True, **kw)


def clean(got):
    text = got.decode("latin-1") if isinstance(got, bytes) else f"{got!r} {got!s}"
    assert not [s for s in LEAKS if s in text], text
    return text


# --- a value in the notation its type prints in ----------------------------------------------

TYPED = [
    "SELECT bt FROM contacts",
    "SELECT email::bytea FROM contacts",
    "SELECT convert_to(email, 'UTF8') FROM contacts",
    "SELECT ARRAY[bt] FROM contacts",
    "SELECT ROW(bt, 1) FROM contacts",
    "SELECT array_agg(bt) FROM contacts",
    "SELECT f FROM contacts",
    "SELECT n::float8 FROM contacts",
    "SELECT card::float8 FROM contacts",
    "SELECT ARRAY[f] FROM contacts",
    "SELECT ROW(f, 1) FROM contacts",
]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("sql", TYPED)
def test_a_value_in_its_types_own_notation_is_read_as_that_type_shows_it(g, sql, binary):
    """A bytea column holding an address went out as ``\\x616e6e40...`` (the text format's hex,
    which every client decodes back to the bytes), and a card number stored or cast as a float as
    ``4.111111111111111e+15`` (a client shows 4111111111111111.0): patterns never saw the digits.
    A bytea is read as its bytes, a float whose value is a whole number as that number."""
    with connect(g) as c:
        got = c.cursor(binary=binary).execute(sql).fetchall()
    clean(got)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_the_extended_protocol_prepared_statements_and_cursors_too(g, binary):
    with connect(g) as c:
        cur = c.cursor(binary=binary)
        for _ in range(2):  # the second run is a server-side prepared statement
            clean(cur.execute("SELECT bt, f FROM contacts WHERE id = %s", [1], prepare=True).fetchall())
        cur.execute("PREPARE p AS SELECT bt, f FROM contacts")
        clean(cur.execute("EXECUTE p").fetchall())
        with c.transaction():
            cur.execute("DECLARE cu CURSOR FOR SELECT bt, f FROM contacts")
            clean(cur.execute("FETCH ALL FROM cu").fetchall())


@pytest.mark.parametrize("sql", [
    "COPY contacts (id, bt) TO STDOUT",
    "COPY contacts (id, bt, f) TO STDOUT (FORMAT csv)",
    "COPY (SELECT bt FROM contacts) TO STDOUT",
    "COPY (SELECT n::float8 FROM contacts) TO STDOUT",
    "COPY (SELECT ARRAY[bt] FROM contacts) TO STDOUT (FORMAT csv)",
    "COPY (SELECT f FROM contacts) TO STDOUT (FORMAT binary)",
    "COPY contacts (f) TO STDOUT (FORMAT binary)",
])
def test_copy_lines_show_no_value_in_its_types_notation(g, sql):
    with connect(g) as c:
        data = b""
        with c.cursor().copy(sql) as cp:
            for chunk in cp:
                data += bytes(chunk)
    clean(data)


@pytest.mark.parametrize("sql", [
    "SELECT pg_notify('ch', bt::text) FROM contacts",
    "SELECT pg_notify('ch', f::text) FROM contacts",
])
def test_notification_payloads_in_a_types_notation_are_masked(g, sql):
    """Another session (the application) sends the payload; the agent listens."""
    with connect(g) as listener:
        listener.execute("LISTEN ch")
        admin_sql(sql, g.database)
        got = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
    assert got and "[REDACTED]" in got[0], got
    clean(got)


@pytest.mark.parametrize("sql", [
    "SELECT bt::text::int FROM contacts",
    "SELECT f::text::int FROM contacts",
    "SELECT ('x' || bt::text)::date FROM contacts",
])
def test_error_messages_in_a_types_notation_are_masked(g, sql):
    with connect(g) as c, pytest.raises(psycopg.Error) as e:
        c.execute(sql)
    clean(str(e.value))


# --- COPY options that quote or escape the value ----------------------------------------------

@pytest.mark.parametrize("options", [
    "FORMAT csv, QUOTE '@'",
    "FORMAT csv, QUOTE 'e'",
    "FORMAT csv, QUOTE '.', FORCE_QUOTE *",
    "FORMAT csv, ESCAPE '@', QUOTE '@'",
    "FORMAT csv, DELIMITER '@'",
    "FORMAT csv, DELIMITER '1'",
    "DELIMITER '@'",
    "DELIMITER '.'",
    "DELIMITER 'n'",
    "FORMAT text, DELIMITER '1'",
])
@pytest.mark.parametrize("what", ["contacts (email, card)", "(SELECT email, card FROM contacts)"],
                         ids=["table", "query"])
def test_copy_options_that_escape_a_value_are_refused_where_patterns_apply(g, what, options):
    """COPY writes a value with the delimiter or quote character in it escaped: with ``QUOTE '@'``
    an address went out as ``@ann@@example.com@``, with ``DELIMITER '.'`` as ``ann@example\\.com``,
    and the pattern matched neither. Where patterns apply, a COPY TO STDOUT whose delimiter, quote
    or escape character could be part of a value a pattern finds is refused (before it runs)."""
    with connect(g) as c:
        try:
            data = b""
            with c.cursor().copy(f"COPY {what} TO STDOUT ({options})") as cp:
                for chunk in cp:
                    data += bytes(chunk)
        except psycopg.Error as e:
            assert e.sqlstate in ("42501", "22023", "0A000", "42601"), (e.sqlstate, str(e))
            clean(str(e))
            return
    clean(data)


@pytest.mark.parametrize("options", ["FORMAT csv", "FORMAT csv, HEADER", "FORMAT csv, DELIMITER ';'",
                                     "FORMAT csv, DELIMITER E'\\t', QUOTE '\"'", "DELIMITER ','", "FORMAT text",
                                     "FORMAT csv, FORCE_QUOTE *"])
def test_ordinary_copy_options_still_work_and_are_masked(g, options):
    with connect(g) as c:
        data = b""
        with c.cursor().copy(f"COPY contacts (id, email) TO STDOUT ({options})") as cp:
            for chunk in cp:
                data += bytes(chunk)
    assert b"[REDACTED]" in data, data
    clean(data)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("sql", ["SELECT url, shown, label FROM links", "SELECT ARRAY[url, shown] FROM links",
                                 "SELECT url || ' ' || shown FROM links"])
def test_a_value_stored_spelled_otherwise_is_masked(g, sql, binary):
    """An address stored percent-encoded in a URL, with a zero-width space in it, or as an HTML
    character reference: what a reader of the value reads is an address (hoopy.policy.masking)."""
    with connect(g) as c:
        got = c.cursor(binary=binary).execute(sql).fetchall()
    assert "ann" not in clean(got), got


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("sql", [
    "SELECT row_to_json(c) FROM contacts c",
    "SELECT json_agg(c) FROM contacts c",
    "SELECT to_jsonb(c) FROM contacts c",
    "SELECT jsonb_build_object('n', n, 'id', id) FROM contacts",
    "SELECT json_build_object('f', f) FROM contacts",
    "SELECT json_build_array(n, email) FROM contacts",
])
def test_a_json_value_with_a_number_masked_stays_json(g, sql, binary):
    """A card number that is a JSON number (a numeric or float column in row_to_json) was replaced
    by a bare [REDACTED]: not JSON, so every client failed to read the row (psycopg: JSONDecodeError).
    Masked JSON stays JSON."""
    with connect(g) as c:
        got = c.cursor(binary=binary).execute(sql).fetchall()
    assert "[REDACTED]" in clean(got), got
