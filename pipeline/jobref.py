"""The job file reference (``docs/jobfile.md``), written from the models that validate a job.

Each key's type and default come from the pydantic field, its meaning from the field's
``description``: the page cannot say what the code does not do. ``tests/test_jobref.py`` holds
``docs/jobfile.md`` equal to :func:`job_reference`; after changing a key, write it again with::

    .venv/bin/python -m pipeline.jobref > docs/jobfile.md
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from .config import InputConfig, LimitsConfig, OutputConfig, PromptConfig, ProviderConfig, ReuseConfig
from .labels.spec import EscalateConfig, LabelConfig

# (table, model, required): in the order a job file is usually written
TABLES: list[tuple[str, type[BaseModel], bool]] = [
    ("input", InputConfig, True),
    ("prompt", PromptConfig, True),
    ("provider", ProviderConfig, True),
    ("limits", LimitsConfig, False),
    ("output", OutputConfig, True),
    ("reuse", ReuseConfig, False),
    ("label", LabelConfig, False),
    ("label.escalate", EscalateConfig, False),
]

HEADER = """# The job file

<!-- Written by `python -m pipeline.jobref > docs/jobfile.md` from the models in pipeline/config.py
     and pipeline/labels/spec.py; tests/test_jobref.py fails when they differ. Do not edit by hand. -->

A job is a TOML file. Every key of every table is below, with its type, its default and what it
does. Unknown keys and wrong types (`concurrency = "16"`) are errors naming the key, before
anything is sent. **Relative paths are relative to the job file**, not to where you run
`momo-batch` (`--output` and `--cache` on the command line are relative to where you run it).
A default of "unset" means no value; the meaning says what happens then ("None: ...").
"""


def type_name(annotation: Any) -> str:
    """A TOML reader's name for a field's type: ``"free" | "basic"``, ``integer``, ``list of string``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args if a is not type(None))
    if origin is Literal:
        return " \\| ".join(f'`"{a}"`' for a in args)
    if origin is list:
        return f"list of {type_name(args[0])}"
    if origin is dict:
        return f"table of {type_name(args[1])}" if args[1] is not Any else "table"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if annotation in names:
        return names[annotation]
    return "path" if getattr(annotation, "__name__", "") == "Path" else str(annotation)


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if value == [] or value == {}:
        return "empty"
    return f"`{value}`"


def table_reference(name: str, model: type[BaseModel], required: bool) -> str:
    doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
    lines = [f"## `[{name}]`", "", f"{'Required.' if required else 'Optional.'} {doc}".rstrip(), "",
             "| key | type | default | meaning |", "|---|---|---|---|"]
    for key, field in model.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")  # a pipe would end the cell
        lines.append(f"| `{field.alias or key}` | {type_name(field.annotation)} | {default_text(field)} | {meaning} |")
    return "\n".join(lines) + "\n"


def job_reference() -> str:
    """The whole page, as ``docs/jobfile.md`` holds it."""
    return HEADER + "".join("\n" + table_reference(*table) for table in TABLES)


def undocumented() -> list[str]:
    """Keys with no description: the page would show them without a meaning."""
    return [f"{name}.{key}" for name, model, _ in TABLES
            for key, field in model.model_fields.items() if not field.description]


if __name__ == "__main__":
    print(job_reference(), end="")
