"""Every row answered by its own prompt, once: edited inputs, dedup, the cache, one writer, stops.

What was paid is read from the sandbox's request log (charged calls by prompt hash, and which
request id answered which prompt), never from the project's own counters.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline import Job
from pipeline.errors import WriteError
from pipeline.journal import COMMIT_SECONDS
from pipeline.ledger import Ledger
from pipeline.sandbox import FaultConfig, Sandbox, SandboxConfig

from .helpers import calls, charged_per_prompt, journaled_finals, momo_job, provider_for, run, sha, write_job_toml

KEY = "momo-sandbox-enterprise"
BASE = [f"Question {i}: how many legs has a {i}-pede?" for i in range(30)]


def write_questions(path: Path, prompts: list[str], **extra: list[Any]) -> Path:
    pl.DataFrame({"id": [f"q{i:03d}" for i in range(len(prompts))], "question": prompts, **extra}).write_csv(path)
    return path


def assert_answers_are_their_own(out: pl.DataFrame, records: list[dict[str, Any]]) -> None:
    """Each ok row's request id was, in the sandbox's log, the answer to that row's prompt."""
    asked = {r["request_id"]: r["prompt_sha"] for r in calls(records) if r["request_id"]}
    ok = out.filter(pl.col("status") == "ok")
    assert ok.height > 0
    for prompt, rid in zip(ok["question"].to_list(), ok["request_id"].to_list(), strict=True):
        assert asked[rid] == sha(prompt), f"row {prompt!r} shows the answer to another prompt"


def _edit(kind: str) -> list[str]:
    rows = list(BASE)
    if kind == "insert":
        return ["TOTALLY DIFFERENT QUESTION"] + rows[:10] + ["Another new one?"] + rows[10:]
    if kind == "delete":
        return [p for i, p in enumerate(rows) if i not in (0, 7, 19)]
    if kind == "reorder":
        random.Random(3).shuffle(rows)
        return rows
    if kind == "modify":
        return [p + " (edited)" if i in (0, 5, 29) else p for i, p in enumerate(rows)]
    return rows  # add_column: the prompts are the same


@pytest.mark.parametrize("edit", ["insert", "delete", "reorder", "modify", "add_column"])
async def test_an_edited_input_calls_exactly_the_new_requests(tmp_path: Path, sandbox: Any, edit: str) -> None:
    data = write_questions(tmp_path / "q.csv", BASE)
    job = momo_job(data, tmp_path / "out.parquet", sandbox.momo_url)
    first = await run(job, KEY, sandbox.momo_url)
    assert first.exit_code == 0
    before = len(sandbox.records())
    edited = _edit(edit)
    extra = {"note": ["x"] * len(edited)} if edit == "add_column" else {}
    write_questions(data, edited, **extra)
    second = await run(job, KEY, sandbox.momo_url)
    records = sandbox.records()
    new_calls = sorted(r["prompt_sha"] for r in calls(records[before:]))
    assert new_calls == sorted(sha(p) for p in set(edited) - set(BASE))
    assert second.exit_code == 0 and second.stats.calls == len(new_calls)
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out["question"].to_list() == edited and (out["status"] == "ok").all()
    assert_answers_are_their_own(out, records)


async def test_identical_requests_are_sent_once_and_the_cost_column_sums_to_the_charge(
        tmp_path: Path, sandbox: Any) -> None:
    prompts = [BASE[i % 10] for i in range(40)]  # 10 distinct prompts, 4 rows each
    data = write_questions(tmp_path / "q.csv", prompts)
    job = momo_job(data, tmp_path / "out.parquet", sandbox.momo_url)
    report = await run(job, KEY, sandbox.momo_url)
    records = sandbox.records()
    assert charged_per_prompt(records) == Counter({sha(p): 1 for p in BASE[:10]})
    assert report.requests is not None
    assert report.requests.distinct_requests == 10
    assert report.requests.dedup_saved_requests == 30
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert (out["status"] == "ok").all() and out["duplicate"].sum() == 30
    assert_answers_are_their_own(out, records)
    charged = sum(r["cost"] for r in calls(records) if r["charged"])  # the sandbox's figure, summed by hand
    assert out["cost"].sum() == pytest.approx(charged, abs=1e-9)
    assert report.job_totals is not None
    assert report.job_totals.cost == pytest.approx(charged, abs=1e-6)
    # tokens too: a duplicate shares the answer, not the tokens the server counted for it
    counted = sum(r["tokens_used"] for r in calls(records) if r["charged"])
    assert out["tokens_used"].sum() == counted and counted > 0
    assert (out.filter(pl.col("duplicate"))["tokens_used"] == 0).all()


async def test_dedup_off_sends_every_repeat(tmp_path: Path, sandbox: Any) -> None:
    prompts = [BASE[i % 5] for i in range(15)]
    data = write_questions(tmp_path / "q.csv", prompts)
    job = Job.from_dict({**momo_job(data, tmp_path / "out.parquet", sandbox.momo_url).model_dump(),
                         "reuse": {"dedup": False}})
    await run(job, KEY, sandbox.momo_url)
    assert charged_per_prompt(sandbox.records()) == Counter({sha(p): 3 for p in BASE[:5]})
    before = len(sandbox.records())
    await run(job, KEY, sandbox.momo_url)  # and each repeat finds its own answer again
    assert calls(sandbox.records()[before:]) == []
    assert not pl.read_parquet(tmp_path / "out.parquet")["duplicate"].any()


async def test_the_estimate_counts_distinct_requests(tmp_path: Path, sandbox: Any) -> None:
    from pipeline import estimate

    data = write_questions(tmp_path / "q.csv", [BASE[i % 10] for i in range(40)])
    job = momo_job(data, tmp_path / "out.parquet", sandbox.momo_url)
    provider = provider_for(job, KEY, sandbox.momo_url)
    try:
        est = await estimate(job, provider)
    finally:
        await provider.aclose()
    assert (est.rows, est.distinct_requests, est.remaining_rows) == (40, 10, 10)


async def test_the_cache_serves_a_second_job_at_no_charge(tmp_path: Path, sandbox: Any) -> None:
    cache = tmp_path / "cache"
    first_data = write_questions(tmp_path / "a.csv", BASE[:20])
    first = await run(momo_job(first_data, tmp_path / "a.parquet", sandbox.momo_url), KEY, sandbox.momo_url,
                      cache=cache)
    assert first.exit_code == 0
    paid_first = pl.read_parquet(tmp_path / "a.parquet").select("question", "cost")
    before = len(sandbox.records())
    second_data = write_questions(tmp_path / "b.csv", BASE[:25])
    second = await run(momo_job(second_data, tmp_path / "b.parquet", sandbox.momo_url), KEY, sandbox.momo_url,
                       cache=cache)
    records = sandbox.records()
    assert sorted(r["prompt_sha"] for r in calls(records[before:])) == sorted(sha(p) for p in BASE[20:25])
    out = pl.read_parquet(tmp_path / "b.parquet")
    assert out["cached"].to_list() == [True] * 20 + [False] * 5
    assert out.filter(pl.col("cached"))["cost"].to_list() == [0.0] * 20
    assert second.stats.cached == 20
    assert second.stats.cache_saved == pytest.approx(paid_first["cost"].sum())
    assert_answers_are_their_own(out, records)
    # without --cache nothing is shared: a third job pays for all of it
    before = len(sandbox.records())
    await run(momo_job(second_data, tmp_path / "c.parquet", sandbox.momo_url), KEY, sandbox.momo_url)
    assert len(calls(sandbox.records()[before:])) == 25


def _job_file(tmp: Path, url: str, rows: int, concurrency: int = 4, **provider: Any) -> Path:
    return write_job_toml(tmp / "job.toml", {
        "input": {"path": write_questions(tmp / "q.csv", [f"Q{i} what is {i} cubed?" for i in range(rows)])},
        "prompt": {"template": "{question}"},
        "provider": {"kind": "momo", "base_url": url, "agent_id": 159, "max_tokens": 300, **provider},
        "limits": {"tier": "enterprise", "concurrency": concurrency},
        "output": {"path": tmp / "out.parquet"},
    })


def _start(job: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "MOMO_API_KEY": KEY}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--yes", "--json", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_run_of_a_running_job_is_refused_and_nothing_is_paid_twice(tmp_path: Path) -> None:
    # a few prompts hang on their first send, so the first run is still running when the second starts
    cfg = SandboxConfig(faults=FaultConfig(hang=0.1, max_faults_per_prompt=1), hang_seconds=120)
    with Sandbox(cfg).running() as sb:
        job = _job_file(tmp_path, sb.momo_url, rows=60, concurrency=16, timeout=300)
        first = _start(job)
        assert sb.wait_for_requests(20, timeout=30)
        second = _start(job)
        out2, err2 = second.communicate(timeout=60)
        first.send_signal(signal.SIGKILL)
        first.communicate()
        assert second.returncode == 8 and out2 == ""
        assert f"process {first.pid}" in err2 and len(err2.strip().splitlines()) == 1
        third = _start(job)  # the lock died with the killed run: no clean-up needed
        _, err3 = third.communicate(timeout=60)
        records = sb.records()
    assert third.returncode == 0, err3[-2000:]
    assert set(charged_per_prompt(records).values()) == {1} and len(charged_per_prompt(records)) == 60


@pytest.mark.parametrize(("signum", "code", "stop_code"), [(signal.SIGINT, 130, "INTERRUPTED"),
                                                          (signal.SIGTERM, 143, "TERMINATED")])
def test_a_signal_lets_calls_in_flight_finish_and_the_resume_pays_for_nothing_twice(
        tmp_path: Path, signum: int, code: int, stop_code: str) -> None:
    with Sandbox(SandboxConfig(latency_ms=30)).running() as sb:
        job = _job_file(tmp_path, sb.momo_url, rows=200, concurrency=8)
        proc = _start(job, "--quiet")
        assert sb.wait_for_requests(40, timeout=30)
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == code, stderr[-2000:]
        summary = json.loads(stdout.strip().splitlines()[-1])
        out = pl.read_parquet(tmp_path / "out.parquet")
        assert summary["stop_code"] == stop_code and out.height == 200
        unfinished = out.filter(pl.col("status") != "ok")
        assert unfinished.height > 0 and set(unfinished["error_code"]) == {stop_code}
        # every call that went out before the stop was answered and recorded: none is lost
        assert out.filter(pl.col("status") == "ok").height == len(calls(sb.records()))
        again = _start(job, "--quiet")
        _, err = again.communicate(timeout=60)
        records = sb.records()
    assert again.returncode == 0, err[-2000:]
    assert set(charged_per_prompt(records).values()) == {1} and len(charged_per_prompt(records)) == 200


def test_a_second_ctrl_c_aborts_calls_in_flight_and_the_resume_counts_them_honestly(tmp_path: Path) -> None:
    # every first send of a prompt hangs (and is logged when it arrives, so we know it went out);
    # four rows, four workers: all four are in flight
    cfg = SandboxConfig(faults=FaultConfig(hang=1.0, max_faults_per_prompt=1), hang_seconds=120)
    with Sandbox(cfg).running() as sb:
        job = _job_file(tmp_path, sb.momo_url, rows=4, concurrency=4, timeout=300)
        proc = _start(job)
        assert sb.wait_for_requests(4, timeout=30)  # four calls in flight, all hanging
        assert proc.stderr is not None
        proc.send_signal(signal.SIGINT)
        for line in proc.stderr:  # the first signal is taken: it now waits for the four
            if "no new calls" in line:
                break
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130
        assert json.loads(stdout.strip().splitlines()[-1])["calls"] == 4
        hung = {r["prompt_sha"] for r in calls(sb.records())}
        again = _start(job)
        stdout, stderr = again.communicate(timeout=60)
        records = sb.records()
    assert again.returncode == 0, stderr[-2000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    resent = {r["prompt_sha"] for r in calls(records) if r["n"] == 2}
    assert resent == hung and summary["resent_after_crash"] == len(hung) == 4
    assert summary["unknown_outcomes"] == 0 and set(charged_per_prompt(records).values()) == {1}


async def test_a_write_error_stops_sending_and_the_resume_pays_for_nothing_recorded(
        tmp_path: Path, sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_questions(tmp_path / "q.csv", [f"{p} #{i}" for i in range(4) for p in BASE])  # 120 rows
    job = momo_job(data, tmp_path / "out.parquet", sandbox.momo_url, concurrency=8)
    real = Ledger.outcome
    written: list[str] = []
    failed: list[str] = []

    def failing_disk(self: Ledger, key: str, record: dict[str, Any], **kw: Any) -> None:
        if len(written) >= 30:
            failed.append(record.get("request_id") or "")
            raise WriteError("disk full (injected)")
        real(self, key, record, **kw)
        written.append(record.get("request_id") or "")

    monkeypatch.setattr(Ledger, "outcome", failing_disk)
    report = await run(job, KEY, sandbox.momo_url)
    assert report.stop_code == "WRITE_FAILED" and report.exit_code == 9
    assert 1 <= len(failed) <= 8 + 1  # at most the calls in flight when the disk filled up
    monkeypatch.setattr(Ledger, "outcome", real)
    again = await run(job, KEY, sandbox.momo_url)
    assert again.exit_code == 0
    records = sandbox.records()
    prompt_of = {r["request_id"]: r["prompt_sha"] for r in calls(records) if r["request_id"]}
    twice = {p for p, n in charged_per_prompt(records).items() if n > 1}
    assert {prompt_of[rid] for rid in written}.isdisjoint(twice)  # nothing recorded was paid again
    assert twice <= {prompt_of[rid] for rid in failed if rid}  # only answers the full disk lost
    assert len(charged_per_prompt(records)) == 120


async def test_a_local_run_takes_up_what_a_distributed_runs_workers_recorded(tmp_path: Path, sandbox: Any) -> None:
    """Shards left by workers of a ``--ray`` run that died are merged before a local run sends anything."""
    from pipeline.ledger import SHARDS
    from pipeline.plan import KEY as ROW_KEY
    from pipeline.plan import prepare
    from pipeline.result import RowResult

    data = write_questions(tmp_path / "q.csv", BASE[:10])
    job = momo_job(data, tmp_path / "out.parquet", sandbox.momo_url)
    provider = provider_for(job, KEY, sandbox.momo_url)
    keys = prepare(job, endpoint=provider.endpoint).read_keys()[ROW_KEY].to_list()
    await provider.aclose()
    with Ledger.open(tmp_path / "out.parquet") as ledger:
        run_no = ledger.run
    shard = Ledger.shard(tmp_path / "out.parquet.ledger" / SHARDS / "node-7-ab.sqlite", run_no)
    for key in keys[:4]:
        done = RowResult(row=0, status="ok", response="from a worker", cost=0.5).to_record()
        shard.outcome(key, done, final=True, paid=0.5, held=0.0)
    shard.close()
    report = await run(job, KEY, sandbox.momo_url)
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert report.stats.calls == 6 and report.stats.already_done == 4
    assert out["response"].to_list()[:4] == ["from a worker"] * 4
    assert out["cost"].head(4).sum() == pytest.approx(2.0)
    assert not charged_per_prompt(sandbox.records()).keys() & {sha(p) for p in BASE[:4]}


async def test_a_run_commits_on_a_clock_and_reports_a_row_only_once_it_is_durable(
        tmp_path: Path, sandbox: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each write of a run is appended to the journal before anything else sees it; the database
    commits every 50 ms. What the progress and the counters see of a row, a reader of the ledger's
    files (the database, and the journal read here as plain JSON lines) already finds."""
    data = write_questions(tmp_path / "q.csv", [f"{p} #{i}" for i in range(3) for p in BASE])  # 90 rows
    job = momo_job(data, tmp_path / "out.parquet", sandbox.momo_url, concurrency=8)
    opened: list[Ledger] = []
    transactions: list[str] = []  # each COMMIT, and each write made outside a transaction (autocommitted)
    real_open = Ledger.open

    def open_traced(output: Path, **kw: Any) -> Ledger:
        led = real_open(output, **kw)

        def trace(sql: str) -> None:
            if sql == "COMMIT" or (sql.startswith(("INSERT", "UPDATE")) and not led.db.in_transaction):
                transactions.append(sql)

        led.db.set_trace_callback(trace)
        opened.append(led)
        return led

    monkeypatch.setattr(Ledger, "open", staticmethod(open_traced))
    durable_when_reported: list[bool] = []

    def reported(result: Any) -> None:
        led = opened[0]
        db = sqlite3.connect(f"file:{led.path}?mode=ro", uri=True)
        try:
            committed = {key for (key,) in db.execute("SELECT key FROM entries WHERE state = 2")}
        finally:
            db.close()
        durable_when_reported.append(len(committed | journaled_finals(led.root)) >= len(durable_when_reported) + 1)

    t0 = time.monotonic()
    report = await run(job, KEY, sandbox.momo_url, on_result=reported)
    wall = time.monotonic() - t0
    assert report.exit_code == 0 and report.stats.ok == 90
    assert len(durable_when_reported) == 90 and all(durable_when_reported)
    # 90 rows, 180 writes: no write commits on its own, and the run commits at most every 50 ms
    # (and once at its end), however long it took on this machine
    assert not [sql for sql in transactions if sql != "COMMIT"]
    assert 1 <= len(transactions) <= wall / COMMIT_SECONDS + 2, (len(transactions), wall)
    assert not list(opened[0].root.glob("journal-*.log"))  # all in the database at the end: dropped
