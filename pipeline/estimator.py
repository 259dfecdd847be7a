"""What a job will cost and how long it will take, before it runs.

Prompt tokens are counted exactly and offline (:mod:`pipeline.tokens`). Completion length is
what a pilot learns: ``--pilot N`` runs N sampled rows for real, recorded in the ledger like any
run (so the run reuses them and never pays twice), and fits the list-price cost of a row against its local
prompt token count (``cost ≈ a + b·tokens``). That one fit absorbs the completion length, the
server's own token counting (system prompts, a different tokenizer), votes and re-asks. The
interval is a 95 % normal interval on the sum over the remaining rows.

Token figures are split honestly: *prompt tokens* are one exact local count per request; *prompt
tokens sent* multiply that by the calls a row makes (votes, re-asks, escalation); *completion
tokens* cover every call's answer: the relay's ``completion_tokens``, or, for MOMO (which reports
one total per call), the server's count beyond the prompts sent, i.e. answers plus whatever the
service adds per call (a hidden system prompt).

A label job that escalates (``[label] escalate``) is priced in two parts: its votes by the fit
above, and its escalations from the pilot's agreement distribution (the share of pilot rows whose
votes agreed less than ``below``, or never parsed) times the pilot's cost per escalated row at the
stronger target's list price. Without a pilot, half the rows are assumed to escalate, and the
interval spans none to all.

The worst case assumes every call returns ``max_tokens``, every answer is re-asked, every row
escalates, and the server counts a prompt as at most ``PROMPT_MARGIN × local + PROMPT_OVERHEAD``
tokens; it is what the budget reserves.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from .config import Job
from .dataset import PROMPT, ROW
from .labels.spec import EscalateConfig
from .ledger import FINAL, Ledger
from .output_path import check_output
from .plan import FIRST, KEY, Plan, prepare
from .pricing import PROMPT_MARGIN, PROMPT_OVERHEAD
from .pricing import worst_cost_fn as worst_cost_fn  # where run_job has always found it
from .providers.base import Account, Price, Provider
from .sink import decode_outcomes, record_schema
from .tokens import DEFAULT_ENCODING, TOKENIZER_NAME, count_one, count_tokens

DEFAULT_COMPLETION = 256  # completion length assumed without max_tokens or a pilot


@dataclass
class PromptTotals:
    """Local, exact token counts of the prompts still to send."""

    rows: int = 0
    sendable: int = 0  # not null/empty
    skipped: int = 0
    duplicates: int = 0  # rows asking what an earlier row asks: sent once (dedup)
    finished: int = 0  # distinct requests already answered in the ledger (not counted below)
    remaining: int = 0  # distinct requests still to send
    prompt_tokens: int = 0  # over the remaining rows
    sample_tokens: dict[int, int] = field(default_factory=dict)  # pilot rows → local count


@dataclass
class EscalationEstimate:
    """What the escalations of a label job are expected to cost (see the module docstring)."""

    target: str
    below: float
    price: dict[str, float]  # the stronger target's list price per million
    pilot_agreement: dict[str, int]  # pilot rows by agreement share ("0.667": 7), none without a pilot
    share: float  # of the remaining rows, expected to escalate
    basis: str  # "pilot (N rows)" or "assumed"
    expected_rows: int
    cost_per_row: float  # list price of one escalated row (its calls to the stronger target)
    expected_cost: float  # list price, over the remaining rows


@dataclass
class Estimate:
    rows: int
    distinct_requests: int  # among the rows with a prompt (dedup sends each once)
    remaining_rows: int  # distinct requests still to send
    skipped_rows: int
    calls_per_row: int  # the usual: one, or a label job's votes
    prompt_tokens: int  # one exact local count per remaining request
    completion_tokens: int  # expected, all calls of the remaining rows (see the module docstring)
    tokenizer: str
    currency: str
    price: dict[str, float]
    spent_so_far: float  # recorded cost (a pilot, earlier runs)
    expected_cost: float  # money for the whole job: spent + expected remaining, after packages
    interval: tuple[float, float]
    worst_case: float
    list_price: float  # expected remaining at list price, before packages
    package_tokens: int
    completion_basis: str  # "pilot (N rows)" or "assumed"
    pilot_rows: int = 0
    token_ratio: float | None = None  # server tokens / local tokens, learned by the pilot
    minutes: float | None = None  # at the tier's rate (None: enterprise, bounded by concurrency)
    rate: str = ""  # the rate ``minutes`` assumes and where it comes from (LimitsConfig.describe_rate)
    balance: float | None = None
    fits_balance: bool | None = None
    max_cost: float | None = None
    fits_cap: bool | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # also in notes; ``run`` prints them as warnings
    expected_calls_per_row: float = 0.0  # with re-asks and escalation (a pilot's mean, else the usual)
    token_split: bool = False  # the service reports prompt and completion tokens apart (relays); MOMO one total
    prompt_tokens_sent: int = 0  # expected, all calls: prompt_tokens × the calls each row makes
    escalation: EscalationEstimate | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def calls_per_row(job: Job) -> tuple[int, int]:
    """(usual, most) calls one row makes to the job's own target: votes, and re-asks of unparsed answers."""
    if job.label is None:
        return 1, 1
    votes, reasks = job.label.votes, job.label.max_reasks
    return votes, votes * (1 + reasks)


def escalation_of(job: Job) -> tuple[EscalateConfig, int] | None:
    """A label job's escalation settings and the most calls an escalated row makes to that target."""
    cfg = job.label
    if cfg is None or cfg.escalate is None:
        return None
    return cfg.escalate, 1 + cfg.max_reasks


def count_prompts(prep: Plan, ledger: Ledger | None, sample: set[int]) -> PromptTotals:
    """Exact local token counts of the distinct requests that the ledger has no final answer for."""
    totals = PromptTotals(rows=prep.n_rows)
    for batch in prep.batches(65_536):
        keyed = batch.filter(pl.col(KEY).is_not_null())
        totals.skipped += batch.height - keyed.height
        totals.sendable += keyed.height
        for row in set(keyed[ROW].to_list()) & sample:
            totals.sample_tokens[row] = 0
        distinct = keyed.filter(pl.col(FIRST))
        totals.duplicates += keyed.height - distinct.height
        states = ledger.states(distinct[KEY].to_list()) if ledger is not None else {}
        counts = count_tokens(distinct[PROMPT].to_list(), DEFAULT_ENCODING)
        for row, key, n in zip(distinct[ROW].to_list(), distinct[KEY].to_list(), counts, strict=True):
            if row in totals.sample_tokens:
                totals.sample_tokens[row] = n
            if states.get(key, (None,))[0] == FINAL:
                totals.finished += 1
                continue
            totals.remaining += 1
            totals.prompt_tokens += n
    return totals


def pick_sample(prep: Plan, n: int, seed: int = 0) -> dict[int, str]:
    """``n`` rows with distinct prompts, spread over the file, the same every time for the same
    input: the rows and their keys. Drawn by position among the distinct rows (a ``range``, so
    memory is ``n`` rows, not the input), then found in one pass over the plan."""
    if n <= 0 or not prep.distinct:
        return {}
    wanted = pl.Series(sorted(random.Random(seed).sample(range(prep.distinct), min(n, prep.distinct))),
                       dtype=pl.UInt64)
    picked: dict[int, str] = {}
    seen = 0
    for batch in prep.batches(65_536):
        firsts = batch.filter(pl.col(KEY).is_not_null() & pl.col(FIRST))
        mine = wanted.filter((wanted >= seen) & (wanted < seen + firsts.height)) - seen
        picked.update(firsts.select(ROW, KEY)[mine].iter_rows())
        seen += firsts.height
    return picked


@dataclass
class Fit:
    """Least squares ``y = a + b·x`` with its residual spread."""

    a: float
    b: float
    sigma: float
    n: int

    @classmethod
    def of(cls, xs: list[float], ys: list[float]) -> Fit:
        n = len(xs)
        mx, my = sum(xs) / n, sum(ys) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
        b = max(b, 0.0)  # cost never falls with a longer prompt
        a = my - b * mx
        dof = max(n - 2, 1)
        sigma = math.sqrt(sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True)) / dof)
        return cls(a, b, sigma, n)


@dataclass(frozen=True)
class Pilot:
    """What the pilot rows taught: cost per row against prompt length, token counts, escalations."""

    fit: Fit  # list cost of a row's calls to the job's own target
    token_ratio: float | None  # server tokens / local count of prompts and answers (per call)
    completion_per_row: float  # relay: completion_tokens; MOMO: server tokens beyond the prompts sent
    prompt_sent_ratio: float  # prompt tokens sent / one local count of the prompt (≈ calls per row)
    calls_per_row: float
    agreement: dict[str, int]  # pilot rows by agreement share (label jobs)
    escalated: int = 0  # pilot rows whose votes agreed less than ``below`` (or never parsed)
    escalation_cost: float = 0.0  # list cost of the escalated rows' calls to the stronger target


def pilot_fit(ledger: Ledger, prep: Plan, price: Price, sample_tokens: dict[int, int], sample: dict[int, str],
              escalation: tuple[EscalateConfig, Price] | None = None) -> Pilot | None:
    """Fit list-price cost per row on local prompt tokens, from the pilot rows' recorded outcomes
    (``sample``: the pilot's rows and their keys)."""
    if not sample_tokens:
        return None
    by_key = {sample[row]: tokens for row, tokens in sample_tokens.items()}
    found = decode_outcomes(ledger.outcomes(list(by_key)), record_schema(prep.task.extra_schema))
    done = found.filter(pl.col("status").is_in(["ok", "unparsed"])).with_columns(
        pl.col(KEY).replace_strict(by_key, return_dtype=pl.Int64).alias("__tokens"))
    xs, ys, server, local, beyond, sent, calls = [], [], 0, 0, 0, 0, 0
    agreement: dict[str, int] = {}
    escalated, esc_cost = 0, 0.0
    pp, cp = price.prompt_per_million / 1e6, price.completion_per_million / 1e6
    for rec in done.iter_rows(named=True):
        if rec["tokens_used"] is None:
            continue
        p, n_calls = rec["__tokens"], rec.get("label_calls") or 1
        esc_tokens, esc_paid = rec.get("escalation_tokens") or 0, rec.get("escalation_cost") or 0.0
        if rec["prompt_tokens"] is not None and rec["completion_tokens"] is not None:
            list_cost, esc_list = rec["prompt_tokens"] * pp + rec["completion_tokens"] * cp, 0.0
            if esc_tokens:  # a relay's cost is its price table's: the escalation's share is exact
                if rec["cost"] is None:
                    continue
                list_cost, esc_list = rec["cost"] - esc_paid, esc_paid
            beyond += rec["completion_tokens"]
            sent += rec["prompt_tokens"]
        else:  # MOMO reports one total per call, priced the same for prompt and completion
            list_cost = (rec["tokens_used"] - esc_tokens) * pp
            esc_list = esc_tokens * escalation[1].prompt_per_million / 1e6 if escalation else 0.0
            beyond += max(0, rec["tokens_used"] - n_calls * p)
            sent += n_calls * p
        if "label_agreement" in rec and rec["label_agreement"] is not None:
            share = f"{rec['label_agreement']:.3f}"
            agreement[share] = agreement.get(share, 0) + 1
            # agreement is 0 when no vote parsed, so "under below" covers unparsed rows too
            if escalation is not None and rec["label_agreement"] < escalation[0].below:
                escalated += 1
                esc_cost += esc_list
        xs.append(float(p))
        ys.append(list_cost)
        server += rec["tokens_used"]
        local += n_calls * (p + count_one(rec["response"] or ""))  # each call: its prompt and an answer
        calls += n_calls
    if len(xs) < 2:
        return None
    n = len(xs)
    return Pilot(Fit.of(xs, ys), server / local if local else None, beyond / n, sent / sum(xs) if sum(xs) else 1.0,
                 calls / n, dict(sorted(agreement.items(), reverse=True)), escalated, esc_cost)


async def estimate(job: Job, provider: Provider, *, pilot: int = 0, limit: int | None = None,
                   max_cost: float | None = None, run_pilot: Callable[..., Any] | None = None,
                   restart: bool = False, plan: Plan | None = None, parts: bool = False) -> Estimate:
    """Estimate ``job``; with ``pilot > 0``, ``run_pilot(rows)`` runs those rows for real first.

    ``restart``: estimate as if nothing had run yet (what ``run --restart`` will pay); ``parts``:
    the output is a directory of Parquet parts (a Ray run's).
    """
    prep = plan or prepare(job, endpoint=provider.endpoint, limit=limit)
    check_output(job.output.path, job.input.path, parts=parts)  # before any paid call (a pilot's, the run's)
    price = await provider.price()
    esc = escalation_of(job)
    escalation = None
    if esc is not None:  # the stronger target exists and has a price, before any paid call
        from .labels.escalate import escalation_provider

        escalation = (esc[0], await escalation_provider(provider, esc[0]).price())
    sample = pick_sample(prep, pilot)
    if sample and run_pilot is not None:
        await run_pilot(set(sample))
    ledger = None if restart else Ledger.peek(job.output.path)
    try:
        totals = count_prompts(prep, ledger, set(sample))
        spent = ledger.totals().spent if ledger is not None else 0.0
        fitted = pilot_fit(ledger, prep, price, totals.sample_tokens, sample, escalation) if sample and ledger else None
    finally:
        if ledger is not None:
            ledger.close()
    account = await provider.account()
    est = _assemble(job, price, account, totals, spent, fitted,
                    max_cost if max_cost is not None else job.limits.max_cost, escalation)
    est.warnings = [note for note in (price.note, account.note, _reservations(job, provider, price, account, totals))
                    if note]  # an unlisted model, no balance, reservations over what is left
    est.notes += est.warnings
    return est


def _reservations(job: Job, provider: Provider, price: Price, account: Account, t: PromptTotals) -> str | None:
    """A relay (new-api, one-api) holds (prompt + max_tokens) × its prompt price before each call:
    when the calls in flight hold more than is left, calls are refused before the money is spent."""
    if provider.name != "openai" or account.remaining is None or not t.remaining:
        return None
    per_call = (t.prompt_tokens / t.remaining + (job.provider.max_tokens or 0)) * price.prompt_per_million / 1e6
    in_flight = min(job.limits.concurrency, t.remaining) * per_call
    if in_flight <= account.remaining:
        return None
    return (f"the relay reserves prompt + max_tokens at the prompt price before each call: "
            f"{min(job.limits.concurrency, t.remaining)} calls in flight hold about {in_flight:.4g} {price.currency}, "
            f"more than the {account.remaining:.4g} left; calls will be refused (exit 3) before it is spent")


@dataclass
class _Spend:
    """What the remaining rows are expected to cost at list price, and the tokens and calls behind it."""

    cost: float
    low: float
    high: float
    variance: float  # of ``cost``, from a pilot (0 when assumed: the interval is then low..high)
    calls: float  # per row
    prompt_sent: float
    completion: float
    basis: str


def _votes_spend(job: Job, price: Price, t: PromptTotals, fitted: Pilot | None, worst: float) -> _Spend:
    """The job's own target: the pilot's fit, or half of max_tokens per call when there is no pilot."""
    usual, _ = calls_per_row(job)
    n, pp, cp = t.remaining, price.prompt_per_million / 1e6, price.completion_per_million / 1e6
    if fitted is not None:
        fit = fitted.fit
        cost = fit.a * n + fit.b * t.prompt_tokens
        return _Spend(cost, cost, cost, fit.sigma ** 2 * (n + n * n / fit.n), fitted.calls_per_row,
                      fitted.prompt_sent_ratio * t.prompt_tokens, fitted.completion_per_row * n,
                      f"pilot ({fit.n} rows)")
    completion = (job.provider.max_tokens / 2) if job.provider.max_tokens else DEFAULT_COMPLETION
    cost = usual * (t.prompt_tokens * pp + n * completion * cp)
    return _Spend(cost, usual * t.prompt_tokens * pp, worst, 0.0, float(usual), usual * t.prompt_tokens,
                  usual * n * completion, "assumed (no pilot): completion = half of max_tokens")


def _add_escalation(spend: _Spend, esc: EscalationEstimate, esc_worst: float, t: PromptTotals,
                    fitted: Pilot | None, max_tokens: int) -> None:
    """The escalations on top of the votes; a pilot's figures already hold their calls and tokens."""
    n = t.remaining
    spend.cost += esc.expected_cost
    if fitted is None:  # assumed: each escalated row one call, half of max_tokens
        spend.high += esc_worst
        spend.calls += esc.share
        spend.prompt_sent += esc.share * t.prompt_tokens
        spend.completion += esc.expected_rows * max_tokens / 2
        return
    s, m, k = esc.share, esc.cost_per_row, max(fitted.fit.n, 1)
    spend.variance += n * s * (1 - s) * m * m + (n * m) ** 2 * s * (1 - s) / k  # which rows, and the share itself
    spend.low += esc.expected_cost
    spend.high += esc.expected_cost


def _assemble(job: Job, price: Price, account: Account, t: PromptTotals, spent: float,
              fitted: Pilot | None, cap: float | None,
              escalation: tuple[EscalateConfig, Price] | None = None) -> Estimate:
    usual, most = calls_per_row(job)
    pp, cp = price.prompt_per_million / 1e6, price.completion_per_million / 1e6
    max_tokens = job.provider.max_tokens
    n = t.remaining
    worst_per_call_fixed = PROMPT_OVERHEAD * pp + (max_tokens or DEFAULT_COMPLETION * 4) * cp
    worst = most * (PROMPT_MARGIN * t.prompt_tokens * pp + n * worst_per_call_fixed)
    spend = _votes_spend(job, price, t, fitted, worst)
    notes = [] if fitted is not None else ["run with --pilot N for an interval learned from real answers"]
    esc = None
    if escalation is not None:
        esc, esc_worst = _escalation(job, escalation, t, fitted)
        worst += esc_worst
        _add_escalation(spend, esc, esc_worst, t, fitted, escalation[0].max_tokens or max_tokens or DEFAULT_COMPLETION)
        if fitted is None:
            notes.append("escalation share unknown without a pilot: expected assumes half the rows escalate, "
                         "the interval spans none to all")
    if fitted is not None:
        se = math.sqrt(spend.variance)
        spend.low, spend.high = max(0.0, spend.low - 1.96 * se), spend.high + 1.96 * se
    if max_tokens is None:
        notes.append(f"no provider.max_tokens: worst case assumes {DEFAULT_COMPLETION * 4} tokens")
    covered = _package_money(job, account, pp, escalation)

    def money(x: float) -> float:
        return spent + max(0.0, x - covered)

    rate = job.limits.rate_per_window
    minutes = n * spend.calls / rate * job.limits.window_seconds / 60 if rate else None
    ratio = fitted.token_ratio if fitted is not None else None
    est = Estimate(
        rows=t.rows, distinct_requests=t.sendable - t.duplicates, remaining_rows=n,
        skipped_rows=t.skipped, calls_per_row=usual,
        prompt_tokens=t.prompt_tokens, tokenizer=f"{TOKENIZER_NAME} ({DEFAULT_ENCODING})",
        currency=price.currency,
        price={"prompt_per_million": price.prompt_per_million,
               "completion_per_million": price.completion_per_million},
        spent_so_far=round(spent, 6), expected_cost=round(money(spend.cost), 6),
        interval=(round(money(spend.low), 6), round(money(spend.high), 6)), worst_case=round(money(worst), 6),
        list_price=round(spend.cost, 6), package_tokens=_package_tokens(job, account), completion_basis=spend.basis,
        pilot_rows=fitted.fit.n if fitted else 0, completion_tokens=round(spend.completion),
        token_ratio=None if ratio is None else round(ratio, 4),
        minutes=None if minutes is None else round(minutes, 2), rate=job.limits.describe_rate(), notes=notes,
        expected_calls_per_row=round(spend.calls, 3), prompt_tokens_sent=round(spend.prompt_sent), escalation=esc,
        token_split=job.provider.kind == "openai",
    )
    if account.remaining is not None:
        est.balance = account.remaining
        est.fits_balance = est.worst_case - spent <= account.remaining
    if cap is not None:
        est.max_cost = cap
        est.fits_cap = est.worst_case <= cap
    return est


def _escalation(job: Job, escalation: tuple[EscalateConfig, Price], t: PromptTotals,
                fitted: Pilot | None) -> tuple[EscalationEstimate, float]:
    """The expected escalation, and its worst case (every row escalates, every answer re-asked)."""
    cfg, price = escalation
    epp, ecp = price.prompt_per_million / 1e6, price.completion_per_million / 1e6
    n = t.remaining
    max_tokens = cfg.max_tokens or job.provider.max_tokens or DEFAULT_COMPLETION * 4
    reasks = job.label.max_reasks if job.label else 2
    per_prompt = t.prompt_tokens / n if n else 0.0
    assumed_row = per_prompt * epp + (PROMPT_OVERHEAD * epp + max_tokens / 2 * ecp)  # one call, half of max_tokens
    if fitted is not None:
        k = fitted.fit.n
        share = fitted.escalated / k if k else 0.0
        per_row = fitted.escalation_cost / fitted.escalated if fitted.escalated else assumed_row
        basis, agreement = f"pilot ({k} rows, {fitted.escalated} under {cfg.below:g})", fitted.agreement
    else:
        share, per_row, basis, agreement = 0.5, assumed_row, "assumed (no pilot): half the rows", {}
    worst = (1 + reasks) * (PROMPT_MARGIN * t.prompt_tokens * epp + n * (PROMPT_OVERHEAD * epp + max_tokens * ecp))
    est = EscalationEstimate(
        target=cfg.target, below=cfg.below,
        price={"prompt_per_million": price.prompt_per_million, "completion_per_million": price.completion_per_million},
        pilot_agreement=agreement, share=round(share, 4), basis=basis, expected_rows=round(share * n),
        cost_per_row=round(per_row, 8), expected_cost=round(share * n * per_row, 6))
    return est, worst


def _package_tokens(job: Job, account: Account) -> int:
    target = int(job.provider.agent_id) if job.provider.kind == "momo" and job.provider.agent_id else None
    return account.packages.get(target, 0) if target is not None else 0


def _package_money(job: Job, account: Account, pp: float, escalation: tuple[EscalateConfig, Price] | None) -> float:
    """What prepaid token packages cover, in money (MOMO prices prompt and completion alike)."""
    covered = _package_tokens(job, account) * pp
    if escalation is not None and escalation[0].agent_id is not None:
        covered += account.packages.get(escalation[0].agent_id, 0) * escalation[1].prompt_per_million / 1e6
    return covered
