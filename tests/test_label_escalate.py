"""Escalation: which rows go to the stronger target, what decides, what it costs, what is reused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline import ConfigError, Job, evaluate
from pipeline.config import OutputConfig
from pipeline.labels import EscalateConfig, LabelSpec, parse_label
from pipeline.sandbox import RELAY_PRICES, Sandbox, SandboxConfig

from .helpers import calls, relay_job, run

ROOT = Path(__file__).resolve().parents[1]
GOLD = ROOT / "data/reviews-gold.csv"
KEY = "momo-sandbox-enterprise"
SPEC = LabelSpec(("positive", "negative", "neutral"))


@pytest.mark.parametrize(("label", "agreement", "below", "escalated"), [
    ("positive", 1.0, 0.67, False),  # unanimous
    ("positive", 2 / 3, 0.67, True),  # 2 of 3 is 0.667, under 0.67
    ("positive", 2 / 3, 0.5, False),
    ("positive", 1 / 3, 0.5, True),  # no two votes agree
    (None, 0.0, 0.5, True),  # no vote parsed
    ("positive", 1.0, 1.0, False),  # below = 1: only unanimous rows stay
    ("positive", 0.8, 1.0, True),  # 4 of 5
])
def test_which_rows_escalate(label: str | None, agreement: float, below: float, escalated: bool) -> None:
    assert EscalateConfig(agent_id=302, below=below).needed(label, agreement) is escalated


def gold_job(out: Path, **label: Any) -> Job:
    job = Job.load(ROOT / "jobs/label-gold.toml")
    return job.with_overrides(label={**(job.label_table or {}), **label}, output=OutputConfig(path=out))


@pytest.mark.parametrize(("escalate", "kind", "message"), [
    ({"agent_id": 302, "model": "gpt-4o"}, "momo", "exactly one of agent_id"),
    ({"model": "gpt-4o"}, "openai", "needs prompt_price_per_million"),
    ({"agent_id": 302, "prompt_price_per_million": 1.0}, "momo", "prices are for relay models"),
    ({"agent_id": 302, "below": 0}, "momo", "greater than 0"),
    ({"model": "gpt-4o", "prompt_price_per_million": 1.0, "completion_price_per_million": 2.0}, "momo",
     "escalates to agent_id"),
    ({"agent_id": 301}, "momo", "the job's own target"),
])
def test_escalate_settings_are_checked(tmp_path: Path, escalate: dict[str, Any], kind: str, message: str) -> None:
    """Checked when the job is made (a job file: when it loads), before anything reads the input."""
    label = {**(Job.load(ROOT / "jobs/label-gold.toml").label_table or {}), "escalate": escalate}
    base = relay_job(GOLD, tmp_path / "o.parquet", "http://x") if kind == "openai" else gold_job(tmp_path / "o.parquet")
    with pytest.raises(ConfigError, match=message):
        base.with_overrides(label=label)


@pytest.fixture
def gold_sandbox() -> Iterator[Sandbox]:
    """A sandbox whose labelling agents know the gold sample's labels."""
    with Sandbox(SandboxConfig(label_truth=GOLD)).running() as sb:
        yield sb


async def test_escalated_rows_are_those_under_the_threshold_and_the_strong_agent_decides(
        tmp_path: Path, gold_sandbox: Sandbox) -> None:
    out = tmp_path / "esc.parquet"
    await run(gold_job(out, escalate={"agent_id": 302, "below": 0.67}), KEY, gold_sandbox.momo_url, limit=40)
    got = pl.read_parquet(out)
    under = (pl.col("label_agreement") < 0.67)
    assert set(got.filter(under)["label_source"]) <= {"escalation", "escalation_unparsed"}
    assert set(got.filter(~under)["label_source"]) == {"votes"}
    escalated = got.filter(pl.col("label_source") == "escalation")
    assert escalated.height >= 5  # the hard rows of the first 40 make sure there are some
    for row in escalated.iter_rows(named=True):  # the last answer is the strong agent's, and it decides
        assert parse_label(row["raw_response"][-1], SPEC) == (row["label"],)
        assert row["label_calls"] > 3 and row["escalation_cost"] > 0
    kept = got.filter(pl.col("label_source") == "votes")
    assert (kept["escalation_cost"] == 0).all() and (kept["label_calls"] >= 3).all()
    for row in kept.iter_rows(named=True):
        assert row["label_votes"].count(row["label"]) == 3
    # tokens and cost count every call, and the escalations are 302's calls exactly
    charged = [r for r in calls(gold_sandbox.records()) if r["charged"]]
    assert got["cost"].sum() == pytest.approx(sum(r["cost"] for r in charged))
    assert got["tokens_used"].sum() == sum(r["tokens_used"] for r in charged)
    strong = [r for r in charged if r["target"] == 302]
    assert got["escalation_cost"].sum() == pytest.approx(sum(r["cost"] for r in strong))
    assert got["escalation_tokens"].sum() == sum(r["tokens_used"] for r in strong)
    asked = got.filter(pl.col("label_source") != "votes").height  # one call each, up to two re-asks
    assert asked <= len(strong) <= 3 * asked


async def test_a_lower_threshold_then_a_higher_pays_only_for_the_new_escalations(
        tmp_path: Path, gold_sandbox: Sandbox) -> None:
    out = tmp_path / "esc.parquet"
    await run(gold_job(out, escalate={"agent_id": 302, "below": 0.5}), KEY, gold_sandbox.momo_url, limit=40)
    first = pl.read_parquet(out)
    sent_before = len(calls(gold_sandbox.records()))
    await run(gold_job(out, escalate={"agent_id": 302, "below": 0.67}), KEY, gold_sandbox.momo_url, limit=40)
    second = pl.read_parquet(out)
    new = calls(gold_sandbox.records())[sent_before:]
    assert new and {r["target"] for r in new} == {302}  # every vote came from the ledger
    newly = second.filter(pl.col("label_source") != "votes").height - first.filter(
        pl.col("label_source") != "votes").height
    assert newly > 0 and len(new) >= newly
    # the votes are the same votes; the second output's cost column is every call of both runs
    assert first["label_votes"].to_list() == second["label_votes"].to_list()
    charged = sum(r["cost"] for r in calls(gold_sandbox.records()) if r["charged"])
    assert second["cost"].sum() == pytest.approx(charged)


async def test_on_the_gold_sample_votes_beat_one_vote_and_escalation_beats_votes(
        tmp_path: Path, gold_sandbox: Sandbox) -> None:
    out = tmp_path / "gold.parquet"  # one ledger: each strategy reuses the calls of the one before
    accuracy, cost = {}, {}
    for name, label in [("1 vote", {"votes": 1, "escalate": None}), ("3 votes", {"votes": 3, "escalate": None}),
                        ("escalation", {"votes": 3, "escalate": {"agent_id": 302, "below": 0.67}})]:
        job = gold_job(out, **label)
        job = job.with_overrides(label={k: v for k, v in (job.label_table or {}).items() if v is not None})
        await run(job, KEY, gold_sandbox.momo_url)
        got = pl.read_parquet(out)
        ev = evaluate(out, "gold")
        # checked against the gold column directly, not only through evaluate
        assert ev.rows == got.height == 120
        assert ev.accuracy == pytest.approx((got["label"] == got["gold"]).fill_null(False).mean(), abs=1e-6)
        accuracy[name], cost[name] = ev.accuracy, ev.cost
    assert accuracy["1 vote"] < accuracy["3 votes"] < accuracy["escalation"]
    assert cost["1 vote"] < cost["3 votes"] < cost["escalation"]


async def test_relay_jobs_escalate_to_a_model_priced_from_the_job(tmp_path: Path) -> None:
    strong = RELAY_PRICES["gpt-4o"]
    base = relay_job(GOLD, tmp_path / "r.parquet", "", model="gpt-4o-mini")
    job = base.with_overrides(
        prompt=base.prompt.model_copy(update={"template": "Product: {product}\nReview: {text}"}),
        provider=base.provider.model_copy(update={"max_tokens": 20}),
        label={"set": ["positive", "negative", "neutral"], "votes": 3,
               "escalate": {"model": "gpt-4o", "below": 0.67, "prompt_price_per_million": strong.prompt,
                            "completion_price_per_million": strong.completion}})
    with Sandbox(SandboxConfig(label_truth=GOLD)).running() as sb:
        before = sb.relay_quota()
        await run(job, "sk-sandbox-relay", sb.relay_url, limit=30)
        spent = (before - sb.relay_quota()) / 500_000
        records = [r for r in calls(sb.records()) if r["charged"]]
    got = pl.read_parquet(tmp_path / "r.parquet")
    assert got.filter(pl.col("label_source") == "escalation").height > 0
    # the price table is the relay's; the relay rounds each call to whole quota units (1/500000 $)
    assert got["cost"].sum() == pytest.approx(spent, abs=0.5 * len(records) / 500_000)
    strong_calls = [r for r in records if r["target"] == "gpt-4o"]
    assert got["escalation_cost"].sum() == pytest.approx(sum(r["cost"] for r in strong_calls),
                                                         abs=0.5 * len(strong_calls) / 500_000)
    assert (got["prompt_tokens"] + got["completion_tokens"] == got["tokens_used"]).all()


async def test_a_cost_cap_holds_with_escalations_priced_at_the_strong_agent(tmp_path: Path,
                                                                            gold_sandbox: Sandbox) -> None:
    out = tmp_path / "capped.parquet"
    job = gold_job(out, escalate={"agent_id": 302, "below": 1.0})  # every row not unanimous escalates
    # yes: the preflight sees that the worst case does not fit; the cap then stops the run
    report = await run(job, KEY, gold_sandbox.momo_url, max_cost=0.05, yes=True)
    got = pl.read_parquet(out)
    assert report.stop_code == "BUDGET_EXCEEDED"
    assert 0 < got["cost"].sum() <= 0.05
    assert got.filter(pl.col("label_source") == "escalation").height > 0  # escalations ran, and were capped
