"""Labelling: read label answers, re-ask strictly, and vote.

A labelling job is an ordinary job whose ``[label]`` table (:class:`LabelConfig`) adds a label
set; each answer goes through :func:`parse_label` (or, with a ``schema``, is validated by
:class:`StructuredSchema`), unparseable ones are re-asked with :func:`strict_reprompt`, several
votes per row are combined by :func:`majority`, and rows whose votes disagree may be escalated
to a stronger target (:class:`EscalateConfig`). :func:`~.metrics.evaluate` measures the result
against gold labels.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Loaded on first use (PEP 562): the job file's model imports ``.spec``, and the CLI must not pay
# for polars (``.schema``) before it runs anything.
_EXPORTS = {
    "LabelSpec": ".parse", "label_instruction": ".parse", "parse_label": ".parse", "strict_reprompt": ".parse",
    "StructuredSchema": ".schema", "parse_structured": ".schema",
    "EscalateConfig": ".spec", "LabelConfig": ".spec",
    "VoteResult": ".vote", "majority": ".vote",
}

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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.labels' has no attribute {name!r}")
    return getattr(importlib.import_module(module, __name__), name)


if TYPE_CHECKING:
    from .parse import LabelSpec, label_instruction, parse_label, strict_reprompt
    from .schema import StructuredSchema, parse_structured
    from .spec import EscalateConfig, LabelConfig
    from .vote import VoteResult, majority
