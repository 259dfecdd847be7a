"""``make bench``: throughput, CPU and memory of the pipeline against the sandbox, with figures printed.

    .venv/bin/python bench/run.py [--rows 20000] [--latency-ms 50] [--big-rows 1000000] [--quick]

What runs, each in its own process so that CPU time and peak RSS belong to one thing:

1. the sandbox server (``momo-batch sandbox``), pinned to core 1, enterprise key, 50 ms per call;
2. a bare aiohttp loop: one ``aiohttp.ClientSession``, the same POST and JSON parsing, 64 in
   flight, nothing else — the ceiling any Python client reaches on this machine;
3. a bare client loop: ``MomoClient.call`` (httpx over the aiohttp transport), the same number in
   flight, no pipeline (no dataset, limiter, retries, ledger or Parquet);
4. the pipeline: ``run_job`` over a ``--rows`` Parquet input, enterprise tier, into Parquet;
5. ``--mid-rows`` and ``--big-rows`` input jobs (200,000 and 1 M rows; one row in 50 has a
   prompt, the rest are empty and recorded ``skipped``): every row is read, keyed, looked up in
   the ledger and written, so their peak RSS shows whether memory grows with the input;
6. ``estimate`` over ``--big-rows`` prompts (exact offline token counts, no paid call);
7. the preflight of the ``--rows`` job (plan, estimate, price, balance) against reading its input.

The pipeline's children start as the CLI does: :func:`pipeline._memory.tune_allocators`, then
:func:`pipeline.tokens.preload`, then the imports.

Client processes are pinned to core 0. Peak RSS is the child process's ``VmHWM``. The bare
loops and the pipeline run ``--repeat`` times, alternating; the run with the median wall time is
shown (throughput on a shared 2-core machine varies by 10-20 % from run to run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from _common import ENTERPRISE_KEY, momo_job, questions, run_child, run_local, start_sandbox

KEY = ENTERPRISE_KEY
CONCURRENCY = 64  # calls in flight (the setting: 64 at 50 ms bounds a run at 1,280 rows/s)


def _pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {core})


def _usage() -> dict[str, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu": r.ru_utime + r.ru_stime, "rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak RSS. Not ``ru_maxrss``: Linux carries it over from the parent across
    fork and exec, so every child of a parent that had built a 1 M-row input reported that parent's
    peak (~250 MB) at least. ``VmHWM`` belongs to the process image alone."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- children ---------------------------------------------------------------------------------
def child_aiohttp(url: str, rows: int) -> dict[str, float]:
    """The same calls with nothing but aiohttp: a session, the POST, the JSON body read."""
    import asyncio

    import aiohttp

    async def go() -> float:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        headers = {"Authorization": f"Bearer {KEY}"}
        async with aiohttp.ClientSession(f"{url}/", connector=connector, headers=headers) as session:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(rows):
                queue.put_nowait(i)

            async def worker() -> None:
                while not queue.empty():
                    i = queue.get_nowait()
                    body = {"prompt": f"Question {i}: what is the capital of France?", "stream": False,
                            "max_tokens": 300}
                    async with session.post("agents/159", json=body) as response:
                        data = (await response.json())["data"]
                        assert data["content"] and data["cost"] is not None

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
            return time.perf_counter() - t0

    cpu0 = _usage()["cpu"]
    wall = asyncio.run(go())
    u = _usage()
    return {"rows": rows, "wall": wall, "cpu": u["cpu"] - cpu0, "rss_mb": u["rss_mb"]}


def child_bare(url: str, rows: int) -> dict[str, float]:
    import anyio

    from pipeline.providers import MomoClient

    async def go() -> float:
        async with MomoClient(KEY, url, timeout=30, max_connections=CONCURRENCY) as client:
            send, receive = anyio.create_memory_object_stream[int](CONCURRENCY)

            async def worker() -> None:
                async with receive.clone() as inbox:
                    async for i in inbox:
                        await client.call(159, f"Question {i}: what is the capital of France?", max_tokens=300)

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(CONCURRENCY):
                    tg.start_soon(worker)
                async with send:
                    for i in range(rows):
                        await send.send(i)
                receive.close()
            return time.perf_counter() - t0

    cpu0 = _usage()["cpu"]
    wall = anyio.run(go)
    u = _usage()
    return {"rows": rows, "wall": wall, "cpu": u["cpu"] - cpu0, "rss_mb": u["rss_mb"]}


def _job(data: Path, out: Path, url: str) -> object:
    return momo_job(data, out, url, concurrency=CONCURRENCY)


def child_pipeline(url: str, data: Path, out: Path) -> dict[str, float]:
    import anyio

    # loaded before the clock starts, as the bare loops load theirs and as the CLI has them loaded
    # when a run starts: the CLI opens the provider, and so imports aiohttp, before it calls run_job
    from pipeline import Credentials, open_provider, run_job  # noqa: F401
    from pipeline.providers import _aiohttp  # noqa: F401

    job = _job(data, out, url)
    cpu0 = _usage()["cpu"]
    t0 = time.perf_counter()
    report = anyio.run(lambda: run_local(job, KEY, url, max_connections=CONCURRENCY))
    wall = time.perf_counter() - t0
    u = _usage()
    d = report.as_dict()
    return {"rows": d["rows"], "ok": d["ok"], "skipped": d["skipped"], "calls": d["calls"], "wall": wall,
            "cpu": u["cpu"] - cpu0, "rss_mb": u["rss_mb"]}


def child_preflight(url: str, data: Path, out: Path) -> dict[str, float]:
    """Seconds to read the input, and to plan and preflight the job (which reads it too)."""
    import anyio
    import polars as pl

    from pipeline import Credentials, open_provider
    from pipeline.plan import prepare
    from pipeline.preflight import preflight

    job = _job(data, out, url)

    async def go() -> tuple[float, float]:
        provider = open_provider(job.provider, Credentials(KEY), base_url=url)
        try:
            await provider.account()  # the connection up, as a run's first call finds it
            t0 = time.perf_counter()
            pl.read_parquet(data)
            t1 = time.perf_counter()
            plan = prepare(job, endpoint=provider.endpoint)
            await preflight(job, provider, plan, max_cost=None, restart=True, yes=True, warn=lambda _: None)
            return t1 - t0, time.perf_counter() - t1
        finally:
            await provider.aclose()

    runs = [anyio.run(go) for _ in range(5)]  # the first waits for the vocabulary, as a run does
    best = min(runs[1:], key=lambda r: r[1])
    rows = pl.scan_parquet(data).select(pl.len()).collect().item()
    return {"read": best[0], "preflight": best[1], "cold_read": runs[0][0], "cold": runs[0][1], "rows": float(rows)}


def child_estimate(url: str, data: Path, out: Path) -> dict[str, float]:
    import anyio

    from pipeline import Credentials, estimate, open_provider

    job = _job(data, out, url)

    async def go() -> object:
        provider = open_provider(job.provider, Credentials(KEY), base_url=url)
        try:
            return await estimate(job, provider)
        finally:
            await provider.aclose()

    t0 = time.perf_counter()
    est = anyio.run(go)
    wall = time.perf_counter() - t0
    return {"rows": est.rows, "prompt_tokens": est.prompt_tokens, "wall": wall, "rss_mb": _usage()["rss_mb"]}


# -- parent -----------------------------------------------------------------------------------
def _write_inputs(tmp: Path, rows: int, mid_rows: int, big_rows: int) -> tuple[Path, Path, Path, Path]:
    small, mid, big, prompts = (tmp / f"{n}.parquet" for n in ("rows", "mid", "big", "prompts"))
    questions(rows).write_parquet(small)
    questions(mid_rows, every=50).write_parquet(mid)
    questions(big_rows, every=50).write_parquet(big)
    questions(big_rows).write_parquet(prompts)
    return small, mid, big, prompts


def _child(*args: str) -> dict[str, float]:
    return run_child(__file__, *args)  # type: ignore[no-any-return]


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median wall time, with the largest peak RSS of all runs."""
    ordered = sorted(runs, key=lambda r: r["wall"])
    return {**ordered[len(ordered) // 2], "rss_mb": max(r["rss_mb"] for r in runs)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--latency-ms", type=float, default=50)
    ap.add_argument("--mid-rows", type=int, default=200_000)
    ap.add_argument("--big-rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="runs of the bare loop and the pipeline (median)")
    ap.add_argument("--quick", action="store_true", help="2,000 rows and a 100,000-row big input")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.mid_rows, args.big_rows = 2_000, 20_000, 100_000
    with tempfile.TemporaryDirectory(prefix="momo-bench-") as name:
        tmp = Path(name)
        small, mid, big, prompts = _write_inputs(tmp, args.rows, args.mid_rows, args.big_rows)
        server, url = start_sandbox(args.latency_ms, core=1)
        try:
            print(f"sandbox: {url}, {args.latency_ms:g} ms per call, enterprise tier, {CONCURRENCY} in flight; "
                  f"os.cpu_count()={os.cpu_count()}", flush=True)
            raws, bares, pipes = [], [], []
            for i in range(args.repeat):  # alternate, so drift on the machine hits all alike
                raws.append(_child("aiohttp", url, str(args.rows)))
                bares.append(_child("bare", url, str(args.rows)))
                pipes.append(_child("pipeline", url, str(small), str(tmp / f"out-{i}.parquet")))
            raw, bare, pipe = _median(raws), _median(bares), _median(pipes)
            pre = _child("preflight", url, str(small), str(tmp / "pre-out.parquet"))
            mid_run = _child("pipeline", url, str(mid), str(tmp / "mid-out.parquet"))
            big_run = _child("pipeline", url, str(big), str(tmp / "big-out.parquet"))
            est = _child("estimate", url, str(prompts), str(tmp / "est-out.parquet"))
        finally:
            server.terminate()
            server.wait(10)
    print(f"\nmedian of {args.repeat} runs each (peak RSS: the largest)")
    print(f"{'':<34}{'rows':>10}{'rows/s':>10}{'CPU ms/row':>12}{'peak RSS MB':>13}")
    for name, r in (("bare aiohttp loop", raw), ("bare client loop (MomoClient)", bare),
                    ("pipeline (run_job)", pipe)):
        print(f"{name:<34}{r['rows']:>10,}{r['rows'] / r['wall']:>10,.0f}{r['cpu'] / r['rows'] * 1000:>12.3f}"
              f"{r['rss_mb']:>13.0f}")
    for name, runs in (("aiohttp", raws), ("client", bares), ("pipeline", pipes)):
        each = ", ".join(f"{r['rows'] / r['wall']:,.0f} rows/s {r['cpu'] / r['rows'] * 1000:.3f} ms" for r in runs)
        print(f"  each {name} run, in order: {each}")
    for r in (mid_run, big_run):
        print(f"{'pipeline, ' + format(r['rows'], ',') + '-row input':<34}{r['rows']:>10,}"
              f"{r['rows'] / r['wall']:>10,.0f}{r['cpu'] / r['rows'] * 1000:>12.3f}"
              f"{r['rss_mb']:>13.0f}   ({r['calls']:,} calls, {r['skipped']:,} empty rows skipped)")
    print(f"\nestimate over {est['rows']:,} prompts ({est['prompt_tokens']:,} tokens counted exactly): "
          f"{est['wall']:.2f} s, peak RSS {est['rss_mb']:.0f} MB")
    def rate(r: dict[str, float]) -> float:
        return r["rows"] / r["wall"]

    def cpu(r: dict[str, float]) -> float:
        return r["cpu"] / r["rows"] * 1000

    print(f"pipeline / bare aiohttp loop: rows/s {rate(pipe) / rate(raw):.2f}x, "
          f"CPU per row {cpu(pipe) / cpu(raw):.2f}x, peak RSS {pipe['rss_mb'] / raw['rss_mb']:.2f}x")
    print(f"pipeline / bare client loop:  rows/s {rate(pipe) / rate(bare):.2f}x, "
          f"CPU per row {cpu(pipe) / cpu(bare):.2f}x")
    print(f"preflight of the {pre['rows']:,.0f}-row job, beyond reading its input ({pre['cold_read']:.3f} s): "
          f"{pre['cold'] - pre['cold_read']:.3f} s in a fresh process (as the CLI: vocabulary loading since start), "
          f"{pre['preflight'] - pre['read']:.3f} s with it loaded (best of 4 more)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("aiohttp", "bare", "pipeline", "estimate", "preflight"):
        _pin(0)
        kind, url, *rest = sys.argv[1:]
        if kind in ("pipeline", "estimate", "preflight"):
            from pipeline._memory import tune_allocators
            from pipeline.tokens import preload

            tune_allocators()  # as the CLI does, before polars and pyarrow load
            preload()  # and as it does, the tokenizer's vocabulary loads while they do
        if kind == "aiohttp":
            result = child_aiohttp(url, int(rest[0]))
        elif kind == "preflight":
            result = child_preflight(url, Path(rest[0]), Path(rest[1]))
        elif kind == "bare":
            result = child_bare(url, int(rest[0]))
        elif kind == "pipeline":
            result = child_pipeline(url, Path(rest[0]), Path(rest[1]))
        else:
            result = child_estimate(url, Path(rest[0]), Path(rest[1]))
        print(json.dumps(result))
    else:
        main()
