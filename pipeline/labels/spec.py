"""The ``[label]`` table of a job file, validated once at the edge.

```toml
[label]
set = ["positive", "negative", "neutral"]
instruction = "Review of {product}: {text}\\n{labels}"
synonyms = { pos = "positive", "正面" = "positive" }
abstain = "unsure"
votes = 3
escalate = { agent_id = 302, below = 0.67 }   # relays: { model = "gpt-4o", ...prices }
```
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .parse import LabelSpec, label_instruction, normalize

if TYPE_CHECKING:
    from .schema import StructuredSchema

__all__ = ["EscalateConfig", "LabelConfig"]


class EscalateConfig(BaseModel):
    """Where rows go whose votes disagree: a stronger agent (MOMO) or model (relay) that decides.

    A row is escalated when its agreement is under ``below`` (2 of 3 votes is 0.667) or when no
    vote parsed. The stronger target is asked once (re-asked like any answer that does not
    parse); ``temperature`` and ``max_tokens`` default to the job's provider settings.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    agent_id: int | None = Field(None, description="MOMO: the stronger agent (give this or `model`).")
    model: str | None = Field(None, description="Relays: the stronger model (give this or `agent_id`).")
    below: float = Field(0.67, gt=0, le=1, description="Escalate rows whose votes agree less than this "
                         "(2 of 3 is 0.667), and rows whose votes never parsed.")
    temperature: float | None = Field(None, ge=0, le=2, description="None: the provider's.")
    max_tokens: int | None = Field(None, gt=0, description="None: the provider's.")
    prompt_price_per_million: float | None = Field(None, ge=0, description="Relays: the model's prompt "
                                                   "price (required with `model`).")
    completion_price_per_million: float | None = Field(None, ge=0, description="Relays: the model's "
                                                       "completion price (required with `model`).")

    @model_validator(mode="after")
    def _one_target(self) -> EscalateConfig:
        if (self.agent_id is None) == (self.model is None):
            raise ValueError("escalate: give exactly one of agent_id (MOMO) or model (relay)")
        priced = (self.prompt_price_per_million, self.completion_price_per_million)
        if self.model is not None and None in priced:
            raise ValueError("escalate: a relay model needs prompt_price_per_million and "
                             "completion_price_per_million (relays do not report a cost per call)")
        if self.agent_id is not None and priced != (None, None):
            raise ValueError("escalate: MOMO reports each call's cost; prices are for relay models")
        return self

    @property
    def target(self) -> str:
        return str(self.agent_id) if self.agent_id is not None else str(self.model)

    def needed(self, label: str | None, agreement: float) -> bool:
        """Whether a row whose votes gave ``label`` with ``agreement`` goes to the stronger target."""
        return label is None or agreement < self.below


class LabelConfig(BaseModel):
    """How a job labels rows: the label set (or a JSON ``schema``), prompt, votes, re-asks, escalation."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)  # votes = "3" is an error

    set: list[str] = Field(default_factory=list, description="The labels, at least two (unless `schema` "
                           "is given); ties go to the one listed first.")
    instruction: str | None = Field(None, description="Your own prompt; `{labels}` is the label set, "
                                    "`{column}` an input column. None: the row's prompt, then an "
                                    "instruction and a `Labels: a | b` line.")
    multi_label: bool = Field(False, description="An answer may name several labels.")
    abstain: str | None = Field(None, description="An answer the model may give instead of a label.")
    synonyms: dict[str, str] = Field(default_factory=dict, description="Other answers that mean a label, "
                                     "e.g. `{ pos = \"positive\" }`.")
    votes: int = Field(1, ge=1, description="Answers per row (at temperature > 0); the majority wins.")
    max_reasks: int = Field(2, ge=0, description="Times an answer that does not parse is asked again, "
                            "more strictly.")
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="A JSON schema (an object "
                                           "of flat fields): each field becomes a typed output column.")
    escalate: EscalateConfig | None = Field(None, description="Send rows whose votes disagree to a "
                                            "stronger target: the `[label.escalate]` keys below.")

    @field_validator("set")
    @classmethod
    def _distinct_labels(cls, labels: list[str]) -> list[str]:
        # Compare normalised forms: labels differing only in case or width cannot be told apart.
        seen: dict[str, str] = {}
        for label in labels:
            key = normalize(label)
            if not key:
                raise ValueError(f"label {label!r} is empty")
            if key in seen:
                raise ValueError(f"labels {seen[key]!r} and {label!r} are not distinct")
            seen[key] = label
        return labels

    @model_validator(mode="after")
    def _consistent(self) -> LabelConfig:
        if self.schema_ is not None:
            from .schema import StructuredSchema  # polars: only for a job with a schema

            StructuredSchema.of(self.schema_)  # a ValueError names the property that cannot be a column
        elif len(self.set) < 2:
            raise ValueError("set: give at least 2 labels (or a schema)")
        known = {normalize(label) for label in self.set}
        if self.abstain is not None and normalize(self.abstain) in known | {""}:
            raise ValueError(f"abstain {self.abstain!r} must be a new, non-empty answer")
        targets = [*self.set, *([self.abstain] if self.abstain else [])]
        for alias, target in self.synonyms.items():
            if target not in targets:
                raise ValueError(f"synonym {alias!r} maps to {target!r}, not in {targets}")
        return self

    def to_spec(self) -> LabelSpec:
        """The parser's view of this config."""
        return LabelSpec(
            labels=tuple(self.set),
            synonyms=dict(self.synonyms),
            multi_label=self.multi_label,
            abstain=self.abstain,
        )

    @property
    def structured(self) -> StructuredSchema | None:
        from .schema import StructuredSchema

        return None if self.schema_ is None else StructuredSchema.of(self.schema_)

    def default_instruction(self) -> str:
        """What follows the text when the job gives no ``instruction`` (unescaped)."""
        if self.schema_ is not None:
            from .schema import schema_instruction

            return schema_instruction(self.schema_)
        return label_instruction(self.to_spec())

    def prompt_template(self, text_column: str = "text") -> str:
        """The prompt template, with ``{labels}`` / ``{schema}`` filled in, column placeholders left as is.

        Without an ``instruction`` the template is the text column followed by the default
        instruction. Literal braces are doubled (``{{``), as the dataset's renderer expects.
        A ``Labels:`` line (a ``JSON schema:`` line for a schema) is appended when the template
        has none, because re-asks and the sandbox agent read the label set from it.
        """
        if self.instruction is None:
            return f"{{{text_column}}}\n\n{_escape(self.default_instruction())}"
        if self.schema_ is not None:
            from .schema import schema_instruction

            line, marker, placeholder = schema_instruction(self.schema_).splitlines()[-1], "JSON schema:", "{schema}"
        else:
            line, marker, placeholder = f"Labels: {' | '.join(self.set)}", "Labels:", "{labels}"
        # str.replace, not format(): the other placeholders belong to the dataset renderer.
        template = self.instruction.replace(placeholder, _escape(line))
        if not any(ln.startswith(marker) for ln in template.splitlines()):
            template = f"{template.rstrip()}\n{_escape(line)}"
        return template


def _escape(literal: str) -> str:
    """Double the braces of literal text so the template renderer leaves them alone."""
    return literal.replace("{", "{{").replace("}", "}}")
