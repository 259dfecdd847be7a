"""The journal survives a killed writer; finalise writes every row once, typed, atomically."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from pipeline.dataset import Dataset
from pipeline.errors import ConfigError
from pipeline.result import RESULT_SCHEMA, RowResult
from pipeline.sink import Journal, Unfinished, finalise, journal_dir, record_schema


def _journal(out: Path, fingerprint: str = "f1") -> Journal:
    return Journal.open(out, fingerprint=fingerprint, schema=record_schema({}))


def test_torn_last_line_is_cut_and_finished_rows_survive(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    j = _journal(out)
    j.begin_segment()
    j.mark_started([0, 1, 2])
    j.append([RowResult(row=0, status="ok", response="a", cost=0.5),
              RowResult(row=1, status="error", error_code="SERVER_ERROR")])
    j.close()
    seg = journal_dir(out) / "results-00000.jsonl"
    with seg.open("a") as f:
        f.write('{"__row": 2, "status": "o')  # the writer died mid-line
    state = _journal(out).state(3)
    assert list(state.finished) == [1, 0, 0]  # the transient error is retried on resume
    assert state.previous_cost == 0.5
    assert state.resent == 1  # row 2 was in flight


def test_journal_of_another_job_is_refused_unless_restarted(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    _journal(out, "f1")
    with pytest.raises(ConfigError, match="different job"):
        _journal(out, "f2")
    Journal.open(out, fingerprint="f2", schema=record_schema({}), restart=True)


def test_finalise_keeps_order_types_and_marks_unfinished_rows(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    pl.DataFrame({"text": ["a", "b", "c"]}).write_csv(src)
    out = tmp_path / "out.parquet"
    j = _journal(out)
    j.begin_segment()
    j.append([RowResult(row=2, status="error", error_code="SERVER_ERROR", attempts=3),
              RowResult(row=0, status="error", error_code="SERVER_ERROR", attempts=6)])
    j.append([RowResult(row=2, status="ok", response="C", tokens_used=3, cost=0.1, attempts=1)])
    j.close()
    finalise(Dataset(src), j, out, result_columns=list(RESULT_SCHEMA),
             unfinished=Unfinished("INSUFFICIENT_BALANCE", "not run"), metadata={"k": "v"})
    df = pl.read_parquet(out)
    assert df["text"].to_list() == ["a", "b", "c"]
    assert df["status"].to_list() == ["error", "error", "ok"]
    assert df["error_code"].to_list() == ["SERVER_ERROR", "INSUFFICIENT_BALANCE", None]
    assert df["response"].to_list() == [None, None, "C"]
    for name, dtype in RESULT_SCHEMA.items():
        assert df.schema[name] == dtype, name
    assert not list(tmp_path.glob(".*.tmp"))


def test_all_error_output_still_has_typed_columns(tmp_path: Path) -> None:
    src = tmp_path / "in.parquet"
    pl.DataFrame({"text": ["a"]}).write_parquet(src)
    out = tmp_path / "out.parquet"
    j = _journal(out)
    finalise(Dataset(src), j, out, result_columns=list(RESULT_SCHEMA),
             unfinished=Unfinished("INVALID_API_KEY", "not run"), metadata={})
    df = pl.read_parquet(out)
    assert df.schema["tokens_used"] == pl.Int64 and df.schema["cost"] == pl.Float64
    assert df["status"].to_list() == ["error"]


def test_segments_rotate_and_read_back_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.sink as sink

    monkeypatch.setattr(sink, "SEGMENT_RECORDS", 3)
    out = tmp_path / "out.parquet"
    j = _journal(out)
    j.begin_segment()
    for row in range(10):
        j.append([RowResult(row=row, status="ok", response=f"r{row}", cost=0.25, tokens_used=row)])
    j.append([])
    j.close()
    assert len(list(journal_dir(out).glob("results-*.jsonl"))) == 4
    reopened = _journal(out)
    state = reopened.state(10)
    assert state.finished_count == 10 and state.previous_cost == 2.5
    assert reopened.totals() == {"ok": 10, "error": 0, "skipped": 0, "tokens": 45, "cost": 2.5}
    frame = reopened.results_frame()
    assert frame is not None
    got = frame.collect().sort(sink.ROW)
    assert got["response"].to_list() == [f"r{i}" for i in range(10)]
    assert got["error_code"].null_count() == 10  # nulls left out of the lines come back as nulls
