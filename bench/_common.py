"""What the benchmark scripts share: the job they run, its input, running it in this process, and
the sandbox and child processes they start. Each script runs as ``python bench/NAME.py`` (its
children too), so this folder is on ``sys.path`` and ``import _common`` finds this file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ENTERPRISE_KEY = "momo-sandbox-enterprise"


def momo_job(data: Path, out: Path, url: str, *, concurrency: int, tier: str = "enterprise",
             window_seconds: float | None = None) -> Any:
    """The benchmarks' job: one question per row to agent 159, at most 300 tokens an answer."""
    from pipeline import Job

    limits: dict[str, Any] = {"tier": tier, "concurrency": concurrency}
    if window_seconds is not None:
        limits["window_seconds"] = window_seconds
    return Job.from_dict({
        "input": {"path": str(data), "id_column": "id"},
        "prompt": {"template": "{question}"},
        "provider": {"kind": "momo", "base_url": url, "agent_id": 159, "max_tokens": 300},
        "limits": limits,
        "output": {"path": str(out)},
    })


async def run_local(job: Any, key: str, url: str, *, max_connections: int = 100, options: Any = None) -> Any:
    """``pipeline.run_job`` in this process, with a provider opened for it and closed after."""
    from pipeline import Credentials, open_provider, run_job

    provider = open_provider(job.provider, Credentials(key), base_url=url, max_connections=max_connections)
    try:
        return await run_job(job, provider, options=options)
    finally:
        await provider.aclose()


def questions(n: int, every: int = 1) -> Any:
    """``n`` rows of distinct prompts (a sample question with its row number), ``id`` and
    ``question``; with ``every``, only one row in ``every`` has a prompt, the others none."""
    import polars as pl

    sample = pl.read_csv(ROOT / "data" / "questions.csv")["question"].drop_nulls().to_list()
    idx = pl.int_range(0, n, eager=True)
    text = pl.Series(sample).gather(idx % len(sample))
    df = pl.DataFrame({"id": idx, "question": "Q" + idx.cast(pl.String) + ": " + text})
    if every > 1:
        df = df.with_columns(pl.when(pl.col("id") % every == 0).then(pl.col("question")).alias("question"))
    return df


def start_sandbox(latency_ms: float, *, core: int | None = None) -> tuple[subprocess.Popen[str], str]:
    """``momo-batch sandbox`` in a process of its own (pinned to ``core`` when the machine has more
    than one), and its base URL."""
    code = ("import os, sys; from pipeline.cli import main\n"
            f"core = {core!r}\n"
            "if core is not None and hasattr(os, 'sched_setaffinity') and (os.cpu_count() or 1) > 1:\n"
            "    os.sched_setaffinity(0, {core})\n"
            "main()")
    proc = subprocess.Popen([sys.executable, "-c", code, "sandbox", "--port", "0", "--latency-ms", str(latency_ms)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "sandbox listening on http://127.0.0.1:PORT"
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"sandbox did not start: {line!r}")
    return proc, line.rsplit(" ", 1)[-1].strip() + "/v1"


def run_child(script: str, *args: str) -> Any:
    """``python SCRIPT ARGS...``: its last line of output, as JSON."""
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"bench child {args[0]} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
