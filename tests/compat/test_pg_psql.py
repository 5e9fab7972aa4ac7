"""psql (libpq) through the gateway, with TLS on and off."""
from __future__ import annotations

import struct
import subprocess
import time

import pytest

from tests.compat import pg
from tests.compat.matrix import row

TLS = [pytest.param(True, id="tls"), pytest.param(False, id="plain")]


@pytest.fixture(scope="module")
def g(tmp_path_factory):
    gw = pg.start(tmp_path_factory.mktemp("psql"))
    yield gw
    pg.stop(gw)


@row("postgres", "psql", "queries, masked columns and patterns, refusal keeps the session", tls=True)
def test_queries_tls(g):
    _queries(g, True)


@row("postgres", "psql", "queries, masked columns and patterns, refusal keeps the session", tls=False)
def test_queries_plain(g):
    _queries(g, False)


def _queries(g, tls):
    r = g.psql("-c", "SELECT id, name, email, ssn FROM customers ORDER BY id", "-c", "DELETE FROM nowhere",
               "-c", "SELECT 1", tls=tls)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["1|Ann|[REDACTED]|[REDACTED]", "2|Bob|[REDACTED]|[REDACTED]", "1"]
    assert "nowhere" in r.stderr


def _wait_active(db, text, timeout=10):
    return pg.wait_until(lambda: pg.admin_sql(
        f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND query LIKE '{text}%'") != "0", timeout)


@row("postgres", "psql", "upstream backend terminated mid-statement: psql reports it and exits", tls=True)
def test_upstream_terminated_tls(g):
    _upstream_terminated(g, True)


@row("postgres", "psql", "upstream backend terminated mid-statement: psql reports it and exits", tls=False)
def test_upstream_terminated_plain(g):
    _upstream_terminated(g, False)


def _upstream_terminated(g, tls):
    p = subprocess.Popen(["psql", f"host=127.0.0.1 port={g.port} user={g.agent.name} dbname={g.db}", "-XAt",
                          "-c", "SELECT pg_sleep(30)"], env=g.env(tls), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_active(g.db, "SELECT pg_sleep(30)")
        pg.terminate_backends(g.db)
        start = time.monotonic()
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    assert time.monotonic() - start < 5
    assert p.returncode != 0 and "terminating connection due to administrator command" in err, err


@row("postgres", "psql", "a refused startup setting ends with FATAL 42501 and psql exits", tls=True)
def test_refused_startup_tls(g):
    _refused_startup(g, True)


@row("postgres", "psql", "a refused startup setting ends with FATAL 42501 and psql exits", tls=False)
def test_refused_startup_plain(g):
    _refused_startup(g, False)


def _refused_startup(g, tls):
    start = time.monotonic()
    r = g.psql("-c", "SELECT 1", tls=tls, extra_env={"PGOPTIONS": "-c role=postgres"}, timeout=15)
    assert r.returncode != 0 and "not allowed through hoopy" in r.stderr, r.stderr
    assert time.monotonic() - start < 5


def parse_binary_copy(data: bytes) -> list:
    assert data[:11] == b"PGCOPY\n\xff\r\n\x00"
    pos = 11 + 4
    (ext,) = struct.unpack_from("!i", data, pos)
    pos += 4 + ext
    rows = []
    while True:
        (n,) = struct.unpack_from("!h", data, pos)
        pos += 2
        if n == -1:
            assert pos == len(data)
            return rows
        values = []
        for _ in range(n):
            (k,) = struct.unpack_from("!i", data, pos)
            pos += 4
            if k == -1:
                values.append(None)
            else:
                values.append(data[pos:pos + k])
                pos += k
        rows.append(values)


@row("postgres", "psql", "COPY ... TO STDOUT (FORMAT binary) of a table without masked columns; "
     "a value with a pattern match becomes NULL", tls=True)
def test_binary_copy_tls(g):
    _binary_copy(g, True)


@row("postgres", "psql", "COPY ... TO STDOUT (FORMAT binary) of a table without masked columns; "
     "a value with a pattern match becomes NULL", tls=False)
def test_binary_copy_plain(g):
    _binary_copy(g, False)


def _binary_copy(g, tls):
    cmd = ["psql", f"host=127.0.0.1 port={g.port} user={g.agent.name} dbname={g.db}", "-XAtq",
           "-c", "COPY notes TO STDOUT (FORMAT binary)", "-c", "COPY (SELECT id, email FROM customers) TO STDOUT "
           "(FORMAT binary)", "-c", "SELECT 'still here'"]
    r = subprocess.run(cmd, capture_output=True, env=g.env(tls), timeout=30)
    err = r.stderr.decode()
    # The table with a masked column is refused with an error, not FATAL: the session goes on.
    assert "masked" in err and "FATAL" not in err, err
    out = r.stdout
    assert out.endswith(b"still here\n"), out
    rows = parse_binary_copy(out[:-len(b"still here\n")])
    assert rows[0][:2] == [struct.pack("!i", 1), b"hello"]
    assert rows[1][:2] == [struct.pack("!i", 2), None]  # 'mail me at zed@example.net'
    assert rows[0][2] == struct.pack("!q", 7)
    assert b"example" not in out


@row("postgres", "psql", "COPY FROM STDIN of data holding the redaction marker is refused; the session goes on",
     tls=False)
def test_copy_in_with_the_marker_is_refused(g):
    r = g.psql("-c", "COPY ledger (amount, memo) FROM STDIN", "-c", "SELECT count(*) FROM ledger", tls=False,
               input="1\tfine\n2\tann [REDACTED]\n")
    assert "redaction marker" in r.stderr, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "0", r.stdout
