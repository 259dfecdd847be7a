"""The client shape the MOMO documentation shows, sync and async, over :class:`MomoClient`.

    from pipeline import MomoAI

    with MomoAI(api_key="...") as client:
        response = client.agents.call(agent_id=159, prompt="Hello, World!")
        print(response.content, response.tokens_used, response.cost, response.request_id)

``client.agents.call`` / ``.stream`` / ``.list`` and ``client.account.balance`` map one to one
onto :class:`~pipeline.providers.MomoClient`; this module adds no wire logic, no retries and no
error classes of its own: failures are the package's tree (:mod:`pipeline.errors`), raised as
they come (a :class:`~pipeline.errors.RateLimited` carries ``retry_after``).

:class:`MomoAI` runs the async client on a private event loop in a daemon thread (an anyio
blocking portal) rather than ``asyncio.run`` per call: it keeps one connection pool across calls,
may be used from several threads at once, and works where an event loop already runs (Jupyter).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future
from functools import partial
from typing import Any, Self, TypeVar

import anyio
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal, start_blocking_portal
from anyio.streams.memory import MemoryObjectReceiveStream

from .providers.base import Account, CallResult
from .providers.momo import (
    DEFAULT_BASE_URL,
    MAX_PAGE_SIZE,
    Agent,
    Delta,
    MomoClient,
    StreamSummary,
    more_pages,
    streamed_result,
)

__all__ = ["AgentStream", "AsyncAgentStream", "AsyncMomoAI", "MomoAI"]

T = TypeVar("T")
StreamItem = Delta | StreamSummary
OpenStream = Callable[[MomoClient], AsyncGenerator[StreamItem, None]]

# Events a sync stream reads ahead of its consumer: bounded, so a slow reader holds the server back.
_READ_AHEAD = 16


class _StreamTotals:
    """What a stream has delivered so far, and the result it adds up to."""

    def __init__(self) -> None:
        self.pieces: list[str] = []
        self.summary: StreamSummary | None = None

    def add(self, item: StreamItem) -> str:
        """Take one event; returns its text ("" for the summary)."""
        if isinstance(item, StreamSummary):
            self.summary = item
            return ""
        self.pieces.append(item.text)
        return item.text

    def result(self) -> CallResult:
        return streamed_result(self.pieces, self.summary)


# -- async ---------------------------------------------------------------------------------------
class AsyncAgentStream:
    """A streamed call: ``async for`` gives the text pieces, ``await final()`` the totals.

    ``final()`` reads whatever is left first; its ``tokens_used`` and ``cost`` are ``None`` when
    the server ended the stream without its summary. Nothing is sent until iteration starts.
    """

    def __init__(self, items: AsyncGenerator[StreamItem, None]) -> None:
        self._items = items
        self._totals = _StreamTotals()

    async def __aiter__(self) -> AsyncIterator[str]:
        async for item in self._items:
            if text := self._totals.add(item):
                yield text

    async def final(self) -> CallResult:
        """Content, tokens used, cost and request id of the whole call."""
        async for _ in self:
            pass
        return self._totals.result()

    async def aclose(self) -> None:
        """Stop reading and release the connection."""
        await self._items.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncAgentsResource:
    """``client.agents`` of :class:`AsyncMomoAI`."""

    def __init__(self, client: MomoClient) -> None:
        self._client = client

    async def call(self, agent_id: int, prompt: str, *, temperature: float | None = None,
                   max_tokens: int | None = None) -> CallResult:
        """One call: ``.content``, ``.tokens_used``, ``.cost`` (CNY, as charged) and ``.request_id``."""
        return await self._client.call(agent_id, prompt, temperature=temperature, max_tokens=max_tokens)

    def stream(self, agent_id: int, prompt: str, *, temperature: float | None = None,
               max_tokens: int | None = None) -> AsyncAgentStream:
        """A streamed call (see :class:`AsyncAgentStream`)."""
        return AsyncAgentStream(self._client.stream(agent_id, prompt, temperature=temperature,
                                                    max_tokens=max_tokens))

    def list(self, page_size: int = MAX_PAGE_SIZE) -> AsyncGenerator[Agent, None]:
        """Every agent, page by page as the iteration reaches it."""
        return self._client.iter_agents(page_size)


class AsyncAccountResource:
    """``client.account`` of :class:`AsyncMomoAI`."""

    def __init__(self, client: MomoClient) -> None:
        self._client = client

    async def balance(self) -> Account:
        """``.remaining`` (the balance), ``.currency`` and ``.packages`` (prepaid tokens per agent id)."""
        return await self._client.balance()


class AsyncMomoAI:
    """The MOMO agent API for async code: ``async with AsyncMomoAI(api_key=...) as client``."""

    def __init__(self, api_key: str, *, base_url: str = DEFAULT_BASE_URL, timeout: float = 60.0) -> None:
        self._base_url = base_url
        self._client = MomoClient(api_key, base_url, timeout=timeout)
        self.agents = AsyncAgentsResource(self._client)
        self.account = AsyncAccountResource(self._client)

    def __repr__(self) -> str:
        return f"AsyncMomoAI(base_url={self._base_url!r})"

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# -- sync ----------------------------------------------------------------------------------------
class _LoopThread:
    """A private event loop in a daemon thread, started on first use, and the client living on it."""

    def __init__(self, make_client: Callable[[], MomoClient]) -> None:
        self._make_client = make_client
        self._lock = threading.Lock()
        self._closed = False
        self._portal: BlockingPortal | None = None
        self._client: MomoClient | None = None
        self._shutdown: weakref.finalize[Any, Any] | None = None

    def run(self, fn: Callable[[MomoClient], Awaitable[T]]) -> T:
        """``await fn(client)`` on the loop, from this thread."""
        portal, client = self._started()
        return portal.call(fn, client)

    def wait(self, fn: Callable[[], Awaitable[T]]) -> T:
        """``await fn()`` on the loop, from this thread."""
        portal, _ = self._started()
        return portal.call(fn)

    def on_loop(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the loop: what belongs to the loop is only touched there."""
        portal, _ = self._started()
        return portal.call(fn)

    def start_task(self, fn: Callable[..., Awaitable[Any]]) -> tuple[Future[Any], Any]:
        """Start ``fn(client, task_status=...)`` on the loop; its future, and what it ``started()`` with."""
        portal, client = self._started()
        return portal.start_task(fn, client)

    def _started(self) -> tuple[BlockingPortal, MomoClient]:
        with self._lock:
            if self._closed:
                raise RuntimeError("this MomoAI client is closed")
            if self._portal is None or self._client is None:
                stack = contextlib.ExitStack()
                portal = stack.enter_context(start_blocking_portal(name="momo-sdk-loop"))
                # an abandoned stream's reader must not keep close() waiting: cancel what is left
                stack.callback(portal.call, portal.stop, True)
                # built on the loop: the transport's connection pool belongs to the loop that uses it
                client = portal.call(self._make_client)
                stack.callback(portal.call, client.aclose)
                self._portal, self._client = portal, client
                # a client dropped without close() still closes its connections and stops its thread
                self._shutdown = weakref.finalize(self, stack.close)
            return self._portal, self._client

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._shutdown is not None:
                self._shutdown()


class AgentStream:
    """A streamed call: iterate for the text pieces; ``final()`` gives the totals.

    ``final()`` reads whatever is left first; its ``tokens_used`` and ``cost`` are ``None`` when
    the server ended the stream without its summary. Nothing is sent until iteration starts.
    Leaving the loop early (``break``, an exception) closes the stream and its connection.
    """

    def __init__(self, loop: _LoopThread, open_stream: OpenStream) -> None:
        self._loop = loop
        self._open_stream = open_stream
        self._totals = _StreamTotals()
        self._pump: Future[None] | None = None
        self._received: MemoryObjectReceiveStream[StreamItem] | None = None
        self._scope: anyio.CancelScope | None = None
        self._closed = False

    def __iter__(self) -> Iterator[str]:
        try:
            while (item := self._next_item()) is not None:
                if text := self._totals.add(item):
                    yield text
        finally:
            self.close()

    def final(self) -> CallResult:
        """Content, tokens used, cost and request id of the whole call."""
        for _ in self:
            pass
        return self._totals.result()

    def close(self) -> None:
        """Stop reading and release the connection (waits until it is released)."""
        if self._closed:
            return
        self._closed = True
        if self._pump is None or self._scope is None or self._received is None:
            return
        self._loop.on_loop(self._scope.cancel)
        self._pump.exception()  # waits for the reader to finish; an error it ended with is not the closer's
        self._loop.on_loop(self._received.close)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_item(self) -> StreamItem | None:
        """The next event, or ``None`` once the stream has ended (raising the error that ended it)."""
        if self._closed:
            return None
        if self._pump is None:
            self._pump, (self._received, self._scope) = self._loop.start_task(self._read_stream)
        assert self._received is not None
        try:
            return self._loop.wait(self._received.receive)
        except anyio.EndOfStream:
            self._pump.result()
            return None

    async def _read_stream(self, client: MomoClient, *, task_status: TaskStatus[Any]) -> None:
        """On the loop: one task reads the whole HTTP stream, so its connection never changes task."""
        send, receive = anyio.create_memory_object_stream[StreamItem](_READ_AHEAD)
        items = self._open_stream(client)
        with anyio.CancelScope() as scope:
            task_status.started((receive, scope))
            try:
                async with send:
                    async for item in items:
                        await send.send(item)
            finally:
                with anyio.CancelScope(shield=True):  # release the connection even when cancelled
                    await items.aclose()


class AgentsResource:
    """``client.agents`` of :class:`MomoAI`."""

    def __init__(self, loop: _LoopThread) -> None:
        self._loop = loop

    def call(self, agent_id: int, prompt: str, *, temperature: float | None = None,
             max_tokens: int | None = None) -> CallResult:
        """One call: ``.content``, ``.tokens_used``, ``.cost`` (CNY, as charged) and ``.request_id``."""
        return self._loop.run(lambda c: c.call(agent_id, prompt, temperature=temperature, max_tokens=max_tokens))

    def stream(self, agent_id: int, prompt: str, *, temperature: float | None = None,
               max_tokens: int | None = None) -> AgentStream:
        """A streamed call (see :class:`AgentStream`)."""
        return AgentStream(self._loop, lambda c: c.stream(agent_id, prompt, temperature=temperature,
                                                          max_tokens=max_tokens))

    def list(self, page_size: int = MAX_PAGE_SIZE) -> Iterator[Agent]:
        """Every agent, page by page as the iteration reaches it."""
        fetched, page = 0, 1
        while True:
            agents, total = self._loop.run(partial(MomoClient.agents_page, page=page, page_size=page_size))
            yield from agents
            fetched += len(agents)
            if not more_pages(fetched, len(agents), total):
                return
            page += 1


class AccountResource:
    """``client.account`` of :class:`MomoAI`."""

    def __init__(self, loop: _LoopThread) -> None:
        self._loop = loop

    def balance(self) -> Account:
        """``.remaining`` (the balance), ``.currency`` and ``.packages`` (prepaid tokens per agent id)."""
        return self._loop.run(lambda c: c.balance())


class MomoAI:
    """The MOMO agent API for plain (blocking) code: ``with MomoAI(api_key=...) as client``.

    Safe to share between threads. Nothing starts until the first request.
    """

    def __init__(self, api_key: str, *, base_url: str = DEFAULT_BASE_URL, timeout: float = 60.0) -> None:
        self._base_url = base_url
        self._loop = _LoopThread(lambda: MomoClient(api_key, base_url, timeout=timeout))
        self.agents = AgentsResource(self._loop)
        self.account = AccountResource(self._loop)

    def __repr__(self) -> str:
        return f"MomoAI(base_url={self._base_url!r})"

    def close(self) -> None:
        """Close the connections and stop the private event loop."""
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
