"""docs/compatibility.md shows exactly the rows the compat tests declare."""
from tests.compat.matrix import BEGIN, collect, documented, table


def test_the_documented_matrix_is_the_tested_one():
    doc = documented()
    assert doc is not None, f"docs/compatibility.md lacks the matrix markers ({BEGIN})"
    assert doc == table(collect()), "docs/compatibility.md differs from tests/compat: run python3 -m tests.compat.matrix --write"
