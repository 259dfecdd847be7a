"""More of what a job does against the sandbox: the relay, terminal errors, notebooks, CLI refusals, exports."""

from __future__ import annotations

import io
import json
from pathlib import Path

import polars as pl
import pytest

from pipeline import Job, run_frame
from pipeline.errors import AgentNotFound, InvalidApiKey
from pipeline.plan import prepare
from pipeline.progress import Reporter
from pipeline.runner import RunStats
from pipeline.sandbox import RELAY_PRICES

from .helpers import ROOT, cli, momo_job, posts, provider_for, questions, run, write_job_toml


def relay_job_file(tmp: Path, url: str, rows: int = 30) -> Path:
    price = RELAY_PRICES["gpt-4o-mini"]
    return write_job_toml(tmp / "relay.toml", {
        "input": {"path": questions(tmp / "q.csv", rows, blank=[2]), "id_column": "id"},
        "prompt": {"template": "{question}"},
        "provider": {"kind": "openai", "base_url": url, "model": "gpt-4o-mini", "max_tokens": 200, "stream": True,
                     "prompt_price_per_million": price.prompt, "completion_price_per_million": price.completion},
        "limits": {"tier": "enterprise", "concurrency": 8},
        "output": {"path": tmp / "relay.parquet"},
    })


def test_relay_job_has_token_split_and_reconciles_with_quota(tmp_path: Path, sandbox: object) -> None:
    job = relay_job_file(tmp_path, sandbox.relay_url)  # type: ignore[attr-defined]
    proc = cli("run", str(job), "--json", OPENAI_API_KEY="sk-sandbox-relay",
               RELAY_ACCESS_TOKEN="sandbox-system-token", RELAY_USER_ID="1")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    out = pl.read_parquet(tmp_path / "relay.parquet")
    ok = out.filter(pl.col("status") == "ok")
    assert ok.height == 29 and out.height == 30
    assert (ok["prompt_tokens"] + ok["completion_tokens"] == ok["tokens_used"]).all()
    price = RELAY_PRICES["gpt-4o-mini"]
    expected = (ok["prompt_tokens"] * price.prompt + ok["completion_tokens"] * price.completion) / 1e6
    assert ok["cost"].to_list() == pytest.approx(expected.to_list())
    rec = summary["reconciliation"]
    # the relay charges whole quota units (500000 = $1): a gap of a few micro-dollars, reported
    assert rec["account_charged"] == pytest.approx(out["cost"].sum(), abs=30 * 2e-6)
    assert abs(rec["gap"]) <= 30 * 2e-6


async def test_invalid_key_stops_before_paying_for_more(tmp_path: Path, sandbox: object) -> None:
    data = questions(tmp_path / "q.csv", 200)
    job = momo_job(data, tmp_path / "out.parquet", sandbox.momo_url, concurrency=4)  # type: ignore[attr-defined]
    with pytest.raises(InvalidApiKey):  # the preflight finds out before any call
        await run(job, "momo-not-a-key", sandbox.momo_url)  # type: ignore[attr-defined]
    assert posts(sandbox.records()) == []  # type: ignore[attr-defined]
    # a key revoked while the job runs: without the preflight, the run itself stops at once
    report = await run(job, "momo-not-a-key", sandbox.momo_url, check=False)  # type: ignore[attr-defined]
    assert report.stop_code == "INVALID_API_KEY" and report.exit_code == 5
    assert 1 <= len(posts(sandbox.records())) <= 4  # type: ignore[attr-defined]
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out.height == 200 and (out["status"] == "error").all()  # every row says why
    good_job = momo_job(tmp_path / "q.csv", tmp_path / "good.parquet", sandbox.momo_url)  # type: ignore[attr-defined]
    await run(good_job, "momo-sandbox-enterprise", sandbox.momo_url, limit=3)  # type: ignore[attr-defined]
    # an all-error file has the same typed columns as a good one
    assert pl.read_parquet_schema(tmp_path / "out.parquet") == pl.read_parquet_schema(tmp_path / "good.parquet")


async def test_unknown_agent_stops_the_job(tmp_path: Path, sandbox: object) -> None:
    data = questions(tmp_path / "q.csv", 50)
    job = momo_job(data, tmp_path / "out.parquet", sandbox.momo_url, provider={"agent_id": 424242})  # type: ignore[attr-defined]
    with pytest.raises(AgentNotFound):  # the preflight finds out before any call
        await run(job, "momo-sandbox-enterprise", sandbox.momo_url)  # type: ignore[attr-defined]
    assert posts(sandbox.records()) == []  # type: ignore[attr-defined]
    report = await run(job, "momo-sandbox-enterprise", sandbox.momo_url, check=False)  # type: ignore[attr-defined]
    assert report.stop_code == "AGENT_NOT_FOUND" and report.exit_code == 5
    assert report.stats.calls <= job.limits.concurrency


async def test_invalid_parameters_fail_the_row_without_retry(tmp_path: Path, sandbox: object) -> None:
    data = questions(tmp_path / "q.csv", 5)
    job = momo_job(data, tmp_path / "out.parquet", sandbox.momo_url,  # type: ignore[attr-defined]
                   provider={"max_tokens": 100_000})
    report = await run(job, "momo-sandbox-enterprise", sandbox.momo_url)  # type: ignore[attr-defined]
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert report.exit_code == 1 and report.stop_code is None
    assert out["error_code"].unique().to_list() == ["INVALID_PARAMETERS"]
    assert out["attempts"].to_list() == [1] * 5 and len(posts(sandbox.records())) == 5  # type: ignore[attr-defined]


async def test_run_frame_for_notebooks(tmp_path: Path, sandbox: object) -> None:
    job = momo_job(questions(tmp_path / "q.csv", 1), tmp_path / "unused.parquet", sandbox.momo_url)  # type: ignore[attr-defined]
    frame = pl.DataFrame({"id": ["a", "b", "c"], "question": ["one?", None, "three?"]})
    provider = provider_for(job, "momo-sandbox-enterprise", sandbox.momo_url)  # type: ignore[attr-defined]
    try:
        got = await run_frame(frame, job, provider)
    finally:
        await provider.aclose()
    assert got["id"].to_list() == ["a", "b", "c"]
    assert got["status"].to_list() == ["ok", "skipped", "ok"]
    assert got["response"][0] and got["tokens_used"][2] > 0
    assert not (tmp_path / "unused.parquet").exists()


def test_preflight_refuses_unless_yes_and_the_cap_then_holds(tmp_path: Path) -> None:
    out = tmp_path / "labels.parquet"
    args = ("run", "jobs/label-sentiment.toml", "--sandbox", "--limit", "40", "--max-cost", "0.001",
            "--output", str(out), "--json")
    refused = cli(*args)
    assert refused.returncode == 7 and "--yes" in refused.stderr and "Traceback" not in refused.stderr
    assert not out.exists()
    forced = cli(*args, "--yes")
    assert forced.returncode == 4, forced.stderr
    summary = json.loads(forced.stdout.strip().splitlines()[-1])
    assert summary["stop_code"] == "BUDGET_EXCEEDED"
    assert 0 < pl.read_parquet(out)["cost"].sum() <= 0.001


def test_label_export_csv_and_jsonl(tmp_path: Path) -> None:
    out = tmp_path / "labels.parquet"
    for fmt in ("csv", "jsonl"):
        proc = cli("run", "jobs/label-sentiment.toml", "--sandbox", "--limit", "12", "--output", str(out),
                   "--format", fmt, "--quiet")
        assert proc.returncode == 0, proc.stderr
    table = pl.read_csv(out.with_suffix(".csv"))
    assert table.height == 12 and {"label", "label_agreement", "cost"} <= set(table.columns)
    lines = out.with_suffix(".jsonl").read_text().splitlines()
    assert len(lines) == 12 and json.loads(lines[0])["label"] in ("positive", "negative", "neutral", None)


def test_progress_prints_plain_lines_off_a_terminal() -> None:
    stats = RunStats()
    stats.total = 10
    stream = io.StringIO()
    with Reporter(stats, stream=stream, interval=0.0) as rep:
        stats.ok = 4
        rep.update()
    line = stream.getvalue().splitlines()[0]
    assert line.startswith("progress: 4/10 rows") and "429s 0" in line and "cost" in line


def test_every_sample_job_is_ready_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # job files name their data relative to the project
    paths = sorted((ROOT / "jobs").glob("*.toml"))
    assert {p.name for p in paths} >= {"example.toml", "label-sentiment.toml"}
    for path in paths:
        prep = prepare(Job.load(path))  # tables, [label], the input's columns against the prompt
        assert prep.n_rows > 0, path
        assert ("label" in prep.result_columns) == (prep.job.label is not None), path
