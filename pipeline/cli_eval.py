"""``momo-batch eval``: render an :class:`~pipeline.labels.metrics.Evaluation` as tables."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .labels.metrics import Evaluation, Group


def render_evaluation(ev: Evaluation, console: Console) -> None:
    summary = Table(title=f"{ev.pred_column} against {ev.gold_column}", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    rows = [
        ("rows with gold (without)", f"{ev.rows:,} ({ev.rows_without_gold:,})"),
        ("labelled (coverage)", f"{ev.labelled:,} ({ev.coverage:.1%})"),
        ("accuracy", f"{ev.accuracy:.1%}  ({ev.correct:,} of {ev.rows:,})"),
        ("Cohen's kappa", "undefined" if ev.kappa is None else f"{ev.kappa:.3f}"),
        ("macro F1", f"{ev.macro_f1:.3f}"),
    ]
    if ev.calls is not None:
        rows.append(("calls of these rows (votes, re-asks, escalation)", f"{ev.calls:,}"))
    if ev.tokens is not None:
        rows.append(("tokens of these rows", f"{ev.tokens:,}"))
    if ev.cost is not None:
        rows.append(("cost of these rows (account currency)", f"{ev.cost:.6f}"))
    for what, value in rows:
        summary.add_row(what, value)
    console.print(summary)
    console.print(_per_label(ev))
    console.print(_confusion(ev))
    for title, groups in [("accuracy by agreement (winner's votes)", ev.by_agreement),
                          ("accuracy by label source", ev.by_source),
                          *((f"accuracy by {column}", g) for column, g in ev.by.items())]:
        if groups:
            console.print(_groups(title, groups))


def _per_label(ev: Evaluation) -> Table:
    table = Table(title="per label")
    for col in ("label", "precision", "recall", "F1", "gold rows", "predicted"):
        table.add_column(col, justify="left" if col == "label" else "right")
    for label, s in ev.per_label.items():
        table.add_row(label, f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.f1:.3f}", f"{s.support:,}",
                      f"{s.predicted:,}")
    return table


def _confusion(ev: Evaluation) -> Table:
    columns = list(next(iter(ev.confusion.values()), {}))
    table = Table(title="confusion (rows: gold, columns: predicted)")
    table.add_column("gold \\ predicted")
    for col in columns:
        table.add_column(col, justify="right")
    for gold, counts in ev.confusion.items():
        table.add_row(gold, *(f"[bold]{counts[c]:,}[/bold]" if c == gold else f"{counts[c]:,}" for c in columns))
    return table


def _groups(title: str, groups: list[Group]) -> Table:
    table = Table(title=title)
    for col in ("value", "rows", "accuracy"):
        table.add_column(col, justify="left" if col == "value" else "right")
    for g in groups:
        table.add_row(g.value, f"{g.rows:,}", f"{g.accuracy:.1%}")
    return table
