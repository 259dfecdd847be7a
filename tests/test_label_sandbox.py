"""A whole label job against the sandbox's labelling agent."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from pipeline import Job
from pipeline.config import OutputConfig

from .helpers import run

ROOT = Path(__file__).resolve().parents[1]


async def test_label_job_yields_only_labels_from_the_set(tmp_path: Path, sandbox: object) -> None:
    job = Job.load(ROOT / "jobs/label-sentiment.toml").with_overrides(
        output=OutputConfig(path=tmp_path / "labelled.parquet"))
    report = await run(job, "momo-sandbox-enterprise", sandbox.momo_url, limit=120)  # type: ignore[attr-defined]
    out = pl.read_parquet(tmp_path / "labelled.parquet")
    assert out.height == 120
    labels = set(out["label"].drop_nulls().to_list())
    assert labels and labels <= {"positive", "negative", "neutral"}
    assert set(out["status"].unique()) <= {"ok", "unparsed"}
    assert out.filter(pl.col("label").is_null())["status"].unique().to_list() in ([], ["unparsed"])
    assert out["label_agreement"].drop_nulls().is_between(0, 1).all()
    ok = out.filter(pl.col("status") == "ok")
    assert (ok["label_votes"].list.len() == 3).all()
    assert (out["cost"] >= 0).all() and (out["label_calls"] >= 3).all()
    assert (out["raw_response"].list.len() >= 1).all()
    summary = report.labels
    assert summary is not None
    assert sum(summary["label_distribution"].values()) == 120
    assert 0 <= summary["unparsed_rate"] < 0.5


# the example's template, and the prompt a new user writes first (the review after the colon)
TEMPLATES = {"example": "Product: {product}\nReview: {text}",
             "natural": "Classify the sentiment of this product review: {text}"}


async def test_a_natural_prompt_scores_like_the_examples_template(tmp_path: Path) -> None:
    """The sandbox's agent finds the review wherever the prompt puts it. It once dropped every line
    starting with "Classify", review and all, and scored 27-31 % on the gold sample."""
    from pipeline import evaluate
    from pipeline.sandbox import Sandbox, SandboxConfig

    gold = ROOT / "data" / "reviews-gold.csv"
    accuracy = {}
    with Sandbox(SandboxConfig(label_truth=gold)).running() as sb:
        for name, template in TEMPLATES.items():
            base = Job.load(ROOT / "jobs/label-gold.toml")
            job = base.with_overrides(
                prompt=base.prompt.model_copy(update={"template": template}),
                label={**{k: v for k, v in (base.label_table or {}).items() if k != "escalate"}, "votes": 1},
                output=OutputConfig(path=tmp_path / f"{name}.parquet"))
            await run(job, "momo-sandbox-enterprise", sb.momo_url)
            accuracy[name] = evaluate(tmp_path / f"{name}.parquet", "gold").accuracy
    # 120 rows, one vote of agent 301 (right with p 0.92 on plain rows, 0.6 on the 60 hard ones:
    # ~76 % expected); the two prompts draw differently, so they agree within the noise, not exactly
    assert accuracy["example"] > 0.6 and accuracy["natural"] > 0.6, accuracy
    assert abs(accuracy["natural"] - accuracy["example"]) < 0.15, accuracy
