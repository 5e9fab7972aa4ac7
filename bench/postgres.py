#!/usr/bin/env python3
"""PostgreSQL: the same load directly, through hoopy, and through pgbouncer.

    python3 bench/postgres.py [--seconds 10] [--rows 1000000] [--idle 1000] [--only rows] [--rounds N]

Needs the local PostgreSQL on 127.0.0.1:5432 (trust for user postgres),
pgbench and psql, pgbouncer (apt), and root to run pgbouncer as postgres.
Prints each figure and its ratio to direct. With ``--rounds N`` the pgbench runs (direct, pgbouncer,
the floor, hoopy, one after another) are repeated N times and the median of each ratio is printed too:
on a machine shared with others, one round can move by 2x.
"""
from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds http.py and friends: keep them from shadowing the stdlib.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse
import hashlib
import os
import re
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

from hoopy.identity import ScramVerifier, new_token  # noqa: E402

PG = "host=127.0.0.1 port=5432 user=postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if r.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{r.stderr[-2000:]}")
    return r


def pgbench(port, user, db, seconds, env, clients=8):
    """(TPS, average latency in ms)."""
    out = sh(["pgbench", "-n", "-S", "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds), "-h", "127.0.0.1",
              "-p", str(port), "-U", user, db], env=env).stdout
    return (float(re.search(r"tps = ([0-9.]+)", out).group(1)),
            float(re.search(r"latency average = ([0-9.]+) ms", out).group(1)))


def bulk(port, user, db, rows, env, sql=None):
    sql = sql or (f"SELECT g, 'user' || g || '@example.com' AS email, md5(g::text) AS h "
                  f"FROM generate_series(1, {rows}) g")
    start = time.monotonic()
    # A cursor-less SELECT read fully; psql writes it to /dev/null.
    sh(["psql", f"host=127.0.0.1 port={port} user={user} dbname={db}", "-XAtq", "-o", "/dev/null", "-c", sql],
       env=env)
    return rows / (time.monotonic() - start)


def rss_kib(pid) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8, help="pgbench clients (the target is set for 8)")
    ap.add_argument("--only", choices=["rows"], help="rows: only the bulk reads (no pgbench, pgbouncer, idle)")
    ap.add_argument("--rounds", type=int, default=1, help="pgbench rounds; the median ratios are printed")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hoopy-bench-pg-"))
    os.chmod(work, 0o755)
    db = f"hoopy_bench_{secrets.token_hex(3)}"
    token = new_token()
    hp, hpm, hpb, bp, admin, rp = free_port(), free_port(), free_port(), free_port(), free_port(), free_port()
    procs = []
    try:
        sh(["psql", PG + " dbname=postgres", "-Xqc", f"CREATE DATABASE {db}"])
        if a.only is None:
            sh(["pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-U", "postgres", db])

        # pgbouncer as postgres (it refuses root): transaction pooling, trust.
        (work / "userlist.txt").write_text('"postgres" ""\n')
        (work / "pgbouncer.ini").write_text(
            f"[databases]\n{db} = host=127.0.0.1 port=5432 dbname={db}\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {bp}\nauth_type = trust\n"
            f"auth_file = {work}/userlist.txt\npool_mode = transaction\nmax_client_conn = {a.idle + 200}\n"
            f"default_pool_size = 20\nunix_socket_dir =\n"
            "ignore_startup_parameters = extra_float_digits,options\n")
        subprocess.run(["chown", "-R", "postgres", str(work)], check=False)
        if a.only is None:
            bouncer = subprocess.Popen(["su", "postgres", "-s", "/bin/sh", "-c",
                                        f"exec pgbouncer -q {work}/pgbouncer.ini"])
            time.sleep(1)
            procs.append(bouncer)

        sha = hashlib.sha256(token.encode()).hexdigest()
        common = f'upstream_user = "postgres"\nupstream_database = "{db}"\nupstream_tls = "disable"\n'
        (work / "hoopy.toml").write_text(f"""
[gateway]
state = "hoopy.db"
recordings = "recordings"
admin_listen = "tcp:{admin}:interface=127.0.0.1"

[identities.bench]
kind = "agent"
token_sha256 = "{sha}"
token_scram = "{ScramVerifier.make(token)}"

[connections.direct]
type = "postgres"
listen = "tcp:{hp}:interface=127.0.0.1"
upstream = "tcp:host=127.0.0.1:port=5432"
{common}
[connections.masked]
type = "postgres"
listen = "tcp:{hpm}:interface=127.0.0.1"
upstream = "tcp:host=127.0.0.1:port=5432"
{common}
[connections.pooled]
type = "postgres"
listen = "tcp:{hpb}:interface=127.0.0.1"
upstream = "tcp:host=127.0.0.1:port={bp}"
{common}
[[grants]]
identity = "bench"
connection = "direct"
allow = ["read"]
[[grants]]
identity = "bench"
connection = "masked"
allow = ["read"]
[[grants]]
identity = "bench"
connection = "pooled"
allow = ["read"]

[[masking]]
connection = "masked"
patterns = ["email"]
""")
        twistd = shutil.which("twistd", path=str(Path(sys.executable).parent)) or "twistd"
        gw = subprocess.Popen([twistd, "-n", "--pidfile=", "hoopy", "-c", "hoopy.toml"], cwd=work,
                              stdout=open(work / "twistd.log", "wb"), stderr=subprocess.STDOUT)
        procs.append(gw)
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        env = {**os.environ, "PGPASSWORD": token}
        penv = {**os.environ, "PGPASSWORD": ""}

        results = []

        def report(name, direct, hoopy, unit, extra=None):
            line = f"{name:<34} direct {direct:>12,.0f} {unit}   hoopy {hoopy:>12,.0f} {unit}   " \
                   f"ratio {hoopy / direct:.2f}"
            if extra:
                line += "   " + extra
            print(line, flush=True)
            results.append(line)

        # The floor: a bare byte relay on hoopy's reactor, immediate sends (bench/relay.py).
        if a.only is None:
            relay = subprocess.Popen([sys.executable, str(_HERE / "relay.py"), str(rp), "5432"])
            procs.append(relay)
            time.sleep(1)
        for clients in sorted({a.clients, 1}, reverse=True) if a.only is None else ():
            ratios, added = [], []
            for r in range(a.rounds):
                d, dl = pgbench(5432, "postgres", db, a.seconds, penv, clients)
                b, bl = pgbench(bp, "postgres", db, a.seconds, penv, clients)
                f, fl = pgbench(rp, "postgres", db, a.seconds, penv, clients)
                h, hl = pgbench(hp, "bench", db, a.seconds, env, clients)
                round_ = f" [round {r + 1} of {a.rounds}]" if a.rounds > 1 else ""
                report(f"pgbench -S, {clients} client(s) (TPS)", d, h, "tps",
                       f"pgbouncer {b:,.0f}, floor {f:,.0f}; hoopy/pgbouncer {h / b:.2f}, hoopy/floor {h / f:.2f}"
                       + round_)
                print(f"    latency a statement: direct {dl:.3f} ms, pgbouncer {bl:.3f}, floor {fl:.3f}, hoopy {hl:.3f} "
                      f"(hoopy adds {hl - dl:+.3f} ms to direct, {hl - fl:+.3f} to the floor)", flush=True)
                ratios.append(h / f)
                added.append(hl - dl)
            if a.rounds > 1:
                line = (f"pgbench -S, {clients} client(s): median of {a.rounds} rounds: hoopy/floor "
                        f"{statistics.median(ratios):.2f} ({', '.join(f'{x:.2f}' for x in ratios)}); hoopy adds "
                        f"{statistics.median(added):+.3f} ms to direct ({', '.join(f'{x:+.3f}' for x in added)})")
                print(line, flush=True)
                results.append(line)

        d = bulk(5432, "postgres", db, a.rows, penv)
        h = bulk(hp, "bench", db, a.rows, env)
        report(f"{a.rows:,} rows, no rule hit", d, h, "rows/s")
        hm = bulk(hpm, "bench", db, a.rows, env)
        report(f"{a.rows:,} rows, email on every row", d, hm, "rows/s")
        if a.only == "rows":
            return

        import psycopg

        base = rss_kib(gw.pid)
        conns = []
        for i in range(a.idle):
            conns.append(psycopg.connect(f"host=127.0.0.1 port={hpb} user=bench password={token} dbname={db}",
                                         autocommit=True))
        time.sleep(1)
        grown = rss_kib(gw.pid) - base
        for c in conns:
            c.close()
        print(f"{a.idle} idle connections through hoopy (upstream pgbouncer): gateway RSS +{grown:,} KiB, "
              f"{grown / a.idle:.1f} KiB per connection", flush=True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        subprocess.run(["psql", PG + " dbname=postgres", "-Xqc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"],
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
