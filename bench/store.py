"""The state store's write path: events per second, unsigned vs signed, events only vs with rows.

    python3 bench/store.py [--events 20000] [--state hoopy.db | postgresql://...]

Appends in waves of 500 concurrent events (as a busy gateway does: the writer batches them)
and prints events/s for each variant, and the signed/unsigned ratio.
"""
from __future__ import annotations

import sys

if sys.path and sys.path[0].endswith("bench"):
    del sys.path[0]  # bench/http.py would shadow the standard library's http

import argparse
import tempfile
import time
from pathlib import Path

from twisted.internet import defer, task


async def run(reactor, state: str, n: int, signed: bool, rows: bool) -> float:
    from hoopy.audit.events import Event
    from hoopy.audit.signing import Signer
    from hoopy.audit.store import SQLiteEventStore

    if state.startswith("postgresql://"):
        from hoopy.audit.pgstore import PostgresEventStore

        store = PostgresEventStore(state, "bench", reactor)
    else:
        store = SQLiteEventStore(state, "bench", reactor)
    if signed:
        store.signer = Signer.generate()
        store.sign_interval = 2.0
    store.start()
    t0 = time.perf_counter()
    for wave in range(0, n, 500):
        ds = []
        for i in range(wave, min(n, wave + 500)):
            ev = Event("operation", "allowed", session=f"s{i % 50}", identity="agent", connection="db",
                       protocol="postgres", peer="127.0.0.1:1", data={"text": "SELECT 1", "i": i})
            if rows:
                ds.append(store.append(ev, session={"id": f"s{i % 50}", "ended_us": i}))
            else:
                ds.append(store.append(ev))
        await defer.gatherResults(ds)
    elapsed = time.perf_counter() - t0
    await store.stop()
    return n / elapsed


def main(reactor, args):
    async def go():
        for rows in (False, True):
            rates = {}
            for signed in (False, True):
                with tempfile.TemporaryDirectory() as d:
                    state = args.state or str(Path(d) / "bench.db")
                    rates[signed] = await run(reactor, state, args.events, signed, rows)
            print(f"{'events+rows' if rows else 'events only':12} unsigned {rates[False]:9.0f}/s  "
                  f"signed {rates[True]:9.0f}/s  ratio {rates[True] / rates[False]:.2f}")
    return defer.ensureDeferred(go())


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--state", help="a postgresql:// URL (default: a SQLite file in a temp folder)")
    task.react(main, [p.parse_args()])
