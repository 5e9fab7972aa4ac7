"""pgbench (libpq) through hoopy: the select-only load in each query mode, with TLS on and off."""
from __future__ import annotations

import re
import subprocess

import pytest

from tests.compat import pg
from tests.compat.matrix import row


@pytest.fixture(scope="module")
def g(tmp_path_factory):
    gw = pg.start(tmp_path_factory.mktemp("pgbench"))
    r = subprocess.run(["pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-U", "postgres", gw.db],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    yield gw
    pg.stop(gw)


def _pgbench(g, tls, mode):
    r = subprocess.run(["pgbench", "-n", "-S", "-M", mode, "-c", "2", "-j", "2", "-t", "200", "-h", "127.0.0.1",
                        "-p", str(g.port), "-U", g.agent.name, g.db], capture_output=True, text=True, timeout=120,
                       env=g.env(tls))
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"number of transactions actually processed: 400/400", r.stdout), r.stdout
    assert "number of failed transactions: 0" in r.stdout, r.stdout


@row("postgres", "pgbench", "-S in simple, extended and prepared query modes", tls=True)
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_tls(g, mode):
    _pgbench(g, True, mode)


@row("postgres", "pgbench", "-S in simple, extended and prepared query modes", tls=False)
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
def test_pgbench_plain(g, mode):
    _pgbench(g, False, mode)
