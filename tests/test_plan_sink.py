"""The plan (``pipeline.plan.prepare``) and the sink (``pipeline.sink.finalise``) on their own.

The plan: every input row once, in input order, keyed; a bad input is a one-line error naming
the file and the column. The sink: one Parquet file with every input row once in input order,
outcomes joined by key, a repeated row carrying cost 0 (its first row carries what was paid),
written whole or not at all. The runs here use the scripted provider of :mod:`tests.fakes`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import anyio
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import sink
from pipeline.config import Job
from pipeline.dataset import PROMPT, ROW
from pipeline.errors import ConfigError, ServerError, WriteError
from pipeline.keys import FIRST, KEY, OCC
from pipeline.plan import Plan, prepare
from pipeline.result import Unfinished
from pipeline.sink import finalise

from .fakes import FakeProvider, answer, rig

QUESTIONS = ["a", "b", None, "a", "c", "b", "a", "d", "", "e"]  # repeats, a null and an empty prompt


def _input(tmp: Path, questions: list[str | None] = QUESTIONS, **extra: list[Any]) -> Path:
    path = tmp / "in.parquet"
    pl.DataFrame({"id": [f"r{i}" for i in range(len(questions))], "q": questions, **extra},
                 schema_overrides={"q": pl.String}).write_parquet(path)
    return path


def _job(tmp: Path, data: Path, *, template: str = "{q}", dedup: bool = True) -> Job:
    return Job.from_dict({"input": {"path": str(data), "id_column": "id"}, "prompt": {"template": template},
                          "provider": {"kind": "momo", "agent_id": 159, "max_tokens": 300},
                          "reuse": {"dedup": dedup}, "output": {"path": str(tmp / "out.parquet")}})


def _plan(tmp: Path, **kw: Any) -> Plan:
    return prepare(_job(tmp, _input(tmp), **kw), endpoint="http://fake")


# -- the plan ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_rows", [1, 3, 100])
def test_the_plan_gives_every_row_once_in_input_order_with_its_key(tmp_path: Path, batch_rows: int) -> None:
    plan = _plan(tmp_path)
    out = pl.concat(list(plan.batches(batch_rows)))
    assert out[ROW].to_list() == list(range(len(QUESTIONS)))
    assert out[PROMPT].to_list() == QUESTIONS
    for prompt, key in out.select(PROMPT, KEY).iter_rows():
        assert key == (plan.keyer.row(prompt) if prompt else None)  # each key sits on its own row
    assert plan.n_rows == 10 and plan.sendable == 8 and plan.distinct == 5


def test_the_first_row_asking_a_prompt_is_the_one_that_pays(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    assert plan.read_keys()[FIRST].to_list() == [True, True, True, False, True, False, False, True, True, True]
    assert set(plan.read_keys()[OCC].to_list()) == {0}


def test_with_dedup_off_no_row_is_a_repeat_and_each_has_its_own_key(tmp_path: Path) -> None:
    plan = _plan(tmp_path, dedup=False)
    assert plan.read_keys()[FIRST].all() and plan.read_keys()[OCC].to_list() == [0, 0, 0, 1, 0, 1, 2, 0, 0, 0]
    assert plan.distinct == plan.sendable == 8


def test_a_missing_column_is_named_with_the_file(tmp_path: Path) -> None:
    data = _input(tmp_path)
    with pytest.raises(ConfigError) as err:
        prepare(_job(tmp_path, data, template="{question}"))
    message = str(err.value)
    assert str(data) in message and "'question'" in message and "\n" not in message


def test_an_input_column_a_result_would_overwrite_is_named_with_the_file(tmp_path: Path) -> None:
    data = _input(tmp_path, cost=[1.0] * len(QUESTIONS))
    with pytest.raises(ConfigError) as err:
        prepare(_job(tmp_path, data))
    assert str(data) in str(err.value) and "'cost'" in str(err.value)


def test_a_ragged_csv_fails_before_any_call_naming_the_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "in.csv"
    data.write_text("id,q\nr0,hello\nr1,one, two, three\nr2,bye\n")
    with pytest.raises(ConfigError) as err:
        prepare(_job(tmp_path, data))
    assert str(data) in str(err.value) and "line 3" in str(err.value)


# -- the sink ----------------------------------------------------------------------------------------
async def _run(tmp: Path, provider: FakeProvider, plan: Plan) -> None:
    r = rig(tmp, provider)
    with r.ledger:
        await r.run([], plan=plan, rows_per_batch=3)
        finalise(plan, r.ledger, tmp / "out.parquet", unfinished=Unfinished("NOT_RUN", "not run"),
                 metadata=lambda totals: {"totals": str(totals)})


@pytest.mark.parametrize("chunk_rows", [3, sink.FINAL_CHUNK_ROWS])
async def test_the_output_has_every_row_once_in_input_order_and_repeats_cost_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_rows: int) -> None:
    monkeypatch.setattr(sink, "FINAL_CHUNK_ROWS", chunk_rows)  # several output batches, or one
    costs = {"a": 0.001, "b": 0.002, "c": 0.004, "d": 0.008, "e": 0.016}
    provider = FakeProvider(lambda p, n: answer(p, cost=costs[p]))
    plan = _plan(tmp_path)
    await _run(tmp_path, provider, plan)
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out["id"].to_list() == [f"r{i}" for i in range(10)] and out["q"].to_list() == QUESTIONS
    assert out["status"].to_list() == ["ok", "ok", "skipped", "ok", "ok", "ok", "ok", "ok", "skipped", "ok"]
    assert out["response"].to_list()[:2] == ["answer to a", "answer to b"] and out["response"][3] == "answer to a"
    assert out["duplicate"].to_list() == [False, False, False, True, False, True, True, False, False, False]
    assert out["cost"].to_list() == [0.001, 0.002, None, 0.0, 0.004, 0.0, 0.0, 0.008, None, 0.016]
    # the cost column adds up to what the fake server billed: each distinct prompt once
    assert out["cost"].sum() == pytest.approx(sum(provider.charged)) == pytest.approx(sum(costs.values()))
    assert provider.prompts == dict.fromkeys(costs, 1)
    assert out["request_key"].to_list() == plan.read_keys()[KEY].to_list()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


async def test_rows_without_an_outcome_say_why_and_errors_keep_theirs(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    provider = FakeProvider(lambda p, n: ServerError("down", status=500) if p == "c" else answer(p))
    r = rig(tmp_path, provider)
    with r.ledger:
        # as if the job had stopped before the rows of "b", "d" and "e": they have no outcome
        await r.run([], plan=plan, max_attempts=2, only_rows={0, 2, 3, 4, 6, 8})
        finalise(plan, r.ledger, tmp_path / "out.parquet",
                 unfinished=Unfinished("BUDGET_EXCEEDED", "not run: cap reached"), metadata=lambda t: {})
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out.height == 10
    by_q = {q: (s, c) for q, s, c in out.select("q", "status", "error_code").iter_rows() if q}
    assert by_q["a"] == ("ok", None) and by_q["c"] == ("error", "SERVER_ERROR")
    assert by_q["b"] == by_q["d"] == by_q["e"] == ("error", "BUDGET_EXCEEDED")
    assert out.filter(pl.col("q") == "b")["error_message"].to_list() == ["not run: cap reached"] * 2


async def test_an_output_that_cannot_be_written_leaves_nothing_half_written(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output's folder should be")
    r = rig(tmp_path, FakeProvider())
    with r.ledger:
        await r.run([], plan=plan)
        with pytest.raises(WriteError) as err:
            finalise(plan, r.ledger, blocker / "out.parquet", unfinished=Unfinished("NOT_RUN", "x"),
                     metadata=lambda t: {})
    assert str(blocker / "out.parquet") in str(err.value)
    assert not (tmp_path / "out.parquet").exists() and blocker.read_text().startswith("a file")


@settings(max_examples=25)
@given(questions=st.lists(st.one_of(st.none(), st.sampled_from(["", "a", "b", "c", "d", "e", "f"])), min_size=1,
                          max_size=30),
       chunk_rows=st.integers(1, 8))
def test_any_input_comes_out_whole_in_order_and_its_cost_column_adds_up_to_what_was_paid(
        questions: list[str | None], chunk_rows: int) -> None:
    def cost(prompt: str) -> float:
        return (ord(prompt) - ord("a") + 1) / 1000

    async def main(tmp: Path) -> None:
        provider = FakeProvider(lambda p, n: answer(p, cost=cost(p)))
        plan = prepare(_job(tmp, _input(tmp, questions)), endpoint="http://fake")
        await _run(tmp, provider, plan)
        out = pl.read_parquet(tmp / "out.parquet")
        assert out["id"].to_list() == [f"r{i}" for i in range(len(questions))]
        assert out["q"].to_list() == questions
        asked = [q for q in questions if q]
        firsts = {q: i for i, q in reversed(list(enumerate(questions))) if q}
        assert out["duplicate"].to_list() == [firsts[q] != i if q else False for i, q in enumerate(questions)]
        assert out["status"].to_list() == ["ok" if q else "skipped" for q in questions]
        # what was paid: each distinct prompt once, by a hand count, by the fake server, and in the file
        assert provider.prompts == dict.fromkeys(set(asked), 1)
        paid = sum(cost(q) for q in set(asked))
        assert (out["cost"].sum() or 0.0) == pytest.approx(paid) == pytest.approx(sum(provider.charged))

    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        patch.setattr(sink, "FINAL_CHUNK_ROWS", chunk_rows)
        anyio.run(main, Path(tmp))
