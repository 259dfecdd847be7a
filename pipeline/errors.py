"""One exception tree for everything momo-batch raises, and what each error means for a job.

    MomoError                       action       exit
    ├── ConfigError                 stop now     2   bad job file, argument, key, input or output path
    ├── PreflightRefused            stop now     7   the worst case may not fit the balance or max_cost
    ├── BudgetExceeded              stop softly  4   the next call's worst case does not fit max_cost
    ├── JobBusy                     stop now     8   another process holds the job's ledger (one writer per job)
    ├── WriteError                  stop softly  9   the ledger or the output cannot be written (disk full)
    ├── Interrupted                 stop softly  130 Ctrl-C (a second one stops now)
    │   └── Terminated              stop softly  143 SIGTERM
    ├── WaitTooLong                 stop softly  10  the server asked to wait longer than limits.max_wait_seconds
    └── APIError                                     the service said no, or could not be understood
        ├── TerminalError                            retrying cannot help
        │   ├── InvalidApiKey       stop now     5   401 INVALID_API_KEY
        │   ├── AgentNotFound       stop now     5   404 AGENT_NOT_FOUND (also model_not_found)
        │   │   └── NoChannel       stop now     5   a relay's 503 "无可用渠道": no channel serves the model
        │   ├── NoSuchApi           stop now     6   a discovery endpoint is missing: wrong base URL
        │   ├── InsufficientBalance stop softly  3   402 INSUFFICIENT_BALANCE: keep results, resumable
        │   │   └── KeyQuotaUsedUp  stop softly  3   a relay's "该令牌额度已用尽" (401): the key's own quota is spent
        │   ├── InvalidParameters   fail the row 5   400 INVALID_PARAMETERS (context window too): final
        │   └── RequestRejected     fail the row 5   any other 4xx (409, 413, ...)
        └── TransientError          retry        6   worth retrying, then the row fails
            ├── RateLimited                          429 RATE_LIMIT, carries retry_after (and a relay's stated quota)
            ├── UpstreamSaturated                    a relay's 429 "上游负载已饱和": its upstream is busy, not our pace
            ├── ServerError                          5xx
            ├── Timeout                              no whole answer within provider.timeout
            ├── ConnectionLost                       reset, refused, stream dropped
            └── MalformedResponse                    a body that is not the contract's JSON

Each class carries its facts as class attributes, and nothing else keeps them: its :class:`Action`
(what the runner does with a row's error), its exit code (what the CLI exits with when the error
ends a command), ``final`` (a row that ends in it is finished: a rerun does not send it again) and
``may_have_been_charged`` (the request went out and no answer says it was not charged: its worst
case stays spent), and ``busy`` (the server is busy, the row is not at fault: retrying it does not
use up ``max_attempts``). Only the connection-level transient errors (timeout, connection lost,
malformed body) may have been charged; an error answer was not. :func:`classify` is the one table
from (HTTP status, error code, message) to a class, for both services: the message matters only
where new-api / one-api relays say with it what their code does not (a key's quota used up, no
channel, upstream saturation). Decisions read the class's attributes, never the message text. No
exception carries an API key: server text is scrubbed by :func:`redact`.

:class:`~pipeline.outcome.ExitCode` is the one table of exit codes; the README quotes
:data:`~pipeline.outcome.EXIT_MEANINGS` and a test keeps the two equal.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum

from .outcome import ExitCode

__all__ = [
    "Action",
    "check_secret",
    "APIError",
    "AgentNotFound",
    "BudgetExceeded",
    "ConfigError",
    "ConnectionLost",
    "InsufficientBalance",
    "Interrupted",
    "InvalidApiKey",
    "InvalidParameters",
    "JobBusy",
    "KeyQuotaUsedUp",
    "MalformedResponse",
    "MomoError",
    "NoChannel",
    "NoSuchApi",
    "PreflightRefused",
    "RateLimited",
    "RequestRejected",
    "ServerError",
    "TerminalError",
    "Terminated",
    "Timeout",
    "TransientError",
    "UpstreamSaturated",
    "WaitTooLong",
    "WriteError",
    "classify",
    "error_for",
    "exit_code_for",
    "redact",
    "request_id_in",
    "stated_quota",
]


class Action(StrEnum):
    """What the runner does when a call of a row raises this error."""

    RETRY = "retry"  # transient: the retry policy tries again; when it gives up, the row fails
    FAIL_ROW = "fail the row"  # record the error on this row, the job goes on
    STOP_SOFT = "stop softly"  # send nothing more, let calls in flight finish, keep everything
    STOP_NOW = "stop now"  # cancel the job at once


# -- redaction -------------------------------------------------------------------------------------
# Bearer tokens and key-like strings (sk-..., long hex/base64 runs) are masked in any text we keep.
_SECRET = re.compile(r"(?i)(bearer\s+)\S+|\bsk-[A-Za-z0-9_\-]{6,}|\b[A-Za-z0-9_\-]{32,}\b")
_PIECE = 8  # a server may echo part of a key (e.g. without its "sk-"): any 8 characters of it are masked


def redact(text: str, *secrets: str | None) -> str:
    """Mask the given secrets, any piece of 8+ characters of them, and anything shaped like a key."""
    masked = bytearray(len(text))
    for secret in secrets:
        if not secret:
            continue
        pieces = {secret} if len(secret) < _PIECE else {secret[i:i + _PIECE]
                                                         for i in range(len(secret) - _PIECE + 1)}
        for piece in pieces:
            start = text.find(piece)
            while start != -1:
                masked[start:start + len(piece)] = b"\x01" * len(piece)
                start = text.find(piece, start + 1)
    if any(masked):
        out, i = [], 0
        while i < len(text):
            if masked[i]:
                while i < len(text) and masked[i]:
                    i += 1
                out.append("***")
            else:
                out.append(text[i])
                i += 1
        text = "".join(out)
    return _SECRET.sub(lambda m: (m.group(1) or "") + "***", text)


# -- the tree --------------------------------------------------------------------------------------
class MomoError(Exception):
    """Root of every error momo-batch raises on purpose."""

    code: str = "ERROR"
    action: Action = Action.STOP_NOW
    exit_code: ExitCode = ExitCode.TERMINAL
    final: bool = False  # a row that ends in this error is finished: resuming would only fail it again
    # raised after a request may have gone out, with no answer saying it was not charged
    may_have_been_charged: bool = True
    busy: bool = False  # the server is busy, not the row at fault: its retries do not use up max_attempts


class ConfigError(MomoError):
    """A job file, argument, key, input dataset or output path is wrong; the message says where."""

    code = "BAD_INPUT"
    exit_code = ExitCode.BAD_INPUT


class PreflightRefused(MomoError):
    """``run``'s preflight: the worst case may not fit the balance or the cap (``--yes`` overrides)."""

    code = "PREFLIGHT_REFUSED"
    exit_code = ExitCode.REFUSED


class BudgetExceeded(MomoError):
    """The next call's worst case does not fit in what is left of ``max_cost``."""

    code = "BUDGET_EXCEEDED"
    action = Action.STOP_SOFT
    exit_code = ExitCode.BUDGET


class JobBusy(MomoError):
    """Another process is running this job (it holds the ledger's lock)."""

    code = "JOB_BUSY"
    exit_code = ExitCode.BUSY


class WriteError(MomoError):
    """The ledger or the output could not be written: stop sending, keep what is recorded."""

    code = "WRITE_FAILED"
    action = Action.STOP_SOFT
    exit_code = ExitCode.WRITE


class Interrupted(MomoError):
    """Ctrl-C: stop sending, let calls in flight finish and be recorded; run again to resume."""

    code = "INTERRUPTED"
    action = Action.STOP_SOFT
    exit_code = ExitCode.INTERRUPTED


class Terminated(Interrupted):
    """SIGTERM: as Ctrl-C."""

    code = "TERMINATED"
    exit_code = ExitCode.TERMINATED


class WaitTooLong(MomoError):
    """A server asked (``Retry-After``) for a pause longer than ``limits.max_wait_seconds``: the job
    stops softly, resumable, instead of sleeping for it silently."""

    code = "WAIT_TOO_LONG"
    action = Action.STOP_SOFT
    exit_code = ExitCode.WAIT


class APIError(MomoError):
    """An error answered by (or about) a remote API call.

    ``code`` is the contract's code (what the ``error_code`` column holds); ``server_code`` is the
    code the server sent, when it differs (``"context_length_exceeded"``, ``"400"``).
    """

    code = "API_ERROR"
    may_have_been_charged = False  # the server answered: an error answer is not charged

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: str | None = None,
        request_id: str | None = None,
        server_code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        if code is not None:
            self.code = code
        self.details = details
        self.request_id = request_id
        self.server_code = server_code if server_code != self.code else None

    def __str__(self) -> str:
        parts = [self.code]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.server_code:
            parts.append(f"({self.server_code})")
        text = f"{' '.join(parts)}: {self.message}"
        return f"{text} ({self.details})" if self.details else text


class TerminalError(APIError):
    """Retrying cannot help."""


class InvalidApiKey(TerminalError):
    code = "INVALID_API_KEY"


class AgentNotFound(TerminalError):
    code = "AGENT_NOT_FOUND"


class NoChannel(AgentNotFound):
    """A new-api / one-api relay has no channel serving the model in the key's group (503, new-api
    with code ``model_not_found``, one-api with none): no row can succeed, so the job stops instead
    of retrying every row. The message names the model and the group."""


class NoSuchApi(TerminalError):
    """A discovery endpoint (agents, models, balance, billing, user self) is not there: the base URL
    is wrong, or the server is not this API. The message names the URL."""

    code = "NO_SUCH_API"
    exit_code = ExitCode.UNREACHABLE


class InsufficientBalance(TerminalError):
    code = "INSUFFICIENT_BALANCE"
    action = Action.STOP_SOFT
    exit_code = ExitCode.INSUFFICIENT_BALANCE


class KeyQuotaUsedUp(InsufficientBalance):
    """A relay's key has used up its own quota (new-api answers every call with 401 ``[sk-ab***yz]
    该令牌额度已用尽``): money, not a bad key. Top up or raise the key's quota, then run again."""


class InvalidParameters(TerminalError):
    """The request itself is wrong (a bad field, a prompt over the context window): the row fails
    for good, and a rerun does not send it again (``final``)."""

    code = "INVALID_PARAMETERS"
    action = Action.FAIL_ROW
    final = True


class RequestRejected(TerminalError):
    """A 4xx the contract does not name (409, 413, ...): this row fails, the job goes on; a rerun
    tries the row again. The code is ``HTTP_<status>``."""

    code = "REQUEST_REJECTED"
    action = Action.FAIL_ROW

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 **kw: str | None) -> None:
        super().__init__(message, status=status, code=code or (f"HTTP_{status}" if status else None),
                         **kw)  # type: ignore[arg-type]


class TransientError(APIError):
    """Worth retrying with backoff."""

    action = Action.RETRY
    exit_code = ExitCode.UNREACHABLE


class RateLimited(TransientError):
    code = "RATE_LIMIT"
    busy = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        remaining: int | None = None,
        reset: float | None = None,
        stated: tuple[int, float, bool] | None = None,
        **kw: object,
    ) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after  # seconds, from Retry-After, when the server sent it
        self.remaining = remaining  # X-RateLimit-Remaining
        self.reset = reset  # X-RateLimit-Reset, seconds from now
        # (requests, minutes, refused calls count too) a relay's message states: new-api's
        # "N分钟内最多请求M次" is (M, N, False) from its success counter, (M, N, True) from its total one
        self.stated = stated if stated is not None else stated_quota(message)


class UpstreamSaturated(TransientError):
    """A relay's 429 saying its upstream is saturated (one-api, older new-api: any upstream 429
    becomes ``当前分组上游负载已饱和，请稍后再试``): back off this call, but it says nothing about the
    job's own pace, so the rate limiter does not slow down."""

    code = "UPSTREAM_SATURATED"
    busy = True


class ServerError(TransientError):
    code = "SERVER_ERROR"


class Timeout(TransientError):
    code = "TIMEOUT"
    may_have_been_charged = True  # the request went out and no whole answer came


class ConnectionLost(TransientError):
    code = "CONNECTION_LOST"
    may_have_been_charged = True  # the request went out and no whole answer came


class MalformedResponse(TransientError):
    code = "MALFORMED_RESPONSE"
    may_have_been_charged = True  # the request went out and no whole answer came


# -- classification ----------------------------------------------------------------------------------
# Error codes both services send (MOMO's upper-case contract codes, the relays' lower-case ones),
# compared case-insensitively. A code that is a number ("400", as LiteLLM sends it) or missing
# says nothing: the status decides.
CODE_ERRORS: dict[str, type[APIError]] = {
    "invalid_api_key": InvalidApiKey,
    "invalid_token": InvalidApiKey,
    "insufficient_balance": InsufficientBalance,
    "insufficient_user_quota": InsufficientBalance,
    "pre_consume_token_quota_failed": InsufficientBalance,
    "insufficient_quota": InsufficientBalance,
    "rate_limit": RateLimited,
    "rate_limit_exceeded": RateLimited,
    "agent_not_found": AgentNotFound,
    "model_not_found": AgentNotFound,
    "invalid_parameters": InvalidParameters,
    "invalid_request": InvalidParameters,
    "invalid_request_error": InvalidParameters,
    "context_length_exceeded": InvalidParameters,
    "string_above_max_length": InvalidParameters,
}

# What an HTTP status means when the code names nothing above.
STATUS_ERRORS: dict[int, type[APIError]] = {
    400: InvalidParameters,
    401: InvalidApiKey,
    402: InsufficientBalance,
    403: InvalidApiKey,
    404: AgentNotFound,
    408: Timeout,
    413: InvalidParameters,  # the request is too large: sending it again cannot help
    422: InvalidParameters,
    429: RateLimited,
}


# What new-api / one-api relays say only in their message (their code is empty, or says less):
# the text each sends, from their source, and the class it means.
MESSAGE_ERRORS: tuple[tuple[str, type[APIError]], ...] = (
    ("该令牌额度已用尽", KeyQuotaUsedUp),  # the key's own quota (new-api: 401 on every call)
    ("无可用渠道", NoChannel),  # new-api: 分组 G 下模型 M 无可用渠道; one-api: 当前分组 G 下对于模型 M 无可用渠道
    ("上游负载已饱和", UpstreamSaturated),  # one-api's rewrite of any upstream 429
)

# A code whose meaning depends on the status: OpenAI-style ``insufficient_quota`` sent with a 429
# is a relay's rate limit (its upstream's quota per minute), not the account's money.
CODE_STATUS_ERRORS: dict[tuple[str, int], type[APIError]] = {
    ("insufficient_quota", 429): RateLimited,
}


def classify(status: int | None, code: str | None, message: str | None = None) -> type[APIError]:
    """The error class for an error answer: a relay's telling message first, then its code (with
    the status where that changes it), then its HTTP status.

    Unknown 4xx fail their row (:class:`RequestRejected`); 5xx, and error bodies sent with a
    2xx status and no known code, are transient (:class:`ServerError`).
    """
    if message:
        said = next((cls for text, cls in MESSAGE_ERRORS if text in message), None)
        if said is not None:
            return said
    name = (code or "").strip().lower()
    if status is not None and (name, status) in CODE_STATUS_ERRORS:
        return CODE_STATUS_ERRORS[name, status]
    named = CODE_ERRORS.get(name)
    if named is not None:
        return named
    if status is not None:
        if status in STATUS_ERRORS:
            return STATUS_ERRORS[status]
        if 400 <= status < 500:
            return RequestRejected
    return ServerError


_STATED = re.compile(r"(\d+)\s*分钟内最多请求\s*(\d+)\s*次")
_REQUEST_ID = re.compile(r"\(request id: ([^)\s]+)\)\s*$")
_NO_CHANNEL = re.compile(r"分组\s*(\S+?)\s*下(?:对于)?模型\s*(\S+?)\s*无可用渠道")


def stated_quota(message: str | None) -> tuple[int, float, bool] | None:
    """``(requests, minutes, refused calls count too)`` from new-api's model rate limit message:
    ``1分钟内最多请求60次`` (its success counter) or ``总请求数限制：…包括失败次数`` (its total counter)."""
    text = message or ""
    found = _STATED.search(text)
    if found is None or int(found.group(2)) <= 0 or int(found.group(1)) <= 0:
        return None
    return int(found.group(2)), float(found.group(1)), "总请求数" in text


def request_id_in(message: str | None) -> str | None:
    """The id new-api / one-api append to every error message: ``… (request id: 2025…)``."""
    found = _REQUEST_ID.search(message or "")
    return found.group(1) if found else None


def relay_message(cls: type[APIError], message: str) -> str:
    """What a relay's own words mean, said first (the relay's text follows)."""
    if cls is KeyQuotaUsedUp:
        return f"the key's own quota on the relay is used up (raise it or top up, then run again): {message}"
    if cls is NoChannel:
        found = _NO_CHANNEL.search(message)
        what = (f"model {found.group(2)} in group {found.group(1)}" if found else "the model in the key's group")
        return f"no channel of the relay serves {what}: {message}"
    return message


def _classes() -> Iterator[type[MomoError]]:
    """Every class of the tree, each before its subclasses."""
    queue: list[type[MomoError]] = [MomoError]
    while queue:
        cls = queue.pop(0)
        yield cls
        queue.extend(cls.__subclasses__())


def error_class_for(code: str | None) -> type[MomoError]:
    """The most general class whose ``code`` this is (:class:`MomoError` for a code no class names):
    how a code that crossed a process (a Ray worker's stop) or a file finds its facts again."""
    return next((cls for cls in _classes() if cls.code == code), MomoError)


def exit_code_for(code: str | None) -> ExitCode:
    """The exit code of a run stopped by the error whose ``code`` this is."""
    return error_class_for(code).exit_code


def error_for(code: str, message: str) -> MomoError:
    """A stop that crossed a process (a Ray worker learns it as a code and a text): the text as it
    was said, with the facts of the class that ``code`` names."""
    cls = error_class_for(code)
    err = MomoError(message)
    err.code, err.action, err.exit_code = code, cls.action, cls.exit_code
    err.final, err.may_have_been_charged = cls.final, cls.may_have_been_charged
    return err


def server_code(raw: object) -> str | None:
    """The ``code`` a server sent, as text; ``None`` when missing or empty."""
    if raw is None or isinstance(raw, bool):
        return None
    text = str(raw).strip()
    return text or None


def check_secret(value: str, what: str) -> None:
    """A key sent in a header must be printable ASCII without spaces: say where it is not, never what it is."""
    bad = next(((i, ch) for i, ch in enumerate(value) if not "!" <= ch <= "~"), None)
    if bad is None:
        return
    i, ch = bad
    kind = ("a line break" if ch in "\r\n" else "a non-ASCII character" if ord(ch) > 127
            else "a space or control character")
    raise ConfigError(f"{what} contains {kind} at character {i + 1}; a key is printable ASCII "
                      "(look for a pasted line break, space or quote)")
