"""The labelling row task: ask, parse, re-ask strictly, vote, escalate; built on the ordinary runner.

Every call goes through a :class:`~pipeline.runner.Caller` (limiter, budget, retries), so re-asks,
votes and escalations are rate-limited, capped and costed like any call, and the row's token and
cost columns add up all of them.

A row whose votes never parse is recorded with status ``unparsed``: finished (a resume does not
pay for it again), label null, every raw answer kept in ``raw_response``.

**Escalation** (``[label] escalate``): a row whose agreement is under ``below``, or that no vote
labelled, is asked of the stronger target through a second caller that ``run_job`` binds
(:meth:`LabelTask.bind`: the same limiter, budget, ledger and stats, the target's own request
keys). Its answer decides. ``label_source`` says what decided: ``votes``, ``escalation``, or
``escalation_unparsed`` (escalated, but the stronger target never gave a usable answer: the
votes' label stands, if there is one). ``escalation_tokens`` / ``escalation_cost`` are that
target's share of the row's totals.

**Structured labels** (``[label] schema``): each answer must be a JSON object that validates
against the schema's pydantic model (:mod:`.schema`); one that does not is re-asked like an
unparsed label, with the reason. Votes compare whole objects; the winner's fields become typed
columns of their own, and ``label`` holds the object as JSON text.
"""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

import polars as pl

from ..errors import ConfigError
from ..result import RESULT_SCHEMA, REUSE_SCHEMA, TOKEN_SPLIT_SCHEMA
from .parse import LabelSpec, parse_label, strict_reprompt
from .schema import schema_reprompt
from .spec import LabelConfig
from .vote import Vote, majority

if TYPE_CHECKING:
    from ..config import Job
    from ..providers.base import Provider
    from ..result import RowResult
    from ..runner import Caller, RowCalls

VOTE_TEMPERATURE = 0.7  # self-consistency needs sampling; used when votes > 1 and none is set

LABEL_SCHEMA: dict[str, pl.DataType] = {
    "label": pl.String(),
    "label_agreement": pl.Float64(),
    "label_votes": pl.List(pl.String()),
    "raw_response": pl.List(pl.String()),
    "label_calls": pl.Int32(),
    "label_source": pl.String(),  # votes | escalation | escalation_unparsed
}
ESCALATION_SCHEMA: dict[str, pl.DataType] = {
    "escalation_tokens": pl.Int64(),
    "escalation_cost": pl.Float64(),
}


def label_config(job: Job) -> LabelConfig:
    """A label job's ``[label]`` table, validated when the job loaded."""
    if job.label is None:
        raise ConfigError("not a label job: the job file has no [label] table")
    return job.label


def label_columns(cfg: LabelConfig) -> dict[str, pl.DataType]:
    """The output columns a label job adds: the label's, the escalation's, one per schema field."""
    columns = dict(LABEL_SCHEMA)
    if cfg.escalate is not None:
        columns.update(ESCALATION_SCHEMA)
    structured = cfg.structured
    if structured is not None:
        taken = set(RESULT_SCHEMA) | set(TOKEN_SPLIT_SCHEMA) | set(REUSE_SCHEMA) | set(columns)
        clash = sorted(set(structured.columns) & taken)
        if clash:
            raise ConfigError(f"[label] schema: field(s) {', '.join(map(repr, clash))} would overwrite output "
                              "columns of the same name; rename them")
        columns.update(structured.columns)
    return columns


def label_template(job: Job) -> str:
    """The prompt template of a label job: the text to label, then the instruction."""
    cfg = label_config(job)
    if cfg.instruction is not None:
        return cfg.prompt_template()
    text = job.prompt.template or "{" + str(job.prompt.column) + "}"
    escaped = cfg.default_instruction().replace("{", "{{").replace("}", "}}")
    return f"{text}\n\n{escaped}"


class LabelTask:
    """One row: votes (each parsed, re-asked when unusable), majority, and escalation if needed."""

    def __init__(self, cfg: LabelConfig, temperature: float | None) -> None:
        self.cfg = cfg
        self.spec: LabelSpec = cfg.to_spec()
        self.structured = cfg.structured
        self.temperature = temperature
        if cfg.votes > 1 and not temperature:
            self.temperature = VOTE_TEMPERATURE
        self.extra_schema = label_columns(cfg)
        self.escalate_call: Caller | None = None  # set by :meth:`bind`

    @classmethod
    def from_job(cls, job: Job) -> LabelTask:
        return cls(label_config(job), job.provider.temperature)

    async def bind(self, job: Job, provider: Provider, caller: Caller, *, capped: bool,
                   escalation_provider: Provider | None = None) -> LabelTask:
        """This task for one run: with escalation, a copy that holds the stronger target's caller."""
        if self.cfg.escalate is None:
            return self
        from .escalate import escalation_caller

        bound = copy.copy(self)
        bound.escalate_call = await escalation_caller(self.cfg.escalate, job, provider, caller, capped=capped,
                                                      override=escalation_provider)
        return bound

    def parse(self, response: str) -> tuple[Vote, str]:
        """The answer as a vote (None if unusable), and why it is unusable (for the re-ask)."""
        if self.structured is not None:
            values, why = self.structured.validate(response)
            if values is None:
                return None, why or "invalid"
            return (json.dumps(values, sort_keys=True, ensure_ascii=False),), ""
        return parse_label(response, self.spec), ""

    def reprompt(self, prompt: str, why: str) -> str:
        if self.structured is not None:
            return schema_reprompt(prompt, why)
        return strict_reprompt(prompt, self.spec)

    async def _ask(self, prompt: str, call: Caller, acc: RowCalls, raw: list[str], vote: int,
                   temperature: float | None) -> Vote:
        # each call has its slot (vote k, re-ask j) in its request key: a resumed row finds the
        # votes it already paid for, and k votes at one temperature stay k different requests
        res = await call(prompt, acc, temperature=temperature, vote=vote)
        raw.append(res.content)
        parsed, why = self.parse(res.content)
        for reask in range(1, self.cfg.max_reasks + 1):
            if parsed is not None:
                break
            res = await call(self.reprompt(prompt, why), acc, temperature=temperature, vote=vote, reask=reask)
            raw.append(res.content)
            parsed, why = self.parse(res.content)
        return parsed

    async def run(self, prompt: str, call: Caller, acc: RowCalls, row: int) -> RowResult:
        raw: list[str] = []
        votes = [await self._ask(prompt, call, acc, raw, k, self.temperature) for k in range(self.cfg.votes)]
        decided = majority(votes, self.spec)
        extra: dict[str, Any] = {
            "label": decided.label,
            "label_agreement": round(decided.agreement, 6),
            "label_votes": decided.label_votes,
            "raw_response": raw,
            "label_source": "votes",
        }
        esc = self.cfg.escalate
        if esc is not None:
            extra.update(escalation_tokens=0, escalation_cost=0.0)
            if esc.needed(decided.label, decided.agreement):
                await self._escalate(prompt, acc, raw, extra)
        extra["label_calls"] = acc.calls
        if self.structured is not None:
            fields = json.loads(extra["label"]) if extra["label"] is not None else {}
            extra.update({name: fields.get(name) for name in self.structured.columns})
        status = "ok" if extra["label"] is not None else "unparsed"
        return acc.result(row, status=status, response=raw[-1] if raw else None, extra=extra)

    async def _escalate(self, prompt: str, acc: RowCalls, raw: list[str], extra: dict[str, Any]) -> None:
        if self.escalate_call is None:
            raise RuntimeError("LabelTask.bind() was not called: no caller for the escalation target")
        tokens, cost = acc.tokens_used, acc.cost
        answer = await self._ask(prompt, self.escalate_call, acc, raw, 0, None)
        extra["escalation_tokens"] = _minus(acc.tokens_used, tokens)
        extra["escalation_cost"] = _minus(acc.cost, cost)
        if answer is None:
            extra["label_source"] = "escalation_unparsed"
            return
        extra["label"] = "|".join(answer)
        extra["label_source"] = "escalation"

    @staticmethod
    def summarise(output: pl.LazyFrame) -> dict[str, Any]:
        """Label distribution, unparsed rate, escalations, cost per labelled row, over the output's rows."""
        rows = output.select("status", "label", "cost", "label_source").collect(engine="streaming")
        labelled = rows.filter(pl.col("status").is_in(["ok", "unparsed"]))
        dist = labelled.group_by("label").len().sort("len", descending=True)
        n = len(labelled)
        ok = int((labelled["status"] == "ok").sum()) if n else 0
        escalated = int(labelled["label_source"].is_in(["escalation", "escalation_unparsed"]).sum()) if n else 0
        cost = float(rows["cost"].sum() or 0.0)
        return {
            "label_distribution": {str(k) if k is not None else "unparsed": v for k, v in dist.iter_rows()},
            "unparsed_rate": round((n - ok) / n, 4) if n else 0.0,
            "escalated": escalated,
            "escalation_rate": round(escalated / n, 4) if n else 0.0,
            "cost_per_labelled_row": round(cost / ok, 6) if ok else None,
        }


def _minus(after: Any, before: Any) -> Any:
    return None if after is None or before is None else after - before
