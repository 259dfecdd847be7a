"""Issue 23: the library's front door, honest "re-sent after a crash" counts, and long server
waits that are said and bounded. Against the sandbox, over real sockets; time scaled down."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import polars as pl
import pytest

from pipeline import ConfigError, estimate, run_frame, run_job
from pipeline.progress import Reporter
from pipeline.runner import RunStats
from pipeline.sandbox import FaultConfig, KeyConfig, Sandbox, SandboxConfig

from .helpers import calls, charged_per_prompt, momo_job, posts, provider_for, questions, relay_job, run

KEY = "momo-nopkg"


# -- the front door ---------------------------------------------------------------------------------
async def test_run_job_without_a_provider_names_the_argument(tmp_path: Path) -> None:
    job = momo_job(questions(tmp_path / "q.csv", 3), tmp_path / "out.parquet", "http://127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"run_job: provider must be a Provider, .*\(got None\)"):
        await run_job(job, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"run_job: job must be a Job or the path of a job file \(got 5\)"):
        await run_job(5, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("limit", [-5, 0, 2.5, "3", True])
async def test_a_limit_that_is_not_a_row_count_names_limit(tmp_path: Path, sandbox: Sandbox, limit: object) -> None:
    job = momo_job(questions(tmp_path / "q.csv", 3), tmp_path / "out.parquet", sandbox.momo_url)
    with pytest.raises(ConfigError, match=r"run_job: limit must be a whole number ≥ 1"):
        await run(job, KEY, sandbox.momo_url, limit=limit)
    assert calls(sandbox.records()) == []


async def test_run_frame_wants_a_polars_frame(tmp_path: Path, sandbox: Sandbox) -> None:
    job = momo_job(questions(tmp_path / "q.csv", 3), tmp_path / "out.parquet", sandbox.momo_url)
    provider = provider_for(job, KEY, sandbox.momo_url)
    try:
        with pytest.raises(ConfigError, match=r"run_frame: frame must be a polars DataFrame \(got dict\)"):
            await run_frame({"question": ["a"]}, job, provider)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=r"run_frame: provider must be a Provider"):
            await run_frame(pl.DataFrame({"question": ["a"]}), job, None)  # type: ignore[arg-type]
    finally:
        await provider.aclose()


async def test_estimate_of_a_missing_job_file_names_the_file(tmp_path: Path, sandbox: Sandbox) -> None:
    job = momo_job(questions(tmp_path / "q.csv", 3), tmp_path / "out.parquet", sandbox.momo_url)
    provider = provider_for(job, KEY, sandbox.momo_url)
    try:
        with pytest.raises(ConfigError, match=r"^x: cannot read job file"):
            await estimate("x", provider)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match=r"estimate: max_cost must be a finite amount"):
            await estimate(job, provider, max_cost=float("nan"))
        with pytest.raises(ConfigError, match=r"estimate: limit must be"):
            await estimate(job, provider, limit=-5)
    finally:
        await provider.aclose()


# -- honest counts ----------------------------------------------------------------------------------
async def test_calls_refused_with_402_are_not_resent_after_a_crash(tmp_path: Path) -> None:
    """A 402 stop, a top-up, a resume: nothing crashed, and the refused calls were never charged,
    so none is "re-sent after a crash" (the sandbox's log shows each refused prompt charged once)."""
    key = "momo-small"
    cfg = SandboxConfig(keys={key: KeyConfig(tier="enterprise", balance=0.02, packages={})})
    with Sandbox(cfg).running() as sb:
        job = momo_job(questions(tmp_path / "q.csv", 60), tmp_path / "out.parquet", sb.momo_url, concurrency=8)
        first = await run(job, key, sb.momo_url, yes=True)
        refused = [r for r in posts(sb.records()) if r["status"] == 402]
        sb.top_up(key, 10.0)
        second = await run(job, key, sb.momo_url)
        records = sb.records()
    assert first.stop_code == "INSUFFICIENT_BALANCE" and refused  # some calls were refused
    assert second.exit_code == 0
    assert second.stats.resent == 0 and second.as_dict()["resent_after_crash"] == 0
    assert max(charged_per_prompt(records).values()) == 1


async def test_a_refused_retry_keeps_the_earlier_outcome(tmp_path: Path) -> None:
    """A row that failed (5xx, retries spent), then on the next run is refused (402): the row still
    has its earlier error and is not counted as in flight; the run after that pays it once."""
    key = "momo-small"
    faults = FaultConfig(server_error=1.0, max_faults_per_prompt=2)
    cfg = SandboxConfig(keys={key: KeyConfig(tier="enterprise", balance=10.0, packages={})}, faults=faults)
    with Sandbox(cfg).running() as sb:
        job = momo_job(questions(tmp_path / "q.csv", 4), tmp_path / "out.parquet", sb.momo_url, max_attempts=2)
        first = await run(job, key, sb.momo_url, backoff=(0.01, 0.02))
        sb.set_balance(key, 0.0)
        second = await run(job, key, sb.momo_url, yes=True)
        kept = pl.read_parquet(tmp_path / "out.parquet")
        sb.set_balance(key, 10.0)
        third = await run(job, key, sb.momo_url)
        records = sb.records()
    assert first.stats.error == 4 and second.stop_code == "INSUFFICIENT_BALANCE"
    assert set(kept["error_code"]) == {"SERVER_ERROR"}  # not "not run": the earlier outcome stands
    assert third.exit_code == 0 and third.stats.resent == 0
    assert max(charged_per_prompt(records).values()) == 1


# -- long waits -------------------------------------------------------------------------------------
@pytest.mark.parametrize("api", ["momo", "relay"])
async def test_a_retry_after_over_max_wait_stops_softly_and_resumes(tmp_path: Path, api: str) -> None:
    """A 429 asking for 30 s, with limits.max_wait_seconds = 0.5: the job stops at once with its own
    exit code and a message naming the wait, keeps what it has, and the next run finishes."""
    faults = FaultConfig(long_rate_limit=0.2, long_retry_after=30.0, max_faults_per_prompt=1)
    cfg = SandboxConfig(seed=11, faults=faults, keys={KEY: KeyConfig(tier="enterprise", packages={})})
    with Sandbox(cfg).running() as sb:
        url, key = (sb.momo_url, KEY) if api == "momo" else (sb.relay_url, "sk-sandbox-relay")
        make = momo_job if api == "momo" else relay_job
        job = make(questions(tmp_path / "q.csv", 60), tmp_path / "out.parquet", url, concurrency=2,
                   max_wait_seconds=0.5)
        started = time.monotonic()
        first = await run(job, key, url)
        took = time.monotonic() - started
        sb.set_faults(FaultConfig())
        second = await run(job, key, url)
        records = sb.records()
    assert first.stop_code == "WAIT_TOO_LONG" and first.exit_code == 10
    assert first.stop_message is not None and "30 s" in first.stop_message and "max_wait_seconds" in first.stop_message
    assert took < 30  # it did not sleep for the wait (an upper bound only: never a rate)
    assert second.exit_code == 0 and second.stats.already_done == first.stats.ok
    assert max(charged_per_prompt(records).values()) == 1


def test_a_server_pause_is_said_with_its_end_time() -> None:
    out = io.StringIO()
    stats = RunStats(total=10)
    with Reporter(stats, stream=out):
        before = time.time()
        stats.pause(120.0)
        after = time.time()
        stats.pause(0.2)  # a blip inside it: not said again
    lines = [line for line in out.getvalue().splitlines() if line.startswith("paused")]
    assert len(lines) == 1
    until = re.search(r"until (\d\d:\d\d:\d\d)$", lines[0])
    assert until is not None and "120 s" in lines[0]
    assert until.group(1) in {time.strftime("%H:%M:%S", time.localtime(t)) for t in (before + 120, after + 120)}


async def test_a_pause_within_max_wait_is_waited_and_said(tmp_path: Path) -> None:
    """A Retry-After of 1 s (limit 300 s): every request waits it out, and the progress line says
    until when; each row is paid once."""
    faults = FaultConfig(long_rate_limit=0.1, long_retry_after=1.0, max_faults_per_prompt=1)
    cfg = SandboxConfig(seed=2, faults=faults, keys={KEY: KeyConfig(tier="enterprise", packages={})})
    out = io.StringIO()
    stats = RunStats()
    with Sandbox(cfg).running() as sb:
        job = momo_job(questions(tmp_path / "q.csv", 20), tmp_path / "out.parquet", sb.momo_url, concurrency=2)
        with Reporter(stats, stream=out) as rep:
            report = await run(job, KEY, sb.momo_url, stats=stats, on_result=rep.update)
        records = sb.records()
    assert report.exit_code == 0 and report.stats.rate_limited >= 1
    assert re.search(r"^paused: the server asked to wait 1 s \(Retry-After\), until \d\d:\d\d:\d\d$",
                     out.getvalue(), re.M)
    assert max(charged_per_prompt(records).values()) == 1


# -- a shared cache ---------------------------------------------------------------------------------
def test_two_jobs_sharing_a_cache_at_once_pay_each_request_once(tmp_path: Path) -> None:
    """Two processes run jobs asking the same 80 prompts through one ``--cache`` at the same time:
    the sandbox's log shows each prompt charged once, and both outputs have every answer."""
    import subprocess
    import sys

    from .helpers import ROOT, write_job_toml

    data = questions(tmp_path / "q.csv", 80)
    with Sandbox(SandboxConfig(latency_ms=30, keys={KEY: KeyConfig(tier="enterprise", packages={})})).running() as sb:
        procs = []
        for name in ("a", "b"):
            job = write_job_toml(tmp_path / f"{name}.toml", {
                "input": {"path": data, "id_column": "id"}, "prompt": {"template": "{question}"},
                "provider": {"kind": "momo", "base_url": sb.momo_url, "agent_id": 159, "max_tokens": 200},
                "limits": {"tier": "enterprise", "concurrency": 8},
                "output": {"path": tmp_path / f"{name}.parquet"},
            })
            env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("MOMO_", "OPENAI_"))}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "pipeline", "run", str(job), "--cache", str(tmp_path / "cache"), "--quiet"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**env, "MOMO_API_KEY": KEY}))
        results = [p.communicate(timeout=120) for p in procs]
        records = sb.records()
    assert [p.returncode for p in procs] == [0, 0], results
    charged = charged_per_prompt(records)
    assert len(charged) == 80 and max(charged.values()) == 1  # each request paid once, by one of the jobs
    a, b = pl.read_parquet(tmp_path / "a.parquet"), pl.read_parquet(tmp_path / "b.parquet")
    assert a["response"].to_list() == b["response"].to_list() and a["response"].null_count() == 0
    assert a["cached"].sum() + b["cached"].sum() == 80  # every answer one job paid, the other took
