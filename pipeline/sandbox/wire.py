"""HTTP pieces both APIs share: JSON replies, bearer keys, server-sent events, broken replies."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
from typing import Any

from aiohttp import web

__all__ = ["BAD_GATEWAY_HTML", "EventStream", "abort", "bearer", "json_reply", "new_record", "pieces", "request_id",
           "stream_reply", "trickle", "truncated"]

BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def json_reply(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # web.json_response would also work; building the body directly keeps the hot path short.
    return web.Response(body=_dumps(payload).encode(), status=status, headers=headers,
                        content_type="application/json")


def bearer(request: web.Request) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None."""
    value = request.headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def request_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def new_record(api: str, request: web.Request, ts: float, key_fp: str | None) -> dict[str, Any]:
    """A log record with every field present; handlers fill in what they learn."""
    return {
        "ts": ts, "api": api, "method": request.method, "path": request.path, "key": key_fp,
        "target": None, "prompt_sha": None, "n": None, "status": None, "code": None, "fault": None,
        "charged": False, "cost": 0.0, "tokens_used": None, "package_tokens": 0, "quota": 0,
        "stream": False, "request_id": None,
    }


def abort(request: web.Request, *, reset: bool = False) -> web.Response:
    """Close the TCP connection at once, whatever the reply had sent so far.

    With ``reset`` the close sends RST instead of FIN (linger 0): a real "connection reset by peer".
    """
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if reset and sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)  # never sent: the transport is gone


class EventStream:
    """A ``text/event-stream`` reply, with the framing variants a client must accept.

    ``crlf``: every line ends in ``\\r\\n``; ``keepalive``: a ``: keep-alive`` comment between events;
    ``split``: the body is written one byte at a time, each write flushed on its own.
    """

    def __init__(self, request: web.Request, *, crlf: bool = False, keepalive: bool = False,
                 split: bool = False, headers: dict[str, str] | None = None) -> None:
        self.request = request
        self.eol = "\r\n" if crlf else "\n"
        self.keepalive, self.split = keepalive, split
        self.response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                    "Cache-Control": "no-cache", **(headers or {})})
        self._sent = 0

    @classmethod
    def framed_for(cls, request: web.Request, fault: str | None,
                   headers: dict[str, str] | None = None) -> EventStream:
        """A stream framed as the ``stream_crlf`` / ``stream_keepalive`` / ``stream_split`` variant says."""
        return cls(request, crlf=fault == "stream_crlf", keepalive=fault == "stream_keepalive",
                   split=fault == "stream_split", headers=headers)

    async def start(self) -> None:
        await self.response.prepare(self.request)

    async def event(self, data: Any) -> None:
        """One ``data:`` event; a str is sent as is (``[DONE]``), anything else as JSON."""
        text = data if isinstance(data, str) else _dumps(data)
        chunk = f"data: {text}{self.eol}{self.eol}"
        if self.keepalive and self._sent:
            chunk = f": keep-alive{self.eol}{self.eol}{chunk}"
        self._sent += 1
        await self._write(chunk.encode())

    async def _write(self, body: bytes) -> None:
        if not self.split:
            await self.response.write(body)
            return
        for i in range(len(body)):
            await self.response.write(body[i:i + 1])
            await asyncio.sleep(0)  # let the loop flush this byte before the next one

    async def finish(self) -> web.StreamResponse:
        await self.response.write_eof()
        return self.response

    def drop(self) -> web.StreamResponse:
        """Close the connection mid-body: no terminating chunk, so the client sees a broken stream."""
        abort(self.request)
        return self.response


async def truncated(request: web.Request, body: Any, stream: bool) -> web.StreamResponse:
    """HTTP 200 whose JSON breaks off half-way: the whole body, or the one event of a stream."""
    text = _dumps(body)
    cut = text[: len(text) // 2]
    if not stream:
        return web.Response(status=200, text=cut, content_type="application/json")
    events = EventStream(request)
    await events.start()
    await events.response.write(f"data: {cut}\n\n".encode())
    return await events.finish()


async def trickle(request: web.Request, seconds: float, stream: bool, every: float = 0.05) -> web.StreamResponse:
    """HTTP 200 whose body never completes: a filler byte (a comment line for a stream, JSON whitespace
    otherwise) every ``every`` seconds for ``seconds``, then the connection drops. Each read is quick;
    only a deadline on the whole call ends it sooner."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream" if stream else "application/json"})
    filler = b": keep-alive\n\n" if stream else b" "
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    try:
        await response.prepare(request)
        while loop.time() < end:
            await response.write(filler)
            await asyncio.sleep(every)
    except ConnectionError:  # the client gave up: nothing left to do
        return response
    abort(request)
    return response


async def stream_reply(stream: EventStream, deltas: list[Any], tail: list[Any], fault: str | None,
                       error_event: Any) -> web.StreamResponse:
    """Send ``deltas`` then ``tail`` (summary, ``[DONE]``), or break off as ``fault`` says.

    ``stream_drop`` closes the connection after half the deltas; ``stream_mid_error`` sends
    ``error_event`` there and ends the body cleanly. A client that went away ends it early too.
    """
    try:
        await stream.start()
        if fault in ("stream_drop", "stream_mid_error"):
            for delta in deltas[: max(1, len(deltas) // 2)]:
                await stream.event(delta)
            if fault == "stream_drop":
                return stream.drop()
            await stream.event(error_event)
            return await stream.finish()
        for event in (*deltas, *tail):
            await stream.event(event)
        return await stream.finish()
    except ConnectionError:  # the client hung up: nothing left to do
        return stream.response


def pieces(content: str, parts: int = 4) -> list[str]:
    """``content`` cut into about ``parts`` pieces at spaces (a delta per piece)."""
    words = content.split(" ")
    size = max(1, -(-len(words) // parts))
    chunks = [" ".join(words[i:i + size]) for i in range(0, len(words), size)]
    return [c + " " if i < len(chunks) - 1 else c for i, c in enumerate(chunks)]
