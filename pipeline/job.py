"""``run_job``: one job from file to finished Parquet, resumable. The CLI is a thin layer on it."""

from __future__ import annotations

import contextlib
import gc
import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from . import __version__
from .budget import BalanceReader, Budget
from .config import Job, OutputConfig
from .errors import Interrupted, exit_code_for
from .estimator import worst_cost_fn
from .ledger import Cache, Ledger
from .limiter import RateLimiter
from .outcome import ExitCode
from .plan import Plan, endpoint_of, prepare
from .preflight import Warn, account_after, preflight, reconcile
from .providers.base import PromptRequest, Provider
from .result import Unfinished
from .runner import Caller, Fanout, RunStats, Stop, WorstCost
from .sink import finalise
from .tokens import release as release_tokenizer


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
        if self.stop_code:
            return exit_code_for(self.stop_code)  # the stopping error's class says it
        errors = self.extra.get("job_totals", {}).get("error", self.stats.error)
        return ExitCode.ROW_ERRORS if errors else ExitCode.OK

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
            **self.extra,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


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
    stop: Stop | None = None,
    cache: Path | None = None,
    plan: Plan | None = None,
    yes: bool = False,
    check: bool = True,
    warn: Warn | None = None,
    escalation_provider: Provider | None = None,
) -> RunReport:
    """Run every request of ``job`` that has no final answer yet, and write the output Parquet.

    Safe to call again after any stop or crash, and after editing the input: rows find their
    answers in the ledger by content key, so only new requests are sent and paid.

    The same steps as ``momo-batch run``: first the preflight (:mod:`pipeline.preflight`; a job
    whose worst case may not fit the balance or ``max_cost`` raises
    :class:`~pipeline.errors.PreflightRefused` unless ``yes``), then the run, then the
    reconciliation of the estimate and the cost column with the balance (``report.extra``).
    ``check=False`` skips preflight and reconciliation (a pilot inside an estimate does).
    ``max_cost`` (or ``limits.max_cost``) is a hard cap in the provider's currency, unknown
    outcomes included; ``worst_cost`` defaults to every call at ``max_tokens``. ``stop`` lets a
    caller end the run softly (the CLI does on SIGINT / SIGTERM); ``cache`` (or ``reuse.cache``)
    shares answers across jobs; ``warn`` receives warnings as they arise (default: none shown,
    they are in ``report.extra["warnings"]``). A label job that escalates (``[label] escalate``)
    asks the stronger target through ``provider``'s own client, retargeted, unless
    ``escalation_provider`` is given.
    """
    job = job if isinstance(job, Job) else Job.load(job)
    if output is not None:
        job = job.with_overrides(output=OutputConfig(path=output))
    if cache is not None:
        job = job.with_overrides(reuse=job.reuse.model_copy(update={"cache": cache}))
    prep = plan or prepare(job, endpoint=endpoint_of(provider), limit=limit)
    out = job.output.path
    cap = max_cost if max_cost is not None else job.limits.max_cost
    warnings: list[str] = []

    def note(text: str) -> None:
        warnings.append(text)
        if warn is not None:
            warn(text)

    checked = await preflight(job, provider, prep, max_cost=cap, restart=restart, yes=yes,
                              warn=note) if check else None
    if cap is not None and worst_cost is None:
        worst_cost = worst_cost_fn(job, checked.price if checked else await provider.price())
    if checked is not None and worst_cost is None:
        # this run's preflight counted what it needed and the run counts nothing more; a caller
        # that skipped the preflight (an estimate's pilot) may still count with it afterwards
        release_tokenizer()
    stats = stats or RunStats()
    stop = stop or Stop()
    with Ledger.open(out, restart=restart) as ledger, _open_cache(job.reuse.cache) as shared:
        for shard in ledger.shards():  # left by workers of a distributed run (pipeline.ray) that died
            ledger.absorb(shard)
        stats.total = prep.n_rows
        limits = job.limits
        budget = Budget(cap, spent=ledger.totals().spent,
                        balance=_remaining(provider) if cap is not None else None,
                        reread_seconds=limits.window_seconds / 20)  # 3 s a minute (scaled in tests)
        await budget.start()
        caller = Caller(
            provider,
            limiter=RateLimiter(limits.rate_per_window, limits.window_seconds),
            budget=budget,
            stats=stats,
            stop=stop,
            max_attempts=limits.max_attempts,
            request=PromptRequest(prompt="", temperature=job.provider.temperature,
                                  max_tokens=job.provider.max_tokens, stream=job.provider.stream),
            keyer=prep.keyer,
            ledger=ledger,
            cache=shared,
            worst_cost=worst_cost,
            backoff=backoff,
        )
        task = await prep.task.bind(job, provider, caller, capped=cap is not None,
                                    escalation_provider=escalation_provider)
        fan = Fanout(task, caller, ledger, lambda: prep.batches(job.input.batch_rows),
                     limits.concurrency, on_result=on_result or (lambda r: None), only_rows=only_rows)
        started = time.monotonic()
        try:
            with _steady_gc():
                await fan.run()
        except KeyboardInterrupt:  # the Python API in a terminal; the CLI stops through ``stop``
            stop.soft(Interrupted("interrupted"))
        reason = stop.reason or Unfinished("NOT_RUN", "not run (job ended before this row)")
        report = RunReport(out, stats, stop.reason.code if stop.reason else None,
                           str(stop.error) if stop.error else None, time.monotonic() - started,
                           limits.rate_per_window, limits.window_seconds)
        report.extra["requests"] = _reuse_figures(prep, stats)
        report.extra["rate_limiter"] = caller.limiter.learned()
        if budget.balance_reads > 1:
            report.extra["balance_reads"] = budget.balance_reads
        if checked is not None:
            after, _ = await account_after(provider, note)
            report.extra["reconciliation"] = reconcile(checked.estimate, checked.before, after, stats.cost,
                                                       stats.unknown_cost_calls)
        if warnings:
            report.extra["warnings"] = warnings
        if not write_output:
            return report

        def footer(totals: dict[str, Any]) -> dict[str, str]:
            report.extra["job_totals"] = totals
            return provenance(job, provider.target, report)

        finalise(prep, ledger, out, unfinished=reason, metadata=footer)
    summarise = getattr(prep.task, "summarise", None)
    if summarise is not None:
        report.extra["labels"] = summarise(pl.scan_parquet(out))
    return report


def _remaining(provider: Provider) -> BalanceReader:
    """What the account has left, for the budget's checks of unknown outcomes."""

    async def read() -> float | None:
        return (await provider.account()).remaining

    return read


def _reuse_figures(prep: Plan, stats: RunStats) -> dict[str, Any]:
    """N rows, M distinct requests; what dedup and the cache kept from being paid again."""
    return {
        "rows_with_prompt": prep.sendable,
        "distinct_requests": prep.distinct,
        "dedup_saved_requests": prep.sendable - prep.distinct,
        "cache_answers": stats.cached,
        "cache_saved_cost": round(stats.cache_saved, 6),
    }


@contextlib.contextmanager
def _open_cache(root: Path | None) -> Iterator[Cache | None]:
    if root is None:
        yield None
        return
    cache = Cache(root)
    try:
        yield cache
    finally:
        cache.close()


GC_YOUNG = 10_000  # new objects between collections of the youngest generation during a run


@contextlib.contextmanager
def _steady_gc() -> Iterator[None]:
    """Keep the collector off the objects that live for the whole run (polars, pydantic, httpx).

    A full collection over them took ~35 ms here: at a scaled 300 requests/s that is ten missed
    slots of the limiter, and at any scale a stall of every in-flight call. ``gc.freeze`` moves
    what exists now out of the collector's generations; ``unfreeze`` gives it back afterwards.

    And collect the youngest generation every 10,000 new objects, not 700: a call makes hundreds
    (httpx and aiohttp objects, most of them freed with it), and 443-480 young collections took
    0.56-0.83 s of the CPU of a 20,000-row run (``gc.callbacks``, thread time), 47-96 of them
    0.26-0.39 s.
    """
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def provenance(job: Job, target: str, report: RunReport) -> dict[str, str]:
    """Parquet key-value metadata: how this file was made. Never a key or a URL with one."""
    totals = {k: v for k, v in report.as_dict().items() if k not in ("output", "stop_message")}
    return {
        "momo_batch.version": __version__,
        "momo_batch.job_sha256": job.fingerprint,
        "momo_batch.provider": job.provider.kind,
        "momo_batch.target": target,
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
