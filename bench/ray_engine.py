"""A Ray worker's runner without Ray, against one process: which part of Ray's CPU per row is the
worker's own code and which is Ray's.

    .venv/bin/python bench/ray_engine.py [--rows 20000] [--repeat 3]

The sandbox in its own process (50 ms per call, enterprise tier), then, alternating, each in a
child process: the job in one process (``pipeline.run_job``, as ``bench/ray_run.py`` runs it)
and the same rows through :class:`pipeline.ray.worker.Worker` in a plain asyncio process, fed
batches as Ray Data feeds a worker (``concurrency × 16`` rows, 3 at a time), with the coordinator
in the same process (:class:`pipeline.ray.coordinator.LocalHandle`). For each: CPU per row (user
and system, ``getrusage``) between 10 % and 90 % of the rows done, and voluntary context switches
per row; then the worker's ratio to one process, run by run. ``bench/ray_run.py`` gives the same
figure for a worker inside Ray: what it adds is Ray's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ENTERPRISE_KEY, momo_job, questions, run_child, run_local, start_sandbox

CONCURRENCY = 100
BATCHES_IN_FLIGHT = 3  # as pipeline.ray.run gives Ray Data


def _usage() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_nvcsw


class Window:
    """Usage at 10 % and at 90 % of ``total`` rows done."""

    def __init__(self, total: int) -> None:
        self.marks = (total // 10, total * 9 // 10)
        self.taken: list[tuple[int, tuple[float, float, int]]] = []

    def at(self, done: int) -> None:
        while len(self.taken) < 2 and done >= self.marks[len(self.taken)]:
            self.taken.append((done, _usage()))

    def figures(self, wall: float) -> dict[str, float]:
        (r0, (u0, s0, v0)), (r1, (u1, s1, v1)) = self.taken
        n = r1 - r0
        return {"wall": wall, "cpu_ms": (u1 - u0 + s1 - s0) / n * 1000, "user_ms": (u1 - u0) / n * 1000,
                "sys_ms": (s1 - s0) / n * 1000, "switches": (v1 - v0) / n}


def child_worker(url: str, data: Path, out: Path, rows: int) -> dict[str, float]:
    import polars as pl

    from pipeline import Connection, Credentials
    from pipeline.ledger import Ledger
    from pipeline.ray.coordinator import Coordinator, LocalHandle, lateness
    from pipeline.ray.run import BATCH_PER_CONCURRENCY
    from pipeline.ray.worker import Worker, WorkerSpec

    job = momo_job(data, out, url, concurrency=CONCURRENCY)
    table = pl.read_parquet(data).to_arrow()
    size = CONCURRENCY * BATCH_PER_CONCURRENCY
    window = Window(rows)

    async def go() -> None:
        with Ledger.open(out) as ledger:
            ledger.fold()  # as the driver does before the workers start
            spec = WorkerSpec(job=job, connection=Connection(Credentials(ENTERPRISE_KEY), url),
                              coordinator=LocalHandle(Coordinator(None, 60.0, None, 0.0)),
                              ledger_root=ledger.root.resolve(), run=ledger.run, price=None, cap=None,
                              concurrency=CONCURRENCY, lateness=lateness(60.0), tune_gc=True)
            worker = Worker(spec)
            slots = asyncio.Semaphore(BATCHES_IN_FLIGHT)
            done = 0

            async def one(start: int) -> None:
                nonlocal done
                async with slots:
                    got = await worker(table.slice(start, size))
                done += got.num_rows
                window.at(done)

            try:
                await asyncio.gather(*(one(start) for start in range(0, rows, size)))
            finally:
                await worker.close()

    t0 = time.perf_counter()
    asyncio.run(go())
    return window.figures(time.perf_counter() - t0)


def child_local(url: str, data: Path, out: Path, rows: int) -> dict[str, float]:
    import anyio

    from pipeline import RunOptions
    from pipeline._tuning import steady_gc

    job = momo_job(data, out, url, concurrency=CONCURRENCY)
    window = Window(rows)
    done = 0

    def on_result(_result: Any) -> None:
        nonlocal done
        done += 1
        window.at(done)

    t0 = time.perf_counter()
    with steady_gc():  # as ``momo-batch run`` runs one process
        anyio.run(lambda: run_local(job, ENTERPRISE_KEY, url, max_connections=CONCURRENCY,
                                    options=RunOptions(on_result=on_result)))
    return window.figures(time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="momo-bench-engine-") as name:
        tmp = Path(name)
        data = tmp / "in.parquet"
        questions(args.rows).write_parquet(data)
        server, url = start_sandbox(50)
        runs: dict[str, list[dict[str, float]]] = {"local": [], "worker": []}
        try:
            for i in range(args.repeat):
                for kind in runs:
                    runs[kind].append(run_child(__file__, kind, url, str(data), str(tmp / f"{kind}-{i}.parquet"),
                                                str(args.rows)))
        finally:
            server.terminate()
            server.wait(10)
    print(f"{args.rows:,} rows, 50 ms a call, {CONCURRENCY} in flight; CPU from 10 % to 90 % of the rows done")
    print(f"{'':<34}{'CPU ms/row':>11}{'user':>7}{'system':>8}{'switches/row':>14}")
    for kind, label in (("local", "one process (pipeline.run_job)"), ("worker", "Ray's Worker, without Ray")):
        for r in runs[kind]:
            print(f"{label:<34}{r['cpu_ms']:>11.3f}{r['user_ms']:>7.3f}{r['sys_ms']:>8.3f}{r['switches']:>14.3f}")
    ratios = sorted(w["cpu_ms"] / lo["cpu_ms"] for lo, w in zip(runs["local"], runs["worker"], strict=True))
    print(f"worker / one process: {ratios[len(ratios) // 2]:.2f}x median (runs "
          f"{', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("local", "worker"):
        kind, url, data, out, rows = sys.argv[1:6]
        child = child_local if kind == "local" else child_worker
        print(json.dumps(child(url, Path(data), Path(out), int(rows))))
    else:
        main()
