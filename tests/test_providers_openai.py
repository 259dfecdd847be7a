"""Relay client against httpx.MockTransport: chat, streams with usage, billing, quota, error shapes."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest

from pipeline.errors import (
    AgentNotFound,
    APIError,
    ConnectionLost,
    InsufficientBalance,
    InvalidApiKey,
    InvalidParameters,
    MalformedResponse,
    NoSuchApi,
    RateLimited,
    RequestRejected,
    ServerError,
    TerminalError,
)
from pipeline.providers import OpenAIClient, OpenAIProvider, PromptRequest

from .test_providers_momo import Chunks

KEY = "sk-relaysecret0123456789"
TOKEN = "system-access-token-abcdef0123456789"


def client(handler: Callable[[httpx.Request], httpx.Response], **kw: object) -> OpenAIClient:
    return OpenAIClient(KEY, "http://relay.test", timeout=5, transport=httpx.MockTransport(handler), **kw)


COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42,
                        "prompt_tokens_details": {"cached_tokens": 4}}}


def chunk(content: str | None = None, usage: dict[str, int] | None = None) -> str:
    body: dict[str, object] = {"id": "chatcmpl-2", "object": "chat.completion.chunk",
                               "choices": [] if usage else [{"index": 0, "delta": {"content": content}}]}
    if usage:
        body["usage"] = usage
    return "data: " + json.dumps(body) + "\n\n"


async def test_chat_reads_usage_and_accepts_a_v1_base_url() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=COMPLETION)

    async with OpenAIClient(KEY, "http://relay.test/v1", transport=httpx.MockTransport(handler)) as c:
        res = await c.chat("gpt-4o-mini", [{"role": "user", "content": "hi"}], max_tokens=50)
    assert res.content == "hello" and res.usage is not None
    assert (res.usage.prompt_tokens, res.usage.completion_tokens, res.usage.cached_tokens) == (12, 30, 4)
    assert seen[0].url.path == "/v1/chat/completions"
    assert json.loads(seen[0].content)["max_tokens"] == 50


async def test_stream_with_usage_chunk_split_at_every_byte() -> None:
    body = (chunk("he") + chunk("llo") + chunk(usage={"prompt_tokens": 5, "completion_tokens": 2,
                                                       "total_tokens": 7}) + "data: [DONE]\n\n").encode()
    seen: list[dict[str, object]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(json.loads(req.content))
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=Chunks([bytes([b]) for b in body]))

    async with client(handler) as c:
        res = await c.chat_streaming("gpt-4o-mini", [{"role": "user", "content": "hi"}])
    assert (res.content, res.id) == ("hello", "chatcmpl-2")
    assert res.usage is not None and res.usage.total_tokens == 7
    assert seen[0]["stream_options"] == {"include_usage": True}


async def test_stream_without_usage_leaves_cost_unknown() -> None:
    body = (chunk("a") + "data: [DONE]\n\n").encode()
    stream = lambda req: httpx.Response(200, headers={"content-type": "text/event-stream"},  # noqa: E731
                                        stream=Chunks([body]))
    provider = OpenAIProvider(client(stream), "gpt-4o-mini", prompt_price_per_million=0.15,
                              completion_price_per_million=0.6)
    res = await provider.complete(PromptRequest("hi", stream=True))
    assert (res.content, res.tokens_used, res.cost, res.cost_source) == ("a", None, None, "unknown")


async def test_stream_drop_is_connection_lost() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              stream=Chunks([chunk("a").encode()], fail=httpx.ReadError("reset")))

    async with client(handler) as c:
        with pytest.raises(ConnectionLost):
            await c.chat_streaming("m", [{"role": "user", "content": "x"}])


def relay_error(status: int, code: str | None = None, message: str = "nope") -> httpx.Response:
    err: dict[str, object] = {"message": message, "type": "new_api_error"}
    if code is not None:
        err["code"] = code
    return httpx.Response(status, json={"error": err})


@pytest.mark.parametrize(("response", "expected"), [
    (relay_error(401), InvalidApiKey),
    (relay_error(401, ""), InvalidApiKey),
    (relay_error(403, "insufficient_user_quota"), InsufficientBalance),
    (relay_error(429, "pre_consume_token_quota_failed"), InsufficientBalance),
    (httpx.Response(429), RateLimited),  # the relay's empty-body 429
    (relay_error(429), RateLimited),
    (relay_error(503, "model_not_found"), AgentNotFound),
    (relay_error(503), ServerError),
    (httpx.Response(502, html="<html>bad gateway</html>"), ServerError),
    (relay_error(400, "invalid_request_error"), InvalidParameters),
    (relay_error(409, "conflict"), RequestRejected),  # an unknown 4xx fails its row, like MOMO's
    (httpx.Response(200, text="{not json"), MalformedResponse),
    # LiteLLM sends the status as the code, as a string: the status decides
    (relay_error(400, "400", "This model's maximum context length is 128000 tokens"), InvalidParameters),
    (relay_error(429, "429"), RateLimited),
    (relay_error(401, "401"), InvalidApiKey),
    (relay_error(400, "context_length_exceeded"), InvalidParameters),
    (httpx.Response(404, json={"detail": "Not Found"}), NoSuchApi),  # not a relay at this URL
])
async def test_relay_errors_are_classified(response: httpx.Response, expected: type) -> None:
    async with client(lambda req: response) as c:
        with pytest.raises(expected) as info:
            await c.chat("gpt-4o-mini", [{"role": "user", "content": "hi"}])
    assert type(info.value) is expected


async def test_billing_combines_subscription_and_usage_in_cents() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/subscription"):
            return httpx.Response(200, json={"object": "billing_subscription", "hard_limit_usd": 100.0})
        return httpx.Response(200, json={"object": "list", "total_usage": 1234.5})

    provider = OpenAIProvider(client(handler), "m", prompt_price_per_million=1, completion_price_per_million=2)
    acct = await provider.account()
    assert acct.remaining == pytest.approx(100.0 - 12.345)
    assert acct.currency == "USD"


async def test_billing_error_with_http_200_is_an_error() -> None:
    async with client(lambda req: relay_error(200)) as c:
        with pytest.raises(APIError):
            await c.billing()
    provider = OpenAIProvider(client(lambda req: relay_error(200)), "m", prompt_price_per_million=1,
                              completion_price_per_million=2)
    account = await provider.account()
    assert account.remaining is None  # said as unknown, not invented
    assert account.note and "balance unknown" in account.note


async def test_user_self_sends_user_header_and_token() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json={"success": True, "message": "", "data": {
            "id": 1, "quota": 2_500_000, "used_quota": 500_000, "request_count": 9}})

    provider = OpenAIProvider(client(handler, access_token=TOKEN, user_id="1"), "m",
                              prompt_price_per_million=1, completion_price_per_million=2)
    acct = await provider.account()
    assert acct.remaining == 5.0 and acct.raw["used_quota"] == 500_000
    assert seen[0].headers["new-api-user"] == "1"
    assert seen[0].headers["authorization"] == f"Bearer {TOKEN}"


async def test_user_self_failure_with_http_200() -> None:
    body = {"success": False, "message": f"无权进行此操作，access token {TOKEN} 无效"}
    async with client(lambda req: httpx.Response(200, json=body), access_token=TOKEN, user_id="1") as c:
        with pytest.raises(TerminalError) as info:
            await c.user_self()
    assert TOKEN not in str(info.value)


async def test_provider_cost_from_price_table_and_model_check() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]})
        return httpx.Response(200, json=COMPLETION)

    provider = OpenAIProvider(client(handler), "gpt-4o-mini", prompt_price_per_million=0.15,
                              completion_price_per_million=0.6)
    assert (await provider.price()).completion_per_million == 0.6
    res = await provider.complete(PromptRequest("hi"))
    assert res.cost == pytest.approx((12 * 0.15 + 30 * 0.6) / 1e6)
    assert (res.prompt_tokens, res.completion_tokens, res.cost_source) == (12, 30, "price_table")
    # a model the relay does not list is a warning, not a refusal: the first call decides
    unlisted = await OpenAIProvider(client(handler), "gpt-9", prompt_price_per_million=1,
                                    completion_price_per_million=1).price()
    assert unlisted.prompt_per_million == 1 and unlisted.note and "gpt-9" in unlisted.note
