"""Seeded, reproducible fault choice.

A fault is a pure function of (seed, key fingerprint, prompt hash, n), where n counts how often
this key sent this prompt: the same run against the same seed sees the same faults, whatever
the interleaving of other prompts. After ``max_faults_per_prompt`` faults for one (key, prompt)
the request always succeeds, so a client that retries converges.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from .config import FAULT_NAMES, STREAM_FAULTS, FaultConfig

__all__ = ["FORMAT_VARIANTS", "FaultPicker", "reported", "told", "uniform"]

# Framings that still deliver and charge: they do not count towards ``max_faults_per_prompt``.
FORMAT_VARIANTS = frozenset({"stream_split", "stream_crlf", "stream_keepalive"})


def reported(fault: str | None, value: int | float) -> int | float:
    """What an answer says it used: ``value``, or the lie a lying fault tells about it (a negative
    number, or NaN, which the JSON encoder writes as ``NaN``)."""
    if fault == "negative_usage":
        return -1 - abs(value)
    if fault == "nan_usage":
        return math.nan
    return value


def told(fault: str | None, figures: dict[str, Any], *, nan: tuple[str, ...] | None = None) -> dict[str, Any]:
    """``figures`` as a lying answer reports them (see :func:`reported`); nested tables as they are.
    ``nan``: the only figures that ``nan_usage`` makes NaN (default: all of them)."""
    def lie(name: str, value: Any) -> Any:
        if not isinstance(value, int | float) or isinstance(value, bool):
            return value
        if fault == "nan_usage" and nan is not None and name not in nan:
            return value
        return reported(fault, value)

    return {name: lie(name, v) for name, v in figures.items()}


def uniform(*parts: object) -> float:
    """A uniform draw in [0, 1) from a hash of ``parts``."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


class FaultPicker:
    """Chooses the fault (or None) for one request and remembers faults per (key, prompt)."""

    def __init__(self, seed: int, faults: FaultConfig) -> None:
        self.seed = seed
        self.faults = faults
        self._given: dict[tuple[str, str], int] = {}
        self._refresh()

    def set_faults(self, faults: FaultConfig) -> None:
        self.faults = faults
        self._refresh()

    def _refresh(self) -> None:
        # Cumulative upper bounds in FAULT_NAMES order; zero-probability faults are left out.
        bounds, total = [], 0.0
        for name in FAULT_NAMES:
            p = getattr(self.faults, name)
            if p > 0:
                total += p
                bounds.append((total, name))
        self._bounds = bounds

    def choose(self, key_fp: str, subject: str, n: int, *, call: bool, stream: bool = False) -> str | None:
        """The fault for this request, or None.

        ``subject`` is the prompt hash of a call, or the path of any other request (faulted only
        with ``apply_to = "all"``); ``n`` counts how often this key sent this subject, from 1.
        """
        if not self._bounds or not (call or self.faults.apply_to == "all"):
            return None
        pair = (key_fp, subject)
        if self._given.get(pair, 0) >= self.faults.max_faults_per_prompt:
            return None
        fault = self._draw(uniform(self.seed, key_fp, subject, n), stream)
        if fault is not None and fault not in FORMAT_VARIANTS:
            self._given[pair] = self._given.get(pair, 0) + 1
        return fault

    def _draw(self, u: float, stream: bool) -> str | None:
        for bound, name in self._bounds:
            if u < bound:
                # A stream fault's share of the draw is "no fault" for a non-stream request.
                return name if stream or name not in STREAM_FAULTS else None
        return None
