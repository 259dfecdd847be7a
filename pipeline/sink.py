"""Where results go: a crash-safe journal while the job runs, one Parquet file at the end.

A Parquet file whose writer is killed is unreadable, so results are first appended to JSON-lines
segments in ``<output>.journal/`` (one ``write`` per batch of results, flushed to the OS at once,
so ``kill -9`` loses nothing already returned by the API; a torn last line is cut on reopen).
Each run appends to fresh segments. ``finalise`` joins the input with the last result of every
row and writes the Parquet through a temporary file and an atomic rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import polars as pl
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

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
    """Write every input row once, in input order, with its last result; atomically.

    Memory stays bounded by ``FINAL_CHUNK_ROWS``, not the job: polars' ``unique``/``join`` over a
    1 M-row journal peaked near 1 GB, so the journal is first bucketed by row range into
    Arrow IPC files (one pass), then the input is read in order and each batch is joined with
    its bucket only, and appended to the Parquet file as row groups.
    """
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    with tempfile.TemporaryDirectory(prefix="finalise-", dir=journal.root) as work:
        buckets = _bucket_results(journal, Path(work))
        columns = [c for c in dataset.schema().names() if c != ROW] + result_columns
        writer: pq.ParquetWriter | None = None
        try:
            for batch in _input_batches(dataset):
                part = _with_results(batch, buckets, journal.schema, unfinished).select(columns)
                table = part.to_arrow()
                if writer is None:
                    schema = table.schema.with_metadata(metadata)
                    writer = pq.ParquetWriter(tmp, schema, compression="zstd")
                writer.write_table(table.cast(writer.schema))
            if writer is None:  # no input rows at all: still a typed, empty file
                empty = _with_results(dataset.scan().head(0).collect(), buckets, journal.schema, unfinished)
                table = empty.select(columns).to_arrow()
                writer = pq.ParquetWriter(tmp, table.schema.with_metadata(metadata), compression="zstd")
                writer.write_table(table)
            writer.close()  # the last buffered bytes are written here: a full disk may say so now
        except BaseException:
            if writer is not None:
                with contextlib.suppress(OSError):
                    writer.close()
            tmp.unlink(missing_ok=True)  # a half-written file helps nobody (disk full)
            raise
    os.replace(tmp, output)


FINAL_CHUNK_ROWS = 65_536


def _bucket_results(journal: Journal, work: Path) -> _Buckets:
    """Spread the journal's records over IPC files by ``row // FINAL_CHUNK_ROWS``, in journal order."""
    buckets = _Buckets(work, journal.schema)
    results = journal.results_frame()
    if results is None:
        return buckets
    for batch in results.collect_batches(chunk_size=FINAL_CHUNK_ROWS, maintain_order=True):
        keyed = batch.with_columns((pl.col(ROW) // FINAL_CHUNK_ROWS).alias("__bucket"))
        for (key,), part in keyed.partition_by("__bucket", as_dict=True, maintain_order=True).items():
            buckets.append(int(key), part.drop("__bucket"))  # type: ignore[arg-type]
    buckets.close()
    return buckets


class _Buckets:
    """Append-only IPC files of journal records, one per row range; read back one at a time."""

    def __init__(self, root: Path, schema: dict[str, pl.DataType]) -> None:
        self.root = root
        self.schema = schema
        self._writers: dict[int, ipc.RecordBatchStreamWriter] = {}
        self._files: dict[int, BinaryIO] = {}
        self._schemas: dict[int, pa.Schema] = {}
        self._cached: tuple[int, pl.DataFrame] | None = None

    def append(self, key: int, frame: pl.DataFrame) -> None:
        table = frame.to_arrow()
        if key not in self._writers:
            self._files[key] = (self.root / f"bucket-{key}.arrow").open("wb")
            self._writers[key] = ipc.new_stream(self._files[key], table.schema)
            self._schemas[key] = table.schema
        self._writers[key].write_table(table.cast(self._schemas[key]))

    def close(self) -> None:
        for key, writer in self._writers.items():
            writer.close()
            self._files[key].close()

    def last_results(self, key: int) -> pl.DataFrame:
        """The last record of each row in bucket ``key`` (a later line wins: a resumed row)."""
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        path = self.root / f"bucket-{key}.arrow"
        if path.exists():
            with ipc.open_stream(path) as reader:
                frame = pl.from_arrow(reader.read_all())
            assert isinstance(frame, pl.DataFrame)
            frame = frame.unique(ROW, keep="last", maintain_order=True)
        else:
            frame = pl.DataFrame(schema=self.schema).with_columns(
                pl.col("finished_at").cast(pl.Datetime("us", "UTC")))
        self._cached = (key, frame)
        return frame


def _input_batches(dataset: Dataset) -> Iterator[pl.DataFrame]:
    try:
        yield from dataset.scan().collect_batches(chunk_size=FINAL_CHUNK_ROWS, maintain_order=True)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ConfigError(f"{dataset.path}: cannot read input ({exc})") from None


def _with_results(batch: pl.DataFrame, buckets: _Buckets, schema: dict[str, pl.DataType],
                  unfinished: Unfinished) -> pl.DataFrame:
    """``batch`` with the last result of each of its rows; rows without one say why."""
    if batch.height:
        lo, hi = batch[ROW].min(), batch[ROW].max()
        keys = range(int(lo) // FINAL_CHUNK_ROWS, int(hi) // FINAL_CHUNK_ROWS + 1)  # type: ignore[arg-type]
        results = pl.concat([buckets.last_results(k) for k in keys], how="vertical_relaxed")
    else:
        results = buckets.last_results(-1)
    joined = batch.join(results, on=ROW, how="left", maintain_order="left")
    missing = pl.col("status").is_null()
    return joined.with_columns(
        pl.when(missing).then(pl.lit("error")).otherwise(pl.col("status")).alias("status"),
        pl.when(missing).then(pl.lit(unfinished.code)).otherwise(pl.col("error_code")).alias("error_code"),
        pl.when(missing).then(pl.lit(unfinished.message)).otherwise(pl.col("error_message"))
        .alias("error_message"),
        pl.col("attempts").fill_null(0),
    )


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
