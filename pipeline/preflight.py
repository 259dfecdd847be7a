"""Refuse before paying, and reconcile after: what ``run_job`` does around a run, CLI or not.

Before the first call: the output path (never the input), the input read and keyed whole (the
plan), the key and the agent or model (``price``), the worst case against the balance and the
cap. After the run: the estimate, the cost column and what the account says it lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .config import Job
from .errors import MomoError, PreflightRefused
from .estimator import Estimate, estimate
from .outcome import Reconciliation
from .plan import Plan
from .providers.base import Account, Price, Provider

Warn = Callable[[str], None]


@dataclass
class Checked:
    """What the preflight learned: the reference for the cap and for reconciliation."""

    estimate: Estimate
    price: Price
    before: Account
    warnings: list[str] = field(default_factory=list)


async def preflight(job: Job, provider: Provider, plan: Plan, *, max_cost: float | None, restart: bool,
                    yes: bool, warn: Warn, parts: bool = False) -> Checked:
    """Check everything that can be checked without paying; :class:`PreflightRefused` unless ``yes``.
    ``parts``: the output is a directory of Parquet parts (a Ray run's ``parts_rows``)."""
    est = await estimate(job, provider, max_cost=max_cost, restart=restart, plan=plan, parts=parts)
    price = await provider.price()  # cached by the provider: no second request
    warnings = list(est.warnings)  # an unlisted model, a balance the relay does not report
    problems = refusals(est)
    if problems and not yes:
        raise PreflightRefused("preflight: " + "; ".join(problems) + ". Use --yes (yes=True) to run anyway: "
                               "the job stops cleanly, resumable, when the money or the cap runs out.")
    if problems:
        warnings.append("preflight: " + "; ".join(problems) + " (running anyway: yes given)")
    for text in warnings:
        warn(text)
    return Checked(est, price, await provider.account(), warnings)


def refusals(est: Estimate) -> list[str]:
    problems = []
    if est.fits_balance is False:
        problems.append(f"worst case {est.worst_case:.6f} {est.currency} is more than the balance "
                        f"{est.balance:.6f}")
    if est.fits_cap is False:
        problems.append(f"worst case {est.worst_case:.6f} {est.currency} is more than max_cost "
                        f"{est.max_cost:g}")
    return problems


async def account_after(provider: Provider, warn: Warn) -> tuple[Account | None, str | None]:
    """The balance after the run; a failed read is a warning (the output is whole, the exit code
    follows the rows)."""
    try:
        return await provider.account(), None
    except MomoError as exc:
        warning = f"balance not read after the run, so it is not reconciled: {exc}"
        warn(warning)
        return None, warning


def reconcile(est: Estimate, before: Account, after: Account | None, spent_run: float,
              unknown_cost_calls: int) -> Reconciliation:
    """Estimated against real cost; the cost column against what the account says it lost."""
    charged = None
    if after is not None and before.remaining is not None and after.remaining is not None:
        charged = before.remaining - after.remaining
    unknown = None
    if before.remaining is None:
        unknown = before.note or "the service did not report a balance"
    return Reconciliation(est.expected_cost, est.interval, spent_run, account_charged=charged,
                          balance_unknown=unknown, calls_with_unknown_cost=unknown_cost_calls)
