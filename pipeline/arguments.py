"""The library's front door: each argument of ``run_job``, ``run_frame`` and ``estimate`` checked
as the CLI checks it, so a bad one is a :class:`~pipeline.errors.ConfigError` naming it, not an
``AttributeError`` from deep inside (or, for a cap of NaN, no cap at all).

Each check returns the value to use (a job file's path becomes its :class:`~pipeline.config.Job`).
"""

from __future__ import annotations

import math
import os
from typing import Any

from .config import Job
from .errors import ConfigError
from .providers.base import Provider

__all__ = ["check_frame", "check_job_argument", "check_limit", "check_max_cost", "check_price", "check_provider"]


def _shown(value: Any) -> str:
    """What was given, short: its type, and its value when that is a number or a short text."""
    if value is None:
        return "None"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return type(value).__name__
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def check_job_argument(job: Any, where: str = "run_job") -> Job:
    """A :class:`Job`, or the path of a job file (loaded here)."""
    if isinstance(job, Job):
        return job
    if isinstance(job, str | os.PathLike):
        return Job.load(os.fspath(job))
    raise ConfigError(f"{where}: job must be a Job or the path of a job file (got {_shown(job)})")


def check_provider(provider: Any, where: str = "run_job") -> Provider:
    """Something with the :class:`~pipeline.providers.base.Provider` methods (``open_provider`` makes one)."""
    if isinstance(provider, Provider):
        return provider
    raise ConfigError(f"{where}: provider must be a Provider, e.g. from pipeline.open_provider "
                      f"(got {_shown(provider)})")


def check_limit(limit: Any, where: str = "run_job") -> int | None:
    """``None`` (every row), or a whole number of rows ≥ 1, as ``--limit`` takes it."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"{where}: limit must be a whole number ≥ 1 (got {_shown(limit)})")
    return limit


def check_max_cost(max_cost: Any, where: str = "run_job") -> float | None:
    """``None`` (the job file's cap, if any), or a finite amount ≥ 0; 0 means nothing may be spent."""
    if max_cost is None:
        return None
    if (isinstance(max_cost, bool) or not isinstance(max_cost, int | float) or not math.isfinite(max_cost)
            or max_cost < 0):
        raise ConfigError(f"{where}: max_cost must be a finite amount ≥ 0 (got {_shown(max_cost)}); "
                          "0 means nothing may be spent, None no cap")
    return float(max_cost)


def check_price(price: Any, name: str, where: str = "OpenAIProvider") -> float:
    """A list price per million tokens: a finite amount ≥ 0 (as the job file's ``*_price_per_million``)."""
    if isinstance(price, bool) or not isinstance(price, int | float) or not math.isfinite(price) or price < 0:
        raise ConfigError(f"{where}: {name} must be a finite amount ≥ 0 (got {_shown(price)})")
    return float(price)


def check_frame(frame: Any, where: str = "run_frame") -> Any:
    """A polars ``DataFrame`` (a pandas one, a dict: convert it with ``polars.DataFrame(...)`` first)."""
    import polars as pl  # the front door of a notebook call: polars is loaded by then anyway

    if isinstance(frame, pl.DataFrame):
        return frame
    raise ConfigError(f"{where}: frame must be a polars DataFrame (got {_shown(frame)}); "
                      "convert it with polars.DataFrame(...) or polars.from_pandas(...)")
