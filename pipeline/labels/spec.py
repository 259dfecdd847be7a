"""The ``[label]`` table of a job file, validated once at the edge.

```toml
[label]
set = ["positive", "negative", "neutral"]
instruction = "Review of {product}: {text}\\n{labels}"
synonyms = { pos = "positive", "正面" = "positive" }
abstain = "unsure"
votes = 3
```
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .parse import LabelSpec, label_instruction, normalize

__all__ = ["LabelConfig"]


class LabelConfig(BaseModel):
    """How a job labels rows: the label set, prompt, voting and re-asks."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)  # votes = "3" is an error

    set: list[str] = Field(min_length=2)
    instruction: str | None = None
    multi_label: bool = False
    abstain: str | None = None
    synonyms: dict[str, str] = Field(default_factory=dict)
    votes: int = Field(1, ge=1)
    max_reasks: int = Field(2, ge=0)
    schema_: dict[str, Any] | None = Field(None, alias="schema")

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

    def prompt_template(self, text_column: str = "text") -> str:
        """The prompt template, with ``{labels}`` filled in and column placeholders left as is.

        Without an ``instruction`` the template is the text column followed by the default
        instruction. Literal braces are doubled (``{{``), as the dataset's renderer expects.
        A ``Labels:`` line is appended when the template has none, because re-asks and the
        sandbox agent read the label set from it.
        """
        spec = self.to_spec()
        labels_line = _escape(f"Labels: {' | '.join(spec.labels)}")
        if self.instruction is None:
            return f"{{{text_column}}}\n\n{_escape(label_instruction(spec))}"
        # str.replace, not format(): the other placeholders belong to the dataset renderer.
        template = self.instruction.replace("{labels}", labels_line)
        if not any(line.startswith("Labels:") for line in template.splitlines()):
            template = f"{template.rstrip()}\n{labels_line}"
        return template


def _escape(literal: str) -> str:
    """Double the braces of literal text so the template renderer leaves them alone."""
    return literal.replace("{", "{{").replace("}", "}}")
