#!/usr/bin/env python3
"""Where a postgresql:// store's batch spends its time: N gateways on one postgresql:// state under
pgbench -S -c 8, each writer thread's statements timed (bench/pgstore_trace/sitecustomize.py).

    python3 bench/pgstore_trace.py [--nodes 1] [--seconds 10]

Databases hoopy_pgstore_*, dropped after. Batch sizes are counted as the writer is given them (the
locked way may take more, what came while it awaited the lock)."""
from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

from hoopy.identity import new_token  # noqa: E402

sys.path.insert(0, str(_HERE))
import postgres_nodes as pn  # noqa: E402
from postgres import PG, sh  # noqa: E402

sys.path.pop(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--seconds", type=int, default=10)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hoopy-pgstore-trace-"))
    tag = secrets.token_hex(3)
    db, state_db = f"hoopy_pgstore_b_{tag}", f"hoopy_pgstore_s_{tag}"
    token = new_token()
    env = {**os.environ, "PGPASSWORD": token}
    trace = str(work / "trace")
    os.environ["HOOPY_TRACE"] = trace
    os.environ["PYTHONPATH"] = os.pathsep.join([str(_HERE / "pgstore_trace"), str(_HERE.parent),
                                                os.environ.get("PYTHONPATH", "")])
    try:
        for name in (db, state_db):
            sh(["psql", PG + " dbname=postgres", "-Xqc", f"CREATE DATABASE {name}"])
        sh(["pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-U", "postgres", db])
        state = f"postgresql://postgres@127.0.0.1:5432/{state_db}"
        gws = [pn.gateway(work, f"node{i}", state, token, db) for i in range(a.nodes)]
        try:
            tps, lat = pn.pgbench_many([p for _, p in gws], 8, "bench", db, a.seconds, env)
        finally:
            pn.stop([g for g, _ in gws])
        print(f"{a.nodes} node(s): {tps:,.0f} TPS {lat:.3f} ms, load {os.getloadavg()[0]:.1f}")
        for f in sorted(glob.glob(trace + ".*")):
            d = json.load(open(f))
            print(f"node pid {f.rsplit('.', 1)[1]}: {d['batches']} batches, {d['events']} events,"
                  f" {d['events'] / max(d['batches'], 1):.1f} a batch; writer idle between batches"
                  f" {d['gap_mean_ms']} ms on average")
            for k, v in sorted(d["stats"].items(), key=lambda kv: -kv[1]["total_s"]):
                print(f"   {k:<36} n={v['n']:<7} total={v['total_s']:7.2f}s mean={v['mean_ms']:7.3f}ms"
                      f" max={v['max_ms']:7.1f}ms")
    finally:
        for name in (db, state_db):
            subprocess.run(["psql", PG + " dbname=postgres", "-Xqc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
