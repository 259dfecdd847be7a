"""``run_job``: one job from file to finished Parquet, resumable. The CLI is a thin layer on it."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import polars as pl

from . import __version__
from .budget import Budget
from .config import Job, OutputConfig
from .dataset import Dataset, PromptTemplate
from .errors import ConfigError, MomoError
from .limiter import RateLimiter
from .providers.base import PromptRequest, Provider
from .result import RESULT_SCHEMA, TOKEN_SPLIT_SCHEMA
from .runner import Caller, Fanout, PromptTask, RowTask, RunStats, Stop, WorstCost
from .sink import Journal, Unfinished, check_collisions, finalise, record_schema

# documented exit codes (README): what a script calling `momo-batch run` can rely on
EXIT_OK = 0
EXIT_ROW_ERRORS = 1
EXIT_BAD_INPUT = 2
EXIT_INSUFFICIENT_BALANCE = 3
EXIT_BUDGET = 4
EXIT_TERMINAL = 5
EXIT_INTERRUPTED = 130


@dataclass
class RunReport:
    """What a run did; ``exit_code`` follows the table above."""

    output: Path
    stats: RunStats
    stop_code: str | None
    stop_message: str | None
    wall_seconds: float
    rate_target: float | None  # requests per minute the tier allows
    window_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if self.stop_code == "INSUFFICIENT_BALANCE":
            return EXIT_INSUFFICIENT_BALANCE
        if self.stop_code == "BUDGET_EXCEEDED":
            return EXIT_BUDGET
        if self.stop_code == "INTERRUPTED":
            return EXIT_INTERRUPTED
        if self.stop_code:
            return EXIT_TERMINAL
        errors = self.extra.get("job_totals", {}).get("error", self.stats.error)
        return EXIT_ROW_ERRORS if errors else EXIT_OK

    @property
    def achieved_per_window(self) -> float | None:
        s = self.stats
        if s.first_call is None or s.last_call is None or s.calls < 2:
            return None
        span = s.last_call - s.first_call
        return (s.calls - 1) / span * self.window_seconds if span > 0 else None

    def as_dict(self) -> dict[str, Any]:
        s = self.stats
        return {
            "output": str(self.output),
            "rows": s.total,
            "ok": s.ok,
            "error": s.error,
            "skipped": s.skipped,
            "already_done": s.already_done,
            "resent_after_crash": s.resent,
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
            **self.extra,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def result_fingerprint(job: Job) -> str:
    """What makes results reusable: input, prompt, target, sampling and label settings."""
    p = job.provider
    keyed = {
        "input": [str(job.input.path), job.input.id_column],
        "prompt": job.prompt.model_dump(),
        "provider": [p.kind, p.target, p.temperature, p.max_tokens],
        "label": job.label,
    }
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()


def prompt_expr(job: Job) -> tuple[pl.Expr, list[str]]:
    """The polars expression rendering each row's prompt, and the columns it reads."""
    if job.label:
        from .labels.task import label_template

        template = PromptTemplate(label_template(job))
        return template.expr(), template.columns
    if job.prompt.column:
        return pl.col(job.prompt.column).cast(pl.String).alias("__prompt"), [job.prompt.column]
    template = PromptTemplate(job.prompt.template or "")
    return template.expr(), template.columns


def make_task(job: Job) -> RowTask:
    if job.label:
        from .labels.task import LabelTask  # only label jobs need it

        return LabelTask.from_job(job)
    return PromptTask()


@dataclass
class Prepared:
    """Everything checked before the first paid call."""

    job: Job
    dataset: Dataset
    prompt: pl.Expr
    columns: list[str]
    task: RowTask
    result_columns: list[str]
    n_rows: int


def prepare(job: Job, *, limit: int | None = None) -> Prepared:
    """Validate the input against the job: missing columns, empty file, collisions. No I/O to APIs."""
    dataset = Dataset(job.input.path, job.input.id_column, limit=limit)
    expr, columns = prompt_expr(job)
    needed = columns + ([job.input.id_column] if job.input.id_column else [])
    schema = dataset.check_columns(needed)
    task = make_task(job)
    split = TOKEN_SPLIT_SCHEMA if job.provider.kind == "openai" else {}
    result_columns = list(RESULT_SCHEMA) + list(split) + list(task.extra_schema)
    check_collisions(schema.names(), result_columns, job.input.path)
    return Prepared(job, dataset, expr, columns, task, result_columns, dataset.count_rows())


async def run_job(
    job: Job | str | Path,
    provider: Provider,
    *,
    output: Path | None = None,
    limit: int | None = None,
    restart: bool = False,
    max_cost: float | None = None,
    worst_cost: WorstCost | None = None,
    on_result: Any = None,
    stats: RunStats | None = None,
    backoff: tuple[float, float] = (0.5, 30.0),
    only_rows: set[int] | None = None,
    write_output: bool = True,
) -> RunReport:
    """Run every unfinished row of ``job`` through ``provider`` and write the output Parquet.

    Safe to call again after a crash or a stop: finished rows are read from the journal and
    not called again. ``max_cost`` (or ``limits.max_cost``) is a hard cap in the provider's
    currency; it needs ``worst_cost`` (see :mod:`pipeline.estimate`).
    """
    job = job if isinstance(job, Job) else Job.load(job)
    if output is not None:
        job = job.with_overrides(output=OutputConfig(path=output))
    prep = prepare(job, limit=limit)
    out = job.output.path
    cap = max_cost if max_cost is not None else job.limits.max_cost
    if cap is not None and worst_cost is None:
        raise ConfigError("a cost cap needs a worst-case cost model (provider.max_tokens and a price)")
    journal = Journal.open(out, fingerprint=result_fingerprint(job),
                           schema=record_schema(prep.task.extra_schema), restart=restart)
    state = journal.state(prep.n_rows)
    stats = stats or RunStats()
    stats.total, stats.already_done, stats.resent = prep.n_rows, state.finished_count, state.resent
    stop = Stop()
    limits = job.limits
    caller = Caller(
        provider,
        limiter=RateLimiter(limits.rate_per_window, limits.window_seconds),
        budget=Budget(cap, spent=state.previous_cost),
        stats=stats,
        stop=stop,
        max_attempts=limits.max_attempts,
        request=PromptRequest(prompt="", temperature=job.provider.temperature,
                              max_tokens=job.provider.max_tokens, stream=job.provider.stream),
        worst_cost=worst_cost,
        backoff=backoff,
    )

    def batches():  # type: ignore[no-untyped-def]
        return prep.dataset.batches(prep.columns, prep.prompt, batch_rows=job.input.batch_rows)

    fan = Fanout(prep.task, caller, journal, batches, state.finished, limits.concurrency,
                 on_result=on_result or (lambda r: None), only_rows=only_rows)
    started = time.monotonic()
    journal.begin_segment()
    try:
        with _steady_gc():
            await fan.run()
    except BaseException as exc:  # Ctrl-C / cancellation: keep the journal, finalise below
        if not isinstance(exc, (KeyboardInterrupt, anyio.get_cancelled_exc_class())):
            raise
        stop.soft("INTERRUPTED", MomoError("interrupted"))
    finally:
        journal.close()
    reason = stop.reason or Unfinished("NOT_RUN", "not run (job ended before this row)")
    report = RunReport(out, stats, stop.reason.code if stop.reason else None,
                       str(stop.error) if stop.error else None, time.monotonic() - started,
                       limits.rate_per_window, limits.window_seconds)
    report.extra["job_totals"] = journal.totals()
    report.extra["rate_limiter"] = caller.limiter.learned()
    summarise = getattr(prep.task, "summarise", None)
    frame = journal.results_frame()
    if summarise is not None and frame is not None:
        report.extra["labels"] = summarise(frame)
    if not write_output:
        return report
    finalise(prep.dataset, journal, out, result_columns=prep.result_columns, unfinished=reason,
             metadata=_provenance(job, provider, report))
    return report


@contextlib.contextmanager
def _steady_gc() -> Iterator[None]:
    """Keep the collector off the objects that live for the whole run (polars, pydantic, httpx).

    A full collection over them took ~35 ms here: at a scaled 300 requests/s that is ten missed
    slots of the limiter, and at any scale a stall of every in-flight call. ``gc.freeze`` moves
    what exists now out of the collector's generations; ``unfreeze`` gives it back afterwards.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _provenance(job: Job, provider: Provider, report: RunReport) -> dict[str, str]:
    """Parquet key-value metadata: how this file was made. Never a key or a URL with one."""
    totals = {k: v for k, v in report.as_dict().items() if k not in ("output", "stop_message")}
    return {
        "momo_batch.version": __version__,
        "momo_batch.job_sha256": job.fingerprint,
        "momo_batch.provider": job.provider.kind,
        "momo_batch.target": provider.target,
        "momo_batch.totals": json.dumps(totals),
        "momo_batch.cost_source": "server" if job.provider.kind == "momo" else "price_table",
    }


async def run_frame(frame: pl.DataFrame, job: Job, provider: Provider, **kw: Any) -> pl.DataFrame:
    """For notebooks: run ``job`` over an in-memory DataFrame and return it with result columns."""
    with tempfile.TemporaryDirectory(prefix="momo-batch-") as tmp:
        src = Path(tmp) / "input.parquet"
        frame.write_parquet(src)
        job = job.with_overrides(
            input=job.input.model_copy(update={"path": src}),
            output=OutputConfig(path=Path(tmp) / "output.parquet"),
        )
        await run_job(job, provider, **kw)
        return pl.read_parquet(Path(tmp) / "output.parquet")
