# No module-level reactor import here: pytest-twisted installs the asyncio
# reactor (addopts --reactor=asyncio) and an earlier import would break it.
import pytest

from tests.support import HoopyProcess


@pytest.fixture
def hoopy_gateway(tmp_path):
    """Factory: hoopy_gateway(body_toml, **kw) starts a real twistd gateway; stopped after."""
    procs = []

    def start(body: str, **kw) -> HoopyProcess:
        p = HoopyProcess(tmp_path, body, **kw)
        procs.append(p)
        return p.start()

    yield start
    for p in procs:
        try:
            p.stop()
        except Exception:
            pass
