"""Refuse before paying, and reconcile after: what ``run_job`` does around a run, CLI or not.

Before the first call: the output path (never the input), the input read and keyed whole (the
plan), the key and the agent or model (``price``), the worst case against the balance and the
cap. After the run: the estimate, the cost column and what the account says it lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import Job
from .errors import MomoError, PreflightRefused
from .estimator import Estimate, estimate
from .output_path import check_output
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
                    yes: bool, warn: Warn) -> Checked:
    """Check everything that can be checked without paying; :class:`PreflightRefused` unless ``yes``."""
    check_output(job.output.path, job.input.path)
    est = await estimate(job, provider, max_cost=max_cost, restart=restart, plan=plan)
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
              unknown_cost_calls: int) -> dict[str, Any]:
    """Estimated against real cost; the cost column against what the account says it lost."""
    out: dict[str, Any] = {"estimated_cost": est.expected_cost, "interval": list(est.interval),
                           "real_cost_this_run": round(spent_run, 6)}
    if before.remaining is None:
        out["balance_unknown"] = before.note or "the service did not report a balance"
    if after is not None and before.remaining is not None and after.remaining is not None:
        charged = before.remaining - after.remaining
        out["account_charged"] = round(charged, 6)
        out["gap"] = round(charged - spent_run, 6)
    if unknown_cost_calls:
        out["calls_with_unknown_cost"] = unknown_cost_calls
    return out
