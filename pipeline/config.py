"""The job file: a TOML document validated once, at the edge, into a :class:`Job`.

Key names are the user-facing interface (see ``jobs/example.toml``); unknown keys are errors so
a typo never silently changes what a paid job does, and types are strict: ``concurrency = "16"``
or ``stream = "yes"`` is an error naming the key, not a guess (an integer is still a valid float).
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .labels.spec import LabelConfig

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_env_name(text: str) -> bool:
    """Whether ``text`` can be an environment variable's name (what a job file gives for a key)."""
    return _ENV_NAME.fullmatch(text) is not None


TIER_RPM: dict[str, float | None] = {"free": 10, "basic": 60, "pro": 300, "enterprise": None}


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


# TOML has no path type: a path is written as a string (or given as a Path from Python)
FilePath = Annotated[Path, Field(strict=False)]


class InputConfig(_Table):
    """The rows to run: one prompt per row."""

    path: FilePath = Field(description="The input file, `.csv` or `.parquet`; relative to the job file.")
    id_column: str | None = Field(None, description="A column the input must have (checked before any call); "
                                  "kept in the output like every input column.")
    batch_rows: int = Field(4096, gt=0, description="Rows read and written at a time (memory, not speed).")


class PromptConfig(_Table):
    """What is sent for each row: exactly one of `template` or `column`."""

    template: str | None = Field(None, description="A prompt with `{column}` placeholders, "
                                 "e.g. `\"Summarise: {review}\"`; a row with a null value is skipped.")
    column: str | None = Field(None, description="A column that holds each row's whole prompt.")

    @model_validator(mode="after")
    def _one_source(self) -> PromptConfig:
        if (self.template is None) == (self.column is None):
            raise ValueError("give exactly one of prompt.template or prompt.column")
        return self


class ProviderConfig(_Table):
    """The service that answers: MOMO's agent API, or an OpenAI-compatible relay."""

    kind: Literal["momo", "openai"] = Field("momo", description="`momo` (the MOMO agent API) or "
                                            "`openai` (any OpenAI-compatible relay).")
    base_url: str | None = Field(None, description="The API's base URL; `MOMO_BASE_URL` / `OPENAI_BASE_URL` "
                                 "and `--base-url` override it. None: `https://api.momoai.pro/v1` (momo), "
                                 "`https://api.moka-ai.com` (openai).")
    api_key_env: str | None = Field(None, description="The environment variable holding the key. "
                                    "None: `MOMO_API_KEY` (momo), `OPENAI_API_KEY` (openai).")
    agent_id: int | None = Field(None, description="The agent to call; required for `kind = \"momo\"`.")
    model: str | None = Field(None, description="The model to call; required for `kind = \"openai\"`.")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature, 0-2. "
                                      "None: the service's default.")
    max_tokens: int | None = Field(None, gt=0, description="Most tokens an answer may have; also the "
                                   "worst case the cap and the preflight count. None: the service's default.")
    stream: bool = Field(False, description="Receive answers as a stream (same output columns).")
    timeout: float = Field(60.0, gt=0, description="Seconds a whole call may take, connect to last byte.")
    # OpenAI-compatible relays do not report a per-call cost: the job gives the price table
    prompt_price_per_million: float | None = Field(None, ge=0, description="Relays: price of a million "
                                                   "prompt tokens (required for `openai`).")
    completion_price_per_million: float | None = Field(None, ge=0, description="Relays: price of a million "
                                                       "completion tokens (required for `openai`).")
    currency: str | None = Field(None, description="Relays: the currency of those prices. None: `USD`. "
                                 "(MOMO reports its own.)")
    # relay /api/user/self, for balance reads and reconciliation
    access_token_env: str | None = Field(None, description="Relays: the variable holding the system "
                                         "token for `/api/user/self` quota reads. None: `RELAY_ACCESS_TOKEN`.")
    user_id: str | None = Field(None, description="Relays: the user id for `/api/user/self` "
                                "(`RELAY_USER_ID` wins).")

    @field_validator("api_key_env", "access_token_env")
    @classmethod
    def _env_name(cls, name: str | None) -> str | None:
        if name is not None and not is_env_name(name):
            # a key pasted where its variable's name goes: say so, and never show it (see _describe)
            raise ValueError("must be the name of an environment variable (letters, digits and _, not "
                             "starting with a digit), not a key: set the key in that variable")
        return name

    @model_validator(mode="after")
    def _target(self) -> ProviderConfig:
        if self.kind == "momo" and self.agent_id is None:
            raise ValueError("provider.agent_id is required for kind = 'momo'")
        if self.kind == "openai" and not self.model:
            raise ValueError("provider.model is required for kind = 'openai'")
        return self

    @property
    def key_env(self) -> str:
        return self.api_key_env or ("MOMO_API_KEY" if self.kind == "momo" else "OPENAI_API_KEY")

    @property
    def target(self) -> str:
        return str(self.agent_id) if self.kind == "momo" else str(self.model)


class LimitsConfig(_Table):
    """How fast and how much."""

    tier: Literal["free", "basic", "pro", "enterprise"] = Field(
        "free", description="Your account's rate tier: `free` 10, `basic` 60, `pro` 300 requests a minute, "
        "`enterprise` no limit. Set it: the default is the slowest.")
    requests_per_minute: float | None = Field(None, gt=0, description="A rate of your own; wins over `tier`.")
    concurrency: int = Field(16, gt=0, le=4096, description="Calls in flight at once (1-4096).")
    max_attempts: int = Field(6, gt=0, description="Tries per call for transient errors (429s do not count).")
    max_cost: float | None = Field(None, ge=0, description="Hard cap on what the job spends, in the "
                                   "account's currency (`--max-cost` wins). None: no cap but the balance.")
    max_wait_seconds: float = Field(300.0, ge=0, description="The longest server-requested pause "
                                    "(Retry-After) the job waits out; a longer one stops it softly, "
                                    "resumable (exit 10).")
    # length of the rate window in seconds; only tests and benchmarks change it (scaled time)
    window_seconds: float = Field(60.0, gt=0, description="Length of the rate window in seconds; tests "
                                  "and benchmarks shorten it (scaled time).")

    @property
    def rate_per_window(self) -> float | None:
        """Allowed requests per window; ``None`` means unlimited (enterprise)."""
        return self.requests_per_minute if self.requests_per_minute else TIER_RPM[self.tier]

    @property
    def rate_source(self) -> str:
        """Where :attr:`rate_per_window` comes from, for a reader: the job's key or the default."""
        if self.requests_per_minute:
            return "limits.requests_per_minute in the job"
        if "tier" in self.model_fields_set:
            return f'limits.tier = "{self.tier}" in the job'
        return f'limits.tier not set: the default, "{self.tier}"'

    def describe_rate(self) -> str:
        """The rate a run assumes and why, e.g. ``300 requests/min (limits.tier = "pro" in the job)``."""
        rate = self.rate_per_window
        per = "min" if self.window_seconds == 60 else f"{self.window_seconds:g} s"
        shown = "no limit" if rate is None else f"{rate:g} requests/{per}"
        return f"{shown} ({self.rate_source})"


class OutputConfig(_Table):
    """Where results go."""

    path: FilePath = Field(description="The output Parquet; relative to the job file. Its ledger is "
                           "`<path>.ledger/` (`--output` wins, relative to where you run).")


class ReuseConfig(_Table):
    """What a job may reuse instead of paying again (answers kept in the ledger)."""

    # identical requests in one job are sent once; false: each repeat is an independent sample
    dedup: bool = Field(True, description="Send identical requests once (the other rows share the "
                        "answer); `false`: each repeat is an independent sample.")
    # a directory whose answers any job may reuse at no charge (``run --cache DIR``)
    cache: FilePath | None = Field(None, description="A directory of answers any job may reuse at "
                                   "no charge (`--cache` wins); relative to the job file. None: no cache.")


class Job(_Table):
    """A validated job file. :meth:`load` resolves relative paths against the job file's folder
    (as docker-compose and dbt do); :meth:`from_dict` leaves them to the working directory."""

    input: InputConfig
    prompt: PromptConfig
    provider: ProviderConfig
    limits: LimitsConfig = LimitsConfig()
    output: OutputConfig
    reuse: ReuseConfig = ReuseConfig()
    label: LabelConfig | None = None  # a label job: the ``[label]`` table (pipeline.labels.spec)
    source: str = Field("", exclude=True)  # the job file's text, for the provenance hash

    @model_validator(mode="after")
    def _escalation_target(self) -> Job:
        esc = self.label.escalate if self.label else None
        if esc is None:
            return self
        kind = self.provider.kind
        if (esc.agent_id is not None) != (kind == "momo"):
            wanted = "agent_id = ..." if kind == "momo" else "model = ... with its prices"
            raise ValueError(f"[label] escalate: a {kind} job escalates to {wanted}")
        if esc.target == self.provider.target:
            raise ValueError(f"[label] escalate: {esc.target} is the job's own target; escalate to a stronger one")
        return self

    @property
    def label_table(self) -> dict[str, Any] | None:
        """The ``[label]`` table as the job file wrote it (what request keys hash)."""
        return None if self.label is None else self.label.model_dump(by_alias=True, exclude_unset=True)

    @property
    def fingerprint(self) -> str:
        """sha256 of the job file text: ties an output to the job file that made it (provenance)."""
        return hashlib.sha256(self.source.encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "", origin: str = "job") -> Job:
        try:
            return cls.model_validate({**data, "source": source})
        except ValidationError as exc:
            raise ConfigError(f"{origin}: {_describe(exc)}") from None

    @classmethod
    def load(cls, path: str | Path) -> Job:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read job file ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: a job file is UTF-8 text; byte {exc.start + 1} is not "
                              f"(0x{exc.object[exc.start]:02x}: saved in another encoding?)") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        return cls.from_dict(data, source=text, origin=str(path)).relative_to(path.parent)

    def relative_to(self, folder: Path) -> Job:
        """A copy whose relative paths (input, output, cache) are taken from ``folder``."""
        def resolve(p: Path) -> Path:
            # normpath folds "jobs/../data" so that messages name the file plainly
            return p if p.is_absolute() else Path(os.path.normpath(folder / p))

        cache = self.reuse.cache
        return self.with_overrides(
            input=self.input.model_copy(update={"path": resolve(self.input.path)}),
            output=self.output.model_copy(update={"path": resolve(self.output.path)}),
            reuse=self.reuse.model_copy(update={"cache": None if cache is None else resolve(cache)}),
        )

    def with_overrides(self, **changes: Any) -> Job:
        """A copy with some tables replaced, e.g. ``output=OutputConfig(path=...)``, validated again."""
        try:
            return type(self).model_validate({**dict(self), **changes})
        except ValidationError as exc:
            raise ConfigError(f"job: {_describe(exc)}") from None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "job"
        given = err.get("input")
        shown = f" (got {given!r})" if isinstance(given, str | int | float | bool) else ""
        if isinstance(given, str) and _may_be_secret(err) and not is_env_name(given):
            shown = " (the value is not shown: it may be a key)"
        parts.append(f"{where}: {err['msg']}{shown}")
    return "; ".join(parts)


def _may_be_secret(err: Any) -> bool:
    """A value where a key's name goes (``*_env``), or under a key the job file does not know
    (``api_key = "..."``): it may be a key, so it is shown only when it is a plain name."""
    last = str(err["loc"][-1]) if err["loc"] else ""
    return last.endswith("_env") or err["type"] == "extra_forbidden"
