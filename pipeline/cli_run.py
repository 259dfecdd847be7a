"""``momo-batch run``: preflight, progress, summary and export around :func:`pipeline.run_job`."""

from __future__ import annotations

import csv
import json
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import polars as pl
from rich.console import Console
from rich.table import Table

from .config import Job, OutputConfig
from .connect import Connection
from .errors import Interrupted, Terminated, WriteError
from .estimator import Estimate
from .job import RunOptions, run_job
from .job import estimate as estimate_job
from .outcome import RunReport
from .output_path import check_output, export_path
from .progress import Reporter
from .providers.base import Provider
from .runner import RunStats, Stop


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
        errors.print(f"[yellow]warning:[/yellow] {text}", highlight=False)

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
                             "recorded (again to abort them)", highlight=False)
            else:
                stop.now(error(f"stopped by {name}"))
                errors.print(f"{name} again: aborting the calls in flight; writing the output",
                             highlight=False)
                return


def run_cli_job(job: Job, *, output: Path | None, base_url: str | None, limit: int | None,
                max_cost: float | None, restart: bool, yes: bool, sandbox: bool, fmt: str,
                as_json: bool, quiet: bool, credentials: Any, sandbox_for: Any,
                console: Console, errors: Console, cache: Path | None = None,
                with_report: bool = False, ray_options: Any = None) -> int:
    cfg = job.provider
    if output is not None:
        job = job.with_overrides(output=OutputConfig(path=output))
    parts = getattr(ray_options, "parts_rows", None) is not None
    check_output(job.output.path, job.input.path, formats=[fmt], parts=parts)  # before anything is paid
    if cache is not None:
        job = job.with_overrides(reuse=job.reuse.model_copy(update={"cache": cache}))
    with sandbox_for(cfg, job.limits.tier, sandbox, label_truth=sandbox_truth(job)) as (sb_url, sb_creds):
        connection = Connection(sb_creds or credentials(cfg), sb_url or base_url,
                                endpoint="sandbox" if sb_url else None)  # a sandbox's port is new each run
        if ray_options is not None:
            from .ray import run_job as run_on_ray

            report = run_on_ray(job, connection, limit=limit, restart=restart, max_cost=max_cost, yes=yes,
                                options=replace(ray_options, warn=_warner(errors), stop_on_signals=True))
        else:
            provider = connection.open(cfg, max_connections=job.limits.concurrency)
            report = anyio.run(lambda: _run(job, provider, quiet=quiet, errors=errors, yes=yes,
                                            limit=limit, restart=restart, max_cost=max_cost))
    if fmt != "parquet" and report.output.is_file():
        export(report.output, fmt)
    page = _write_report(report.output) if with_report and report.output.is_file() else None
    if as_json:
        print(json.dumps({**report.as_dict(), **({"report": str(page)} if page else {})}, ensure_ascii=False))
    else:
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
    d = report.as_dict()
    totals = d.get("job_totals", {})
    table = Table(title="run summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("output", d["output"]),
        ("rows", f"{d['rows']:,}"),
        ("ok / error / skipped", f"{totals.get('ok', 0):,} / {totals.get('error', 0):,} / "
                                 f"{totals.get('skipped', 0):,}"),
        ("distinct requests (dedup saved)", _dedup(d.get("requests") or {})),
        ("finished in earlier runs", f"{d['already_done']:,}"),
        ("re-sent after a crash", f"{d['resent_after_crash']:,}"),
        ("calls this run (retries, 429s)", f"{d['calls']:,} ({d['retries']:,}, {d['rate_limited']:,})"),
        ("tokens this run / whole job", f"{d['tokens']:,} / {totals.get('tokens', 0):,}"),
        ("cost this run / whole job", f"{d['cost']:.6f} / {totals.get('cost', 0):.6f}"),
        ("wall time", f"{d['wall_seconds']:.2f} s"),
        ("rate: achieved / allowed per minute",
         f"{_num(d['achieved_per_minute'])} / {_num(d['rate_limit_per_minute'], 'unlimited')}"),
    ]
    reuse = d.get("requests") or {}
    if reuse.get("cache_answers"):
        rows.append(("answers from the cache (saved)",
                     f"{reuse['cache_answers']:,} ({reuse['cache_saved_cost']:.6f})"))
    if d.get("unknown_outcomes"):
        rows.append(("calls sent without an answer (may be charged)", f"{d['unknown_outcomes']:,}"))
    rec = d.get("reconciliation") or {}
    if rec:
        lo, hi = rec["interval"]
        rows.append(("estimated cost (interval)", f"{rec['estimated_cost']:.6f} ({lo:.6f}-{hi:.6f})"))
        if "account_charged" in rec:
            rows.append(("account charged / gap to cost column",
                         f"{rec['account_charged']:.6f} / {rec['gap']:+.6f}"))
        if rec.get("balance_unknown"):
            rows.append(("account charged", f"not known: {rec['balance_unknown']}"))
        if rec.get("calls_with_unknown_cost"):
            rows.append(("calls whose cost the server did not report",
                         str(rec["calls_with_unknown_cost"])))
    labels = d.get("labels") or {}
    if labels:
        rows.append(("labels: unparsed / escalated",
                     f"{labels['unparsed_rate']:.1%} / {labels['escalated']:,} ({labels['escalation_rate']:.1%})"))
    if d["stop_code"]:
        rows.append(("stopped", f"{d['stop_code']}: {d['stop_message']}"))
    for what, value in rows:
        table.add_row(what, str(value))
    console.print(table)
    for warning in d.get("warnings", []):
        console.print(f"warning: {warning}", highlight=False)
    console.print(f"exit code {report.exit_code}; output: [bold]{report.output}[/bold]")


def _dedup(reuse: dict[str, Any]) -> str:
    if not reuse:
        return "-"
    return (f"{reuse['distinct_requests']:,} of {reuse['rows_with_prompt']:,} rows "
            f"({reuse['dedup_saved_requests']:,} not sent)")


def _num(x: float | None, none: str = "-") -> str:
    return none if x is None else f"{x:,.1f}"


def estimate_cli_job(job: Job, *, pilot: int, base_url: str | None, limit: int | None,
                     max_cost: float | None, sandbox: bool, as_json: bool, credentials: Any,
                     sandbox_for: Any, console: Console) -> int:
    cfg = job.provider

    async def go(provider: Provider) -> Estimate:
        try:
            return await estimate_job(job, provider, pilot=pilot, limit=limit, max_cost=max_cost)
        finally:
            await provider.aclose()

    with sandbox_for(cfg, job.limits.tier, sandbox, label_truth=sandbox_truth(job)) as (sb_url, sb_creds):
        connection = Connection(sb_creds or credentials(cfg), sb_url or base_url,
                                endpoint="sandbox" if sb_url else None)
        est = anyio.run(go, connection.open(cfg, max_connections=job.limits.concurrency))
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
        ("expected cost", f"{est.expected_cost:.6f} {c}  (95%: {lo:.6f} - {hi:.6f})"),
        (_worst_label(est), f"{est.worst_case:.6f} {c}"),
        ("time at the tier's rate",
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
