"""Retry-after-approval over PostgreSQL with psql and psycopg: SQLSTATE 42501 at once, the
approval id in the message and what to do in the DETAIL; after approval the identical statement
(SQL text and bind parameter values) by the same identity runs once."""
import pytest

from tests.support import free_port
from tests.test_postgres import AGENT, REVIEWER, admin_sql, body, database, invoices, psql  # noqa: F401

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def gw(hoopy_gateway, database):  # noqa: F811
    port = free_port()
    g = hoopy_gateway(body(database, port, extra='approvals = "retry"'))
    g.pg_port, g.database = port, database
    g.dsn = f"host=127.0.0.1 port={port} user={AGENT.name} password={AGENT.token} dbname=x"
    yield g
    admin_sql("UPDATE invoices SET amount = 100 WHERE id = 1", database)


UPDATE = "UPDATE invoices SET amount = amount + 1 WHERE id = 1"


def test_psql_is_refused_at_once_then_runs_the_identical_statement_once(gw):
    r = psql(gw, UPDATE, timeout=10)  # no wait for a reviewer
    assert r.returncode != 0
    assert "ERROR:  hoopy: held for approval ap-" in r.stderr, r.stderr
    assert "run the same statement again after it is approved" in r.stderr
    aid = r.stderr.split("held for approval ", 1)[1].split(" ", 1)[0].rstrip(";")
    assert f"DETAIL:  A reviewer approves it with `hoopy approve {aid}`" in r.stderr
    assert invoices(gw.database) == "1|100\n2|200"
    r = psql(gw, UPDATE)  # asked again while pending: the same approval
    assert r.returncode != 0 and f"approval {aid} is still pending" in r.stderr, r.stderr

    assert gw.hoopy("approve", aid, token=REVIEWER.token).returncode == 0
    # A different statement is not what was approved.
    r = psql(gw, UPDATE.replace("+ 1", "+ 2"))
    assert r.returncode != 0 and "held for approval" in r.stderr and aid not in r.stderr
    r = psql(gw, UPDATE)
    assert r.returncode == 0, r.stderr
    assert invoices(gw.database) == "1|101\n2|200"
    r = psql(gw, UPDATE)  # once only
    assert r.returncode != 0 and "held for approval" in r.stderr and aid not in r.stderr
    assert invoices(gw.database) == "1|101\n2|200"
    ran = [e for e in gw.events("operation") if e["outcome"] == "allowed" and e["data"].get("approval") == aid]
    assert len(ran) == 1 and ran[0]["data"]["sql"] == UPDATE
    assert gw.hoopy("audit", "verify").returncode == 0


def test_bind_parameters_are_part_of_what_was_approved(gw):
    sql = "UPDATE invoices SET amount = %s WHERE id = %s"
    with psycopg.connect(gw.dsn, autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as e:
            c.execute(sql, (555, 1))
        assert e.value.diag.sqlstate == "42501"
        assert "held for approval" in e.value.diag.message_primary
        assert "runs once" in e.value.diag.message_detail
        aid = e.value.diag.message_primary.split("held for approval ", 1)[1].split(" ", 1)[0].rstrip(";")
        # The connection stays usable after the refusal.
        assert c.execute("SELECT count(*) FROM invoices").fetchone() == (2,)
    assert gw.hoopy("approve", aid, token=REVIEWER.token).returncode == 0
    with psycopg.connect(gw.dsn, autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(sql, (556, 1))  # other values: another approval
        c.execute(sql, (555, 1))  # the approved values: runs, on a new connection
    assert invoices(gw.database) == "1|555\n2|200"
