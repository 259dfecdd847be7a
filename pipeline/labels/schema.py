"""Structured labels: the ``[label] schema`` (a JSON Schema object) as a pydantic model and typed columns.

```toml
[label.schema]
type = "object"
required = ["sentiment", "stars"]
properties.sentiment = { enum = ["positive", "negative", "neutral"] }
properties.stars = { type = "integer" }
properties.aspects = { type = "array", items = { type = "string" } }
```

Each property becomes a field of a model built with :func:`pydantic.create_model`, validated in
strict mode (``"4"`` is not an integer, ``true`` is not a number), and an output column of its own
type. A property has an ``enum`` (its members, matched up to case and width: ``"Positive"`` →
``positive``) or a ``type``: ``string``, ``integer``, ``number``, ``boolean``, ``array`` of one of
those (``items``; strings by default), or a list of one of them with ``"null"``. Properties not in
``required`` may be left out (null). Nested objects are not columns: they are refused when the
job is read. Keys an answer adds beyond the schema are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal

import polars as pl
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model

from .parse import _json_objects, normalize

__all__ = ["StructuredSchema", "parse_structured", "schema_instruction", "schema_reprompt"]

_SCALARS: dict[str, tuple[type, pl.DataType]] = {
    "string": (str, pl.String()),
    "integer": (int, pl.Int64()),
    "number": (float, pl.Float64()),
    "boolean": (bool, pl.Boolean()),
}


@dataclass(frozen=True)
class StructuredSchema:
    """A validated ``[label] schema``: its model, its columns in order, and the schema as given."""

    model: type[BaseModel]
    columns: dict[str, pl.DataType]
    schema: Mapping[str, Any]

    @classmethod
    def of(cls, schema: Mapping[str, Any]) -> StructuredSchema:
        """Build from a JSON Schema object; ``ValueError`` names what cannot be a column."""
        return _build(json.dumps(schema, ensure_ascii=False))  # the fields' order is the columns' order

    def validate(self, response: str) -> tuple[dict[str, Any] | None, str | None]:
        """(the answer's fields, None) if its JSON object fits, else (None, why not in one line)."""
        obj = next(_json_objects(response), None)
        if obj is None:
            return None, "no JSON object in the answer"
        try:
            values = self.model.model_validate(obj).model_dump(by_alias=True, mode="json")
        except ValidationError as exc:
            return None, _why(exc)
        return values, None


@lru_cache(maxsize=32)
def _build(text: str) -> StructuredSchema:
    schema = json.loads(text)
    props = schema.get("properties")
    if not isinstance(props, dict) or not props:
        raise ValueError("schema: needs properties (an object schema with at least one field)")
    required = set(schema.get("required") or [])
    unknown = required - set(props)
    if unknown:
        raise ValueError(f"schema: required field(s) {sorted(unknown)} are not in properties")
    fields: dict[str, Any] = {}
    columns: dict[str, pl.DataType] = {}
    for i, (name, prop) in enumerate(props.items()):
        py_type, dtype = _field_type(name, prop)
        default = ... if name in required else None
        if name not in required:
            py_type = py_type | None
        # fields are named f0, f1...: any text (spaces, 中文) can be a column, by its alias
        fields[f"f{i}"] = (py_type, Field(default, alias=name))
        columns[name] = dtype
    model = create_model("StructuredLabel", __config__=ConfigDict(strict=True, extra="ignore"), **fields)
    return StructuredSchema(model, columns, schema)


def _field_type(name: str, prop: Any) -> tuple[Any, pl.DataType]:
    if not isinstance(prop, dict):
        raise ValueError(f"schema: property {name!r} must be a table")
    enum = prop.get("enum")
    if enum is not None:
        if not isinstance(enum, list) or not enum or not all(isinstance(m, str) for m in enum):
            raise ValueError(f"schema: property {name!r}: enum must be a non-empty list of strings")
        return Annotated[Literal[tuple(enum)], BeforeValidator(_canonical(enum))], pl.String()
    kinds = prop.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not isinstance(kinds, list) or not kinds:
        raise ValueError(f"schema: property {name!r} needs a type or an enum")
    real = [k for k in kinds if k != "null"]
    if len(real) != 1:
        raise ValueError(f"schema: property {name!r}: one type (and optionally \"null\"), not {kinds}")
    kind = real[0]
    if kind in _SCALARS:
        py, dtype = _SCALARS[kind]
    elif kind == "array":
        items = (prop.get("items") or {}).get("type", "string")
        if items not in _SCALARS:
            raise ValueError(f"schema: property {name!r}: array items must be one of {sorted(_SCALARS)}")
        inner, inner_dtype = _SCALARS[items]
        py, dtype = list[inner], pl.List(inner_dtype)  # type: ignore[valid-type]
    else:
        raise ValueError(f"schema: property {name!r}: type {kind!r} cannot be a column "
                         f"(use one of {sorted([*_SCALARS, 'array'])} or an enum)")
    return (py | None if "null" in kinds else py), dtype


def _canonical(members: list[str]) -> Any:
    folded = {normalize(m): m for m in members}

    def canon(value: Any) -> Any:
        return folded.get(normalize(value), value) if isinstance(value, str) else value

    return canon


def _why(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "answer"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def schema_instruction(schema: Mapping[str, Any]) -> str:
    """Instruction lines for a structured label: answer JSON only, and the schema on one line."""
    return ("Answer with one JSON object and nothing else.\n"
            f"JSON schema: {json.dumps(schema, ensure_ascii=False, separators=(', ', ': '))}")


def parse_structured(response: str, schema: Mapping[str, Any]) -> dict[str, Any] | None:
    """Every field of the JSON object in ``response`` if it fits ``schema`` (absent optional fields
    are None), else None. See :class:`StructuredSchema` for the rules."""
    return StructuredSchema.of(schema).validate(response)[0]


def schema_reprompt(prompt: str, why: str) -> str:
    """The re-ask after an answer that failed validation: the prompt, a ``STRICT:`` line, and why."""
    return (f"{prompt.rstrip()}\n\nSTRICT: answer with one JSON object that matches the JSON schema above, "
            f"and nothing else. The last answer was rejected: {why}.")
