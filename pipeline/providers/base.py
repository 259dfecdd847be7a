"""The small interface every provider implements, and the values it exchanges.

The runner only ever talks to a :class:`Provider`: one prompt in, one :class:`CallResult` out,
plus a read of the account. Service specifics (MOMO's envelope, the relay's OpenAI wire
format, streaming) stay inside each provider module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from ..errors import MalformedResponse

CostSource = Literal["server", "price_table", "unknown"]


@dataclass(frozen=True, slots=True)
class PromptRequest:
    """One call to make. ``stream`` picks the streaming wire format; the result is the same."""

    prompt: str
    temperature: float | None = None
    max_tokens: int | None = None
    stream: bool = False


@dataclass(frozen=True, slots=True)
class RateLimitInfo:
    """``X-RateLimit-*`` headers of a response; ``reset`` is seconds from now until the window resets."""

    limit: int | None = None
    remaining: int | None = None
    reset: float | None = None


@dataclass(frozen=True, slots=True)
class CallResult:
    """What one successful call produced.

    ``tokens_used`` / ``cost`` are ``None`` when the server did not say (a stream that ended
    without its summary): they are never invented.
    """

    content: str
    request_id: str | None
    tokens_used: int | None
    cost: float | None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost_source: CostSource = "server"
    rate_limit: RateLimitInfo | None = None


def check_reported(result: CallResult) -> CallResult:
    """``result`` if every figure the server reported is a finite number ≥ 0 (or unknown).

    A server that says a call used -5 tokens, or cost NaN, is not believed: the answer is
    :class:`~pipeline.errors.MalformedResponse`, so the row is retried (its worst case stays
    counted, as for any answer lost after the charge) and no such figure reaches the budget,
    the ledger or the output.
    """
    figures = {"tokens_used": result.tokens_used, "cost": result.cost,
               "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}
    for name, value in figures.items():
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
            raise MalformedResponse(f"the answer reports {name} = {value!r}: not a number ≥ 0")
    return result


@dataclass(frozen=True, slots=True)
class Account:
    """What is left to spend. ``remaining`` is in ``currency``; ``None`` when unknown."""

    remaining: float | None
    currency: str
    # prepaid token packages per agent id (MOMO); empty for the relay
    packages: dict[int, int] = field(default_factory=dict)
    # raw figures as the service reported them, for display and reconciliation
    raw: dict[str, float | int | str | None] = field(default_factory=dict)
    # why ``remaining`` is unknown (a relay without billing endpoints), or where it was read from
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Price:
    """List price of the target, per million tokens, in ``currency``."""

    prompt_per_million: float
    completion_per_million: float
    currency: str
    # a warning about the target (a relay model that /v1/models does not list)
    note: str | None = None


@runtime_checkable
class Provider(Protocol):
    """One target (a MOMO agent, or a relay model) behind one account."""

    name: str  # "momo" | "openai"
    target: str  # agent id or model name, as text
    endpoint: str  # what request keys call the service: its base URL (see pipeline.keys)

    async def complete(self, request: PromptRequest) -> CallResult:
        """Make one call. Raises an :class:`~pipeline.errors.APIError` subclass on failure."""
        ...

    async def account(self) -> Account:
        """Read what is left to spend."""
        ...

    async def price(self) -> Price:
        """The list price of the target (checks that the target exists)."""
        ...

    def retarget(self, target: str, *, prompt_price_per_million: float | None = None,
                 completion_price_per_million: float | None = None) -> Provider:
        """Another target behind the same account and connections (a label job's escalation);
        closing it leaves the shared connections open. Prices are for relay models."""
        ...

    async def aclose(self) -> None: ...
