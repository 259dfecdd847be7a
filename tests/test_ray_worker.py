"""A worker on its own (no Ray): the coordinator is a local object behind the same ``.remote()`` calls."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline import Credentials
from pipeline.connect import Connection
from pipeline.ledger import FINAL, SHARDS, Ledger
from pipeline.ray.coordinator import Coordinator, LocalHandle, lateness
from pipeline.ray.worker import LeaseSize, Worker, WorkerSpec

from .helpers import calls, charged_per_prompt, journaled_finals, momo_job, questions, sha

KEY = "momo-sandbox-enterprise"


def _worker(tmp: Path, url: str, coordinator: Coordinator, ledger: Ledger, n: int = 40) -> tuple[Worker, pa.Table]:
    ledger.fold()  # as the driver does: workers read the job's ledger immutable
    job = momo_job(questions(tmp / "q.csv", n), tmp / "out.parquet", url, concurrency=8)
    spec = WorkerSpec(job=job, connection=Connection(Credentials(KEY), url),
                      coordinator=LocalHandle(coordinator), ledger_root=ledger.root, run=ledger.run, price=None,
                      cap=None, concurrency=8, lateness=lateness(60.0))
    return Worker(spec), pl.read_csv(tmp / "q.csv").to_arrow()


async def _output(worker: Worker, table: pa.Table) -> pl.DataFrame:
    """The worker's output for ``table``; the worker is closed after it."""
    try:
        out = pl.from_arrow(await worker(table))
    finally:
        await worker.close()
    assert isinstance(out, pl.DataFrame)
    return out


def _merged_states(ledger: Ledger, keys: list[str]) -> dict[str, tuple[int, int]]:
    """The keys' states once the driver has merged every shard, as it does when a run ends."""
    for shard in ledger.shards():
        ledger.absorb(shard)
    return ledger.states(keys)


async def test_batches_in_flight_together_ask_a_repeated_prompt_once(tmp_path: Path, sandbox: Any) -> None:
    coordinator = Coordinator(None, 60.0, None, 0.0)
    with Ledger.open(tmp_path / "out.parquet") as ledger:
        worker, table = _worker(tmp_path, sandbox.momo_url, coordinator, ledger)
        first, second = table.slice(0, 25), table.slice(15, 25)  # rows 15-24 in both
        try:
            outs = await asyncio.gather(worker(first), worker(second))
        finally:
            await worker.close()
        shards = list((ledger.root / SHARDS).glob("*.sqlite"))
    assert [o.num_rows for o in outs] == [25, 25]
    assert outs[0].column_names[:2] == ["id", "question"] and "request_key" in outs[0].column_names
    both = pl.concat([pl.from_arrow(o) for o in outs])  # type: ignore[misc]
    assert (both["status"] == "ok").all()
    assert both.filter(pl.col("id") == "q0020")["response"].n_unique() == 1
    records = calls(sandbox.records())
    assert len(records) == 40 and max(charged_per_prompt(records).values()) == 1
    assert len(shards) == 1 and (await coordinator.report())["counters"]["calls"] == 40


async def test_a_stop_from_the_coordinator_sends_nothing_and_says_why(tmp_path: Path, sandbox: Any) -> None:
    coordinator = Coordinator(None, 60.0, None, 0.0)
    await coordinator.stop("BUDGET_EXCEEDED", "max_cost 1 reached", False)
    with Ledger.open(tmp_path / "out.parquet") as ledger:
        worker, table = _worker(tmp_path, sandbox.momo_url, coordinator, ledger, n=10)
        out = await _output(worker, table)
    assert out.height == 10
    assert set(out["error_code"]) == {"BUDGET_EXCEEDED"} and not calls(sandbox.records())
    assert out["error_message"][0] == "not run: max_cost 1 reached (job stopped; run again to resume)"


async def test_what_another_worker_finished_is_not_sent_again(tmp_path: Path, sandbox: Any) -> None:
    """A batch that Ray runs again on another worker finds the dead worker's answers in its shard."""
    coordinator = Coordinator(None, 60.0, None, 0.0)
    with Ledger.open(tmp_path / "out.parquet") as ledger:
        dead, table = _worker(tmp_path, sandbox.momo_url, coordinator, ledger, n=20)
        try:
            await dead(table.slice(0, 12))
        finally:
            await dead.close()
        again, _ = _worker(tmp_path, sandbox.momo_url, coordinator, ledger, n=20)
        out = await _output(again, table)
        finals = _merged_states(ledger, out["request_key"].to_list())
    assert len(calls(sandbox.records())) == 20  # 12 by the first worker, 8 by the second
    assert (out["status"] == "ok").all()
    assert {state for state, _ in finals.values()} == {FINAL} and len(finals) == 20


# A worker in a process of its own, killed (SIGKILL) once it has recorded ``KILLED_AFTER`` outcomes of
# its batch: its shard's database never commits (the commit interval is made endless), so what it
# finished is in its journal only, as the last 50 ms of a worker killed in a real run are.
KILLED_AFTER = 8
_KILLED_WORKER = f"""
import asyncio, os, signal, sys
from pathlib import Path
import pipeline.ledger, pipeline.ray.worker
pipeline.ledger.COMMIT_SECONDS = pipeline.ray.worker.COMMIT_SECONDS = 1e9
from pipeline.ledger import Ledger
from pipeline.ray.coordinator import Coordinator
from tests.test_ray_worker import _worker

outcomes, commit, outcome = 0, Ledger.commit, Ledger.outcome

def counted(self, *args, **kw):
    global outcomes
    outcome(self, *args, **kw)
    outcomes += 1

def killing(self):
    commit(self)  # the outcomes written so far are in the journal file now
    if outcomes >= {KILLED_AFTER}:
        os.kill(os.getpid(), signal.SIGKILL)

Ledger.outcome, Ledger.commit = counted, killing

async def main(tmp, url):
    with Ledger.open(tmp / "out.parquet") as ledger:
        worker, table = _worker(tmp, url, Coordinator(None, 60.0, None, 0.0), ledger, n=20)
        await worker(table)

asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))
"""


async def test_a_killed_workers_journaled_rows_are_not_paid_again(tmp_path: Path, sandbox: Any) -> None:
    """A worker killed mid-batch left its last rows in its shard's journal only; the worker that
    runs the batch again applies that journal before it reads (its writer's lock is free), so no
    row recorded before the kill is sent again, and the driver's merge has every row."""
    from pipeline.ledger import shard_journal

    root = Path(__file__).resolve().parents[1]
    killed = subprocess.run([sys.executable, "-c", _KILLED_WORKER, str(tmp_path), sandbox.momo_url], cwd=root,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    at_kill = len(sandbox.records())
    [shard] = (tmp_path / "out.parquet.ledger" / SHARDS).glob("*.sqlite")
    recorded = journaled_finals(shard_journal(shard))
    with sqlite3.connect(f"file:{shard}?mode=ro", uri=True) as db:
        assert db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 0  # nothing committed
    assert len(recorded) >= KILLED_AFTER
    coordinator = Coordinator(None, 60.0, None, 0.0)
    with Ledger.open(tmp_path / "out.parquet") as ledger:
        again, table = _worker(tmp_path, sandbox.momo_url, coordinator, ledger, n=20)
        out = await _output(again, table)
        finals = _merged_states(ledger, out["request_key"].to_list())
        assert (out["status"] == "ok").all()
        assert len(finals) == 20 and {state for state, _ in finals.values()} == {FINAL}
    done = {sha(q) for q, key in zip(out["question"], out["request_key"], strict=True) if key in recorded}
    assert len(done) == len(recorded)
    after = calls(sandbox.records()[at_kill:])
    assert not [r for r in after if r["prompt_sha"] in done]  # no recorded row paid again
    assert len(after) == 20 - len(recorded)  # the rest: those in flight at the kill and those never sent
    assert max(charged_per_prompt(sandbox.records()).values()) <= 2  # only calls in flight at the kill twice


def test_an_address_nobody_answers_on_is_refused_at_once(tmp_path: Path) -> None:
    import time

    import pytest

    from pipeline.errors import ConfigError
    from pipeline.ray import RayOptions, run_job

    job = momo_job(questions(tmp_path / "q.csv", 3), tmp_path / "out.parquet", "http://127.0.0.1:9/v1")
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"--address 127.0.0.1:9: no Ray cluster answers there"):
        run_job(job, Connection(Credentials(KEY)), options=RayOptions(address="127.0.0.1:9"))
    assert time.monotonic() - started < 5


def test_a_lease_is_what_the_worker_uses_while_its_grants_are_fresh() -> None:
    """Grants older than ``lateness`` are dropped: a lease asks for what the last one's pace uses
    in half that time, grows at most twofold a lease, and stays within its bounds."""
    now = [0.0]
    size = LeaseSize(64, lateness=0.2, clock=lambda: now[0])
    assert size.next() == 64  # nothing measured yet: the first size
    size.leased()
    size.used, now[0] = 100, 0.1  # 1,000 grants/s: 100 in 0.1 s
    assert size.next() == 100  # 1,000/s x 0.1 s
    size.leased()
    size.used, now[0] = 400, 0.2  # 4,000/s: 400 wanted, at most twice the last (100)
    assert size.next() == 200
    size.leased()
    size.used, now[0] = 3, 1.2  # a slow worker: 3 a second would want 0.3 grants
    assert size.next() == LeaseSize.MIN
    size.leased()
    for _ in range(12):  # however fast, never above the bound
        size.used, now[0] = 10**6, now[0] + 0.01
        size.next()
        size.leased()
    assert size.size == LeaseSize.MAX
