"""Structured labels: a JSON schema becomes a pydantic model and typed columns; bad answers are re-asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from pipeline import ConfigError, Job, evaluate
from pipeline.config import OutputConfig
from pipeline.labels import LabelConfig, StructuredSchema
from pipeline.labels.schema import schema_instruction, schema_reprompt
from pipeline.labels.task import LabelTask
from pipeline.plan import prepare
from pipeline.sandbox import Sandbox, SandboxConfig

from .helpers import calls, run, sha

ROOT = Path(__file__).resolve().parents[1]
GOLD = ROOT / "data/reviews-gold.csv"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["sentiment", "stars"],
    "properties": {
        "sentiment": {"enum": ["positive", "negative", "neutral"]},
        "stars": {"type": "integer"},
        "confidence": {"type": "number"},
        "aspects": {"type": "array", "items": {"type": "string"}},
        "would buy again": {"type": ["boolean", "null"]},
    },
}


def test_each_field_is_a_typed_column_in_schema_order() -> None:
    assert StructuredSchema.of(SCHEMA).columns == {
        "sentiment": pl.String(), "stars": pl.Int64(), "confidence": pl.Float64(),
        "aspects": pl.List(pl.String()), "would buy again": pl.Boolean()}
    task = LabelTask(LabelConfig.model_validate({"schema": SCHEMA}), 0.7)
    assert list(task.extra_schema)[-5:] == ["sentiment", "stars", "confidence", "aspects", "would buy again"]


@pytest.mark.parametrize(("answer", "fields", "why"), [
    ('{"sentiment": "Positive", "stars": 5}', {"sentiment": "positive", "stars": 5}, None),  # enum up to case
    ('Sure: ```json\n{"sentiment": "negative", "stars": 1, "confidence": 1, "aspects": ["fit"]}\n```',
     {"sentiment": "negative", "stars": 1, "confidence": 1.0, "aspects": ["fit"]}, None),
    ('{"sentiment": "negative", "stars": "1"}', None, "stars: Input should be a valid integer"),
    ('{"sentiment": "negative", "stars": true}', None, "stars: Input should be a valid integer"),
    ('{"sentiment": "meh", "stars": 3}', None, "sentiment: Input should be"),
    ('{"stars": 3}', None, "sentiment: Field required"),
    ('{"sentiment": "neutral", "stars": 3, "would buy again": "yes"}', None, "would buy again: Input should be"),
    ("neutral, 3 stars", None, "no JSON object"),
])
def test_answers_are_validated_strictly(answer: str, fields: dict[str, Any] | None, why: str | None) -> None:
    values, reason = StructuredSchema.of(SCHEMA).validate(answer)
    if fields is None:
        assert values is None and why is not None and reason is not None and reason.startswith(why)
    else:
        assert values == {"confidence": None, "aspects": None, "would buy again": None, **fields} and reason is None


@pytest.mark.parametrize(("schema", "message"), [
    ({"properties": {"who": {"type": "object"}}}, "cannot be a column"),
    ({"properties": {"a": {"type": "string"}}, "required": ["b"]}, "not in properties"),
    ({"properties": {"a": {"description": "no type"}}}, "needs a type or an enum"),
    ({"properties": {"a": {"type": ["string", "integer"]}}}, "one type"),
    ({"type": "object"}, "needs properties"),
])
def test_schemas_that_cannot_be_columns_are_refused(schema: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LabelConfig.model_validate({"schema": schema})


def structured_job(out: Path, **label: Any) -> Job:
    job = Job.load(ROOT / "jobs/label-structured.toml")
    return job.with_overrides(label={**(job.label_table or {}), **label}, output=OutputConfig(path=out))


def test_a_field_named_like_an_output_column_is_refused(tmp_path: Path) -> None:
    schema = {"properties": {"status": {"type": "string"}}}
    with pytest.raises(ConfigError, match="'status' would overwrite"):
        prepare(structured_job(tmp_path / "o.parquet", schema=schema))


async def test_schema_columns_and_the_re_ask_of_answers_that_fail_validation(tmp_path: Path) -> None:
    out = tmp_path / "structured.parquet"
    job = structured_job(out, votes=1, escalate=None, schema=SCHEMA)
    job = job.with_overrides(label={k: v for k, v in (job.label_table or {}).items() if v is not None})
    with Sandbox(SandboxConfig(label_truth=GOLD)).running() as sb:
        await run(job, "momo-sandbox-enterprise", sb.momo_url, limit=60)
        sent = {r["prompt_sha"] for r in calls(sb.records())}
    got = pl.read_parquet(out)
    assert got.schema["sentiment"] == pl.String and got.schema["stars"] == pl.Int64
    assert got.schema["confidence"] == pl.Float64 and got.schema["aspects"] == pl.List(pl.String)
    assert got.schema["would buy again"] == pl.Boolean
    assert set(got["status"]) == {"ok"} and set(got["sentiment"]) <= {"positive", "negative", "neutral"}
    assert got["stars"].is_between(1, 5).all() and got["stars"].null_count() == 0
    assert [json.loads(text) for text in got["label"]] == got.select(
        "aspects", "confidence", "sentiment", "stars", "would buy again").to_dicts()  # label: the object as JSON

    def fits(answer: str) -> bool:  # the schema, checked here by hand rather than by pydantic
        obj = json.loads(answer)
        return (obj.get("sentiment") in ("positive", "negative", "neutral") and type(obj.get("stars")) is int
                and type(obj.get("confidence", 0.5)) in (int, float))

    reasked = got.filter(pl.col("label_calls") > 1)
    assert reasked.height >= 3  # about one answer in six breaks the schema
    for row in reasked.iter_rows(named=True):
        first, last = row["raw_response"][0], row["raw_response"][-1]
        assert not fits(first) and fits(last) and json.loads(last)["sentiment"] == row["sentiment"]
        # the re-ask is the prompt, a STRICT line and the reason pydantic gave
        prompt = f"Product: {row['product']}\nReview: {row['text']}\n\n{schema_instruction(SCHEMA)}"
        why = StructuredSchema.of(SCHEMA).validate(first)[1]
        assert why and sha(schema_reprompt(prompt, why)) in sent
    assert got.filter(pl.col("label_calls") == 1)["raw_response"].map_elements(
        lambda raw: fits(raw[0]), return_dtype=pl.Boolean).all()
    assert evaluate(out, "gold", pred="sentiment").accuracy > 0.6


async def test_structured_votes_and_escalation_fill_the_same_columns(tmp_path: Path) -> None:
    out = tmp_path / "structured.parquet"
    with Sandbox(SandboxConfig(label_truth=GOLD)).running() as sb:
        await run(structured_job(out), "momo-sandbox-enterprise", sb.momo_url, limit=40)
    got = pl.read_parquet(out)
    escalated = got.filter(pl.col("label_source") == "escalation")
    assert escalated.height > 0 and (escalated["escalation_cost"] > 0).all()
    for row in escalated.iter_rows(named=True):  # the strong agent's object decides every field
        decided = json.loads(row["raw_response"][-1])
        assert (row["sentiment"], row["stars"]) == (decided["sentiment"], decided["stars"])
    kept = got.filter(pl.col("label_source") == "votes")
    assert (kept["label_agreement"] == 1.0).all() and kept["sentiment"].null_count() == 0
