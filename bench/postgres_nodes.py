#!/usr/bin/env python3
"""PostgreSQL past one core: several gateway nodes sharing a ``postgresql://`` state.

    python3 bench/postgres_nodes.py [--seconds 10] [--nodes 2] [--clients 8]

One run: the bare relay (the floor), one gateway on the embedded SQLite state, one gateway on a
``postgresql://`` state, then ``--nodes`` gateways on that same state, each with its own listener and
its share of the clients (pgbench runs once per node at the same time; the TPS are summed). This is
ARCHITECTURE's "Scale" (several nodes behind a TCP balancer) measured without the balancer.
Needs what bench/postgres.py needs (not pgbouncer).
"""
from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import urllib.request

from hoopy.identity import ScramVerifier, new_token  # noqa: E402

sys.path.insert(0, str(_HERE))
from postgres import PG, free_port, sh  # noqa: E402

sys.path.pop(0)


def pgbench_many(ports, clients, user, db, seconds, env):
    """pgbench -S against each port at once, ``clients`` split among them: summed TPS, mean latency."""
    share = [clients // len(ports) + (1 if i < clients % len(ports) else 0) for i in range(len(ports))]
    runs = [subprocess.Popen(["pgbench", "-n", "-S", "-c", str(c), "-j", str(min(c, 2)), "-T", str(seconds),
                              "-h", "127.0.0.1", "-p", str(p), "-U", user, db], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for p, c in zip(ports, share) if c]
    tps, lat = 0.0, []
    for r in runs:
        out, err = r.communicate()
        if r.returncode:
            raise SystemExit(f"pgbench failed:\n{err[-2000:]}")
        tps += float(re.search(r"tps = ([0-9.]+)", out).group(1))
        lat.append(float(re.search(r"latency average = ([0-9.]+) ms", out).group(1)))
    return tps, sum(lat) / len(lat)


def gateway(work: Path, name: str, state: str, token: str, db: str):
    """A gateway in its own folder: (process, listen port)."""
    folder = work / name
    folder.mkdir()
    port, admin = free_port(), free_port()
    sha = hashlib.sha256(token.encode()).hexdigest()
    (folder / "hoopy.toml").write_text(f"""
[gateway]
name = "{name}"
state = "{state}"
recordings = "recordings"
admin_listen = "tcp:{admin}:interface=127.0.0.1"

[identities.bench]
kind = "agent"
token_sha256 = "{sha}"
token_scram = "{ScramVerifier.make(token)}"

[connections.direct]
type = "postgres"
listen = "tcp:{port}:interface=127.0.0.1"
upstream = "tcp:host=127.0.0.1:port=5432"
upstream_user = "postgres"
upstream_database = "{db}"
upstream_tls = "disable"

[[grants]]
identity = "bench"
connection = "direct"
allow = ["read"]
""")
    twistd = shutil.which("twistd", path=str(Path(sys.executable).parent)) or "twistd"
    gw = subprocess.Popen([twistd, "-n", "--pidfile=", "hoopy", "-c", "hoopy.toml"], cwd=folder,
                          stdout=open(folder / "twistd.log", "wb"), stderr=subprocess.STDOUT)
    for _ in range(150):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/health", timeout=1)
            return gw, port
        except OSError:
            if gw.poll() is not None:
                raise SystemExit(f"gateway {name} did not start:\n{(folder / 'twistd.log').read_text()[-2000:]}")
            time.sleep(0.1)
    raise SystemExit(f"gateway {name} did not answer /health")


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--clients", type=int, default=8)
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hoopy-bench-nodes-"))
    tag = secrets.token_hex(3)
    db, state_db = f"hoopy_bench_{tag}", f"hoopy_bench_state_{tag}"
    token = new_token()
    env = {**os.environ, "PGPASSWORD": token}
    penv = {**os.environ, "PGPASSWORD": ""}
    procs = []
    try:
        sh(["psql", PG + " dbname=postgres", "-Xqc", f"CREATE DATABASE {db}"])
        sh(["psql", PG + " dbname=postgres", "-Xqc", f"CREATE DATABASE {state_db}"])
        sh(["pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-U", "postgres", db])
        state = f"postgresql://postgres@127.0.0.1:5432/{state_db}"
        rp = free_port()
        relay = subprocess.Popen([sys.executable, str(_HERE / "relay.py"), str(rp), "5432"])
        procs.append(relay)
        time.sleep(1)

        def line(name, tps, lat, floor):
            print(f"{name:<44} {tps:>9,.0f} TPS  {lat:.3f} ms   of the floor {tps / floor:.2f}", flush=True)

        d, dl = pgbench_many([5432], a.clients, "postgres", db, a.seconds, penv)
        f, fl = pgbench_many([rp], a.clients, "postgres", db, a.seconds, penv)
        line(f"direct, -c {a.clients}", d, dl, f)
        line("the floor (bare relay)", f, fl, f)

        gw, port = gateway(work, "sqlite", "hoopy.db", token, db)
        s, sl = pgbench_many([port], a.clients, "bench", db, a.seconds, env)
        stop([gw])
        line("hoopy, one node, SQLite state", s, sl, f)

        gw, port = gateway(work, "pg1", state, token, db)
        p1, p1l = pgbench_many([port], a.clients, "bench", db, a.seconds, env)
        stop([gw])
        line("hoopy, one node, postgresql:// state", p1, p1l, f)

        nodes = [gateway(work, f"node{i}", state, token, db) for i in range(a.nodes)]
        try:
            pn, pnl = pgbench_many([port for _, port in nodes], a.clients, "bench", db, a.seconds, env)
        finally:
            stop([g for g, _ in nodes])
        line(f"hoopy, {a.nodes} nodes, postgresql:// state", pn, pnl, f)
        print(f"load average after: {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        stop(procs)
        for name in (db, state_db):
            subprocess.run(["psql", PG + " dbname=postgres", "-Xqc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                           capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
