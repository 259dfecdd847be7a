"""Combine several parsed answers for one row into a label and an agreement score.

Rules:

* **Denominator.** Agreement is always measured against *all* votes cast, unparsed ones
  included: three votes of which one did not parse and two say "positive" give 2/3, so a row
  the model struggled with never looks unanimous.
* **Single-label.** The most frequent parsed label wins (the abstain answer is a label like any
  other here). Ties go to the label listed first in the spec's label set, then abstain, then any
  stray label alphabetically, so reruns decide the same way. Agreement = winner's votes / votes.
* **Multi-label.** A label is chosen if it appears in more than half of the votes cast. The
  result is the chosen labels joined with ``|`` in spec order, or None when none reaches a
  majority. Agreement = share of votes whose label set equals the result exactly.
* **Nothing parsed** (or no votes): label None, agreement 0.0.

``VoteResult.votes`` keeps every vote as text ("a|b" for several labels, None if unparsed), in
the order cast; ``label_votes`` is the same as a list, ready for a Parquet list column.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .parse import LabelSpec

__all__ = ["VoteResult", "majority"]

Vote = tuple[str, ...] | None


@dataclass(frozen=True)
class VoteResult:
    """The decided label (None if undecided), its agreement in [0, 1], and the raw votes."""

    label: str | None
    agreement: float
    votes: tuple[str | None, ...]

    @property
    def label_votes(self) -> list[str | None]:
        """The votes as stored in the ``label_votes`` column."""
        return list(self.votes)


def majority(votes: Sequence[Vote], spec: LabelSpec) -> VoteResult:
    """Decide one row's label from its votes (see the module rules)."""
    serialized = tuple(_serialize(v) for v in votes)
    if not any(serialized):
        return VoteResult(label=None, agreement=0.0, votes=serialized)
    decide = _multi if spec.multi_label else _single
    label, agreement = decide([v for v in votes if v], len(votes), spec)
    return VoteResult(label=label, agreement=agreement, votes=serialized)


def _serialize(vote: Vote) -> str | None:
    return "|".join(vote) if vote else None


def _rank(spec: LabelSpec) -> dict[str, int]:
    """Tie-break order: the label set as listed, then abstain."""
    order = [*spec.labels, *([spec.abstain] if spec.abstain else [])]
    return {label: i for i, label in enumerate(order)}


def _single(parsed: list[tuple[str, ...]], cast: int, spec: LabelSpec) -> tuple[str, float]:
    counts = Counter("|".join(v) for v in parsed)
    rank = _rank(spec)
    # Highest count first; among equals, spec order; unknown labels last, alphabetically.
    winner = min(counts, key=lambda lab: (-counts[lab], rank.get(lab, len(rank)), lab))
    return winner, counts[winner] / cast


def _multi(parsed: list[tuple[str, ...]], cast: int, spec: LabelSpec) -> tuple[str | None, float]:
    counts = Counter(label for vote in parsed for label in set(vote))
    rank = _rank(spec)
    chosen = sorted(
        (lab for lab, n in counts.items() if n * 2 > cast),
        key=lambda lab: (rank.get(lab, len(rank)), lab),
    )
    if not chosen:
        return None, 0.0
    agreeing = sum(1 for vote in parsed if set(vote) == set(chosen))
    return "|".join(chosen), agreeing / cast
