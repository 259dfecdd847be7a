"""A run, composed once: :func:`prepare` (plan and preflight), the calls, :meth:`Prepared.settle`
(reconciliation) and :func:`write_output`. :func:`run_job` executes the calls in this process;
:func:`pipeline.ray.run_job` on Ray's workers, between the same first and last steps. The CLI
calls these and prints what they report."""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ._version import __version__
from .arguments import check_frame, check_job_argument, check_limit, check_max_cost, check_provider
from .budget import BalanceReader, Budget
from .config import Job, OutputConfig
from .errors import Interrupted
from .estimator import Estimate, worst_cost_fn
from .estimator import estimate as estimate_job
from .ledger import Cache, Ledger
from .limiter import RateLimiter
from .outcome import JobTotals, Reuse, RunReport
from .plan import Plan
from .plan import prepare as make_plan
from .preflight import Checked, Warn, account_after, preflight, reconcile
from .providers.base import Price, PromptRequest, Provider
from .result import RowResult, Unfinished
from .retry import busy_backoff
from .runner import Caller, Fanout, RunStats, Stop, WorstCost
from .sink import finalise
from .tokens import release as release_tokenizer


@dataclass(frozen=True)
class RunOptions:
    """The less common knobs of :func:`run_job`, for library callers (the CLI sets the first four)."""

    stats: RunStats | None = None  # counters to fill as the run goes (a progress display reads them)
    on_result: Callable[[RowResult], None] | None = None  # each row's outcome as it is recorded
    stop: Stop | None = None  # lets a caller end the run softly (the CLI does on SIGINT / SIGTERM)
    warn: Warn | None = None  # warnings as they arise; all are also in ``report.warnings``
    cache: Path | None = None  # answers shared across jobs (overrides ``reuse.cache``)
    worst_cost: WorstCost | None = None  # what a call reserves under a cap; default: all of max_tokens
    backoff: tuple[float, float] = (0.5, 30.0)  # first and longest wait between retries, seconds
    only_rows: set[int] | None = None  # run only these rows (an estimate's pilot)
    write_output: bool = True
    check: bool = True  # False: no preflight and no reconciliation (an estimate's pilot)
    plan: Plan | None = None  # the job already read and keyed
    escalation_provider: Provider | None = None  # default: ``provider`` retargeted


@dataclass
class Prepared:
    """A run checked and ready, before its first call: what every way of executing it starts from."""

    job: Job  # with the caller's overrides
    plan: Plan
    cap: float | None  # max_cost, from the caller or the job
    checked: Checked | None  # the preflight's findings; None when it was skipped
    price: Price | None  # the target's list price, known when there is a cap or a preflight
    warnings: list[str] = field(default_factory=list)
    warn: Warn | None = None

    def note(self, text: str) -> None:
        self.warnings.append(text)
        if self.warn is not None:
            self.warn(text)

    def worst_cost(self) -> WorstCost | None:
        """What a call reserves under the cap (None: no cap)."""
        if self.cap is None or self.price is None:
            return None
        return worst_cost_fn(self.job, self.price)

    async def settle(self, provider: Provider, report: RunReport) -> None:
        """After the last call: reconcile the estimate and the cost column with the balance."""
        if self.checked is not None:
            after, _ = await account_after(provider, self.note)
            report.reconciliation = reconcile(self.checked.estimate, self.checked.before, after,
                                              report.stats.cost, report.stats.unknown_cost_calls)
            report.cost_note = _why_free(self.checked.estimate, report.stats)
        if self.price is not None:
            report.currency = self.price.currency
        report.warnings = self.warnings


def _why_free(est: Estimate, stats: RunStats) -> str | None:
    """Why this run's calls cost nothing although they used tokens: a prepaid package paid them."""
    if stats.cost or not stats.tokens or not est.package_tokens:
        return None
    return f"prepaid package: {stats.tokens:,} tokens (list price ≈ {est.list_price:.6f} {est.currency})"


def resolve(job: Job, *, output: Path | None = None, cache: Path | None = None) -> Job:
    """The job with a caller's overrides of its output and its cache (a path was loaded by the
    front door's :func:`~pipeline.arguments.check_job_argument`)."""
    if output is not None:
        job = job.with_overrides(output=OutputConfig(path=output))
    if cache is not None:
        job = job.with_overrides(reuse=job.reuse.model_copy(update={"cache": cache}))
    return job


async def prepare(job: Job, provider: Provider, *, limit: int | None = None, restart: bool = False,
                  max_cost: float | None = None, yes: bool = False, check: bool = True,
                  plan: Plan | None = None, warn: Warn | None = None, parts: bool = False) -> Prepared:
    """Every step before the first call, wherever the calls then execute: the input read and keyed
    (the plan), then the preflight (:mod:`pipeline.preflight`), which raises
    :class:`~pipeline.errors.PreflightRefused` for a worst case over the balance or the cap unless
    ``yes``. ``check=False`` skips the preflight (an estimate's pilot); ``parts``: the output is a
    directory of Parquet parts (a Ray run's)."""
    own = plan is None
    plan = plan or make_plan(job, endpoint=provider.endpoint, limit=limit)
    cap = max_cost if max_cost is not None else job.limits.max_cost
    prepared = Prepared(job, plan, cap, None, None, warn=warn)
    try:
        if check:
            prepared.checked = await preflight(job, provider, plan, max_cost=cap, restart=restart, yes=yes,
                                               warn=prepared.note, parts=parts)
            prepared.price = prepared.checked.price
        elif cap is not None:
            prepared.price = await provider.price()
    except BaseException:
        if own:  # refused: the plan made here is of no further use
            plan.close()
        raise
    return prepared


async def run_job(job: Job | str | Path, provider: Provider, *, output: Path | None = None,
                  limit: int | None = None, restart: bool = False, max_cost: float | None = None,
                  yes: bool = False, options: RunOptions | None = None) -> RunReport:
    """Run every request of ``job`` that has no final answer yet, and write the output Parquet.

    Safe to call again after any stop or crash, and after editing the input: rows find their
    answers in the ledger by content key, so only new requests are sent and paid.

    The same steps as ``momo-batch run`` (and :func:`pipeline.ray.run_job`, which executes the
    calls on Ray): :func:`prepare` (the preflight refuses a worst case that may not fit the
    balance or ``max_cost`` unless ``yes``), the calls, the reconciliation of the estimate and the
    cost column with the balance (``report.reconciliation``), the output. ``max_cost`` (or
    ``limits.max_cost``) is a hard cap in the provider's currency, unknown outcomes included.
    A label job that escalates (``[label] escalate``) asks the stronger target through
    ``provider``'s own client, retargeted, unless ``options.escalation_provider`` is given.
    """
    job, provider = check_job_argument(job), check_provider(provider)  # the package's errors, naming
    limit, max_cost = check_limit(limit), check_max_cost(max_cost)  # the argument (pipeline.arguments)
    opts = options or RunOptions()
    job = resolve(job, output=output, cache=opts.cache)
    prepared = await prepare(job, provider, limit=limit, restart=restart, max_cost=max_cost, yes=yes,
                             check=opts.check, plan=opts.plan, warn=opts.warn)
    with contextlib.ExitStack() as cleanup:
        if opts.plan is None:  # this run's own: its temporary files go with it
            cleanup.callback(prepared.plan.close)
        report = await _run_prepared(prepared, provider, restart, opts)
    return report


async def _run_prepared(prepared: Prepared, provider: Provider, restart: bool, opts: RunOptions) -> RunReport:
    job = prepared.job
    worst_cost = opts.worst_cost or prepared.worst_cost()
    if prepared.checked is not None and worst_cost is None:
        # this run's preflight counted what it needed and the run counts nothing more; a caller
        # that skipped the preflight (an estimate's pilot) may still count with it afterwards
        release_tokenizer()
    with Ledger.open(job.output.path, restart=restart) as ledger, _open_cache(job.reuse.cache) as shared:
        for shard in ledger.shards():  # left by workers of a distributed run (pipeline.ray) that died
            ledger.absorb(shard)
        stop = opts.stop or Stop()
        report = await _execute(prepared, provider, ledger, shared, worst_cost, stop, opts)
        await prepared.settle(provider, report)
        if opts.write_output:
            write_output(prepared, ledger, report, provider.target, stop.reason)
    summarise = getattr(prepared.plan.task, "summarise", None)
    if summarise is not None and opts.write_output:
        report.labels = summarise(pl.scan_parquet(job.output.path))
    return report


async def _execute(prepared: Prepared, provider: Provider, ledger: Ledger, shared: Cache | None,
                   worst_cost: WorstCost | None, stop: Stop, opts: RunOptions) -> RunReport:
    """The calls, in this process: budget, limiter, caller and fan-out over the plan's batches."""
    job, plan, cap = prepared.job, prepared.plan, prepared.cap
    stats = opts.stats or RunStats()
    stats.total = plan.n_rows
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
        keyer=plan.keyer,
        ledger=ledger,
        cache=shared,
        worst_cost=worst_cost,
        backoff=opts.backoff,
        busy_backoff=busy_backoff(limits.window_seconds),
        max_wait=limits.max_wait_seconds,
    )
    task = await plan.task.bind(job, provider, caller, capped=cap is not None,
                                escalation_provider=opts.escalation_provider)
    fan = Fanout(task, caller, ledger, lambda: plan.batches(job.input.batch_rows),
                 limits.concurrency, on_result=opts.on_result or (lambda r: None), only_rows=opts.only_rows)
    started = time.monotonic()
    try:
        await fan.run()
    except KeyboardInterrupt:  # the Python API in a terminal; the CLI stops through ``stop``
        stop.soft(Interrupted("interrupted"))
    return RunReport(job.output.path, stats, stop.reason.code if stop.reason else None,
                     str(stop.error) if stop.error else None, stop.error.exit_code if stop.error else None,
                     time.monotonic() - started,
                     limits.rate_per_window, limits.window_seconds,
                     requests=Reuse(plan.sendable, plan.distinct, stats.cached, stats.cache_saved),
                     rate_limiter=caller.limiter.learned(),
                     balance_reads=budget.balance_reads if budget.balance_reads > 1 else None)


def write_output(prepared: Prepared, ledger: Ledger, report: RunReport, target: str,
                 stopped: Unfinished | None) -> None:
    """The output Parquet from the ledger, in input order, with the run's provenance in its footer."""

    def footer(totals: JobTotals) -> dict[str, str]:
        report.job_totals = totals
        return provenance(prepared.job, target, report)

    unfinished = stopped or Unfinished("NOT_RUN", "not run (job ended before this row)")
    finalise(prepared.plan, ledger, prepared.job.output.path, unfinished=unfinished, metadata=footer)


async def estimate(job: Job | str | Path, provider: Provider, *, pilot: int = 0, limit: int | None = None,
                   max_cost: float | None = None, restart: bool = False) -> Estimate:
    """What ``job`` will cost and how long it takes, before it runs. ``pilot``: first run that many
    sampled rows for real (:func:`run_job`'s calls, without its preflight); the run reuses their
    answers, and the estimate fits its figures to them. ``restart``: as if nothing had run yet."""
    job, provider = check_job_argument(job, "estimate"), check_provider(provider, "estimate")
    limit, max_cost = check_limit(limit, "estimate"), check_max_cost(max_cost, "estimate")
    job = resolve(job)
    with make_plan(job, endpoint=provider.endpoint, limit=limit) as plan:

        async def run_pilot(rows: set[int]) -> None:
            await run_job(job, provider, options=RunOptions(only_rows=rows, write_output=False, plan=plan,
                                                            check=False))

        return await estimate_job(job, provider, pilot=pilot, max_cost=max_cost, run_pilot=run_pilot,
                                  restart=restart, plan=plan)


def _remaining(provider: Provider) -> BalanceReader:
    """What the account has left, for the budget's checks of unknown outcomes."""

    async def read() -> float | None:
        return (await provider.account()).remaining

    return read


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


async def run_frame(frame: pl.DataFrame, job: Job, provider: Provider, *, limit: int | None = None,
                    restart: bool = False, max_cost: float | None = None, yes: bool = False,
                    options: RunOptions | None = None) -> pl.DataFrame:
    """For notebooks: run ``job`` over an in-memory DataFrame and return it with result columns."""
    frame, job = check_frame(frame), check_job_argument(job, "run_frame")
    check_provider(provider, "run_frame")
    with tempfile.TemporaryDirectory(prefix="momo-batch-") as tmp:
        src = Path(tmp) / "input.parquet"
        frame.write_parquet(src)
        job = job.with_overrides(
            input=job.input.model_copy(update={"path": src, "id_column": None}),  # a frame has no id of its own
            output=OutputConfig(path=Path(tmp) / "output.parquet"),
        )
        await run_job(job, provider, limit=limit, restart=restart, max_cost=max_cost, yes=yes, options=options)
        return pl.read_parquet(Path(tmp) / "output.parquet")
