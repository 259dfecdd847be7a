"""``momo-batch run``: preflight, progress, summary and export around :func:`pipeline.run_job`."""

from __future__ import annotations

import contextlib
import csv
import json
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import polars as pl
from rich.console import Console
from rich.table import Table

from ._tuning import steady_gc
from .config import Job
from .connect import Connection
from .errors import Interrupted, Terminated, WriteError
from .estimator import Estimate
from .job import RunOptions, resolve, run_job
from .job import estimate as estimate_job
from .outcome import Reconciliation, Reuse, RunReport
from .output_path import check_output, export_path
from .progress import Reporter
from .providers.base import Provider
from .runner import RunStats, Stop

if TYPE_CHECKING:
    from .ray import RayOptions


async def _run(job: Job, provider: Provider, *, quiet: bool, errors: Console, limit: int | None,
               restart: bool, max_cost: float | None, yes: bool) -> RunReport:
    stats, stop = RunStats(), Stop()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signals, stop, errors)
            try:
                with Reporter(stats, stream=errors.file, enabled=not quiet) as rep:  # type: ignore[arg-type]
                    options = RunOptions(stats=stats, on_result=rep.update, stop=stop, warn=_warner(errors))
                    report = await run_job(job, provider, limit=limit, restart=restart, max_cost=max_cost,
                                           yes=yes, options=options)
            finally:
                tg.cancel_scope.cancel()
        return report
    except BaseExceptionGroup as group:  # the run's own error, not the signal watcher's
        raise _first(group) from None
    finally:
        await provider.aclose()


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _warner(errors: Console) -> Callable[[str], None]:
    def warn(text: str) -> None:
        errors.print(f"[yellow]warning:[/yellow] {text}", highlight=False, soft_wrap=True)

    return warn


# first signal: stop sending, let calls in flight finish and be recorded, write the output;
# second: cancel the calls in flight too (still recorded as sent); third: the default (die)
_SIGNALS = {signal.SIGINT: (Interrupted, "Ctrl-C"), signal.SIGTERM: (Terminated, "SIGTERM")}


async def _stop_on_signals(stop: Stop, errors: Console) -> None:
    with anyio.open_signal_receiver(*_SIGNALS) as signals:
        async for signum in signals:
            error, name = _SIGNALS[signal.Signals(signum)]
            if not stop.stopped:
                stop.soft(error(f"stopped by {name}"))
                errors.print(f"{name}: no new calls; waiting for the calls in flight to finish and be "
                             "recorded (again to abort them)", highlight=False, soft_wrap=True)
            else:
                stop.now(error(f"stopped by {name}"))
                errors.print(f"{name} again: aborting the calls in flight; writing the output",
                             highlight=False, soft_wrap=True)
                return


@dataclass(frozen=True)
class RunCommand:
    """``momo-batch run``'s options, as parsed (the job file and where its calls go aside)."""

    output: Path | None = None
    limit: int | None = None
    max_cost: float | None = None
    restart: bool = False
    yes: bool = False
    fmt: str = "parquet"  # also export: jsonl or csv
    as_json: bool = False
    quiet: bool = False
    cache: Path | None = None
    with_report: bool = False
    ray: RayOptions | None = None  # run on Ray (``--ray``)


Connect = Callable[[Job], contextlib.AbstractContextManager[Connection]]


def run_cli_job(job: Job, command: RunCommand, *, connect: Connect, console: Console, errors: Console) -> int:
    """``run``: the library's run (local or on Ray), then the exports, the report and the summary."""
    c = command
    job = resolve(job, output=c.output, cache=c.cache)
    # the exports are the CLI's own: their paths are checked before anything is paid
    check_output(job.output.path, job.input.path, formats=[c.fmt], parts=c.ray is not None and
                 c.ray.parts_rows is not None)
    with connect(job) as connection:
        if c.ray is not None:
            from .ray import run_job as run_on_ray

            stats = RunStats()
            with Reporter(stats, stream=errors.file, enabled=not c.quiet) as rep:  # type: ignore[arg-type]
                options = replace(c.ray, warn=_warner(errors), stop_on_signals=True, stats=stats,
                                  on_batch=rep.update)
                report = run_on_ray(job, connection, limit=c.limit, restart=c.restart, max_cost=c.max_cost,
                                    yes=c.yes, options=options)
        else:
            provider = connection.open(job.provider, max_connections=job.limits.concurrency)
            with steady_gc():  # process-wide: set here, at the CLI's entry, never by the library
                report = anyio.run(lambda: _run(job, provider, quiet=c.quiet, errors=errors, yes=c.yes,
                                                limit=c.limit, restart=c.restart, max_cost=c.max_cost))
    if c.fmt != "parquet" and report.output.is_file():
        export(report.output, c.fmt)
    page = _write_report(report.output) if c.with_report and report.output.is_file() else None
    if c.as_json:
        print(json.dumps({**report.as_dict(), **({"report": str(page)} if page else {})}, ensure_ascii=False))
    else:
        # the pace is the account's tier: a job that does not say runs at the slowest
        console.print(f"rate assumed: {job.limits.describe_rate()}", highlight=False, soft_wrap=True)
        render_summary(report, console)
        if page:
            console.print(f"report: {page}", highlight=False, soft_wrap=True)
    return report.exit_code


def sandbox_truth(job: Job) -> Path | None:
    """The gold labels a ``--sandbox`` run's labelling agents know: a label job's CSV input with
    ``text`` and ``gold`` columns (so ``eval`` of a sandbox run measures something); else none."""
    path = job.input.path
    if not job.label or path.suffix.lower() != ".csv":
        return None
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError):
        return None
    return path if {"text", "gold"} <= set(header) else None


def _write_report(parquet: Path) -> Path:
    from .report import write_report  # matplotlib: loaded only when a report is asked for

    return write_report(parquet)


def export(parquet: Path, fmt: str) -> Path:
    """Write the output again as JSON lines or CSV beside the Parquet (never over the input: the
    run checked the path before it started)."""
    target = export_path(parquet, fmt)
    try:
        lf = pl.scan_parquet(parquet)
        if fmt == "jsonl":
            lf.sink_ndjson(target)
        else:
            lf.with_columns(_flat(name, dtype) for name, dtype in lf.collect_schema().items()
                            if dtype.is_nested()).sink_csv(target)
    except (pl.exceptions.PolarsError, OSError) as exc:
        target.unlink(missing_ok=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0]
        raise WriteError(f"--format {fmt}: cannot write {target} ({reason}); the Parquet output "
                          f"{parquet} is complete") from None
    return target


def _flat(name: str, dtype: pl.DataType) -> pl.Expr:
    """CSV has no nested types: a list of strings (label votes) becomes ``a|b|c``, anything else
    nested (lists of numbers, structs, arrays) its JSON text."""
    col = pl.col(name)
    if isinstance(dtype, pl.List) and dtype.inner == pl.String:
        return col.list.join("|")
    return pl.struct(col.alias("v")).struct.json_encode().str.json_path_match("$.v").alias(name)


def render_summary(report: RunReport, console: Console) -> None:
    """The whole job first (every run so far, as the output shows it), then what this run did."""
    s, totals, money = report.stats, report.job_totals, report.currency or ""
    table = Table(title="run summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows: list[tuple[str, str]] = [("output", str(report.output)), ("rows", f"{s.total:,}")]
    if totals is not None:
        unparsed = f" / {totals.unparsed:,} unparsed" if totals.unparsed else ""
        rows += [("job: ok / error / skipped", f"{totals.ok:,} / {totals.error:,} / {totals.skipped:,}{unparsed}"),
                 ("job: tokens", f"{totals.tokens:,}"),
                 ("job: cost", f"{totals.cost:.6f} {money}".rstrip())]
    rows.append(("job: distinct requests (dedup saved)", _dedup(report.requests)))
    rows += [
        ("this run: finished in earlier runs", f"{s.already_done:,}"),
        ("this run: calls (retries, 429s)", f"{s.calls:,} ({s.retries:,}, {s.rate_limited:,})"),
        ("this run: tokens", f"{s.tokens:,}"),
        ("this run: cost", f"{s.cost:.6f} {money}".rstrip()),
        ("this run: wall time", f"{report.wall_seconds:.2f} s"),
        ("this run: rate achieved / allowed per minute",
         f"{_num(report.achieved_per_window)} / {_num(report.rate_target, 'unlimited')}"),
    ]
    if s.resent:
        rows.append(("this run: re-sent after a crash", f"{s.resent:,}"))
    if report.cost_note:
        rows.append(("why the cost is 0", report.cost_note))
    if report.requests is not None and report.requests.cache_answers:
        rows.append(("answers from the cache (saved)",
                     f"{report.requests.cache_answers:,} ({report.requests.cache_saved_cost:.6f} {money})"))
    if s.unknown_outcomes:
        rows.append(("calls sent without an answer (may be charged)", f"{s.unknown_outcomes:,}"))
    rows += _reconciliation_rows(report.reconciliation, money)
    labels = report.labels or {}
    if labels:
        rows.append(("labels: unparsed / escalated",
                     f"{labels['unparsed_rate']:.1%} / {labels['escalated']:,} ({labels['escalation_rate']:.1%})"))
    if report.stop_code:
        rows.append(("stopped", f"{report.stop_code}: {report.stop_message}"))
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)
    for warning in report.warnings:
        console.print(f"warning: {warning}", highlight=False)
    console.print(f"exit code {report.exit_code}; output: [bold]{report.output}[/bold]")


def _reconciliation_rows(rec: Reconciliation | None, money: str) -> list[tuple[str, str]]:
    if rec is None:
        return []
    lo, hi = rec.interval
    rows = [("estimated cost (interval)", f"{rec.estimated_cost:.6f} ({lo:.6f}-{hi:.6f}) {money}".rstrip())]
    if rec.account_charged is not None:
        rows.append(("account charged / gap to cost column", f"{rec.account_charged:.6f} / {rec.gap:+.6f}"))
    if rec.balance_unknown:
        rows.append(("account charged", f"not known: {rec.balance_unknown}"))
    if rec.calls_with_unknown_cost:
        rows.append(("calls whose cost the server did not report", str(rec.calls_with_unknown_cost)))
    return rows


def _dedup(reuse: Reuse | None) -> str:
    if reuse is None:
        return "-"
    return (f"{reuse.distinct_requests:,} of {reuse.rows_with_prompt:,} rows "
            f"({reuse.dedup_saved_requests:,} not sent)")


def _num(x: float | None, none: str = "-") -> str:
    return none if x is None else f"{x:,.1f}"


def estimate_cli_job(job: Job, *, pilot: int, limit: int | None, max_cost: float | None, as_json: bool,
                     connect: Connect, console: Console) -> int:

    async def go(provider: Provider) -> Estimate:
        try:
            return await estimate_job(job, provider, pilot=pilot, limit=limit, max_cost=max_cost)
        finally:
            await provider.aclose()

    with connect(job) as connection:
        est = anyio.run(go, connection.open(job.provider, max_connections=job.limits.concurrency))
    if as_json:
        print(json.dumps(est.as_dict(), ensure_ascii=False))
    else:
        render_estimate(est, console)
    return 0


def render_estimate(est: Estimate, console: Console) -> None:
    c = est.currency
    table = Table(title="estimate", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    lo, hi = est.interval
    rows = [
        ("rows (skipped empty)", f"{est.rows:,} ({est.skipped_rows:,})"),
        ("distinct requests (still to send)", f"{est.distinct_requests:,} ({est.remaining_rows:,})"),
        ("calls per row (expected, with re-asks and escalation)",
         f"{est.calls_per_row} ({est.expected_calls_per_row:.2f})"),
        ("prompt tokens, one per request (exact, local)", f"{est.prompt_tokens:,}  [{est.tokenizer}]"),
        ("prompt tokens sent, all calls (expected)", f"{est.prompt_tokens_sent:,}"),
        (_completion_label(est), f"{est.completion_tokens:,}  [{est.completion_basis}]"),
        ("server/local token ratio", "-" if est.token_ratio is None else f"{est.token_ratio:.3f}"),
        ("price per million (prompt / completion)",
         f"{est.price['prompt_per_million']:g} / {est.price['completion_per_million']:g} {c}"),
        ("prepaid package tokens", f"{est.package_tokens:,}"),
        ("already spent (pilot, earlier runs)", f"{est.spent_so_far:.6f} {c}"),
        ("expected cost", f"{est.expected_cost:.6f} {c}  (95%: {lo:.6f} - {hi:.6f} {c}){_why_zero(est)}"),
        (_worst_label(est), f"{est.worst_case:.6f} {c}"),
        (f"time at {est.rate}" if est.rate else "time at the tier's rate",
         "bounded by concurrency (no rate limit)" if est.minutes is None else f"{est.minutes:.1f} min"),
    ]
    if est.escalation is not None:
        e = est.escalation
        rows.insert(-4, (f"escalation to {e.target} (agreement under {e.below:g})",
                         f"{e.share:.0%} of rows, ~{e.expected_rows:,} rows, {e.expected_cost:.6f} {c}  [{e.basis}]"))
        if e.pilot_agreement:
            rows.insert(-4, ("pilot rows by vote agreement",
                             ", ".join(f"{k}: {v}" for k, v in e.pilot_agreement.items())))
    if est.balance is not None:
        rows.append(("balance / worst case fits", f"{est.balance:g} {c} / {_yes(est.fits_balance)}"))
    if est.max_cost is not None:
        rows.append(("max_cost / worst case fits", f"{est.max_cost:g} {c} / {_yes(est.fits_cap)}"))
    for what, value in rows:
        table.add_row(what, value)
    console.print(table)
    for note in est.notes:
        console.print(f"note: {note}")


def _why_zero(est: Estimate) -> str:
    """A cost of 0 says why: what the prepaid package covers, and what it would cost at list price."""
    if est.expected_cost > 0 or est.list_price <= 0:
        return ""
    covered = min(est.package_tokens, est.prompt_tokens_sent + est.completion_tokens)
    return (f"\n0: a prepaid package covers ~{covered:,} tokens "
            f"(list price {est.list_price:.6f} {est.currency})")


def _completion_label(est: Estimate) -> str:
    """What the completion figure counts: MOMO reports one total per call, so it is what the
    server counted beyond the prompts sent (answers plus its own per-call overhead)."""
    if est.token_split:
        return "completion tokens, all calls (expected)"
    return "answer + service overhead tokens, all calls (expected)"


def _worst_label(est: Estimate) -> str:
    parts = ["every call at max_tokens"]
    if est.calls_per_row > 1 or est.expected_calls_per_row > 1 or est.escalation is not None:
        parts.append("every answer re-asked")
    if est.escalation is not None:
        parts.append("every row escalated")
    return f"worst case ({', '.join(parts)})"


def _yes(flag: bool | None) -> str:
    return "yes" if flag else "NO"
