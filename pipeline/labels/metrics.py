"""How good are the labels? A labelled output measured against a gold column.

``evaluate(output, gold="gold")`` reads only the columns it needs and returns an
:class:`Evaluation`: accuracy, per-label precision / recall / F1, the confusion matrix, Cohen's
kappa against gold, accuracy by agreement level ("3/3" against "2/3") and by ``label_source``
(votes or escalation), and the tokens and cost the rows took.

Rules:

* Rows without a gold label are left out (and counted). A row with gold but no predicted label
  (``unparsed``, an error) counts as wrong, as the category ``(none)``: accuracy is over every gold
  row, and ``coverage`` says how many got a label at all.
* Labels match exactly (after trimming spaces); a multi-label answer ``a|b`` is one category.
* Precision, recall and F1 of a label that was never predicted (or never gold) are 0, not
  undefined (scikit-learn's ``zero_division=0``); macro F1 averages over the gold labels.
* Kappa = (p_o − p_e) / (1 − p_e) over the categories gold ∪ predicted ∪ (none), with p_e from
  the two marginals; undefined (None) when p_e = 1 (one category everywhere).

Computed here with a few polars group-bys rather than with scikit-learn: its metrics would need
scikit-learn, scipy and joblib (~100 MB installed) for sums over a confusion matrix of a handful
of labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ..errors import ConfigError
from ..usage import as_used

__all__ = ["NONE", "Evaluation", "LabelScore", "evaluate"]

NONE = "(none)"  # the predicted "category" of a gold row that got no label


@dataclass(frozen=True)
class LabelScore:
    precision: float
    recall: float
    f1: float
    support: int  # gold rows with this label
    predicted: int  # rows predicted with this label


@dataclass
class Group:
    """Accuracy within one group of rows (an agreement level, a label source, a value of ``by``)."""

    value: str
    rows: int
    correct: int
    accuracy: float


@dataclass
class Evaluation:
    gold_column: str
    pred_column: str
    rows: int  # rows with a gold label
    rows_without_gold: int
    labelled: int  # of ``rows``, those with a predicted label
    correct: int
    accuracy: float  # correct / rows
    coverage: float  # labelled / rows
    kappa: float | None
    macro_f1: float
    labels: list[str]  # gold labels first (sorted), then labels only ever predicted
    per_label: dict[str, LabelScore]
    confusion: dict[str, dict[str, int]]  # gold → predicted (incl. NONE) → rows
    by_agreement: list[Group] = field(default_factory=list)
    by_source: list[Group] = field(default_factory=list)
    by: dict[str, list[Group]] = field(default_factory=dict)
    # over the gold rows, every call (votes, re-asks, escalation), counted as pipeline.usage counts
    # them: a duplicate row's call, tokens and cost are the first row's
    calls: int | None = None
    tokens: int | None = None
    cost: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(output: str | Path | pl.DataFrame | pl.LazyFrame, gold: str = "gold", *, pred: str = "label",
             by: list[str] | tuple[str, ...] = ()) -> Evaluation:
    """Measure the ``pred`` column of a labelled output (a Parquet path or a frame) against ``gold``."""
    lf = _scan(output)
    names = lf.collect_schema().names()
    missing = [c for c in (gold, pred, *by) if c not in names]
    if missing:
        raise ConfigError(f"eval: no column {', '.join(map(repr, missing))} in the output "
                          f"(columns: {', '.join(names)})")
    optional = [c for c in ("label_agreement", "label_votes", "label_source", "tokens_used", "cost", "attempts",
                            "duplicate", "cached") if c in names]
    frame = as_used(lf.select(list(dict.fromkeys([gold, pred, *by, *optional]))).collect())
    frame = frame.with_columns(pl.col(gold).cast(pl.String).str.strip_chars().alias("__gold"),
                               pl.col(pred).cast(pl.String).str.strip_chars().alias("__pred"))
    has_gold = pl.col("__gold").is_not_null() & (pl.col("__gold") != "")
    scored = frame.filter(has_gold).with_columns(
        pl.col("__pred").fill_null(NONE).replace("", NONE).alias("__pred"))
    scored = scored.with_columns((pl.col("__gold") == pl.col("__pred")).alias("__ok"))
    return _assemble(scored, gold, pred, frame.height - scored.height, by)


def _scan(output: str | Path | pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    if isinstance(output, pl.DataFrame):
        return output.lazy()
    if isinstance(output, pl.LazyFrame):
        return output
    path = Path(output)
    if not path.is_file():
        raise ConfigError(f"{path}: no such output file")
    try:
        lf = pl.scan_parquet(path)
        lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ConfigError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    return lf


def _assemble(scored: pl.DataFrame, gold: str, pred: str, without_gold: int, by: list[str] | tuple[str, ...]
              ) -> Evaluation:
    n = scored.height
    pairs = {(g, p): c for g, p, c in scored.group_by("__gold", "__pred").len().iter_rows()}
    gold_labels = sorted({g for g, _ in pairs})
    only_predicted = sorted({p for _, p in pairs if p != NONE and p not in gold_labels})
    labels = gold_labels + only_predicted
    correct = sum(c for (g, p), c in pairs.items() if g == p)
    labelled = n - sum(c for (_, p), c in pairs.items() if p == NONE)
    per_label = {label: _score(label, pairs) for label in labels}
    columns = labels + ([NONE] if labelled < n else [])
    confusion = {g: {p: pairs.get((g, p), 0) for p in columns} for g in gold_labels}
    ev = Evaluation(
        gold_column=gold, pred_column=pred, rows=n, rows_without_gold=without_gold, labelled=labelled,
        correct=correct, accuracy=_ratio(correct, n), coverage=_ratio(labelled, n),
        kappa=_kappa(pairs, n), labels=labels, per_label=per_label, confusion=confusion,
        macro_f1=round(sum(per_label[g].f1 for g in gold_labels) / len(gold_labels), 6) if gold_labels else 0.0,
    )
    if "label_agreement" in scored.columns:
        ev.by_agreement = _groups(scored.with_columns(_agreement_level(scored).alias("__level")), "__level",
                                  descending=True)
    if "label_source" in scored.columns:
        ev.by_source = _groups(scored, "label_source")
    ev.by = {column: _groups(scored, column) for column in by}
    if "attempts" in scored.columns:
        ev.calls = int(scored["calls"].sum() or 0)
    if "tokens_used" in scored.columns:
        ev.tokens = int(scored["tokens_used"].sum() or 0)
    if "cost" in scored.columns:
        ev.cost = round(float(scored["cost"].sum() or 0.0), 6)
    return ev


def _ratio(a: int, b: int) -> float:
    return round(a / b, 6) if b else 0.0


def _score(label: str, pairs: dict[tuple[str, str], int]) -> LabelScore:
    tp = pairs.get((label, label), 0)
    support = sum(c for (g, _), c in pairs.items() if g == label)
    predicted = sum(c for (_, p), c in pairs.items() if p == label)
    precision = tp / predicted if predicted else 0.0
    recall = tp / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return LabelScore(round(precision, 6), round(recall, 6), round(f1, 6), support, predicted)


def _kappa(pairs: dict[tuple[str, str], int], n: int) -> float | None:
    if not n:
        return None
    categories = {g for g, _ in pairs} | {p for _, p in pairs}
    p_o = sum(c for (g, p), c in pairs.items() if g == p) / n
    gold_share = {k: sum(c for (g, _), c in pairs.items() if g == k) / n for k in categories}
    pred_share = {k: sum(c for (_, p), c in pairs.items() if p == k) / n for k in categories}
    p_e = sum(gold_share[k] * pred_share[k] for k in categories)
    if p_e >= 1.0 - 1e-12:
        return None
    return round((p_o - p_e) / (1.0 - p_e), 6)


def _agreement_level(scored: pl.DataFrame) -> pl.Expr:
    """"k/n" votes for the winner when the votes are known, else the agreement share itself."""
    share = pl.col("label_agreement")
    if "label_votes" in scored.columns:
        cast = pl.col("label_votes").list.len()
        winner = (share * cast).round(0).cast(pl.Int64)
        return pl.when(share.is_null()).then(pl.lit(NONE)).otherwise(
            pl.format("{}/{}", winner, cast))
    return pl.when(share.is_null()).then(pl.lit(NONE)).otherwise(share.round(3).cast(pl.String))


def _groups(scored: pl.DataFrame, column: str, *, descending: bool = False) -> list[Group]:
    table = scored.group_by(pl.col(column).cast(pl.String).fill_null(NONE).alias("__g")).agg(
        pl.len().alias("rows"), pl.col("__ok").sum().alias("correct")).sort("__g", descending=descending)
    return [Group(str(value), rows, int(ok), _ratio(int(ok), rows)) for value, rows, ok in table.iter_rows()]
