"""Every error a real server gives, over real HTTP: each lands where its class says (retry, fail the
row, stop softly, stop now), with its exit code, on both services alike."""

from __future__ import annotations

import functools
import http.server
import io
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from rich.console import Console

from pipeline import Job
from pipeline.cli_run import _run
from pipeline.errors import NoSuchApi, ServerError
from pipeline.estimator import estimate
from pipeline.ledger import ledger_dir
from pipeline.providers.base import Account, CallResult, Price, PromptRequest, Provider
from pipeline.sandbox import FaultConfig, Sandbox, SandboxConfig

from .helpers import cli, momo_job, posts, provider_for, questions, relay_job, run, write_job_toml

MOMO_KEY = "momo-sandbox-enterprise"
RELAY_KEY = "sk-sandbox-relay"
RELAY_ENV = {"OPENAI_API_KEY": RELAY_KEY, "RELAY_ACCESS_TOKEN": "sandbox-system-token", "RELAY_USER_ID": "1"}
FAST = (0.001, 0.01)  # backoff: tests do not wait for real seconds


def job_for(kind: str, tmp: Path, sb: Sandbox, rows: int = 30, **kw: Any) -> tuple[Job, str, str]:
    data = questions(tmp / "q.csv", rows)
    if kind == "momo":
        return momo_job(data, tmp / "out.parquet", sb.momo_url, **kw), MOMO_KEY, sb.momo_url
    return relay_job(data, tmp / "out.parquet", sb.relay_url, **kw), RELAY_KEY, sb.relay_url


def job_file(job: Job, path: Path) -> Path:
    """``job`` written as the TOML file a user runs."""
    return write_job_toml(path, json.loads(job.model_dump_json(exclude={"source"}, exclude_none=True)))


def one_line_error(proc: Any) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return str(lines[0])


# -- fail the row ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["momo", "openai"])
async def test_an_unknown_4xx_fails_its_row_on_both_services(tmp_path: Path, kind: str) -> None:
    with Sandbox(SandboxConfig(faults=FaultConfig(conflict=0.3), seed=3)).running() as sb:
        job, key, url = job_for(kind, tmp_path, sb)
        report = await run(job, key, url, backoff=FAST)
        sent = len(posts(sb.records()))
    out = pl.read_parquet(tmp_path / "out.parquet")
    failed = out.filter(pl.col("error_code") == "HTTP_409")
    assert report.stop_code is None and report.exit_code == 1  # the job went on
    assert failed.height > 0 and failed["attempts"].to_list() == [1] * failed.height  # not retried
    assert out.filter(pl.col("status") == "ok").height == 30 - failed.height
    assert sent == 30


@pytest.mark.parametrize(("kind", "numeric_codes"), [("momo", False), ("openai", False), ("openai", True)])
async def test_a_context_window_400_fails_for_good_and_is_not_resent(tmp_path: Path, kind: str,
                                                                     numeric_codes: bool) -> None:
    """LiteLLM's ``"code": "400"`` and OpenAI's ``context_length_exceeded`` both become INVALID_PARAMETERS."""
    cfg = SandboxConfig(faults=FaultConfig(context_window=0.3, server_error=0.2), relay_numeric_codes=numeric_codes,
                        seed=5)
    with Sandbox(cfg).running() as sb:
        job, key, url = job_for(kind, tmp_path, sb)
        first = await run(job, key, url, backoff=FAST)
        sent = len(posts(sb.records()))
        second = await run(job, key, url, backoff=FAST)
        assert len(posts(sb.records())) == sent  # the rerun sends none of them again
    out = pl.read_parquet(tmp_path / "out.parquet")
    bad = out.filter(pl.col("status") == "error")
    assert first.exit_code == second.exit_code == 1 and second.stats.calls == 0
    assert bad.height > 0 and set(bad["error_code"]) == {"INVALID_PARAMETERS"}  # the contract's code
    assert out.filter(pl.col("status") == "ok").height == 30 - bad.height  # 5xx ("500") were retried


# -- stop now: no such API at this URL -------------------------------------------------------------
class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def web_server(tmp_path: Path) -> Iterator[str]:
    """A plain web server on 127.0.0.1 that serves a folder: one page at /v1/agents, 404 elsewhere."""
    root = tmp_path / "site"
    (root / "v1").mkdir(parents=True)
    (root / "index.html").write_text("<html><body>welcome</body></html>")
    (root / "v1" / "agents").write_text("<html><body>agents page</body></html>")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("case", ["momo without /v1", "momo at a web page", "relay at a web server"])
def test_a_wrong_base_url_is_no_such_api(tmp_path: Path, sandbox: Sandbox, web_server: str, case: str) -> None:
    kind = "momo" if case.startswith("momo") else "openai"
    url = {"momo without /v1": sandbox.url, "momo at a web page": web_server + "/v1",
           "relay at a web server": web_server}[case]
    job, _, _ = job_for(kind, tmp_path, sandbox)
    path = job_file(job, tmp_path / "job.toml")
    env = {"MOMO_API_KEY": MOMO_KEY} if kind == "momo" else RELAY_ENV
    for command in ("estimate", "run"):
        proc = cli(command, str(path), "--base-url", url, **env)
        line = one_line_error(proc)
        assert proc.returncode == 6, line
        assert url in line and "AGENT_NOT_FOUND" not in line
    assert not posts(sandbox.records()) and not ledger_dir(tmp_path / "out.parquet").exists()


@pytest.mark.parametrize("command", ["agents", "balance"])
def test_agents_and_balance_at_a_wrong_url(sandbox: Sandbox, command: str) -> None:
    proc = cli(command, "--base-url", sandbox.url, MOMO_API_KEY=MOMO_KEY)  # the sandbox without /v1
    line = one_line_error(proc)
    assert proc.returncode == 6 and sandbox.url in line and "NO_SUCH_API" in line


async def test_no_such_api_names_the_url(sandbox: Sandbox, tmp_path: Path) -> None:
    job, key, _ = job_for("momo", tmp_path, sandbox)
    provider = provider_for(job, key, sandbox.url)  # no /v1: the agents list is 404
    try:
        with pytest.raises(NoSuchApi) as info:
            await provider.price()
    finally:
        await provider.aclose()
    assert f"{sandbox.url}/agents" in str(info.value) and info.value.exit_code == 6


# -- a relay without billing or /api/user/self -----------------------------------------------------
BILLING = ["/v1/dashboard/billing/subscription", "/v1/dashboard/billing/usage"]


@pytest.mark.parametrize("missing", [["/api/user/self"], ["/api/user/self", *BILLING]])
def test_a_relay_without_balance_endpoints_still_runs(tmp_path: Path, missing: list[str]) -> None:
    with Sandbox(SandboxConfig(missing_endpoints=missing)).running() as sb:
        job, _, _ = job_for("openai", tmp_path, sb, rows=5)
        path = job_file(job, tmp_path / "job.toml")
        est_proc = cli("estimate", str(path), "--json", **RELAY_ENV)
        run_proc = cli("run", str(path), "--json", **RELAY_ENV)
    assert est_proc.returncode == 0, est_proc.stderr
    assert run_proc.returncode == 0, run_proc.stderr
    est = json.loads(est_proc.stdout.strip().splitlines()[-1])
    rec = json.loads(run_proc.stdout.strip().splitlines()[-1])["reconciliation"]
    if len(missing) == 1:  # billing answers instead of /api/user/self
        assert est["balance"] > 0 and "account_charged" in rec
        assert any("/api/user/self" in note for note in est["notes"])
    else:  # "balance unknown", and both say why
        assert est["balance"] is None and est["fits_balance"] is None
        assert any("balance unknown" in note and "billing" in note for note in est["notes"])
        assert "billing" in rec["balance_unknown"] and "account_charged" not in rec
        assert "balance unknown" in run_proc.stderr  # the run's warning


# -- a model the relay does not list ---------------------------------------------------------------
def test_an_unlisted_model_is_a_warning_and_the_first_call_decides(tmp_path: Path) -> None:
    with Sandbox(SandboxConfig(hidden_models=["gpt-4o-mini"])).running() as sb:
        job, _, _ = job_for("openai", tmp_path, sb, rows=5)
        path = job_file(job, tmp_path / "job.toml")
        served = cli("run", str(path), "--quiet", **RELAY_ENV)
        unknown = relay_job(tmp_path / "q.csv", tmp_path / "nine.parquet", sb.relay_url, model="gpt-9")
        nine = job_file(unknown, tmp_path / "nine.toml")
        refused = cli("run", str(nine), "--quiet", "--json", **RELAY_ENV)
        tried = [r for r in posts(sb.records()) if r["target"] == "gpt-9"]
    assert served.returncode == 0, served.stderr
    assert "warning" in served.stderr and "/v1/models" in served.stderr
    assert refused.returncode == 5, refused.stderr  # model_not_found on the first calls stops the job
    assert json.loads(refused.stdout.strip().splitlines()[-1])["stop_code"] == "AGENT_NOT_FOUND"
    assert 1 <= len(tried) <= unknown.limits.concurrency and not any(r["charged"] for r in tried)


# -- a balance read that fails after the run -------------------------------------------------------
class BalanceFailsAfterCalls:
    """A real provider whose balance read fails once a call was made (the service's billing went down)."""

    def __init__(self, inner: Provider) -> None:
        self.inner, self.name, self.target, self.endpoint = inner, inner.name, inner.target, inner.endpoint
        self.called = False

    async def complete(self, request: PromptRequest) -> CallResult:
        self.called = True
        return await self.inner.complete(request)

    async def account(self) -> Account:
        if self.called:
            raise ServerError("balance endpoint down", status=503)
        return await self.inner.account()

    async def price(self) -> Price:
        return await self.inner.price()

    def retarget(self, target: str, **prices: float | None) -> Provider:
        return self.inner.retarget(target, **prices)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_failed_balance_read_after_the_run_is_a_warning(tmp_path: Path, sandbox: Sandbox) -> None:
    job, key, url = job_for("momo", tmp_path, sandbox, rows=5)
    stderr = io.StringIO()
    provider = BalanceFailsAfterCalls(provider_for(job, key, url))
    report = await _run(job, provider, quiet=True, errors=Console(file=stderr), limit=None, restart=False,
                        max_cost=None, yes=False)
    assert report.exit_code == 0  # the rows decide
    assert pl.read_parquet(tmp_path / "out.parquet").height == 5
    assert "balance" in report.warnings[0] and "warning" in stderr.getvalue()
    assert report.reconciliation is not None and report.reconciliation.account_charged is None


# -- the deadline ----------------------------------------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", ["momo", "openai"])
async def test_timeout_bounds_the_whole_call(tmp_path: Path, kind: str, stream: bool) -> None:
    """A body that trickles a byte at a time never trips a per-read timeout; the call's deadline ends it."""
    cfg = SandboxConfig(faults=FaultConfig(trickle=1.0), hang_seconds=30.0)
    with Sandbox(cfg).running() as sb:
        job, key, url = job_for(kind, tmp_path, sb, rows=3, max_attempts=2,
                                provider={"timeout": 0.5, "stream": stream})
        started = time.monotonic()
        report = await run(job, key, url, backoff=FAST)
        elapsed = time.monotonic() - started
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out["error_code"].to_list() == ["TIMEOUT"] * 3 and out["attempts"].to_list() == [2] * 3
    assert report.exit_code == 1
    assert elapsed < 15  # each trickle lasts 30 s: only the deadline ends the calls this soon


# -- redaction -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["momo", "openai"])
async def test_a_key_the_server_echoes_is_never_kept(tmp_path: Path, kind: str) -> None:
    with Sandbox(SandboxConfig(faults=FaultConfig(echo_key=1.0))).running() as sb:
        job, key, url = job_for(kind, tmp_path, sb, rows=4)
        await run(job, key, url, backoff=FAST)
    echoed = key[3:]  # the key without "sk-" (or its first three characters)
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert set(out["error_code"]) == {"INVALID_PARAMETERS"} and "***" in out["error_message"][0]
    kept = out.select(pl.col(pl.String)).write_csv().encode()
    kept += b"".join(p.read_bytes() for p in ledger_dir(tmp_path / "out.parquet").iterdir())  # SQLite: plain text
    assert echoed[:8].encode() not in kept and echoed[-8:].encode() not in kept
    assert b"***" in kept


async def test_estimate_notes_say_why_the_balance_is_unknown(tmp_path: Path) -> None:
    with Sandbox(SandboxConfig(missing_endpoints=BILLING)).running() as sb:
        job, key, url = job_for("openai", tmp_path, sb, rows=3)
        provider = provider_for(job, key, url)
        try:
            est = await estimate(job, provider)
        finally:
            await provider.aclose()
    assert est.balance is None and any("balance unknown" in n for n in est.warnings)
