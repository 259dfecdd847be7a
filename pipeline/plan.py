"""What a job asks for: its rows, their prompts, their content keys, and the task that runs them.

``prepare`` checks the input against the job (columns, collisions) and reads it once, whole,
before any paid call: a file that fails to parse halfway fails here, not after calls were paid.
That pass renders every prompt and keys it (:mod:`pipeline.keys`); the keys, one short string
per row (about 50 bytes), are what every later step joins on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl

from .config import Job
from .dataset import PROMPT, ROW, Dataset, PromptTemplate
from .errors import ConfigError
from .keys import FIRST, KEY, OCC, Keyer, canonical, repeat_key
from .result import RESULT_SCHEMA, REUSE_SCHEMA, TOKEN_SPLIT_SCHEMA
from .runner import PromptTask, RowTask

PLAN_ROWS = 65_536


def prompt_expr(job: Job) -> tuple[pl.Expr, list[str]]:
    """The polars expression rendering each row's prompt, and the columns it reads."""
    if job.label:
        from .labels.task import label_template

        template = PromptTemplate(label_template(job))
        return template.expr(), template.columns
    if job.prompt.column:
        return pl.col(job.prompt.column).cast(pl.String).alias(PROMPT), [job.prompt.column]
    template = PromptTemplate(job.prompt.template or "")
    return template.expr(), template.columns


def make_task(job: Job) -> RowTask:
    if job.label:
        from .labels.task import LabelTask  # only label jobs need it

        return LabelTask.from_job(job)
    return PromptTask()


def output_columns(job: Job, task: RowTask) -> list[str]:
    """The result columns a job adds to its input's, in output order."""
    split = TOKEN_SPLIT_SCHEMA if job.provider.kind == "openai" else {}
    return list(RESULT_SCHEMA) + list(split) + list(task.extra_schema) + list(REUSE_SCHEMA)


def make_keyer(job: Job, endpoint: str, target: str | None = None) -> Keyer:
    p = job.provider
    return Keyer(service=p.kind, endpoint=endpoint.rstrip("/"), target=target or p.target,
                 temperature=p.temperature, max_tokens=p.max_tokens,
                 task=canonical(job.label_table) if job.label_table else "")


@dataclass
class Plan:
    """Everything checked and keyed before the first paid call."""

    job: Job
    dataset: Dataset
    prompt: pl.Expr
    columns: list[str]
    task: RowTask
    result_columns: list[str]
    keyer: Keyer
    keys: pl.DataFrame  # one row per input row, in input order: KEY, FIRST, OCC

    @property
    def n_rows(self) -> int:
        return self.keys.height

    @property
    def sendable(self) -> int:
        """Rows with a prompt to send."""
        return self.n_rows - self.keys[KEY].null_count()

    @property
    def distinct(self) -> int:
        """Distinct requests among them: what the job pays for at most once each."""
        return int(self.keys[KEY].drop_nulls().n_unique())

    def batches(self, batch_rows: int) -> Iterator[pl.DataFrame]:
        """Input batches ``[ROW, *columns, PROMPT, KEY, FIRST, OCC]`` in input order."""
        offset = 0
        for batch in self.dataset.batches(self.columns, self.prompt, batch_rows=batch_rows):
            yield batch.hstack(self.keys.slice(offset, batch.height))
            offset += batch.height


def prepare(job: Job, *, endpoint: str = "", limit: int | None = None) -> Plan:
    """Validate the input against the job and key every row. No request to any API."""
    dataset = Dataset(job.input.path, job.input.id_column, limit=limit)
    expr, columns = prompt_expr(job)
    needed = columns + ([job.input.id_column] if job.input.id_column else [])
    schema = dataset.check_columns(needed)
    task = make_task(job)
    result_columns = output_columns(job, task)
    check_collisions(schema.names(), result_columns, job.input.path)
    keyer = make_keyer(job, endpoint)
    keys = _key_rows(dataset, columns, expr, keyer, dedup=job.reuse.dedup)
    return Plan(job, dataset, expr, columns, task, result_columns, keyer, keys)


def _key_rows(dataset: Dataset, columns: list[str], expr: pl.Expr, keyer: Keyer, *,
              dedup: bool) -> pl.DataFrame:
    parts = []
    # every column is parsed (check_all): a ragged CSV line anywhere fails here, before any paid call
    for batch in dataset.batches(columns, expr, batch_rows=PLAN_ROWS, check_all=True):
        keys = [keyer.row(p) if p is not None and p.strip() else None for p in batch[PROMPT].to_list()]
        parts.append(pl.Series(KEY, keys, pl.String))
    column = pl.concat(parts) if parts else pl.Series(KEY, [], pl.String)
    if dedup:  # (``is_first_distinct`` holds ~1 MB per 1 M rows; a window ``over`` the keys ~70 MB)
        first = column.is_first_distinct() | column.is_null()
        return pl.DataFrame({KEY: column, FIRST: first, OCC: pl.zeros(len(column), pl.UInt32, eager=True)})
    # dedup off: the n-th repeat of a prompt is a request of its own, and no row is a duplicate
    keyed = pl.DataFrame([column]).with_row_index("__i").filter(pl.col(KEY).is_not_null()).with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt32).over(KEY).alias(OCC))
    occ = pl.zeros(len(column), pl.UInt32, eager=True).scatter(keyed["__i"], keyed[OCC])
    repeats = [k if n == 0 or k is None else repeat_key(k, n) for k, n in zip(column, occ, strict=True)]
    return pl.DataFrame({KEY: pl.Series(repeats, dtype=pl.String), FIRST: True, OCC: occ})


def check_collisions(dataset_columns: list[str], result_columns: list[str], path: object) -> None:
    clash = sorted(set(dataset_columns) & set(result_columns))
    if clash:
        raise ConfigError(
            f"{path}: input column(s) {', '.join(map(repr, clash))} would be overwritten by "
            "result columns of the same name; rename them in the input"
        )


__all__ = ["FIRST", "KEY", "OCC", "ROW", "Plan", "make_task", "output_columns", "prepare", "prompt_expr"]
