"""The estimate against reality: pilot estimates within ±10 % of the real run, worst case never below it."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline import Job, estimate, run_job
from pipeline.config import OutputConfig
from pipeline.labels.task import label_template
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
        try:  # the pilot's rows are run by the library's own estimate, and kept for the run
            est = await estimate(job, provider, pilot=pilot)
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


async def test_escalation_is_priced_from_the_pilots_agreement_and_token_figures_are_named_honestly(
        tmp_path: Path) -> None:
    cfg = SandboxConfig(keys={KEY: KeyConfig(tier="enterprise", balance=1000.0, packages={})},
                        label_truth=ROOT / "data/reviews-gold.csv")
    job = Job.load(ROOT / "jobs/label-gold.toml").with_overrides(output=OutputConfig(path=tmp_path / "g.parquet"))
    with Sandbox(cfg).running() as sb:
        provider = provider_for(job, KEY, sb.momo_url)
        try:
            est = await estimate(job, provider, pilot=40)
            await run_job(job, provider)
        finally:
            await provider.aclose()
    out = pl.read_parquet(tmp_path / "g.parquet")
    esc = est.escalation
    assert esc is not None and esc.target == "302" and esc.basis.startswith("pilot (40 rows")
    assert sum(esc.pilot_agreement.values()) == 40 and set(esc.pilot_agreement) <= {"1.000", "0.667", "0.333", "0.000"}
    under = sum(n for share, n in esc.pilot_agreement.items() if float(share) < 0.67)
    assert esc.share == pytest.approx(under / 40, abs=1e-4) and esc.expected_rows == round(under / 40 * 80)
    real = out["cost"].sum()
    assert est.interval[0] <= real <= est.interval[1] and est.worst_case >= real
    assert abs(est.expected_cost - real) <= 0.25 * real, (est.expected_cost, real)
    # prompt side: one local count per request times the calls a row makes; answer side: what the
    # server counted beyond those prompts (answers, its hidden system prompt, re-asks' STRICT lines)
    prompts = [f"Product: {p}\nReview: {t}" for p, t in zip(out["product"], out["text"], strict=True)]
    template = label_template(job).replace("{{", "{").replace("}}", "}")
    local = pl.Series([count_one(template.replace("Product: {product}\nReview: {text}", p)) for p in prompts])
    beyond = (out["tokens_used"] - out["label_calls"] * local).sum() / out.height
    assert est.expected_calls_per_row == pytest.approx(out["label_calls"].mean(), rel=0.15)
    assert est.prompt_tokens_sent == pytest.approx(est.prompt_tokens * est.expected_calls_per_row, rel=0.01)
    assert est.completion_tokens / est.remaining_rows == pytest.approx(beyond, rel=0.2)
    assert est.completion_tokens <= est.remaining_rows * est.expected_calls_per_row * (20 + 7 + 20)


async def test_without_a_pilot_escalation_is_assumed_for_half_and_the_worst_case_for_all(
        tmp_path: Path, sandbox: object) -> None:
    job = Job.load(ROOT / "jobs/label-gold.toml").with_overrides(output=OutputConfig(path=tmp_path / "g.parquet"))
    plain = job.with_overrides(label={k: v for k, v in (job.label_table or {}).items() if k != "escalate"})
    provider = provider_for(job, "momo-sandbox-pro", sandbox.momo_url)  # type: ignore[attr-defined]
    try:
        with_esc, without = await estimate(job, provider), await estimate(plain, provider)
    finally:
        await provider.aclose()
    assert not calls(sandbox.records())  # type: ignore[attr-defined]
    esc = with_esc.escalation
    assert esc is not None and without.escalation is None
    assert esc.share == 0.5 and esc.expected_rows == 60 and esc.basis.startswith("assumed")
    assert esc.price["prompt_per_million"] == 30.0  # agent 302: 0.03 CNY per 1k tokens
    # every row escalated, every answer re-asked (3 calls), at 15 times the price of the votes' 9 calls
    assert with_esc.worst_case - without.worst_case == pytest.approx(3 / 9 * 15 * without.worst_case, rel=0.01)
    assert with_esc.expected_cost > without.expected_cost and with_esc.expected_calls_per_row == 3.5
    assert with_esc.interval[0] == without.interval[0]  # none escalate, at the low end
