#!/usr/bin/env python3
"""Masked rows in memory: bench/postgres.py's rows (int, 'user<g>@example.com', md5) masked for
the email pattern, by the Python code or the C one (hoopy/postgres/_rowmask.c).

    python3 bench/rowmask.py [--rows 100000] [--impl c|py] [--via mask|receive] [--build-only] [--repeat 5]

``--via mask``: ``RowPlan.mask_rows`` over the whole buffer at once; ``--via receive``: through
``ClientSide.receive_upstream`` in 64 KiB reads, as the gateway gets them. Prints CPU
microseconds a row (best of ``--repeat``) and the load average. Instructions a row: run it under
``valgrind --tool=callgrind`` with and without ``--build-only`` (``--repeat 1``) and divide the
difference by the rows.
"""
from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from hoopy.policy.masking import BUILTIN  # noqa: E402
from hoopy.postgres import codec, rowbatch  # noqa: E402
from hoopy.postgres.rows import MaskRules  # noqa: E402


def build(rows: int) -> bytes:
    return b"".join(codec.build_data_row([str(g).encode(), b"user%d@example.com" % g,
                                          hashlib.md5(str(g).encode()).hexdigest().encode()])
                    for g in range(1, rows + 1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--impl", choices=["c", "py"], default="c")
    ap.add_argument("--via", choices=["mask", "receive"], default="mask")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    if a.impl == "c":
        if rowbatch.email_rows_c is None:
            raise SystemExit("the C module is not built (python3 setup.py build_ext --inplace)")
        rowbatch.email_rows = rowbatch.email_rows_c
    else:
        rowbatch.email_rows = rowbatch.email_rows_py
    raw = build(a.rows)
    fields = [codec.Field("g", 0, 0, 23, -1, -1, 0), codec.Field("email", 0, 0, 25, -1, -1, 0),
              codec.Field("h", 0, 0, 25, -1, -1, 0)]
    if a.via == "receive":
        from tests.test_postgres_machines import Exchange  # imported before --build-only returns: not counted
    if a.build_only:
        return
    best = None
    for _ in range(a.repeat):
        if a.via == "mask":
            plan = MaskRules((BUILTIN["email"],)).plan(fields, None)
            t = time.process_time()
            out, stop, n = plan.mask_rows(raw, 0, len(raw))
            dt = time.process_time() - t
            assert (stop, n) == (len(raw), a.rows) and plan.patterns == {"email": a.rows}, (stop, n, plan.patterns)
        else:
            x = Exchange(patterns=("email",))
            x.send(codec.query("SELECT g, email, h FROM t"))
            x.reply(codec.row_description(fields))
            seen = []
            t = time.process_time()
            for i in range(0, len(raw), 65536):
                x.reply(raw[i:i + 65536])
                seen.append(x.client)  # what reached the client, taken away (not the gateway's work)
                x.client = b""
            dt = time.process_time() - t
            assert sum(c.count(b"[REDACTED]") for c in seen) == a.rows
        best = dt if best is None else min(best, dt)
    print(f"{a.impl} via {a.via}: {best / a.rows * 1e6:.3f} us CPU a row ({a.rows:,} rows, best of {a.repeat}); "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
