"""OpenAI-compatible relays (new-api / one-api family): chat, models, billing, ``/api/user/self``.

Relays send errors in several shapes (contract §2): an ``{"error": {...}}`` body with or without a
``code``, an empty 429, HTML from upstream, and HTTP 200 with an error body on billing. All of
them end up in the one error tree, through the same table as MOMO's
(:func:`pipeline.errors.classify`): a code that is a number (LiteLLM sends ``"code": "400"``) or
missing is mapped by the HTTP status. A 404 or a body that is not the API's from ``/v1/models``,
billing or ``/api/user/self`` means the base URL is not such a relay
(:class:`~pipeline.errors.NoSuchApi`); a relay without billing or ``/api/user/self`` runs with its
balance unknown, and :class:`Account` says why.

What the sk- key alone reads on new-api: the prices (``/api/pricing``: model ratio, completion ratio,
group ratio; ``/api/status``: quota units per US dollar), used when the job file gives none (prices
in the file win), and the key's own quota (``/api/usage/token/``), which caps the balance: the
relay reserves against it before each call. The id of each request in the relay's log
(``X-Oneapi-Request-Id``) is the row's ``request_id``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import httpx

from ..errors import APIError, ConfigError, InvalidApiKey, MalformedResponse, NoSuchApi, check_secret, redact
from ._transport import (
    RELAY_REQUEST_ID,
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

__all__ = ["Billing", "ChatDelta", "ChatResult", "OpenAIClient", "OpenAIProvider", "RelayPricing", "TokenUsage",
           "UserSelf", "Usage", "QUOTA_PER_USD"]

DEFAULT_BASE_URL = "https://api.moka-ai.com"
QUOTA_PER_USD = 500_000  # new-api: 500000 quota units = 1 US dollar

@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ChatResult:
    content: str
    id: str | None
    usage: Usage | None  # None when a stream carried no usage chunk
    rate_limit: Any = None


@dataclass(frozen=True, slots=True)
class ChatDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Billing:
    """``/v1/dashboard/billing/*``: credit and use, in US dollars."""

    hard_limit_usd: float
    used_usd: float

    @property
    def remaining_usd(self) -> float:
        return self.hard_limit_usd - self.used_usd


@dataclass(frozen=True, slots=True)
class UserSelf:
    """``/api/user/self``: quota units (``quota`` is what remains)."""

    quota: int
    used_quota: int
    request_count: int | None

    @property
    def remaining_usd(self) -> float:
        return self.quota / QUOTA_PER_USD


@dataclass(frozen=True, slots=True)
class RelayPricing:
    """A model's price as new-api's ``/api/pricing`` and ``/api/status`` give it: quota units per token are
    ``model_ratio × group_ratio`` (× ``completion_ratio`` for completion), ``quota_per_unit`` per dollar."""

    model_ratio: float
    completion_ratio: float
    group_ratio: float
    quota_per_unit: float

    def per_million(self) -> tuple[float, float]:
        """(prompt, completion) US dollars per million tokens."""
        prompt = 1e6 * self.model_ratio * self.group_ratio / self.quota_per_unit
        return prompt, prompt * self.completion_ratio


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """``/api/usage/token/``: the key's own quota, in quota units (``None``: unlimited)."""

    available: int | None
    used: int


class OpenAIClient(ClientBase):
    """Async client for one relay key (and, optionally, its system access token for ``/api/user/self``)."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        access_token: str | None = None,
        user_id: str | None = None,
        timeout: float = 60.0,
        max_connections: int = 100,
        transport: httpx.AsyncBaseTransport | TransportName | None = None,
    ) -> None:
        self._key, self._token, self._user = api_key, access_token, user_id
        self.timeout = timeout
        if access_token:
            check_secret(access_token, "the relay access token")
        root = base_url.rstrip("/")
        root = root[: -len("/v1")] if root.endswith("/v1") else root  # accept either form of base URL
        self._http = build_http_client(root, headers={"Authorization": f"Bearer {api_key}"},
                                       timeout=timeout, max_connections=max_connections, transport=transport)

    @property
    def has_user_self(self) -> bool:
        return bool(self._token and self._user)

    # -- endpoints ---------------------------------------------------------------------------
    async def models(self) -> list[str]:
        body, response = await self._request("GET", "v1/models", discovery=True)
        data = body.get("data")
        if not isinstance(data, list):
            raise no_such_api(response, "OpenAI-compatible", self._key)
        return [str(m["id"]) for m in data if isinstance(m, Mapping) and "id" in m]

    async def chat(self, model: str, messages: list[dict[str, str]], *, temperature: float | None = None,
                   max_tokens: int | None = None) -> ChatResult:
        with deadline(self.timeout):
            body, response = await self._request("POST", "v1/chat/completions",
                                                 json=_chat_body(model, messages, temperature, max_tokens, False))
        try:
            content = body["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise MalformedResponse("chat completion without choices[0].message") from None
        # the relay's own id (new-api, one-api) finds the call in its log; else the completion's
        rid = response.headers.get(RELAY_REQUEST_ID) or _str(body.get("id"))
        return ChatResult(str(content), rid, _usage(body.get("usage")), rate_limit_info(response.headers))

    async def chat_stream(self, model: str, messages: list[dict[str, str]], *, temperature: float | None = None,
                          max_tokens: int | None = None, include_usage: bool = True
                          ) -> AsyncGenerator[ChatDelta | Usage | str, None]:
        """Streamed chat: :class:`ChatDelta` pieces, the completion id (a ``str``), and :class:`Usage` if sent."""
        body = _chat_body(model, messages, temperature, max_tokens, True)
        if include_usage:
            body["stream_options"] = {"include_usage": True}
        with translated(self._key, self._token):
            async with self._http.stream("POST", "v1/chat/completions", json=body,
                                         headers={"Accept": "text/event-stream"}) as response:
                if not is_event_stream(response):
                    await response.aread()
                    self._check(response, json_body(response))
                    raise MalformedResponse(f"stream requested, got {describe_body(response)}")
                if (rid := response.headers.get(RELAY_REQUEST_ID)) is not None:
                    yield rid  # the first id wins: the relay's own
                async for item in _chunks(response, self._key):
                    yield item

    async def chat_streaming(self, model: str, messages: list[dict[str, str]], *,
                             temperature: float | None = None, max_tokens: int | None = None) -> ChatResult:
        """A streamed chat collected into one result, within ``timeout`` from connect to last byte."""
        pieces: list[str] = []
        usage: Usage | None = None
        chat_id: str | None = None
        with deadline(self.timeout):
            async with contextlib.aclosing(self.chat_stream(model, messages, temperature=temperature,
                                                            max_tokens=max_tokens)) as items:
                async for item in items:
                    if isinstance(item, ChatDelta):
                        pieces.append(item.text)
                    elif isinstance(item, Usage):
                        usage = item
                    else:
                        chat_id = chat_id or item
        return ChatResult("".join(pieces), chat_id, usage)

    async def billing(self) -> Billing:
        sub, sub_response = await self._request("GET", "v1/dashboard/billing/subscription", discovery=True)
        use, use_response = await self._request("GET", "v1/dashboard/billing/usage", discovery=True)
        try:
            limit = float(sub["hard_limit_usd"])
        except (KeyError, TypeError, ValueError):
            raise no_such_api(sub_response, "billing", self._key) from None
        try:
            return Billing(limit, float(use["total_usage"]) / 100)  # usage is in cents
        except (KeyError, TypeError, ValueError):
            raise no_such_api(use_response, "billing", self._key) from None

    async def relay_pricing(self, model: str, group: str = "default") -> RelayPricing | None:
        """The model's ratios from ``/api/pricing`` and ``/api/status``; ``None`` when the relay has
        no such endpoints or does not price the model by tokens."""
        try:
            prices, _ = await self._request("GET", "api/pricing", discovery=True)
            status, _ = await self._request("GET", "api/status", discovery=True)
        except (NoSuchApi, MalformedResponse):
            return None
        entry = next((m for m in prices.get("data") or [] if isinstance(m, Mapping) and m.get("model_name") == model),
                     None)
        raw_groups, raw_info = prices.get("group_ratio"), status.get("data")
        groups: Mapping[str, Any] = raw_groups if isinstance(raw_groups, Mapping) else {}
        info: Mapping[str, Any] = raw_info if isinstance(raw_info, Mapping) else {}
        try:
            if entry is None or int(entry.get("quota_type") or 0) != 0:  # 1: a price per call
                return None
            group_ratio = float(groups.get(group, 1.0)) if groups else 1.0
            return RelayPricing(float(entry["model_ratio"]), float(entry.get("completion_ratio") or 1.0), group_ratio,
                                float(info.get("quota_per_unit") or QUOTA_PER_USD))
        except (KeyError, TypeError, ValueError):
            return None

    async def token_usage(self) -> TokenUsage | None:
        """The key's own quota from ``/api/usage/token/``; ``None`` when the relay has no such endpoint."""
        try:
            body, _ = await self._request("GET", "api/usage/token/", discovery=True)
        except (NoSuchApi, MalformedResponse):
            return None
        data = body.get("data")
        if not isinstance(data, Mapping):
            return None
        try:
            available = None if data.get("unlimited_quota") else int(data["total_available"])
            return TokenUsage(available, int(data.get("total_used") or 0))
        except (KeyError, TypeError, ValueError):
            return None

    async def user_self(self) -> UserSelf:
        if not self.has_user_self:
            raise InvalidApiKey("/api/user/self needs a system access token and a user id")
        path = "api/user/self"
        with translated(self._key, self._token):
            response = await self._http.get(path, headers={"Authorization": f"Bearer {self._token}",
                                                           "New-Api-User": str(self._user)})
        body = json_body(response)
        if isinstance(body, Mapping) and body.get("success") is False and response.status_code != 404:
            message = redact(str(body.get("message") or ""), self._key, self._token)
            raise InvalidApiKey(f"/api/user/self refused the access token or user id: {message}",
                                status=response.status_code)
        self._check(response, body, discovery=True)
        data = body.get("data") if isinstance(body, Mapping) else None
        try:
            return UserSelf(int(data["quota"]), int(data["used_quota"]),  # type: ignore[index]
                            _int(data.get("request_count")))  # type: ignore[union-attr]
        except (KeyError, TypeError, ValueError, AttributeError):
            raise no_such_api(response, "new-api user", self._key, self._token) from None

    # -- wire --------------------------------------------------------------------------------
    async def _request(self, method: str, path: str, *, discovery: bool = False,
                       **kw: Any) -> tuple[dict[str, Any], httpx.Response]:
        with translated(self._key, self._token):
            response = await self._http.request(method, path, **kw)
        body = json_body(response)
        self._check(response, body, discovery=discovery)
        if not isinstance(body, dict):
            if discovery:
                raise no_such_api(response, "OpenAI-compatible", self._key, self._token)
            raise MalformedResponse(f"{path}: {describe_body(response)}")
        return body, response

    def _check(self, response: httpx.Response, body: object, *, discovery: bool = False) -> None:
        """Raise for an error answer, including HTTP 200 with an error body."""
        err: Mapping[str, Any] | None = None
        if isinstance(body, Mapping):
            inner = body.get("error")
            err = inner if isinstance(inner, Mapping) else body if body.get("success") is False else None
        if response.is_success and err is None:
            return
        if (err is None or discovery and response.status_code == 404) and not_the_api(response, discovery=discovery):
            raise no_such_api(response, "OpenAI-compatible", self._key, self._token)
        raise error_from(response.status_code, err, response.headers, self._key, self._token)


async def _chunks(response: httpx.Response, key: str) -> AsyncGenerator[ChatDelta | Usage | str, None]:
    """Interpret chat chunks: the completion id once, content deltas, and the usage chunk."""
    seen_id = False
    async for chunk in json_events(response):
        if isinstance(chunk.get("error"), Mapping):
            raise error_from(None, chunk["error"], response.headers, key)
        if not seen_id and chunk.get("id"):
            seen_id = True
            yield str(chunk["id"])
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content") if isinstance(choice, Mapping) else None
            if text:
                yield ChatDelta(str(text))
        if chunk.get("usage"):
            usage = _usage(chunk["usage"])
            if usage is not None:
                yield usage


def _chat_body(model: str, messages: list[dict[str, str]], temperature: float | None, max_tokens: int | None,
               stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


def _usage(raw: object) -> Usage | None:
    """The usage a relay reported; ``None`` without one. Counts that are there but are not whole
    numbers ≥ 0 (NaN, -5) are a malformed answer: the cost would be computed from them."""
    if not isinstance(raw, Mapping) or "prompt_tokens" not in raw:
        return None
    try:
        prompt, completion = _count(raw["prompt_tokens"]), _count(raw.get("completion_tokens") or 0)
    except (TypeError, ValueError, OverflowError):
        raise MalformedResponse(f"usage: token counts are not whole numbers ≥ 0 ({_excerpt(raw)})") from None
    details = raw.get("prompt_tokens_details")
    cached = _int(details.get("cached_tokens")) if isinstance(details, Mapping) else None
    return Usage(prompt, completion, _int(raw.get("total_tokens")) or prompt + completion, cached)


def _count(value: object) -> int:
    """A token count: a whole number ≥ 0 (``5.0`` is one; ``NaN``, ``-5``, ``2.5``, ``"x"`` are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or value != int(value):
        raise ValueError(value)
    return int(value)


def _excerpt(raw: Mapping[str, Any]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in raw.items() if k.endswith("tokens"))
    return text[:120]


def _str(value: object) -> str | None:
    return None if value is None else str(value)


def _int(value: object) -> int | None:
    try:
        return None if value is None else int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None


class OpenAIProvider:
    """One relay model behind one key; cost is computed from the job's price table, or from the
    relay's own (``/api/pricing``) when the job gives none."""

    name = "openai"

    def __init__(self, client: OpenAIClient, model: str, *, prompt_price_per_million: float | None,
                 completion_price_per_million: float | None, currency: str = "USD") -> None:
        self.client = client
        self.model = self.target = model
        self.endpoint = client.base_url  # part of every request key (see pipeline.keys)
        self._currency = currency
        self._price: Price | None = None  # None: the relay's own (/api/pricing), read before the first call
        if prompt_price_per_million is not None or completion_price_per_million is not None:
            # a job file's prices are checked when it loads, a caller's here (a late import:
            # pipeline.arguments imports this package)
            from ..arguments import check_price

            self._price = Price(check_price(prompt_price_per_million, "prompt_price_per_million"),
                                check_price(completion_price_per_million, "completion_price_per_million"), currency)
        self._listed: bool | None = None
        self._per_unit: float | None = None  # quota units per US dollar (/api/status)
        self._has_token_usage = True  # until /api/usage/token/ is found missing
        self._owns_client = True

    def retarget(self, target: str, *, prompt_price_per_million: float | None = None,
                 completion_price_per_million: float | None = None) -> OpenAIProvider:
        """Another model behind the same key and client, priced from the given table (a label job's
        escalation). Closing it leaves the shared client open."""
        if prompt_price_per_million is None or completion_price_per_million is None:
            raise ValueError("a relay model needs its prompt and completion prices")
        twin = OpenAIProvider(self.client, target, prompt_price_per_million=prompt_price_per_million,
                              completion_price_per_million=completion_price_per_million,
                              currency=self._currency)
        twin.endpoint = self.endpoint
        twin._owns_client = False
        return twin

    def cost(self, usage: Usage) -> float:
        p = self._price
        assert p is not None, "priced before the first call (see complete)"
        return (usage.prompt_tokens * p.prompt_per_million + usage.completion_tokens * p.completion_per_million) / 1e6

    async def complete(self, request: PromptRequest) -> CallResult:
        if self._price is None:
            await self._relay_price()
        messages = [{"role": "user", "content": request.prompt}]
        chat = self.client.chat_streaming if request.stream else self.client.chat
        result = await chat(self.model, messages, temperature=request.temperature, max_tokens=request.max_tokens)
        u = result.usage
        if u is None:
            return CallResult(result.content, result.id, None, None, cost_source="unknown",
                              rate_limit=result.rate_limit)
        return CallResult(result.content, result.id, u.total_tokens, round(self.cost(u), 10),
                          prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                          cost_source="price_table", rate_limit=result.rate_limit)

    async def account(self) -> Account:
        """What the user has (:meth:`_user_account`), capped by the key's own quota where the relay
        says it (``/api/usage/token/``): the relay reserves against both before each call."""
        user = await self._user_account()
        key = await self._token_usage()
        if key is None or key.available is None:
            return user
        if self._per_unit is None:  # read once: the balance is read again while a job runs
            relay = await self.client.relay_pricing(self.model)
            self._per_unit = relay.quota_per_unit if relay is not None else QUOTA_PER_USD
        left = key.available / self._per_unit
        raw = {**user.raw, "key_available_quota": key.available, "key_used_quota": key.used}
        if user.remaining is not None and user.remaining <= left:
            return replace(user, raw=raw)
        note = "balance: the key's own quota (/api/usage/token/)"
        return Account(left, "USD", raw=raw, note=note if user.remaining is not None else f"{note}; {user.note}")

    async def _token_usage(self) -> TokenUsage | None:
        """The key's own quota, when the relay says it (a relay without the endpoint is not asked again)."""
        if not self._has_token_usage:
            return None
        try:
            key = await self.client.token_usage()
        except InvalidApiKey:
            raise
        except APIError:  # this read failed (an error body, a 5xx): the user's balance stands alone
            return None
        self._has_token_usage = key is not None
        return key

    async def _user_account(self) -> Account:
        """Quota from ``/api/user/self`` when a system token is set, else the billing endpoints; a relay
        with neither gives an :class:`Account` whose balance is unknown and whose ``note`` says why."""
        missing = ""
        if self.client.has_user_self:
            try:
                me = await self.client.user_self()
            except NoSuchApi as exc:
                missing = f"no /api/user/self ({exc.message}); "
            else:
                return Account(me.remaining_usd, "USD", raw={"quota": me.quota, "used_quota": me.used_quota,
                                                              "request_count": me.request_count})
        try:
            bill = await self.client.billing()
        except InvalidApiKey:
            raise
        except APIError as exc:  # many relays have no billing endpoints
            reason = exc.message if isinstance(exc, NoSuchApi) else str(exc)
            return Account(None, "USD", note=f"balance unknown: {missing}no billing ({reason})")
        return Account(bill.remaining_usd, "USD", raw={"hard_limit_usd": bill.hard_limit_usd,
                                                        "used_usd": bill.used_usd},
                       note=f"{missing}balance read from billing" if missing else None)

    async def price(self) -> Price:
        """The job's price table; a model the relay does not list is a warning (``Price.note``), not a
        refusal: wildcard routes (LiteLLM) serve models they do not list, and the first call decides."""
        price = self._price or await self._relay_price()
        if self._listed is None:
            self._listed = self.model in await self.client.models()
        if self._listed:
            return price
        return replace(price, note=f"model {self.model!r} is not in this relay's /v1/models: "
                                   "running anyway, the first call decides")

    async def _relay_price(self) -> Price:
        """The relay's own price of the model, when the job gave none."""
        relay = await self.client.relay_pricing(self.model)
        if relay is None:
            raise ConfigError(f"no prices for {self.model!r}: the job file gives none and the relay's /api/pricing "
                              "does not price it by tokens; set provider.prompt_price_per_million and "
                              "provider.completion_price_per_million")
        prompt, completion = relay.per_million()
        self._per_unit = relay.quota_per_unit
        self._price = Price(prompt, completion, "USD", note=None)
        return self._price

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()
