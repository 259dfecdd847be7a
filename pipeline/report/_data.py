"""An output Parquet as the report sees it: its metadata, the per-row columns, and aggregates.

Every aggregate here is small whatever the number of rows (time bins, histogram bins, counts),
so the page does not grow with the job. Timing is per row, as the output records it: a call's
start is estimated as ``finished_at - latency_ms``, and a row's attempts (retries, votes,
re-asks) are spread evenly between that start and ``finished_at``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError
from ..labels.metrics import Evaluation, evaluate
from ..usage import as_used

REQUIRED = ("status", "error_code", "attempts", "latency_ms", "finished_at", "cost", "tokens_used")
LABEL_COLUMNS = ("label", "label_agreement", "label_calls")
SHARING_COLUMNS = ("duplicate", "cached")  # rows whose call another row (or job) made
GOLD_COLUMN = "gold"  # a label job's output with this column gets eval's accuracy
META_PREFIX = "momo_batch."
# bin widths in seconds a time axis may use: about 40 bins over the run, whatever its length
# (sub-second widths only matter for runs in scaled time, as in the tests)
_NICE_WIDTHS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30,
                60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 86400)
TIME_BINS = 40
# a rate from a bin with a handful of requests is mostly rounding (a paced 5/s looks like 4, 6, 4):
# bins hold about this many requests on average
REQUESTS_PER_BIN = 10
CURVE_POINTS = 200


@dataclass(frozen=True)
class RunData:
    """One output file, loaded for the report: only the columns the charts read."""

    path: Path
    rows: pl.DataFrame  # REQUIRED (+ LABEL_COLUMNS) and ``start``/``end`` in seconds since ``t0``
    metadata: dict[str, str]  # the momo_batch.* key-value metadata but the totals
    totals: dict[str, Any]  # momo_batch.totals: the summary of the run that wrote the file
    file_bytes: int
    t0: datetime | None  # the first call's estimated start (else the first row's end; None: no rows)
    evaluation: Evaluation | None = None  # eval's figures, when the output has a gold column

    @property
    def currency(self) -> str | None:
        """The money's unit, when the run recorded it."""
        found = self.totals.get("currency") or self.metadata.get(META_PREFIX + "currency")
        return str(found) if found else None

    @property
    def is_label_job(self) -> bool:
        return "label" in self.rows.columns

    @cached_property
    def called(self) -> pl.DataFrame:
        """Rows that made at least one request."""
        return self.rows.filter(pl.col("attempts") > 0)

    @cached_property
    def span(self) -> float:
        """Seconds from the first call's start to the last row's end."""
        return float(self.called.select(pl.col("end").max()).item() or 0.0)

    @property
    def rate_limit_per_minute(self) -> float | None:
        """The tier's limit as requests per minute."""
        return self._per_minute("rate_limit_per_minute")

    @property
    def achieved_per_minute(self) -> float | None:
        """The rate the last run reached, as requests per minute."""
        return self._per_minute("achieved_per_minute")

    def _per_minute(self, key: str) -> float | None:
        # totals count per rate window; a run in scaled time would record its window_seconds
        value = self.totals.get(key)
        return None if value is None else float(value) * 60.0 / float(self.totals.get("window_seconds") or 60.0)


def load_run(path: Path) -> RunData:
    """Read what the report needs from an output Parquet; a wrong file is a :class:`ConfigError`."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        footer = pq.read_metadata(path)  # the file's key-value metadata, where provenance is written
        schema = footer.schema.to_arrow_schema()
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"{path}: not a Parquet file ({exc})") from None
    missing = [c for c in REQUIRED if c not in schema.names]
    if missing:
        raise ConfigError(f"{path}: not a momo-batch output (no column {', '.join(missing)})")
    pairs = ((k.decode(errors="replace"), v.decode(errors="replace")) for k, v in (footer.metadata or {}).items())
    metadata = {k: v for k, v in pairs if k.startswith(META_PREFIX)}
    totals = _parse_totals(metadata.pop(META_PREFIX + "totals", None))
    columns = list(REQUIRED) + [c for c in (*LABEL_COLUMNS, *SHARING_COLUMNS) if c in schema.names]
    # counted as eval and the output's columns count them: a shared answer's call is the first row's
    raw = as_used(pl.scan_parquet(path).select(columns).collect())
    rows, t0 = _with_times(raw)
    scored = evaluate(path, GOLD_COLUMN) if {GOLD_COLUMN, "label"} <= set(schema.names) else None
    return RunData(path, rows, metadata, totals, path.stat().st_size, t0, scored)


def _parse_totals(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except ValueError:
        return {"unreadable": text}
    return parsed if isinstance(parsed, dict) else {"value": parsed}


def _with_times(raw: pl.DataFrame) -> tuple[pl.DataFrame, datetime | None]:
    """Add ``start`` and ``end`` in seconds since the first call's estimated start."""
    latency = pl.duration(microseconds=(pl.col("latency_ms").fill_null(0.0) * 1000).cast(pl.Int64))
    frame = raw.with_columns(pl.col("attempts").fill_null(0), started_at=pl.col("finished_at") - latency)
    called = frame.filter(pl.col("attempts") > 0)
    t0: Any = called["started_at"].min() if called.height else frame["finished_at"].min()
    if t0 is None:
        return frame.with_columns(start=pl.lit(0.0), end=pl.lit(0.0)).drop("started_at"), None

    def since(col: str) -> pl.Expr:
        return (pl.col(col) - pl.lit(t0)).dt.total_microseconds() / 1e6

    return frame.with_columns(start=since("started_at"), end=since("finished_at")).drop("started_at"), t0


# -- time axis ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeBins:
    """Edges in seconds since ``t0``; the last bin ends at the run's end (merged if short)."""

    edges: np.ndarray

    @property
    def widths(self) -> np.ndarray:
        return np.diff(self.edges)

    @property
    def width(self) -> float:
        return float(self.widths[0])

    def count(self, times: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        counts, _ = np.histogram(times, bins=self.edges, weights=weights)
        return counts


def time_bins(span: float, bins: int = TIME_BINS) -> TimeBins:
    """About ``bins`` bins of a round width over ``[0, span]``."""
    day = _NICE_WIDTHS[-1]
    width = next((w for w in _NICE_WIDTHS if span / w <= bins), float(np.ceil(span / bins / day)) * day)
    n = max(1, int(np.ceil(span / width)))
    edges = np.arange(n + 1, dtype=float) * width
    edges[-1] = max(span, width * 1e-3)
    if n > 1 and edges[-1] - edges[-2] < width / 2:  # a sliver of a last bin would spike the rate
        edges = np.delete(edges, -2)
    return TimeBins(edges)


def request_times(run: RunData) -> np.ndarray:
    """One time per request (attempt), in seconds since ``t0``: spread over each row's span."""
    called = run.called.select("start", "end", "attempts")
    if not called.height:
        return np.zeros(0)
    exploded = called.with_columns(k=pl.int_ranges(0, pl.col("attempts"))).explode("k")
    t = exploded.select(pl.col("start") + (pl.col("end") - pl.col("start")) * pl.col("k") / pl.col("attempts"))
    return t.to_series().to_numpy()


def requests_per_minute(run: RunData) -> tuple[TimeBins, np.ndarray]:
    """Requests started in each time bin, as a rate per minute."""
    times = request_times(run)
    bins = time_bins(run.span, bins=max(1, min(TIME_BINS, len(times) // REQUESTS_PER_BIN)))
    return bins, bins.count(times) / bins.widths * 60.0


def cumulative(run: RunData, column: str, points: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """``column`` summed over rows finished by each of ``points`` times: a bounded curve."""
    done = run.called.select("end", pl.col(column).fill_null(0)).sort("end")
    grid = np.linspace(0.0, run.span, points + 1)
    if not done.height:
        return grid, np.zeros_like(grid)
    cum = np.cumsum(done[column].to_numpy().astype(float))
    idx = np.searchsorted(done["end"].to_numpy(), grid, side="right") - 1
    return grid, np.where(idx >= 0, cum[np.clip(idx, 0, None)], 0.0)


# -- per-row figures ---------------------------------------------------------------------------
def calls_per_row(run: RunData) -> pl.Expr:
    """Calls that returned an answer: ``label_calls`` for label jobs, else one per ok row."""
    if "label_calls" in run.rows.columns:
        return pl.col("label_calls").fill_null(0)
    return pl.when(pl.col("latency_ms").is_not_null()).then(1).otherwise(0)


def retries_per_row(run: RunData) -> pl.Series:
    """Attempts beyond the first of each call: a row that ended in an error had one more call."""
    failed_call = ((pl.col("status") == "error") & (pl.col("attempts") > calls_per_row(run))).cast(pl.Int64)
    retries = pl.col("attempts").cast(pl.Int64) - calls_per_row(run) - failed_call
    return run.rows.select(pl.max_horizontal(retries, 0).alias("retries")).to_series()


def latency_per_call(run: RunData) -> np.ndarray:
    """Latency in ms of each answered row; label rows: the mean over the row's calls."""
    calls = calls_per_row(run)
    ms = run.rows.filter(pl.col("latency_ms").is_not_null() & (calls > 0)).select(pl.col("latency_ms") / calls)
    return ms.to_series().to_numpy()


def paid(run: RunData, column: str) -> np.ndarray:
    """``column`` of the rows that made a call and report it (cost or tokens)."""
    return run.called.select(pl.col(column).drop_nulls().cast(pl.Float64)).to_series().to_numpy()


def outcome_counts(run: RunData) -> list[tuple[str, str, int]]:
    """(status, label, rows): one entry per status and error code, most frequent first."""
    counts = (run.rows.group_by("status", "error_code").len()
              .sort(["len", "status", "error_code"], descending=[True, False, False], nulls_last=True))
    out = []
    for status, code, n in counts.iter_rows():
        label = status if not code else f"{status}: {code}"
        out.append((str(status), label, int(n)))
    return out


def value_counts(values: pl.Series) -> list[tuple[Any, int]]:
    """Value, count pairs sorted by value (nulls dropped)."""
    counts = values.drop_nulls().value_counts().sort(values.name)
    return [(v, int(n)) for v, n in counts.iter_rows()]


def label_counts(run: RunData, order: Sequence[str] = ()) -> list[tuple[str, int]]:
    """Rows per label, most frequent first; rows that never parsed as ``unparsed``."""
    rows = run.rows.filter(pl.col("status").is_in(["ok", "unparsed"]))
    counts = rows.select(pl.col("label").fill_null("unparsed")).to_series().value_counts()
    pairs = [(str(v), int(n)) for v, n in counts.iter_rows()]
    rank = {name: i for i, name in enumerate(order)}
    return sorted(pairs, key=lambda p: (p[0] == "unparsed", -p[1], rank.get(p[0], len(rank)), p[0]))


def percentiles(values: np.ndarray, qs: Sequence[float] = (50, 90, 99)) -> dict[float, float]:
    if not len(values):
        return {}
    return {q: float(v) for q, v in zip(qs, np.percentile(values, qs), strict=True)}
