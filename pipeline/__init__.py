"""momo-batch: bulk prompt jobs against hosted LLM agent APIs.

The public surface (everything else is private and may change)::

    from pipeline import Job, run_job, run_frame, estimate, evaluate, open_provider, Credentials
    from pipeline import MomoClient, OpenAIClient, MomoProvider, OpenAIProvider
    from pipeline import MomoError, APIError, TransientError, TerminalError, ...
    from pipeline import MomoAI, AsyncMomoAI        # the client shape the MOMO docs show

``run_job`` runs a job file's rows into Parquet (resumable); ``run_frame`` does the same for a
polars DataFrame in a notebook; ``estimate`` says what a job will cost before it runs;
``evaluate`` measures a labelled output against a gold column. ``MomoAI`` / ``AsyncMomoAI`` call
one agent at a time, the way the MOMO documentation shows.
``pipeline.ray.run_job`` runs a job on Ray Data, with one rate limit, budget and ledger for all
its workers (the ``ray`` extra; not imported here).
"""

from __future__ import annotations

import importlib

from ._version import __version__ as __version__

# not ``from typing import TYPE_CHECKING``: typing takes ~10 ms to import, and a Ctrl-C in that
# window of ``python -m pipeline`` would be a traceback before the CLI's own handling (__main__)
TYPE_CHECKING = False

# Each public name, and the module it lives in. Loaded on first use (PEP 562): ``momo-batch
# --help`` and ``import pipeline.cli`` then do not pay for polars, pyarrow and httpx (0.45 s).
_EXPORTS = {
    "Job": ".config",
    "Connection": ".connect", "Credentials": ".connect", "open_provider": ".connect",
    **{name: ".errors" for name in (
        "AgentNotFound", "APIError", "BudgetExceeded", "ConfigError", "ConnectionLost", "InsufficientBalance",
        "Interrupted", "InvalidApiKey", "InvalidParameters", "KeyQuotaUsedUp", "MalformedResponse", "MomoError",
        "NoChannel", "PreflightRefused", "RateLimited", "ServerError", "TerminalError", "Terminated", "Timeout",
        "TransientError", "UpstreamSaturated", "WaitTooLong")},
    "Estimate": ".estimator", "estimate": ".job",
    "RunOptions": ".job", "run_frame": ".job", "run_job": ".job",
    "RunReport": ".outcome",
    "Evaluation": ".labels.metrics", "evaluate": ".labels.metrics",
    **{name: ".providers" for name in (
        "Account", "Agent", "CallResult", "MomoClient", "MomoProvider", "OpenAIClient", "OpenAIProvider",
        "Price", "PromptRequest", "Provider")},
    "AsyncMomoAI": ".sdk", "MomoAI": ".sdk",
}

__all__ = [
    "Account", "Agent", "AgentNotFound", "APIError", "AsyncMomoAI", "BudgetExceeded", "CallResult", "ConfigError",
    "Connection", "ConnectionLost", "Credentials", "Estimate", "Evaluation", "InsufficientBalance", "Interrupted",
    "InvalidApiKey", "InvalidParameters", "Job", "KeyQuotaUsedUp", "MalformedResponse", "MomoAI", "MomoClient",
    "MomoError", "MomoProvider", "NoChannel", "OpenAIClient", "OpenAIProvider", "PreflightRefused", "Price",
    "PromptRequest", "Provider", "RateLimited", "RunOptions", "RunReport", "ServerError", "TerminalError",
    "Terminated", "Timeout", "TransientError", "UpstreamSaturated", "WaitTooLong", "estimate", "evaluate",
    "open_provider", "run_frame", "run_job",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


if TYPE_CHECKING:  # what type checkers and editors see
    from typing import Any

    from .config import Job
    from .connect import Connection, Credentials, open_provider
    from .errors import (
        AgentNotFound,
        APIError,
        BudgetExceeded,
        ConfigError,
        ConnectionLost,
        InsufficientBalance,
        Interrupted,
        InvalidApiKey,
        InvalidParameters,
        KeyQuotaUsedUp,
        MalformedResponse,
        MomoError,
        NoChannel,
        PreflightRefused,
        RateLimited,
        ServerError,
        TerminalError,
        Terminated,
        Timeout,
        TransientError,
        UpstreamSaturated,
        WaitTooLong,
    )
    from .estimator import Estimate
    from .job import RunOptions, estimate, run_frame, run_job
    from .labels.metrics import Evaluation, evaluate
    from .outcome import RunReport
    from .providers import (
        Account,
        Agent,
        CallResult,
        MomoClient,
        MomoProvider,
        OpenAIClient,
        OpenAIProvider,
        Price,
        PromptRequest,
        Provider,
    )
    from .sdk import AsyncMomoAI, MomoAI
