"""What a sandbox server simulates: accounts, rate limits, faults. Validated once, at start-up.

```toml
seed = 7
window_seconds = 2.0          # a rate-limit "minute" lasts 2 s
algorithm = "sliding_log"
label_truth = "data/reviews-gold.csv"   # gold labels the labelling agents know (see .labeller)

[keys.momo-sandbox-free]
tier = "free"
balance = 1.5
packages = { 159 = 1000 }

[keys.momo-short-window]       # 100 requests per 0.33 s: a server that counts in "10 s", not a minute
limit = 100
window_seconds = 0.33

[relay_keys.sk-sandbox-relay]
hard_limit_usd = 5.0
rpm = 30                      # per window_seconds (the key's own, else the server's)

[faults]
server_error = 0.1
reset = 0.05

[labellers.301]               # the cheap labelling agent is right this often per call
easy = 0.92
hard = 0.6
```

``relay_numeric_codes``, ``hidden_models`` and ``missing_endpoints`` imitate relays that are not
quite new-api (LiteLLM's numeric codes, wildcard routes, no billing endpoints). ``[new_api]`` turns
on what a real new-api (or one-api) relay does that OpenAI does not (see :mod:`.newapi`):

```toml
[new_api]
flavour = "new-api"           # or "one-api": its texts and codes
rate_limit_success = 60       # the model rate limit's success counter, per rate_limit_minutes
rate_limit_total = 0          # its total counter (counts failed requests too); 0: off
no_channel_models = ["gpt-4o"]  # priced and listed, but no channel serves them: 503

[relay_keys.sk-sandbox-relay]
quota_usd = 0.5               # the key's own quota (new-api's remain_quota); unset: unlimited

[faults]
upstream_saturated = 0.1      # one-api's 429 "当前分组上游负载已饱和，请稍后再试"
```
"""

from __future__ import annotations

import csv
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "DEFAULT_KEYS",
    "DEFAULT_RELAY_KEYS",
    "FAULT_NAMES",
    "POST_CHARGE_FAULTS",
    "STREAM_FAULTS",
    "TIER_LIMITS",
    "Algorithm",
    "FaultConfig",
    "KeyConfig",
    "NewApiConfig",
    "RelayKeyConfig",
    "SandboxConfig",
    "SkillConfig",
    "Tier",
]

Tier = Literal["free", "basic", "pro", "enterprise"]
Algorithm = Literal["fixed_window", "sliding_log", "token_bucket"]

# Requests per window (the contract's "minute"); None is unlimited.
TIER_LIMITS: dict[str, int | None] = {"free": 10, "basic": 60, "pro": 300, "enterprise": None}

# The order fixes which fault a uniform draw lands on: changing it changes every seeded run.
FAULT_NAMES: tuple[str, ...] = (
    "rate_limit", "server_error", "bad_gateway_html", "reset", "hang", "malformed", "success_false",
    "stream_mid_error", "stream_drop", "stream_no_summary", "stream_split", "stream_crlf", "stream_keepalive",
    "conflict", "context_window", "trickle", "echo_key", "charged_reset", "charged_malformed",
    "negative_usage", "nan_usage", "long_rate_limit",
    "upstream_saturated",
)
STREAM_FAULTS = frozenset(name for name in FAULT_NAMES if name.startswith("stream_"))
# faults that strike after the call was charged: the client pays and gets no answer, or an answer
# whose figures lie (negative, NaN); the log records what was really charged
POST_CHARGE_FAULTS = frozenset({"charged_reset", "charged_malformed", "negative_usage", "nan_usage"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyConfig(_Strict):
    """A MOMO API key: its rate tier, money (CNY) and prepaid token packages per agent id.

    ``limit`` / ``window_seconds`` override the tier: ``limit`` requests per ``window_seconds`` (real
    seconds; default the server's "minute"), so a key can count in a window other than a minute.
    """

    tier: Tier = "pro"
    balance: float = Field(default=1000.0, ge=0)
    packages: dict[int, int] = Field(default_factory=dict)
    limit: int | None = Field(default=None, ge=1)
    window_seconds: float | None = Field(default=None, gt=0)


class RelayKeyConfig(_Strict):
    """A relay API key (``sk-…``). Keys of one user share that user's quota.

    ``rpm`` requests per ``window_seconds`` (default the server's "minute"); its 429s carry no body and
    no header at all, as LiteLLM-style proxies send them.
    """

    user_id: str = "1"
    hard_limit_usd: float = Field(default=100.0, ge=0)
    rpm: int | None = Field(default=None, ge=1)
    window_seconds: float | None = Field(default=None, gt=0)
    quota_usd: float | None = Field(default=None, ge=0)  # the key's own quota ([new_api] mode); None: unlimited


class NewApiConfig(_Strict):
    """The relay behaves as new-api (or one-api) does: see :mod:`.newapi`."""

    flavour: Literal["new-api", "one-api"] = "new-api"
    group: str = "default"
    group_ratio: float = Field(default=1.0, gt=0)
    rate_limit_minutes: int = Field(default=1, ge=1)  # of the server's "minute" (window_seconds)
    rate_limit_success: int = Field(default=0, ge=0)  # 0: off
    rate_limit_total: int = Field(default=0, ge=0)  # 0: off
    no_channel_models: list[str] = Field(default_factory=list)


_Prob = Field(default=0.0, ge=0.0, le=1.0)


class FaultConfig(_Strict):
    """Probability of each fault per request; a deterministic hash draw picks at most one.

    ``stream_split``/``stream_crlf``/``stream_keepalive`` only change the framing of a stream that
    still delivers and charges; the ``stream_*`` faults never hit a non-stream request.
    """

    rate_limit: float = _Prob
    server_error: float = _Prob
    bad_gateway_html: float = _Prob
    reset: float = _Prob
    hang: float = _Prob
    malformed: float = _Prob
    success_false: float = _Prob
    stream_mid_error: float = _Prob
    stream_drop: float = _Prob
    stream_no_summary: float = _Prob
    stream_split: float = _Prob
    stream_crlf: float = _Prob
    stream_keepalive: float = _Prob
    # What real servers also do, though the contract does not name it:
    conflict: float = _Prob  # HTTP 409, a 4xx no contract code names
    context_window: float = _Prob  # HTTP 400: the prompt is over the model's context window
    trickle: float = _Prob  # HTTP 200 whose body comes a byte at a time for hang_seconds, then drops
    echo_key: float = _Prob  # HTTP 400 whose message quotes the key without its first 3 characters ("sk-")
    charged_reset: float = _Prob  # charged, then the connection is reset before the answer
    charged_malformed: float = _Prob  # charged, then HTTP 200 whose JSON breaks off half-way
    negative_usage: float = _Prob  # charged, then an answer whose tokens (and MOMO's cost) are negative
    nan_usage: float = _Prob  # charged, then an answer whose cost (MOMO) or tokens (relay) are NaN
    long_rate_limit: float = _Prob  # HTTP 429 asking to wait ``long_retry_after`` seconds (both APIs)
    long_retry_after: float = Field(default=3600.0, ge=0)
    upstream_saturated: float = _Prob  # a relay's 429: its upstream is saturated (not the key's rate)
    # After this many faults for one (key, prompt) it always succeeds, so a client's retries converge.
    max_faults_per_prompt: int = Field(default=3, ge=0)
    apply_to: Literal["all", "calls"] = "calls"

    @model_validator(mode="after")
    def _at_most_one(self) -> FaultConfig:
        total = sum(getattr(self, name) for name in FAULT_NAMES)
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault probabilities add up to {total:.3f}; at most one fault per request (≤ 1)")
        return self


class SkillConfig(_Strict):
    """How often a labelling target is right per call, on easy rows and on hard ones."""

    easy: float = Field(ge=0.0, le=1.0)
    hard: float = Field(ge=0.0, le=1.0)


# MOMO 301 is the cheap labelling agent, 302 the strong one (and 15 times its price); relay models
# are ranked as their prices suggest. Other targets get ``default_labeller``.
DEFAULT_LABELLERS: dict[str, SkillConfig] = {
    "301": SkillConfig(easy=0.92, hard=0.6),
    "302": SkillConfig(easy=0.98, hard=0.9),
    "gpt-4o-mini": SkillConfig(easy=0.92, hard=0.6),
    "gpt-4.1-mini": SkillConfig(easy=0.94, hard=0.7),
    "deepseek-chat": SkillConfig(easy=0.94, hard=0.7),
    "claude-3-5-haiku": SkillConfig(easy=0.93, hard=0.65),
    "gpt-4o": SkillConfig(easy=0.98, hard=0.9),
}


def _default_keys() -> dict[str, KeyConfig]:
    return {f"momo-sandbox-{tier}": KeyConfig(tier=tier, balance=1000.0, packages={159: 50000})
            for tier in ("free", "basic", "pro", "enterprise")}


DEFAULT_KEYS: dict[str, KeyConfig] = _default_keys()
DEFAULT_RELAY_KEYS: dict[str, RelayKeyConfig] = {"sk-sandbox-relay": RelayKeyConfig()}


class SandboxConfig(_Strict):
    """Everything a sandbox run simulates. All fields have defaults: ``SandboxConfig()`` just works."""

    seed: int = 0
    # Real seconds in a rate-limit "minute": tests scale time down with e.g. 2.0.
    window_seconds: float = Field(default=60.0, gt=0)
    algorithm: Algorithm = "fixed_window"
    rate_headers: bool = True
    latency_ms: float = Field(default=0.0, ge=0)
    # each call's latency drawn from latency_ms × [1 - j, 1 + j] (seeded): a model's answers take
    # varying times, and calls that all take the same go and come back in lockstep
    latency_jitter: float = Field(default=0.0, ge=0, lt=1)
    keys: dict[str, KeyConfig] = Field(default_factory=_default_keys)
    relay_keys: dict[str, RelayKeyConfig] = Field(default_factory=lambda: dict(DEFAULT_RELAY_KEYS))
    access_tokens: dict[str, str] = Field(default_factory=lambda: {"sandbox-system-token": "1"})
    faults: FaultConfig = Field(default_factory=FaultConfig)
    request_log: Path | None = None
    agent_count: int = Field(default=45, ge=2, le=1000)
    hang_seconds: float = Field(default=30.0, ge=0)
    # Servers that are not quite new-api: LiteLLM sends the HTTP status as the error code ("code": "400");
    # wildcard routes serve models /v1/models does not list; some relays lack billing or /api/user/self.
    relay_numeric_codes: bool = False
    hidden_models: list[str] = Field(default_factory=list)
    missing_endpoints: list[str] = Field(default_factory=list)  # paths answered 404, e.g. "/api/user/self"
    new_api: NewApiConfig | None = None  # the relay behaves as new-api / one-api do (see .newapi)
    # Labelling targets (see .labeller): gold labels they know (a CSV with text, gold, optional case),
    # and how often each is right per call; the draws follow ``seed``.
    label_truth: Path | None = None
    labellers: dict[str, SkillConfig] = Field(default_factory=lambda: dict(DEFAULT_LABELLERS))
    default_labeller: SkillConfig = SkillConfig(easy=0.9, hard=0.6)

    @field_validator("label_truth")
    @classmethod
    def _truth_readable(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh), [])
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read {path} ({exc})") from None
        if not {"text", "gold"} <= set(header):
            raise ValueError(f"{path} needs the columns text and gold (it has {header})")
        return path

    @field_validator("labellers")
    @classmethod
    def _over_defaults(cls, given: dict[str, SkillConfig]) -> dict[str, SkillConfig]:
        return {**DEFAULT_LABELLERS, **given}  # [labellers.301] changes 301 and keeps the others

    @classmethod
    def from_toml(cls, path: str | Path) -> SandboxConfig:
        """Read a TOML file (see the module docstring); unknown keys are errors."""
        with open(path, "rb") as fh:
            return cls.model_validate(tomllib.load(fh))
