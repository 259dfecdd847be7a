"""How a new-api (or one-api) relay behaves where it differs from OpenAI, for the relay's ``new_api`` mode.

Read from their source (QuantumNous/new-api, songquanpeng/one-api), written anew here:

- the model rate limit (``middleware/model-rate-limit.go``): per user, two sliding logs over
  ``minutes`` of the server's "minute". The *total* counter records every request it lets through,
  whatever becomes of it (so refused and failed requests spend it too); the *success* counter is
  only checked before the call, and records the call once it answered below 400. Either refuses
  with a 429, code ``""``, no ``Retry-After``, no ``X-RateLimit-*``, and a message in words;
- the reservation before each call (``service/pre_consume_quota.go``, one-api's
  ``relay/controller/helper.go``): (prompt tokens + ``max_tokens``) × model ratio × group ratio,
  checked against the user's quota (403 ``insufficient_user_quota``) and the key's own (403
  ``pre_consume_token_quota_failed``); the call is then charged what it used, and a key whose own
  quota reaches 0 answers every call with 401 ``该令牌额度已用尽`` (``model/token.go``);
- no channel for a model in the group (the distributor): 503, new-api with code
  ``model_not_found``, one-api with no code;
- one-api's rewrite of any upstream 429 (``controller/relay.go``): ``当前分组上游负载已饱和，请稍后再试``;
- every error message ends with `` (request id: …)``, the id every reply also sends as
  ``X-Oneapi-Request-Id``;
- what the sk- key alone can read: ``/api/pricing`` (``controller/pricing.go``), ``/api/status``
  (``controller/misc.go``) and ``/api/usage/token/`` (``controller/token.go``).
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import Any

from .catalog import QUOTA_PER_USD, RELAY_PRICES, Price
from .config import NewApiConfig

__all__ = ["REQUEST_ID_HEADER", "ModelRateLimit", "exhausted", "masked", "no_channel", "pricing",
           "rate_limited", "reservation", "saturated", "status", "token_usage", "with_request_id"]

REQUEST_ID_HEADER = "X-Oneapi-Request-Id"
SATURATED = "当前分组上游负载已饱和，请稍后再试"
DEFAULT_RESERVED_TOKENS = 500  # new-api's PreConsumedQuota when a request sets no max_tokens

_ids = itertools.count(1)


def new_request_id() -> str:
    """As the relays make them: the time to the second, then digits that tell requests apart."""
    return time.strftime("%Y%m%d%H%M%S", time.gmtime()) + f"{next(_ids):09d}" + "sandbox1"


def with_request_id(message: str, rid: str) -> str:
    return f"{message} (request id: {rid})"


def masked(key: str) -> str:
    """The key as new-api prints it in an error: ``sk-ab***yz``."""
    return f"{key[:5]}***{key[-2:]}" if len(key) > 8 else "***"


def exhausted(key: str) -> str:
    return f"[{masked(key)}] 该令牌额度已用尽"


def no_channel(cfg: NewApiConfig, model: str) -> tuple[str, str]:
    """(message, code) of the distributor when no channel serves ``model`` in the group."""
    if cfg.flavour == "one-api":
        return f"当前分组 {cfg.group} 下对于模型 {model} 无可用渠道", ""
    return f"分组 {cfg.group} 下模型 {model} 无可用渠道（distributor）", "model_not_found"


def saturated() -> str:
    return SATURATED


def rate_limited(minutes: int, count: int, *, total: bool) -> str:
    if total:
        return f"您已达到总请求数限制：{minutes}分钟内最多请求{count}次，包括失败次数，请检查您的请求是否正确"
    return f"您已达到请求数限制：{minutes}分钟内最多请求{count}次"


def ratios(price: Price) -> tuple[float, float]:
    """(model ratio, completion ratio): "ratio 1" is $2 per million prompt tokens."""
    return price.prompt / 2.0, price.completion / price.prompt


def reservation(price: Price, prompt_tokens: int, max_tokens: int | None, group_ratio: float) -> int:
    """Quota units held before the call: (prompt + max_tokens) × model ratio × group ratio."""
    model_ratio, _ = ratios(price)
    reserved = prompt_tokens + (max_tokens if max_tokens else DEFAULT_RESERVED_TOKENS)
    return int(reserved * model_ratio * group_ratio)


class ModelRateLimit:
    """new-api's in-memory model rate limit: a total and a success counter per user."""

    def __init__(self, cfg: NewApiConfig, window_seconds: float) -> None:
        self.cfg = cfg
        self.span = cfg.rate_limit_minutes * window_seconds
        self._total: dict[str, deque[float]] = {}
        self._success: dict[str, deque[float]] = {}

    def check(self, user: str, now: float) -> str | None:
        """The refusal's message, or None (the request is then counted by the total counter)."""
        total, success = self.cfg.rate_limit_total, self.cfg.rate_limit_success
        log = self._total.setdefault(user, deque())
        if total and not self._room(log, total, now):
            return rate_limited(self.cfg.rate_limit_minutes, total, total=True)
        if total:
            log.append(now)
        if success and not self._room(self._success.setdefault(user, deque()), success, now):
            return rate_limited(self.cfg.rate_limit_minutes, success, total=False)
        return None

    def succeeded(self, user: str, now: float) -> None:
        if self.cfg.rate_limit_success:
            self._success.setdefault(user, deque()).append(now)

    def _room(self, log: deque[float], limit: int, now: float) -> bool:
        while log and now - log[0] >= self.span:
            log.popleft()
        return len(log) < limit


def pricing(cfg: NewApiConfig) -> dict[str, Any]:
    data = [{"model_name": name, "quota_type": 0, "model_ratio": ratios(price)[0], "model_price": 0,
             "owner_by": price.owned_by, "completion_ratio": ratios(price)[1], "enable_groups": [cfg.group],
             "supported_endpoint_types": ["openai"]}
            for name, price in RELAY_PRICES.items()]
    return {"success": True, "data": data, "group_ratio": {cfg.group: cfg.group_ratio},
            "usable_group": {cfg.group: "sandbox group"}}


def status() -> dict[str, Any]:
    return {"success": True, "message": "", "data": {
        "system_name": "New API", "quota_per_unit": QUOTA_PER_USD, "display_in_currency": True,
        "quota_display_type": "USD", "version": "sandbox"}}


def token_usage(remain: int | None, used: int) -> dict[str, Any]:
    return {"code": True, "message": "ok", "data": {
        "object": "token_usage", "name": "sandbox", "total_granted": (remain or 0) + used, "total_used": used,
        "total_available": remain or 0, "unlimited_quota": remain is None, "model_limits": {},
        "model_limits_enabled": False, "expires_at": 0}}
