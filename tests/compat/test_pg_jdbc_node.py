"""pgjdbc (Debian's libpostgresql-jdbc-java) and node-postgres (npm ``pg``), with TLS on and off."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.compat import pg
from tests.compat.matrix import row

CLIENTS = Path(__file__).resolve().parent / "clients"
JDBC_JAR = next((p for p in ("/usr/share/java/postgresql.jar",) if Path(p).exists()), None)
NODE_PG = CLIENTS / "node_modules" / "pg"


@pytest.fixture(scope="module")
def g(tmp_path_factory):
    gw = pg.start(tmp_path_factory.mktemp("jdbc-node"))
    yield gw
    pg.stop(gw)


def jdbc(g, tls, app):
    assert JDBC_JAR and shutil.which("java"), "needs default-jdk-headless and libpostgresql-jdbc-java (.ci/run)"
    ssl = "sslmode=require&sslfactory=org.postgresql.ssl.NonValidatingFactory" if tls else "sslmode=disable"
    url = f"jdbc:postgresql://127.0.0.1:{g.port}/{g.db}?{ssl}"
    r = subprocess.run(["java", "-cp", JDBC_JAR, str(CLIENTS / "HoopyJdbc.java"), url, g.agent.name, g.agent.token,
                        app], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.splitlines()


def _jdbc(g, tls):
    app = f"jdbc-app-{tls}"
    lines = jdbc(g, tls, app)
    assert lines[:7] == ["1|Ann|[REDACTED]", "2|Bob|[REDACTED]"] * 3 + ["1|Ann|[REDACTED]"]
    assert lines[7:] == ["pid same", "refused 42501", "count 2", "closed"]
    # application_name was set with SET after startup: the session records what took effect.
    s = [s for s in g.sessions() if s.get("application_name") == app]
    assert s, [x.get("application_name") for x in g.sessions()]


@row("postgres", "pgjdbc", "prepared statements past prepareThreshold, application_name by SET, backend pid, "
     "refused write", tls=True)
def test_jdbc_tls(g):
    _jdbc(g, True)


@row("postgres", "pgjdbc", "prepared statements past prepareThreshold, application_name by SET, backend pid, "
     "refused write", tls=False)
def test_jdbc_plain(g):
    _jdbc(g, False)


def _node(g, tls):
    assert NODE_PG.exists() and shutil.which("node"), "needs node and `npm install` in tests/compat/clients (.ci/run)"
    r = subprocess.run(["node", str(CLIENTS / "node_pg.js"), str(g.port), g.agent.name, g.agent.token, g.db,
                        "1" if tls else "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert json.loads(lines[0]) == [{"id": 1, "name": "Ann", "email": "[REDACTED]"}]
    assert lines[1:] == ["pid same", "refused 42501", "count 2", "pool 2,2,2,2,2", "closed"]


@row("postgres", "node-postgres", "parameterized queries, a pool, refused write, end()", tls=True)
def test_node_tls(g):
    _node(g, True)


@row("postgres", "node-postgres", "parameterized queries, a pool, refused write, end()", tls=False)
def test_node_plain(g):
    _node(g, False)
