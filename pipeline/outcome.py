"""Exit codes of ``momo-batch``: one table, quoted by the README, imported by everything else.

Each error class in :mod:`pipeline.errors` names its code from here; :data:`EXIT_MEANINGS` is the
README's table word for word (a test keeps the two equal). :class:`RunReport` is what a run did,
typed. Kept free of the package's imports so that the CLI can read it without loading the run
machinery.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .result import RowResult


class ExitCode(IntEnum):
    """What a script calling ``momo-batch`` can rely on."""

    OK = 0
    ROW_ERRORS = 1
    BAD_INPUT = 2
    INSUFFICIENT_BALANCE = 3
    BUDGET = 4
    TERMINAL = 5
    UNREACHABLE = 6
    REFUSED = 7
    BUSY = 8
    WRITE = 9
    WAIT = 10
    INTERRUPTED = 130
    TERMINATED = 143


EXIT_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "every row finished ok (or skipped: null/empty prompt)",
    ExitCode.ROW_ERRORS: "the job finished, some rows ended in an error (see `error_code`)",
    ExitCode.BAD_INPUT: "bad job file, argument, key, input or output path (the message names it); nothing was paid",
    ExitCode.INSUFFICIENT_BALANCE: "stopped: insufficient balance — top up and run the same command again",
    ExitCode.BUDGET: "stopped: `max_cost` reached — raise it and run again",
    ExitCode.TERMINAL: "stopped: the service refused the key, agent or model, before paying for more",
    ExitCode.UNREACHABLE: "no usable API at the base URL: unreachable, failing, or not this API "
                          "(the message names the URL)",
    ExitCode.REFUSED: "preflight refused: the worst case may not fit the balance or `max_cost` (`--yes` runs anyway)",
    ExitCode.BUSY: "another process is running this job (it holds the ledger's lock)",
    ExitCode.WRITE: "the ledger or the output cannot be written (disk full, I/O error) — free space, run again",
    ExitCode.WAIT: "stopped: the server asked to wait longer than `limits.max_wait_seconds` — run again later "
                   "to resume",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C) — run again to resume",
    ExitCode.TERMINATED: "terminated (SIGTERM) — run again to resume",
}

@dataclass
class RunStats:
    """Live counters: the progress bar reads them, the summary reports them."""

    total: int = 0
    already_done: int = 0
    ok: int = 0
    error: int = 0
    skipped: int = 0
    unparsed: int = 0  # label jobs: answers that never parsed (finished, not errors)
    tokens: int = 0
    cost: float = 0.0
    calls: int = 0
    retries: int = 0
    rate_limited: int = 0
    resent: int = 0  # sent by a run that died before its answer, and sent again by this one
    unknown_cost_calls: int = 0
    unknown_outcomes: int = 0  # sent, no answer (reset, timeout, bad body): may have been charged
    duplicates: int = 0  # rows asking what another row of this run asked: not sent again
    cached: int = 0  # answers taken from the cache (--cache), at no charge
    cache_saved: float = 0.0  # what those answers had cost
    started: float = field(default_factory=time.monotonic)
    first_call: float | None = None
    last_call: float | None = None

    def __post_init__(self) -> None:
        # not fields: every field is a counter (a distributed run adds them up across workers)
        # the end of the latest pause a server asked for (Retry-After), as time.time(); None: none yet
        self.paused_until: float | None = None
        self.on_pause: Callable[[float], None] | None = None  # told each pause's length (the progress line)

    @property
    def done(self) -> int:
        return self.already_done + self.duplicates + self.ok + self.error + self.skipped + self.unparsed

    def pause(self, seconds: float) -> None:
        """The server asked every request to wait ``seconds`` (``Retry-After``)."""
        self.paused_until = max(self.paused_until or 0.0, time.time() + seconds)
        if self.on_pause is not None:
            self.on_pause(seconds)

    def record(self, result: RowResult) -> None:
        if result.status == "ok":
            self.ok += 1
        elif result.status == "skipped":
            self.skipped += 1
        elif result.status == "unparsed":
            self.unparsed += 1
        else:
            self.error += 1




# -- what a run did: the CLI's summary, ``--json``, the exit code and provenance read its fields --


@dataclass(frozen=True)
class Reuse:
    """N rows, M distinct requests; what dedup and the cache kept from being paid again."""

    rows_with_prompt: int
    distinct_requests: int
    cache_answers: int = 0
    cache_saved_cost: float = 0.0

    @property
    def dedup_saved_requests(self) -> int:
        return self.rows_with_prompt - self.distinct_requests

    def as_dict(self) -> dict[str, Any]:
        return {"rows_with_prompt": self.rows_with_prompt, "distinct_requests": self.distinct_requests,
                "dedup_saved_requests": self.dedup_saved_requests, "cache_answers": self.cache_answers,
                "cache_saved_cost": round(self.cache_saved_cost, 6)}


@dataclass(frozen=True)
class Reconciliation:
    """The estimate against the real cost, and the cost column against what the account lost."""

    estimated_cost: float
    interval: tuple[float, float]
    real_cost_this_run: float
    account_charged: float | None = None  # None: a balance was not read before or after
    balance_unknown: str | None = None  # why not
    calls_with_unknown_cost: int = 0

    @property
    def gap(self) -> float | None:
        """What the account lost beyond the cost column (0 when the two agree)."""
        return None if self.account_charged is None else round(self.account_charged - self.real_cost_this_run, 6)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"estimated_cost": self.estimated_cost, "interval": list(self.interval),
                               "real_cost_this_run": round(self.real_cost_this_run, 6)}
        if self.balance_unknown is not None:
            out["balance_unknown"] = self.balance_unknown
        if self.account_charged is not None:
            out["account_charged"] = round(self.account_charged, 6)
            out["gap"] = self.gap
        if self.calls_with_unknown_cost:
            out["calls_with_unknown_cost"] = self.calls_with_unknown_cost
        return out


@dataclass(frozen=True)
class JobTotals:
    """The whole job as its output shows it (every run so far): rows by status, tokens and cost
    of the distinct requests (a duplicate row's answer is counted on the row that paid)."""

    ok: int = 0
    error: int = 0
    skipped: int = 0
    unparsed: int = 0  # label jobs: answers that gave no label
    tokens: int = 0
    cost: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.unparsed:
            del out["unparsed"]
        out["cost"] = round(self.cost, 6)
        return out


@dataclass(frozen=True)
class RayFigures:
    """How a distributed run went (``pipeline.ray``)."""

    workers: int
    granted: int
    dropped_grants: int


@dataclass
class RunReport:
    """What a run did. ``stats`` counts this run; ``job_totals`` the whole job (the output)."""

    output: Path
    stats: RunStats
    stop_code: str | None = None
    stop_message: str | None = None
    stop_exit: int | None = None  # the stopping error's exit code (its class says it: pipeline.errors)
    wall_seconds: float = 0.0
    rate_target: float | None = None  # requests per window the tier allows; None: unlimited
    window_seconds: float = 60.0
    requests: Reuse | None = None
    rate_limiter: dict[str, Any] = field(default_factory=dict)  # what the limiter learned
    balance_reads: int | None = None  # reads of the balance during the run, when more than one
    reconciliation: Reconciliation | None = None  # None: the preflight was skipped (check=False)
    warnings: list[str] = field(default_factory=list)
    job_totals: JobTotals | None = None  # None: no output was written
    labels: dict[str, Any] | None = None  # a label job: distribution, unparsed and escalation rates
    ray: RayFigures | None = None
    currency: str | None = None  # of every cost in the report (None: the target's price was not read)
    cost_note: str | None = None  # why a cost is 0 although tokens were used (a prepaid package)

    @property
    def exit_code(self) -> int:
        if self.stop_code:
            return self.stop_exit if self.stop_exit is not None else ExitCode.TERMINAL
        errors = self.job_totals.error if self.job_totals is not None else self.stats.error
        return ExitCode.ROW_ERRORS if errors else ExitCode.OK

    @property
    def achieved_per_window(self) -> float | None:
        s = self.stats
        if s.first_call is None or s.last_call is None or s.calls < 2:
            return None
        span = s.last_call - s.first_call
        return (s.calls - 1) / span * self.window_seconds if span > 0 else None

    def as_dict(self) -> dict[str, Any]:
        """The report as ``run --json`` prints it."""
        s = self.stats
        out: dict[str, Any] = {
            "output": str(self.output),
            "rows": s.total,
            "ok": s.ok,
            "error": s.error,
            "skipped": s.skipped,
            "already_done": s.already_done,
            "resent_after_crash": s.resent,
            "duplicates": s.duplicates,
            "unknown_outcomes": s.unknown_outcomes,
            "calls": s.calls,
            "retries": s.retries,
            "rate_limited": s.rate_limited,
            "tokens": s.tokens,
            "cost": round(s.cost, 6),
            "wall_seconds": round(self.wall_seconds, 3),
            "rate_limit_per_minute": self.rate_target,
            "achieved_per_minute": _round(self.achieved_per_window),
            "stop_code": self.stop_code,
            "stop_message": self.stop_message,
            "exit_code": self.exit_code,
        }
        if self.requests is not None:
            out["requests"] = self.requests.as_dict()
        if self.rate_limiter:
            out["rate_limiter"] = self.rate_limiter
        if self.balance_reads is not None:
            out["balance_reads"] = self.balance_reads
        if self.reconciliation is not None:
            out["reconciliation"] = self.reconciliation.as_dict()
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if self.job_totals is not None:
            out["job_totals"] = self.job_totals.as_dict()
        if self.labels is not None:
            out["labels"] = self.labels
        if self.ray is not None:
            out["ray"] = asdict(self.ray)
        if self.currency is not None:
            out["currency"] = self.currency
        if self.cost_note is not None:
            out["cost_note"] = self.cost_note
        return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)
