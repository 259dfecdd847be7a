"""httpx over aiohttp (``httpx-aiohttp``), with JSON answers handed to httpx whole.

``httpx_aiohttp.AiohttpTransport`` gives httpx every body as a stream of chunks, which httpx then
reads through its async iterators, chunker and decoders; with the request's timeout object and
options built afresh each time, that came to ~25 % of a call's CPU on top of aiohttp's own
(py-spy, ``bench/run.py``). Our answers are small JSON bodies that are read whole anyway: this
transport reads them in one ``await response.read()`` and gives httpx the bytes (httpx still
decodes a ``Content-Encoding``). An event stream stays a stream. The library has no option for
either, so this overrides its one request method; connections, pool and errors are its own.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import httpx
from aiohttp import ClientSession, ClientTimeout
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions

_HTTP11 = {"http_version": b"HTTP/1.1"}


class WholeBodyTransport(AiohttpTransport):
    reads_whole = True  # answers come back read: the client may skip its own reading (``send``)

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._timeouts: dict[tuple[Any, ...], ClientTimeout] = {}
        self._closer: AsyncGenerator[None, None] | None = None  # held: the loop keeps only a weak reference

    def _timeout(self, request: httpx.Request) -> ClientTimeout:
        given = request.extensions.get("timeout", {})
        key = (given.get("connect"), given.get("read"), given.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = ClientTimeout(sock_connect=key[0], sock_read=key[1], connect=key[2])
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.proxy is not None or self.uds is not None:  # not how build_http_client makes it
            return await super().handle_async_request(request)
        client = self.client
        if not isinstance(client, ClientSession) or client.closed:
            self.client = None  # get_client() hands back a session it holds, even a closed one
            client = self.client = self.get_client()
            self._closer = _close_with_the_loop(client)
            await anext(self._closer)
        with map_aiohttp_exceptions():
            try:
                data: Any = request.content or None
            except httpx.RequestNotRead:
                data = request.stream
                request.headers.pop("transfer-encoding", None)  # aiohttp frames it
            # aiohttp copies headers into its own multidict: from str pairs that is C code, from
            # httpx.Headers a Python loop that decodes each one (~4 µs against ~1)
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
            response = await client.request(
                request.method, str(request.url), headers=headers, data=data, allow_redirects=False,
                auto_decompress=False, compress=False, timeout=self._timeout(request),
                server_hostname=request.extensions.get("sni_hostname"),
            ).__aenter__()
            extensions = {**_HTTP11, "reason_phrase": response.reason.encode()} if response.reason else _HTTP11
            if "text/event-stream" in response.headers.get("content-type", ""):
                return httpx.Response(response.status, headers=response.raw_headers,
                                      stream=AiohttpResponseStream(response), request=request,
                                      extensions=extensions)
            try:
                body = await response.read()
            finally:
                response.release()
        # aiohttp's headers answer "is there an encoding" in C; httpx's in a Python loop
        return _whole(response.status, response.raw_headers, body, request, extensions,
                      encoded="Content-Encoding" in response.headers)


async def _close_with_the_loop(session: ClientSession) -> AsyncGenerator[None, None]:
    """Closes ``session`` when the event loop that made it shuts down.

    An aiohttp session and its connections belong to one event loop, but a provider outlives it:
    ``anyio.run(run_job, job, provider)`` twice is two loops. asyncio has no hook for the end of a
    loop; what it does do, in ``asyncio.run`` and ``anyio.run``, is ``aclose()`` every async
    generator still suspended (``loop.shutdown_asyncgens``) before the loop closes. So the
    session's pool is closed there, on its own loop, and the next request makes a new session.
    """
    try:
        yield
    finally:
        if not session.closed:
            await session.close()


def _whole(status: int, headers: Any, body: bytes, request: httpx.Request,
           extensions: dict[str, Any], *, encoded: bool) -> httpx.Response:
    """A response whose body is ``body``, as if httpx had read it. ``httpx.Response(content=...)``
    runs the bytes through httpx's decoders and chunker at once (~12 µs); without a
    ``Content-Encoding`` there is nothing to decode, and the body is simply set (~2 µs)."""
    answer = httpx.Response(status, headers=headers, stream=httpx.ByteStream(body), request=request,
                            extensions=extensions)
    if encoded:
        answer.read()  # httpx decodes gzip, deflate, br, zstd
    else:
        answer._content = body  # what Response.read() would set: httpx 0.28, pinned in requirements.lock
    return answer
