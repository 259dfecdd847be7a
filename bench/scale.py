"""``make bench``: millions of rows on one machine (issue 22): peak RSS and wall time by input size.

    .venv/bin/python bench/scale.py [--sizes 300000,3000000,10000000] [--distinct 3000]

For each size, four runs of the CLI (``python -m pipeline``), each its own process, against a
sandbox in another process (5 ms per call, enterprise key):

1. ``estimate --json`` over an input whose every prompt is distinct (the most keys to count),
   with dedup on, then off (``reuse.dedup = false``: every row's repeats are counted);
2. ``run`` over an input whose rows repeat ``--distinct`` prompts (3,000: the calls stay a few
   seconds, so the figure is the work outside them: reading, keying, dedup, ledger, writing);
3. the same ``run`` again: every answer in the ledger, nothing to call (a resume).

Peak RSS and CPU come from ``os.wait4`` (the child's own rusage; Linux counts in a child's peak
the pages it shared with its parent at ``fork``, so this process stays small: it never imports
polars, and a child of its own writes each input); wall time is the parent's clock around it.
Inputs are Parquet (short generated texts, row groups of 125,000 rows).

Targets: peak RSS at the largest size within 1.3x of the smallest's and under 500 MB; at 3 M
rows, ``run`` under 40 s and the resume under 30 s (≤ 10 µs a row), under 400 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import ENTERPRISE_KEY, ROOT, start_sandbox

JOB = """[input]
path = "{data}"
id_column = "id"
[prompt]
template = "{{question}}"
[provider]
kind = "momo"
base_url = "{url}"
agent_id = 159
max_tokens = 300
[limits]
tier = "enterprise"
concurrency = 64
[output]
path = "{out}"
"""


def write_input(path: Path, rows: int, distinct: int) -> None:
    """In a child process (see the docstring): ``rows`` rows asking ``distinct`` prompts in turn."""
    subprocess.run([sys.executable, __file__, "--write", str(path), str(rows), str(distinct)], check=True)


def _write(path: Path, rows: int, distinct: int) -> None:
    import polars as pl

    idx = pl.int_range(0, rows, eager=True)
    n = (idx % distinct).cast(pl.String)
    question = "Q" + n + ": what is the capital of the country numbered " + n + "?"
    pl.DataFrame({"id": idx, "question": question}).write_parquet(path, row_group_size=125_000)


def cli(*args: str) -> dict[str, float]:
    """``python -m pipeline ARGS`` in a child process: its wall time, CPU and peak RSS."""
    env = {**os.environ, "MOMO_API_KEY": ENTERPRISE_KEY}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    err = proc.stderr.read().decode() if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"momo-batch {' '.join(args)} exited {code}:\n{err[-2000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024}


def measure(tmp: Path, url: str, rows: int, distinct: int) -> dict[str, dict[str, float]]:
    every = tmp / f"distinct-{rows}.parquet"
    repeated = tmp / f"repeated-{rows}.parquet"
    write_input(every, rows, rows)
    write_input(repeated, rows, distinct)
    est_job, run_job = tmp / f"estimate-{rows}.toml", tmp / f"run-{rows}.toml"
    every_paid = tmp / f"estimate-nodedup-{rows}.toml"
    est_job.write_text(JOB.format(data=every, url=url, out=tmp / f"est-{rows}.parquet"))
    every_paid.write_text(JOB.format(data=every, url=url, out=tmp / f"est-{rows}.parquet") + "[reuse]\ndedup = false\n")
    run_job.write_text(JOB.format(data=repeated, url=url, out=tmp / f"out-{rows}.parquet"))
    figures = {
        "estimate": cli("estimate", str(est_job), "--json"),
        "estimate_nodedup": cli("estimate", str(every_paid), "--json"),
        "run": cli("run", str(run_job), "--quiet"),
        "resume": cli("run", str(run_job), "--quiet"),
    }
    for path in (every, repeated):
        path.unlink()
    return figures


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="300000,3000000,10000000")
    ap.add_argument("--distinct", type=int, default=3_000)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[int, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="momo-bench-scale-") as name:
        server, url = start_sandbox(5)
        try:
            print(f"sandbox: {url}, 5 ms per call; os.cpu_count()={os.cpu_count()}, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
            for rows in sizes:
                results[rows] = measure(Path(name), url, rows, args.distinct)
                print(f"  {rows:,} rows: " + json.dumps({k: {m: round(v, 2) for m, v in r.items()}
                                                         for k, r in results[rows].items()}), flush=True)
        finally:
            server.terminate()
            server.wait(10)
    print(f"\n{'':<44}{'rows':>12}{'wall s':>9}{'µs/row':>9}{'CPU s':>8}{'peak RSS MB':>13}")
    labels = {"estimate": "estimate --json, every prompt distinct",
              "estimate_nodedup": "the same, reuse.dedup = false",
              "run": f"run, {args.distinct:,} distinct prompts",
              "resume": "the same run again (nothing to call)"}
    for kind, label in labels.items():
        for rows in sizes:
            r = results[rows][kind]
            print(f"{label:<44}{rows:>12,}{r['wall']:>9.1f}{r['wall'] / rows * 1e6:>9.2f}{r['cpu']:>8.1f}"
                  f"{r['rss_mb']:>13.0f}")
    low, high = min(sizes), max(sizes)
    for kind in labels:
        ratio = results[high][kind]["rss_mb"] / results[low][kind]["rss_mb"]
        print(f"peak RSS of {kind} at {high:,} rows / at {low:,}: {ratio:.2f}x (target ≤ 1.3x, under 500 MB)")
    print("Ray's CPU per row against one process: bench/ray_run.py")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--write"]:
        _write(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
