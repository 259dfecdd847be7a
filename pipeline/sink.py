"""Where results go: a crash-safe journal while the job runs, one Parquet file at the end.

A Parquet file whose writer is killed is unreadable, so results are first appended to JSON-lines
segments in ``<output>.journal/`` (one ``write`` per batch of results, flushed to the OS at once,
so ``kill -9`` loses nothing already returned by the API; a torn last line is cut on reopen).
Each run appends to fresh segments. ``finalise`` joins the input with the last result of every
row and writes the Parquet through a temporary file and an atomic rename.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import polars as pl

from .dataset import ROW, Dataset
from .errors import ConfigError
from .result import FINAL_ERROR_CODES, RESULT_SCHEMA, TOKEN_SPLIT_SCHEMA, RowResult

META = "meta.json"
# results per journal segment: polars reads a JSON-lines file whole, so bounded segments keep
# reading the journal (resume state, totals, finalise) from growing with the job
SEGMENT_RECORDS = 65_536


@dataclass
class JournalState:
    """What earlier runs left: which rows are finished, what they cost."""

    finished: bytearray  # one byte per input row: 1 when resuming must not call it again
    finished_count: int
    previous_cost: float  # cost of every journaled call so far (the budget counts it)
    resent: int  # rows started but never journaled: in flight when a run died


def journal_dir(output: Path) -> Path:
    return output.with_name(output.name + ".journal")


class Journal:
    """Append-only result log of one job output. Owned by a single writer task."""

    def __init__(self, root: Path, schema: dict[str, pl.DataType]) -> None:
        self.root = root
        self.schema = schema  # full record schema, ROW included
        self._results: TextIO | None = None
        self._starts: TextIO | None = None
        self._in_segment = 0

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        output: Path,
        *,
        fingerprint: str,
        schema: dict[str, pl.DataType],
        restart: bool = False,
    ) -> Journal:
        root = journal_dir(output)
        if restart and root.exists():
            for f in root.iterdir():
                f.unlink()
        root.mkdir(parents=True, exist_ok=True)
        meta_path = root / META
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("fingerprint") != fingerprint:
                raise ConfigError(
                    f"{root}: this journal belongs to a different job (prompt, input, provider "
                    "or label settings changed). Use --restart to discard it, or another --output."
                )
        else:
            _atomic_write(meta_path, json.dumps({"fingerprint": fingerprint}))
        journal = cls(root, schema)
        for seg in journal._segments("results") + journal._segments("starts"):
            _cut_torn_line(seg)
        return journal

    def _segments(self, kind: str) -> list[Path]:
        return sorted(self.root.glob(f"{kind}-*.jsonl"))

    def state(self, n_rows: int) -> JournalState:
        finished = bytearray(n_rows)
        frame = self.results_frame()
        cost, seen = 0.0, pl.Series(ROW, [], pl.UInt32())
        if frame is not None:
            done = (pl.col("status") != "error") | pl.col("error_code").is_in(FINAL_ERROR_CODES)
            last = (frame.select(ROW, done.alias("done")).unique(ROW, keep="last")
                    .collect(engine="streaming"))
            for row in last.filter(pl.col("done") & (pl.col(ROW) < n_rows))[ROW]:
                finished[row] = 1
            cost = float(frame.select(pl.col("cost").sum()).collect(engine="streaming").item() or 0.0)
            seen = last[ROW]
        started: set[int] = set()
        for path in self._segments("starts"):
            with path.open() as f:
                started.update(int(line) for line in f if line.strip())
        resent = len(started - set(seen.to_list()))
        return JournalState(finished, sum(finished), cost, resent)

    def totals(self) -> dict[str, float | int]:
        """Whole-job totals over every run so far: rows by status (last result), tokens, cost."""
        frame = self.results_frame()
        if frame is None:
            return {"ok": 0, "error": 0, "skipped": 0, "tokens": 0, "cost": 0.0}
        last = frame.select(ROW, "status").unique(ROW, keep="last")
        counts = dict(last.group_by("status").len().collect(engine="streaming").iter_rows())
        spent = frame.select(pl.col("tokens_used").sum(), pl.col("cost").sum()).collect(engine="streaming").row(0)
        return {
            **({"unparsed": counts["unparsed"]} if "unparsed" in counts else {}),
            "ok": counts.get("ok", 0),
            "error": counts.get("error", 0),
            "skipped": counts.get("skipped", 0),
            "tokens": int(spent[0] or 0),
            "cost": round(float(spent[1] or 0.0), 6),
        }

    def results_frame(self) -> pl.LazyFrame | None:
        files = [p for p in self._segments("results") if p.stat().st_size > 0]
        if not files:
            return None
        schema = {k: (pl.String() if k == "finished_at" else v) for k, v in self.schema.items()}
        return pl.scan_ndjson(files, schema=schema).with_columns(
            pl.col("finished_at").str.to_datetime(time_zone="UTC", time_unit="us")
        )

    # -- writing ---------------------------------------------------------------------------
    def begin_segment(self) -> None:
        n = len(self._segments("results"))
        self._open_results()
        self._starts = (self.root / f"starts-{n:05d}.jsonl").open("a", encoding="utf-8")

    def _open_results(self) -> None:
        if self._results is not None:
            self._results.close()
        n = len(self._segments("results"))
        self._results = (self.root / f"results-{n:05d}.jsonl").open("a", encoding="utf-8")
        self._in_segment = 0

    def mark_started(self, rows: Iterable[int]) -> None:
        assert self._starts is not None, "begin_segment first"
        self._starts.write("".join(f"{r}\n" for r in rows))
        self._starts.flush()

    def append(self, results: Iterable[RowResult]) -> None:
        assert self._results is not None, "begin_segment first"
        if self._in_segment >= SEGMENT_RECORDS:
            self._open_results()
        # nulls are left out (the reader's schema restores them): skipped rows stay ~100 bytes
        lines = [json.dumps({k: v for k, v in r.to_record().items() if v is not None}, ensure_ascii=False)
                 for r in results]
        if not lines:
            return
        self._results.write("\n".join(lines) + "\n")
        self._results.flush()  # in the OS now: survives kill -9 of this process
        self._in_segment += len(lines)

    def close(self) -> None:
        for f in (self._results, self._starts):
            if f is not None:
                f.close()
        self._results = self._starts = None


def record_schema(extra: dict[str, pl.DataType]) -> dict[str, pl.DataType]:
    return {ROW: pl.UInt32(), **RESULT_SCHEMA, **TOKEN_SPLIT_SCHEMA, **extra}


@dataclass(frozen=True)
class Unfinished:
    """How rows with no final result are recorded: the reason the run stopped before them."""

    code: str
    message: str


def finalise(
    dataset: Dataset,
    journal: Journal,
    output: Path,
    *,
    result_columns: list[str],
    unfinished: Unfinished,
    metadata: dict[str, str],
) -> None:
    """Write every input row once, in input order, with its last result; atomically."""
    results = journal.results_frame()
    if results is None:
        results = pl.LazyFrame(schema=journal.schema)
    results = results.unique(ROW, keep="last", maintain_order=True)
    joined = dataset.scan().join(results, on=ROW, how="left", maintain_order="left")
    missing = pl.col("status").is_null()
    frame = joined.with_columns(
        pl.when(missing).then(pl.lit("error")).otherwise(pl.col("status")).alias("status"),
        pl.when(missing).then(pl.lit(unfinished.code)).otherwise(pl.col("error_code"))
        .alias("error_code"),
        pl.when(missing).then(pl.lit(unfinished.message)).otherwise(pl.col("error_message"))
        .alias("error_message"),
        pl.col("attempts").fill_null(0),
    ).select(pl.exclude(ROW)).select(
        [c for c in dataset.schema().names() if c != ROW] + result_columns
    )
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    frame.sink_parquet(tmp, metadata=metadata)
    os.replace(tmp, output)


def check_collisions(dataset_columns: Iterable[str], result_columns: Iterable[str],
                     path: Path) -> None:
    clash = sorted(set(dataset_columns) & set(result_columns))
    if clash:
        raise ConfigError(
            f"{path}: input column(s) {', '.join(map(repr, clash))} would be overwritten by "
            "result columns of the same name; rename them in the input"
        )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cut_torn_line(path: Path) -> None:
    """Drop a last line that a killed writer left half-written."""
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)
