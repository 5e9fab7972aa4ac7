"""Getting a held operation run without a reviewer having approved *it*, through a real
``twistd -n hoopy``, the real PostgreSQL server, psycopg and the real ``hoopy approve``.

Retry mode binds an approval to the operation's canonical form and runs it once. The attacker
is the agent: it asks for harmless-looking approvals one at a time and then runs something else
under them.
"""
from __future__ import annotations

import re
import secrets

import pytest

from tests.support import HoopyProcess, admin_sql, free_port, ident

psycopg = pytest.importorskip("psycopg")

AGENT = ident("agent")
REVIEWER = ident("reviewer")


@pytest.fixture(scope="module")
def g(tmp_path_factory):
    db = f"hoopy_appr_{secrets.token_hex(4)}"
    admin_sql(f"CREATE DATABASE {db}")
    admin_sql("CREATE TABLE hold (n int); INSERT INTO hold SELECT generate_series(1, 5);", db)
    port = free_port()
    body = AGENT.toml() + REVIEWER.toml(kind="human", roles=["reviewer"]) + f"""
[connections.pg]
type = "postgres"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "tcp:host=127.0.0.1:port=5432"
upstream_user = "postgres"
upstream_database = "{db}"
upstream_tls = "disable"
approvals = "retry"

[[grants]]
identity = "agent"
connection = "pg"
allow = ["read public.hold"]
approve = ["write public.hold"]
"""
    proc = HoopyProcess(tmp_path_factory.mktemp("appr"), body).start()
    proc.port, proc.database = port, db
    yield proc
    proc.stop()
    admin_sql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def connect(g):
    return psycopg.connect(f"host=127.0.0.1 port={g.port} user={AGENT.name} password={AGENT.token} dbname=x "
                           "sslmode=disable", autocommit=True)


def held(c, sql) -> str:
    """Send a statement retry mode holds; its approval id."""
    with pytest.raises(psycopg.Error) as e:
        c.execute(sql)
    m = re.search(r"held for approval (ap-[0-9a-f]+)", str(e.value))
    assert m, str(e.value)
    return m.group(1)


def approve(g, approval):
    r = g.hoopy("approve", approval, token=REVIEWER.token)
    assert r.returncode == 0, r.stdout + r.stderr


def rows(g) -> int:
    return int(admin_sql("SELECT count(*) FROM hold", g.database))


def approved_run(g, c, sql):
    approve(g, held(c, sql))
    c.execute(sql)


def test_an_approved_execute_runs_only_the_statement_it_was_approved_for(g):
    """``EXECUTE p`` was bound to its text and the tables it touches: approved while p deleted one
    row, it ran after p had been prepared again to delete every row (each PREPARE approved on its
    own: preparing deletes nothing). The approval now covers what the name held when it was asked
    for; another body under the same name needs its own approval."""
    before = rows(g)
    with connect(g) as c:
        approved_run(g, c, "PREPARE p AS DELETE FROM hold WHERE n = 1")
        first = held(c, "EXECUTE p")
        shown = g.hoopy("approvals", first, token=REVIEWER.token).stdout
        assert "prepared as: PREPARE p AS DELETE FROM hold WHERE n = 1" in shown, shown
        approve(g, first)  # the reviewer approves deleting row 1
    with connect(g) as c:  # the approval outlives the session that asked for it
        approved_run(g, c, "PREPARE p AS DELETE FROM hold")
        again = held(c, "EXECUTE p")  # not the approved statement: a new approval, nothing ran
        assert again != first
    assert rows(g) == before
    with connect(g) as c:  # the approved one still runs, once, with the body it was approved with
        approved_run(g, c, "PREPARE p AS DELETE FROM hold WHERE n = 1")
        c.execute("EXECUTE p")
        assert rows(g) == before - 1
        held(c, "EXECUTE p")  # once


def test_an_approved_execute_of_a_protocol_statement_is_bound_to_its_text(g):
    """The same through the extended protocol's named statements and SQL EXECUTE of them."""
    before = rows(g)
    with connect(g) as c:
        approved_run(g, c, "PREPARE q AS DELETE FROM hold WHERE n = 2")
        approve(g, held(c, "EXECUTE q"))
        c.execute("DEALLOCATE q")
        approved_run(g, c, "PREPARE q AS DELETE FROM hold WHERE n > 0")
        held(c, "EXECUTE q")
    assert rows(g) == before
