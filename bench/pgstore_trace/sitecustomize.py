"""Loaded by every Python started with this folder on PYTHONPATH (bench/pgstore_trace.py puts it
there for the gateways it starts): with HOOPY_TRACE=path, times each statement the postgresql://
store's writer thread runs, each batch and its size, and writes them to path.<pid> every second."""
import os

path = os.environ.get("HOOPY_TRACE")
if path:
    import collections
    import json
    import threading
    import time

    import psycopg

    import hoopy.audit.pgstore as P

    stats: dict = collections.defaultdict(lambda: [0, 0.0, 0.0])  # n, total, max
    sizes: collections.Counter = collections.Counter()
    t0 = time.perf_counter()
    last = [None, t0]  # end of the last batch, last dump
    gaps = [0, 0.0]

    def note(k, dt):
        s = stats[k]
        s[0] += 1
        s[1] += dt
        s[2] = max(s[2], dt)

    def dump():
        out = {"stats": {k: {"n": v[0], "total_s": round(v[1], 3), "mean_ms": round(1000 * v[1] / max(v[0], 1), 3),
                             "max_ms": round(1000 * v[2], 2)} for k, v in stats.items()},
               "batches": sum(sizes.values()), "events": sum(k * v for k, v in sizes.items()),
               "gap_mean_ms": round(1000 * gaps[1] / max(gaps[0], 1), 3), "sizes": sorted(sizes.items())}
        with open(f"{path}.{os.getpid()}", "w") as f:
            json.dump(out, f)

    real_execute = psycopg.Cursor.execute

    def execute(self, query, params=None, **kw):
        if threading.current_thread().name != "hoopy-store-writer":
            return real_execute(self, query, params, **kw)
        q = query if isinstance(query, str) else str(query)
        k = q.split("(")[0][:40].strip()
        if q.startswith("BEGIN; SELECT"):
            k = "BEGIN; lock; head"
        elif q.startswith("INSERT INTO hoopy.events"):
            k = "INSERT events" + (" (one statement)" if "max(seq)" in q else "")
        t = time.perf_counter()
        try:
            return real_execute(self, query, params, **kw)
        finally:
            note(k, time.perf_counter() - t)

    psycopg.Cursor.execute = execute

    def wrap(name, label):
        real = getattr(P.PostgresEventStore, name, None)
        if real is None:
            return

        def timed(self, *a):
            t = time.perf_counter()
            try:
                r = real(self, *a)
            finally:
                note(label, time.perf_counter() - t)
            if name == "_optimistic":
                note("one statement: " + ("written" if r is not None else "head moved"), 0.0)
            return r

        setattr(P.PostgresEventStore, name, timed)

    wrap("_optimistic", "one statement way")
    wrap("_locked", "locked way")
    real_write = P.PostgresEventStore._write

    def _write(self, batch, sign=False):
        t = time.perf_counter()
        if last[0] is not None:
            gaps[0] += 1
            gaps[1] += t - last[0]
        sizes[len(batch)] += 1
        try:
            return real_write(self, batch, sign)
        finally:
            last[0] = time.perf_counter()
            note("batch (_write)", last[0] - t)
            if last[0] - last[1] > 1.0:
                last[1] = last[0]
                dump()

    P.PostgresEventStore._write = _write
