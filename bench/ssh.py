#!/usr/bin/env python3
"""SSH: the same load directly against OpenSSH sshd and through hoopy.

    python3 bench/ssh.py [--mib 256] [--echoes 500] [--concurrent 200] [--idle 200]

Starts a real sshd on a free port (as the tests do) and a real
``twistd -n hoopy`` with one ssh connection to it, then measures:

  1. 256 MiB through ``exec cat`` with the OpenSSH client: MB/s, direct and through hoopy;
  2. interactive echo latency: one byte to ``cat`` on a pty and back, median and p99;
  3. 200 exec sessions at once (asyncssh clients, one connection each): errors and wall time;
  4. gateway memory per idle session (authenticated, upstream connected, no channel);
  J. (first, in process) the time to judge a typical agent command line: parse, parts, rules.

Prints each figure and the hoopy/direct ratio. A script, not a test.
"""
from __future__ import annotations

import sys
from pathlib import Path

# bench/ holds http.py and friends: keep them from shadowing the stdlib.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time

import asyncssh

from tests.support import HoopyProcess, ident
from tests.test_ssh import CLIENT_OPTS, Sshd, connection_toml, grant, keygen


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Target:
    def __init__(self, name, port, user, key):
        self.name, self.port, self.user, self.key = name, port, user, Path(key)

    def ssh(self, *args):
        return ["ssh", "-p", str(self.port), "-i", str(self.key), *CLIENT_OPTS, *args, f"{self.user}@127.0.0.1"]

    async def connect(self):
        return await asyncssh.connect("127.0.0.1", self.port, username=self.user,
                                      client_keys=[str(self.key)], known_hosts=None,
                                      agent_path=None, config=[])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (the machine may be shared: time per MiB
    of the gateway's own CPU is what stays comparable under load)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def throughput(t: Target, mib: int, cipher: str | None = None, pid: int | None = None) -> tuple[float, float]:
    """(MiB/s, CPU ms per MiB of process ``pid``, or 0)."""
    opts = ("-c", cipher) if cipher else ()
    cmd = f"head -c {mib}M /dev/zero | {' '.join(t.ssh(*opts))} cat | wc -c"
    c0 = cpu_seconds(pid) if pid else 0.0
    t0 = time.monotonic()
    out = subprocess.run(cmd, shell=True, capture_output=True, text=True, check=True).stdout
    dt = time.monotonic() - t0
    cpu = (cpu_seconds(pid) - c0) * 1000 / mib if pid else 0.0
    assert int(out) == mib << 20, (t.name, out)
    return mib / dt, cpu


async def echo_latency(t: Target, n: int) -> list[float]:
    async with await t.connect() as conn:
        # The bench needs a byte echoed: `cat` on a pty (raw-ish: -icanon -echo via stty).
        proc = await conn.create_process("stty raw -echo; cat", term_type="xterm", encoding=None)
        await asyncio.sleep(0.5)
        samples = []
        for i in range(n):
            b = bytes([97 + i % 26])
            t0 = time.perf_counter()
            proc.stdin.write(b)
            got = await proc.stdout.readexactly(1)
            samples.append(time.perf_counter() - t0)
            assert got == b
        proc.stdin.write(b"\x04")
        proc.close()
        return samples


async def concurrent(t: Target, n: int) -> tuple[int, float]:
    async def one(i):
        async with await t.connect() as conn:
            r = await conn.run(f"echo ok-{i}", check=False)
            return r.exit_status == 0 and r.stdout.strip() == f"ok-{i}"

    t0 = time.monotonic()
    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    errors = sum(1 for r in results if r is not True)
    for r in results:
        if isinstance(r, BaseException):
            print(f"    error: {type(r).__name__}: {r}")
            break
    return errors, time.monotonic() - t0


async def idle_memory(t: Target, gw, n: int) -> float:
    # Warm up first (imports, first session), so only the sessions' own memory is counted.
    async with await t.connect():
        await asyncio.sleep(1)
    before = rss_kib(gw.proc.pid)
    started = len(gw.events("session.start"))
    conns = []
    for i in range(0, n, 20):
        conns += await asyncio.gather(*(t.connect() for _ in range(min(20, n - i))))
    await asyncio.sleep(2)
    after = rss_kib(gw.proc.pid)
    opened = len(gw.events("session.start")) - started
    assert opened == n, f"only {opened} of {n} sessions started"
    for c in conns:
        c.close()
    return (after - before) / n


def _table(rows):
    print("\n| measure | direct | hoopy | hoopy/direct |\n|---|---|---|---|")
    for name, dv, hv, r in rows:
        f = lambda v: "-" if v is None else f"{v:.3f}" if v < 10 else f"{v:.1f}"  # noqa: E731
        print(f"| {name} | {f(dv)} | {f(hv)} | {f(r)} |")
# Command lines as MCP servers and agents send them, and the grant they are judged against.
AGENT_LINES = [
    "cd /srv/app && git status",
    "timeout 120 sh -c 'echo hello'",
    "ps aux | grep nginx",
    "journalctl -u api --no-pager | tail -50",
    "systemctl status api || true",
    "cd '/srv/app' && git log --oneline -20 | grep -v Merge",
    "cat > /etc/app/conf.d/x.conf <<'EOF'\nlisten 80;\nEOF",
]
AGENT_GRANT = dict(
    allow=["exec git status", "exec git log *", "exec ps aux", "exec grep *", "exec tail -*", "exec true",
           "exec journalctl -u * --no-pager", "exec systemctl status *", "exec echo *", "exec cat /var/log/*",
           "write /etc/app/conf.d/*.conf", "read /etc/hosts"],
    approve=["exec systemctl restart *"], deny=["exec systemctl status secret*", "exec rm *"])


def judgement(rounds: int = 2000) -> list[tuple[str, float]]:
    """Microseconds to judge one line: parse (tree-sitter), split into parts, match every rule of a
    12-rule grant (the policy's own per-unit judgement). The best of 7 runs of `rounds` each."""
    import timeit

    from hoopy.config import Grant
    from hoopy.policy.service import _judge_unit
    from hoopy.protocols import parse_rule
    from hoopy.ssh import shell

    rules = {k: tuple(parse_rule("ssh", r) for r in v) for k, v in AGENT_GRANT.items()}
    grants = [Grant("agent", "web", rules["allow"], rules["approve"], rules["deny"], None, 0)]
    out = []
    for line in AGENT_LINES:
        def judge(line=line):
            return [_judge_unit(grants, u) for u in shell.analyze(line, "bash").units]

        judge()
        best = min(timeit.repeat(judge, number=rounds, repeat=7)) / rounds
        out.append((line, best * 1e6))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--echoes", type=int, default=500)
    ap.add_argument("--concurrent", type=int, default=200)
    ap.add_argument("--idle", type=int, default=200)
    ap.add_argument("--only", choices=["bulk"], help="only the bulk throughput (1.)")
    ap.add_argument("--cipher", action="append", help="bulk with this cipher only (repeatable)")
    ap.add_argument("--judge-only", action="store_true", help="only the command-line judgement benchmark")
    args = ap.parse_args()

    if args.only != "bulk":
        print("J. judging an agent's command line (parse, parts, a 12-rule grant); goal: under 100 us")
        for line, us in judgement():
            print(f"   {us:7.1f} us  {line!r}")
    if args.judge_only:
        return

    with tempfile.TemporaryDirectory(prefix="hoopy-bench-ssh-") as tmp:
        tmp = Path(tmp)
        sshd = Sshd(tmp / "sshd").start()
        gw = None
        try:
            agent_key = tmp / "agent_key"
            pub = keygen(agent_key)
            agent = ident("agent")
            conn, port = connection_toml(sshd)
            body = agent.toml(ssh_keys=[pub]) + conn + grant(
                # the echo test runs `stty raw -echo; cat` on a terminal: an exec on a terminal whose
                # programs are not all on the no-escape list needs `shell` too (docs/ssh.md)
                "agent", ["exec cat", "exec echo *", "exec stty raw -echo", "shell"])
            (tmp / "gw").mkdir()
            gw = HoopyProcess(tmp / "gw", body).start()
            direct = Target("direct", sshd.port, sshd.user, sshd.client_key)
            hoopy = Target("hoopy", port, "agent", agent_key)
            rows = []

            if args.only != "bulk":
                print(f"0. gateway memory per idle session ({args.idle} sessions)")
                per = asyncio.run(idle_memory(hoopy, gw, args.idle))
                print(f"   {per:.0f} KiB per idle session (measured first, on a fresh gateway;"
                      f" RSS now {rss_kib(gw.proc.pid) / 1024:.0f} MiB)")
                rows.append(("KiB per idle session", None, per, None))

            for cipher in args.cipher or (None, "aes128-ctr", "aes128-gcm@openssh.com"):
                print(f"1. {args.mib} MiB through exec cat (OpenSSH client, cipher {cipher or 'default'})")
                d, _ = throughput(direct, args.mib, cipher)
                h, cpu = throughput(hoopy, args.mib, cipher, gw.proc.pid)
                print(f"   direct {d:8.1f} MiB/s   hoopy {h:8.1f} MiB/s   hoopy/direct {h / d:.2f}"
                      f"   gateway CPU {cpu:.2f} ms/MiB (load {os.getloadavg()[0]:.1f})")
                rows.append((f"throughput MiB/s ({cipher or 'default cipher'})", d, h, h / d))
                rows.append((f"gateway CPU ms per MiB ({cipher or 'default cipher'})", None, cpu, None))
            if args.only == "bulk":
                args.echoes = args.concurrent = 0

            if not args.echoes:
                return _table(rows)
            print(f"2. echo latency, {args.echoes} round trips of one byte on a pty")
            ds = asyncio.run(echo_latency(direct, args.echoes))
            hs = asyncio.run(echo_latency(hoopy, args.echoes))
            dm, hm = statistics.median(ds) * 1e3, statistics.median(hs) * 1e3
            dp = statistics.quantiles(ds, n=100)[98] * 1e3
            hp = statistics.quantiles(hs, n=100)[98] * 1e3
            print(f"   median direct {dm:.3f} ms  hoopy {hm:.3f} ms  added {hm - dm:.3f} ms"
                  f"   p99 direct {dp:.3f} ms  hoopy {hp:.3f} ms")
            rows.append(("echo median ms", dm, hm, hm / dm))

            print(f"3. {args.concurrent} concurrent exec sessions")
            de, dt = asyncio.run(concurrent(direct, args.concurrent))
            he, ht = asyncio.run(concurrent(hoopy, args.concurrent))
            print(f"   direct {dt:.2f} s, {de} errors   hoopy {ht:.2f} s, {he} errors   time ratio {ht / dt:.2f}")
            rows.append((f"{args.concurrent} concurrent s", dt, ht, ht / dt))

            _table(rows)
        finally:
            if gw is not None:
                gw.stop()
            sshd.stop()


if __name__ == "__main__":
    main()
