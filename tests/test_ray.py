"""Jobs on a local Ray (started once for this module) against the sandbox: one tier, one cap and one
ledger for every worker, and a worker killed mid-run."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipeline import Credentials
from pipeline.connect import Connection
from pipeline.ledger import FINAL, SHARDS, Ledger, ledger_dir
from pipeline.outcome import RunStats
from pipeline.ray import RayOptions, run_job
from pipeline.sandbox import KeyConfig, Sandbox, SandboxConfig

from .helpers import (
    calls,
    charged_per_prompt,
    cli,
    momo_job,
    posts,
    questions,
    write_job_toml,
)

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.timeout(600), pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")]


@pytest.fixture(scope="module", autouse=True)
def local_ray(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One local Ray for the module: starting one takes 3-4 s on this machine, its workers more.
    Its home (where Ray keeps the cluster's auth token) is the module's own folder."""
    home = tmp_path_factory.mktemp("ray-home")
    before = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield home
    finally:
        ray.shutdown()
        if before is not None:
            os.environ["HOME"] = before


def _every_row_once(out: pl.DataFrame, n: int) -> None:
    assert out.height == n and out["id"].to_list() == [f"q{i:04d}" for i in range(n)]


def test_a_cap_holds_across_workers_and_a_raised_cap_resumes(tmp_path: Path) -> None:
    key, cap, n = "momo-nopkg", 0.05, 200
    cfg = SandboxConfig(keys={key: KeyConfig(tier="enterprise", balance=100.0, packages={})}, latency_ms=10)
    with Sandbox(cfg).running() as sb:
        job = momo_job(questions(tmp_path / "q.csv", n), tmp_path / "out", sb.momo_url, concurrency=8)
        opts = RayOptions(workers=4, parts_rows=64)  # and the output as a directory of parts
        # yes: the worst case of 200 calls is over the cap (the preflight refuses it without)
        first = run_job(job, Connection(Credentials(key), sb.momo_url), max_cost=cap, yes=True, options=opts)
        capped = pl.read_parquet(tmp_path / "out" / "part-*.parquet")
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
            "_momo_batch.json", "part-00000.parquet", "part-00001.parquet", "part-00002.parquet",
            "part-00003.parquet"]
        charged_first = sum(r["cost"] for r in calls(sb.records()) if r["charged"])
        live, shown = RunStats(), []  # the progress a display reads: rows done, as batches come back
        second = run_job(job, Connection(Credentials(key), sb.momo_url), max_cost=10.0,
                         options=replace(opts, stats=live, on_batch=lambda: shown.append(live.done)))
        records = calls(sb.records())
    assert first.exit_code == 4 and first.stop_code == "BUDGET_EXCEEDED"
    # reconciled as a local run is: what the account lost is what the cost column says
    assert first.reconciliation is not None and first.reconciliation.account_charged == pytest.approx(charged_first)
    assert first.reconciliation.gap == pytest.approx(0.0, abs=1e-9) and first.currency == "CNY"
    assert charged_first <= cap and capped["cost"].sum() == pytest.approx(charged_first)
    _every_row_once(capped, n)
    assert capped.filter(pl.col("status") == "ok").height > 10
    assert set(capped.filter(pl.col("status") == "error")["error_code"].unique()) == {"BUDGET_EXCEEDED"}
    assert second.exit_code == 0 and second.stats.already_done > 10
    assert shown == sorted(shown) and shown[-1] == live.total == n and len(shown) > 1
    assert live.ok == n and live.cost == pytest.approx(second.job_totals.cost if second.job_totals else -1)
    assert max(charged_per_prompt(records).values()) == 1  # nothing recorded was paid again
    final = pl.read_parquet(tmp_path / "out" / "part-*.parquet")
    assert final["cost"].sum() == pytest.approx(sum(r["cost"] for r in records if r["charged"]))


def test_a_killed_worker_loses_no_row_and_repays_at_most_its_calls_in_flight(tmp_path: Path) -> None:
    n, concurrency = 600, 4
    shards = tmp_path / "out.parquet.ledger" / SHARDS
    killed: list[int] = []

    def kill_one_worker(sb: Sandbox) -> None:
        if not sb.wait_for_requests(150, timeout=90):
            return
        shard = sorted(shards.glob("*.sqlite"))[0]  # <host>-<pid>-<token>.sqlite, one per worker process
        pid = int(shard.name.rsplit("-", 2)[1])
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    with Sandbox(SandboxConfig(latency_ms=40)).running() as sb:
        job = momo_job(questions(tmp_path / "q.csv", n), tmp_path / "out.parquet", sb.momo_url,
                       concurrency=concurrency)
        killer = threading.Thread(target=kill_one_worker, args=(sb,))
        killer.start()
        report = run_job(job, Connection(Credentials("momo-sandbox-enterprise"), sb.momo_url),
                         options=RayOptions(workers=2))
        killer.join()
        records = calls(sb.records())
    assert killed, "no worker was killed"
    assert report.exit_code == 0, report.as_dict()
    out = pl.read_parquet(tmp_path / "out.parquet")
    _every_row_once(out, n)
    assert (out["status"] == "ok").all()
    paid = charged_per_prompt(records)
    assert len(paid) == n
    assert sum(times - 1 for times in paid.values()) <= concurrency  # the calls the dead worker had in flight
    with Ledger.open(tmp_path / "out.parquet") as ledger:  # the shards were merged into the ledger
        assert not ledger.shards()
        finals = ledger.states(out["request_key"].to_list())
        assert len(finals) == n and {state for state, _ in finals.values()} == {FINAL}  # a rerun pays nothing
        unrecorded = sum(r["cost"] for r in records if r["charged"]) - ledger.totals().spent
    assert -1e-9 <= unrecorded <= concurrency * max(r["cost"] for r in records) + 1e-9  # the calls cut off


def test_four_workers_share_one_tier_and_write_what_a_local_run_writes(tmp_path: Path, local_ray: Path) -> None:
    """``momo-batch run JOB --ray --address ADDR --workers 4`` at pro (300 per window, time scaled to
    2 s windows): each prompt is paid once, every call is counted, and the file has the schema,
    provenance keys, answers and keys of a local run of the same job.

    That the workers share the tier without a 429 depends on this machine's timing (the network and
    the scheduler between a worker's grant and the server's clock): it is checked in virtual time in
    ``test_ray_coordinator.py`` (four lessees against the sandbox's window algorithms) and measured
    in real time by ``make bench`` (bench/ray_run.py, "tier use": most calls in any window, refused)."""
    window, n = 2.0, 450
    with Sandbox(SandboxConfig(window_seconds=window, algorithm="sliding_log")).running() as sb:
        job = write_job_toml(tmp_path / "job.toml", {
            "input": {"path": questions(tmp_path / "q.csv", n, blank=[5]), "id_column": "id"},
            "prompt": {"template": "{question}"},
            "provider": {"kind": "momo", "base_url": sb.momo_url, "agent_id": 159, "max_tokens": 300},
            "limits": {"tier": "pro", "window_seconds": window, "concurrency": 16},
            "output": {"path": tmp_path / "out.parquet"},
        })
        address = ray.get_runtime_context().gcs_address
        done = cli("run", str(job), "--ray", "--address", address, "--workers", "4", "--json", "--quiet",
                   key="momo-sandbox-pro", HOME=str(local_ray), timeout=300)
        records = calls(sb.records())
        local = cli("run", str(job), "--output", str(tmp_path / "local.parquet"), "--limit", "40", "--json",
                    "--quiet", key="momo-sandbox-pro")
    assert done.returncode == 0, done.stderr[-3000:]
    assert charged_per_prompt(records) == dict.fromkeys(charged_per_prompt(records), 1)
    assert len(charged_per_prompt(records)) == n - 1
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    # every call the server saw is counted once (a refused one too: it was sent, then sent again)
    assert summary["rows"] == n and summary["calls"] == len(records) and summary["ray"]["workers"] == 4
    assert summary["requests"]["distinct_requests"] == n - 1
    out = pl.read_parquet(tmp_path / "out.parquet")
    _every_row_once(out, n)
    assert out["status"].value_counts().sort("status").rows() == [("ok", n - 1), ("skipped", 1)]
    meta = pq.read_metadata(tmp_path / "out.parquet").metadata
    assert json.loads(meta[b"momo_batch.totals"])["exit_code"] == 0 and b"momo_batch.job_sha256" in meta
    assert local.returncode == 0, local.stderr[-3000:]
    mine, theirs = pq.read_table(tmp_path / "out.parquet"), pq.read_table(tmp_path / "local.parquet")
    assert mine.schema.remove_metadata() == theirs.schema.remove_metadata()
    assert set(meta) == set(pq.read_metadata(tmp_path / "local.parquet").metadata)
    for column in ("id", "response", "status", "request_key", "duplicate"):
        assert mine[column].to_pylist()[:40] == theirs[column].to_pylist()


# -- one run path: --ray refuses what a local run refuses, before Ray starts or anything is paid ------
REFUSALS: dict[str, tuple[str, dict[str, dict[str, Any]], int]] = {
    # what is wrong: (the key, the job file's changes, the exit code)
    "worst case over the balance": ("momo-poor", {}, 7),
    "worst case over max_cost": ("momo-rich", {"limits": {"max_cost": 0.0001}}, 7),
    "a prompt column the input lacks": ("momo-rich", {"prompt": {"template": "{nope}"}}, 2),
    "the output is the input": ("momo-rich", {"output": {"path": "IN"}}, 2),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_job_is_refused_alike_locally_and_on_ray(tmp_path: Path, case: str) -> None:
    key, changes, code = REFUSALS[case]
    cfg = SandboxConfig(keys={"momo-poor": KeyConfig(tier="enterprise", balance=0.0001, packages={}),
                              "momo-rich": KeyConfig(tier="enterprise", balance=100.0, packages={})})
    data = questions(tmp_path / "q.csv", 20)
    with Sandbox(cfg).running() as sb:
        outcomes = {}
        for where, flags in (("local", []), ("ray", ["--ray", "--workers", "2"])):
            out = tmp_path / where / "out.parquet"
            tables: dict[str, dict[str, Any]] = {
                "input": {"path": data}, "prompt": {"template": "{question}"},
                "provider": {"kind": "momo", "agent_id": 159, "max_tokens": 200},
                "limits": {"tier": "enterprise", "concurrency": 4}, "output": {"path": out}}
            for name, table in changes.items():
                tables[name] = {**tables[name], **{k: data if v == "IN" else v for k, v in table.items()}}
            (tmp_path / where).mkdir()
            job = write_job_toml(tmp_path / where / "job.toml", tables)
            proc = cli("run", str(job), *flags, key=key, MOMO_BASE_URL=sb.momo_url, timeout=120)
            outcomes[where] = (proc.returncode, proc.stderr.strip().splitlines()[-1:])
            assert not ledger_dir(out).exists() and not out.exists(), where  # nothing left behind
        assert not posts(sb.records()), "a refused job paid a call"
    assert outcomes["local"][0] == outcomes["ray"][0] == code, outcomes
    assert outcomes["local"][1] == outcomes["ray"][1], outcomes  # the same one-line reason
