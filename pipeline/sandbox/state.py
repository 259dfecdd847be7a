"""Mutable server state: MOMO accounts, relay users, per-(key, subject) counters, the log.

Only the server's event loop mutates it (the :class:`~.server.Sandbox` helpers hop onto the
loop), so there are no locks on the hot path.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .catalog import QUOTA_PER_USD, Agent, make_agents
from .config import TIER_LIMITS, SandboxConfig
from .faults import FaultPicker
from .labeller import Labeller, Truth
from .log import RequestLog
from .ratelimit import Limiter, make_limiter

__all__ = ["Charge", "MomoAccount", "RelayKey", "RelayUser", "SandboxState"]


@dataclass(slots=True)
class MomoAccount:
    tier: str
    balance: float
    packages: dict[int, int]
    limiter: Limiter | None


@dataclass(frozen=True, slots=True)
class Charge:
    """What one MOMO call costs: prepaid tokens first, money (CNY) for the rest."""

    package_tokens: int
    cost: float


@dataclass(slots=True)
class RelayUser:
    user_id: str
    hard_limit_usd: float
    used_quota: int = 0
    request_count: int = 0

    @property
    def quota(self) -> int:
        """Remaining quota units (new-api's ``quota``)."""
        return round(self.hard_limit_usd * QUOTA_PER_USD) - self.used_quota


@dataclass(slots=True)
class RelayKey:
    user: RelayUser
    limiter: Limiter | None
    remain_quota: int | None = None  # the key's own quota (new-api's remain_quota); None: unlimited
    used_quota: int = 0


@dataclass
class SandboxState:
    cfg: SandboxConfig
    clock: Callable[[], float] = time.monotonic
    momo: dict[str, MomoAccount] = field(init=False)
    relay: dict[str, RelayKey] = field(init=False)
    users: dict[str, RelayUser] = field(init=False)
    agents: dict[int, Agent] = field(init=False)
    faults: FaultPicker = field(init=False)
    labeller: Labeller = field(init=False)
    log: RequestLog = field(init=False)

    def __post_init__(self) -> None:
        cfg, window, algorithm = self.cfg, self.cfg.window_seconds, self.cfg.algorithm
        self.momo = {key: MomoAccount(k.tier, k.balance, dict(k.packages),
                                      make_limiter(algorithm, k.limit or TIER_LIMITS[k.tier],
                                                   k.window_seconds or window))
                     for key, k in cfg.keys.items()}
        self.users = {}
        self.relay = {}
        for key, rk in cfg.relay_keys.items():
            # A user's credit is the hard limit of its first key.
            user = self.users.setdefault(rk.user_id, RelayUser(rk.user_id, rk.hard_limit_usd))
            remain = None if rk.quota_usd is None else round(rk.quota_usd * QUOTA_PER_USD)
            self.relay[key] = RelayKey(user, make_limiter(algorithm, rk.rpm, rk.window_seconds or window), remain)
        self.agents = make_agents(cfg.agent_count)
        self.faults = FaultPicker(cfg.seed, cfg.faults)
        truth = Truth.read(cfg.label_truth) if cfg.label_truth is not None else None
        self.labeller = Labeller(cfg.seed, cfg.labellers, cfg.default_labeller, truth)
        self.log = RequestLog(cfg.request_log)
        self._seen: dict[tuple[str, str], int] = {}
        self._latency = random.Random(cfg.seed)

    def latency(self) -> float:
        """How long this call takes to answer, in seconds (``latency_ms``, jittered)."""
        jitter = self.cfg.latency_jitter
        spread = self._latency.uniform(1 - jitter, 1 + jitter) if jitter else 1.0
        return self.cfg.latency_ms / 1000 * spread

    def seen(self, key_fp: str, subject: str) -> int:
        """Count one more request of this key for this subject (prompt hash or path); returns n."""
        pair = (key_fp, subject)
        n = self._seen.get(pair, 0) + 1
        self._seen[pair] = n
        return n

    @staticmethod
    def quote(account: MomoAccount, agent: Agent, tokens: int) -> Charge:
        """The package tokens and money a call of ``tokens`` would use (nothing is changed)."""
        package_tokens = min(account.packages.get(agent.id, 0), tokens)
        cost = round(agent.price_per_1k_tokens * (tokens - package_tokens) / 1000, 6)
        return Charge(package_tokens, cost)

    @staticmethod
    def apply(account: MomoAccount, agent: Agent, charge: Charge) -> None:
        if charge.package_tokens:
            account.packages[agent.id] -= charge.package_tokens
        # Costs are whole micro-yuan: rounding keeps the balance free of float drift.
        account.balance = round(account.balance - charge.cost, 6)
