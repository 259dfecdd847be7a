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
