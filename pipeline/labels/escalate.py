"""The stronger target a label job escalates to: its provider, request keys and caller.

The stronger target sits behind the same account: the job's own client (key, base URL,
connections) retargeted to another agent or model (``provider.retarget``). Its calls go through a
sibling of the job's :class:`~pipeline.runner.Caller` (the same limiter, budget, stats, ledger and
cache) and are keyed by their own target, so they are new request keys in the same ledger while
the votes keep theirs: a rerun with another ``below`` finds every vote recorded and pays only for
the escalations it has not made yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..keys import Keyer
from ..providers.base import PromptRequest, Provider
from .spec import EscalateConfig

if TYPE_CHECKING:
    from ..config import Job
    from ..runner import Caller

__all__ = ["escalation_caller", "escalation_keyer", "escalation_provider", "escalation_request"]


def escalation_provider(provider: Provider, esc: EscalateConfig) -> Provider:
    """The stronger target behind ``provider``'s account (no I/O)."""
    return provider.retarget(esc.target, prompt_price_per_million=esc.prompt_price_per_million,
                             completion_price_per_million=esc.completion_price_per_million)


def escalation_request(esc: EscalateConfig, job: Job) -> PromptRequest:
    """The escalation's request settings: its own, else the job provider's."""
    p = job.provider
    return PromptRequest(prompt="", temperature=esc.temperature if esc.temperature is not None else p.temperature,
                         max_tokens=esc.max_tokens or p.max_tokens, stream=p.stream)


def escalation_keyer(keyer: Keyer, esc: EscalateConfig, request: PromptRequest) -> Keyer:
    """Request keys for the stronger target: the job's service and endpoint, its own target."""
    return Keyer(service=keyer.service, endpoint=keyer.endpoint, target=esc.target,
                 temperature=request.temperature, max_tokens=request.max_tokens)


async def escalation_caller(esc: EscalateConfig, job: Job, provider: Provider, caller: Caller, *,
                            capped: bool, override: Provider | None = None) -> Caller:
    """A caller for the stronger target; with a cost cap, its worst case is priced at its own price."""
    from ..estimator import worst_cost_fn  # the estimate builds on the plan, which builds on this package

    target = override or escalation_provider(provider, esc)
    request = escalation_request(esc, job)
    worst = worst_cost_fn(job, await target.price(), max_tokens=request.max_tokens) if capped else None
    return caller.sibling(target, request=request, keyer=escalation_keyer(caller.keyer, esc, request),
                          worst_cost=worst)
