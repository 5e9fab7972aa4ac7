# No module-level reactor import here: pytest-twisted installs the asyncio
# reactor (addopts --reactor=asyncio) and an earlier import would break it.
import time

import pytest

from tests.support import HoopyProcess


def pytest_sessionstart(session):
    """Byte-compile hoopy/, the twistd plugin and tests/ once, into their (git-ignored) __pycache__.

    The suite starts several hundred Python processes (twistd gateways, the hoopy command, peers)
    and the machines it runs on set PYTHONDONTWRITEBYTECODE: without this each of them compiled
    hoopy's source anew, ~0.3 s of CPU a gateway start. Stale files are recompiled (mtime check)."""
    import compileall
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for d in ("hoopy", "twisted", "tests"):
        compileall.compile_dir(root / d, quiet=2, rx=re.compile(r"node_modules"), workers=1)


@pytest.fixture
def hoopy_gateway(tmp_path):
    """Factory: hoopy_gateway(body_toml, **kw) starts a real twistd gateway; stopped after."""
    procs = []

    def start(body: str, **kw) -> HoopyProcess:
        # A gateway started while another of this test still runs gets a folder (and a SQLite state
        # file) of its own: a SQLite file serves one gateway. One started after the others stopped
        # takes the test's folder again, and their store (a restart).
        running = any(q.proc is not None and q.proc.poll() is None for q in procs)
        where = tmp_path / f"gateway-{len(procs) + 1}" if running else tmp_path
        where.mkdir(exist_ok=True)
        p = HoopyProcess(where, body, **kw)
        procs.append(p)
        return p.start()

    yield start
    for p in procs:
        try:
            p.stop()
        except Exception:
            pass


def pytest_runtest_setup(item):
    item.hoopy_t0 = time.monotonic()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test shows the last lines of every gateway it may have talked to (still running, or
    started by this test): on a CI machine nothing else is left to read once the run is over."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        t0 = getattr(item, "hoopy_t0", 0.0)
        for gw in list(HoopyProcess.running):
            if not ((gw.proc is not None and gw.proc.poll() is None) or gw.started_at >= t0):
                continue
            try:
                tail = gw.log_text()[-6000:]
            except OSError:
                continue
            report.sections.append((f"gateway log {gw.workdir.name} (last 6,000 characters)", tail))
