"""``kill -9`` a running job at random moments; each resume loses nothing and pays for no finished row twice."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import polars as pl

from pipeline import Job
from pipeline.plan import prepare
from pipeline.sandbox import Sandbox, SandboxConfig

from .helpers import calls, journaled_finals, questions, sha, write_job_toml

ROWS = 400


def write_job(tmp: Path, url: str) -> Path:
    return write_job_toml(tmp / "job.toml", {
        "input": {"path": questions(tmp / "q.csv", ROWS), "id_column": "id"},
        "prompt": {"template": "{question}"},
        "provider": {"kind": "momo", "base_url": url, "agent_id": 159, "max_tokens": 300},
        "limits": {"tier": "enterprise", "concurrency": 8},
        "output": {"path": tmp / "out.parquet"},
    })


def recorded_prompts(job: Path, url: str) -> set[str]:
    """Prompts whose row has a final outcome in the ledger: in its database (read as a user would,
    with sqlite3) or still only in the journal the killed run wrote (read as plain lines)."""
    root = job.parent / "out.parquet.ledger"
    db = sqlite3.connect(f"file:{root / 'ledger.sqlite'}?mode=ro", uri=True)
    final = {key for (key,) in db.execute("SELECT key FROM entries WHERE state = 2")} | journaled_finals(root)
    db.close()
    plan = prepare(Job.load(job), endpoint=url)
    prompts = pl.read_csv(job.parent / "q.csv")["question"].to_list()
    return {p for p, key in zip(prompts, plan.read_keys()["__key"].to_list(), strict=True) if key in final}


def start(job: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as stderr:
        return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--yes", "--quiet"],
                                env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def test_kill_9_at_random_moments_then_resume(tmp_path: Path) -> None:
    rng = random.Random(20261125)
    with Sandbox(SandboxConfig(latency_ms=15)).running() as sb:
        job = write_job(tmp_path, sb.momo_url)
        env = {**os.environ, "MOMO_API_KEY": "momo-sandbox-enterprise"}
        prompts = pl.read_csv(tmp_path / "q.csv")["question"].to_list()
        finished_at_kill: list[tuple[int, set[str]]] = []  # (log length, recorded prompts) at each kill
        target = 0
        for _ in range(3):
            target += rng.randint(40, 110)
            proc = start(job, env, tmp_path / "stderr.log")
            reached = sb.wait_for_requests(target, timeout=30)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert reached, (tmp_path / "stderr.log").read_text()[-2000:]
            finished_at_kill.append((len(sb.records()), recorded_prompts(job, sb.momo_url)))
        final = subprocess.run([sys.executable, "-m", "pipeline", "run", str(job), "--yes", "--json"],
                               env=env, capture_output=True, text=True, timeout=60)
        records = sb.records()
    assert final.returncode == 0, final.stderr[-2000:]
    summary = json.loads(final.stdout.strip().splitlines()[-1])
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out.height == ROWS and out["id"].n_unique() == ROWS  # every input row exactly once
    assert out["id"].to_list() == sorted(out["id"].to_list())
    assert (out["status"] == "ok").all()
    assert summary["already_done"] >= len(finished_at_kill[-1][1]) > 0
    # no row that was finished (recorded) when a run was killed was called again afterwards
    for log_len, done in finished_at_kill:
        done_shas = {sha(p) for p in done}
        again = [r for r in calls(records[log_len:]) if r["prompt_sha"] in done_shas]
        assert not again, f"{len(again)} finished rows called again after a kill"
    sent = {r["prompt_sha"] for r in calls(records)}
    assert sent == {sha(p) for p in prompts}


def test_ctrl_c_stops_cleanly_with_every_row_accounted_for(tmp_path: Path) -> None:
    with Sandbox(SandboxConfig(latency_ms=15)).running() as sb:
        job = write_job(tmp_path, sb.momo_url)
        env = {**os.environ, "MOMO_API_KEY": "momo-sandbox-enterprise"}
        proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--yes", "--json"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert sb.wait_for_requests(60, timeout=30)
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=30)
        assert proc.returncode == 130
        summary = json.loads(stdout.strip().splitlines()[-1])
        out = pl.read_parquet(tmp_path / "out.parquet")
        assert out.height == ROWS and summary["stop_code"] == "INTERRUPTED"
        unfinished = out.filter(pl.col("status") == "error")
        assert unfinished.height > 0 and unfinished["error_code"].unique().to_list() == ["INTERRUPTED"]
        again = subprocess.run([sys.executable, "-m", "pipeline", "run", str(job), "--yes", "--quiet"], env=env,
                               capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (pl.read_parquet(tmp_path / "out.parquet")["status"] == "ok").all()
