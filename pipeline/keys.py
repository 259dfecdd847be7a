"""Content keys: a hash of everything that decides an answer.

A *request key* covers the service, its base URL, the agent or model, every request parameter
(temperature, max_tokens), the prompt as sent, and the call's slot in its row (vote k, re-ask j).
A *row key* is the key of a row's first call, extended by the task's own settings (a label job's
label set, votes, ...): two rows with the same row key ask the same thing and share one answer.
With dedup off, the n-th repeat of a prompt gets a key of its own (``occurrence`` n), so each
repeat is an independent sample and still finds its own answer after the input is edited.

``stream`` is left out on purpose: it changes how an answer is delivered, not what it is.
blake2b at 128 bits: collisions are out of reach for any job, and keys stay short in the ledger.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Any

KEY_VERSION = 1  # bump when what a key covers changes: old ledgers then simply miss

# the plan's columns beside each input row (see :class:`pipeline.plan.Plan`)
KEY = "__key"  # the row's content key; null for a row whose prompt is null or empty
FIRST = "__first"  # the first row of the input asking this (later ones are duplicates)
OCC = "__occ"  # how many earlier rows ask the same (0 unless dedup is off)


@dataclass(frozen=True)
class Keyer:
    """Keys for one job against one endpoint."""

    service: str  # "momo" | "openai"
    endpoint: str  # base URL (or "sandbox")
    target: str  # agent id or model
    temperature: float | None
    max_tokens: int | None
    task: str = ""  # the task's settings, canonical JSON; "" for plain prompts
    _prefix: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        head = json.dumps([KEY_VERSION, self.service, self.endpoint, self.target, self.max_tokens])
        object.__setattr__(self, "_prefix", head.encode() + b"\0")

    def request(self, prompt: str, temperature: float | None, *, vote: int = 0, reask: int = 0,
                occurrence: int = 0) -> str:
        h = blake2b(self._prefix, digest_size=16)
        h.update(f"{temperature!r}|{vote}|{reask}\0".encode())
        h.update(prompt.encode("utf-8", "surrogatepass"))
        key = h.hexdigest()
        return key if occurrence == 0 else repeat_key(key, occurrence)

    def row(self, prompt: str) -> str:
        """The key of a row asking ``prompt`` (its first occurrence; see :func:`repeat_key`)."""
        key = self.request(prompt, self.temperature)
        return derive(key, self.task) if self.task else key


def derive(key: str, what: str) -> str:
    return blake2b(f"{key}\0{what}".encode(), digest_size=16).hexdigest()


def repeat_key(key: str, occurrence: int) -> str:
    """The key of the ``occurrence``-th repeat of a request (dedup off); 0 is the key itself."""
    return key if occurrence == 0 else derive(key, f"#{occurrence}")


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
