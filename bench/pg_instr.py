#!/usr/bin/env python3
"""Instructions (callgrind) and CPU a statement: hoopy and the floor, counted the same way.

    python3 bench/pg_instr.py [--statements 600] [--clients 1] [--only hoopy|floor] [--cpu]

A loaded machine moves wall-clock figures a lot and instruction counts hardly at all, so this
runs the gateway (a real ``twistd -n hoopy``, one postgres connection, a read grant, events
durable in SQLite as always) and the floor (bench/relay.py) under ``valgrind --tool=callgrind``,
warms each with pgbench -S, zeroes the counters, runs ``pgbench -S -t N`` and reads the
instructions the process executed (all its threads) divided by the statements. ``--cpu``
runs without valgrind and prints user+system CPU microseconds a statement instead (from /proc).
``--strace`` with it counts system calls a statement; ``HOOPY_STRACE="strace -f -tt -T"`` (with
``--keep``) writes a timeline of every call instead, to see where a statement waits.
``--trace`` with it (one client) puts bench/pg_trace_probe.py on the gateway's path and prints where
a statement's time goes, interval by interval, from its bytes in to its reply out.
"""
from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import glob  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from hoopy.identity import ScramVerifier, new_token  # noqa: E402

PG = "host=127.0.0.1 port=5432 user=postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if r.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{r.stdout[-1000:]}\n{r.stderr[-2000:]}")
    return r


def wait_port(port, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_switches(pid: int) -> dict:
    """{thread: (voluntary, involuntary) context switches} of every thread of ``pid``: where two threads
    share one GIL, each hand-off of it is a switch (a cheap, overhead-free count of the ping-pong)."""
    out: dict = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = "reactor" if task.name == str(pid) else f"thread {task.name}"
        try:
            text = (task / "status").read_text()
        except OSError:
            continue
        v = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))
        n = int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", text, re.M).group(1))
        out[name] = (v, n)
    return out


def thread_cpu(pid: int) -> dict:
    """{thread: (user, system) seconds} of every thread of ``pid``."""
    out: dict = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            # Python 3.11 names no OS thread: the main (reactor) thread is the one whose id is the pid.
            name = "reactor" if task.name == str(pid) else f"thread {task.name}"
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        u, s = out.get(name, (0.0, 0.0))
        out[name] = (u + int(fields[11]) / os.sysconf("SC_CLK_TCK"), s + int(fields[12]) / os.sysconf("SC_CLK_TCK"))
    return out


MODE = "simple"  # pgbench -M: simple, extended or prepared (--mode)


def pgbench(port, user, db, n, clients, env):
    """TPS (wall clock: a loaded machine moves it)."""
    out = sh(["pgbench", "-n", "-S", "-M", MODE, "-c", str(clients), "-j", "1", "-t", str(n // clients), "-h", "127.0.0.1",
        "-p", str(port), "-U", user, db], env=env).stdout
    return float(re.search(r"tps = ([0-9.]+)", out).group(1))


def top(path: Path, n: int = 40):
    """Own and inclusive shares per function of a py-spy raw file, busy samples only (not idle
    waits), over all threads; then how the busy samples fall by thread."""
    own: dict = {}
    incl: dict = {}
    threads: dict = {}
    total = 0
    idle = ("select (selectors.py)", "get (queue.py)", "wait (threading.py)", "poll (selectors.py)")
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        parts = stack.split(";")
        frames = [f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  if " (" in f else f for f in parts[1:]]
        if not frames or frames[-1] in idle or frames[-1].startswith("_worker (thread"):
            continue
        k = int(count)
        total += k
        threads[parts[0][-30:]] = threads.get(parts[0][-30:], 0) + k
        own[frames[-1]] = own.get(frames[-1], 0) + k
        for f in set(frames):
            incl[f] = incl.get(f, 0) + k
    print(f"## py-spy: {total} busy samples; by thread: " + ", ".join(
        f"{t} {100 * k / total:.0f}%" for t, k in sorted(threads.items(), key=lambda kv: -kv[1])))
    for f, k in sorted(own.items(), key=lambda kv: -kv[1])[:n]:
        print(f"  {100 * k / total:5.1f}%  [{100 * incl[f] / total:5.1f}%]  {f}")
    print("## top inclusive")
    for f, k in sorted(incl.items(), key=lambda kv: -kv[1])[:n]:
        print(f"  [{100 * k / total:5.1f}%]  {f}")


def measure(name, cmd, port, user, db, a, env, work):
    out = work / f"cg.{name}"
    if a.cprofile and name == "hoopy":
        # twistd's own profiler: it saves the stats when the reactor stops.
        cmd = cmd[:2] + ["--profile", str(work / "hoopy.prof"), "--profiler", "cprofile", "--savestats"] + cmd[2:]
    if a.cpu:
        genv = None
        if a.trace and name == "hoopy":
            probe = work / "probe"
            probe.mkdir(exist_ok=True)
            shutil.copy(_HERE / "pg_trace_probe.py", probe / "sitecustomize.py")
            genv = {**os.environ, "HOOPY_TRACE_OUT": str(work / "trace.txt"),
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(probe), str(_HERE.parent),
                                                                os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen(cmd, cwd=work, env=genv, stdout=open(work / f"{name}.log", "wb"), stderr=subprocess.STDOUT)
    else:
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p",
                                 "--dump-instr=no", "--compress-strings=no", "--separate-threads=yes"] + cmd, cwd=work,
                                stdout=open(work / f"{name}.log", "wb"), stderr=subprocess.STDOUT)
    try:
        wait_port(port)
        pgbench(port, user, db, max(a.clients, a.statements // 4), a.clients, env)  # warm: caches, pools
        if a.cpu:
            c0 = cpu_seconds(proc.pid)
            t0 = thread_cpu(proc.pid)
            w0 = thread_switches(proc.pid)
            spy = None
            if a.strace:
                spy = subprocess.Popen([*os.environ.get("HOOPY_STRACE", "strace -c -f").split(), "-p", str(proc.pid), "-o", str(work / f"{name}.strace")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            if a.profile:
                spy = subprocess.Popen(["py-spy", "record", "--pid", str(proc.pid), "--rate", "1000", "--format",
                                        "raw", "--output", str(work / f"{name}.spy"), "--threads", "--gil"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            if a.trace:
                (work / "trace.txt").unlink(missing_ok=True)  # (the warm-up's)
            tps = pgbench(port, user, db, a.statements, a.clients, env)
            if a.trace and name == "hoopy":
                trace_report(work / "trace.txt")
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(30)
                if a.strace:
                    print(f"## {name}: system calls a statement (strace -c -f)")
                    for line in (work / f"{name}.strace").read_text().splitlines()[2:]:
                        f = line.split()
                        if len(f) >= 5 and f[3].isdigit():
                            print(f"  {int(f[3]) / a.statements:6.2f}  {f[-1]}  ({f[1]} s total)")
                else:
                    top(work / f"{name}.spy")
            per = (cpu_seconds(proc.pid) - c0) / a.statements * 1e6
            t1 = thread_cpu(proc.pid)
            w1 = thread_switches(proc.pid)
            print("   context switches a statement, voluntary + involuntary: " + ", ".join(
                f"{t} {(v - w0.get(t, (0, 0))[0]) / a.statements:.2f} + {(n - w0.get(t, (0, 0))[1]) / a.statements:.2f}"
                for t, (v, n) in sorted(w1.items())))
            print("   by thread (user + system us a statement): " + ", ".join(
                f"{t} {(u - t0.get(t, (0, 0))[0]) / a.statements * 1e6:.0f} + {(s - t0.get(t, (0, 0))[1]) / a.statements * 1e6:.0f}"
                for t, (u, s) in sorted(t1.items())))
            print(f"{name:6} {per:10.1f} us CPU a statement (pgbench -S -M {MODE} -c {a.clients}, {a.statements}; "
                  f"{tps:,.0f} TPS, load {os.getloadavg()[0]:.1f})", flush=True)
            return per
        sh(["callgrind_control", "-z", str(proc.pid)])
        pgbench(port, user, db, a.statements, a.clients, env)
        sh(["callgrind_control", "-d", "measured", str(proc.pid)])
        time.sleep(1)
        total, by_thread, dumps = callgrind_counts(out, proc.pid)
        per = total / a.statements
        # Thread 01 is the reactor's; the others are the store's writer and the thread pool.
        print("   by thread: " + ", ".join(f"{t} {k / a.statements:,.0f}" for t, k in sorted(by_thread.items())))
        print(f"{name:6} {per:12,.0f} instructions a statement (pgbench -S -M {MODE} -c {a.clients}, {a.statements}; "
              f"{len(dumps)} dump(s))", flush=True)
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
            cprofile_top(work / "hoopy.prof", a.statements + max(a.clients, a.statements // 4))


TRACE = ("cin", "app", "wake", "w0", "w1", "back", "dec", "s0", "s1", "fwd", "uin", "s0", "s1", "cout")
TRACE_SAYS = {"cin>app": "client bytes in -> decision appended (parse, judge, event: reactor)",
              "app>wake": "the writer thread woken",
              "wake>w0": "the batch taken, rows built",
              "w0>w1": "INSERT + fsync (SQLite), or the event log record",
              "w1>back": "file check, hand-back to the reactor",
              "back>dec": "the batch's Deferreds fired",
              "dec>s0": "the verdict at the connection",
              "s0>s1": "send to upstream (the system call; the GIL back after it)",
              "s1>fwd": "rest of the verdict",
              "fwd>uin": "upstream's answer (PostgreSQL, loopback)",
              "uin>s0": "the reply read and matched",
              "s0>s1'": "send to the client",
              "s1>cout": "rest of the reply (its outcome appended)"}


def trace_report(path: Path) -> None:
    """The intervals of complete statements (one client: each is TRACE in order, other marks
    between them ignored), median / mean / p90 microseconds."""
    import statistics

    if not path.exists():
        print("   (no trace written)")
        return
    cycles, cur = [], None
    for line in path.read_text().splitlines():
        t, tag = line.split()
        if tag == "cin":
            cur = [int(t)]
        elif cur is not None and tag == TRACE[len(cur)]:
            cur.append(int(t))
            if len(cur) == len(TRACE):
                cycles.append(cur)
                cur = None
    if not cycles:
        print("   (no complete statement in the trace)")
        return
    print(f"## where a statement's time goes ({len(cycles)} statements; us: median / mean / p90)")
    seen = set()
    for i in range(1, len(TRACE)):
        key = f"{TRACE[i - 1]}>{TRACE[i]}"
        if key in seen:
            key += "'"
        seen.add(key)
        v = sorted((c[i] - c[i - 1]) / 1000 for c in cycles)
        print(f"  {key:10} {statistics.median(v):7.1f} {statistics.mean(v):7.1f} {v[len(v) * 9 // 10]:7.1f}"
              f"  {TRACE_SAYS.get(key, '')}")
    v = sorted((c[-1] - c[0]) / 1000 for c in cycles)
    print(f"  {'cin>cout':10} {statistics.median(v):7.1f} {statistics.mean(v):7.1f} {v[len(v) * 9 // 10]:7.1f}"
          f"  in the gateway, a statement")


def callgrind_counts(out, pid: int):
    """The instructions of the dumps callgrind_control wrote as "measured" for ``pid``: (all threads,
    {thread: count}, the dump files)."""
    dumps = [f for f in glob.glob(f"{out}.{pid}*") if "measured" in open(f).read(4000)]
    total = 0
    by_thread = {}
    for f in dumps:
        for line in open(f):
            if line.startswith(("summary:", "totals:")):
                total += int(line.split()[1])
                by_thread[f.rsplit("-", 1)[-1]] = int(line.split()[1])
                break
    return total, by_thread, dumps


def cprofile_top(path: Path, statements: int, n: int = 45, unit: str = "statement"):
    """The reactor thread's functions (cProfile sees the main thread only), microseconds a
    statement (or ``unit``; warm-up included), by own time then by inclusive time."""
    import pstats

    st = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    rows = [(tt / statements * 1e6, ct / statements * 1e6, nc / statements, f"{Path(f).name}:{ln} {fn}")
            for (f, ln, fn), (cc, nc, tt, ct, callers) in st.items()]
    print(f"## cProfile (reactor thread), us a {unit}: own [inclusive] calls")
    for own, incl, calls, what in sorted(rows, key=lambda r: -r[0])[:n]:
        print(f"  {own:6.2f} [{incl:7.2f}] {calls:5.1f}  {what}")
    print("## by inclusive")
    for own, incl, calls, what in sorted(rows, key=lambda r: -r[1])[:n]:
        print(f"  [{incl:7.2f}] {own:6.2f} {calls:5.1f}  {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--statements", type=int, default=600)
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--only", choices=("hoopy", "floor"))
    ap.add_argument("--cpu", action="store_true", help="CPU time from /proc instead of callgrind")
    ap.add_argument("--strace", action="store_true", help="with --cpu: count system calls a statement")
    ap.add_argument("--profile", action="store_true", help="with --cpu: py-spy each process, print the top")
    ap.add_argument("--cprofile", action="store_true", help="with --cpu: cProfile the gateway's reactor thread")
    ap.add_argument("--trace", action="store_true",
                    help="with --cpu and one client: where a statement's time goes (bench/pg_trace_probe.py)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (callgrind files)")
    ap.add_argument("--masking", action="store_true", help="an email pattern rule on the connection")
    ap.add_argument("--mode", choices=("simple", "extended", "prepared"), default="simple",
                    help="pgbench's protocol (-M)")
    a = ap.parse_args()
    global MODE
    MODE = a.mode
    work = Path(tempfile.mkdtemp(prefix="hoopy-pg-instr-"))
    db = f"hoopy_instr_{secrets.token_hex(3)}"
    token = new_token()
    hp, admin, rp = free_port(), free_port(), free_port()
    try:
        sh(["psql", PG + " dbname=postgres", "-Xqc", f"CREATE DATABASE {db}"])
        sh(["pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-U", "postgres", db])
        sha = hashlib.sha256(token.encode()).hexdigest()
        masking = '[[masking]]\nconnection = "direct"\npatterns = ["email"]\n' if a.masking else ""
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
upstream_user = "postgres"
upstream_database = "{db}"
upstream_tls = "disable"

[[grants]]
identity = "bench"
connection = "direct"
allow = ["read"]
{masking}""")
        twistd = os.environ.get("HOOPY_TWISTD") or shutil.which("twistd", path=str(Path(sys.executable).parent)) \
            or "twistd"
        results = {}
        if a.only in (None, "floor"):
            results["floor"] = measure("floor", [sys.executable, str(_HERE / "relay.py"), str(rp), "5432"], rp,
                                       "postgres", db, a, {**os.environ, "PGPASSWORD": ""}, work)
        if a.only in (None, "hoopy"):
            results["hoopy"] = measure("hoopy", [sys.executable, twistd, "-n", "--pidfile=", "hoopy", "-c",
                                                 "hoopy.toml"], hp, "bench", db, a,
                                       {**os.environ, "PGPASSWORD": token}, work)
        if len(results) == 2:
            print(f"hoopy/floor: {results['hoopy'] / results['floor']:.1f}x the floor's "
                  f"{'CPU' if a.cpu else 'instructions'} a statement")
    finally:
        subprocess.run(["psql", PG + " dbname=postgres", "-Xqc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"],
                       capture_output=True)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    main()
