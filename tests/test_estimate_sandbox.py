"""The estimate against reality: pilot estimates within ±10 % of the real run, worst case never below it."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline import Job, estimate, run_job
from pipeline.config import OutputConfig
from pipeline.sandbox import KeyConfig, Sandbox, SandboxConfig
from pipeline.tokens import count_one

from .helpers import calls, provider_for

ROOT = Path(__file__).resolve().parents[1]
KEY = "momo-no-package"


@pytest.mark.parametrize(("job_file", "pilot"), [("jobs/example.toml", 20), ("jobs/label-sentiment.toml", 30)])
async def test_pilot_estimate_matches_the_real_run(tmp_path: Path, job_file: str, pilot: int) -> None:
    cfg = SandboxConfig(keys={KEY: KeyConfig(tier="enterprise", balance=1000.0, packages={})})
    job = Job.load(ROOT / job_file)
    job = job.with_overrides(output=OutputConfig(path=tmp_path / "out.parquet"),
                             limits=job.limits.model_copy(update={"tier": "enterprise"}))  # no waiting
    with Sandbox(cfg).running() as sb:
        provider = provider_for(job, KEY, sb.momo_url)

        async def run_pilot(rows: set[int]) -> None:
            await run_job(job, provider, only_rows=rows, write_output=False)

        try:
            est = await estimate(job, provider, pilot=pilot, run_pilot=run_pilot)
            pilot_calls = len(calls(sb.records()))
            report = await run_job(job, provider)
        finally:
            await provider.aclose()
        records = sb.records()
    real = pl.read_parquet(tmp_path / "out.parquet")["cost"].sum()
    charged = sum(r["cost"] for r in calls(records) if r["charged"])
    assert report.exit_code in (0, 1)
    assert real == pytest.approx(charged)  # the cost column is what the server charged
    assert abs(est.expected_cost - real) <= 0.10 * real, (est.expected_cost, real)
    assert est.interval[0] <= real <= est.interval[1]
    assert est.worst_case >= real
    assert est.pilot_rows == pilot and pilot_calls >= pilot
    if job.label is None:  # one call per row: compare tokens beyond the prompt, per row
        ok = pl.read_parquet(tmp_path / "out.parquet").filter(pl.col("status") == "ok")
        beyond = [t - count_one(q) for t, q in zip(ok["tokens_used"], ok["question"], strict=True)]
        per_row = est.completion_tokens / est.remaining_rows
        assert per_row == pytest.approx(sum(beyond) / len(beyond), rel=0.15)
    assert report.stats.already_done == pilot  # the pilot's rows were reused, not paid twice


async def test_estimate_without_pilot_makes_no_paid_call(tmp_path: Path, sandbox: object) -> None:
    job = Job.load(ROOT / "jobs/example.toml").with_overrides(output=OutputConfig(path=tmp_path / "o.parquet"))
    provider = provider_for(job, "momo-sandbox-pro", sandbox.momo_url)  # type: ignore[attr-defined]
    try:
        est = await estimate(job, provider)
    finally:
        await provider.aclose()
    assert not calls(sandbox.records())  # type: ignore[attr-defined]
    assert est.rows == 50 and est.skipped_rows == 1 and est.prompt_tokens > 0
    assert est.package_tokens == 50_000 and "o200k" in est.tokenizer
    assert est.worst_case >= est.expected_cost >= 0 and est.fits_balance is True
