"""The cap holds when calls are charged but their answers are lost (reset or broken body after
the charge): what the account was charged, summed from the sandbox's own log, never exceeds
``max_cost``; with a balance endpoint the job still spends most of its cap."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from pipeline import RunOptions, run_job
from pipeline.providers.base import Account, Provider
from pipeline.sandbox import FaultConfig, KeyConfig, Sandbox, SandboxConfig

from .helpers import calls, momo_job, provider_for, questions

KEY = "momo-nopkg"
CAP = 0.1


class NoBalance:
    """The same provider, but its service does not report a balance."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name, self.target, self.endpoint = inner.name, inner.target, inner.endpoint

    async def complete(self, request):  # type: ignore[no-untyped-def]
        return await self.inner.complete(request)

    async def account(self) -> Account:
        return replace(await self.inner.account(), remaining=None)

    async def price(self):  # type: ignore[no-untyped-def]
        return await self.inner.price()

    def retarget(self, target: str, **prices: float | None) -> Provider:
        return self.inner.retarget(target, **prices)

    async def aclose(self) -> None:
        await self.inner.aclose()


def charged(records: list[dict[str, object]]) -> float:
    return sum(float(r["cost"]) for r in calls(records) if r["charged"])  # type: ignore[arg-type]


@pytest.mark.parametrize("balance", [True, False], ids=["balance-read", "balance-unknown"])
async def test_post_charge_faults_never_push_the_account_over_the_cap(tmp_path: Path, balance: bool) -> None:
    faults = FaultConfig(charged_reset=0.13, charged_malformed=0.12, max_faults_per_prompt=3)
    cfg = SandboxConfig(seed=7, faults=faults, keys={KEY: KeyConfig(tier="enterprise", balance=100.0, packages={})})
    with Sandbox(cfg).running() as sb:
        job = momo_job(questions(tmp_path / "q.csv", 300), tmp_path / "out.parquet", sb.momo_url, concurrency=8,
                       window_seconds=1.0, max_cost=CAP)
        provider = provider_for(job, KEY, sb.momo_url)
        provider = provider if balance else NoBalance(provider)
        try:
            report = await run_job(job, provider, yes=True, options=RunOptions(backoff=(0.01, 0.05)))
        finally:
            await provider.aclose()
        records = sb.records()
    lost = [r for r in calls(records) if r["fault"] in ("charged_reset", "charged_malformed")]
    assert len(lost) >= 0.15 * len(calls(records))  # the faults did strike, after charging
    assert report.exit_code == 4 and report.stop_code == "BUDGET_EXCEEDED"
    assert charged(records) <= CAP  # the account, by the server's own log
    if balance:  # the balance reads gave back what lost answers had not cost
        assert charged(records) >= 0.8 * CAP
        assert report.balance_reads is not None and report.balance_reads > 1
