"""The ledger on its own: one writer, crash-safe, money counted once; finalise joins by content key."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest

from pipeline import Job
from pipeline import ledger as ledger_module
from pipeline.errors import JobBusy, WriteError
from pipeline.ledger import FINAL, RETRY, SENT, Cache, Ledger, ledger_dir
from pipeline.plan import KEY, prepare
from pipeline.result import RESULT_SCHEMA, RowResult, Unfinished
from pipeline.sink import finalise

from .helpers import journaled_finals


def _job(tmp: Path, texts: list[str | None], *, dedup: bool = True) -> Job:
    src = tmp / "in.csv"
    pl.DataFrame({"text": texts}, schema={"text": pl.String}).write_csv(src)
    return Job.from_dict({
        "input": {"path": str(src)}, "prompt": {"template": "say {text}"},
        "provider": {"kind": "momo", "agent_id": 1}, "output": {"path": str(tmp / "out.parquet")},
        "reuse": {"dedup": dedup},
    })


def _record(**fields: object) -> dict[str, object]:
    return RowResult(row=0, **fields).to_record()  # type: ignore[arg-type]


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    with Ledger.open(out), pytest.raises(JobBusy, match=rf"process {__import__('os').getpid()}\b"):
        Ledger.open(out)
    Ledger.open(out).close()  # free again once closed


def test_the_lock_dies_with_a_killed_process(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    code = ("import sys; from pathlib import Path; from pipeline.ledger import Ledger; "
            f"Ledger.open(Path({str(out)!r})); print('locked', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    with pytest.raises(JobBusy, match=str(proc.pid)):
        Ledger.open(out)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()  # reaps it and closes both pipes
    Ledger.open(out).close()


def test_kill_9_mid_writes_keeps_every_committed_entry(tmp_path: Path) -> None:
    """A writer killed at an arbitrary point: every entry it reported as written is still there."""
    out = tmp_path / "out.parquet"
    code = ("import sys; from pathlib import Path; from pipeline.ledger import Ledger\n"
            f"led = Ledger.open(Path({str(out)!r}))\n"
            "for i in range(10**9):\n"
            "    led.outcome(f'k{i}', {'status': 'ok', 'response': 'x' * 300}, final=True, paid=0.5, held=0)\n"
            "    print(i, flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    last = -1
    for line in proc.stdout:  # kill once it has written a few thousand, mid-stream
        last = int(line)
        if last >= 3000:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    proc.stdout.close()
    with Ledger.open(out) as led:
        have = led.states([f"k{i}" for i in range(last + 1)])
        assert len(have) == last + 1 and {s for s, _ in have.values()} == {FINAL}
        assert led.totals().spent == pytest.approx(0.5 * led.db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])


def test_spent_counts_paid_calls_once_and_unknown_outcomes_at_their_worst(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "out.parquet") as led:
        led.sent("a", 0.3)
        led.outcome("a", _record(status="ok", response="A", cost=0.1), final=True, paid=0.1, held=0.3)
        led.sent("b", 0.3)  # in flight when the process "died"
        led.sent("c", 0.3)
        led.not_charged("c", 0.3)  # a 429: never charged
        led.sent("d", 0.3)
        led.answered("d", {"response": "D", "cost": 0.05}, paid=0.05, held=0.3)
        assert led.totals().spent == pytest.approx(0.1 + 0.3 + 0.05)
        assert led.totals().unknown == 2  # b, and c (sent, then refused: outcome known, nothing held)
        assert led.get("b") is not None and led.get("b").state == SENT  # type: ignore[union-attr]


def test_finalise_joins_by_content_key_not_position(tmp_path: Path) -> None:
    job = _job(tmp_path, ["a", "b", "c"])
    plan = prepare(job)
    keys = plan.read_keys()[KEY].to_list()
    with Ledger.open(job.output.path) as led:
        led.outcome(keys[2], _record(status="ok", response="C", tokens_used=3, cost=0.1, attempts=1),
                    final=True, paid=0.1, held=0)
        led.outcome(keys[0], _record(status="error", error_code="SERVER_ERROR", attempts=6),
                    final=False, paid=0, held=0)
    # the input is edited: a new row on top, the rest shifted down by one
    edited = _job(tmp_path, ["new", "a", "b", "c"])
    plan = prepare(edited)
    with Ledger.open(job.output.path) as led:
        totals = finalise(plan, led, job.output.path, unfinished=Unfinished("NOT_RUN", "not run"),
                          metadata=lambda t: {"totals": json.dumps(t.as_dict())})
    df = pl.read_parquet(job.output.path)
    assert df["text"].to_list() == ["new", "a", "b", "c"]
    assert df["status"].to_list() == ["error", "error", "error", "ok"]
    assert df["error_code"].to_list() == ["NOT_RUN", "SERVER_ERROR", "NOT_RUN", None]
    assert df["response"].to_list() == [None, None, None, "C"]
    assert df["request_key"].to_list() == plan.read_keys()[KEY].to_list()
    for name, dtype in RESULT_SCHEMA.items():
        assert df.schema[name] == dtype, name
    assert totals.as_dict() == {"ok": 1, "error": 3, "skipped": 0, "tokens": 3, "cost": 0.1}
    assert not list(tmp_path.glob(".*.tmp"))


def test_duplicates_share_one_answer_and_the_first_carries_the_cost(tmp_path: Path) -> None:
    job = _job(tmp_path, ["a", None, "a", "b", "a"])
    plan = prepare(job)
    assert (plan.n_rows, plan.sendable, plan.distinct) == (5, 4, 2)
    key_a = plan.read_keys()[KEY][0]
    with Ledger.open(job.output.path) as led:
        led.outcome(key_a, _record(status="ok", response="A", tokens_used=5, cost=0.2), final=True, paid=0.2, held=0)
        finalise(plan, led, job.output.path, unfinished=Unfinished("NOT_RUN", "x"), metadata=lambda t: {})
    df = pl.read_parquet(job.output.path)
    assert df["response"].to_list() == ["A", None, "A", None, "A"]
    assert df["status"].to_list() == ["ok", "skipped", "ok", "error", "ok"]
    assert df["duplicate"].to_list() == [False, False, True, False, True]
    assert df["cost"].to_list() == [0.2, None, 0.0, None, 0.0]
    assert df["tokens_used"].to_list() == [5, None, 0, None, 0]  # the tokens are the first row's too


def test_dedup_off_gives_each_repeat_a_key_of_its_own(tmp_path: Path) -> None:
    keys = prepare(_job(tmp_path, ["a", "b", "a", "a"], dedup=False)).read_keys()
    assert keys[KEY].n_unique() == 4 and keys["__first"].all()
    # the repeat keys follow the prompt, not the position: a row inserted above changes nothing
    moved = prepare(_job(tmp_path, ["z", "a", "b", "a", "a"], dedup=False)).read_keys()
    assert moved[KEY].to_list()[1:] == keys[KEY].to_list()


def test_all_error_output_still_has_typed_columns(tmp_path: Path) -> None:
    job = _job(tmp_path, ["a"])
    with Ledger.open(job.output.path) as led:
        finalise(prepare(job), led, job.output.path, unfinished=Unfinished("INVALID_API_KEY", "not run"),
                 metadata=lambda t: {})
    df = pl.read_parquet(job.output.path)
    assert df.schema["tokens_used"] == pl.Int64 and df.schema["cost"] == pl.Float64
    assert df.schema["cached"] == pl.Boolean and df["status"].to_list() == ["error"]


def test_a_failing_disk_is_one_clear_error(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "out.parquet") as led:
        led.db.execute("PRAGMA max_page_count = 8")  # a tiny disk: it fills up at once
        with pytest.raises(WriteError, match="cannot record"):
            for i in range(1000):
                led.outcome(f"k{i}", {"response": "x" * 4000}, final=True, paid=0, held=0)
        assert led.get("k0") is not None  # what was recorded stays readable


def test_restart_discards_the_ledger_but_not_the_lock(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    with Ledger.open(out) as led:
        led.outcome("k", {"response": "x"}, final=True, paid=1.0, held=0)
    with Ledger.open(out, restart=True) as led:
        assert led.get("k") is None and led.totals().spent == 0
    assert (ledger_dir(out) / "lock").exists()


def test_the_ledger_is_a_plain_sqlite_file_users_can_query(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    with Ledger.open(out) as led:
        led.outcome("k", _record(status="ok", response="hi", cost=0.5), final=True, paid=0.5, held=0)
        led.outcome("r", _record(status="error", error_code="TIMEOUT"), final=False, paid=0, held=0)
    assert not (ledger_dir(out) / "ledger.sqlite-wal").exists()  # folded in on close
    db = sqlite3.connect(ledger_dir(out) / "ledger.sqlite")
    rows = db.execute("SELECT key, state, json_extract(record, '$.response') FROM entries ORDER BY key").fetchall()
    db.close()
    assert rows == [("k", FINAL, "hi"), ("r", RETRY, None)]


def test_cache_round_trip(tmp_path: Path) -> None:
    cache = Cache(tmp_path / "cache")
    cache.put("k", {"response": "A", "cost": 0.1})
    assert Cache(tmp_path / "cache").get("k") == {"response": "A", "cost": 0.1}
    assert cache.get("other") is None


def test_worker_shards_merge_once_and_the_most_final_entry_wins(tmp_path: Path) -> None:
    """A distributed run's workers each write a shard; the driver merges them into the ledger:
    money adds up (paid and held), the most final state of a key wins, a shard counts once."""
    import shutil

    from pipeline.ledger import SHARDS

    out = tmp_path / "out.parquet"
    with Ledger.open(out) as main:
        main.sent("a", 0.1)  # an earlier run died with this call in flight
        run = main.run
    shards = ledger_dir(out) / SHARDS
    one = Ledger.shard(shards / "host-1-aa.sqlite", run)
    one.outcome("a", _record(status="ok", response="A", cost=0.2), final=True, paid=0.2, held=0.0)
    one.sent("b", 0.3)  # this worker was killed with "b" in flight
    one.close()
    two = Ledger.shard(shards / "host-2-bb.sqlite", run)
    two.outcome("b", _record(status="error", error_code="SERVER_ERROR"), final=False, paid=0.0, held=0.0)
    two.close()
    kept = tmp_path / "copy.sqlite"
    shutil.copy(shards / "host-1-aa.sqlite", kept)
    with Ledger.open(out) as main:
        assert [p.name for p in main.shards()] == ["host-1-aa.sqlite", "host-2-bb.sqlite"]
        for shard in main.shards():
            main.absorb(shard)
        assert main.shards() == [] and not list(shards.glob("*.sqlite*"))
        a, b = main.get("a"), main.get("b")
        assert a is not None and a.state == FINAL and a.record is not None and a.record["response"] == "A"
        assert b is not None and b.state == RETRY
        assert main.totals().spent == pytest.approx(0.2 + 0.1 + 0.3)
        shutil.copy(kept, shards / "host-1-aa.sqlite")  # as if the driver died before removing it
        main.absorb(shards / "host-1-aa.sqlite")
        assert main.totals().spent == pytest.approx(0.6)  # merged once


def test_the_log_is_checkpointed_beside_the_writer_never_inside_its_commits(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's own commits never copy the log into the database (that stalled the event loop
    every few hundred results); the checkpointer's thread does, while the writer goes on."""
    monkeypatch.setattr(ledger_module, "CHECKPOINT_SECONDS", 3600.0)  # no pass unless asked
    out = tmp_path / "out.parquet"
    db_file = ledger_dir(out) / "ledger.sqlite"
    answer = _record(status="ok", response="x" * 600)
    with Ledger.open(out) as ledger:
        assert ledger.db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        checkpointer = ledger.checkpointer
        assert checkpointer is not None
        fresh = db_file.stat().st_size
        for i in range(3000):
            ledger.sent(f"k{i}", 0.0)
            ledger.outcome(f"k{i}", answer, final=True, paid=0.001, held=0.0)
        assert db_file.stat().st_size == fresh  # 6,000 commits (~4 MB of log), none checkpointed
        checkpointer.request()
        assert checkpointer.done.wait(60)
        assert checkpointer.passes == 1 and db_file.stat().st_size > fresh + 2_000_000
        ledger.outcome("late", answer, final=True, paid=0.0, held=0.0)
    assert not (ledger_dir(out) / "ledger.sqlite-wal").exists()  # folded and removed at close
    assert ledger.checkpointer is None and not checkpointer._thread.is_alive()
    with sqlite3.connect(db_file) as db:
        assert db.execute("SELECT COUNT(*), ROUND(SUM(cost), 3) FROM entries").fetchone() == (3001, 3.0)


def test_readers_and_views_start_no_checkpointer(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    Ledger.open(out).close()
    view = Ledger.peek(out)
    assert view is not None and view.checkpointer is None
    view.close()


# -- group commit: a worker's shard commits once a row ------------------------------------------
def _state_seen_by_another_connection(db_file: Path, key: str) -> int | None:
    db = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT state FROM entries WHERE key = ?", (key,)).fetchone()
    finally:
        db.close()
    return None if row is None else int(row[0])


def _without_journal(db_file: Path) -> Ledger:
    """A ledger that commits its writes itself, as the job's does once its journal failed (a full
    disk: ``Ledger._journal_failed``)."""
    Ledger.shard(db_file, run=1).close()  # the file, with its schema
    return Ledger(db_file.parent, ledger_module._connect(db_file), None, 1, path=db_file, writer=True)


def test_while_grouped_an_outcome_waits_for_the_next_sent_mark_which_is_durable_at_once(tmp_path: Path) -> None:
    """Without a journal: each "sent" mark commits, taking the outcomes before it along."""
    db_file = tmp_path / "shards" / "w1.sqlite"
    with _without_journal(db_file) as led:
        commits: list[str] = []
        led.db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
        with led.grouping():
            led.sent("k1", 0.0)
            assert _state_seen_by_another_connection(db_file, "k1") == SENT  # before its call goes out
            led.outcome("k1", _record(status="ok", response="a"), final=True, paid=0.1, held=0.0)
            assert led.get("k1").state == FINAL  # type: ignore[union-attr]  (this connection sees it)
            assert _state_seen_by_another_connection(db_file, "k1") == SENT  # not committed yet
            led.sent("k2", 0.0)  # the next call's mark commits both
            assert _state_seen_by_another_connection(db_file, "k1") == FINAL
            assert _state_seen_by_another_connection(db_file, "k2") == SENT
            led.outcome("k2", _record(status="ok", response="b"), final=True, paid=0.1, held=0.0)
        assert _state_seen_by_another_connection(db_file, "k2") == FINAL  # the end of the run commits
        # k1's mark commits alone (nothing was waiting); k1's outcome rides with k2's mark, and k2's
        # outcome with the end: two transactions with an explicit COMMIT for two rows, not four
        assert len(commits) == 2
        led.outcome("k3", _record(status="ok", response="c"), final=True, paid=0.1, held=0.0)
        assert _state_seen_by_another_connection(db_file, "k3") == FINAL  # not grouped: at once


class _FailingOnce:
    """The ledger's connection, whose next statement that ``fails`` picks fails as a full disk would."""

    def __init__(self, db: sqlite3.Connection, fails: Callable[[str], bool]) -> None:
        self.db = db
        self.fails: Callable[[str], bool] | None = fails

    def execute(self, sql: str, *args: object) -> object:
        if self.fails is not None and self.fails(sql):
            self.fails = None
            raise sqlite3.OperationalError("database or disk is full")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.db, name)


def test_a_failed_commit_loses_only_what_it_held_and_says_so(tmp_path: Path) -> None:
    db_file = tmp_path / "shards" / "w1.sqlite"
    with _without_journal(db_file) as led, led.grouping():
        led.sent("k1", 0.0)
        led.outcome("k1", _record(status="ok", response="a"), final=True, paid=0.1, held=0.0)
        real = led.db
        led.db = _FailingOnce(real, lambda sql: sql == "COMMIT")  # type: ignore[assignment]
        with pytest.raises(WriteError, match="cannot record"):
            led.sent("k2", 0.0)
        led.db = real
        assert led.abandoned == 1
        # rolled back: k1 is where its durable "sent" mark left it (a resume sends it again), k2 unknown
        assert led.get("k1").state == SENT and led.get("k2") is None  # type: ignore[union-attr]
        led.sent("k3", 0.0)
        assert _state_seen_by_another_connection(db_file, "k3") == SENT  # and it goes on


# -- the journal: a running job's writes, durable at once, committed every COMMIT_SECONDS -------
def _grouped_writer(out: Path, rows: str, *, end: str, commit_seconds: float | None = None,
                    shard: tuple[Path, int] | None = None) -> str:
    """A child process that writes ``rows`` (a Python expression) as a run does, printing each
    row once its outcome is written, then ends with ``end``; ``commit_seconds``: the database's
    commit interval, in place of the ledger's own; ``shard``: a worker's shard (path, run) is
    written instead of the job's ledger."""
    interval = "" if commit_seconds is None else \
        f"import pipeline.ledger; pipeline.ledger.COMMIT_SECONDS = {commit_seconds!r}\n"
    opened = f"Ledger.open(Path({str(out)!r}))" if shard is None else \
        f"Ledger.shard(Path({str(shard[0])!r}), {shard[1]})"
    return ("import os, sys; from pathlib import Path; from pipeline.ledger import Ledger\n"
            f"{interval}"
            f"led = {opened}\n"
            "with led.grouping():\n"
            f"    for i in {rows}:\n"
            "        led.sent(f'k{i}', 0.25)\n"
            "        led.outcome(f'k{i}', {'status': 'ok', 'response': 'x' * 300}, final=True, paid=0.5, held=0.25)\n"
            "        led.commit()\n"
            "        print(i, flush=True)\n"
            f"    {end}\n")


def test_kill_9_mid_run_keeps_every_row_the_journal_had(tmp_path: Path) -> None:
    """A run's writes are committed to the database every 50 ms; killed between two commits, the
    journal has the rest: every row the writer went past is there once the ledger opens again."""
    out = tmp_path / "out.parquet"
    proc = subprocess.Popen([sys.executable, "-c", _grouped_writer(out, "range(10**9)", end="pass")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    last = -1
    for line in proc.stdout:
        last = int(line)
        if last >= 3000:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    proc.stdout.close()
    db_file = ledger_dir(out) / "ledger.sqlite"
    with sqlite3.connect(db_file) as db:  # what the database itself had: less than that
        committed = db.execute("SELECT COUNT(*) FROM entries WHERE state = 2").fetchone()[0]
    assert committed < last + 1
    with Ledger.open(out) as led:
        have = led.states([f"k{i}" for i in range(last + 1)])
        assert len(have) == last + 1 and {s for s, _ in have.values()} == {FINAL}
        rows = led.db.execute("SELECT COUNT(*), SUM(state = 2), SUM(held) FROM entries").fetchone()
        # each row paid 0.5 once, and held nothing once settled; a row sent and not settled holds 0.25
        assert led.totals().spent == pytest.approx(0.5 * rows[1] + 0.25 * (rows[0] - rows[1]))
        assert rows[0] - rows[1] <= 1 and rows[2] == pytest.approx(0.25 * (rows[0] - rows[1]))


def test_the_journal_is_applied_once_and_a_line_cut_short_is_ignored(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    # 40 rows, then the process ends without a commit or a close, as a crash would
    # the database never commits: all of it is in the journal (``commit`` writes what waits for it)
    code = _grouped_writer(out, "range(40)", end="os._exit(0)", commit_seconds=1e9)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    root = ledger_dir(out)
    [journal] = root.glob("journal-*.log")
    lines = journal.read_bytes().splitlines(keepends=True)
    assert len(lines) == 80 and all(line.endswith(b"\n") for line in lines)  # a sent and an outcome a row
    with journal.open("ab") as cut:  # a line the crash cut short: never acknowledged
        cut.write(b'["outcome","k99",2,1,100.0,"{}"')
    assert _state_seen_by_another_connection(root / "ledger.sqlite", "k0") is None  # never committed
    for _ in range(2):  # applied by the first open, and only once
        with Ledger.open(out) as led:
            assert led.totals().spent == pytest.approx(40 * 0.5) and led.totals().unknown == 0
            assert led.get("k39").state == FINAL and led.get("k99") is None  # type: ignore[union-attr]
    assert list(root.glob("journal-*.log")) == []  # closed with everything in the database


def test_a_dead_workers_journal_is_applied_to_its_shard_before_the_merge_never_while_it_lives(
        tmp_path: Path) -> None:
    """A worker's shard writes through a journal as the job's ledger does. A worker whose process
    ended without a close (its database never committed) leaves its rows in the journal: the
    first to find its lock free applies them (here the driver, merging); a live writer's journal
    is left alone."""
    from pipeline.ledger import SHARDS, shard_journal, take_over_journal

    out = tmp_path / "out.parquet"
    with Ledger.open(out) as main:
        run = main.run
    shards = ledger_dir(out) / SHARDS
    dead = shards / "host-1-aa.sqlite"
    code = _grouped_writer(out, "range(40)", end="os._exit(0)", commit_seconds=1e9, shard=(dead, run))
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    assert _state_seen_by_another_connection(dead, "k39") is None  # in the journal only
    assert journaled_finals(shard_journal(dead)) == {f"k{i}" for i in range(40)}
    live = Ledger.shard(shards / "host-2-bb.sqlite", run)
    with live.grouping():
        live.sent("b", 0.1)  # journaled, not committed
        assert take_over_journal(live.path) is False  # its writer holds the lock
        assert _state_seen_by_another_connection(live.path, "b") is None
    live.close()
    with Ledger.open(out) as main:
        for shard in main.shards():
            main.absorb(shard)
        have = main.states([f"k{i}" for i in range(40)])
        assert len(have) == 40 and {state for state, _ in have.values()} == {FINAL}
        assert main.totals().spent == pytest.approx(40 * 0.5 + 0.1) and main.get("b").state == SENT  # type: ignore[union-attr]
    assert not list(shards.iterdir())  # the shards, their journals and locks: all merged and gone


def test_a_run_commits_on_a_clock_not_once_a_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.parquet"
    db_file = ledger_dir(out) / "ledger.sqlite"
    with Ledger.open(out) as led:
        commits: list[str] = []
        led.db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
        monkeypatch.setattr(ledger_module, "COMMIT_SECONDS", 3600.0)
        with led.grouping():
            for i in range(100):
                led.sent(f"k{i}", 0.0)
                assert led.get(f"k{i}").state == SENT  # type: ignore[union-attr]  (its own reads see it)
                led.outcome(f"k{i}", _record(status="ok", response="a"), final=True, paid=0.1, held=0.0)
                led.commit()  # what the runner calls each turn: not due yet
            assert commits == [] and _state_seen_by_another_connection(db_file, "k0") is None
            [journal] = ledger_dir(out).glob("journal-*.log")
            assert b'"k99"' in journal.read_bytes()  # each commit() wrote the lines that waited
            led.outcome("k100", _record(status="ok", response="a"), final=True, paid=0.1, held=0.0)
            assert b'"k100"' not in journal.read_bytes()  # an outcome waits for a "sent" mark or commit()
            led.sent("k101", 0.0)
            assert journal.read_bytes().endswith(b'["sent","k101",1,0.0]\n')  # both in one write
            assert b'"k100"' in journal.read_bytes()
            monkeypatch.setattr(ledger_module, "COMMIT_SECONDS", 0.0)
            led.commit()  # due: one commit for the hundred rows
            assert commits == ["COMMIT"] and _state_seen_by_another_connection(db_file, "k100") == FINAL
        assert commits == ["COMMIT"]  # nothing left for the end of the run
        led.outcome("late", _record(status="ok", response="b"), final=True, paid=0.1, held=0.0)
        assert _state_seen_by_another_connection(db_file, "late") == FINAL  # not grouped: at once


def test_a_long_run_starts_new_journal_files_and_loses_nothing(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out.parquet"
    monkeypatch.setattr(ledger_module, "ROTATE_BYTES", 2_000)  # a new file every few rows
    monkeypatch.setattr(ledger_module, "COMMIT_SECONDS", 0.0)
    led = Ledger.open(out)
    root = ledger_dir(out)
    first = {p.name for p in root.glob("journal-*.log")}
    led.grouped = True  # what ``grouping`` sets: a run that never ends, the process "dies" in it
    for i in range(30):
        led.sent(f"k{i}", 0.0)
        led.outcome(f"k{i}", _record(status="ok", response="a" * 100), final=True, paid=0.1, held=0.0)
        led.commit()
    led.sent("k30", 0.0)  # journaled, not committed, when the process dies
    files = list(root.glob("journal-*.log"))
    assert len(files) == 1 and files[0].name not in first  # the applied ones are gone
    led.db.close()  # the crash: the open transaction is lost, the journal file is not
    led._journal.close()  # type: ignore[union-attr]
    __import__("os").close(led._lock)  # type: ignore[arg-type]
    with Ledger.open(out) as again:
        assert again.totals().spent == pytest.approx(3.0) and again.get("k30").state == SENT  # type: ignore[union-attr]


def test_a_database_that_refuses_a_write_loses_nothing_the_journal_has(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    with Ledger.open(out) as led, led.grouping():
        led.sent("k1", 0.0)
        led.outcome("k1", _record(status="ok", response="a"), final=True, paid=0.1, held=0.0)
        real = led.db
        led.db = _FailingOnce(real, lambda sql: "entries" in sql)  # type: ignore[assignment]
        with pytest.raises(WriteError, match="kept in its journal"):
            led.sent("k2", 0.0)
        led.db = real
        assert led.abandoned == 0  # nothing lost: the runner reports what it wrote
        led.outcome("k2", _record(status="ok", response="b"), final=True, paid=0.1, held=0.0)  # journal only
    assert list(ledger_dir(out).glob("journal-*.log"))  # kept for the next open
    with Ledger.open(out) as led:
        assert led.get("k1").state == FINAL and led.get("k2").state == FINAL  # type: ignore[union-attr]
        assert led.totals().spent == pytest.approx(0.2)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_under_the_journal_is_one_clear_error_and_loses_nothing_written(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    with Ledger.open(out) as led, led.grouping():
        led.sent("k1", 0.0)
        led.outcome("k1", _record(status="ok", response="a"), final=True, paid=0.1, held=0.0)  # waits in memory
        journal = led._journal
        assert journal is not None
        real_fd, journal._fd = journal._fd, os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
        os.close(real_fd)
        with pytest.raises(WriteError, match=r"journal-\d+\.log: cannot record \(No space left on device\)"):
            led.sent("k2", 0.0)  # its call must not go out
        # the journal is done with (it may end in part of a line); what the database held is committed
        assert led._journal is None and _state_seen_by_another_connection(led.path, "k1") == FINAL
        led.sent("k3", 0.0)  # the rest of the run commits each write, as a shard does
        assert _state_seen_by_another_connection(led.path, "k3") == SENT
        led.outcome("k3", _record(status="ok", response="c"), final=True, paid=0.1, held=0.0)
    with Ledger.open(out) as led:
        assert led.get("k1").state == FINAL and led.get("k3").state == FINAL  # type: ignore[union-attr]
        assert led.get("k2") is None and led.totals().spent == pytest.approx(0.2)


def test_estimate_sees_what_a_dead_run_left_in_its_journal_but_never_touches_a_running_one(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    code = _grouped_writer(out, "range(25)", end="os._exit(0)", commit_seconds=1e9)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    root = ledger_dir(out)
    assert _state_seen_by_another_connection(root / "ledger.sqlite", "k0") is None  # all in the journal
    # a run is on (it holds the lock): the view reads the database as it is, and waits for nothing
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1]); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()",
                               str(root / "lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    view = Ledger.peek(out)
    assert view is not None and view.get("k0") is None and list(root.glob("journal-*.log"))
    view.close()
    holder.communicate("")
    view = Ledger.peek(out)  # nobody runs it: the dead run's journal is applied, then dropped
    assert view is not None and view.totals().spent == pytest.approx(25 * 0.5)
    assert view.get("k24").state == FINAL  # type: ignore[union-attr]
    view.close()
    assert not list(root.glob("journal-*.log"))
    with Ledger.open(out) as led:  # and applied once only
        assert led.totals().spent == pytest.approx(25 * 0.5)
        assert led.db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 2  # the dead run and this one


def test_a_view_of_a_workers_shard_leaves_its_log_alone(tmp_path: Path) -> None:
    """Workers read each other's shards through read-only views (``pipeline.ray.worker``): closing
    one must not try to fold the log of a file another process writes."""
    shard = tmp_path / "shards" / "w1.sqlite"
    with Ledger.shard(shard, run=1) as writer:
        writer.sent("k1", 0.0)
        view = Ledger(shard.parent, ledger_module._connect(shard, readonly=True), None, 0, path=shard)
        statements: list[str] = []
        view.db.set_trace_callback(statements.append)
        assert view.get("k1") is not None
        view.close()
        assert not [sql for sql in statements if "checkpoint" in sql]
        writer.sent("k2", 0.0)  # the writer goes on
