"""psycopg 3 through the gateway: text, binary and pipeline, with TLS on and off."""
from __future__ import annotations

import threading
import time

import pytest

from tests.compat import pg
from tests.compat.matrix import row

psycopg = pytest.importorskip("psycopg")


@pytest.fixture(scope="module")
def g(tmp_path_factory):
    gw = pg.start(tmp_path_factory.mktemp("psycopg"))
    yield gw
    pg.stop(gw)


def connect(g, tls, **kw):
    return psycopg.connect(g.conninfo(tls), autocommit=True, **kw)


@row("postgres", "psycopg", "text, binary and pipeline queries with masking", tls=True)
def test_text_binary_pipeline_tls(g):
    _text_binary_pipeline(g, True)


@row("postgres", "psycopg", "text, binary and pipeline queries with masking", tls=False)
def test_text_binary_pipeline_plain(g):
    _text_binary_pipeline(g, False)


def _text_binary_pipeline(g, tls):
    with connect(g, tls) as c:
        assert c.pgconn.ssl_in_use is tls
        assert c.execute("SELECT id, email, ssn FROM customers WHERE id = %s", (1,)).fetchall() == \
            [(1, "[REDACTED]", "[REDACTED]")]
        assert c.cursor(binary=True).execute("SELECT id, body, n, tags FROM notes ORDER BY id").fetchall() == \
            [(1, "hello", 7, ["a", "b"]), (2, "mail me at [REDACTED]", 8, ["c"])]
        with c.pipeline():
            a = c.execute("SELECT count(*) FROM notes")
            b = c.execute("SELECT name FROM customers WHERE id = %s", (2,), binary=True)
        assert a.fetchall() == [(2,)] and b.fetchall() == [("Bob",)]
    # Closing over TLS returns at once (the gateway's TLS close is not held back).
    start = time.monotonic()
    c = connect(g, tls)
    c.close()
    assert time.monotonic() - start < 5


@row("postgres", "psycopg", "the backend pid is the server's; cancel reaches the right statement", tls=True)
def test_backend_pid_and_cancel(g):
    with connect(g, True) as c:
        pid = c.info.backend_pid
        assert c.execute("SELECT pg_backend_pid()").fetchone() == (pid,)
        assert pid in pg.backend_pids(g.db)
        t = threading.Timer(0.5, c.cancel)
        t.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            c.execute("SELECT pg_sleep(20)")
        assert c.execute("SELECT 1").fetchone() == (1,)
        with connect(g, False) as other:  # its own pid, and a cancel of it does not reach c
            assert other.info.backend_pid != pid
            other.cancel()
        assert c.execute("SELECT 2").fetchone() == (2,)


@row("postgres", "psycopg", "a write holding the redaction marker is refused with the reason; the session goes on",
     tls=False)
def test_marker_written_back_is_refused(g):
    with connect(g, False) as c:
        email = c.execute("SELECT email FROM customers WHERE id = 1").fetchone()[0]
        assert email == "[REDACTED]"
        for sql, params in (("UPDATE customers SET email = %s WHERE id = 1", (email,)),
                            ("INSERT INTO customers VALUES (3, 'Cy', %s, NULL)", (email,)),
                            ("UPDATE customers SET email = '[REDACTED]' WHERE id = 1", None),
                            ("WITH u AS (UPDATE customers SET ssn = %s WHERE id = 2 RETURNING 1) SELECT 1", ("[REDACTED]",)),
                            ("MERGE INTO customers t USING (SELECT 1 AS id) s ON t.id = s.id "
                             "WHEN MATCHED THEN UPDATE SET email = %s", (email,))):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
                c.execute(sql, params)
            assert "redaction marker" in str(e.value), (sql, str(e.value))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.cursor(binary=True).execute("UPDATE customers SET email = %s WHERE id = 1", (email,))
        # Reading the marker, and writes without it, still work.
        assert c.execute("SELECT count(*) FROM customers WHERE email <> %s", ("x",)).fetchone() == (2,)
        c.execute("UPDATE customers SET name = %s WHERE id = 2", ("Bob",))
    assert pg.admin_sql("SELECT email FROM customers WHERE id = 1", g.db) == "ann@example.com"
    assert pg.admin_sql("SELECT count(*) FROM customers", g.db) == "2"
    refused = g.wait_events(lambda e: "redaction marker" in e["data"].get("reason", ""), "operation")
    assert refused and refused[0]["outcome"] == "refused"


@row("postgres", "psycopg", "statement bytes that are not UTF-8 are refused with 22021; the session goes on",
     tls=False)
def test_statement_bytes_not_utf8(g):
    with connect(g, False) as c:
        with pytest.raises(psycopg.errors.CharacterNotInRepertoire):
            c.execute(b"SELECT '\xff\xfe'")
        assert c.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.errors.CharacterNotInRepertoire):
            c.execute(b"SELECT '\xc3' WHERE %s", (True,))  # extended protocol (Parse)
        assert c.execute("SELECT %s::int", (2,)).fetchone() == (2,)


@row("postgres", "psycopg", "client_encoding spelled utf_8, UTF-8 or unicode; back to UTF8 after a refused change",
     tls=False)
def test_client_encoding_names(g):
    for name in ("utf_8", "UTF-8", "unicode", "Utf8"):
        with connect(g, False, client_encoding=name) as c:
            assert c.execute("SHOW client_encoding").fetchone() == ("UTF8",)
    with connect(g, False) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute("SET client_encoding TO 'LATIN1'")
        assert "UTF8" in str(e.value)
        c.execute("SET client_encoding TO 'UTF8'")
        c.execute("SET NAMES 'utf-8'")
        assert c.execute("SELECT 'ok'").fetchone() == ("ok",)
    with pytest.raises(psycopg.OperationalError):
        connect(g, False, client_encoding="LATIN1")


@row("postgres", "psycopg", "SQL text over [gateway] max_statement is refused with 54000 while it is read",
     tls=False)
def test_statement_over_max_statement(g):
    with connect(g, False) as c:
        big = "SELECT '" + "x" * (1024 * 1024 + 10) + "'"
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            c.execute(big)
        assert c.execute("SELECT 1").fetchone() == (1,)
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            c.execute(big + " WHERE %s", (True,))
        assert c.execute("SELECT %s::int", (3,)).fetchone() == (3,)
    refused = g.wait_events(lambda e: "max_statement" in e["data"].get("reason", ""), "operation")
    assert len(refused) >= 2 and len(refused[0]["data"]["sql"]) < 10_000


@row("postgres", "psycopg", "upstream backend terminated: the error is the server's and close() returns", tls=True)
def test_upstream_terminated_tls(g):
    c = connect(g, True)
    pid = c.info.backend_pid
    pg.admin_sql(f"SELECT pg_terminate_backend({pid})")
    assert pg.wait_until(lambda: pid not in pg.backend_pids(g.db))
    start = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as e:
        c.execute("SELECT 1")
    assert "terminating connection due to administrator command" in str(e.value)
    c.close()
    assert time.monotonic() - start < 5
