"""One row's outcome, and the typed columns it becomes in the output.

The schema is fixed up front (it never depends on what succeeded), so an all-error batch still
writes typed columns. Tasks that add columns (labelling) extend it with their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import polars as pl

Status = Literal["ok", "error", "skipped", "unparsed"]  # unparsed: label jobs only

RESULT_SCHEMA: dict[str, pl.DataType] = {
    "response": pl.String(),
    "tokens_used": pl.Int64(),
    "cost": pl.Float64(),
    "request_id": pl.String(),
    "status": pl.String(),
    "error_code": pl.String(),
    "error_message": pl.String(),
    "attempts": pl.Int32(),
    "latency_ms": pl.Float64(),
    "finished_at": pl.Datetime("us", "UTC"),
}
TOKEN_SPLIT_SCHEMA: dict[str, pl.DataType] = {
    "prompt_tokens": pl.Int64(),
    "completion_tokens": pl.Int64(),
}

# how a row's answer was had: ``cached`` from the cache across jobs (``--cache``), at no cost to
# this job; ``duplicate``: an earlier row asks the same, and its cost is counted there;
# ``request_key``: the row's key in the ledger (``<output>.ledger/ledger.sqlite``)
REUSE_SCHEMA: dict[str, pl.DataType] = {
    "cached": pl.Boolean(),
    "duplicate": pl.Boolean(),
    "request_key": pl.String(),
}

@dataclass
class RowResult:
    """The outcome of one input row, whatever happened to it."""

    row: int
    status: Status
    response: str | None = None
    tokens_used: int | None = None
    cost: float | None = None
    request_id: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    attempts: int = 0
    latency_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached: bool = False
    final: bool = False  # its error is final (``MomoError.final``): resuming would only fail it again
    finished_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    extra: dict[str, Any] = field(default_factory=dict)  # task columns (labels)

    @property
    def finished(self) -> bool:
        """True when resuming must not call this row again."""
        return self.status != "error" or self.final

    def to_record(self) -> dict[str, Any]:
        """The row's output columns (but ``duplicate`` and ``request_key``, which the plan knows)."""
        record = {
            "response": self.response,
            "tokens_used": self.tokens_used,
            "cost": self.cost,
            "request_id": self.request_id,
            "status": self.status,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "attempts": self.attempts,
            "latency_ms": self.latency_ms,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached": self.cached,
            "finished_at": self.finished_at.isoformat(),
        }
        record.update(self.extra)
        return record


@dataclass(frozen=True)
class Unfinished:
    """How rows with no final result are recorded: the reason the run stopped before them."""

    code: str
    message: str
