"""Bounded parsing through a real gateway (issue 10, section 2): the worst bodies found for every
reader on an authenticated path (the maskers of JSON, text, HTML, XML and CSV, the e-mail pattern,
a decompression bomb; request-side, the multipart and JSON watchers and the GraphQL lexer) are
masked or refused in bounded time, four at once, and the gateway's memory stays bounded (a
benchmark-style test: it prints what it measured)."""
from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path


from tests.test_http_gateway import AGENT, gw, upstream  # noqa: F401 (fixtures)

KINDS = ["email-run", "email-labels", "unclosed-tags", "unclosed-attribute", "deep-markup", "end-tags",
         "json-deep", "json-in-strings", "kv-nested", "csv-wide", "backslashes", "gzip-bomb"]
SIZE = 2_000_000  # the test gateway's mask_limit is 2 MiB


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _curl(url, *args, timeout=60):
    t = time.monotonic()
    out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(timeout),
                          "-H", f"Authorization: Bearer {AGENT.token}", *args, url],
                         capture_output=True, text=True, timeout=timeout + 10)
    return out.stdout, time.monotonic() - t


def test_the_worst_bodies_are_masked_or_refused_in_bounded_time_and_memory(gw, tmp_path):
    pid = gw.proc.pid
    _curl(f"{gw.url}/hostile?kind=json-deep&size=1000")  # warm up
    before = _rss_kib(pid)
    peak = [before]
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_kib(pid))
            time.sleep(0.02)

    results = {}

    def one(kind):
        results[kind] = _curl(f"{gw.url}/hostile?kind={kind}&size={SIZE}")

    w = threading.Thread(target=watch)
    w.start()
    try:
        for i in range(0, len(KINDS), 4):  # four at once
            batch = [threading.Thread(target=one, args=(k,)) for k in KINDS[i:i + 4]]
            for t in batch:
                t.start()
            for t in batch:
                t.join()
        # request-side readers: a multipart body of header-like lines, a GraphQL document near its
        # 1 MiB limit made of aliases, a JSON body of escapes (the override watcher)
        mp = tmp_path / "mp"
        mp.write_bytes(b"--b\r\n" + b"Content-Disposition: form-data; name=\"f\"\r\n" * 50_000 + b"\r\nx\r\n--b--\r\n")
        results["multipart"] = _curl(f"{gw.url}/upload", "-H", "Content-Type: multipart/form-data; boundary=b",
                                     "--data-binary", f"@{mp}")
        gql = tmp_path / "gql"
        gql.write_text(json.dumps({"query": "{ " + "a: b " * 200_000 + "}"}))
        results["graphql"] = _curl(f"{gw.url}/v1/search", "-H", "Content-Type: application/json",
                                   "--data-binary", f"@{gql}")
    finally:
        stop.set()
        w.join()
    growth_mib = (peak[0] - before) / 1024
    print(f"\nRSS before {before // 1024} MiB, peak growth {growth_mib:.1f} MiB; "
          + ", ".join(f"{k} {code} in {secs:.2f}s" for k, (code, secs) in results.items()))
    for kind, (code, secs) in results.items():
        assert code in ("200", "400", "413", "502"), (kind, code)
        assert secs < 20, (kind, secs)
    assert results["gzip-bomb"][0] == "502"
    assert results["deep-markup"][0] == "502" and results["json-deep"][0] == "502"  # deeper than readers go
    assert growth_mib < 96, growth_mib
