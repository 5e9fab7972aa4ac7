"""The event loop under the asyncio reactor (hoopy/eventloop.py): uvloop where it imports, the
standard library's on request, and a wrong HOOPY_EVENT_LOOP refused before anything starts.

The rest of the suite runs the real gateways (every ``hoopy_gateway`` test) on the default choice,
uvloop, and the in-process tests on pytest-twisted's stdlib loop; here one real gateway process on
each loop carries statements through PostgreSQL and is stopped by SIGTERM."""
import asyncio
import signal
import sqlite3
import subprocess
import sys

import psycopg
import pytest

from hoopy import eventloop
from tests.support import TWISTD, free_port, ident, pg_connection

uvloop = pytest.importorskip("uvloop")  # (a dependency in setup.cfg: skipped only where not installed)

AGENT = ident("agent")


def test_choice_is_read_strictly():
    assert eventloop.chosen({}) == ""
    assert eventloop.chosen({"HOOPY_EVENT_LOOP": "uvloop"}) == "uvloop"
    assert eventloop.chosen({"HOOPY_EVENT_LOOP": " AsyncIO "}) == "asyncio"
    for bad in ("uv", "trio", "asyncio,uvloop", "epoll"):
        with pytest.raises(eventloop.EventLoopError, match="HOOPY_EVENT_LOOP"):
            eventloop.chosen({"HOOPY_EVENT_LOOP": bad})


@pytest.mark.parametrize("env, kind", [({}, "uvloop"), ({"HOOPY_EVENT_LOOP": "uvloop"}, "uvloop"),
                                       ({"HOOPY_EVENT_LOOP": "asyncio"}, "asyncio")])
def test_new_loop(env, kind):
    loop = eventloop.new_loop(env)
    try:
        assert eventloop.name(loop) == kind
        assert isinstance(loop, uvloop.Loop) == (kind == "uvloop")
        assert isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()


def test_uvloop_required_but_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # (import raises ImportError)
    with pytest.raises(eventloop.EventLoopError, match="cannot be imported"):
        eventloop.new_loop({"HOOPY_EVENT_LOOP": "uvloop"})
    loop = eventloop.new_loop({})  # unset: the stdlib's, quietly
    try:
        assert eventloop.name(loop) == "asyncio"
    finally:
        loop.close()


def test_a_wrong_choice_stops_the_gateway_before_it_starts(tmp_path):
    (tmp_path / "hoopy.toml").write_text('[gateway]\nstate = "hoopy.db"\n')
    r = subprocess.run([TWISTD, "-n", "--pidfile=", "hoopy", "-c", "hoopy.toml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60, env={**__import__("os").environ, "HOOPY_EVENT_LOOP": "libev"})
    assert r.returncode != 0
    assert "HOOPY_EVENT_LOOP='libev'" in r.stdout + r.stderr and "not starting" in r.stdout + r.stderr
    assert not (tmp_path / "hoopy.db").exists()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_real_gateway_on_each_loop(hoopy_gateway, loop):
    port = free_port()
    gw = hoopy_gateway(AGENT.toml() + pg_connection(port, "postgres") + """
[[grants]]
identity = "agent"
connection = "pg"
allow = ["read"]
""", env={"HOOPY_EVENT_LOOP": loop})
    assert f"event loop: {loop}" in gw.log_text()
    dsn = f"host=127.0.0.1 port={port} user=agent password={AGENT.token} dbname=postgres sslmode=disable"
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(50):
            assert conn.execute("SELECT %s::int + 1", (i,)).fetchone() == (i + 1,)
        with pytest.raises(psycopg.Error, match="hoopy"):
            conn.execute("CREATE TABLE hoopy_evloop_refused (x int)")
    assert gw.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    log = gw.log_text()
    assert "Server Shut Down" in log and "Traceback" not in log
    assert gw.hoopy("audit", "verify").returncode == 0
    db = sqlite3.connect(gw.db)
    kinds = dict(db.execute("SELECT outcome, count(*) FROM events WHERE kind = 'operation' GROUP BY outcome"))
    assert kinds == {"allowed": 50, "refused": 1}


CHILD = """
import os, sys
from hoopy.eventloop import install_reactor
install_reactor()
from twisted.internet import reactor, protocol
class P(protocol.ProcessProtocol):
    def processEnded(self, reason):
        print("ended", reason.value.exitCode, flush=True)
        reactor.stop()
def go():
    # Its pipes closed first, its exit later: only SIGCHLD tells the reactor it has ended.
    reactor.spawnProcess(P(), "/bin/sh", ["sh", "-c", "exec >&- 2>&- <&-; sleep 0.3; exit 3"], env=os.environ)
reactor.callWhenRunning(go)
reactor.callLater(10, lambda: (print("never ended", flush=True), reactor.stop()))
reactor.run()
"""


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_child_that_exits_after_closing_its_pipes_is_seen_to_end(loop):
    """On uvloop Twisted's SIGCHLD wake-up is not heard (hoopy/eventloop._reap_on_sigchld): an MCP
    server that closed its pipes and exited later was never reaped, and the gateway hung at stop."""
    import os
    from pathlib import Path

    root = str(Path(__file__).resolve().parent.parent)
    r = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "HOOPY_EVENT_LOOP": loop, "PYTHONPATH": root})
    assert r.stdout.strip() == "ended 3", (r.stdout, r.stderr[-2000:])
