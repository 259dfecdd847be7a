"""Majority votes: winners, ties by spec order, agreement over all votes cast, multi-label."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.labels import LabelSpec, VoteResult, majority

SENTIMENT = LabelSpec(labels=("positive", "negative", "neutral"), abstain="unsure")
TOPICS = LabelSpec(labels=("price", "quality", "shipping"), multi_label=True)

POS, NEG, NEU, UNSURE = ("positive",), ("negative",), ("neutral",), ("unsure",)


@pytest.mark.parametrize(
    ("votes", "label", "agreement"),
    [
        ([POS], "positive", 1.0),
        ([POS, POS, NEG], "positive", 2 / 3),
        ([NEG, POS, NEG], "negative", 2 / 3),
        ([POS, None, POS], "positive", 2 / 3),  # unparsed votes stay in the denominator
        ([None, None, NEU], "neutral", 1 / 3),
        ([UNSURE, UNSURE, POS], "unsure", 2 / 3),  # abstaining can win
    ],
)
def test_single_label_majority(votes: list[tuple[str, ...] | None], label: str, agreement: float) -> None:
    result = majority(votes, SENTIMENT)
    assert result.label == label
    assert result.agreement == pytest.approx(agreement)


@pytest.mark.parametrize(
    ("votes", "label"),
    [
        ([NEG, POS], "positive"),
        ([NEU, NEG], "negative"),
        ([NEU, NEG, POS, None], "positive"),
        ([UNSURE, NEU], "neutral"),  # abstain ranks after every listed label
        ([NEU, NEU, NEG, NEG, POS], "negative"),
    ],
)
def test_ties_go_to_the_label_listed_first(votes: list[tuple[str, ...] | None], label: str) -> None:
    assert majority(votes, SENTIMENT).label == label


def test_all_unparsed_and_no_votes() -> None:
    assert majority([None, None], SENTIMENT) == VoteResult(None, 0.0, (None, None))
    assert majority([], SENTIMENT) == VoteResult(None, 0.0, ())


def test_votes_are_kept_in_order_as_strings() -> None:
    result = majority([POS, None, ("price", "quality")], SENTIMENT)
    assert result.votes == ("positive", None, "price|quality")
    assert result.label_votes == ["positive", None, "price|quality"]


@pytest.mark.parametrize(
    ("votes", "label", "agreement"),
    [
        ([("price",), ("price",), ("price",)], "price", 1.0),
        ([("price", "quality"), ("quality", "price"), ("price",)], "price|quality", 2 / 3),
        ([("quality", "shipping"), ("price", "shipping"), ("shipping",)], "shipping", 1 / 3),
        ([("price",), ("quality",), ("shipping",)], None, 0.0),  # nothing reaches a majority
        ([("price",), ("price",), None, None], None, 0.0),  # 2 of 4 is not more than half
        ([("shipping", "price"), ("shipping", "price"), None], "price|shipping", 2 / 3),
    ],
)
def test_multi_label_majority(votes: list[tuple[str, ...] | None], label: str | None, agreement: float) -> None:
    result = majority(votes, TOPICS)
    assert result.label == label
    assert result.agreement == pytest.approx(agreement)


VOTE = st.one_of(st.none(), st.sampled_from([POS, NEG, NEU, UNSURE]))


@given(st.lists(VOTE, max_size=9))
def test_single_label_invariants(votes: list[tuple[str, ...] | None]) -> None:
    result = majority(votes, SENTIMENT)
    assert 0.0 <= result.agreement <= 1.0
    assert len(result.votes) == len(votes)
    if result.label is None:
        assert all(v is None for v in votes)
    else:
        counts = [votes.count((lab,)) for lab in (*SENTIMENT.labels, "unsure")]
        assert votes.count((result.label,)) == max(counts)
        assert result.agreement == pytest.approx(max(counts) / len(votes))
