"""What a job used, counted one way wherever it is shown: the output's columns, the report, ``eval``.

Rows asking the same request share one answer (``duplicate``), and a ``--cache`` answer was paid
by another job (``cached``): the call, its tokens and its cost belong to the first row that asked,
so each column sums to what the job used and the server counted.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

# what a duplicate row shares but did not use
PAID_COLUMNS = ("cost", "tokens_used", "prompt_tokens", "completion_tokens")


def paid_by_first(columns: Sequence[str], duplicate: pl.Expr) -> list[pl.Expr]:
    """``PAID_COLUMNS`` (those in ``columns``) at 0 on duplicate rows, as written to the output."""
    return [pl.when(duplicate & pl.col(c).is_not_null()).then(pl.lit(0).cast(pl.Float64 if c == "cost" else pl.Int64))
            .otherwise(pl.col(c)).alias(c) for c in PAID_COLUMNS if c in columns]


def as_used(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` counted as the job used it: duplicates at no cost or tokens (outputs written
    before duplicates carried none still hold the shared call's tokens), and a ``calls`` column:
    a row's attempts, none for a duplicate or cached row."""
    shared = pl.col("duplicate").fill_null(False) if "duplicate" in frame.columns else pl.lit(False)
    cached = pl.col("cached").fill_null(False) if "cached" in frame.columns else pl.lit(False)
    calls = pl.when(shared | cached).then(0).otherwise(pl.col("attempts").fill_null(0)).cast(pl.Int64) \
        if "attempts" in frame.columns else pl.lit(None, pl.Int64)
    return frame.with_columns(*paid_by_first(frame.columns, shared), calls.alias("calls"))
