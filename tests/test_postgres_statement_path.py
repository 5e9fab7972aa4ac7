"""The statement path's arithmetic shortcut (pgcpu): a statement's ``duration_ms`` through
``statement_record.ms3`` is the very float ``round(y, 3)`` gives, bit for bit, ties and near-ties included."""
from __future__ import annotations

import math
import random
import struct

from hoopy.postgres.statement_record import ms3


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def test_ms3_is_round_to_three_places():
    rng = random.Random(7)
    values = [0.0, 0.0005, 1.0005, 2.675, 0.0015, 0.0025, 1e-9, 999999.9995, 1e9, 2e9, 123.4565, -0.0005,
              -2.675, 1e300, float("inf")]
    values += [rng.uniform(0, 10) ** rng.uniform(-3, 5) for _ in range(50_000)]
    for k in range(0, 30_000):
        tie = (k + 0.5) / 1000  # a tie, as near as a double gets, and its neighbours
        values += [tie, math.nextafter(tie, 0), math.nextafter(tie, 1e18), k / 1000, k / 1000 + 0.0004999]
    for y in values:
        assert _bits(ms3(y)) == _bits(round(y, 3)), y
    assert math.isnan(ms3(float("nan"))) and math.isnan(round(float("nan"), 3))
