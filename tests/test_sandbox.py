"""The sandbox server over real HTTP: every MOMO and relay behaviour of the contract, faults, the log."""

from __future__ import annotations

import contextlib
import json
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import toktok

from pipeline.sandbox import RELAY_PRICES, FaultConfig, KeyConfig, RelayKeyConfig, Sandbox, SandboxConfig

PRO = "momo-sandbox-pro"
FREE = "momo-sandbox-free"
ENTERPRISE = "momo-sandbox-enterprise"
RELAY = "sk-sandbox-relay"
SYSTEM = "sandbox-system-token"


# Plain HTTP only: one TLS context for every client instead of loading the CA bundle each time (~20 ms).
_TLS = ssl.create_default_context()


def client(timeout: float = 5.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=timeout, verify=_TLS)


class FakeClock:
    """A clock the test moves by hand, so rate windows pass without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def serve(clock: FakeClock | None = None, **config: Any) -> Iterator[Sandbox]:
    sb = Sandbox(SandboxConfig(**config), clock=clock) if clock else Sandbox(SandboxConfig(**config))
    with sb.running():
        yield sb


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with serve(window_seconds=2.0) as server:
        yield server


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def call(sb: Sandbox, body: Any, key: str = PRO, agent: int | str = 159, **kw: Any) -> httpx.Response:
    async with client(kw.pop("timeout", 5.0)) as http:
        if isinstance(body, bytes):
            return await http.post(f"{sb.momo_url}/agents/{agent}", content=body, headers=auth(key))
        return await http.post(f"{sb.momo_url}/agents/{agent}", json=body, headers=auth(key))


async def get(url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async with client() as http:
        return await http.get(url, headers=headers)


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert body["success"] is False
    return body["error"]["code"]


def parse_sse(raw: bytes) -> list[Any]:
    """A tiny event-stream parser: ``data:`` payloads of each event (JSON decoded), comments dropped."""
    events = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].lstrip() for line in block.split("\n") if line.startswith("data:")]
        if data:
            text = "\n".join(data)
            events.append(text if text == "[DONE]" else json.loads(text))
    return events


async def stream(url: str, body: dict[str, Any], key: str) -> tuple[list[bytes], Exception | None]:
    """The raw chunks of a streamed reply as they arrived, and the error that ended it, if any."""
    chunks: list[bytes] = []
    async with client() as http:
        try:
            async with http.stream("POST", url, json=body, headers=auth(key)) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                async for chunk in response.aiter_raw():
                    chunks.append(chunk)
        except httpx.TransportError as exc:
            return chunks, exc
    return chunks, None


# -- MOMO: listing, balance, auth -------------------------------------------------------------------
async def test_pagination_walk_returns_every_agent(sb: Sandbox) -> None:
    agents, page = [], 1
    while True:
        r = await get(f"{sb.momo_url}/agents?page={page}&page_size=20", auth(PRO))
        data = r.json()["data"]
        assert data["total"] == 45 and data["page"] == page and data["page_size"] == 20
        if not data["agents"]:
            break
        agents += data["agents"]
        page += 1
    assert page == 4
    ids = [a["id"] for a in agents]
    assert len(ids) == len(set(ids)) == 45
    by_id = {a["id"]: a for a in agents}
    assert by_id[159]["name"] == "gpt5.2" and by_id[159]["price_per_1k_tokens"] == 0.01
    assert by_id[301]["name"] == "label-zh-en" and by_id[301]["price_per_1k_tokens"] == 0.002
    assert set(agents[0]) == {"id", "name", "description", "price_per_1k_tokens", "rating"}


@pytest.mark.parametrize("query", ["page_size=0", "page_size=101", "page_size=x", "page=0", "page=-1", "page=1_0",
                                   "page=%2B1"])
async def test_listing_rejects_bad_paging(sb: Sandbox, query: str) -> None:
    r = await get(f"{sb.momo_url}/agents?{query}", auth(PRO))
    assert r.status_code == 400 and error_code(r) == "INVALID_PARAMETERS"


async def test_balance_shape(sb: Sandbox) -> None:
    r = await get(f"{sb.momo_url}/account/balance", auth(PRO))
    assert r.json() == {"success": True, "data": {"balance": 1000.0, "currency": "CNY",
                                                  "agents": [{"agent_id": 159, "remaining_tokens": 50000}]}}


@pytest.mark.parametrize("headers", [{}, auth("momo-wrong"), {"Authorization": f"Basic {PRO}"}, {"Authorization": ""}])
async def test_bad_key_is_401_everywhere(sb: Sandbox, headers: dict[str, str]) -> None:
    async with client() as http:
        responses = [await http.get(f"{sb.momo_url}/agents", headers=headers),
                     await http.get(f"{sb.momo_url}/account/balance", headers=headers),
                     await http.post(f"{sb.momo_url}/agents/999", json={}, headers=headers)]
    for r in responses:
        assert r.status_code == 401 and error_code(r) == "INVALID_API_KEY"
        assert "momo-" not in r.text


@pytest.mark.parametrize("agent", [999, "abc", "1_59", "0x9f"])
async def test_unknown_agent_is_404_before_params(sb: Sandbox, agent: int | str) -> None:
    r = await call(sb, {"temperature": 7}, agent=agent)
    assert r.status_code == 404 and error_code(r) == "AGENT_NOT_FOUND"


@pytest.mark.parametrize("body", [
    b"not json", b"[1, 2]", {}, {"prompt": ""}, {"prompt": 5}, {"prompt": None},
    {"prompt": "x", "temperature": 1.5}, {"prompt": "x", "temperature": -0.1}, {"prompt": "x", "temperature": "hot"},
    {"prompt": "x", "temperature": True}, {"prompt": "x", "max_tokens": 0}, {"prompt": "x", "max_tokens": 5000},
    {"prompt": "x", "max_tokens": 1.5}, {"prompt": "x", "max_tokens": True}, {"prompt": "x", "stream": "yes"},
])
async def test_bad_params_are_400(sb: Sandbox, body: Any) -> None:
    r = await call(sb, body)
    assert r.status_code == 400 and error_code(r) == "INVALID_PARAMETERS"
    assert sb.balance(PRO) == 1000.0 and sb.packages(PRO) == {159: 50000}


async def test_call_answers_deterministically_and_ignores_unknown_fields(sb: Sandbox) -> None:
    body = {"prompt": "请解释什么是递归", "temperature": 0, "max_tokens": 25, "model": "ignored", "extra": [1]}
    first, second = (await call(sb, body)).json(), (await call(sb, body)).json()
    assert first["success"] is True
    data = first["data"]
    assert set(data) == {"id", "content", "tokens_used", "cost"} and data["id"].startswith("req_")
    assert data["content"] == second["data"]["content"] and data["content"].startswith("Answer to: 请解释什么是递归")
    prompt_tokens = toktok.batch_count(["请解释什么是递归"], "o200k_base")[0] + 7
    assert 20 <= data["tokens_used"] - prompt_tokens <= 25
    one = (await call(sb, {**body, "max_tokens": 1})).json()["data"]
    assert one["tokens_used"] == prompt_tokens + 1


# -- MOMO: money ---------------------------------------------------------------------------------------
async def test_package_is_used_before_money() -> None:
    keys = {"k": KeyConfig(tier="enterprise", balance=10.0, packages={159: 600})}
    with serve(keys=keys) as sb:
        package, balance, phases = 600, 10.0, []
        for i in range(12):
            data = (await call(sb, {"prompt": f"question {i}"}, key="k")).json()["data"]
            used = min(package, data["tokens_used"])
            assert data["cost"] == round(0.01 * (data["tokens_used"] - used) / 1000, 6)
            phases.append("free" if data["cost"] == 0 else "partial" if used else "paid")
            package, balance = package - used, round(balance - data["cost"], 6)
        assert phases[0] == "free" and phases[-1] == "paid"
        assert phases == sorted(phases, key=["free", "partial", "paid"].index)
        assert sb.packages("k") == {159: 0} and sb.balance("k") == balance


async def test_balance_runs_out_then_top_up() -> None:
    keys = {"k": KeyConfig(tier="enterprise", balance=1.0)}
    with serve(keys=keys) as sb:
        cost = (await call(sb, {"prompt": "price me"}, key="k")).json()["data"]["cost"]
        assert cost > 0 and sb.balance("k") == round(1.0 - cost, 6)
        sb.set_balance("k", cost / 2)
        r = await call(sb, {"prompt": "price me"}, key="k")
        assert r.status_code == 402 and error_code(r) == "INSUFFICIENT_BALANCE"
        assert r.json()["error"]["details"] == f"当前余额: {cost / 2:.2f} 元,本次请求需要: {cost:.4f} 元"
        assert sb.balance("k") == round(cost / 2, 6)
        sb.top_up("k", cost)
        assert (await call(sb, {"prompt": "price me"}, key="k")).status_code == 200
        assert sb.balance("k") == round(cost / 2, 6)
        assert [rec["charged"] for rec in sb.records()] == [True, False, True]


# -- MOMO: rate limits ---------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_log", "token_bucket"])
async def test_each_algorithm_admits_exactly_the_limit(algorithm: str) -> None:
    clock = FakeClock()
    with serve(clock, window_seconds=2.0, algorithm=algorithm) as sb:
        statuses, remaining = [], []
        for i in range(11):
            r = await call(sb, {"prompt": f"p{i}"}, key=FREE)
            statuses.append(r.status_code)
            remaining.append(r.headers["X-RateLimit-Remaining"])
        assert statuses == [200] * 10 + [429]
        assert remaining == [str(n) for n in range(9, -1, -1)] + ["0"]
        assert error_code(r) == "RATE_LIMIT" and r.headers["X-RateLimit-Limit"] == "10"
        assert 0.001 <= float(r.headers["Retry-After"]) <= 2.0
        assert float(r.headers["X-RateLimit-Reset"]) <= 2.0
        clock.now += 0.5 * float(r.headers["Retry-After"])  # not yet: rejected requests did not count
        assert (await call(sb, {"prompt": "early"}, key=FREE)).status_code == 429
        clock.now += float(r.headers["Retry-After"])
        assert (await call(sb, {"prompt": "again"}, key=FREE)).status_code == 200
        clock.now += 2.0
        assert [(await call(sb, {"prompt": "x"}, key=FREE)).status_code for _ in range(10)] == [200] * 10


async def test_a_key_can_count_in_its_own_window() -> None:
    """100 per 10 s where the server's "minute" is 60 s: Limit says 100, Reset says 10 s."""
    clock = FakeClock()
    with serve(clock, window_seconds=60.0, keys={"k": KeyConfig(limit=3, window_seconds=10.0)},
               relay_keys={"sk-k": RelayKeyConfig(rpm=2, window_seconds=10.0)}) as sb:
        first = [await call(sb, {"prompt": f"p{i}"}, key="k") for i in range(4)]
        assert [r.status_code for r in first] == [200, 200, 200, 429]
        assert first[0].headers["X-RateLimit-Limit"] == "3" and float(first[0].headers["X-RateLimit-Reset"]) <= 10.0
        relay = [(await chat(sb, key="sk-k")).status_code for _ in range(3)]
        assert relay == [200, 200, 429]
        clock.now += 10.0  # one of its windows, a sixth of the server's minute
        assert (await call(sb, {"prompt": "again"}, key="k")).status_code == 200
        assert (await chat(sb, key="sk-k")).status_code == 200


async def test_rate_headers_can_be_switched_off() -> None:
    with serve(FakeClock(), rate_headers=False) as sb:
        responses = [await call(sb, {"prompt": "x"}, key=FREE) for _ in range(11)]
    assert responses[-1].status_code == 429 and error_code(responses[-1]) == "RATE_LIMIT"
    for r in responses:
        assert not {"retry-after", "x-ratelimit-limit", "x-ratelimit-remaining"} & set(r.headers)


async def test_enterprise_is_unlimited(sb: Sandbox) -> None:
    responses = [await call(sb, {"prompt": "x"}, key=ENTERPRISE) for _ in range(40)]
    assert {r.status_code for r in responses} == {200}
    assert "x-ratelimit-limit" not in responses[0].headers


# -- MOMO: streams ---------------------------------------------------------------------------------------
async def stream_variant(fault: str | None) -> tuple[list[bytes], Exception | None, list[dict[str, Any]]]:
    with serve() as sb:
        if fault:
            sb.set_faults(FaultConfig(**{fault: 1.0}))
        chunks, error = await stream(f"{sb.momo_url}/agents/159", {"prompt": "写一首诗", "stream": True}, PRO)
        return chunks, error, sb.records()


def check_complete(events: list[Any], records: list[dict[str, Any]]) -> None:
    *deltas, summary, done = events
    assert len(deltas) >= 3 and all(set(d) == {"delta"} for d in deltas)
    assert "".join(d["delta"] for d in deltas).startswith("Answer to: 写一首诗")
    assert summary == {"done": True, "id": records[0]["request_id"], "tokens_used": records[0]["tokens_used"],
                       "cost": 0.0}
    assert done == "[DONE]"


@pytest.mark.parametrize("fault", [None, "stream_crlf", "stream_keepalive", "stream_split"])
async def test_stream_formats_all_deliver(fault: str | None) -> None:
    chunks, error, records = await stream_variant(fault)
    raw = b"".join(chunks)
    assert error is None
    check_complete(parse_sse(raw), records)
    assert records[0]["charged"] and records[0]["fault"] == fault and records[0]["stream"]
    if fault == "stream_crlf":
        assert b"\r\n\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    if fault == "stream_keepalive":
        assert raw.count(b": keep-alive") == len(parse_sse(raw)) - 1
    if fault == "stream_split":
        assert len(chunks) > 100  # one byte per write
    else:
        assert b"\r\n" not in raw or fault == "stream_crlf"


async def test_stream_mid_error() -> None:
    chunks, error, records = await stream_variant("stream_mid_error")
    *deltas, last = parse_sse(b"".join(chunks))
    assert error is None and deltas and all("delta" in d for d in deltas)
    assert last["error"]["code"] == "SERVER_ERROR"
    assert records[0]["charged"] and records[0]["fault"] == "stream_mid_error"


async def test_stream_drop() -> None:
    chunks, error, records = await stream_variant("stream_drop")
    events = parse_sse(b"".join(chunks))
    assert isinstance(error, httpx.RemoteProtocolError)
    assert events and all("delta" in e for e in events)
    assert records[0]["charged"] and records[0]["fault"] == "stream_drop"


async def test_stream_without_summary() -> None:
    chunks, error, records = await stream_variant("stream_no_summary")
    *deltas, done = parse_sse(b"".join(chunks))
    assert error is None and done == "[DONE]" and all("delta" in d for d in deltas)
    assert records[0]["charged"] and records[0]["fault"] == "stream_no_summary"


# -- MOMO: faults ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fault", "status"), [("rate_limit", 429), ("server_error", 500), ("success_false", 200)])
async def test_error_faults(fault: str, status: int) -> None:
    with serve(faults=FaultConfig(**{fault: 1.0})) as sb:
        r = await call(sb, {"prompt": "x"})
        assert r.status_code == status
        assert error_code(r) == {"rate_limit": "RATE_LIMIT"}.get(fault, "INTERNAL_ERROR")
        if fault == "rate_limit":
            assert float(r.headers["Retry-After"]) > 0
        assert sb.balance(PRO) == 1000.0 and sb.packages(PRO) == {159: 50000}
        assert sb.records()[0]["fault"] == fault and not sb.records()[0]["charged"]


async def test_bad_gateway_html_and_malformed() -> None:
    with serve(faults=FaultConfig(bad_gateway_html=1.0)) as sb:
        r = await call(sb, {"prompt": "x"})
        assert r.status_code == 502 and r.headers["content-type"].startswith("text/html") and "<html>" in r.text
        sb.set_faults(FaultConfig(malformed=1.0))
        r = await call(sb, {"prompt": "x"})
        assert r.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.text)
        assert [rec["charged"] for rec in sb.records()] == [False, False]


async def test_reset_drops_the_connection() -> None:
    with serve(faults=FaultConfig(reset=1.0)) as sb:
        with pytest.raises(httpx.ReadError):  # a TCP RST; a plain close would be RemoteProtocolError
            await call(sb, {"prompt": "x"})
        assert sb.records()[0]["fault"] == "reset" and sb.balance(PRO) == 1000.0


async def test_hang_outlasts_a_client_timeout_then_answers_504() -> None:
    with serve(faults=FaultConfig(hang=1.0), hang_seconds=0.2) as sb:
        with pytest.raises(httpx.ReadTimeout):
            await call(sb, {"prompt": "x"}, timeout=0.05)
        r = await call(sb, {"prompt": "x"})
        assert r.status_code == 504 and error_code(r) == "INTERNAL_ERROR"
        assert not any(rec["charged"] for rec in sb.records())


async def fault_sequence(seed: int, prompts: list[str]) -> list[str | None]:
    faults = FaultConfig(server_error=0.2, malformed=0.2, success_false=0.1)
    with serve(seed=seed, faults=faults) as sb:
        for prompt in prompts:
            await call(sb, {"prompt": prompt}, key=ENTERPRISE)
        return [rec["fault"] for rec in sb.records()]


async def test_faults_are_a_function_of_the_seed() -> None:
    prompts = [f"q{i % 7}" for i in range(30)]
    first = await fault_sequence(1, prompts)
    assert first == await fault_sequence(1, prompts)
    assert first != await fault_sequence(2, prompts)
    assert 0 < sum(f is not None for f in first) < 30


async def test_max_faults_per_prompt_lets_retries_converge() -> None:
    with serve(faults=FaultConfig(server_error=1.0, max_faults_per_prompt=3)) as sb:
        statuses = [(await call(sb, {"prompt": "retry me"})).status_code for _ in range(5)]
        assert statuses == [500, 500, 500, 200, 200]
        assert [rec["n"] for rec in sb.records()] == [1, 2, 3, 4, 5]
        assert (await call(sb, {"prompt": "another"})).status_code == 500


async def test_stream_faults_spare_plain_calls_and_apply_to_all() -> None:
    with serve(faults=FaultConfig(stream_drop=1.0)) as sb:
        assert (await call(sb, {"prompt": "x"})).status_code == 200
        assert sb.records()[0]["fault"] is None
        assert (await get(f"{sb.momo_url}/account/balance", auth(PRO))).status_code == 200
        sb.set_faults(FaultConfig(server_error=1.0, apply_to="all"))
        assert (await get(f"{sb.momo_url}/account/balance", auth(PRO))).status_code == 500


async def test_labelling_agent_answers_with_a_label(sb: Sandbox) -> None:
    prompt = "Product: 跑步鞋\nReview: 非常满意！尺码很标准。\nLabels: positive | negative | neutral"
    strict = f"{prompt}\n\nSTRICT: answer with exactly one of: positive | negative | neutral, and nothing else."
    assert (await call(sb, {"prompt": strict, "temperature": 0}, agent=301)).json()["data"]["content"] == "positive"
    sampled = {(await call(sb, {"prompt": prompt, "temperature": 1.0}, agent=301)).json()["data"]["content"]
               for _ in range(12)}
    assert len(sampled) > 1  # votes at temperature > 0 differ


# -- relay -------------------------------------------------------------------------------------------------
async def chat(sb: Sandbox, key: str = RELAY, **body: Any) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], **body}
    async with client() as http:
        return await http.post(f"{sb.relay_url}/v1/chat/completions", json=body, headers=auth(key))


async def test_relay_models_and_bad_key(sb: Sandbox) -> None:
    r = await get(f"{sb.relay_url}/v1/models", auth(RELAY))
    ids = [m["id"] for m in r.json()["data"]]
    assert r.json()["object"] == "list" and "gpt-4o-mini" in ids and set(ids) == set(RELAY_PRICES)
    r = await get(f"{sb.relay_url}/v1/models", auth("sk-wrong"))
    assert r.status_code == 401 and r.json()["error"]["type"] == "new_api_error" and r.json()["error"]["code"] == ""
    assert (await chat(sb, key="sk-wrong")).status_code == 401


async def test_relay_chat_charges_quota_by_the_price_table(sb: Sandbox) -> None:
    before = sb.relay_quota()
    body = (await chat(sb)).json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"]["role"] == "assistant" and body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == toktok.batch_count(["hello"], "o200k_base")[0] + 4 + 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    price = RELAY_PRICES["gpt-4o-mini"]
    usd = (usage["prompt_tokens"] * price.prompt + usage["completion_tokens"] * price.completion) / 1e6
    assert before - sb.relay_quota() == round(usd * 500000)
    assert sb.records()[0]["quota"] == round(usd * 500000)


@pytest.mark.parametrize("include_usage", [False, True])
async def test_relay_stream_usage_chunk_only_when_asked(sb: Sandbox, include_usage: bool) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": include_usage}}
    chunks, error = await stream(f"{sb.relay_url}/v1/chat/completions", body, RELAY)
    events = parse_sse(b"".join(chunks))
    assert error is None and events[-1] == "[DONE]"
    objects = events[:-1]
    assert all(e["object"] == "chat.completion.chunk" for e in objects)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in objects if e["choices"])
    assert text.startswith("Answer to: hi")
    usage = [e for e in objects if "usage" in e]
    if include_usage:
        assert len(usage) == 1 and usage[0]["choices"] == [] and usage[0] is objects[-1]
        assert usage[0]["usage"]["total_tokens"] == sb.records()[0]["tokens_used"]
    else:
        assert usage == []


@pytest.mark.parametrize("fault", ["stream_mid_error", "stream_no_summary", "stream_drop"])
async def test_relay_stream_faults(fault: str) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": True}}
    with serve(faults=FaultConfig(**{fault: 1.0})) as sb:
        chunks, error = await stream(f"{sb.relay_url}/v1/chat/completions", body, RELAY)
        assert sb.records()[0]["charged"] and sb.records()[0]["fault"] == fault
    events = parse_sse(b"".join(chunks))
    assert not any("usage" in e for e in events if isinstance(e, dict))
    if fault == "stream_mid_error":
        assert error is None and events[-1]["error"]["code"]
    elif fault == "stream_no_summary":
        assert error is None and events[-1] == "[DONE]"
    else:
        assert isinstance(error, httpx.RemoteProtocolError) and "[DONE]" not in events


async def test_relay_errors(sb: Sandbox) -> None:
    r = await chat(sb, model="no-such-model")
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_not_found"
    r = await chat(sb, messages="hello")
    assert r.status_code == 400


async def test_relay_rate_limit_is_an_empty_429() -> None:
    keys = {"sk-slow": RelayKeyConfig(rpm=2)}
    with serve(FakeClock(), relay_keys=keys) as sb:
        statuses = [(await chat(sb, key="sk-slow")).status_code for _ in range(2)]
        r = await chat(sb, key="sk-slow")
        assert statuses == [200, 200] and r.status_code == 429 and r.content == b""
        assert "retry-after" not in r.headers
        sb.set_faults(FaultConfig(rate_limit=1.0))
        sb2 = await chat(sb, key="sk-slow", messages=[{"role": "user", "content": "other"}])
        assert sb2.status_code == 429


async def test_relay_fault_429_has_an_empty_body(sb: Sandbox) -> None:
    sb.set_faults(FaultConfig(rate_limit=1.0))
    r = await chat(sb)
    assert r.status_code == 429 and r.content == b"" and "retry-after" not in r.headers


async def test_relay_quota_exhausted_is_403() -> None:
    with serve(relay_keys={"sk-poor": RelayKeyConfig(hard_limit_usd=0.00001)}) as sb:
        r = await chat(sb, key="sk-poor")
        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_user_quota"
        assert sb.relay_quota() == 5


async def test_relay_billing_endpoints(sb: Sandbox) -> None:
    await chat(sb)
    used = sb.records()[0]["quota"]
    sub = (await get(f"{sb.relay_url}/v1/dashboard/billing/subscription", auth(RELAY))).json()
    assert sub["object"] == "billing_subscription" and sub["hard_limit_usd"] == 100.0 and sub["has_payment_method"]
    usage = (await get(f"{sb.relay_url}/v1/dashboard/billing/usage", auth(RELAY))).json()
    assert usage["object"] == "list" and usage["total_usage"] == pytest.approx(used / 500000 * 100)
    for path in ("subscription", "usage"):
        r = await get(f"{sb.relay_url}/v1/dashboard/billing/{path}", auth("sk-wrong"))
        assert r.status_code == 200 and r.json()["error"]["type"] == "new_api_error"


async def test_relay_user_self(sb: Sandbox) -> None:
    await chat(sb)
    ok = (await get(f"{sb.relay_url}/api/user/self", {**auth(SYSTEM), "New-Api-User": "1"})).json()
    assert ok["success"] is True and ok["data"]["id"] == 1
    assert ok["data"]["quota"] == sb.relay_quota() == 100 * 500000 - ok["data"]["used_quota"]
    assert ok["data"]["request_count"] == 1
    for headers in ({**auth(SYSTEM)}, {**auth(SYSTEM), "New-Api-User": "2"}, {**auth(RELAY), "New-Api-User": "1"}):
        r = await get(f"{sb.relay_url}/api/user/self", headers)
        assert r.status_code == 200 and r.json()["success"] is False and r.json()["message"]


# -- log, config, entry point ------------------------------------------------------------------------------
async def test_log_never_holds_a_raw_key(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    with serve(request_log=path, faults=FaultConfig(server_error=0.5)) as sb:
        for key in (PRO, "momo-leaked-secret"):
            await call(sb, {"prompt": "x"}, key=key)
            await get(f"{sb.momo_url}/account/balance", auth(key))
        await chat(sb)
        await get(f"{sb.relay_url}/api/user/self", {**auth(SYSTEM), "New-Api-User": "1"})
        assert sb.wait_for_requests(6, timeout=5.0)
        records = sb.records()
    text = path.read_text()
    for secret in (PRO, "momo-leaked-secret", RELAY, SYSTEM):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines == records and len(lines) == 6
    assert all(re.fullmatch(r"[0-9a-f]{12}", rec["key"]) for rec in lines)
    assert {rec["api"] for rec in lines} == {"momo", "relay"}


async def test_latency_is_added_per_call() -> None:
    with serve(latency_ms=80) as sb:
        async with client() as http:
            response = await http.post(f"{sb.momo_url}/agents/159", json={"prompt": "slow"}, headers=auth(ENTERPRISE))
    assert response.status_code == 200 and response.elapsed.total_seconds() >= 0.08


def test_wait_for_requests_times_out(sb: Sandbox) -> None:
    assert sb.wait_for_requests(0) is True
    assert sb.wait_for_requests(1, timeout=0.01) is False


def test_config_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.toml"
    path.write_text('seed = 3\nwindow_seconds = 2.0\n[keys.k]\ntier = "free"\nbalance = 1.5\npackages = { 159 = 10 }\n'
                    '[faults]\nreset = 0.5\n')
    cfg = SandboxConfig.from_toml(path)
    assert cfg.seed == 3 and cfg.window_seconds == 2.0 and cfg.faults.reset == 0.5
    assert cfg.keys["k"].packages == {159: 10}
    dumped = SandboxConfig.model_validate({**cfg.model_dump(), "algorithm": "token_bucket"})  # as the CLI does
    assert dumped.keys == cfg.keys and dumped.algorithm == "token_bucket"
    with pytest.raises(ValueError, match="add up"):
        FaultConfig(reset=0.6, hang=0.6)


def test_module_entry_point_prints_its_url() -> None:
    command = [sys.executable, "-m", "pipeline.sandbox", "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # blocks until the server says it is listening
            match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            assert match, line
            assert httpx.get(f"{match.group(0)}/v1/models", headers=auth(RELAY)).status_code == 200
        finally:
            proc.terminate()
        assert proc.wait(timeout=10) == 0
