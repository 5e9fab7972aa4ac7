"""pg_dump through hoopy: a read grant on the dumped tables and ``read pg_catalog.*`` is
enough; the masked column is masked in the dump, and the dump restores."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.compat.matrix import row
from tests.compat.pg_gateway import PgGateway, admin_sql, gateway_fixture

pytestmark = pytest.mark.skipif(shutil.which("pg_dump") is None, reason="pg_dump is installed by .ci/run")

gw = gateway_fixture(["read public.*", "read other.*", "read pg_catalog.*"])


def pg_dump(g: PgGateway, *args, tls=False, timeout=120):
    return subprocess.run(["pg_dump", *g.args(), *args], capture_output=True, text=True, env=g.env(tls),
                          timeout=timeout)


def check_data(text: str):
    """The dump as SQL: tables, view, sequence, function; data with the masked column masked."""
    assert "CREATE TABLE public.customers" in text and "CREATE VIEW public.customer_names" in text
    assert "CREATE FUNCTION public.twice" in text and "CREATE SEQUENCE public.counter" in text
    assert "123-45-6789" not in text and "987-65-4321" not in text
    assert "1\tAnn\t[REDACTED]\tann@example.com" in text, text[-3000:]
    assert '1\t1\t100.50\t{"a": 1}' in text
    assert "SELECT pg_catalog.setval('public.counter', 42, false);" in text


def restores(text: str):
    """The dump loads into an empty database, masked values and all."""
    from tests.compat.pg_gateway import PG

    db = f"{admin_sql('SELECT current_database()')}_restore_{shutil.os.getpid()}"
    admin_sql(f"DROP DATABASE IF EXISTS {db}")
    admin_sql(f"CREATE DATABASE {db}")
    try:
        r = subprocess.run(["psql", f"{PG} dbname={db}", "-Xq", "-v", "ON_ERROR_STOP=1"], input=text,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert admin_sql("SELECT name, ssn FROM customers ORDER BY id", db) == "Ann|[REDACTED]\nBob|[REDACTED]"
    finally:
        admin_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


@row("postgres", "pg_dump", "plain SQL dump, read grants on the tables and pg_catalog; masked column masked",
     tls=False)
def test_pg_dump_plain(gw):
    r = pg_dump(gw)
    assert r.returncode == 0, r.stderr
    check_data(r.stdout)
    restores(r.stdout)


@row("postgres", "pg_dump", "plain SQL dump, read grants on the tables and pg_catalog; masked column masked",
     tls=True)
def test_pg_dump_plain_tls(gw):
    r = pg_dump(gw, tls=True)
    assert r.returncode == 0, r.stderr
    check_data(r.stdout)


@row("postgres", "pg_dump", "custom format (-Fc), read back with pg_restore", tls=False)
def test_pg_dump_custom(gw, tmp_path):
    out = tmp_path / "dump.custom"
    r = pg_dump(gw, "-Fc", "-f", str(out))
    assert r.returncode == 0, r.stderr
    text = subprocess.run(["pg_restore", "-f", "-", str(out)], capture_output=True, text=True, check=True).stdout
    check_data(text)


@row("postgres", "pg_dump", "directory format, two jobs (-Fd -j2: exported snapshot)", tls=False)
def test_pg_dump_directory_parallel(gw, tmp_path):
    out = tmp_path / "dir"
    r = pg_dump(gw, "-Fd", "-j2", "-f", str(out))
    assert r.returncode == 0, r.stderr
    text = subprocess.run(["pg_restore", "-f", "-", str(out)], capture_output=True, text=True, check=True).stdout
    check_data(text)


@row("postgres", "pg_dump", "directory format, two jobs (-Fd -j2: exported snapshot)", tls=True)
def test_pg_dump_directory_parallel_tls(gw, tmp_path):
    out = tmp_path / "dir"
    r = pg_dump(gw, "-Fd", "-j2", "-f", str(out), tls=True)
    assert r.returncode == 0, r.stderr
    text = subprocess.run(["pg_restore", "-f", "-", str(out)], capture_output=True, text=True, check=True).stdout
    check_data(text)


@row("postgres", "pg_dump", "schema only (-s)", tls=False)
def test_pg_dump_schema_only(gw):
    r = pg_dump(gw, "-s")
    assert r.returncode == 0, r.stderr
    assert "CREATE TABLE public.customers" in r.stdout and "COPY " not in r.stdout


@row("postgres", "pg_dump", "one table (-t), with INSERT statements (--inserts)", tls=False)
def test_pg_dump_one_table_inserts(gw):
    r = pg_dump(gw, "-t", "customers", "--inserts")
    assert r.returncode == 0, r.stderr
    assert "CREATE TABLE public.customers" in r.stdout and "invoices" not in r.stdout
    assert "123-45-6789" not in r.stdout
    assert "INSERT INTO public.customers VALUES (1, 'Ann', '[REDACTED]', 'ann@example.com');" in r.stdout


@row("postgres", "pg_dump", "a table of another schema (-t other.customers)", tls=False)
def test_pg_dump_other_schema(gw):
    r = pg_dump(gw, "-t", "other.customers")
    assert r.returncode == 0, r.stderr
    assert "other-secret" in r.stdout


@row("postgres", "pg_dump", "a schema without a read grant (other.*)", tls=False, outcome="refused",
     note="every table dumped needs a read grant; -n public dumps what is granted")
def test_pg_dump_refuses_what_is_not_granted(tmp_path):
    g = PgGateway(tmp_path, ["read public.*", "read pg_catalog.*"])
    try:
        r = pg_dump(g)
        assert r.returncode != 0 and "no grant allows read other.customers" in r.stderr, r.stderr
        r = pg_dump(g, "-n", "public")
        assert r.returncode == 0, r.stderr
        check_data(r.stdout)
        assert "other-secret" not in r.stdout
    finally:
        g.close()


@row("postgres", "pg_dump", "without read pg_catalog.*", tls=False, outcome="refused",
     note="pg_dump reads the catalog: grant read pg_catalog.* (catalog views showing other sessions, "
          "server files or statistics samples still need a rule that names them)")
def test_pg_dump_needs_the_catalog(tmp_path):
    g = PgGateway(tmp_path, ["read public.*"])
    try:
        r = pg_dump(g)
        assert r.returncode != 0
        assert "no grant allows read pg_catalog." in r.stderr, r.stderr
    finally:
        g.close()
