"""The labelling row task: ask, parse, re-ask strictly, vote; built on the ordinary runner.

Every call goes through the same :class:`~pipeline.runner.Caller` (limiter, budget, retries),
so re-asks and votes are rate-limited, capped and costed like any call, and the row's token
and cost columns add up all of them.

A row whose votes never parse is recorded with status ``unparsed``: finished (a resume does
not pay for it again), label null, every raw answer kept in ``raw_response``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import polars as pl

from ..errors import ConfigError
from .parse import LabelSpec, label_instruction, parse_label, parse_structured, strict_reprompt
from .spec import LabelConfig
from .vote import majority

if TYPE_CHECKING:
    from ..config import Job
    from ..result import RowResult
    from ..runner import Caller, RowCalls

VOTE_TEMPERATURE = 0.7  # self-consistency needs sampling; used when votes > 1 and none is set

LABEL_SCHEMA: dict[str, pl.DataType] = {
    "label": pl.String(),
    "label_agreement": pl.Float64(),
    "label_votes": pl.List(pl.String()),
    "raw_response": pl.List(pl.String()),
    "label_calls": pl.Int32(),
}


def label_config(job: Job) -> LabelConfig:
    try:
        return LabelConfig.model_validate(job.label or {})
    except ValueError as exc:
        raise ConfigError(f"[label]: {exc}") from None


def label_template(job: Job) -> str:
    """The prompt template of a label job: the text to label, then the instruction."""
    cfg = label_config(job)
    if cfg.instruction is not None:
        return cfg.prompt_template()
    text = job.prompt.template or "{" + str(job.prompt.column) + "}"
    escaped = label_instruction(cfg.to_spec()).replace("{", "{{").replace("}", "}}")
    return f"{text}\n\n{escaped}"


class LabelTask:
    extra_schema = LABEL_SCHEMA

    def __init__(self, cfg: LabelConfig, temperature: float | None) -> None:
        self.cfg = cfg
        self.spec: LabelSpec = cfg.to_spec()
        self.temperature = temperature
        if cfg.votes > 1 and not temperature:
            self.temperature = VOTE_TEMPERATURE

    @classmethod
    def from_job(cls, job: Job) -> LabelTask:
        return cls(label_config(job), job.provider.temperature)

    def parse(self, response: str) -> tuple[str, ...] | None:
        if self.cfg.schema_ is not None:
            obj = parse_structured(response, self.cfg.schema_)
            return None if obj is None else (json.dumps(obj, sort_keys=True, ensure_ascii=False),)
        return parse_label(response, self.spec)

    async def _vote(self, prompt: str, call: Caller, acc: RowCalls, raw: list[str],
                    vote: int) -> tuple[str, ...] | None:
        # each call has its slot (vote k, re-ask j) in its request key: a resumed row finds the
        # votes it already paid for, and k votes at one temperature stay k different requests
        res = await call(prompt, acc, temperature=self.temperature, vote=vote)
        raw.append(res.content)
        parsed = self.parse(res.content)
        for reask in range(1, self.cfg.max_reasks + 1):
            if parsed is not None:
                break
            res = await call(strict_reprompt(prompt, self.spec), acc, temperature=self.temperature,
                             vote=vote, reask=reask)
            raw.append(res.content)
            parsed = self.parse(res.content)
        return parsed

    async def run(self, prompt: str, call: Caller, acc: RowCalls, row: int) -> RowResult:
        raw: list[str] = []
        votes = [await self._vote(prompt, call, acc, raw, k) for k in range(self.cfg.votes)]
        decided = majority(votes, self.spec)
        extra: dict[str, Any] = {
            "label": decided.label,
            "label_agreement": round(decided.agreement, 6),
            "label_votes": decided.label_votes,
            "raw_response": raw,
            "label_calls": acc.calls,
        }
        status = "ok" if decided.label is not None else "unparsed"
        return acc.result(row, status=status, response=raw[-1] if raw else None, extra=extra)

    @staticmethod
    def summarise(output: pl.LazyFrame) -> dict[str, Any]:
        """Label distribution, unparsed rate, cost per labelled row, over the output's rows."""
        rows = output.select("status", "label", "cost").collect(engine="streaming")
        labelled = rows.filter(pl.col("status").is_in(["ok", "unparsed"]))
        dist = labelled.group_by("label").len().sort("len", descending=True)
        n = len(labelled)
        ok = int((labelled["status"] == "ok").sum()) if n else 0
        cost = float(rows["cost"].sum() or 0.0)
        return {
            "label_distribution": {str(k) if k is not None else "unparsed": v for k, v in dist.iter_rows()},
            "unparsed_rate": round((n - ok) / n, 4) if n else 0.0,
            "cost_per_labelled_row": round(cost / ok, 6) if ok else None,
        }
