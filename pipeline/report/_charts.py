"""The report's charts: matplotlib figures rendered to inline SVG strings (no JavaScript).

Text stays text in the SVG (``svg.fonttype = none``): it is crisp, searchable, and drawn by the
browser's fonts, so labels in any script render wherever the page is opened.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

from . import _data as d

BLUE, RED, GREEN, AMBER, GREY, PURPLE = "#3565a8", "#c0392b", "#2e8b57", "#d4900f", "#8a919c", "#7a5cad"
STATUS_COLOURS = {"ok": GREEN, "error": RED, "skipped": GREY, "unparsed": AMBER}
_STYLE: dict[Any, Any] = {  # matplotlib types its keys as literals
    "svg.fonttype": "none",
    "svg.hashsalt": "momo-batch",  # the same data gives the same page
    "font.family": "sans-serif",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#5b6270",
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#d9dde3",
    "grid.linewidth": 0.6,
    "axes.formatter.useoffset": False,
    "legend.frameon": False,
    "legend.fontsize": 8,
}
NARROW, WIDE = (6.0, 3.0), (12.0, 3.0)


@dataclass(frozen=True)
class Chart:
    """One figure of the page: ``key`` is its HTML id, ``svg`` the inline drawing."""

    key: str
    title: str
    caption: str
    svg: str
    wide: bool = False


def charts(run: d.RunData) -> list[Chart]:
    """Every chart that applies to ``run`` (label charts only for label jobs)."""
    with matplotlib.rc_context(_STYLE):
        return list(_all(run))


def _all(run: d.RunData) -> Iterator[Chart]:
    axis = TimeAxis.for_span(run.span)
    yield _rate_chart(run, axis)
    yield _latency_chart(run)
    yield _cost_time_chart(run, axis)
    yield _per_row_chart(run)
    yield _outcome_chart(run)
    yield _retry_chart(run, axis)
    if run.is_label_job:
        yield _label_chart(run)
        yield _agreement_chart(run)


# -- helpers -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimeAxis:
    """Seconds, minutes or hours since the first call, whichever reads best for the run's span."""

    unit: str
    seconds: float

    @classmethod
    def for_span(cls, span: float) -> TimeAxis:
        if span <= 180:
            return cls("s", 1.0)
        return cls("min", 60.0) if span <= 3 * 3600 else cls("h", 3600.0)

    def label(self) -> str:
        return f"time since the first call ({self.unit})"


def _figure(size: tuple[float, float] = NARROW, cols: int = 1) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=size, layout="constrained")
    return fig, list(fig.subplots(1, cols, squeeze=False)[0])


def _svg(fig: Figure, key: str) -> str:
    """The figure as an ``<svg>`` element whose ids are unique on the page and that fills its box."""
    buf = io.StringIO()
    with warnings.catch_warnings():
        # the browser draws the text (svg.fonttype none); a glyph missing from matplotlib's own
        # font (CJK labels) only makes its size estimate rougher
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    svg = text[text.index("<svg"):]
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{key}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{key}-\1)", svg)
    svg = re.sub(r'href="#([^"]+)"', rf'href="#{key}-\1"', svg)
    return re.sub(r'<svg ([^>]*?)width="[^"]*" height="[^"]*"',
                  r'<svg class="chart" role="img" \1', svg, count=1)


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=GREY, fontsize=11)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _histogram(ax: Axes, values: np.ndarray, colour: str, *, bins: int = 40) -> None:
    """A histogram of ``values``; log-spaced bins when a long tail would squash the rest."""
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        ax.bar([f"{lo:g}"], [len(values)], color=colour, width=0.4)
    elif lo > 0 and np.percentile(values, 99) > 10 * np.percentile(values, 50):
        ax.hist(values, bins=np.geomspace(lo, hi, bins + 1).tolist(), color=colour)
        ax.set_xscale("log")
    else:
        ax.hist(values, bins=bins, color=colour)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 5), useMathText=True)  # 2.5×10⁻⁴
    _counts(ax.yaxis)


def _counts(axis: Any) -> None:
    """An axis of counts: whole numbers, a few ticks, thousands separated."""
    axis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    axis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _annotate_bars(ax: Axes, bars: Any, total: int) -> None:
    labels = [f"{int(b.get_width()):,} ({b.get_width() / total:.0%})" for b in bars]
    ax.bar_label(bars, labels=labels, padding=3, fontsize=8)
    ax.margins(x=0.22)
    _counts(ax.xaxis)


# -- the charts --------------------------------------------------------------------------------
def _rate_chart(run: d.RunData, axis: TimeAxis) -> Chart:
    fig, (ax,) = _figure(WIDE)
    limit = run.rate_limit_per_minute
    bins, rate = d.requests_per_minute(run)
    if not run.called.height:
        _empty(ax, "no calls")
    else:
        ax.bar(bins.edges[:-1] / axis.seconds, rate, width=bins.widths / axis.seconds, align="edge",
               color=BLUE, alpha=0.85, label=f"requests per minute ({bins.width:g} s bins)")
        if limit is not None:
            ax.axhline(limit, color=RED, linestyle="--", linewidth=1.2, label=f"tier limit {limit:,.0f}/min")
        achieved = run.achieved_per_minute
        if achieved is not None:
            ax.axhline(achieved, color=GREY, linestyle=":", linewidth=1.2,
                       label=f"achieved, last run {achieved:,.0f}/min")
        ax.set_xlabel(axis.label())
        ax.set_ylabel("requests / minute")
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.set_xlim(0, bins.edges[-1] / axis.seconds)
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=3, borderaxespad=0.2)  # above the bars
    tier = "no limit (enterprise or none set)" if limit is None else f"the tier's limit is {limit:,.0f} per minute"
    caption = (f"Every attempt (retries, votes and re-asks included) by when it started, as a rate per "
               f"minute in {bins.width:g}-second bins; {tier}. A call's start is estimated as "
               "finished_at − latency_ms, a row's attempts spread over its span.")
    return Chart("rate", "Requests per minute", caption, _svg(fig, "rate"), wide=True)


def _latency_chart(run: d.RunData) -> Chart:
    fig, (ax,) = _figure()
    ms = d.latency_per_call(run)
    what = "mean latency per call of each row" if run.is_label_job else "latency of each answered row"
    if not len(ms):
        _empty(ax, "no answered call")
        caption = "No call was answered."
    else:
        _histogram(ax, ms, BLUE)
        pct = d.percentiles(ms)
        for (q, v), style in zip(pct.items(), ("-", "--", ":"), strict=True):
            ax.axvline(v, color=RED, linestyle=style, linewidth=1, label=f"p{q:g} {_fmt(v)} ms")
        ax.set_xlabel(f"{what} (ms)")
        ax.set_ylabel("rows")
        ax.legend(loc="upper right")
        caption = (f"{len(ms):,} rows; the {what}: time to answer, without the waits for the rate "
                   "limit or between retries.")
    return Chart("latency", "Latency", caption, _svg(fig, "latency"))


def _cost_time_chart(run: d.RunData, axis: TimeAxis) -> Chart:
    fig, (ax,) = _figure()
    total = float(run.rows["cost"].sum() or 0.0)
    tokens = int(run.rows["tokens_used"].sum() or 0)
    # cost follows tokens closely: one curve, and tokens when there is no cost to show
    column, what, colour = ("cost", "cost", PURPLE) if total > 0 else ("tokens_used", "tokens", AMBER)
    if not run.called.height:
        _empty(ax, "no calls")
    else:
        t, values = d.cumulative(run, column)
        ax.plot(t / axis.seconds, values, color=colour, linewidth=1.8)
        ax.fill_between(t / axis.seconds, values, color=colour, alpha=0.12, linewidth=0)
        ax.set_ylabel(f"cumulative {what}")
        if column == "tokens_used":
            ax.yaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.set_xlabel(axis.label())
        ax.set_xlim(0, t[-1] / axis.seconds or 1)
        ax.set_ylim(bottom=0)
    if total > 0:
        caption = f"Cost of the rows finished by each moment: {total:.6g} in all, for {tokens:,} tokens."
    else:
        caption = (f"Tokens of the rows finished by each moment: {tokens:,} in all. The cost column is 0 "
                   "(prepaid token packages, or no price).")
    return Chart("cost-time", "Cost over time", caption, _svg(fig, "cost-time"))


def _per_row_chart(run: d.RunData) -> Chart:
    fig, (left, right) = _figure(NARROW, cols=2)
    for ax, column, colour, what in ((left, "cost", PURPLE, "cost per row"),
                                     (right, "tokens_used", AMBER, "tokens per row")):
        values = d.paid(run, column)
        if not len(values):
            _empty(ax, f"no {what}")
            continue
        if column == "cost" and not values.any():
            _empty(ax, "every row cost 0")
            continue
        _histogram(ax, values, colour, bins=30)
        ax.set_xlabel(what)
        ax.set_ylabel("rows")
    costs = d.paid(run, "cost")
    caption = ("Each answered row's cost and tokens (all its calls). " +
               (f"Mean {costs.mean():.6g}, max {costs.max():.6g}." if len(costs) else ""))
    return Chart("per-row", "Cost and tokens per row", caption, _svg(fig, "per-row"))


def _outcome_chart(run: d.RunData) -> Chart:
    counts = d.outcome_counts(run)
    fig, (ax,) = _figure((6.0, max(1.6, 0.9 + 0.32 * len(counts))))
    if not counts:
        _empty(ax, "no rows")
    else:
        labels = [label for _, label, _ in counts][::-1]
        values = [n for _, _, n in counts][::-1]
        colours = [STATUS_COLOURS.get(s, PURPLE) for s, _, _ in counts][::-1]
        bars = ax.barh(labels, values, color=colours)
        _annotate_bars(ax, bars, sum(values))
        ax.set_xlabel("rows")
        ax.grid(axis="y", visible=False)
    errors = sum(n for s, _, n in counts if s == "error")
    caption = (f"Rows by final status and error code: {errors:,} ended in an error. "
               "skipped: empty prompt, not sent; unparsed: no answer parsed as a label.")
    return Chart("outcomes", "Outcomes and errors by code", caption, _svg(fig, "outcomes"))


def _retry_chart(run: d.RunData, axis: TimeAxis) -> Chart:
    fig = Figure(figsize=WIDE, layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 3])
    called = run.called
    retries = d.retries_per_row(run)
    if not called.height:
        _empty(left, "no calls")
        _empty(right, "no calls")
    else:
        attempts = d.value_counts(called["attempts"])
        left.bar([str(a) for a, _ in attempts], [n for _, n in attempts], color=BLUE)
        left.set_xlabel("attempts per row")
        left.set_ylabel("rows")
        _counts(left.yaxis)
        _retries_over_time(right, run, retries.to_numpy().astype(float), axis)
    t = run.totals
    last = (f" The run that wrote this file counted {t.get('retries', 0):,} retries and "
            f"{t.get('rate_limited', 0):,} answers 429 (rate limited)." if "retries" in t else "")
    caption = (f"Attempts per row (votes and re-asks are calls of their own) and, by when the row "
               f"started, its retries: {int(retries.sum()):,} in all.{last}")
    return Chart("retries", "Retries and 429s", caption, _svg(fig, "retries"), wide=True)


def _retries_over_time(ax: Axes, run: d.RunData, retries: np.ndarray, axis: TimeAxis) -> None:
    if not retries.any():
        _empty(ax, "no retries")
        return
    bins = d.time_bins(run.span)
    per_bin = bins.count(run.rows["start"].to_numpy(), weights=retries)
    ax.bar(bins.edges[:-1] / axis.seconds, per_bin, width=bins.widths / axis.seconds, align="edge", color=AMBER)
    ax.set_xlabel(axis.label())
    ax.set_ylabel("retries")
    ax.set_xlim(0, bins.edges[-1] / axis.seconds)
    _counts(ax.yaxis)


def _label_chart(run: d.RunData) -> Chart:
    counts = d.label_counts(run)
    fig, (ax,) = _figure((6.0, max(1.6, 0.9 + 0.32 * len(counts))))
    if not counts:
        _empty(ax, "no labelled rows")
    else:
        colours = [AMBER if name == "unparsed" else BLUE for name, _ in counts][::-1]
        bars = ax.barh([name for name, _ in counts][::-1], [n for _, n in counts][::-1], color=colours)
        _annotate_bars(ax, bars, sum(n for _, n in counts))
        ax.set_xlabel("rows")
        ax.grid(axis="y", visible=False)
    caption = "The winning label of each row (majority of its votes); unparsed: no vote parsed."
    return Chart("labels", "Label distribution", caption, _svg(fig, "labels"))


def _agreement_chart(run: d.RunData) -> Chart:
    fig, (ax,) = _figure()
    agreement = run.rows["label_agreement"].drop_nulls()
    counts = d.value_counts(agreement.round(2))
    if not counts:
        _empty(ax, "no votes")
        caption = "No row has votes."
    else:
        bars = ax.bar([f"{v:.0%}" for v, _ in counts], [n for _, n in counts], color=GREEN)
        ax.bar_label(bars, labels=[f"{n:,}" for _, n in counts], padding=2, fontsize=8)
        ax.margins(y=0.15)
        ax.set_xlabel("share of the row's votes for its label")
        ax.set_ylabel("rows")
        _counts(ax.yaxis)
        shares = agreement.to_numpy()
        caption = (f"How far the votes of each row agreed: {(shares >= 0.999).mean():.0%} of rows unanimous, "
                   f"mean agreement {shares.mean():.0%}.")
    return Chart("agreement", "Label agreement", caption, _svg(fig, "agreement"))

