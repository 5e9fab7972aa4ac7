#!/usr/bin/env python3
"""Instructions (callgrind) a MiB of SSH bulk data through the gateway: `head -c N | ssh -c C cat`.

    python3 bench/ssh_instr.py [--mib 8] [--cipher aes128-ctr] [--code DIR ...] [--cpu]

The SSH twin of bench/http_instr.py: a loaded machine moves wall-clock and CPU-time figures a lot
and instruction counts hardly at all. Starts a real sshd (as the tests do) and a real
``twistd -n hoopy`` under ``valgrind --tool=callgrind`` with one ssh connection to it (exec cat
granted, output kept in the event as always), sends 1 MiB to warm it, zeroes the counters, sends
``--mib`` MiB through ``exec cat`` with the OpenSSH client and reads the instructions the gateway
executed (all its threads) divided by the MiB. User space only: the kernel's share (the send()
and recv() system calls) is not counted. ``--code DIR`` (repeatable) runs the gateway from
another checkout of hoopy (PYTHONPATH=DIR), one after the other, to compare two versions of the
code in one run. ``--cpu``: without valgrind, user+system CPU milliseconds a MiB (from /proc).
"""
from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/http.py is not the stdlib's
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import glob  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from tests import support  # noqa: E402
from tests.support import HoopyProcess, ident  # noqa: E402
from tests.test_ssh import CLIENT_OPTS, Sshd, connection_toml, grant, keygen  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def transfer(port: int, key: Path, user: str, mib: int, cipher: str) -> float:
    cmd = (f"head -c {mib}M /dev/zero | ssh -p {port} -i {key} {' '.join(CLIENT_OPTS)} -c {cipher} "
           f"{user}@127.0.0.1 cat | wc -c")
    t0 = time.monotonic()
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, check=True)
    assert int(r.stdout) == mib << 20, (r.stdout, r.stderr)
    return time.monotonic() - t0


def measure(code: str, sshd: Sshd, a, work: Path) -> float:
    key = work / "agent_key"
    if not key.exists():
        keygen(key)
    pub = Path(f"{key}.pub").read_text().strip()
    agent = ident("agent")
    conn, port = connection_toml(sshd, extra='connect_timeout = "300s"')  # (valgrind's key exchange)
    gwdir = Path(tempfile.mkdtemp(prefix="gw-", dir=work))
    env = {"PYTHONPATH": code}
    twistd = support.TWISTD
    out = gwdir / "cg"
    if not a.cpu:
        wrapper = gwdir / "vg-twistd"
        wrapper.write_text(f"#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={out}.%p "
                           f"--dump-instr=no --compress-strings=no --separate-threads=yes {twistd} \"$@\"\n")
        wrapper.chmod(0o755)
        support.TWISTD = str(wrapper)
    try:
        gw = HoopyProcess(gwdir, agent.toml(ssh_keys=[pub]) + conn + grant("agent", ["exec cat"]), env=env)
        gw.start(timeout=900)
    finally:
        support.TWISTD = twistd
    try:
        transfer(port, key, "agent", 1, a.cipher)  # warm: imports, the first session, caches
        pid = gw.proc.pid
        if a.cpu:
            c0 = cpu_seconds(pid)
            dt = transfer(port, key, "agent", a.mib, a.cipher)
            per = (cpu_seconds(pid) - c0) * 1000 / a.mib
            print(f"{code}: {per:.2f} ms CPU a MiB ({a.mib} MiB, {a.cipher}, {a.mib / dt:.1f} MiB/s, "
                  f"load {os.getloadavg()[0]:.1f})", flush=True)
            return per
        subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
        dt = transfer(port, key, "agent", a.mib, a.cipher)
        subprocess.run(["callgrind_control", "-d", "measured", str(pid)], capture_output=True, check=True)
        time.sleep(1)
        total, by_thread = 0, {}
        for f in glob.glob(f"{out}.{pid}*"):
            if "measured" not in open(f).read(4000):
                continue
            for line in open(f):
                if line.startswith(("summary:", "totals:")):
                    total += int(line.split()[1])
                    by_thread[f.rsplit("-", 1)[-1]] = int(line.split()[1])
                    break
        if a.keep:
            os.makedirs(a.keep, exist_ok=True)
            for f in glob.glob(f"{out}.{pid}*"):
                if "measured" in open(f).read(4000):
                    shutil.copy(f, a.keep)
        per = total / a.mib
        print(f"{code}: {per / 1e6:,.1f} M instructions a MiB ({a.mib} MiB, {a.cipher}; by thread: "
              + ", ".join(f"{t} {k / a.mib / 1e6:,.1f} M" for t, k in sorted(by_thread.items()))
              + f"; {a.mib / dt:.2f} MiB/s under valgrind, load {os.getloadavg()[0]:.1f})", flush=True)
        return per
    except BaseException:
        print(gw.log.read_text()[-3000:])
        raise
    finally:
        gw.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=8)
    ap.add_argument("--cipher", default="aes128-ctr")
    ap.add_argument("--code", action="append", help="a checkout of hoopy to run the gateway from (repeatable)")
    ap.add_argument("--cpu", action="store_true", help="CPU time from /proc instead of callgrind")
    ap.add_argument("--keep", help="copy the callgrind files of the measured transfer to this directory")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hoopy-ssh-instr-") as tmp:
        work = Path(tmp)
        sshd = Sshd(work / "sshd").start()
        try:
            for code in a.code or [str(_HERE.parent)]:
                measure(code, sshd, a, work)
        finally:
            sshd.stop()


if __name__ == "__main__":
    main()
