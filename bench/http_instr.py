#!/usr/bin/env python3
"""Instructions (callgrind) and CPU a small GET: a real ``twistd -n hoopy`` and the floor, counted alike.

    python3 bench/http_instr.py [--requests 600] [--clients 1] [--only hoopy|floor] [--cpu [--cprofile|--profile]]

The HTTP twin of bench/pg_instr.py. A loaded machine moves wall-clock figures a lot and instruction
counts hardly at all, so this runs the gateway (the small-GET connection of bench/http.py: a grant,
an injected upstream credential, events durable in SQLite as always) and the floor
(bench/http_floor.py) under ``valgrind --tool=callgrind``, warms each, zeroes the counters, sends
``--requests`` small GETs on ``--clients`` keep-alive connections and reads the instructions the
process executed (all its threads, reactor's and writer's apart) divided by the requests.
``--cpu``: without valgrind, user+system CPU microseconds a request instead (from /proc).
"""
from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/http.py is not the stdlib's
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import hashlib  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from hoopy.identity import new_token  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_http", _HERE / "http.py")
bench_http = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_http)  # type: ignore[union-attr]
free_port, wait_port, cpu_seconds = bench_http.free_port, bench_http.wait_port, bench_http.cpu_seconds


def get_many(port: int, n: int, token: str | None):
    """``n`` small GETs one after another on one keep-alive connection; each answer read whole."""
    auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    req = b"GET /small.json HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"User-Agent: bench\r\nAccept: */*\r\n\r\n"
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    try:
        for _ in range(n):
            s.sendall(req)
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    head = buf[:end].lower()
                    if not head.startswith(b"http/1.1 200"):
                        raise SystemExit(f"not a 200: {buf[:300]!r}")
                    i = head.find(b"content-length:")
                    need = end + 4 + int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None])
                    if len(buf) >= need:
                        buf = buf[need:]
                        break
                data = s.recv(65536)
                if not data:
                    raise SystemExit("connection closed")
                buf += data
    finally:
        s.close()


def load(port: int, n: int, clients: int, token: str | None):
    threads = [threading.Thread(target=get_many, args=(port, n // clients, token)) for _ in range(clients)]
    t = time.monotonic()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return n // clients * clients / (time.monotonic() - t)


def measure(name, cmd, port, token, a, work):
    out = work / f"cg.{name}"
    if a.cprofile and name == "hoopy":
        cmd = cmd[:2] + ["--profile", str(work / "hoopy.prof"), "--profiler", "cprofile", "--savestats"] + cmd[2:]
    if a.cpu:
        proc = subprocess.Popen(cmd, cwd=work, stdout=open(work / f"{name}.log", "wb"), stderr=subprocess.STDOUT)
    else:
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
                                 "--dump-instr=no", "--compress-strings=no", "--separate-threads=yes"] + cmd, cwd=work,
                                stdout=open(work / f"{name}.log", "wb"), stderr=subprocess.STDOUT)
    n = a.requests // a.clients * a.clients
    try:
        wait_port(port, 600)
        load(port, max(a.clients * 20, n // 4), a.clients, token)  # warm: caches, pools
        if a.cpu:
            c0 = cpu_seconds(proc.pid)
            spy = None
            if a.strace:
                spy = subprocess.Popen(["strace", "-c", "-f", "-p", str(proc.pid), "-o", str(work / f"{name}.strace")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
                c0 = cpu_seconds(proc.pid)
            if a.profile:
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--rate", "1000", "--format",
                                        "raw", "--output", str(work / f"{name}.spy"), "--threads", "--gil"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
                c0 = cpu_seconds(proc.pid)
            rps = load(port, n, a.clients, token)
            per = (cpu_seconds(proc.pid) - c0) / n * 1e6
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
                if a.strace:
                    print(f"## {name}: system calls a request (strace -c -f)")
                    for line in (work / f"{name}.strace").read_text().splitlines()[2:]:
                        f = line.split()
                        if len(f) >= 5 and f[3].isdigit():
                            print(f"  {int(f[3]) / n:6.2f}  {f[-1]}  ({f[1]} s total)")
                else:
                    bench_pg_top(work / f"{name}.spy")
            times = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            print(f"   {name}: user {int(times[11]) / os.sysconf('SC_CLK_TCK'):.2f} s, system "
                  f"{int(times[12]) / os.sysconf('SC_CLK_TCK'):.2f} s since it started")
            print(f"{name:6} {per:10.1f} us CPU a request ({n} small GETs on {a.clients} connection(s); "
                  f"{rps:,.0f} req/s, load {os.getloadavg()[0]:.1f})", flush=True)
            return per
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
        load(port, n, a.clients, token)
        subprocess.run(["callgrind_control", "-d", "measured", str(proc.pid)], capture_output=True, check=True)
        time.sleep(1)
        total, by_thread, dumps = _pg_instr().callgrind_counts(out, proc.pid)
        per = total / n
        # Thread 01 is the reactor's; the others are the store's writer and the thread pool.
        print("   by thread: " + ", ".join(f"{t} {k / n:,.0f}" for t, k in sorted(by_thread.items())))
        print(f"{name:6} {per:12,.0f} instructions a request ({n} small GETs on {a.clients} connection(s); "
              f"{len(dumps)} dump(s); load {os.getloadavg()[0]:.1f})", flush=True)
        if a.keep:
            print(f"   callgrind output: {dumps}")
        return per
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if a.cprofile and (work / "hoopy.prof").exists():
            cprofile_top(work / "hoopy.prof", n + max(a.clients * 20, n // 4))


def ab(a, work, token):
    """Two trees' gateways side by side, the load alternating between them in rounds: a machine
    whose load drifts (other processes) moves both alike, so the ratio holds where the figures do not."""
    procs, ports = [], []
    for tree in a.ab:
        port, admin = free_port(), free_port()
        cfg = work / f"ab{len(procs)}"
        cfg.mkdir()
        (cfg / "hoopy.toml").write_text((work / "hoopy.toml").read_text().replace(f"tcp:{a.hp}:", f"tcp:{port}:")
                                        .replace(f"tcp:{a.admin}:", f"tcp:{admin}:"))
        twistd = shutil.which("twistd") or "twistd"
        procs.append(subprocess.Popen([sys.executable, twistd, "-n", "--pidfile=", "hoopy", "-c", "hoopy.toml"],
                                      cwd=cfg, env={**os.environ, "PYTHONPATH": str(Path(tree).resolve())},
                                      stdout=open(cfg / "twistd.log", "wb"), stderr=subprocess.STDOUT))
        ports.append(port)
    try:
        for port in ports:
            wait_port(port, 60)
            load(port, a.requests // 4, a.clients, token)
        cpu = [0.0, 0.0]
        for r in range(a.rounds):
            for i, (proc, port) in enumerate(zip(procs, ports)):
                c0 = cpu_seconds(proc.pid)
                load(port, a.requests, a.clients, token)
                cpu[i] += cpu_seconds(proc.pid) - c0
        n = a.requests // a.clients * a.clients * a.rounds
        for tree, c in zip(a.ab, cpu):
            print(f"{tree}: {c / n * 1e6:8.1f} us CPU a request ({n} small GETs in {a.rounds} rounds)")
        print(f"second/first: {cpu[1] / cpu[0]:.3f} (load {os.getloadavg()[0]:.1f})")
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)


def _pg_instr():
    """bench/pg_instr.py, whose callgrind, py-spy and cProfile readers this script shares."""
    spec = importlib.util.spec_from_file_location("bench_pg_instr", _HERE / "pg_instr.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def bench_pg_top(path: Path):
    _pg_instr().top(path)


def cprofile_top(path: Path, requests: int, n: int = 40):
    _pg_instr().cprofile_top(path, requests, n, unit="request")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--only", choices=("hoopy", "floor"))
    ap.add_argument("--cpu", action="store_true", help="CPU time from /proc instead of callgrind")
    ap.add_argument("--profile", action="store_true", help="with --cpu: py-spy the process, print the top")
    ap.add_argument("--strace", action="store_true", help="with --cpu: count system calls a request")
    ap.add_argument("--cprofile", action="store_true", help="with --cpu: cProfile the gateway's reactor thread")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (callgrind files)")
    ap.add_argument("--ab", nargs=2, metavar="TREE", help="with --cpu: two source trees' gateways, alternately")
    ap.add_argument("--rounds", type=int, default=6, help="with --ab: rounds of --requests each")
    a = ap.parse_args()
    for tool in ("nginx", "valgrind"):
        if not shutil.which(tool):
            sys.exit(f"bench/http_instr.py needs {tool} on PATH")
    work = Path(tempfile.mkdtemp(prefix="hoopy-http-instr-"))
    work.chmod(0o755)  # nginx workers run as an unprivileged user
    (work / "www").mkdir()
    (work / "www" / "small.json").write_text(json.dumps({"id": 42, "name": "Ada", "plan": "pro", "active": True}))
    up, ngx, hp, admin, fp = (free_port() for _ in range(5))
    token = new_token()
    sha = hashlib.sha256(token.encode()).hexdigest()
    (work / "hoopy.toml").write_text(f"""
[gateway]
state = "hoopy.db"
admin_listen = "tcp:{admin}:interface=127.0.0.1"

[identities.bench]
token_sha256 = "{sha}"

[connections.api]
type = "http"
listen = "tcp:{hp}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up}"
upstream_headers = {{ Authorization = "env:BENCH_UPSTREAM_AUTH" }}

[[grants]]
identity = "bench"
connection = "api"
allow = ["GET /**"]
""")
    os.environ["BENCH_UPSTREAM_AUTH"] = "Bearer bench-upstream"
    nginx = subprocess.Popen(["nginx", "-c", str(bench_http.nginx_conf(work, up, ngx)), "-p", str(work)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(up)
        if a.ab:
            a.hp, a.admin = hp, admin
            ab(a, work, token)
            return
        twistd = os.environ.get("HOOPY_TWISTD") or shutil.which("twistd", path=str(Path(sys.executable).parent)) \
            or "twistd"
        results = {}
        if a.only in (None, "floor"):
            results["floor"] = measure("floor", [sys.executable, "-P", str(_HERE / "http_floor.py"), str(fp), str(up)],
                                       fp, None, a, work)
        if a.only in (None, "hoopy"):
            results["hoopy"] = measure("hoopy", [sys.executable, twistd, "-n", "--pidfile=", "hoopy", "-c",
                                                 "hoopy.toml"], hp, token, a, work)
        if len(results) == 2:
            print(f"hoopy/floor: {results['hoopy'] / results['floor']:.2f}x the floor's "
                  f"{'CPU' if a.cpu else 'instructions'} a request")
    finally:
        nginx.send_signal(signal.SIGTERM)
        nginx.wait(20)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
