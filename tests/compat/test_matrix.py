"""docs/compatibility.md shows exactly the rows the compat tests declare, with the versions installed here."""
from tests.compat.matrix import BEGIN, collect, documented, table, version_of


def test_the_documented_matrix_is_the_tested_one():
    doc = documented()
    assert doc is not None, f"docs/compatibility.md lacks the matrix markers ({BEGIN})"
    assert doc == table(collect()), "docs/compatibility.md differs from tests/compat: run python3 -m tests.compat.matrix --write"


def test_every_client_version_is_read_off_this_machine():
    # A row whose client is not installed (or whose version cannot be read) would show an empty
    # version: the matrix then claims a client the suite did not run.
    missing = sorted({r.client for r in collect() if not version_of(r.client)})
    assert not missing, f"no installed version found for {missing}"
