"""MCP gateway benchmark: the added latency of one tool call through hoopy.

    python bench/mcp.py [--calls 2000] [--warmup 200]

Starts the SDK test server (tests/mcp_peers/tools_server.py) over Streamable HTTP and a real
``twistd -n hoopy`` with one mcp connection to it (a grant allowing the tool, so every call is
judged and its event made durable before it is forwarded). A raw HTTP/1.1 keep-alive client
(one connection, one request at a time: latency, not throughput) then calls ``echo`` directly
and through hoopy, both at revision 2026-07-28, and prints p50/p90/p99 and the difference.
The target: under 2 ms p50 added. The machine is shared: the load average is printed beside.

Nothing here is a test: it prints numbers for docs/performance.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py would shadow the standard library's http package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse  # noqa: E402
import http.client  # noqa: E402
import json
import os
import signal
import socket
import statistics
import subprocess
import tempfile
import time

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import HoopyProcess, ident  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"}}


def call(conn, n, token=None):
    body = json.dumps({"jsonrpc": "2.0", "id": n, "method": "tools/call",
                       "params": {"name": "echo", "arguments": {"text": f"hello {n}"}, "_meta": META}})
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
         "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "echo"}
    if token:
        h["Authorization"] = f"Bearer {token}"
    t0 = time.perf_counter()
    conn.request("POST", "/mcp", body=body, headers=h)
    r = conn.getresponse()
    data = r.read()
    dt = time.perf_counter() - t0
    text = data.decode()
    if r.status != 200 or f"hello {n}" not in text:
        raise SystemExit(f"bad answer ({r.status}): {text[:300]}")
    return dt


def run(port, calls, warmup, token=None):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(warmup):
        call(conn, i, token)
    times = [call(conn, warmup + i, token) for i in range(calls)]
    conn.close()
    times.sort()
    q = lambda p: times[min(len(times) - 1, int(p * len(times)))] * 1000  # noqa: E731
    return {"p50": statistics.median(times) * 1000, "p90": q(0.9), "p99": q(0.99)}


def cpu_seconds(pid) -> float:
    """user + system CPU of a process (all threads), from /proc: what hoopy itself spends."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    args = ap.parse_args()
    up_port, gw_port = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "tests.mcp_peers.tools_server", "http", str(up_port)],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    agent = ident("bench-agent")
    tmp = Path(tempfile.mkdtemp(prefix="hoopy-bench-mcp-"))
    gw = HoopyProcess(tmp, agent.toml() + f"""
[connections.tools]
type = "mcp"
listen = "tcp:{gw_port}:interface=127.0.0.1"
upstream = "http://127.0.0.1:{up_port}/mcp"

[[grants]]
identity = "bench-agent"
connection = "tools"
allow = ["tool echo"]
""", env={"PYTHONPATH": str(ROOT)})
    try:
        wait_port(up_port)
        gw.start()
        load = os.getloadavg()
        direct = run(up_port, args.calls, args.warmup)
        cpu0 = cpu_seconds(gw.proc.pid)
        through = run(gw_port, args.calls, args.warmup, agent.token)
        cpu = (cpu_seconds(gw.proc.pid) - cpu0) / (args.calls + args.warmup) * 1000
        load2 = os.getloadavg()
        print(f"tool call (echo), {args.calls} calls after {args.warmup} warm-up, one keep-alive connection")
        print(f"load average before/after: {load[0]:.2f} / {load2[0]:.2f} on {os.cpu_count()} cores")
        print(f"{'':12}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}")
        for name, r in (("direct", direct), ("via hoopy", through)):
            print(f"{name:12}{r['p50']:>10.3f}{r['p90']:>10.3f}{r['p99']:>10.3f}")
        print(f"the gateway's own CPU per call (all its threads): {cpu:.3f} ms")
        added = through["p50"] - direct["p50"]
        print(f"added p50: {added:.3f} ms (target < 2 ms): {'met' if added < 2 else 'NOT met'}")
    finally:
        gw.stop()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)


if __name__ == "__main__":
    main()
