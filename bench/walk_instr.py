#!/usr/bin/env python3
"""Instructions (callgrind) a walk: hoopy.postgres.walk over every string constant of tests/*.py
that parses as SQL, ``--batches`` times, less the same run without the walks (start-up, parsing,
the copies of the trees).

    python3 bench/walk_instr.py [--batches 3]

The walk runs only on a parse-cache miss, so the PostgreSQL benches barely see it; this counts it
alone. Run it in two checkouts to compare them (instruction counts hardly move with the load).
"""
from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's hoopy, not an installed one


def statements() -> list:
    """The parse trees (as JSON) of the test files' string constants that are SQL."""
    from hoopy.postgres import sqltree

    texts = set()
    for p in sorted((ROOT / "tests").glob("*.py")):
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and len(n.value) < 5000:
                texts.add(n.value)
    trees = []
    for text in sorted(texts):
        try:
            tree = sqltree.parse(text)
        except Exception:
            continue
        if tree:
            trees.append(json.dumps(tree))
    return trees


def run(batches: int, walking: bool) -> None:
    """The measured run: each batch walks fresh copies (the walk may rewrite a tree it reads)."""
    from hoopy.postgres.walk import walk

    trees = statements()
    loaded = [[json.loads(t) for t in trees] for _ in range(batches)]
    if not walking:
        return
    for batch in loaded:
        for tree in batch:
            try:
                walk(tree)
            except Exception:
                pass  # refused statements are walked too, up to where they are refused


def instructions(batches: int, walking: bool) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cg.out"
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-instr=no",
                        sys.executable, __file__, "--run", str(batches)] + ([] if walking else ["--no-walk"]),
                       check=True, capture_output=True)
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit("callgrind wrote no total")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--run", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--no-walk", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.run is not None:
        return run(a.run, not a.no_walk)
    n = len(statements())
    base, full = instructions(a.batches, False), instructions(a.batches, True)
    print(f"{n} statements x {a.batches}: {(full - base) / (n * a.batches):,.0f} instructions a walk")


if __name__ == "__main__":
    main()
