"""Small builders shared by the tests that run jobs against the sandbox."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from pipeline import Credentials, Job, RunOptions, RunReport, open_provider, run_job
from pipeline.providers.base import Account, CallResult, Price, PromptRequest, Provider
from pipeline.sandbox.log import max_in_any_window  # noqa: F401  (tests import it from here)

ROOT = Path(__file__).resolve().parents[1]


def questions(path: Path, n: int, *, blank: Iterable[int] = ()) -> Path:
    """A CSV of ``n`` distinct questions (rows in ``blank`` have none)."""
    empty = set(blank)
    qs = [None if i in empty else f"Question {i}: what is {i} squared?" for i in range(n)]
    pl.DataFrame({"id": [f"q{i:04d}" for i in range(n)], "question": qs}).write_csv(path)
    return path


def momo_job(data: Path, out: Path, url: str, **limits: Any) -> Job:
    provider = limits.pop("provider", {})
    return Job.from_dict({
        "input": {"path": str(data), "id_column": "id"},
        "prompt": {"template": "{question}"},
        "provider": {"kind": "momo", "base_url": url, "agent_id": 159, "max_tokens": 300, **provider},
        "limits": {"tier": "enterprise", "concurrency": 16, **limits},
        "output": {"path": str(out)},
    })


def provider_for(job: Job, key: str, url: str) -> Provider:
    return open_provider(job.provider, Credentials(key), base_url=url, max_connections=job.limits.concurrency)


RUN_JOB_KEYWORDS = ("output", "limit", "restart", "max_cost", "yes")


async def run(job: Job, key: str, url: str, **kw: Any) -> RunReport:
    """``run_job`` with a provider for ``key`` at ``url``, closed afterwards; keywords that are not
    ``run_job``'s own go to its :class:`RunOptions`."""
    provider = provider_for(job, key, url)
    own = {k: kw.pop(k) for k in RUN_JOB_KEYWORDS if k in kw}
    try:
        return await run_job(job, provider, **own, options=RunOptions(**kw))
    finally:
        await provider.aclose()


def write_job_toml(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    """A job file from plain values (JSON scalars are valid TOML scalars)."""
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(*args: str, key: str | None = None, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m pipeline ARGS`` from the project root, with no key from outside but ``key`` / ``env``."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MOMO_", "OPENAI_", "RELAY_"))}
    if key:
        environ["MOMO_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
                          env={**environ, **env}, cwd=ROOT, timeout=timeout)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def calls(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Agent calls (and chat completions) in the sandbox's request log."""
    return [r for r in records if r.get("prompt_sha")]


def charged_per_prompt(records: list[dict[str, Any]]) -> Counter[str]:
    return Counter(r["prompt_sha"] for r in calls(records) if r.get("charged"))


def journaled_finals(ledger_root: Path) -> set[str]:
    """Keys with a final outcome in the ledger's journal files, read as plain lines (a JSON array,
    then a tab and the record), not through the ledger: only whole lines (a kill may cut the last)."""
    finals = set()
    for path in ledger_root.glob("journal-*.log"):
        for line in path.read_bytes().split(b"\n")[:-1]:
            write, key, state, *_ = json.loads(line.partition(b"\t")[0])
            if write == "outcome" and state == 2:
                finals.add(key)
    return finals


def posts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every call request, whatever its answer (refused ones have no prompt hash)."""
    return [r for r in records if r.get("method") == "POST"]


def relay_job(data: Path, out: Path, url: str, model: str = "gpt-4o-mini", **limits: Any) -> Job:
    """A relay (``kind = "openai"``) job priced as the sandbox charges."""
    from pipeline.sandbox import RELAY_PRICES

    provider = limits.pop("provider", {})
    price = RELAY_PRICES.get(model, RELAY_PRICES["gpt-4o-mini"])
    return Job.from_dict({
        "input": {"path": str(data), "id_column": "id"},
        "prompt": {"template": "{question}"},
        "provider": {"kind": "openai", "base_url": url, "model": model, "max_tokens": 200,
                     "prompt_price_per_million": price.prompt, "completion_price_per_million": price.completion,
                     **provider},
        "limits": {"tier": "enterprise", "concurrency": 16, **limits},
        "output": {"path": str(out)},
    })


class SendTimes:
    """A provider that notes the moment each call is handed to the wire: what the client sent, when.

    These are the instants the limiter controls. The server's arrival times add the machine's
    scheduling jitter on top, which a busy machine can push past the limiter's safety margin.
    """

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name, self.target, self.endpoint = inner.name, inner.target, inner.endpoint
        self.sent: list[float] = []

    def retarget(self, target: str, **prices: float | None) -> Provider:
        return self.inner.retarget(target, **prices)

    async def complete(self, request: PromptRequest) -> CallResult:
        self.sent.append(time.monotonic())
        return await self.inner.complete(request)

    async def account(self) -> Account:
        return await self.inner.account()

    async def price(self) -> Price:
        return await self.inner.price()

    async def aclose(self) -> None:
        await self.inner.aclose()
