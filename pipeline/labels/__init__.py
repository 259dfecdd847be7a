"""Labelling: read label answers, re-ask strictly, and vote.

A labelling job is an ordinary job whose ``[label]`` table (:class:`LabelConfig`) adds a label
set; each answer goes through :func:`parse_label` (or, with a ``schema``, is validated by
:class:`StructuredSchema`), unparseable ones are re-asked with :func:`strict_reprompt`, several
votes per row are combined by :func:`majority`, and rows whose votes disagree may be escalated
to a stronger target (:class:`EscalateConfig`). :func:`~.metrics.evaluate` measures the result
against gold labels.
"""

from .parse import LabelSpec, label_instruction, parse_label, strict_reprompt
from .schema import StructuredSchema, parse_structured
from .spec import EscalateConfig, LabelConfig
from .vote import VoteResult, majority

__all__ = [
    "EscalateConfig",
    "LabelConfig",
    "LabelSpec",
    "StructuredSchema",
    "VoteResult",
    "label_instruction",
    "majority",
    "parse_label",
    "parse_structured",
    "strict_reprompt",
]
