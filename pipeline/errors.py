"""One exception tree for everything momo-batch raises.

    MomoError
    ├── ConfigError                 bad job file, bad argument, bad input data (names file/column/row)
    ├── PreflightRefused            the worst case may not fit the balance or max_cost
    ├── BudgetExceeded              the next call's worst case does not fit what is left of max_cost
    ├── JobBusy                     another process holds the job's ledger (one writer per job)
    ├── WriteError                  the ledger or the output cannot be written (disk full, I/O error)
    └── APIError                    the service said no, or could not be understood
        ├── InvalidApiKey           401 INVALID_API_KEY          terminal: stop the job
        ├── AgentNotFound           404 AGENT_NOT_FOUND          terminal: stop the job (also model_not_found)
        ├── InsufficientBalance     402 INSUFFICIENT_BALANCE     stop sending, keep results, resumable
        ├── InvalidParameters       400 INVALID_PARAMETERS       fail this row, no retry
        └── TransientError          worth retrying
            ├── RateLimited         429 RATE_LIMIT               carries retry_after
            ├── ServerError         5xx
            ├── Timeout             no answer in time
            ├── ConnectionLost      reset, refused, stream dropped
            └── MalformedResponse   a body that is not the contract's JSON

Retry and stop decisions read the class (``TransientError`` or ``TerminalError``), never the
message text. No exception carries an API key: messages are built from server text that is
scrubbed by :func:`redact` before it is stored.
"""

from __future__ import annotations

import re

__all__ = [
    "MomoError",
    "ConfigError",
    "APIError",
    "TerminalError",
    "InvalidApiKey",
    "AgentNotFound",
    "InsufficientBalance",
    "InvalidParameters",
    "TransientError",
    "RateLimited",
    "ServerError",
    "Timeout",
    "ConnectionLost",
    "MalformedResponse",
    "BudgetExceeded",
    "PreflightRefused",
    "JobBusy",
    "WriteError",
    "redact",
]

# Bearer tokens and key-like strings (sk-..., long hex/base64 runs) are masked in any text we keep.
_SECRET = re.compile(r"(?i)(bearer\s+)\S+|\bsk-[A-Za-z0-9_\-]{6,}|\b[A-Za-z0-9_\-]{32,}\b")


def redact(text: str, *secrets: str | None) -> str:
    """Mask the given secrets and anything shaped like an API key in ``text``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _SECRET.sub(lambda m: (m.group(1) or "") + "***", text)


class MomoError(Exception):
    """Root of every error momo-batch raises on purpose."""


class ConfigError(MomoError):
    """A job file, argument or input dataset is wrong; the message says where."""


class PreflightRefused(MomoError):
    """``run``'s preflight: the worst case may not fit the balance or the cap (``--yes`` overrides)."""


class BudgetExceeded(MomoError):
    """The next call's worst case does not fit in what is left of ``max_cost``."""


class JobBusy(MomoError):
    """Another process is running this job (it holds the ledger's lock)."""


class WriteError(MomoError):
    """The ledger or the output could not be written: stop sending, keep what is recorded."""


class APIError(MomoError):
    """An error answered by (or about) a remote API call."""

    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        if code is not None:
            self.code = code
        self.details = details
        self.request_id = request_id

    def __str__(self) -> str:
        parts = [self.code or type(self).__name__]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        text = f"{' '.join(parts)}: {self.message}"
        return f"{text} ({self.details})" if self.details else text


class TerminalError(APIError):
    """Retrying cannot help."""


class InvalidApiKey(TerminalError):
    code = "INVALID_API_KEY"


class AgentNotFound(TerminalError):
    code = "AGENT_NOT_FOUND"


class InsufficientBalance(TerminalError):
    code = "INSUFFICIENT_BALANCE"


class InvalidParameters(TerminalError):
    code = "INVALID_PARAMETERS"


class TransientError(APIError):
    """Worth retrying with backoff."""


class RateLimited(TransientError):
    code = "RATE_LIMIT"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        remaining: int | None = None,
        reset: float | None = None,
        **kw: object,
    ) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after  # seconds, from Retry-After, when the server sent it
        self.remaining = remaining  # X-RateLimit-Remaining
        self.reset = reset  # X-RateLimit-Reset, seconds from now


class ServerError(TransientError):
    code = "SERVER_ERROR"


class Timeout(TransientError):
    code = "TIMEOUT"


class ConnectionLost(TransientError):
    code = "CONNECTION_LOST"


class MalformedResponse(TransientError):
    code = "MALFORMED_RESPONSE"
