"""How many agent calls per second one sandbox server process answers, pinned to one core.

    .venv/bin/python bench/sandbox_rps.py [--requests 20000] [--concurrency 200] [--stream]

The server (``python -m pipeline.sandbox --port 0``) runs in a subprocess pinned to one CPU; the
client (raw aiohttp, ``concurrency`` calls in flight, enterprise key so no rate limit) is pinned
to the other CPUs where there are any, so the figure is the server's and not the client's.
Every prompt is distinct, so token counting is not served from the cache.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from collections import Counter

import aiohttp

KEY = "momo-sandbox-enterprise"


def start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.sandbox", "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    match = re.search(r"http://\S+", proc.stdout.readline())
    if not match:
        proc.kill()
        raise SystemExit("the sandbox did not print its URL")
    return proc, match.group(0)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux), to show whether the server was the busy side."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pin(server_pid: int) -> str:
    """Server on one core, this process on the rest; a description of what was done."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (no sched_setaffinity)"
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(server_pid, {cpus[0]})
    if len(cpus) > 1:
        os.sched_setaffinity(0, set(cpus[1:]))
        return f"server on CPU {cpus[0]}, client on {len(cpus) - 1} other CPU(s)"
    return f"server and client share CPU {cpus[0]} (only one available)"


async def drive(url: str, total: int, concurrency: int, stream: bool) -> tuple[float, Counter[int]]:
    statuses: Counter[int] = Counter()
    next_index = iter(range(total))
    headers = {"Authorization": f"Bearer {KEY}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(f"{url}/", connector=connector, headers=headers) as session:

        async def worker() -> None:
            for i in next_index:
                body = {"prompt": f"Benchmark question number {i}: what is {i} squared?", "stream": stream}
                async with session.post("v1/agents/159", json=body) as response:
                    await response.read()
                    statuses[response.status] += 1

        async with session.post("v1/agents/159", json={"prompt": "warm-up"}) as response:
            await response.read()
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--stream", action="store_true", help="streamed calls instead of JSON replies")
    args = parser.parse_args()
    proc, url = start_server()
    try:
        placement = pin(proc.pid)
        cpu_before = cpu_seconds(proc.pid)
        elapsed, statuses = asyncio.run(drive(url, args.requests, args.concurrency, args.stream))
        cpu_after = cpu_seconds(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    kind = "streamed" if args.stream else "JSON"
    print(f"sandbox: {args.requests} {kind} agent calls, {args.concurrency} in flight, {placement}")
    print(f"  {args.requests / elapsed:,.0f} requests/s  ({elapsed:.2f} s; statuses {dict(statuses)})")
    if cpu_before is not None and cpu_after is not None:
        print(f"  server CPU busy {(cpu_after - cpu_before) / elapsed:.0%} of the run "
              f"({(cpu_after - cpu_before) / args.requests * 1e6:.0f} µs per call)")


if __name__ == "__main__":
    main()
