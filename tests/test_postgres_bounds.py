"""One client cannot take the gateway down with what it asks the classifier to judge.

The worst statements found (a megabyte of ``SELECT 1,1,1,...``, of function
calls, of VALUES rows; an expression nested thousands deep), sent by several
clients at once: each is refused with the reason recorded (or judged, when it
is within bounds), the connection stays usable, and the gateway's peak resident
memory grows by a bounded amount, not with the number of clients.
"""
from __future__ import annotations

import threading
import time

import pytest

from tests.compat.pg_gateway import PgGateway

psycopg = pytest.importorskip("psycopg")

MB = 1 << 20
# Peak RSS the gateway may add: one large parse at a time (hoopy.postgres.classify.PARSES),
# PostgreSQL's own parser holding ~150-200 MB for the worst megabyte, plus slack.
BOUND_MB = 320

SIZE = MB - 4096  # just under [gateway] max_statement (1 MiB): what reaches the classifier
WORST = {
    "consts": "SELECT 1" + ",1" * ((SIZE - 8) // 2),
    "calls": "SELECT " + ",".join("f(x)" for _ in range(SIZE // 5)),
    "columns": "SELECT " + ",".join(f"c{i}" for i in range(SIZE // 8)),
    "values": "INSERT INTO customers VALUES " + ",".join(f"({i},'n{i}','s',NULL)" for i in range(SIZE // 26)),
    "deep": "SELECT " + "1+" * 10_000 + "1",  # judged; the server refuses it (its stack depth)
    "deeper": "SELECT " + "1+" * 100_000 + "1",  # past the parser's stack depth: refused by hoopy
}
assert all(len(v) < MB - 1024 for v in WORST.values())
WORST.update({
    "parens": "SELECT " + "(" * 5000 + "1" + ")" * 5000,
})


def _hwm_mb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def g(tmp_path_factory):
    gw = PgGateway(tmp_path_factory.mktemp("bounds"), ["read public.customers"])
    yield gw
    gw.close()


def _connect(g):
    return psycopg.connect(f"host=127.0.0.1 port={g.port} user={g.agent.name} password={g.agent.token} "
                           "dbname=x sslmode=disable", autocommit=True)


def test_worst_statements_are_refused_with_a_reason_and_memory_stays_bounded(g):
    with _connect(g) as c:
        c.execute("SELECT count(*) FROM customers")  # warm: connection, catalog, code paths
    base = _hwm_mb(g.proc.proc.pid)
    results: dict = {}

    def client(n):
        with _connect(g) as c:
            for name, sql in WORST.items():
                t = time.monotonic()
                try:
                    c.execute(sql)
                    outcome = "ran"
                except psycopg.Error as e:
                    outcome = e.sqlstate
                results[(n, name)] = (outcome, time.monotonic() - t)
            # The connection is still usable.
            results[(n, "after")] = c.execute("SELECT count(*) FROM customers").fetchone()[0]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not any(t.is_alive() for t in threads), results
    grown = _hwm_mb(g.proc.proc.pid) - base
    for n in range(4):
        assert results[(n, "after")] == 2
        assert results[(n, "consts")][0] == "54001"
        assert results[(n, "calls")][0] == "54001"
        assert results[(n, "columns")][0] == "54001"
        assert results[(n, "values")][0] == "42501"  # judged: a write no grant allows
        assert results[(n, "deep")][0] == "54001"  # the server's "stack depth limit exceeded"
        assert results[(n, "deeper")][0] == "54001"  # ours, before anything goes upstream
        assert results[(n, "parens")][0] in ("ran", "54001")
    print(f"peak RSS grew by {grown} MB")
    assert grown < BOUND_MB, f"the gateway's peak RSS grew by {grown} MB"
    reasons = [e.get("data", {}).get("reason", "") for e in g.proc.events("operation")
               if e.get("outcome") == "refused"]
    assert sum("hoopy cannot judge this statement: it has more than" in r for r in reasons) >= 12, reasons
    assert sum("nested too deeply" in r for r in reasons) >= 4, reasons


def test_ten_thousand_terms_are_judged_with_an_event_not_a_dropped_connection(g):
    """Today's code crashed its walk with RecursionError here and left no event."""
    statements = ["SELECT 1" + "+1" * 10_000, "SELECT " + "-" * 20_000 + "1",
                  "SELECT " + "ARRAY[" * 3000 + "1" + "]" * 3000, "SELECT " + "(SELECT " * 1000 + "1" + ")" * 1000,
                  "SELECT 1" + "+1" * 200_000]
    with _connect(g) as c:
        for sql in statements:
            try:
                c.execute(sql)
            except psycopg.Error as e:
                assert e.sqlstate[:2] in ("54", "42"), (e.sqlstate, str(e))  # ours or the server's
            assert c.execute("SELECT 1").fetchone()[0] == 1
    events = g.proc.events("operation")
    for sql in statements:
        mine = [e for e in events if sql.startswith((e.get("data", {}).get("sql") or "-")[:1000])]
        assert mine, sql[:40]
        assert all(e.get("outcome") == "allowed" or "cannot judge" in e["data"].get("reason", "") for e in mine)
    assert any("nested too deeply" in e.get("data", {}).get("reason", "") for e in events)
