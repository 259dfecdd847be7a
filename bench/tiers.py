"""How close a job comes to its rate tier: achieved % of the limit, per tier × server algorithm.

    .venv/bin/python bench/tiers.py [--window-seconds 1.0] [--windows 3]

For each tier (free 10, basic 60, pro 300 per window) and each window algorithm the sandbox
offers (``fixed_window``, ``sliding_log``, ``token_bucket``): a sandbox server in its own process
with time scaled down (a rate "minute" lasts ``--window-seconds``), and ``run_job`` in this
process sending ``--windows`` windows' worth of rows, 32 in flight. From the server's request log:

- **max/window**: the most calls that arrived in any window — never above the limit;
- **achieved**: (calls − 1) / (last − first arrival) × window, and its share of the limit
  (the limiter aims at 1/1.015 of it, 98.5 %);
- **429s**: calls the server refused.

These are rates in real time, so they depend on how busy the machine is; the tests assert only
the bound a slow machine cannot break (``tests/test_run_sandbox.py``), and this prints the rest.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
import polars as pl

from pipeline import Credentials, Job, open_provider, run_job
from pipeline.sandbox.log import max_in_any_window

TIERS = {"free": 10, "basic": 60, "pro": 300}
ALGORITHMS = ("fixed_window", "sliding_log", "token_bucket")
CONCURRENCY = 32


def start_sandbox(config: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.sandbox", "--port", "0", "--config", str(config)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    match = re.search(r"http://\S+", proc.stdout.readline())  # blocks until it listens
    if not match:
        proc.kill()
        raise SystemExit("the sandbox did not print its URL")
    return proc, match.group(0)


def sandbox_config(folder: Path, name: str, algorithm: str, window: float) -> tuple[Path, Path]:
    log = folder / f"{name}.jsonl"
    config = folder / f"{name}.toml"
    config.write_text(f'window_seconds = {window}\nalgorithm = "{algorithm}"\nrequest_log = "{log}"\n')
    return config, log


def tier_job(folder: Path, url: str, tier: str, rows: int, window: float) -> Job:
    data = folder / f"{tier}.csv"
    pl.DataFrame({"question": [f"{tier} question {i}" for i in range(rows)]}).write_csv(data)
    return Job.from_dict({
        "input": {"path": str(data)},
        "prompt": {"template": "{question}"},
        "provider": {"kind": "momo", "base_url": url, "agent_id": 159, "max_tokens": 100},
        "limits": {"tier": tier, "window_seconds": window, "concurrency": CONCURRENCY},
        "output": {"path": str(folder / f"{tier}.parquet")},
    })


async def run_tier(job: Job, tier: str) -> None:
    provider = open_provider(job.provider, Credentials(f"momo-sandbox-{tier}"), max_connections=CONCURRENCY)
    try:
        report = await run_job(job, provider, restart=True)
    finally:
        await provider.aclose()
    if report.exit_code != 0:
        raise SystemExit(f"{tier}: the job ended with exit code {report.exit_code}")


def measure(log: Path, limit: int, window: float) -> dict[str, Any]:
    records = [json.loads(line) for line in log.read_text().splitlines()]
    calls = sorted(r["ts"] for r in records if r.get("prompt_sha") and r["status"] == 200)
    achieved = (len(calls) - 1) / (calls[-1] - calls[0]) * window
    return {"calls": len(calls), "max": max_in_any_window(calls, window), "achieved": achieved,
            "share": achieved / limit, "refused": sum(r["status"] == 429 for r in records)}


def one_run(folder: Path, tier: str, algorithm: str, window: float, windows: int) -> dict[str, Any]:
    config, log = sandbox_config(folder, f"{tier}-{algorithm}", algorithm, window)
    proc, url = start_sandbox(config)
    try:
        anyio.run(run_tier, tier_job(folder, f"{url}/v1", tier, TIERS[tier] * windows + 1, window), tier)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return measure(log, TIERS[tier], window)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window-seconds", type=float, default=1.0, help="length of a scaled rate 'minute'")
    parser.add_argument("--windows", type=int, default=3, help="windows' worth of rows per run")
    args = parser.parse_args()
    print(f"tiers: {args.windows} windows of {args.window_seconds:g} s each, {CONCURRENCY} in flight\n")
    print(f"{'tier':<6} {'algorithm':<13} {'limit':>5} {'calls':>6} {'max/window':>10} {'achieved':>9} "
          f"{'% of limit':>10} {'429s':>5}")
    with tempfile.TemporaryDirectory(prefix="momo-tiers-") as tmp:
        for tier, limit in TIERS.items():
            for algorithm in ALGORITHMS:
                m = one_run(Path(tmp), tier, algorithm, args.window_seconds, args.windows)
                flag = "" if m["max"] <= limit else "  OVER THE LIMIT"
                print(f"{tier:<6} {algorithm:<13} {limit:>5} {m['calls']:>6} {m['max']:>10} {m['achieved']:>9.1f} "
                      f"{m['share']:>10.1%} {m['refused']:>5}{flag}", flush=True)


if __name__ == "__main__":
    main()
