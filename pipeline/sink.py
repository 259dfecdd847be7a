"""Where results end up: one Parquet file, every input row once, in input order, atomically.

``finalise`` reads the input in batches, joins each batch with the row outcomes that the ledger
holds for its rows' content keys (never their positions), and appends it to the Parquet file as
row groups, through a temporary file and an atomic rename. Memory is one batch, not the job, and
the outcomes of the keys seen lately (:class:`OutcomeReader`): a prompt repeated over millions
of rows is read from the ledger and decoded once, not once a row.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import polars as pl

from .dataset import ROW
from .errors import WriteError
from .ledger import Ledger
from .outcome import JobTotals
from .plan import FIRST, KEY, Plan
from .result import RESULT_SCHEMA, TOKEN_SPLIT_SCHEMA, Unfinished
from .usage import paid_by_first

if TYPE_CHECKING:
    import pyarrow.parquet as pq

# rows per batch and row group: each batch costs a polars query, a ledger query and a row group
# whatever its size, and holds the input's columns for its rows. Writing 3 M rows (3,000 prompts,
# 2026-12-07, bench load ~5) with 2,048 / 8,192 / 16,384 / 65,536: 14.0 / 5.5 / 3.3 / 3.5 s,
# peak RSS 239 / 227 / 252 / 342 MB
FINAL_CHUNK_ROWS = 16_384
OUTCOMES_KEPT = 65_536  # decoded outcomes an OutcomeReader keeps (the keys seen lately)


def record_schema(extra: dict[str, pl.DataType]) -> dict[str, pl.DataType]:
    """The columns of a row outcome as the ledger keeps it."""
    return {**RESULT_SCHEMA, **TOKEN_SPLIT_SCHEMA, **extra, "cached": pl.Boolean()}


@dataclass
class Totals:
    """The whole job as the output shows it: rows by status, and what the distinct requests cost."""

    statuses: Counter[str] = field(default_factory=Counter)
    tokens: int = 0
    cost: float = 0.0

    def add(self, part: pl.DataFrame) -> None:
        self.statuses.update(dict(part.group_by("status").len().iter_rows()))
        paid = part.filter(~pl.col("duplicate").fill_null(False))
        self.tokens += int(paid["tokens_used"].sum() or 0)
        self.cost += float(part["cost"].sum() or 0.0)

    def final(self) -> JobTotals:
        s = self.statuses
        return JobTotals(ok=s["ok"], error=s["error"], skipped=s["skipped"], unparsed=s["unparsed"],
                         tokens=self.tokens, cost=self.cost)


def finalise(
    plan: Plan,
    ledger: Ledger,
    output: Path,
    *,
    unfinished: Unfinished,
    metadata: Callable[[JobTotals], dict[str, str]],
) -> JobTotals:
    """Write the output; returns the job's totals (also passed to ``metadata`` for the footer)."""
    import pyarrow.parquet as pq  # here, not at import: a run holds it (~45 MB) only from now on

    schema = record_schema(plan.task.extra_schema)
    columns = [c for c in plan.dataset.schema().names() if c != ROW] + plan.result_columns
    tmp = output.with_name(f".{output.name}.tmp")
    totals = Totals()
    writer: pq.ParquetWriter | None = None
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        reader = OutcomeReader(ledger, schema)
        for batch in plan.keyed(plan.dataset.frames(batch_rows=FINAL_CHUNK_ROWS)):
            part = with_outcomes(batch, reader, unfinished).select(columns)
            totals.add(part)
            table = part.to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            # a cast only where a batch's types differ (a column all null in it): casting loads
            # pyarrow.compute, ~7 MB and 0.1 s
            writer.write_table(table if table.schema == writer.schema else table.cast(writer.schema))
        if writer is None:  # no input rows at all: still a typed, empty file
            empty = plan.dataset.scan().head(0).collect().with_columns(
                pl.lit(None, pl.String).alias(KEY), pl.lit(True).alias(FIRST))
            table = with_outcomes(empty, reader, unfinished).select(columns).to_arrow()
            writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table)
        result = totals.final()
        writer.add_key_value_metadata(metadata(result))
        writer.close()
        writer = None
        os.replace(tmp, output)
    except OSError as exc:
        raise WriteError(f"{output}: cannot write the output ({exc.strerror or exc}); every result is "
                         "kept in the ledger: free the space and run again to write it") from None
    finally:
        if writer is not None:
            with contextlib.suppress(OSError):
                writer.close()
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return result


def decode_outcomes(found: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """``[key, state, record]`` from the ledger → one typed column per output column."""
    struct = pl.Struct({k: (pl.String() if k == "finished_at" else v) for k, v in schema.items()})
    return found.select(
        pl.col("key").alias(KEY), pl.col("record").str.json_decode(struct).alias("__r")
    ).unnest("__r").with_columns(
        pl.col("finished_at").str.to_datetime(time_zone="UTC", time_unit="us"))


class Outcomes(Protocol):
    """Where row outcomes are read by key: the job's ledger, or a worker's view of it and its shards."""

    def outcomes(self, keys: Sequence[str]) -> pl.DataFrame: ...


class OutcomeReader:
    """Decoded row outcomes by key, read from ``source`` once per key while it is among the
    :data:`OUTCOMES_KEPT` keys asked for lately. For a source that no longer changes (the
    ledger once the calls are over): a key it had no outcome for is not asked for again."""

    def __init__(self, source: Outcomes, schema: dict[str, pl.DataType], *, kept: int = OUTCOMES_KEPT) -> None:
        self._source, self._schema, self._kept = source, schema, kept
        self._asked: pl.Series = pl.Series(KEY, [], pl.String)
        self._decoded = decode_outcomes(source.outcomes([]), schema)

    def of(self, keys: pl.Series) -> pl.DataFrame:
        """``[KEY, *outcome columns]`` for those of ``keys`` that have an outcome (and maybe others)."""
        wanted = keys.drop_nulls().unique()
        new = wanted.filter(~wanted.is_in(self._asked.implode()))
        if not new.len():
            return self._decoded
        if self._asked.len() + new.len() > self._kept:  # forget the older keys
            self._asked, self._decoded, new = self._asked.head(0), self._decoded.head(0), wanted
        fresh = decode_outcomes(self._source.outcomes(new.to_list()), self._schema)
        self._asked = pl.concat([self._asked, new])
        self._decoded = pl.concat([self._decoded, fresh])
        return self._decoded


def with_outcomes(batch: pl.DataFrame, outcomes: OutcomeReader, unfinished: Unfinished) -> pl.DataFrame:
    """``batch`` with its rows' outcomes; rows without one say why."""
    joined = batch.join(outcomes.of(batch[KEY]), on=KEY, how="left", maintain_order="left")
    empty = pl.col(KEY).is_null()
    missing = pl.col("status").is_null()
    duplicate = ~pl.col(FIRST) & ~empty

    def fill(column: str, skipped: str, unrun: str) -> pl.Expr:
        return (pl.when(empty).then(pl.lit(skipped)).when(missing).then(pl.lit(unrun))
                .otherwise(pl.col(column)).alias(column))

    return joined.with_columns(
        *paid_by_first(joined.columns, duplicate),
        fill("status", "skipped", "error"),
        fill("error_code", "EMPTY_PROMPT", unfinished.code),
        fill("error_message", "prompt is null or empty: not sent", unfinished.message),
        pl.col("attempts").fill_null(0),
        pl.col("cached").fill_null(False),
        duplicate.alias("duplicate"),
        pl.col(KEY).alias("request_key"),
    )

