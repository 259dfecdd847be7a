"""The aiohttp transport that hands httpx JSON answers whole (``pipeline.providers._aiohttp``),
against a real aiohttp server on 127.0.0.1: bodies, encodings and event streams as httpx gives them."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from aiohttp import web

from pipeline.providers._aiohttp import WholeBodyTransport
from pipeline.providers._transport import build_http_client

ANSWER = {"success": True, "data": {"content": "Paris — 巴黎", "tokens_used": 12, "cost": 0.0001}}


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, anyio.Event]]:
    second_event = anyio.Event()  # the stream's second event waits for the client to see the first

    async def plain(request: web.Request) -> web.Response:
        return web.json_response(ANSWER, headers={"X-RateLimit-Limit": "60"})

    async def gzipped(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(json.dumps(ANSWER).encode()),
                            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        body = json.dumps(ANSWER).encode()
        for i in range(0, len(body), 7):
            await response.write(body[i:i + 7])
        await response.write_eof()
        return response

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"body": await request.json(), "auth": request.headers.get("Authorization")},
                                 status=422)

    async def events(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'data: {"n": 1}\n\n')
        with anyio.fail_after(10):
            await second_event.wait()
        await response.write(b'data: {"n": 2}\n\ndata: [DONE]\n\n')
        await response.write_eof()
        return response

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/plain")

    async def short_events(request: web.Request) -> web.Response:
        return web.Response(body=b'data: {"n": 1}\n\n', headers={"Content-Type": "text/event-stream"})

    app = web.Application()
    app.add_routes([web.get("/plain", plain), web.get("/gzip", gzipped), web.get("/chunked", chunked),
                    web.post("/echo", echo), web.get("/events", events), web.get("/moved", moved),
                    web.get("/short-events", short_events)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", second_event
    finally:
        await runner.cleanup()


async def test_json_answers_arrive_whole_and_as_httpx_reads_them(server: tuple[str, anyio.Event]) -> None:
    url, _ = server
    transport = WholeBodyTransport()
    async with httpx.AsyncClient(base_url=url, transport=transport) as client:
        for path in ("/plain", "/gzip", "/chunked"):  # a length, an encoding httpx decodes, no length
            response = await client.get(path)
            assert response.status_code == 200 and response.json() == ANSWER, path
        assert (await client.get("/plain")).headers["x-ratelimit-limit"] == "60"
        for path in ("/plain", "/gzip"):  # the body set as it came, or decoded by httpx
            raw = await transport.handle_async_request(client.build_request("GET", path))
            assert json.loads(raw.content) == ANSWER  # read by the transport in one piece: no aread needed
        sent = await client.post("/echo", json={"prompt": "p"}, headers={"Authorization": "Bearer k"})
        assert sent.status_code == 422 and sent.json() == {"body": {"prompt": "p"}, "auth": "Bearer k"}
        assert sent.reason_phrase == "Unprocessable Entity"


async def test_an_event_stream_stays_a_stream(server: tuple[str, anyio.Event]) -> None:
    url, second_event = server
    async with httpx.AsyncClient(base_url=url, transport=WholeBodyTransport()) as client, \
            client.stream("GET", "/events") as response:
        with pytest.raises(httpx.ResponseNotRead):
            _ = response.content  # a stream, not read whole
        lines = response.aiter_lines()
        with anyio.fail_after(10):  # the first event comes before the server has finished the body
            assert await anext(lines) == 'data: {"n": 1}'
        second_event.set()
        rest = [line async for line in lines]
    assert [line for line in rest if line] == ['data: {"n": 2}', "data: [DONE]"]


async def test_the_job_client_answers_as_httpx_own_pool(server: tuple[str, anyio.Event]) -> None:
    """The job's client (prebuilt requests, the cookieless jar, answers read by the transport)
    against a plain ``httpx.AsyncClient`` on httpx's own pool: the same answers, call after call."""
    url, _ = server
    client = build_http_client(url, headers={"Authorization": "Bearer k"}, timeout=10)
    plain = httpx.AsyncClient(base_url=url + "/", headers={"Authorization": "Bearer k"}, timeout=10)
    async with client, plain:
        requests = [("GET", "plain", None), ("GET", "gzip", None), ("GET", "chunked", None),
                    ("POST", "echo", {"prompt": "巴黎 \u2028 \"q\""}), ("GET", "moved", None),
                    ("GET", "short-events", None)] * 2
        for method, path, body in requests:
            ours = await client.request(method, path, json=body)
            own = await plain.request(method, path, json=body)
            assert (ours.status_code, ours.content, ours.reason_phrase, ours.http_version) == \
                (own.status_code, own.content, own.reason_phrase, own.http_version), path
            date = {"date"}  # the one header that may change between the two answers
            assert [h for h in ours.headers.multi_items() if h[0] not in date] == \
                [h for h in own.headers.multi_items() if h[0] not in date], path
            assert ours.request.url == own.request.url and ours.request.headers.raw == own.request.headers.raw
            assert (ours.next_request and str(ours.next_request.url)) == \
                (own.next_request and str(own.next_request.url)), path
        assert ours.text == 'data: {"n": 1}\n\n'  # an event stream nobody asked to stream is read whole
        assert (await client.post("echo", json={"prompt": "p"})).json()["auth"] == "Bearer k"

        async def hook(request: httpx.Request) -> None:
            seen.append(request.url.path)

        seen: list[str] = []
        client.event_hooks = {"request": [hook], "response": []}  # httpx's own send: hooks run
        await client.get("plain")
        assert seen == ["/plain"]
