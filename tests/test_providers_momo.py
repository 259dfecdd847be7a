"""MOMO client against httpx.MockTransport: envelopes, error classification, paging, streams."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import (
    AgentNotFound,
    ConnectionLost,
    InsufficientBalance,
    InvalidApiKey,
    InvalidParameters,
    MalformedResponse,
    NoSuchApi,
    RateLimited,
    RequestRejected,
    ServerError,
    Timeout,
)
from pipeline.providers import MomoClient, MomoProvider, PromptRequest

KEY = "momo-secret-key-0123456789abcdef"


class Chunks(httpx.AsyncByteStream):
    """A response body delivered in the given pieces, optionally failing after them."""

    def __init__(self, pieces: list[bytes], fail: Exception | None = None) -> None:
        self.pieces, self.fail = pieces, fail

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece
        if self.fail:
            raise self.fail


def client(handler: Callable[[httpx.Request], httpx.Response]) -> MomoClient:
    return MomoClient(KEY, "http://momo.test/v1", timeout=5, transport=httpx.MockTransport(handler))


def envelope_error(code: str, status: int, details: str | None = None) -> httpx.Response:
    err = {"code": code, "message": f"{code} happened"}
    if details:
        err["details"] = details
    return httpx.Response(status, json={"success": False, "error": err})


def sse(*events: str, sep: str = "\n") -> bytes:
    return "".join(f"data: {e}{sep}{sep}" for e in events).encode()


STREAM_OK = sse('{"delta": "你好，"}', '{"delta": "world"}',
                '{"done": true, "id": "req_1", "tokens_used": 42, "cost": 0.00042}', "[DONE]")


def stream_response(body: bytes | list[bytes], fail: Exception | None = None) -> httpx.Response:
    pieces = body if isinstance(body, list) else [body]
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Chunks(pieces, fail))


async def test_call_sends_the_key_and_reads_the_envelope() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json={"success": True, "data": {
            "id": "req_9", "content": "hi", "tokens_used": 150, "cost": 0.015}},
            headers={"X-RateLimit-Limit": "300", "X-RateLimit-Remaining": "299", "X-RateLimit-Reset": "12"})

    async with client(handler) as c:
        res = await c.call(159, "question", temperature=0.2, max_tokens=300)
    assert (res.content, res.request_id, res.tokens_used, res.cost) == ("hi", "req_9", 150, 0.015)
    assert res.rate_limit is not None and (res.rate_limit.limit, res.rate_limit.remaining) == (300, 299)
    assert seen[0].url.path == "/v1/agents/159"
    assert seen[0].headers["authorization"] == f"Bearer {KEY}"
    assert json.loads(seen[0].content) == {"prompt": "question", "stream": False, "temperature": 0.2,
                                           "max_tokens": 300}


@pytest.mark.parametrize(("response", "expected", "code"), [
    (envelope_error("INVALID_API_KEY", 401), InvalidApiKey, "INVALID_API_KEY"),
    (envelope_error("INSUFFICIENT_BALANCE", 402, "当前余额: 0.01 元,本次请求需要: 0.0150 元"),
     InsufficientBalance, "INSUFFICIENT_BALANCE"),
    (envelope_error("RATE_LIMIT", 429), RateLimited, "RATE_LIMIT"),
    (envelope_error("AGENT_NOT_FOUND", 404), AgentNotFound, "AGENT_NOT_FOUND"),
    (envelope_error("INVALID_PARAMETERS", 400), InvalidParameters, "INVALID_PARAMETERS"),
    # the code wins over the status
    (envelope_error("RATE_LIMIT", 200), RateLimited, "RATE_LIMIT"),
    (envelope_error("INVALID_API_KEY", 500), InvalidApiKey, "INVALID_API_KEY"),
    # success:false with HTTP 200 is an error; unknown codes fall back to the status, and the
    # error_code is always the contract's (the server's own code stays in the message)
    (envelope_error("INTERNAL_ERROR", 200), ServerError, "SERVER_ERROR"),
    (envelope_error("SOMETHING_NEW", 400), InvalidParameters, "INVALID_PARAMETERS"),
    (envelope_error("400", 400), InvalidParameters, "INVALID_PARAMETERS"),
    # an unknown 4xx fails its row (it is not retried, and does not stop the job)
    (envelope_error("CONFLICT", 409), RequestRejected, "HTTP_409"),
    (httpx.Response(409), RequestRejected, "HTTP_409"),
    # a 404 that is not the API's own answer: the base URL is wrong
    (httpx.Response(404, html="<html>Not Found</html>"), NoSuchApi, "NO_SUCH_API"),
    (httpx.Response(502, html="<html><body>Bad Gateway</body></html>"), ServerError, "SERVER_ERROR"),
    (httpx.Response(503), ServerError, "SERVER_ERROR"),
    (httpx.Response(429), RateLimited, "RATE_LIMIT"),
    (httpx.Response(401, text="unauthorised"), InvalidApiKey, "INVALID_API_KEY"),
    (httpx.Response(200, text='{"success": true, "data": {"content"'), MalformedResponse, "MALFORMED_RESPONSE"),
    (httpx.Response(200, json={"success": True, "data": {"id": "x"}}), MalformedResponse, "MALFORMED_RESPONSE"),
    (httpx.Response(200, json=[1, 2]), MalformedResponse, "MALFORMED_RESPONSE"),
])
async def test_errors_are_classified_by_code_then_status(response: httpx.Response, expected: type,
                                                         code: str) -> None:
    async with client(lambda req: response) as c:
        with pytest.raises(expected) as info:
            await c.call(159, "q")
    assert info.value.code == code
    assert type(info.value) is expected


async def test_insufficient_balance_keeps_details_and_status() -> None:
    details = "当前余额: 0.01 元,本次请求需要: 0.0150 元"
    async with client(lambda req: envelope_error("INSUFFICIENT_BALANCE", 402, details)) as c:
        with pytest.raises(InsufficientBalance) as info:
            await c.call(159, "q")
    assert info.value.details == details and info.value.status == 402
    assert details in str(info.value)


@pytest.mark.parametrize(("headers", "retry_after", "reset"), [
    ({"Retry-After": "2"}, 2.0, None),
    ({"Retry-After": "0.25", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "0.25"}, 0.25, 0.25),
    ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None, None),
    ({}, None, None),
])
async def test_rate_limit_carries_retry_after(headers: dict[str, str], retry_after: float | None,
                                              reset: float | None) -> None:
    resp = httpx.Response(429, json={"success": False, "error": {"code": "RATE_LIMIT", "message": "slow"}},
                          headers=headers)
    async with client(lambda req: resp) as c:
        with pytest.raises(RateLimited) as info:
            await c.call(159, "q")
    assert info.value.retry_after == retry_after and info.value.reset == reset


async def test_the_key_never_reaches_an_error_message() -> None:
    resp = httpx.Response(401, json={"success": False, "error": {
        "code": "INVALID_API_KEY", "message": f"key {KEY} is wrong", "details": f"Bearer {KEY}"}})
    async with client(lambda req: resp) as c:
        with pytest.raises(InvalidApiKey) as info:
            await c.call(159, "q")
    assert KEY not in str(info.value) and KEY not in repr(info.value.details)
    assert KEY not in repr(c)


@pytest.mark.parametrize(("exc", "expected"), [
    (httpx.ReadTimeout("read timed out"), Timeout),
    (httpx.ConnectTimeout("connect timed out"), Timeout),
    (httpx.ConnectError("connection refused"), ConnectionLost),
    (httpx.RemoteProtocolError("peer closed"), ConnectionLost),
])
async def test_transport_failures_are_transient(exc: Exception, expected: type) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise exc

    async with client(handler) as c:
        with pytest.raises(expected):
            await c.call(159, "q")


async def test_list_agents_walks_every_page() -> None:
    agents = [{"id": i, "name": f"a{i}", "description": "d", "price_per_1k_tokens": 0.01, "rating": 4.5}
              for i in range(1, 46)]
    pages: list[tuple[int, int]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        page, size = int(req.url.params["page"]), int(req.url.params["page_size"])
        pages.append((page, size))
        chunk = agents[(page - 1) * size: page * size]
        return httpx.Response(200, json={"success": True, "data": {
            "agents": chunk, "total": len(agents), "page": page, "page_size": size}})

    async with client(handler) as c:
        found = await c.list_agents(page_size=20)
    assert [a.id for a in found] == list(range(1, 46))
    assert pages == [(1, 20), (2, 20), (3, 20)]


async def test_balance_reads_packages() -> None:
    body = {"success": True, "data": {"balance": 98.5, "currency": "CNY",
                                      "agents": [{"agent_id": 159, "remaining_tokens": 50000}]}}
    async with client(lambda req: httpx.Response(200, json=body)) as c:
        acct = await c.balance()
    assert (acct.remaining, acct.currency, acct.packages) == (98.5, "CNY", {159: 50000})


# -- streams -------------------------------------------------------------------------------------
async def collect(body: bytes | list[bytes], fail: Exception | None = None) -> tuple[str, object]:
    async with client(lambda req: stream_response(body, fail)) as c:
        res = await c.call_streaming(159, "q")
    return res.content, (res.request_id, res.tokens_used, res.cost, res.cost_source)


async def test_stream_collects_deltas_and_summary() -> None:
    assert await collect(STREAM_OK) == ("你好，world", ("req_1", 42, 0.00042, "server"))


async def test_stream_split_at_every_byte() -> None:
    # every event and every multi-byte character cut across reads
    assert await collect([bytes([b]) for b in STREAM_OK]) == ("你好，world", ("req_1", 42, 0.00042, "server"))


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(STREAM_OK) - 1), max_size=12, unique=True))
def test_stream_split_anywhere(cuts: list[int]) -> None:
    import anyio

    bounds = [0, *sorted(cuts), len(STREAM_OK)]
    pieces = [STREAM_OK[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    assert anyio.run(collect, pieces) == ("你好，world", ("req_1", 42, 0.00042, "server"))


async def test_stream_crlf_and_keepalive_comments() -> None:
    body = b": keep-alive\r\n\r\n" + sse('{"delta": "a"}', sep="\r\n") + b": keep-alive\r\n\r\n" + sse(
        '{"delta": "b"}', '{"done": true, "id": "req_2", "tokens_used": 7, "cost": 0}', "[DONE]", sep="\r\n")
    assert await collect(body) == ("ab", ("req_2", 7, 0.0, "server"))


async def test_stream_without_summary_reports_unknown_tokens_and_cost() -> None:
    assert await collect(sse('{"delta": "a"}', "[DONE]")) == ("a", (None, None, None, "unknown"))
    assert await collect(sse('{"delta": "a"}')) == ("a", (None, None, None, "unknown"))


async def test_stream_mid_error_raises_the_mapped_error() -> None:
    body = sse('{"delta": "a"}', '{"error": {"code": "SERVER_ERROR", "message": "upstream died"}}')
    with pytest.raises(ServerError):
        await collect(body)
    body = sse('{"delta": "a"}', '{"error": {"code": "INSUFFICIENT_BALANCE", "message": "gone"}}')
    with pytest.raises(InsufficientBalance):
        await collect(body)


async def test_stream_dropped_connection_is_connection_lost() -> None:
    with pytest.raises(ConnectionLost):
        await collect([STREAM_OK[:30]], fail=httpx.ReadError("connection reset"))


async def test_stream_error_before_events_is_classified() -> None:
    async with client(lambda req: envelope_error("RATE_LIMIT", 429)) as c:
        with pytest.raises(RateLimited):
            await c.call_streaming(159, "q")


async def test_provider_prices_from_agent_list_and_rejects_unknown_agent() -> None:
    body = {"success": True, "data": {"agents": [{"id": 159, "name": "gpt5.2", "price_per_1k_tokens": 0.01}],
                                      "total": 1, "page": 1, "page_size": 100}}

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/agents"):
            return httpx.Response(200, json=body)
        return stream_response(STREAM_OK)

    provider = MomoProvider(client(handler), 159)
    price = await provider.price()
    assert (price.prompt_per_million, price.currency) == (10.0, "CNY")
    res = await provider.complete(PromptRequest("q", stream=True))
    assert res.tokens_used == 42
    await provider.aclose()
    with pytest.raises(AgentNotFound):
        await MomoProvider(client(handler), 7).price()


async def test_cookies_are_neither_kept_nor_sent() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json={"success": True, "data": {"balance": 1.0, "currency": "CNY"}},
                              headers={"Set-Cookie": "session=abc; Path=/"})

    async with client(handler) as c:
        await c.balance()
        await c.balance()
    assert "cookie" not in seen[1].headers  # bearer auth only: the jar is never filled


@pytest.mark.parametrize("base", ["https://api.example.com/v1", "https://api.example.com/v1/", "http://h:8/p/q"])
async def test_a_prebuilt_request_is_the_request_httpx_itself_builds(base: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The clients skip httpx's per-call merging of URL, headers and timeout (``build_request``):
    what goes out must be exactly what httpx's own ``build_request`` makes, call after call."""
    async with MomoClient("k-123", base, timeout=7) as c:
        http = c._http
        calls = [("POST", "agents/159", {"json": {"prompt": "p", "stream": False}}),
                 ("POST", "agents/159", {"json": {"prompt": "巴黎 \u2028 \"q\" \\", "max_tokens": 5, "t": 0.5}}),
                 ("GET", "account/balance", {}), ("POST", "agents/7", {}), ("POST", "agents/7", {"json": None}),
                 ("POST", "agents/7", {"json": []}), ("PUT", "x", {"content": b"raw"}),
                 ("GET", "agents?page=2&q=a%20b", {}), ("GET", "/v2/models", {}), ("GET", "../up", {}),
                 ("GET", "https://other.example.com/z?k=1", {})]
        prepared = []  # httpx's merging of headers: never on the prebuilt path
        own_prepare = httpx.Request._prepare
        monkeypatch.setattr(httpx.Request, "_prepare", lambda self, h: prepared.append(1) or own_prepare(self, h))
        for _ in range(2):  # the second comes from the cache of built URLs and headers
            for method, path, body in calls:
                # as ``AsyncClient.request`` calls it: every argument named, the unused ones None
                as_request_calls = {"content": None, "data": None, "files": None, "json": None, **body}
                prepared.clear()
                fast = http.build_request(method=method, url=path, params=None, headers=None, cookies=None,
                                          timeout=httpx.USE_CLIENT_DEFAULT, extensions=None, **as_request_calls)
                assert bool(prepared) == ("content" in body), (method, body)
                slow = httpx.AsyncClient.build_request(http, method, path, **body)
                assert fast.url == slow.url and str(fast.url).endswith(path.lstrip("./"))
                assert fast.method == slow.method and fast.headers.raw == slow.headers.raw, (method, body)
                assert fast.extensions == slow.extensions and fast.read() == slow.read()
        with pytest.raises(ValueError):  # what httpx refuses, refused alike
            http.build_request("POST", "agents/7", json={"x": float("nan")})
        http.headers["X-Trace"] = "1"  # the client's headers changed in place: built afresh
        fast, slow = http.build_request("GET", "agents"), httpx.AsyncClient.build_request(http, "GET", "agents")
        assert fast.headers.raw == slow.headers.raw and fast.headers["x-trace"] == "1"
        with_params = http.build_request("GET", "agents", params={"page": 2})  # not the fast path
        assert with_params.url.params["page"] == "2"
        own = http.build_request("GET", "x", headers={"Accept": "text/event-stream"})
        assert own.headers["accept"] == "text/event-stream" and own.headers["authorization"] == "Bearer k-123"
