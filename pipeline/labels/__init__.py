"""Labelling: read label answers, re-ask strictly, and vote.

A labelling job is an ordinary job whose ``[label]`` table (:class:`LabelConfig`) adds a label
set; each answer goes through :func:`parse_label`, unparseable ones are re-asked with
:func:`strict_reprompt`, and several votes per row are combined by :func:`majority`.
"""

from .parse import (
    LabelSpec,
    label_instruction,
    parse_label,
    parse_structured,
    strict_reprompt,
)
from .spec import LabelConfig
from .vote import VoteResult, majority

__all__ = [
    "LabelConfig",
    "LabelSpec",
    "VoteResult",
    "label_instruction",
    "majority",
    "parse_label",
    "parse_structured",
    "strict_reprompt",
]
