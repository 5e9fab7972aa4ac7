"""The masked JSON body of bench/http.py masked in memory: CPU milliseconds per MiB.

    PYTHONPATH=. python3 -P bench/jsonmask.py [--loops 20] [--repeat 7] [--profile] [--instr]

The body is bench/http.py's (about 1 MiB: customers with an e-mail address each) and the masker
its connection's (fields ["ssn"], patterns ["email"]); the figure is the best of ``--repeat`` runs of
``--loops`` calls of ``Masker.mask_json``, in CPU time (``process_time``, so a shared machine moves
it less than wall-clock time). Runs twice: with hoopy/http/_jsonmask.c and with HOOPY_JSONMASK=python
(the Python code), each in a process of its own. ``--instr``: instructions (callgrind) a call
instead, a run of 0 calls subtracted. ``--profile``: cProfile's top entries of this process's run.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time


def body() -> bytes:
    doc, n, i = [], 0, 0
    while n < 1 << 20:  # about 1 MiB of JSON, as bench/http.py writes it
        r = {"id": i, "name": f"customer {i}", "email": f"user{i}@example.com", "note": "x" * 40}
        n += len(json.dumps(r)) + 1
        doc.append(r)
        i += 1
    return json.dumps({"customers": doc}).encode()


def masker():
    from hoopy.http.masker import Masker
    from hoopy.policy.masking import parse_detector

    return Masker(fields=("ssn",), detectors=(parse_detector("email"),))


def one(loops: int, repeat: int, profile: bool) -> None:
    data, m = body(), masker()
    out, counts = m.mask_json(data)
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        for _ in range(loops):
            m.mask_json(data)
        best = min(best, (time.process_time() - t) / loops)
    mib = len(data) / (1 << 20)
    print(f"{best * 1000 / mib:.2f} ms CPU/MiB ({len(data)} bytes, {counts}, "
          f"{mib / best * 1.048576:.0f} MB per CPU second)")
    if profile:
        import cProfile
        import pstats

        cProfile.runctx("for _ in range(loops): m.mask_json(data)", globals(), {"m": m, "data": data, "loops": loops},
                        "/tmp/jsonmask.prof")
        pstats.Stats("/tmp/jsonmask.prof").sort_stats("tottime").print_stats(12)


def instructions(env: dict, calls: int) -> int:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cg.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-P", __file__,
                        "--calls", str(calls)], env=env, check=True, capture_output=True)
        text = open(out).read()
    return int(re.search(r"^summary:\s+(\d+)", text, re.M).group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--loops", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--instr", action="store_true")
    ap.add_argument("--calls", type=int, default=None, help=argparse.SUPPRESS)  # the callgrind child
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.calls is not None:
        data, m = body(), masker()
        for _ in range(a.calls):
            m.mask_json(data)
        return
    if a.child:
        return one(a.loops, a.repeat, a.profile)
    print(f"# load average {os.getloadavg()[0]:.2f}")
    for name, extra in (("C (_jsonmask)", {}), ("Python (HOOPY_JSONMASK=python)", {"HOOPY_JSONMASK": "python"})):
        env = {**os.environ, **extra}
        if a.instr:
            n = 5
            per = (instructions(env, n) - instructions(env, 0)) / n
            print(f"{name}: {per / 1e6:.1f} M instructions a call")
            continue
        print(f"{name}: ", end="", flush=True)
        subprocess.run([sys.executable, "-P", __file__, "--child", "--loops", str(a.loops), "--repeat", str(a.repeat)]
                       + (["--profile"] if a.profile else []), env=env, check=True)


if __name__ == "__main__":
    main()
