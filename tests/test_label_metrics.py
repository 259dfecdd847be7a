"""``evaluate`` against values computed by hand on a tiny table (see each comment for the arithmetic)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from rich.console import Console

from pipeline import ConfigError, evaluate
from pipeline.cli_eval import render_evaluation
from pipeline.labels.metrics import NONE

# 8 rows with gold (one more without), 5 right, one never labelled:
#   (pos,pos)×2  (pos,neg)  (neg,neg)  (neg,none)  (neu,neu)×2  (neu,pos)
TINY = pl.DataFrame({
    "gold": ["pos", "pos", "pos", "neg", "neg", "neu", "neu", "neu", None],
    "label": ["pos", "pos", "neg", "neg", None, "neu", "pos", "neu", "pos"],
    "label_agreement": [1.0, 2 / 3, 2 / 3, 1.0, 0.0, 1.0, 1 / 3, 2 / 3, 1.0],
    "label_votes": [["pos"] * 3, ["pos", "pos", "neu"], ["neg", "pos", "neg"], ["neg"] * 3, [None] * 3,
                    ["neu"] * 3, ["pos", "neg", "neu"], ["neu", "neu", "pos"], ["pos"] * 3],
    "label_source": ["votes", "votes", "escalation", "votes", "escalation", "votes", "escalation", "votes", "votes"],
    "case": ["plain", "sarcasm", "sarcasm", "plain", "mixed", "plain", "mixed", "plain", "plain"],
    "tokens_used": [10, 10, 30, 10, 40, 10, 30, 10, 10],
    "cost": [0.1, 0.1, 0.5, 0.1, 0.6, 0.1, 0.5, 0.1, 0.1],
})


def test_accuracy_coverage_and_counts() -> None:
    ev = evaluate(TINY, "gold")
    assert (ev.rows, ev.rows_without_gold, ev.labelled, ev.correct) == (8, 1, 7, 5)
    assert ev.accuracy == 0.625 and ev.coverage == 0.875  # 5/8, 7/8


def test_per_label_precision_recall_f1() -> None:
    ev = evaluate(TINY, "gold")
    assert ev.labels == ["neg", "neu", "pos"]
    pos, neg, neu = ev.per_label["pos"], ev.per_label["neg"], ev.per_label["neu"]
    # pos: tp 2, gold 3, predicted 3 (2 + the neu row called pos)
    assert (pos.precision, pos.recall, pos.f1, pos.support, pos.predicted) == pytest.approx((2 / 3, 2 / 3, 2 / 3, 3, 3),
                                                                                            abs=1e-6)
    # neg: tp 1, gold 2, predicted 2 (1 + the pos row called neg); the unlabelled neg row is a miss
    assert (neg.precision, neg.recall, neg.f1) == pytest.approx((0.5, 0.5, 0.5))
    # neu: tp 2, gold 3, predicted 2: P 1, R 2/3, F1 2·1·(2/3)/(1+2/3) = 0.8
    assert (neu.precision, neu.recall, neu.f1) == pytest.approx((1.0, 2 / 3, 0.8), abs=1e-6)
    assert ev.macro_f1 == pytest.approx((2 / 3 + 0.5 + 0.8) / 3, abs=1e-6)


def test_confusion_matrix_has_a_none_column_for_unlabelled_rows() -> None:
    ev = evaluate(TINY, "gold")
    assert ev.confusion == {
        "neg": {"neg": 1, "neu": 0, "pos": 0, NONE: 1},
        "neu": {"neg": 0, "neu": 2, "pos": 1, NONE: 0},
        "pos": {"neg": 1, "neu": 0, "pos": 2, NONE: 0},
    }


def test_cohens_kappa() -> None:
    # p_o = 5/8; marginals gold (pos 3, neg 2, neu 3, none 0)/8, predicted (pos 3, neg 2, neu 2, none 1)/8
    # p_e = (3·3 + 2·2 + 3·2 + 0·1) / 64 = 19/64; kappa = (5/8 − 19/64) / (1 − 19/64) = 21/45 = 7/15
    assert evaluate(TINY, "gold").kappa == pytest.approx(7 / 15, abs=1e-6)
    same = pl.DataFrame({"gold": ["a", "b", "a"], "label": ["a", "b", "a"]})
    assert evaluate(same, "gold").kappa == 1.0
    one_category = pl.DataFrame({"gold": ["a", "a"], "label": ["a", "a"]})
    assert evaluate(one_category, "gold").kappa is None  # p_e = 1: undefined


def test_accuracy_by_agreement_level_by_source_and_by_column() -> None:
    ev = evaluate(TINY, "gold", by=["case"])
    levels = {g.value: (g.rows, g.correct) for g in ev.by_agreement}
    assert levels == {"3/3": (3, 3), "2/3": (3, 2), "1/3": (1, 0), "0/3": (1, 0)}
    assert [g.value for g in ev.by_agreement] == ["3/3", "2/3", "1/3", "0/3"]
    assert {g.value: (g.rows, g.accuracy) for g in ev.by_source} == {"votes": (5, 1.0), "escalation": (3, 0.0)}
    assert {g.value: (g.rows, g.correct) for g in ev.by["case"]} == {"plain": (4, 4), "sarcasm": (2, 1),
                                                                     "mixed": (2, 0)}
    assert (ev.tokens, ev.cost) == (150, pytest.approx(2.1))  # the gold rows only


def test_reads_a_parquet_output_and_names_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    TINY.write_parquet(path)
    assert evaluate(path, "gold").accuracy == 0.625
    assert evaluate(path, "case", pred="case").accuracy == 1.0
    with pytest.raises(ConfigError, match="'stars'"):
        evaluate(path, "stars")
    with pytest.raises(ConfigError, match="no such output"):
        evaluate(tmp_path / "missing.parquet", "gold")


def test_the_tables_show_every_figure() -> None:
    console = Console(record=True, width=120)
    render_evaluation(evaluate(TINY, "gold", by=["case"]), console)
    text = console.export_text()
    for shown in ("62.5%  (5 of 8)", "Cohen's kappa", "0.467", "macro F1", "0.656", "(none)", "3/3", "66.7%",
                  "escalation", "accuracy by case", "sarcasm", "2.100000"):
        assert shown in text, shown
