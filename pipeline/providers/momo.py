"""MOMO AI agent API: a client for its four endpoints, and the provider the runner uses.

Errors are classified by ``error.code`` first, then by HTTP status (contract §1, one table for both
services: :func:`pipeline.errors.classify`); a body with ``success: false`` is an error whatever
the status. A listing or balance read that gets a 404 or a body that is not the envelope means
the base URL is not the MOMO API (:class:`~pipeline.errors.NoSuchApi`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from ..errors import AgentNotFound, MalformedResponse
from ._transport import (
    ClientBase,
    TransportName,
    build_http_client,
    deadline,
    describe_body,
    error_from,
    is_event_stream,
    json_body,
    json_events,
    no_such_api,
    not_the_api,
    rate_limit_info,
    translated,
)
from .base import Account, CallResult, Price, PromptRequest

__all__ = ["Agent", "Delta", "MomoClient", "MomoProvider", "StreamSummary", "more_pages", "streamed_result"]

DEFAULT_BASE_URL = "https://api.momoai.pro/v1"
MAX_PAGE_SIZE = 100

@dataclass(frozen=True, slots=True)
class Agent:
    id: int
    name: str
    price_per_1k_tokens: float
    description: str | None = None
    rating: float | None = None


@dataclass(frozen=True, slots=True)
class Delta:
    """A piece of streamed text."""

    text: str


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """The stream's closing event: what the call used and cost."""

    request_id: str | None
    tokens_used: int | None
    cost: float | None


class MomoClient(ClientBase):
    """Async client for one MOMO API key. Use as ``async with MomoClient(key) as client``."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float = 60.0,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | TransportName | None = None,
    ) -> None:
        self._key = api_key
        self.timeout = timeout
        self._http = build_http_client(base_url, headers={"Authorization": f"Bearer {api_key}"},
                                       timeout=timeout, max_connections=max_connections, transport=transport)

    # -- endpoints ---------------------------------------------------------------------------
    async def agents_page(self, page: int = 1, page_size: int = 20) -> tuple[list[Agent], int]:
        """One page of agents and the total count."""
        data, _ = await self._request("GET", "agents", params={"page": page, "page_size": page_size},
                                      discovery=True)
        agents = [_agent(a) for a in _field(data, "agents", list)]
        return agents, int(data.get("total", len(agents)))

    async def list_agents(self, page_size: int = MAX_PAGE_SIZE) -> list[Agent]:
        """Every agent, walking the pages until ``total`` is reached (or a page comes back empty)."""
        return [agent async for agent in self.iter_agents(page_size)]

    async def iter_agents(self, page_size: int = MAX_PAGE_SIZE) -> AsyncGenerator[Agent, None]:
        """Every agent, lazily: the next page is asked for only when this one is used up."""
        fetched, page = 0, 1
        while True:
            agents, total = await self.agents_page(page, page_size)
            for agent in agents:
                yield agent
            fetched += len(agents)
            if not more_pages(fetched, len(agents), total):
                return
            page += 1

    async def call(self, agent_id: int, prompt: str, *, temperature: float | None = None,
                   max_tokens: int | None = None) -> CallResult:
        """One non-streaming call, within ``timeout`` from connect to last byte."""
        with deadline(self.timeout):
            data, headers = await self._request("POST", f"agents/{agent_id}",
                                                json=_body(prompt, temperature, max_tokens, stream=False))
        try:
            return CallResult(content=str(data["content"]), request_id=_opt(data.get("id"), str),
                              tokens_used=_opt(data.get("tokens_used"), int), cost=_opt(data.get("cost"), float),
                              rate_limit=rate_limit_info(headers))
        except (KeyError, TypeError, ValueError):
            raise MalformedResponse("agent call: data lacks content, tokens_used or cost") from None

    async def stream(self, agent_id: int, prompt: str, *, temperature: float | None = None,
                     max_tokens: int | None = None) -> AsyncGenerator[Delta | StreamSummary, None]:
        """Streamed call: :class:`Delta` pieces, then a :class:`StreamSummary` if the server sends one."""
        body = _body(prompt, temperature, max_tokens, stream=True)
        with translated(self._key):
            async with self._http.stream("POST", f"agents/{agent_id}", json=body,
                                         headers={"Accept": "text/event-stream"}) as response:
                if not is_event_stream(response):
                    await response.aread()
                    self._unwrap(response)  # raises for an error answer
                    raise MalformedResponse(f"stream requested, got {describe_body(response)}")
                async for item in _momo_events(response, self._key):
                    yield item

    async def call_streaming(self, agent_id: int, prompt: str, *, temperature: float | None = None,
                             max_tokens: int | None = None) -> CallResult:
        """A streamed call collected into one result, within ``timeout`` from connect to last byte;
        tokens and cost stay ``None`` without a summary."""
        pieces: list[str] = []
        summary: StreamSummary | None = None
        with deadline(self.timeout):
            async with contextlib.aclosing(self.stream(agent_id, prompt, temperature=temperature,
                                                       max_tokens=max_tokens)) as items:
                async for item in items:
                    if isinstance(item, Delta):
                        pieces.append(item.text)
                    else:
                        summary = item
        return streamed_result(pieces, summary)

    async def balance(self) -> Account:
        """Balance, currency and prepaid token packages."""
        data, _ = await self._request("GET", "account/balance", discovery=True)
        try:
            packages = {int(p["agent_id"]): int(p["remaining_tokens"]) for p in data.get("agents") or []}
            return Account(remaining=float(data["balance"]), currency=str(data.get("currency") or "CNY"),
                           packages=packages, raw={"balance": float(data["balance"])})
        except (KeyError, TypeError, ValueError):
            raise MalformedResponse("account/balance: data lacks balance") from None

    # -- wire --------------------------------------------------------------------------------
    async def _request(self, method: str, path: str, *, discovery: bool = False,
                       **kw: Any) -> tuple[dict[str, Any], httpx.Headers]:
        with translated(self._key):
            response = await self._http.request(method, path, **kw)
        return self._unwrap(response, discovery=discovery), response.headers

    def _unwrap(self, response: httpx.Response, *, discovery: bool = False) -> dict[str, Any]:
        """The envelope's ``data``, or the error the answer means."""
        body = json_body(response)
        if isinstance(body, Mapping) and body.get("success") is True and response.is_success:
            data = body.get("data")
            if isinstance(data, dict):
                return data
            if discovery:
                raise no_such_api(response, "MOMO", self._key)
            raise MalformedResponse(f"{response.request.url.path}: success without a data object")
        if isinstance(body, Mapping) and (body.get("success") is False or "error" in body):
            if discovery and response.status_code == 404:
                raise no_such_api(response, "MOMO", self._key)
            err = body.get("error")
            raise error_from(response.status_code, err if isinstance(err, Mapping) else None, response.headers,
                             self._key)
        if not_the_api(response, discovery=discovery):
            raise no_such_api(response, "MOMO", self._key)
        if response.is_success:
            raise MalformedResponse(f"not the contract's JSON envelope ({describe_body(response)})")
        raise error_from(response.status_code, None, response.headers, self._key)


async def _momo_events(response: httpx.Response, key: str) -> AsyncGenerator[Delta | StreamSummary, None]:
    """Interpret MOMO's events: deltas, a summary, or an error."""
    async for payload in json_events(response):
        if "error" in payload:
            err = payload["error"]
            raise error_from(None, err if isinstance(err, Mapping) else None, response.headers, key)
        if payload.get("done"):
            yield StreamSummary(_opt(payload.get("id"), str), _opt(payload.get("tokens_used"), int),
                                _opt(payload.get("cost"), float))
        elif "delta" in payload:
            yield Delta(str(payload["delta"] or ""))


def streamed_result(pieces: list[str], summary: StreamSummary | None) -> CallResult:
    """A streamed call as one result; without a summary, tokens and cost stay unknown (never invented)."""
    if summary is None:
        return CallResult("".join(pieces), None, None, None, cost_source="unknown")
    return CallResult("".join(pieces), summary.request_id, summary.tokens_used, summary.cost)


def more_pages(fetched: int, page_len: int, total: int) -> bool:
    """Whether to ask for another page of agents: the last one was not empty and ``total`` is not reached."""
    return page_len > 0 and fetched < total


def _body(prompt: str, temperature: float | None, max_tokens: int | None, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt, "stream": stream}
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def _agent(raw: Any) -> Agent:
    try:
        return Agent(id=int(raw["id"]), name=str(raw.get("name") or ""),
                     price_per_1k_tokens=float(raw["price_per_1k_tokens"]),
                     description=_opt(raw.get("description"), str), rating=_opt(raw.get("rating"), float))
    except (KeyError, TypeError, ValueError):
        raise MalformedResponse("agents: an agent lacks id or price_per_1k_tokens") from None


def _field(data: Mapping[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind):
        raise MalformedResponse(f"data.{name} missing or not a {kind.__name__}")
    return value


def _opt(value: Any, kind: type) -> Any:
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError, OverflowError):  # int(inf): a JSON 1e400
        raise MalformedResponse(f"{value!r} is not a {kind.__name__}") from None


class MomoProvider:
    """One MOMO agent behind one key, as the runner sees it."""

    name = "momo"

    def __init__(self, client: MomoClient, agent_id: int) -> None:
        self.client = client
        self.agent_id = int(agent_id)
        self.target = str(self.agent_id)
        self.endpoint = client.base_url  # part of every request key (see pipeline.keys)
        self._agent: Agent | None = None
        self._owns_client = True

    def retarget(self, target: str, *, prompt_price_per_million: float | None = None,
                 completion_price_per_million: float | None = None) -> MomoProvider:
        """Another agent behind the same key and client (a label job's escalation); MOMO reports
        each call's cost, so no price is taken. Closing it leaves the shared client open."""
        twin = MomoProvider(self.client, int(target))
        twin.endpoint = self.endpoint
        twin._owns_client = False
        return twin

    async def complete(self, request: PromptRequest) -> CallResult:
        call = self.client.call_streaming if request.stream else self.client.call
        return await call(self.agent_id, request.prompt, temperature=request.temperature,
                          max_tokens=request.max_tokens)

    async def account(self) -> Account:
        return await self.client.balance()

    async def price(self) -> Price:
        if self._agent is None:
            found = [a for a in await self.client.list_agents() if a.id == self.agent_id]
            if not found:
                raise AgentNotFound(f"agent {self.agent_id} is not in the agent list")
            self._agent = found[0]
        per_million = self._agent.price_per_1k_tokens * 1000
        return Price(per_million, per_million, "CNY")

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()
