"""The job file: a TOML document validated once, at the edge, into a :class:`Job`.

Key names are the user-facing interface (see ``jobs/example.toml``); unknown keys are errors so
a typo never silently changes what a paid job does, and types are strict: ``concurrency = "16"``
or ``stream = "yes"`` is an error naming the key, not a guess (an integer is still a valid float).
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError
from .labels.spec import LabelConfig

TIER_RPM: dict[str, float | None] = {"free": 10, "basic": 60, "pro": 300, "enterprise": None}


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# TOML has no path type: a path is written as a string (or given as a Path from Python)
FilePath = Annotated[Path, Field(strict=False)]


class InputConfig(_Table):
    path: FilePath
    id_column: str | None = None
    batch_rows: int = Field(4096, gt=0)


class PromptConfig(_Table):
    template: str | None = None
    column: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PromptConfig:
        if (self.template is None) == (self.column is None):
            raise ValueError("give exactly one of prompt.template or prompt.column")
        return self


class ProviderConfig(_Table):
    kind: Literal["momo", "openai"] = "momo"
    base_url: str | None = None
    api_key_env: str | None = None
    agent_id: int | None = None
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, gt=0)
    stream: bool = False
    timeout: float = Field(60.0, gt=0)
    # OpenAI-compatible relays do not report a per-call cost: the job gives the price table
    prompt_price_per_million: float | None = Field(None, ge=0)
    completion_price_per_million: float | None = Field(None, ge=0)
    currency: str | None = None
    # relay /api/user/self, for balance reads and reconciliation
    access_token_env: str | None = None
    user_id: str | None = None

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
    tier: Literal["free", "basic", "pro", "enterprise"] = "free"
    requests_per_minute: float | None = Field(None, gt=0)
    concurrency: int = Field(16, gt=0, le=4096)
    max_attempts: int = Field(6, gt=0)
    max_cost: float | None = Field(None, ge=0)
    # length of the rate window in seconds; only tests and benchmarks change it (scaled time)
    window_seconds: float = Field(60.0, gt=0)

    @property
    def rate_per_window(self) -> float | None:
        """Allowed requests per window; ``None`` means unlimited (enterprise)."""
        return self.requests_per_minute if self.requests_per_minute else TIER_RPM[self.tier]


class OutputConfig(_Table):
    path: FilePath


class ReuseConfig(_Table):
    """What a job may reuse instead of paying again (see :mod:`pipeline.ledger`)."""

    # identical requests in one job are sent once; false: each repeat is an independent sample
    dedup: bool = True
    # a directory whose answers any job may reuse at no charge (``run --cache DIR``)
    cache: FilePath | None = None


class Job(_Table):
    """A validated job file. Relative paths are resolved against the project root (cwd)."""

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
        return cls.from_dict(data, source=text, origin=str(path))

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
        parts.append(f"{where}: {err['msg']}{shown}")
    return "; ".join(parts)
