"""What a job asks for: its rows, their prompts, their content keys, and the task that runs them.

``prepare`` checks the input against the job (columns, collisions) and reads it once, whole,
before any paid call: a file that fails to parse halfway fails here, not after calls were paid.
That pass renders every prompt and keys it (:mod:`pipeline.keys`, each distinct prompt of a batch
hashed once); the keys are what every later step joins on. They go to disk as they are made
(:mod:`pipeline.spill`), so a plan holds a bit a row in memory, not the keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import polars as pl

from .config import Job
from .dataset import PROMPT, ROW, Dataset, PromptTemplate
from .errors import ConfigError
from .keys import FIRST, KEY, OCC, Keyer, canonical
from .result import RESULT_SCHEMA, REUSE_SCHEMA, TOKEN_SPLIT_SCHEMA
from .runner import PromptTask, RowTask
from .spill import InputChanged, KeySpill

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
    """Everything checked and keyed before the first paid call. ``close()`` (or ``with``) removes
    its temporary files; they are also removed when it is garbage-collected."""

    job: Job
    dataset: Dataset
    prompt: pl.Expr
    columns: list[str]
    task: RowTask
    result_columns: list[str]
    keyer: Keyer
    spill: KeySpill  # every row's KEY, FIRST, OCC, in input order

    @property
    def n_rows(self) -> int:
        return self.spill.rows

    @property
    def sendable(self) -> int:
        """Rows with a prompt to send."""
        return self.spill.sendable

    @property
    def distinct(self) -> int:
        """Distinct requests among them: what the job pays for at most once each."""
        return self.spill.distinct

    def batches(self, batch_rows: int) -> Iterator[pl.DataFrame]:
        """Input batches ``[ROW, *columns, PROMPT, KEY, FIRST, OCC]`` in input order."""
        return self.keyed(self.dataset.batches(self.columns, self.prompt, batch_rows=batch_rows))

    def keyed(self, batches: Iterable[pl.DataFrame]) -> Iterator[pl.DataFrame]:
        """``batches`` (the input's rows, in order, from its first) with each row's KEY, FIRST and OCC."""
        aligned = self.spill.aligned()
        try:
            for batch in batches:
                yield batch.hstack(aligned.take(batch.height))
        except InputChanged as exc:
            raise ConfigError(f"{self.dataset.path}: {exc}; run the job again") from None

    def read_keys(self) -> pl.DataFrame:
        """``KEY``, ``FIRST``, ``OCC`` of every row at once: for small inputs (tests, notebooks)."""
        return self.spill.read()

    def close(self) -> None:
        self.spill.close()

    def __enter__(self) -> Plan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    spill = _key_rows(dataset, columns, expr, keyer, dedup=job.reuse.dedup)
    return Plan(job, dataset, expr, columns, task, result_columns, keyer, spill)


def key_column(keyer: Keyer, prompts: pl.Series) -> pl.Series:
    """Each prompt's row key, null for a null or blank prompt; each distinct prompt hashed once."""
    distinct = prompts.drop_nulls().unique()
    keys = [keyer.row(p) if p.strip() else None for p in distinct.to_list()]
    return prompts.replace_strict(distinct, pl.Series(keys, dtype=pl.String), default=None,
                                  return_dtype=pl.String).alias(KEY)


def _key_rows(dataset: Dataset, columns: list[str], expr: pl.Expr, keyer: Keyer, *,
              dedup: bool) -> KeySpill:
    spill = KeySpill(dataset.size_hint(), dedup=dedup)  # sizes its buckets
    try:
        # a CSV's every column is parsed: a ragged line anywhere fails here, before any paid call
        for batch in dataset.batches(columns, expr, batch_rows=PLAN_ROWS):
            spill.write(key_column(keyer, batch[PROMPT]))
        spill.seal()
    except BaseException:
        spill.close()
        raise
    return spill


def check_collisions(dataset_columns: list[str], result_columns: list[str], path: object) -> None:
    clash = sorted(set(dataset_columns) & set(result_columns))
    if clash:
        raise ConfigError(
            f"{path}: input column(s) {', '.join(map(repr, clash))} would be overwritten by "
            "result columns of the same name; rename them in the input"
        )


__all__ = ["FIRST", "KEY", "OCC", "ROW", "Plan", "key_column", "make_task", "output_columns", "prepare", "prompt_expr"]
