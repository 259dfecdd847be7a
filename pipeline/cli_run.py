"""``momo-batch run``: preflight, progress, summary and export around :func:`pipeline.run_job`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import polars as pl
from rich.console import Console
from rich.table import Table

from .config import Job
from .connect import open_provider
from .job import RunReport, run_job
from .progress import Reporter
from .runner import RunStats


async def _run(job: Job, provider: Any, *, quiet: bool, errors: Console, **kw: Any) -> RunReport:
    stats = RunStats()
    try:
        await provider.price()  # preflight: key valid, agent or model exists
        with Reporter(stats, stream=errors.file, enabled=not quiet) as rep:
            return await run_job(job, provider, stats=stats, on_result=rep.update, **kw)
    finally:
        await provider.aclose()


def run_cli_job(job: Job, *, output: Path | None, base_url: str | None, limit: int | None,
                max_cost: float | None, restart: bool, yes: bool, sandbox: bool, fmt: str,
                as_json: bool, quiet: bool, credentials: Any, sandbox_for: Any,
                console: Console, errors: Console) -> int:
    cfg = job.provider
    with sandbox_for(cfg, job.limits.tier, sandbox) as (sb_url, sb_creds):
        creds = sb_creds or credentials(cfg)
        provider = open_provider(cfg, creds, base_url=sb_url or base_url,
                                 max_connections=job.limits.concurrency)
        report = anyio.run(lambda: _run(job, provider, quiet=quiet, errors=errors, output=output,
                                        limit=limit, restart=restart, max_cost=max_cost))
    if fmt != "parquet":
        export(report.output, fmt)
    if as_json:
        print(json.dumps(report.as_dict(), ensure_ascii=False))
    else:
        render_summary(report, console)
    return report.exit_code


def export(parquet: Path, fmt: str) -> Path:
    """Write the output again as JSON lines or CSV beside the Parquet."""
    target = parquet.with_suffix(".jsonl" if fmt == "jsonl" else ".csv")
    lf = pl.scan_parquet(parquet)
    if fmt == "jsonl":
        lf.sink_ndjson(target)
    else:
        # CSV has no nested types: lists (label votes) become "a|b|c"
        lists = [n for n, t in lf.collect_schema().items() if isinstance(t, pl.List)]
        lf.with_columns(pl.col(c).list.join("|") for c in lists).sink_csv(target)
    return target


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
        ("finished in earlier runs", f"{d['already_done']:,}"),
        ("re-sent after a crash", f"{d['resent_after_crash']:,}"),
        ("calls this run (retries, 429s)", f"{d['calls']:,} ({d['retries']:,}, {d['rate_limited']:,})"),
        ("tokens this run / whole job", f"{d['tokens']:,} / {totals.get('tokens', 0):,}"),
        ("cost this run / whole job", f"{d['cost']:.6f} / {totals.get('cost', 0):.6f}"),
        ("wall time", f"{d['wall_seconds']:.2f} s"),
        ("rate: achieved / allowed per minute",
         f"{_num(d['achieved_per_minute'])} / {_num(d['rate_limit_per_minute'], 'unlimited')}"),
    ]
    if d["stop_code"]:
        rows.append(("stopped", f"{d['stop_code']}: {d['stop_message']}"))
    for what, value in rows:
        table.add_row(what, str(value))
    console.print(table)
    console.print(f"exit code {report.exit_code}; output: [bold]{report.output}[/bold]")


def _num(x: float | None, none: str = "-") -> str:
    return none if x is None else f"{x:,.1f}"
