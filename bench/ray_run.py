"""``make bench``: a job on Ray Data (2 workers) against the single-process run, and the limiter actor's capacity.

    .venv/bin/python bench/ray_run.py [--rows 40000] [--latency-ms 50] [--workers 2] [--quick]

1. The sandbox in its own process, 50 ms per call, enterprise tier (unlimited), 100 calls in
   flight per process. Nothing is pinned: the Ray workers need both cores, and the single-process
   run gets the same machine for a fair comparison.
2. The single-process run (``pipeline.run_job``) and the Ray run (``pipeline.ray.run_job``, a local
   Ray started before the clock starts) over the same input, each in a child process. Two figures
   each: rows/s over the whole ``run_job`` call (for Ray: worker start-up and the driver writing the
   output included), and rows/s between the first and the last call (steady state).
3. Tier use: 4 workers at the pro tier (300 calls per window) against a sandbox counting in a
   sliding window of ``--tier-window`` seconds (time scaled down from a minute), the same job
   once in one process: from the sandbox's own request log, the most calls in any window (never
   more than 300) and the calls in each whole window from the first call on, as a share of 300;
   and the calls refused (429). That none is refused depends on this machine's timing, so it is
   measured here, not asserted in tests/test_ray.py (whose virtual-time form is in
   tests/test_ray_coordinator.py).
4. The coordinator actor alone: 8 concurrent callers ask for leases of 1, 16 and 64 grants from a
   limiter that never binds, for 3 s each; grants/s and lease round trips/s. Then what a capped
   job adds per call (a reservation and its settlement): calls/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ENTERPRISE_KEY, momo_job, questions, run_child, run_local, start_sandbox

KEY = ENTERPRISE_KEY
CONCURRENCY = 100


def _job(data: Path, out: Path, url: str) -> Any:
    return momo_job(data, out, url, concurrency=CONCURRENCY)


def _figures(report: Any, wall: float) -> dict[str, float]:
    d = report.as_dict()
    s = report.stats
    steady = (s.calls - 1) / (s.last_call - s.first_call) if s.calls > 1 else 0.0
    return {"rows": d["rows"], "ok": d["ok"], "calls": d["calls"], "wall": wall, "steady": steady}


def child_local(url: str, data: Path, out: Path) -> dict[str, float]:
    import anyio

    job = _job(data, out, url)
    t0, cpu0 = time.perf_counter(), time.process_time()
    report = anyio.run(lambda: run_local(job, KEY, url, max_connections=CONCURRENCY))
    return {**_figures(report, time.perf_counter() - t0), "cpu": time.process_time() - cpu0}


def _cpu_by_kind() -> dict[str, float]:
    """CPU seconds so far of this machine's Ray processes: the workers, and Ray's own."""
    tick = os.sysconf("SC_CLK_TCK")
    kinds: dict[str, float] = {"workers": 0.0, "ray": 0.0}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used = (int(fields[11]) + int(fields[12])) / tick
        if "MapBatches(Worker)" in cmd:
            kinds["workers"] += used
        elif "ray::" in cmd or "/ray/" in cmd:
            kinds["ray"] += used
    return kinds


def child_ray(url: str, data: Path, out: Path, workers: int) -> dict[str, float]:
    import ray

    from pipeline import Connection, Credentials
    from pipeline.ray import RayOptions, run_job

    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter() - t0
    before, cpu0 = _cpu_by_kind(), time.process_time()
    t0 = time.perf_counter()
    report = run_job(_job(data, out, url), Connection(Credentials(KEY), url), options=RayOptions(workers=workers))
    wall = time.perf_counter() - t0
    driver = time.process_time() - cpu0
    after = _cpu_by_kind()  # before shutdown: the workers are gone after it
    ray.shutdown()
    return {**_figures(report, wall), "ray_init": started, "dropped": report.ray.dropped_grants,
            "cpu_workers": after["workers"] - before["workers"], "cpu_ray": after["ray"] - before["ray"],
            "cpu_driver": driver}


def child_tier(url: str, data: Path, out: Path, workers: int, window: float) -> dict[str, float]:
    """The job at the pro tier with time scaled to ``window``: on Ray with ``workers``, or (0) in one process."""
    from pipeline import Connection, Credentials

    job = momo_job(data, out, url, concurrency=16, tier="pro", window_seconds=window)
    if workers == 0:
        import anyio

        report = anyio.run(lambda: run_local(job, "momo-sandbox-pro", url))
        return {"ok": report.stats.ok, "dropped": 0}
    import ray

    from pipeline.ray import RayOptions, run_job

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    report = run_job(job, Connection(Credentials("momo-sandbox-pro"), url), options=RayOptions(workers=workers))
    ray.shutdown()
    return {"ok": report.stats.ok, "dropped": report.ray.dropped_grants}


def tier_use(times: list[float], window: float, limit: int) -> dict[str, float]:
    """From the server's log: the most calls in any ``window``, and each whole window's calls from
    the first call on (the last, partial window left out) as a share of ``limit``."""
    from pipeline.sandbox.log import max_in_any_window

    times = sorted(times)
    most = max_in_any_window(times, window)
    whole = int((times[-1] - times[0]) // window)
    shares = [sum(times[0] + k * window <= t < times[0] + (k + 1) * window for t in times) / limit
              for k in range(whole)]
    return {"most": most, "windows": whole, "min_share": min(shares, default=0.0),
            "mean_share": sum(shares) / len(shares) if shares else 0.0}


def tier_runs(tmp: Path, window: float, latency_ms: float) -> list[tuple[str, dict[str, float]]]:
    from pipeline.sandbox import Sandbox, SandboxConfig

    rows = 300 * 5  # five windows' worth
    data = _input(tmp / "tier.parquet", rows)
    results = []
    for label, workers in (("one process", 0), ("Ray, 4 workers", 4)):
        cfg = SandboxConfig(window_seconds=window, algorithm="sliding_log", latency_ms=latency_ms)
        with Sandbox(cfg).running() as sb:
            got = _child("tier", sb.momo_url, str(data), str(tmp / f"tier-{workers}.parquet"), str(workers),
                         str(window))
            records = [r for r in sb.records() if r.get("prompt_sha")]  # the agent calls
        use = tier_use([r["ts"] for r in records], window, 300)
        results.append((label, {**got, **use, "refused": sum(r["status"] == 429 for r in records)}))
    return results


def child_leases(seconds: float) -> dict[str, dict[str, float]]:
    import ray

    from pipeline.ray.coordinator import Coordinator

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results: dict[str, dict[str, float]] = {}
    for size in (1, 16, 64):
        coord: Any = ray.remote(Coordinator).options(num_cpus=0).remote(1e9, 1.0, None, 0.0, 10.0)
        ray.get(coord.lease.remote(1))  # started

        async def caller(until: float, size: int = size, coord: Any = coord) -> tuple[int, int]:
            grants = leases = 0
            while time.perf_counter() < until:
                lease = await coord.lease.remote(size, [(None, None, None)] * size)
                grants += len(lease.slots)
                leases += 1
            return grants, leases

        async def go() -> list[tuple[int, int]]:
            until = time.perf_counter() + seconds
            return await asyncio.gather(*(caller(until) for _ in range(8)))

        got = asyncio.run(go())
        results[str(size)] = {"grants_per_s": sum(g for g, _ in got) / seconds,
                              "leases_per_s": sum(n for _, n in got) / seconds}
        ray.kill(coord)
    coord = ray.remote(Coordinator).options(num_cpus=0).remote(None, 1.0, 1e9, 0.0)
    ray.get(coord.reserve.remote(0.0))

    async def spender(until: float) -> int:  # what a capped job does per call: reserve, then settle
        calls = 0
        while time.perf_counter() < until:
            held = await coord.reserve.remote(0.001)
            await coord.settle.remote(held, 0.0005)
            calls += 1
        return calls

    async def spend() -> list[int]:
        until = time.perf_counter() + seconds
        return await asyncio.gather(*(spender(until) for _ in range(8)))

    results["budget"] = {"calls_per_s": sum(asyncio.run(spend())) / seconds}
    ray.shutdown()
    return results


# -- parent -----------------------------------------------------------------------------------
def _child(*args: str) -> Any:
    return run_child(__file__, *args)


def _input(path: Path, rows: int) -> Path:
    questions(rows).write_parquet(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--latency-ms", type=float, default=50)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--lease-seconds", type=float, default=3.0)
    ap.add_argument("--tier-window", type=float, default=6.0, help="the scaled window of the tier-use runs")
    ap.add_argument("--quick", action="store_true", help="5,000 rows, 1 s per lease size")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.lease_seconds = 5_000, 1.0
    with tempfile.TemporaryDirectory(prefix="momo-bench-ray-") as name:
        tmp = Path(name)
        data = _input(tmp / "in.parquet", args.rows)
        server, url = start_sandbox(args.latency_ms)
        try:
            print(f"sandbox: {url}, {args.latency_ms:g} ms per call, enterprise tier, {CONCURRENCY} in flight "
                  f"per process, {args.rows:,} rows", flush=True)
            local = _child("local", url, str(data), str(tmp / "local.parquet"))
            on_ray = _child("ray", url, str(data), str(tmp / "ray.parquet"), str(args.workers))
        finally:
            server.terminate()
            server.wait(10)
        tiers = tier_runs(tmp, args.tier_window, args.latency_ms)
    leases = _child("leases", str(args.lease_seconds))
    print(f"\n{'':<34}{'rows':>9}{'rows/s whole':>14}{'rows/s steady':>15}")
    for label, r in (("single process (pipeline.run_job)", local),
                     (f"Ray, {args.workers} workers (pipeline.ray)", on_ray)):
        print(f"{label:<34}{r['rows']:>9,}{r['rows'] / r['wall']:>14,.0f}{r['steady']:>15,.0f}")
    print(f"Ray / single process: {on_ray['rows'] / on_ray['wall'] / (local['rows'] / local['wall']):.2f}x whole, "
          f"{on_ray['steady'] / local['steady']:.2f}x steady (ray.init took {on_ray['ray_init']:.1f} s, "
          "not counted)")
    rows = on_ray["rows"]
    print(f"CPU per row: single process {local['cpu'] / rows * 1000:.2f} ms; Ray workers "
          f"{on_ray['cpu_workers'] / rows * 1000:.2f} ms + Ray's own processes {on_ray['cpu_ray'] / rows * 1000:.2f} ms"
          f" + driver {on_ray['cpu_driver'] / rows * 1000:.2f} ms")
    print(f"\ntier use, pro (300 per window), a sliding window of {args.tier_window:g} s, 16 in flight per "
          "process, 1,500 rows (the sandbox's request log):")
    for label, r in tiers:
        print(f"  {label:<16} most in any window {r['most']:>3.0f} (limit 300), whole windows {r['windows']:.0f}: "
              f"{r['mean_share']:.1%} of the limit on average, {r['min_share']:.1%} the least; "
              f"{r['refused']:.0f} refused, {r['dropped']:.0f} grants dropped late")
    print("\ncoordinator actor, 8 concurrent callers, a limiter that never binds:")
    budget = leases.pop("budget")
    for size, r in leases.items():
        print(f"  leases of {size:>2}: {r['grants_per_s']:>10,.0f} grants/s  ({r['leases_per_s']:,.0f} leases/s)")
    print(f"  with a cap, reserve + settle per call: {budget['calls_per_s']:,.0f} calls/s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("local", "ray", "leases", "tier"):
        kind, *rest = sys.argv[1:]
        if kind == "local":
            result: Any = child_local(rest[0], Path(rest[1]), Path(rest[2]))
        elif kind == "tier":
            result = child_tier(rest[0], Path(rest[1]), Path(rest[2]), int(rest[3]), float(rest[4]))
        elif kind == "ray":
            result = child_ray(rest[0], Path(rest[1]), Path(rest[2]), int(rest[3]))
        else:
            result = child_leases(float(rest[0]))
        print(json.dumps(result))
    else:
        main()
