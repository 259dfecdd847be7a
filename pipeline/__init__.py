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
"""

__version__ = "0.1.0"

from .config import Job
from .connect import Credentials, open_provider
from .errors import (
    AgentNotFound,
    APIError,
    BudgetExceeded,
    ConfigError,
    ConnectionLost,
    InsufficientBalance,
    InvalidApiKey,
    InvalidParameters,
    MalformedResponse,
    MomoError,
    PreflightRefused,
    RateLimited,
    ServerError,
    TerminalError,
    Timeout,
    TransientError,
)
from .estimate import Estimate, estimate
from .job import RunReport, run_frame, run_job
from .labels.metrics import Evaluation, evaluate
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

__all__ = [
    "Account", "Agent", "AgentNotFound", "APIError", "AsyncMomoAI", "BudgetExceeded", "CallResult", "ConfigError",
    "ConnectionLost", "Credentials", "Estimate", "Evaluation", "InsufficientBalance", "InvalidApiKey",
    "InvalidParameters", "Job", "MalformedResponse", "MomoAI", "MomoClient", "MomoError", "MomoProvider",
    "OpenAIClient", "OpenAIProvider",
    "PreflightRefused", "Price", "PromptRequest", "Provider", "RateLimited", "RunReport", "ServerError",
    "TerminalError", "Timeout", "TransientError", "estimate", "evaluate", "open_provider", "run_frame", "run_job",
]
