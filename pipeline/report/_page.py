"""The report page: one HTML document with its style and its charts inline, and no script.

A Content-Security-Policy in the page forbids every fetch, so what renders is what the file holds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from html import escape
from typing import Any

from .. import __version__
from ..outcome import EXIT_MEANINGS, ExitCode
from . import _data as d
from ._charts import Chart

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

CSS = """
:root { --ink:#1f2430; --muted:#5b6270; --line:#e3e6eb; --bg:#f5f6f8; --card:#fff; --accent:#3565a8; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 20px 48px; }
header h1 { font-size: 22px; margin: 0 0 4px; }
header p { margin: 0; color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; margin: 18px 0 22px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.card .k { font-size: 12px; color: var(--muted); }
.card .v { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .n { font-size: 12px; color: var(--muted); }
.card.bad .v { color: #c0392b; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 14px; }
figure { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
figure.wide { grid-column: 1 / -1; }
figure h2 { font-size: 15px; margin: 0 0 6px; }
figcaption { font-size: 12.5px; color: var(--muted); margin-top: 6px; }
svg.chart { display: block; width: 100%; height: auto; }
section.tables { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 14px; margin-top: 22px; }
section.tables > div { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; }
section.tables h2 { font-size: 15px; margin: 0 0 4px; }
section.tables p { font-size: 12.5px; color: var(--muted); margin: 0 0 8px; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
td, th { text-align: left; padding: 4px 8px 4px 0; border-top: 1px solid var(--line); vertical-align: top; }
td.v { font-family: ui-monospace, "DejaVu Sans Mono", Menlo, Consolas, monospace; word-break: break-all; }
footer { margin-top: 22px; font-size: 12px; color: var(--muted); }
section.tables h3 { font-size: 13px; margin: 12px 0 4px; }
details { margin-top: 12px; font-size: 12.5px; }
details summary { cursor: pointer; color: var(--muted); }
@media (max-width: 820px) { .grid, section.tables { grid-template-columns: 1fr; } }
/* a phone: two cards a row, and charts keep a size whose text can be read (9 pt at 90 % or more
   of the size drawn), scrolling sideways inside their box rather than shrinking */
@media (max-width: 600px) {
  main { padding: 14px 10px 32px; }
  .cards { grid-template-columns: repeat(2, minmax(0, 1fr)); }
  figure { overflow-x: auto; padding: 10px; }
  svg.chart { min-width: 540px; }
  figure.wide svg.chart { min-width: 1040px; }
  th { word-break: break-word; }
}
@media print { body { background: #fff; } figure, .card, section.tables > div { break-inside: avoid; } }
"""


def render(run: d.RunData, charts: list[Chart]) -> str:
    """The whole page as text."""
    title = f"momo-batch report: {run.path.name}"
    body = "\n".join([
        _header(run),
        _cards(run),
        '<div class="grid">',
        *(_figure(c) for c in charts),
        "</div>",
        _tables(run),
        _footer(),
    ])
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n")


def _header(run: d.RunData) -> str:
    m = run.metadata
    what = " · ".join(x for x in (
        m.get("momo_batch.provider") and f"provider {m['momo_batch.provider']}",
        m.get("momo_batch.target") and f"target {m['momo_batch.target']}",
        _when(run),
    ) if x)
    return (f"<header><h1>Run report: {escape(run.path.name)}</h1>"
            f"<p>{escape(what or 'no provenance recorded in this file')}</p></header>")


def _when(run: d.RunData) -> str:
    ends = run.rows["finished_at"].drop_nulls()
    if run.t0 is None or not len(ends):
        return ""
    last: datetime = ends.max()  # type: ignore[assignment]
    return f"{run.t0:%Y-%m-%d %H:%M:%S} – {last:%H:%M:%S} UTC" if run.t0.date() == last.date() else \
        f"{run.t0:%Y-%m-%d %H:%M} – {last:%Y-%m-%d %H:%M} UTC"


# -- headline numbers --------------------------------------------------------------------------
def _cards(run: d.RunData) -> str:
    html = "".join(
        f'<div class="card{" bad" if bad else ""}"><div class="k">{escape(k)}</div>'
        f'<div class="v">{escape(v)}</div><div class="n">{escape(n)}</div></div>'
        for k, v, n, bad in _headline(run))
    return f'<section class="cards">{html}</section>'


def _headline(run: d.RunData) -> Iterator[tuple[str, str, str, bool]]:
    rows, t = run.rows, run.totals
    status = dict(rows.group_by("status").len().iter_rows())
    n_err = int(status.get("error", 0))
    yield "rows", f"{rows.height:,}", _status_note(status), False
    yield "errors", f"{n_err:,}", f"{n_err / rows.height:.1%} of rows" if rows.height else "", n_err > 0
    yield "calls", f"{int(rows['calls'].sum()):,}", f"{int(d.retries_per_row(run).sum()):,} retries", False
    if "rate_limited" in t:
        yield "429 answers", f"{t['rate_limited']:,}", "rate limited (last run)", bool(t["rate_limited"])
    yield "tokens", f"{int(rows['tokens_used'].sum() or 0):,}", "every call, each counted once", False
    yield "cost", _money(float(rows["cost"].sum() or 0.0), run.currency), _cost_note(run), False
    if run.evaluation is not None:
        ev = run.evaluation
        yield "accuracy", f"{ev.accuracy:.1%}", f"{ev.correct:,} of {ev.rows:,} against gold (as eval)", False
    pct = d.percentiles(d.latency_per_call(run))
    if pct:
        yield "latency p50", f"{pct[50]:,.0f} ms", f"p90 {pct[90]:,.0f} ms · p99 {pct[99]:,.0f} ms", False
    achieved, limit = run.achieved_per_minute, run.rate_limit_per_minute
    if achieved is not None:
        yield "rate (last run)", f"{achieved:,.0f}/min", \
            "no limit" if limit is None else f"of {limit:,.0f}/min allowed", False
    if "wall_seconds" in t:
        yield "wall time (last run)", _duration(float(t["wall_seconds"])), \
            f"span of all rows {_duration(run.span)}", False


def _money(amount: float, currency: str | None) -> str:
    return f"{amount:.6g} {currency}" if currency else f"{amount:.6g}"


def _cost_note(run: d.RunData) -> str:
    """Where the cost comes from and its unit, or why it is 0."""
    by = run.metadata.get("momo_batch.cost_source", "")
    if not float(run.rows["cost"].sum() or 0.0) and int(run.rows["tokens_used"].sum() or 0):
        # MOMO charges a call covered by a prepaid package nothing; a relay's cost is the job's prices
        return "0: prepaid tokens covered the calls" if by == "server" else "0: the job's prices are 0"
    source = {"server": "as charged", "price_table": "at the job's prices"}.get(by, "")
    return source if run.currency else f"{source}, account currency".lstrip(", ")


def _status_note(status: dict[str, int]) -> str:
    order = ["ok", "unparsed", "skipped"]
    return " · ".join(f"{status[s]:,} {s}" for s in order if status.get(s))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# -- charts and tables -------------------------------------------------------------------------
def _figure(chart: Chart) -> str:
    cls = ' class="wide"' if chart.wide else ""
    return (f'<figure id="{chart.key}"{cls}><h2>{escape(chart.title)}</h2>\n{chart.svg}\n'
            f"<figcaption>{escape(chart.caption)}</figcaption></figure>")


def _tables(run: d.RunData) -> str:
    return (
        '<section class="tables">'
        '<div id="summary"><h2>Run summary</h2>' + _summary(run) + "</div>"
        '<div id="provenance"><h2>Provenance</h2><p>The Parquet key-value metadata: how this file was '
        "made.</p>" + _table([*run.metadata.items(), *_file_facts(run)]) + "</div>"
        "</section>"
    )


def _summary(run: d.RunData) -> str:
    """The whole job first (every row of this file), then the run that wrote it, then every value
    it recorded (``momo_batch.totals``), folded away."""
    job = _table(_job_rows(run))
    if not run.totals:
        return "<h3>The whole job</h3>" + job + "<p>No run summary recorded.</p>"
    return ("<h3>The whole job: every row of this file</h3>" + job
            + "<h3>The run that wrote this file</h3>" + _table(_run_rows(run.totals))
            + "<details><summary>Every value the run recorded (momo_batch.totals)</summary>"
            + _table(_flatten(run.totals)) + "</details>")


def _job_rows(run: d.RunData) -> Iterator[tuple[str, str]]:
    rows = run.rows
    status = dict(rows.group_by("status").len().iter_rows())
    yield "rows", f"{rows.height:,} ({', '.join(f'{n:,} {s}' for s, n in sorted(status.items()))})"
    shared = int(rows["duplicate"].sum()) if "duplicate" in rows.columns else 0
    cached = int(rows["cached"].sum()) if "cached" in rows.columns else 0
    if shared or cached:
        yield "rows answered without a call", f"{shared:,} duplicate, {cached:,} from the cache"
    yield "calls", f"{int(rows['calls'].sum()):,}"
    yield "tokens", f"{int(rows['tokens_used'].sum() or 0):,}"
    yield "cost", f"{_money(float(rows['cost'].sum() or 0.0), run.currency or 'in the account currency')}"
    if run.evaluation is not None:
        ev = run.evaluation
        yield "accuracy against gold", (f"{ev.accuracy:.1%} ({ev.correct:,} of {ev.rows:,}; coverage "
                                        f"{ev.coverage:.1%}; kappa {'-' if ev.kappa is None else f'{ev.kappa:.3f}'})")


def _run_rows(t: dict[str, Any]) -> Iterator[tuple[str, str]]:
    code = t.get("exit_code")
    if code is not None:
        meaning = EXIT_MEANINGS.get(ExitCode(code), "") if code in set(ExitCode) else ""
        yield "exit code", f"{code} — {meaning}" if meaning else str(code)
    if t.get("stop_code"):
        yield "stopped by", str(t["stop_code"])
    answered = [f"{t[k]:,} {k}" for k in ("ok", "error", "skipped") if isinstance(t.get(k), int)]
    if answered:
        yield "rows finished in this run", ", ".join(answered)
    if isinstance(t.get("already_done"), int):
        yield "rows already done before it", f"{t['already_done']:,}"
    if isinstance(t.get("calls"), int):
        yield "calls (retries, answers 429)", f"{t['calls']:,} ({t.get('retries', 0):,}, {t.get('rate_limited', 0):,})"
    if isinstance(t.get("tokens"), int):
        yield "tokens", f"{t['tokens']:,}"
    if isinstance(t.get("cost"), int | float):
        yield "cost", _money(float(t["cost"]), t.get("currency"))
    if isinstance(t.get("wall_seconds"), int | float):
        yield "wall time", _duration(float(t["wall_seconds"]))


def _file_facts(run: d.RunData) -> list[tuple[str, str]]:
    return [
        ("file", str(run.path)),
        ("size", f"{run.file_bytes:,} bytes"),
        ("rows", f"{run.rows.height:,}"),
        ("label job", "yes" if run.is_label_job else "no"),
    ]


def _flatten(obj: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        else:
            yield name, _text(value)


def _text(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _table(pairs: Iterable[tuple[str, str]]) -> str:
    body = "".join(f'<tr><th>{escape(k)}</th><td class="v">{escape(v)}</td></tr>' for k, v in pairs)
    return f"<table>{body}</table>"


def _footer() -> str:
    return (f"<footer>Made by momo-batch {escape(__version__)} (<code>momo-batch report</code>). "
            "Charts: matplotlib, inline SVG; the page loads nothing from the network.</footer>")

