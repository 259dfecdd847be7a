"""What the sandbox sells: MOMO agents (CNY per 1k tokens) and relay models (USD per million tokens)."""

from __future__ import annotations

from typing import NamedTuple

from .answers import stable_hash

__all__ = ["LABEL_AGENT_ID", "LABEL_AGENT_IDS", "QUOTA_PER_USD", "RELAY_PRICES", "STRONG_LABEL_AGENT_ID", "Agent",
           "Price", "make_agents", "quota_units"]

GPT_AGENT_ID = 159
LABEL_AGENT_ID = 301
STRONG_LABEL_AGENT_ID = 302  # more accurate, 15 times the price: what label jobs escalate to
LABEL_AGENT_IDS = frozenset({LABEL_AGENT_ID, STRONG_LABEL_AGENT_ID})
QUOTA_PER_USD = 500_000  # new-api: 500000 quota units = 1 US dollar; "ratio 1" = $2 per million tokens

_NAMES = ("writer", "translator", "coder", "summarizer", "tutor", "analyst", "poet", "critic", "planner", "editor")


class Agent(NamedTuple):
    id: int
    name: str
    description: str
    price_per_1k_tokens: float
    rating: float

    def as_json(self) -> dict[str, object]:
        return self._asdict()


class Price(NamedTuple):
    """USD per million tokens."""

    prompt: float
    completion: float
    owned_by: str = "openai"


# A job that prices relay calls with these figures matches what the sandbox charges.
RELAY_PRICES: dict[str, Price] = {
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "deepseek-chat": Price(0.27, 1.10, "deepseek"),
    "claude-3-5-haiku": Price(0.80, 4.00, "anthropic"),
}


def quota_units(price: Price, prompt_tokens: int, completion_tokens: int) -> int:
    """new-api's charge: round((prompt + completion × completion_ratio) × model_ratio).

    model_ratio = prompt price / $2 per million, completion_ratio = completion / prompt price; this is
    the same as (prompt × prompt price + completion × completion price) in $ per million × 0.5.
    """
    model_ratio = price.prompt / 2.0
    completion_ratio = price.completion / price.prompt
    return round((prompt_tokens + completion_tokens * completion_ratio) * model_ratio)


def make_agents(count: int) -> dict[int, Agent]:
    """``count`` agents: 159 (gpt5.2), 301 and 302 (the labelling agents) first, then ids from 100 up."""
    ids = [GPT_AGENT_ID, LABEL_AGENT_ID, STRONG_LABEL_AGENT_ID][:count]
    ids += [i for i in range(100, 100 + count + 3) if i not in ids][: count - len(ids)]
    agents = {}
    for agent_id in sorted(ids):
        agents[agent_id] = _agent(agent_id)
    return agents


def _agent(agent_id: int) -> Agent:
    if agent_id == GPT_AGENT_ID:
        return Agent(agent_id, "gpt5.2", "最新的 GPT 模型", 0.01, 4.8)
    if agent_id == LABEL_AGENT_ID:
        return Agent(agent_id, "label-zh-en", "Labels Chinese and English text with a given label set", 0.002, 4.6)
    if agent_id == STRONG_LABEL_AGENT_ID:
        return Agent(agent_id, "label-pro-zh-en", "Labels hard cases (sarcasm, mixed, negation) far more reliably",
                     0.03, 4.9)
    h = stable_hash("agent", agent_id)
    name = f"{_NAMES[h % len(_NAMES)]}-{agent_id}"
    price = round(0.001 * (1 + h % 30), 4)
    rating = round(3.5 + (h >> 8) % 15 / 10, 1)
    return Agent(agent_id, name, f"Sandbox {name.split('-')[0]} agent", price, rating)
