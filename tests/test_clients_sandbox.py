"""Both clients against the sandbox over real HTTP: every endpoint, every error code, every stream variant."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from pipeline.errors import (
    AgentNotFound,
    ConnectionLost,
    InsufficientBalance,
    InvalidApiKey,
    InvalidParameters,
    MalformedResponse,
    RateLimited,
    ServerError,
    TerminalError,
    Timeout,
)
from pipeline.providers import MomoClient, OpenAIClient, OpenAIProvider
from pipeline.sandbox import FaultConfig, KeyConfig, RelayKeyConfig, Sandbox, SandboxConfig
from pipeline.sandbox.log import fingerprint

PRO, FREE = "momo-sandbox-pro", "momo-sandbox-free"
RELAY, TOKEN = "sk-sandbox-relay", "sandbox-system-token"


@pytest.fixture(scope="module")
def sb() -> Iterator[object]:
    keys = {PRO: KeyConfig(tier="enterprise", balance=1000.0, packages={159: 50_000}),
            FREE: KeyConfig(tier="free", balance=10.0, packages={}),
            "momo-poor": KeyConfig(tier="enterprise", balance=0.0001, packages={})}
    relay = {RELAY: RelayKeyConfig(user_id="1", hard_limit_usd=100.0),
             "sk-relay-limited": RelayKeyConfig(user_id="2", hard_limit_usd=100.0, rpm=2),
             "sk-relay-broke": RelayKeyConfig(user_id="3", hard_limit_usd=0.0)}
    cfg = SandboxConfig(keys=keys, relay_keys=relay, window_seconds=60.0)
    with Sandbox(cfg).running() as server:
        yield server


def momo(sb: object, key: str = PRO, timeout: float = 10.0) -> MomoClient:
    return MomoClient(key, sb.momo_url, timeout=timeout)  # type: ignore[attr-defined]


def relay(sb: object, key: str = RELAY) -> OpenAIClient:
    return OpenAIClient(key, sb.relay_url, access_token=TOKEN, user_id="1", timeout=10)  # type: ignore[attr-defined]


# -- MOMO ----------------------------------------------------------------------------------------
async def test_agents_walk_every_page(sb: object) -> None:
    async with momo(sb) as c:
        first, total = await c.agents_page(1, 20)
        every = await c.list_agents(page_size=20)
    assert total > 20 and len(first) == 20
    assert len(every) == total == len({a.id for a in every})
    assert {159, 301} <= {a.id for a in every}


async def test_call_and_stream_agree_and_balance_moves(sb: object) -> None:
    async with momo(sb) as c:
        before = await c.balance()
        plain = await c.call(159, "What is 2+2?", max_tokens=300)
        streamed = await c.call_streaming(159, "What is 2+2?", max_tokens=300)
        after = await c.balance()
    assert plain.content == streamed.content and plain.tokens_used == streamed.tokens_used
    assert plain.request_id and plain.request_id.startswith("req_")
    used = before.packages[159] - after.packages[159]
    assert used == plain.tokens_used + streamed.tokens_used  # the prepaid package is used first
    assert plain.cost == 0 and after.remaining == before.remaining and after.currency == "CNY"


async def test_momo_error_codes(sb: object) -> None:
    async with momo(sb, "momo-not-a-key") as c:
        with pytest.raises(InvalidApiKey):
            await c.call(159, "hi")
        with pytest.raises(InvalidApiKey):
            await c.balance()
    async with momo(sb) as c:
        with pytest.raises(AgentNotFound):
            await c.call(999_999, "hi")
        for bad in ({"temperature": 2.0}, {"max_tokens": 0}):
            with pytest.raises(InvalidParameters):
                await c.call(159, "hi", **bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidParameters):
            await c.call(159, "")
    async with momo(sb, "momo-poor") as c:
        with pytest.raises(InsufficientBalance) as info:
            await c.call(159, "a question that costs more than the balance")
    assert info.value.status == 402 and "当前余额" in (info.value.details or "")


async def test_rate_limit_with_retry_after(sb: object) -> None:
    async with momo(sb, FREE) as c:
        for i in range(10):
            await c.call(159, f"q{i}")
        with pytest.raises(RateLimited) as info:
            await c.call(159, "one too many")
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 60
    assert info.value.status == 429


# -- relay ---------------------------------------------------------------------------------------
async def test_relay_endpoints(sb: object) -> None:
    async with relay(sb) as c:
        models = await c.models()
        me0 = await c.user_self()
        bill0 = await c.billing()
        res = await c.chat("gpt-4o-mini", [{"role": "user", "content": "Hello there"}], max_tokens=100)
        streamed = await c.chat_streaming("gpt-4o-mini", [{"role": "user", "content": "Hello there"}],
                                          max_tokens=100)
        no_usage = [x async for x in c.chat_stream("gpt-4o-mini", [{"role": "user", "content": "Hi"}],
                                                   include_usage=False)]
        me1 = await c.user_self()
        bill1 = await c.billing()
    assert "gpt-4o-mini" in models
    assert res.usage is not None and streamed.usage is not None
    assert res.content == streamed.content and res.usage.total_tokens == streamed.usage.total_tokens
    assert not any(type(x).__name__ == "Usage" for x in no_usage)
    assert me1.quota < me0.quota and me1.used_quota > me0.used_quota
    assert me0.quota + me0.used_quota == me1.quota + me1.used_quota
    assert bill1.used_usd > bill0.used_usd
    assert bill1.remaining_usd == pytest.approx(me1.remaining_usd, abs=0.01)


async def test_relay_provider_account_prefers_user_self(sb: object) -> None:
    provider = OpenAIProvider(relay(sb), "gpt-4o-mini", prompt_price_per_million=0.15,
                              completion_price_per_million=0.6)
    acct = await provider.account()
    await provider.aclose()
    assert acct.currency == "USD" and acct.remaining is not None and 0 < acct.remaining <= 100
    assert "quota" in acct.raw


async def test_relay_error_shapes(sb: object) -> None:
    async with relay(sb, "sk-not-a-key") as c:
        with pytest.raises(InvalidApiKey):
            await c.chat("gpt-4o-mini", [{"role": "user", "content": "x"}])
        # HTTP 200 with an error body and no code is still an error: transient, by the one table
        with pytest.raises(ServerError) as info:
            await c.billing()
        assert info.value.status == 200
    async with relay(sb) as c:
        with pytest.raises(AgentNotFound):
            await c.chat("no-such-model", [{"role": "user", "content": "x"}])
    async with relay(sb, "sk-relay-broke") as c:
        with pytest.raises(InsufficientBalance):
            await c.chat("gpt-4o-mini", [{"role": "user", "content": "x"}])
    async with relay(sb, "sk-relay-limited") as c:
        await c.chat("gpt-4o-mini", [{"role": "user", "content": "1"}])
        await c.chat("gpt-4o-mini", [{"role": "user", "content": "2"}])
        with pytest.raises(RateLimited) as limited:
            await c.chat("gpt-4o-mini", [{"role": "user", "content": "3"}])
        assert limited.value.retry_after is None  # an empty 429, no Retry-After
    async with OpenAIClient(RELAY, sb.relay_url, access_token="wrong", user_id="1") as c:  # type: ignore[attr-defined]
        with pytest.raises(TerminalError) as bad_self:  # {"success": false, "message": ...} with HTTP 200
            await c.user_self()
        assert bad_self.value.status == 200


# -- faults: each one, over real sockets ---------------------------------------------------------
FAULTS: list[tuple[str, type[Exception]]] = [
    ("rate_limit", RateLimited),
    ("server_error", ServerError),
    ("bad_gateway_html", ServerError),
    ("reset", ConnectionLost),
    ("malformed", MalformedResponse),
    ("success_false", ServerError),
    ("hang", Timeout),
]


@pytest.fixture
def faulty() -> Iterator[object]:
    with Sandbox(SandboxConfig(hang_seconds=5.0)).running() as server:
        yield server


@pytest.mark.parametrize(("fault", "expected"), FAULTS)
async def test_each_fault_maps_to_its_error(faulty: object, fault: str, expected: type[Exception]) -> None:
    faulty.set_faults(FaultConfig(**{fault: 1.0}, max_faults_per_prompt=1))  # type: ignore[attr-defined]
    async with momo(faulty, timeout=0.5) as c:
        with pytest.raises(expected):
            await c.call(159, f"fault {fault}")
        ok = await c.call(159, f"fault {fault}")  # the fault budget for this prompt is spent
    assert ok.tokens_used


STREAMS = ["stream_split", "stream_crlf", "stream_keepalive"]


@pytest.mark.parametrize("variant", STREAMS)
async def test_stream_variants_parse(faulty: object, variant: str) -> None:
    async with momo(faulty) as c:
        clean = await c.call(159, f"stream {variant}")
    faulty.set_faults(FaultConfig(**{variant: 1.0}, max_faults_per_prompt=100))  # type: ignore[attr-defined]
    async with momo(faulty) as c:
        res = await c.call_streaming(159, f"stream {variant}")
    assert (res.content, res.tokens_used, res.cost_source) == (clean.content, clean.tokens_used, "server")


async def test_stream_failures(faulty: object) -> None:
    for variant, expected in (("stream_mid_error", ServerError), ("stream_drop", ConnectionLost)):
        faulty.set_faults(FaultConfig(**{variant: 1.0}, max_faults_per_prompt=100))  # type: ignore[attr-defined]
        async with momo(faulty) as c:
            with pytest.raises(expected):
                await c.call_streaming(159, f"stream {variant}")
    faulty.set_faults(FaultConfig(stream_no_summary=1.0, max_faults_per_prompt=100))  # type: ignore[attr-defined]
    async with momo(faulty) as c:
        res = await c.call_streaming(159, "no summary")
    assert res.content and (res.tokens_used, res.cost, res.cost_source) == (None, None, "unknown")


async def test_request_log_never_holds_a_key(sb: object) -> None:
    before = len(sb.records())  # type: ignore[attr-defined]
    async with momo(sb) as c:
        await c.call(159, "a call for the log")
    async with momo(sb, "momo-poor") as c:
        with pytest.raises(InsufficientBalance):
            await c.call(159, "a refused call for the log")
    async with relay(sb) as c:
        await c.chat("gpt-4o-mini", [{"role": "user", "content": "a relay call for the log"}])
        await c.user_self()
    records = sb.records()  # type: ignore[attr-defined]
    keys = (PRO, "momo-poor", RELAY, TOKEN)
    assert [r["key"] for r in records[before:]] == [fingerprint(k) for k in keys]  # each key was used
    text = json.dumps(records, ensure_ascii=False)
    assert not [k for k in keys if k in text]
