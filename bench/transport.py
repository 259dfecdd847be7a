"""Which HTTP transport should the clients use? Measures requests/s and client CPU per request.

    .venv/bin/python bench/transport.py [--requests 3000] [--inflight 100]

A plain aiohttp server runs in a child process (pinned to the other core when there are two)
with two endpoints: an instant one and one that answers after 0.5 s. Each candidate sends the
same POSTs with ``--inflight`` requests in flight:

* ``httpx``          httpx.AsyncClient with its own pool (httpcore)
* ``httpx+aiohttp``  httpx.AsyncClient over httpx-aiohttp's AiohttpTransport, as the library comes
* ``shipped``        what the clients use (``build_http_client``): the same, with answers read
                     whole, requests built from a template and sent straight to the transport
* ``aiohttp``        a bare aiohttp.ClientSession (the ceiling)
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import resource
import socket
import time

import aiohttp
import httpx

BODY = {"success": True, "data": {"id": "req_1", "content": "x" * 200, "tokens_used": 150, "cost": 0.0015}}


def _serve(port: int, ready: mp.synchronize.Event) -> None:  # type: ignore[name-defined]
    from aiohttp import web

    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
        os.sched_setaffinity(0, {1})

    async def instant(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response(BODY)

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(0.5)
        return web.json_response(BODY)

    app = web.Application()
    app.router.add_post("/instant", instant)
    app.router.add_post("/slow", slow)
    ready.set()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, backlog=1024)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _drive(send, n: int, inflight: int) -> tuple[float, float]:  # noqa: ANN001
    sem = asyncio.Semaphore(inflight)

    async def one() -> None:
        async with sem:
            await send()

    await asyncio.gather(*(one() for _ in range(min(inflight, n))))  # warm the pool
    cpu0, t0 = _cpu(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    return n / wall, cpu / n * 1e6


async def _httpx(url: str, n: int, inflight: int, transport: str) -> tuple[float, float]:
    limits = httpx.Limits(max_connections=inflight, max_keepalive_connections=inflight)
    if transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        tr: httpx.AsyncBaseTransport = AiohttpTransport(limits=limits)
    else:
        tr = httpx.AsyncHTTPTransport(limits=limits)
    async with httpx.AsyncClient(transport=tr, timeout=30) as client:
        async def send() -> None:
            r = await client.post(url, json={"prompt": "hello"})
            r.json()

        return await _drive(send, n, inflight)


async def _shipped(url: str, n: int, inflight: int) -> tuple[float, float]:
    from pipeline.providers._transport import build_http_client

    base, _, path = url.rpartition("/")
    async with build_http_client(base, headers={}, timeout=30, max_connections=inflight) as client:
        async def send() -> None:
            r = await client.post(path, json={"prompt": "hello"})
            r.json()

        return await _drive(send, n, inflight)


async def _aiohttp(url: str, n: int, inflight: int) -> tuple[float, float]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=inflight)) as session:
        async def send() -> None:
            async with session.post(url, json={"prompt": "hello"}) as r:
                await r.json()

        return await _drive(send, n, inflight)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--inflight", type=int, default=100)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ready = mp.get_context("spawn").Event()
    server = mp.get_context("spawn").Process(target=_serve, args=(port, ready), daemon=True)
    server.start()
    ready.wait(10)
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):  # wait until it accepts connections
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    print(f"{args.inflight} in flight, server on its own core; req/s and client CPU µs per request")
    print(f"{'transport':<16}{'instant req/s':>14}{'µs CPU/req':>12}{'0.5 s req/s':>13}")
    for name in ("httpx", "httpx+aiohttp", "shipped", "aiohttp"):
        results = []
        for path, n in (("/instant", args.requests), ("/slow", max(args.inflight * 4, 400))):
            if name == "aiohttp":
                results.append(asyncio.run(_aiohttp(base + path, n, args.inflight)))
            elif name == "shipped":
                results.append(asyncio.run(_shipped(base + path, n, args.inflight)))
            else:
                kind = "aiohttp" if name == "httpx+aiohttp" else "httpx"
                results.append(asyncio.run(_httpx(base + path, n, args.inflight, kind)))
        (fast, cpu), (slow, _) = results
        print(f"{name:<16}{fast:>14,.0f}{cpu:>12,.0f}{slow:>13,.0f}", flush=True)
    server.terminate()


if __name__ == "__main__":
    main()
