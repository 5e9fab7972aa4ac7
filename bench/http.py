"""HTTP gateway benchmark: the same load directly, through hoopy and through nginx.

    python bench/http.py [--duration 10] [--connections 32] [--threads 2] [--rounds N]

Starts nginx (apt nginx-light) twice: as the upstream (static files: a small
JSON document, a 256 MiB file, a 1 MiB JSON document full of e-mail
addresses) and as a reverse proxy in front of it, the floor (bench/http_floor.py:
a bare twisted.web proxy with a raw keep-alive client, on the same reactor), plus a
real ``twistd -n hoopy`` with one http connection to the same upstream. Then:

  1. wrk: small JSON GET, keep-alive; requests/s, p50/p99, the CPU seconds each
     Python process spent per request (robust on a shared machine), and the ratios
     (hoopy/floor is the target's: at least 0.6);
  2. the same at one connection: latency added by hoopy (target: at most +0.5 ms);
  3. curl: a 256 MiB download, MB/s and the gateway's RSS sampled during it;
  4. wrk: the 1 MiB JSON through a connection that masks e-mail addresses (target:
     at least 60 MB/s); ``--only masked`` runs this alone (HOOPY_JSONMASK=python in the
     environment: the gateway without hoopy/http/_jsonmask.c).

With ``--rounds N``, 1. and 2. are repeated N times and the median ratios printed too (one round on a
shared machine can move by 2x).

Nothing here is a test: it prints numbers for docs/performance.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def nginx_conf(work: Path, up_port: int, proxy_port: int) -> Path:
    conf = work / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/json;
    types {{ application/json json; application/octet-stream bin; }}
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    fastcgi_temp_path {work}/nginx-fcgi;
    uwsgi_temp_path {work}/nginx-uwsgi;
    scgi_temp_path {work}/nginx-scgi;
    upstream up {{ server 127.0.0.1:{up_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{up_port};
        root {work}/www;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{proxy_port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
""")
    return conf


def wrk(url: str, seconds: int, connections: int, threads: int, token: str | None) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 0.001, "ms": 1, "s": 1000}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    done = re.search(r"(\d+) requests in", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": rps, "p50_ms": pct(50), "p99_ms": pct(99), "non2xx": int(errors.group(1)) if errors else 0,
            "requests": int(done.group(1)) if done else 0, "socket_errors": sum(map(int, sock.groups())) if sock else 0}


def latency(r: dict) -> str:
    """A one-connection p50, or why there is none: wrk prints 0.00us when no request completed
    (a run whose requests all hung until its timeout), which is no latency."""
    if r["requests"] == 0 or r["p50_ms"] == 0:
        return f"(not measured: {r['requests']} requests done, {r['socket_errors']} socket errors)"
    bad = f" ({r['socket_errors']} socket errors, {r['non2xx']} non-2xx)" if r["socket_errors"] or r["non2xx"] else ""
    return f"{r['p50_ms']:.3f} ms{bad}"


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk_cpu(url, seconds, connections, threads, token, pid) -> dict:
    """wrk, and the CPU the process ``pid`` spent per request meanwhile (microseconds)."""
    before = cpu_seconds(pid)
    r = wrk(url, seconds, connections, threads, token)
    r["cpu_us_per_req"] = (cpu_seconds(pid) - before) / max(1.0, r["rps"] * seconds) * 1e6
    return r


def profiled(on: bool, pid: int, out: Path, run):
    """``run()``, with py-spy sampling ``pid`` meanwhile when ``on``; prints the top entries."""
    if not on:
        return run()
    spy = subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
                            "--output", str(out), "--nonblocking", "--threads"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(1)
    try:
        return run()
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)
        top(out)


def top(path: Path, n: int = 30):
    """Self and inclusive shares per function of a py-spy raw (collapsed stacks) file: the reactor
    thread's, then how the samples fall by thread."""
    own: dict = {}
    incl: dict = {}
    threads: dict = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        thread = stack.split(";", 1)[0]
        threads[thread] = threads.get(thread, 0) + int(count)
        if "MainThread" not in thread:
            continue
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in stack.split(";")[1:]]  # the thread name first
        k = int(count)
        total += k
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + k
        for f in set(frames):
            incl[f] = incl.get(f, 0) + k
    everything = sum(threads.values())
    print("## py-spy samples by thread: " + ", ".join(f"{t.split(' ')[-1].strip(chr(34))} {100 * k / everything:.0f}%"
                                                      for t, k in sorted(threads.items(), key=lambda kv: -kv[1])))
    print(f"## the reactor thread, {total} samples: top {n} by own time (inclusive in brackets)")
    for f, k in sorted(own.items(), key=lambda kv: -kv[1])[:n]:
        print(f"  {100 * k / total:5.1f}%  [{100 * incl[f] / total:5.1f}%]  {f}")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def download(url: str, token: str | None, watch_pid: int | None = None) -> dict:
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{speed_download}"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    p = subprocess.Popen(cmd + [url], stdout=subprocess.PIPE, text=True)
    samples = []
    while p.poll() is None:
        if watch_pid:
            samples.append(rss_mib(watch_pid))
        time.sleep(0.05)
    code, size, speed = p.stdout.read().split()
    out = {"status": int(code), "bytes": int(size), "MBps": float(speed) / 1e6}
    if samples:
        out["rss_min_mib"], out["rss_max_mib"] = min(samples), max(samples)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--only", choices=["masked"], help="only the masked 1 MiB JSON run (4.)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat the small-GET and one-connection runs; the median ratios are printed too")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the gateway during the small-GET run and the masked run; print the top entries")
    args = ap.parse_args()
    for tool in ("wrk", "nginx", "curl", "twistd"):
        if not shutil.which(tool):
            sys.exit(f"bench/http.py needs {tool} on PATH")

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from hoopy.identity import new_token

    work = Path(tempfile.mkdtemp(prefix="hoopy-bench-http-"))
    work.chmod(0o755)  # nginx workers run as an unprivileged user
    www = work / "www"
    www.mkdir()
    (www / "small.json").write_text(json.dumps({"id": 42, "name": "Ada", "plan": "pro", "active": True}))
    with open(www / "big.bin", "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(256):
            f.write(block)
    rows = [{"id": i, "name": f"customer {i}", "email": f"user{i}@example.com", "note": "x" * 40}
            for i in range(1 << 20)]
    doc, n = [], 0
    for r in rows:  # about 1 MiB of JSON
        s = json.dumps(r)
        n += len(s) + 1
        doc.append(r)
        if n >= 1 << 20:
            break
    (www / "masked.json").write_text(json.dumps({"customers": doc}))

    up_port, ngx_port, hoopy_port, masked_port, admin_port, floor_port = (free_port() for _ in range(6))
    token = new_token()
    sha = hashlib.sha256(token.encode()).hexdigest()
    (work / "hoopy.toml").write_text(f"""
[gateway]
state = "hoopy.db"
admin_listen = "tcp:{admin_port}:interface=127.0.0.1"

[identities.bench]
token_sha256 = "{sha}"

[connections.api]
type = "http"
listen = "tcp:{hoopy_port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up_port}"
upstream_headers = {{ Authorization = "env:BENCH_UPSTREAM_AUTH" }}

[connections.masked]
type = "http"
listen = "tcp:{masked_port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up_port}"

[[grants]]
identity = "bench"
connection = "api"
allow = ["GET /**"]

[[grants]]
identity = "bench"
connection = "masked"
allow = ["GET /**"]

[[masking]]
connection = "masked"
fields = ["ssn"]
patterns = ["email"]
""")
    procs = []
    try:
        procs.append(subprocess.Popen(["nginx", "-c", str(nginx_conf(work, up_port, ngx_port)), "-p", str(work)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        gw = subprocess.Popen(["twistd", "-n", "--pidfile=", "hoopy", "-c", str(work / "hoopy.toml")], cwd=work,
                              env={**os.environ, "BENCH_UPSTREAM_AUTH": "Bearer bench-upstream"},
                              stdout=open(work / "twistd.log", "wb"), stderr=subprocess.STDOUT)
        procs.append(gw)
        floor = subprocess.Popen([sys.executable, "-P", str(Path(__file__).with_name("http_floor.py")), str(floor_port),
                                  str(up_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(floor)
        for port in (up_port, ngx_port, hoopy_port, masked_port, floor_port):
            wait_port(port)
        print(f"# load average before: {os.getloadavg()[0]:.2f} (2 cores shared with others)")

        d, c, t = args.duration, args.connections, args.threads
        if args.only != "masked":
            print(f"# small JSON GET, wrk -t{t} -c{c} -d{d}s, keep-alive")
            wrk(f"http://127.0.0.1:{hoopy_port}/small.json", 2, c, t, token)  # warm up the pools
            wrk(f"http://127.0.0.1:{floor_port}/small.json", 2, c, t, None)
            small, added = [], []
            for rnd in range(args.rounds):
                if args.rounds > 1:
                    print(f"## round {rnd + 1} of {args.rounds}")
                res = {
                    "direct": wrk(f"http://127.0.0.1:{up_port}/small.json", d, c, t, None),
                    "nginx": wrk(f"http://127.0.0.1:{ngx_port}/small.json", d, c, t, None),
                    "floor": wrk_cpu(f"http://127.0.0.1:{floor_port}/small.json", d, c, t, None, floor.pid),
                    "hoopy": profiled(args.profile, gw.pid, work / "small.prof", lambda: wrk_cpu(
                        f"http://127.0.0.1:{hoopy_port}/small.json", d, c, t, token, gw.pid)),
                }
                print(f"{'path':8} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'CPU us/req':>10}")
                for k, v in res.items():
                    cpu = f"{v['cpu_us_per_req']:10.0f}" if "cpu_us_per_req" in v else f"{'-':>10}"
                    print(f"{k:8} {v['rps']:10.0f} {v['p50_ms']:8.2f} {v['p99_ms']:8.2f} {v['non2xx']:8d} {cpu}")
                h, f = res["hoopy"], res["floor"]
                print(f"hoopy/floor req/s {h['rps'] / f['rps']:.3f} (target >= 0.6); by CPU per request "
                      f"{f['cpu_us_per_req'] / h['cpu_us_per_req']:.3f}; hoopy/direct {h['rps'] / res['direct']['rps']:.3f}; "
                      f"hoopy/nginx {h['rps'] / res['nginx']['rps']:.3f}")
                print("# the same at one connection (latency without queueing)")
                one = {k: wrk(u, max(3, d // 2), 1, 1, tok) for k, u, tok in (
                    ("direct", f"http://127.0.0.1:{up_port}/small.json", None),
                    ("floor", f"http://127.0.0.1:{floor_port}/small.json", None),
                    ("hoopy", f"http://127.0.0.1:{hoopy_port}/small.json", token))}
                od, of, oh = one["direct"], one["floor"], one["hoopy"]
                print(f"direct p50 {latency(od)}, floor p50 {latency(of)}, hoopy p50 {latency(oh)} "
                      f"({od['requests']}, {of['requests']}, {oh['requests']} requests)")
                if od["p50_ms"] and oh["p50_ms"]:
                    print(f"hoopy adds {oh['p50_ms'] - od['p50_ms']:.3f} ms over direct (target <= 0.5)"
                          + (f", {oh['p50_ms'] - of['p50_ms']:.3f} ms over the floor; the floor adds "
                             f"{of['p50_ms'] - od['p50_ms']:.3f} ms over direct" if of["p50_ms"] else "")
                          + f"; hoopy {oh['rps']:.0f} req/s on one connection")
                small.append(h["rps"] / f["rps"])
                if od["p50_ms"] and oh["p50_ms"]:
                    added.append(oh["p50_ms"] - od["p50_ms"])
            if args.rounds > 1:
                print(f"median of {args.rounds} rounds: hoopy/floor req/s {statistics.median(small):.3f} "
                      f"({', '.join(f'{x:.3f}' for x in small)}; target >= 0.6)"
                      + (f"; one connection, hoopy adds {statistics.median(added):.3f} ms over direct "
                         f"({', '.join(f'{x:.3f}' for x in added)}; target <= 0.5)" if added else ""))
            print("# 256 MiB download (curl)")
            dd = download(f"http://127.0.0.1:{up_port}/big.bin", None)
            hd = download(f"http://127.0.0.1:{hoopy_port}/big.bin", token, gw.pid)
            nd = download(f"http://127.0.0.1:{ngx_port}/big.bin", None)
            print(f"direct {dd['MBps']:.0f} MB/s, nginx {nd['MBps']:.0f} MB/s, hoopy {hd['MBps']:.0f} MB/s "
                  f"(ratio {hd['MBps'] / dd['MBps']:.2f}); gateway RSS {hd['rss_min_mib']:.0f}-{hd['rss_max_mib']:.0f} MiB "
                  f"during the transfer; status {hd['status']}, {hd['bytes']} bytes")

        print("# masked 1 MiB JSON (e-mail pattern on every value), wrk -c4")
        size = (www / "masked.json").stat().st_size
        md = wrk(f"http://127.0.0.1:{up_port}/masked.json", max(3, d // 2), 4, 1, None)
        mh = profiled(args.profile, gw.pid, work / "masked.prof", lambda: wrk_cpu(
            f"http://127.0.0.1:{masked_port}/masked.json", max(3, d // 2), 4, 1, token, gw.pid))
        print(f"{size / (1 << 20):.2f} MiB body: direct {md['rps']:.0f} req/s p50 {md['p50_ms']:.1f} ms; "
              f"hoopy masked {mh['rps']:.1f} req/s p50 {mh['p50_ms']:.1f} ms p99 {mh['p99_ms']:.1f} ms "
              f"({mh['rps'] * size / 1e6:.1f} MB/s masked, target >= 60; {mh['cpu_us_per_req'] / 1000:.1f} ms "
              f"of gateway CPU per body: {size / mh['cpu_us_per_req']:.1f} MB per CPU second), non-2xx {mh['non2xx']}")
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")


if __name__ == "__main__":
    main()
