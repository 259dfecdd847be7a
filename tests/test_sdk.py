"""MomoAI / AsyncMomoAI, the shape the MOMO docs show, against the sandbox over real HTTP."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline import (
    AgentNotFound,
    AsyncMomoAI,
    InsufficientBalance,
    InvalidApiKey,
    InvalidParameters,
    MomoAI,
    RateLimited,
    Timeout,
)
from pipeline.sandbox import FaultConfig, KeyConfig, Sandbox, SandboxConfig

PACKAGED = "momo-sdk-packaged"  # prepaid tokens for agent 159: calls cost 0
PAYING = "momo-sdk-paying"  # no package: every call is charged to the balance
POOR = "momo-sdk-poor"
FREE_SYNC, FREE_ASYNC = "momo-sdk-free-sync", "momo-sdk-free-async"  # 10 requests per minute each
NOT_A_KEY = "momo-not-a-key"
AGENTS = 45  # the sandbox's default catalogue


@pytest.fixture(scope="module")
def sb() -> Iterator[Sandbox]:
    keys = {PACKAGED: KeyConfig(tier="enterprise", balance=1000.0, packages={159: 50_000}),
            PAYING: KeyConfig(tier="enterprise", balance=1000.0, packages={}),
            POOR: KeyConfig(tier="enterprise", balance=0.0001, packages={}),
            FREE_SYNC: KeyConfig(tier="free"), FREE_ASYNC: KeyConfig(tier="free")}
    with Sandbox(SandboxConfig(keys=keys, agent_count=AGENTS)).running() as server:
        yield server


@pytest.fixture
def client(sb: Sandbox) -> Iterator[MomoAI]:
    with MomoAI(api_key=PACKAGED, base_url=sb.momo_url, timeout=10) as momo:
        yield momo


def agent_list_requests(sb: Sandbox) -> int:
    return sum(r["path"].endswith("/agents") for r in sb.records())


# -- sync ----------------------------------------------------------------------------------------
def test_call_returns_content_tokens_cost_and_request_id(sb: Sandbox) -> None:
    with MomoAI(api_key=PAYING, base_url=sb.momo_url, timeout=10) as momo:
        before = momo.account.balance()
        response = momo.agents.call(agent_id=159, prompt="Hello, World!", temperature=0.2, max_tokens=300)
        after = momo.account.balance()
    assert response.content.startswith("Answer to: Hello, World!")
    assert response.request_id and response.request_id.startswith("req_")
    assert response.tokens_used and response.tokens_used > 0
    assert response.cost and response.cost > 0
    assert before.remaining is not None and after.remaining is not None
    assert before.remaining - after.remaining == pytest.approx(response.cost)  # the cost is what was charged


def test_stream_gives_text_pieces_then_the_totals(client: MomoAI) -> None:
    plain = client.agents.call(agent_id=159, prompt="写一首诗", max_tokens=300)
    stream = client.agents.stream(agent_id=159, prompt="写一首诗", max_tokens=300)
    pieces = list(stream)
    totals = stream.final()
    assert len(pieces) > 1 and all(pieces)
    assert "".join(pieces) == totals.content == plain.content
    assert totals.tokens_used == plain.tokens_used and totals.cost == plain.cost == 0
    assert totals.request_id and totals.request_id.startswith("req_") and totals.cost_source == "server"


def test_final_reads_a_stream_that_was_not_iterated(client: MomoAI) -> None:
    with client.agents.stream(agent_id=159, prompt="Hello, World!") as stream:
        totals = stream.final()
    assert totals.content.startswith("Answer to: Hello, World!") and totals.tokens_used


def test_a_stream_left_early_is_closed_and_says_its_totals_are_unknown(client: MomoAI) -> None:
    stream = client.agents.stream(agent_id=159, prompt="A long answer, please", max_tokens=300)
    first = next(iter(stream))  # leaving the loop after one piece closes the stream
    totals = stream.final()
    assert totals.content == first
    assert (totals.tokens_used, totals.cost, totals.cost_source) == (None, None, "unknown")  # never invented
    assert client.agents.call(agent_id=159, prompt="still usable").content


def test_list_walks_every_page_lazily(sb: Sandbox, client: MomoAI) -> None:
    before = agent_list_requests(sb)
    first_page = list(itertools.islice(client.agents.list(page_size=20), 20))
    asked_for_first = agent_list_requests(sb) - before
    every = list(client.agents.list(page_size=20))
    asked_for_all = agent_list_requests(sb) - before - asked_for_first
    assert asked_for_first == 1 and len(first_page) == 20  # the second page was not fetched
    assert asked_for_all == 3 and len(every) == len({a.id for a in every}) == AGENTS
    by_id = {a.id: a for a in every}
    assert by_id[159].name == "gpt5.2" and by_id[159].price_per_1k_tokens == 0.01


def test_balance(client: MomoAI) -> None:
    account = client.account.balance()
    assert account.remaining == 1000.0 and account.currency == "CNY"
    assert 0 < account.packages[159] <= 50_000


def test_invalid_api_key(sb: Sandbox) -> None:
    with MomoAI(api_key=NOT_A_KEY, base_url=sb.momo_url) as momo:
        with pytest.raises(InvalidApiKey) as info:
            momo.agents.call(agent_id=159, prompt="hi")
        with pytest.raises(InvalidApiKey):
            momo.agents.stream(agent_id=159, prompt="hi").final()
        with pytest.raises(InvalidApiKey):
            next(momo.agents.list())
        with pytest.raises(InvalidApiKey):
            momo.account.balance()
    assert info.value.status == 401 and NOT_A_KEY not in str(info.value)


def test_agent_not_found(client: MomoAI) -> None:
    with pytest.raises(AgentNotFound) as info:
        client.agents.call(agent_id=999_999, prompt="hi")
    with pytest.raises(AgentNotFound):
        list(client.agents.stream(agent_id=999_999, prompt="hi"))
    assert info.value.status == 404


@pytest.mark.parametrize("bad", [{"temperature": 2.0}, {"max_tokens": 0}, {"prompt": ""}])
def test_invalid_parameters(client: MomoAI, bad: dict[str, object]) -> None:
    request: dict[str, object] = {"agent_id": 159, "prompt": "hi", **bad}
    with pytest.raises(InvalidParameters) as info:
        client.agents.call(**request)  # type: ignore[arg-type]
    assert info.value.status == 400


def test_insufficient_balance(sb: Sandbox) -> None:
    with MomoAI(api_key=POOR, base_url=sb.momo_url) as momo, pytest.raises(InsufficientBalance) as info:
        momo.agents.call(agent_id=159, prompt="a question that costs more than the balance")
    assert info.value.status == 402 and "当前余额" in (info.value.details or "")


def test_rate_limit(sb: Sandbox) -> None:
    with MomoAI(api_key=FREE_SYNC, base_url=sb.momo_url) as momo:
        for i in range(10):  # the free tier's whole minute
            momo.agents.call(agent_id=159, prompt=f"q{i}")
        with pytest.raises(RateLimited) as info:
            momo.agents.call(agent_id=159, prompt="one too many")
    assert info.value.status == 429 and info.value.retry_after is not None and 0 < info.value.retry_after <= 60


def test_one_client_serves_many_threads(client: MomoAI) -> None:
    prompts = [f"thread question {i}" for i in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda p: client.agents.call(agent_id=159, prompt=p).content, prompts))
    assert [a.splitlines()[0] for a in answers] == [f"Answer to: {p}" for p in prompts]


async def test_the_sync_client_works_inside_a_running_event_loop(client: MomoAI) -> None:
    # as in a notebook: the caller's thread already runs a loop; the client's loop is its own
    assert client.agents.call(agent_id=159, prompt="from a notebook").content


def test_close_stops_the_private_loop_and_refuses_more_calls(sb: Sandbox) -> None:
    before = set(threading.enumerate())
    momo = MomoAI(api_key=PACKAGED, base_url=sb.momo_url)
    assert not set(threading.enumerate()) - before  # the constructor starts nothing
    momo.account.balance()
    started = set(threading.enumerate()) - before
    momo.close()
    assert len(started) == 1 and not any(t.is_alive() for t in started)
    with pytest.raises(RuntimeError, match="closed"):
        momo.account.balance()
    assert repr(momo) == f"MomoAI(base_url={sb.momo_url!r})"  # no key


def test_a_client_dropped_without_close_stops_its_loop(sb: Sandbox) -> None:
    before = set(threading.enumerate())
    momo = MomoAI(api_key=PACKAGED, base_url=sb.momo_url)
    momo.account.balance()
    started = set(threading.enumerate()) - before
    del momo  # the last reference: CPython finalises it here
    assert len(started) == 1 and not any(t.is_alive() for t in started)


def test_timeout_is_the_package_timeout() -> None:
    hanging = SandboxConfig(faults=FaultConfig(hang=1.0), hang_seconds=5.0)
    with Sandbox(hanging).running() as server:
        momo = MomoAI(api_key="momo-sandbox-pro", base_url=server.momo_url, timeout=0.2)
        with momo, pytest.raises(Timeout):
            momo.agents.call(agent_id=159, prompt="no answer in time")


# -- async ---------------------------------------------------------------------------------------
async def test_async_call_stream_list_and_balance(sb: Sandbox) -> None:
    async with AsyncMomoAI(api_key=PACKAGED, base_url=sb.momo_url, timeout=10) as momo:
        plain = await momo.agents.call(agent_id=159, prompt="Hello async", max_tokens=300)
        async with momo.agents.stream(agent_id=159, prompt="Hello async", max_tokens=300) as stream:
            pieces = [piece async for piece in stream]
            totals = await stream.final()
        every = [agent async for agent in momo.agents.list(page_size=20)]
        account = await momo.account.balance()
    assert "".join(pieces) == totals.content == plain.content and len(pieces) > 1
    assert totals.tokens_used == plain.tokens_used and totals.request_id != plain.request_id
    assert len({a.id for a in every}) == AGENTS
    assert account.currency == "CNY" and account.packages[159] < 50_000


async def test_async_client_raises_the_same_classes(sb: Sandbox) -> None:
    async with AsyncMomoAI(api_key=NOT_A_KEY, base_url=sb.momo_url) as momo:
        with pytest.raises(InvalidApiKey):
            await momo.agents.call(agent_id=159, prompt="hi")
        with pytest.raises(InvalidApiKey):
            await momo.agents.stream(agent_id=159, prompt="hi").final()
        with pytest.raises(InvalidApiKey):
            await momo.account.balance()
    async with AsyncMomoAI(api_key=PACKAGED, base_url=sb.momo_url) as momo:
        with pytest.raises(AgentNotFound):
            await momo.agents.call(agent_id=999_999, prompt="hi")
        with pytest.raises(InvalidParameters):
            await momo.agents.call(agent_id=159, prompt="hi", temperature=2.0)
    async with AsyncMomoAI(api_key=POOR, base_url=sb.momo_url) as momo:
        with pytest.raises(InsufficientBalance):
            await momo.agents.call(agent_id=159, prompt="a question that costs more than the balance")
    async with AsyncMomoAI(api_key=FREE_ASYNC, base_url=sb.momo_url) as momo:
        for i in range(10):
            await momo.agents.call(agent_id=159, prompt=f"q{i}")
        with pytest.raises(RateLimited):
            await momo.agents.call(agent_id=159, prompt="one too many")
