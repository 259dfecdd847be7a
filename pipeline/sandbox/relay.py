"""The OpenAI-compatible relay (contract §2, new-api family): models, chat completions, billing, user.

With ``[new_api]`` it behaves as a new-api / one-api relay does (:mod:`.newapi`): the model rate
limit's two counters, the reservation before each call, the key's own quota, no channel, upstream
saturation, request ids, and ``/api/pricing``, ``/api/status``, ``/api/usage/token/``.

Tokens: ``prompt_tokens`` = o200k count of every message content + 4 per message + 3 (OpenAI's
chat framing); ``completion_tokens`` as for MOMO. Charge: :func:`~.catalog.quota_units` from
:data:`~.catalog.RELAY_PRICES`. Errors look the way such relays really send them: an empty-bodied
429, 403 ``insufficient_user_quota``, 503 ``model_not_found``, and HTTP 200 bodies carrying an
error on the billing and ``/api/user/self`` endpoints.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import newapi
from .answers import answer, completion_tokens, count_tokens
from .catalog import QUOTA_PER_USD, RELAY_PRICES, Price, quota_units
from .faults import told
from .handlers import Handlers
from .state import RelayKey, RelayUser, SandboxState
from .wire import EventStream, bearer, json_reply, pieces, request_id, stream_reply

__all__ = ["ChatParams", "RelayApi", "parse_chat"]

_PER_MESSAGE, _PER_REPLY = 4, 3


@dataclass(frozen=True, slots=True)
class ChatParams:
    model: str
    messages: list[tuple[str, str]]  # (role, text)
    temperature: float
    max_tokens: int | None
    stream: bool
    include_usage: bool

    @property
    def transcript(self) -> str:
        """The conversation as one text: what ``prompt_sha`` hashes and answers are keyed on."""
        return "\n".join(f"{role}: {text}" for role, text in self.messages)


def _text(content: Any) -> str | None:
    """A message's text: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    return None


def _messages(raw: Any) -> list[tuple[str, str]] | str:
    if not isinstance(raw, list) or not raw:
        return "messages must be a non-empty array"
    out = []
    for m in raw:
        text = _text(m.get("content")) if isinstance(m, dict) else None
        if text is None or not isinstance(m.get("role"), str):
            return "each message needs a string role and a content"
        out.append((m["role"], text))
    return out


def parse_chat(body: bytes) -> ChatParams | str:
    """The request's parameters, or an error message (HTTP 400)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "invalid JSON body"
    if not isinstance(data, dict) or not isinstance(data.get("model"), str):
        return "model is required"
    messages = _messages(data.get("messages"))
    if isinstance(messages, str):
        return messages
    temperature = data.get("temperature")
    if temperature is not None and not (isinstance(temperature, int | float) and not isinstance(temperature, bool)
                                        and math.isfinite(temperature) and 0 <= temperature <= 2):
        return "temperature must be between 0 and 2"
    max_tokens = data.get("max_tokens")
    if max_tokens is not None and not (isinstance(max_tokens, int) and not isinstance(max_tokens, bool)
                                       and max_tokens >= 1):
        return "max_tokens must be a positive integer"
    stream, options = data.get("stream"), data.get("stream_options") or {}
    if (stream is not None and not isinstance(stream, bool)) or not isinstance(options, dict):
        return "stream must be a boolean and stream_options an object"
    return ChatParams(data["model"], messages, 1.0 if temperature is None else float(temperature),
                      max_tokens, bool(stream), options.get("include_usage") is True)


def _error(message: str, code: str = "", kind: str = "new_api_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": code}}


class RelayApi(Handlers):
    """Request handlers over a :class:`SandboxState`."""

    api = "relay"

    def __init__(self, state: SandboxState) -> None:
        super().__init__(state)
        self.new_api = state.cfg.new_api
        self.model_rate = (newapi.ModelRateLimit(self.new_api, state.cfg.window_seconds)
                           if self.new_api is not None else None)

    def routes(self) -> list[web.RouteDef]:
        routes = [web.get("/v1/models", self.models), web.post("/v1/chat/completions", self.chat),
                  web.get("/v1/dashboard/billing/subscription", self.subscription),
                  web.get("/v1/dashboard/billing/usage", self.usage), web.get("/api/user/self", self.user_self)]
        if self.new_api is not None:
            routes += [web.get("/api/pricing", self.pricing), web.get("/api/status", self.status),
                       web.get("/api/usage/token/", self.token_usage)]
        return routes

    # -- shared steps -----------------------------------------------------------------------------
    def _fail(self, rec: dict[str, Any], status: int, body: dict[str, Any], log_code: str | None = None,
              ) -> web.StreamResponse:
        """An error body; the log records its ``code``, or ``log_code`` where the body has none.

        With ``relay_numeric_codes`` the body's code is the HTTP status as a string, as LiteLLM sends it.
        """
        code = body["error"]["code"] or log_code
        if self.cfg.relay_numeric_codes:
            body = {"error": {**body["error"], "code": str(status)}}
        if self.new_api is not None:  # every error message ends with the request's id
            rec["request_id"] = rid = rec["request_id"] or newapi.new_request_id()
            body = {"error": {**body["error"], "message": newapi.with_request_id(body["error"]["message"], rid)}}
            if self.new_api.flavour == "one-api" and not body["error"]["code"]:
                body = {"error": {"message": body["error"]["message"], "type": "one_api_error"}}
        return self._finish(rec, json_reply(body, status), code)

    def _finish(self, rec: dict[str, Any], response: web.StreamResponse, code: str | None = None,
                ) -> web.StreamResponse:
        if self.new_api is not None and not response.prepared:
            rec["request_id"] = rec["request_id"] or newapi.new_request_id()
            response.headers[newapi.REQUEST_ID_HEADER] = rec["request_id"]
        return super()._finish(rec, response, code)

    def _authorize(self, request: web.Request) -> tuple[dict[str, Any], RelayKey | None]:
        key = bearer(request)
        return self._record(request, key), self.state.relay.get(key) if key else None

    def _error_reply(self, rec: dict[str, Any], fault: str, key: str = "") -> web.StreamResponse:
        if fault == "conflict":
            return self._fail(rec, 409, _error("request conflict: a request with this id is in progress", "conflict"))
        if fault == "context_window":
            return self._fail(rec, 400, _error(
                "This model's maximum context length is 128000 tokens. However, your messages resulted in "
                "131072 tokens. Please reduce the length of the messages.", "context_length_exceeded",
                "invalid_request_error"))
        if fault == "echo_key":
            return self._fail(rec, 400, _error(f"token {key[3:]} may not set this parameter", "invalid_request",
                                               "invalid_request_error"))
        if fault == "rate_limit":  # as relays do: no body, no Retry-After
            return self._finish(rec, web.Response(status=429), "rate_limit")
        if fault == "long_rate_limit":  # a relay that does say how long: a long time
            retry = {"Retry-After": f"{self.cfg.faults.long_retry_after:g}"}
            return self._finish(rec, web.Response(status=429, headers=retry), "rate_limit")
        if fault == "hang":
            return self._fail(rec, 504, _error("upstream timed out", "timeout", "upstream_error"))
        if fault == "upstream_saturated":  # one-api's rewrite of any upstream 429
            return self._fail(rec, 429, _error(newapi.saturated()), "upstream_saturated")
        if fault == "success_false":  # an error body with HTTP 200
            return self._fail(rec, 200, _error("upstream returned an empty response", "empty_response"))
        return self._fail(rec, 500, _error("upstream error: do request failed", "do_request_failed", "upstream_error"))

    def _sample_body(self, rec: dict[str, Any]) -> dict[str, Any]:
        return _completion(request_id("chatcmpl-"), str(rec["target"]), "Answer to: …", 10, 10)

    # -- endpoints --------------------------------------------------------------------------------
    async def models(self, request: web.Request) -> web.StreamResponse:
        rec, key = self._authorize(request)
        if key is None:
            return self._fail(rec, 401, _error("无效的令牌"), "invalid_token")
        if (reply := await self._other_fault(request, rec)) is not None:
            return reply
        data = [{"id": name, "object": "model", "created": 0, "owned_by": price.owned_by}
                for name, price in RELAY_PRICES.items() if name not in self.cfg.hidden_models]
        return self._finish(rec, json_reply({"object": "list", "data": data}))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        rec, key = self._authorize(request)
        if key is None:
            return self._fail(rec, 401, _error("无效的令牌"), "invalid_token")
        params = parse_chat(await request.read())
        if isinstance(params, str):
            return self._fail(rec, 400, _error(params, "invalid_request", "invalid_request_error"))
        rec["target"], rec["stream"] = params.model, params.stream
        token = bearer(request) or ""
        if self.new_api is not None and (refused := self._gate(rec, token, key, params.model)) is not None:
            return refused
        price = RELAY_PRICES.get(params.model)
        if price is None:
            return self._fail(rec, 503, _error(f"当前分组 default 下对于模型 {params.model} 无可用渠道",
                                               "model_not_found"))
        transcript = params.transcript
        rec["prompt_sha"] = sha = hashlib.sha256(transcript.encode()).hexdigest()
        rec["n"] = n = self.state.seen(rec["key"], sha)
        if key.limiter is not None and not key.limiter.acquire(self.state.clock()).allowed:
            return self._error_reply(rec, "rate_limit")
        rec["fault"] = fault = self.state.faults.choose(rec["key"], sha, n, call=True, stream=params.stream)
        if fault is not None and (reply := await self._fault_reply(request, rec, fault, params.stream)):
            return reply
        if self.cfg.latency_ms:
            await asyncio.sleep(self.state.latency())
        return await self._answer(request, rec, key, params, price, transcript)

    def _gate(self, rec: dict[str, Any], token: str, key: RelayKey, model: str) -> web.StreamResponse | None:
        """new-api's steps before a call, in its order: the key's own quota, the model rate limit,
        a channel for the model."""
        assert self.new_api is not None and self.model_rate is not None
        if key.remain_quota is not None and key.remain_quota <= 0:
            return self._fail(rec, 401, _error(newapi.exhausted(token)), "token_exhausted")
        if (said := self.model_rate.check(key.user.user_id, self.state.clock())) is not None:
            return self._fail(rec, 429, _error(said), "model_rate_limit")
        if model in self.new_api.no_channel_models or model not in RELAY_PRICES:
            message, code = newapi.no_channel(self.new_api, model)
            return self._fail(rec, 503, _error(message, code), "no_channel")
        return None

    def _reserve(self, rec: dict[str, Any], key: RelayKey, price: Price, prompt_tokens: int,
                 params: ChatParams) -> web.StreamResponse | None:
        """new-api's reservation: the user's quota, then the key's own, must cover it."""
        assert self.new_api is not None
        held = newapi.reservation(price, prompt_tokens, params.max_tokens, self.new_api.group_ratio)
        user = key.user
        if user.quota <= 0:
            return self._fail(rec, 403, _error(f"用户额度不足, 剩余额度: {user.quota}", "insufficient_user_quota"))
        if user.quota < held:
            return self._fail(rec, 403, _error(f"预扣费额度失败, 用户剩余额度: {user.quota}, 需要预扣费额度: {held}",
                                               "insufficient_user_quota"))
        if key.remain_quota is not None and key.remain_quota < held:
            return self._fail(rec, 403, _error(f"令牌额度不足, 剩余额度: {key.remain_quota}, 需要预扣费额度: {held}",
                                               "pre_consume_token_quota_failed"))
        return None

    async def _answer(self, request: web.Request, rec: dict[str, Any], key: RelayKey, params: ChatParams,
                      price: Price, transcript: str) -> web.StreamResponse:
        user = key.user
        prompt_tokens = sum(count_tokens(text) for _, text in params.messages)
        prompt_tokens += _PER_MESSAGE * len(params.messages) + _PER_REPLY
        completion = completion_tokens(params.model, transcript, params.max_tokens)
        quota = quota_units(price, prompt_tokens, completion)
        if self.new_api is not None:
            if (refused := self._reserve(rec, key, price, prompt_tokens, params)) is not None:
                return refused
            quota = round(quota * self.new_api.group_ratio)
        elif user.quota < quota:
            return self._fail(rec, 403, _error(f"用户额度不足, 剩余额度: {user.quota}", "insufficient_user_quota"))
        user.used_quota += quota
        user.request_count += 1
        key.used_quota += quota
        if key.remain_quota is not None:
            key.remain_quota -= quota  # may go below 0: the next call finds the key used up
        if self.model_rate is not None:
            self.model_rate.succeeded(user.user_id, self.state.clock())
        rid = request_id("chatcmpl-")
        rec.update(charged=True, cost=quota / QUOTA_PER_USD, tokens_used=prompt_tokens + completion, quota=quota)
        # new-api's own id of the request (its header) is not the completion's id (the body's)
        rec["request_id"] = newapi.new_request_id() if self.new_api is not None else rid
        content = answer(params.model, params.messages[-1][1], params.temperature, rec["n"],
                         labeller=self.state.labeller)
        body = _completion(rid, params.model, content, prompt_tokens, completion)
        body["usage"] = usage = told(rec["fault"], body["usage"])  # a lying fault's figures
        if (lost := await self._after_charge(request, rec, body, params.stream)):
            return lost
        if not params.stream:
            return self._finish(rec, json_reply(body))
        return await self._stream(request, rec, rid, params, content, usage)

    async def _stream(self, request: web.Request, rec: dict[str, Any], rid: str, params: ChatParams, content: str,
                      usage: dict[str, Any]) -> web.StreamResponse:
        fault, created = rec["fault"], int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": params.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        deltas = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": p}) for p in pieces(content)]
        tail: list[Any] = [chunk({}, "stop")]
        if params.include_usage and fault != "stream_no_summary":
            tail.append({**chunk({}), "choices": [], "usage": usage})
        tail.append("[DONE]")
        stream = EventStream.framed_for(request, fault)
        self._finish(rec, stream.response)  # charged now, whatever happens to the stream
        error = _error("upstream stream broken", "bad_response_body", "upstream_error")
        return await stream_reply(stream, deltas, tail, fault, error)

    async def subscription(self, request: web.Request) -> web.StreamResponse:
        rec, key = self._authorize(request)
        if key is None:
            # new-api answers billing errors with HTTP 200
            return self._fail(rec, 200, _error("无效的令牌"), "invalid_token")
        if (reply := await self._other_fault(request, rec)) is not None:
            return reply
        limit = key.user.hard_limit_usd
        return self._finish(rec, json_reply({
            "object": "billing_subscription", "has_payment_method": True, "soft_limit_usd": limit,
            "hard_limit_usd": limit, "system_hard_limit_usd": limit, "access_until": 0}))

    async def usage(self, request: web.Request) -> web.StreamResponse:
        rec, key = self._authorize(request)
        if key is None:
            return self._fail(rec, 200, _error("无效的令牌"), "invalid_token")
        if (reply := await self._other_fault(request, rec)) is not None:
            return reply
        cents = key.user.used_quota / QUOTA_PER_USD * 100
        return self._finish(rec, json_reply({"object": "list", "total_usage": cents}))

    async def user_self(self, request: web.Request) -> web.StreamResponse:
        token = bearer(request)
        rec = self._record(request, token)
        user = self._logged_in(token, request.headers.get("New-Api-User"))
        if isinstance(user, str):
            return self._finish(rec, json_reply({"success": False, "message": user}), "unauthorized")
        if (reply := await self._other_fault(request, rec)) is not None:
            return reply
        data = {"id": int(user.user_id) if user.user_id.isdigit() else user.user_id, "username": "sandbox",
                "display_name": "Sandbox", "role": 1, "status": 1, "group": "default", "quota": user.quota,
                "used_quota": user.used_quota, "request_count": user.request_count}
        return self._finish(rec, json_reply({"success": True, "message": "", "data": data}))

    # -- what the sk- key alone reads on new-api ---------------------------------------------------
    async def pricing(self, request: web.Request) -> web.StreamResponse:
        assert self.new_api is not None
        return self._finish(self._record(request, bearer(request)), json_reply(newapi.pricing(self.new_api)))

    async def status(self, request: web.Request) -> web.StreamResponse:
        return self._finish(self._record(request, bearer(request)), json_reply(newapi.status()))

    async def token_usage(self, request: web.Request) -> web.StreamResponse:
        rec, key = self._authorize(request)
        if key is None:
            return self._finish(rec, json_reply({"success": False, "message": "无效的令牌"}, 401), "invalid_token")
        return self._finish(rec, json_reply(newapi.token_usage(key.remain_quota, key.used_quota)))

    def _logged_in(self, token: str | None, claimed: str | None) -> RelayUser | str:
        """The user a system access token and ``New-Api-User`` header name, or why not."""
        user_id = self.state.cfg.access_tokens.get(token) if token else None
        if user_id is None:
            return "无权进行此操作，access token 无效"
        if not claimed:
            return "无权进行此操作，未提供 New-Api-User"
        if claimed != user_id:
            return "无权进行此操作，New-Api-User 与登录用户不匹配"
        return self.state.users.get(user_id) or "用户不存在"


def _usage(prompt_tokens: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion, "prompt_tokens_details": {"cached_tokens": 0}}


def _completion(rid: str, model: str, content: str, prompt_tokens: int, completion: int) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": _usage(prompt_tokens, completion)}
