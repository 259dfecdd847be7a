"""The MOMO agent API (contract §1): ``/v1/agents``, ``/v1/agents/{id}``, ``/v1/account/balance``.

A call is checked in the contract's order: auth → agent → params → rate limit → fault →
balance/charge. Only agent calls count against the rate limit (listing and balance reads are
free), and faults hit calls only unless ``faults.apply_to = "all"``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .answers import PROMPT_OVERHEAD, answer, completion_tokens, count_tokens
from .catalog import LABEL_AGENT_IDS, Agent
from .faults import told
from .handlers import Handlers
from .ratelimit import Decision
from .state import MomoAccount
from .wire import EventStream, bearer, json_reply, pieces, request_id, stream_reply

__all__ = ["MAX_TOKENS", "CallParams", "MomoApi", "parse_call"]

MAX_TOKENS = 4096
DEFAULT_TEMPERATURE = 0.7


@dataclass(frozen=True, slots=True)
class CallParams:
    prompt: str
    temperature: float
    max_tokens: int | None
    stream: bool


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_call(body: bytes) -> CallParams | str:
    """The call's parameters, or the ``details`` text of an INVALID_PARAMETERS error."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "请求体不是合法的 JSON"
    if not isinstance(data, dict):
        return "请求体必须是 JSON 对象"
    prompt = data.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return "prompt 为必填的非空字符串"
    temperature = data.get("temperature")
    if temperature is not None and not (_is_number(temperature) and 0 <= temperature <= 1):
        return "temperature 必须是 0 到 1 之间的数"
    max_tokens = data.get("max_tokens")
    if max_tokens is not None and not (isinstance(max_tokens, int) and not isinstance(max_tokens, bool)
                                       and 1 <= max_tokens <= MAX_TOKENS):
        return f"max_tokens 必须是 1 到 {MAX_TOKENS} 之间的整数"
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return "stream 必须是布尔值"
    return CallParams(prompt, DEFAULT_TEMPERATURE if temperature is None else float(temperature),
                      max_tokens, bool(stream))


def _whole(text: str) -> int | None:
    """A positive whole number written in plain ASCII digits ("1_0", " 7" and "+3" are not), else None."""
    return int(text) if text.isascii() and text.isdigit() and int(text) > 0 else None


def _seconds(value: float) -> str:
    """Seconds for a header, rounded up to the millisecond: a client that waits this long is not early."""
    return f"{max(math.ceil(value * 1000), 1) / 1000:.3f}"


def _error(code: str, message: str, details: str) -> dict[str, Any]:
    return {"success": False, "error": {"code": code, "message": message, "details": details}}


class MomoApi(Handlers):
    """Request handlers over a :class:`SandboxState`."""

    api = "momo"

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/agents", self.list_agents), web.post("/v1/agents/{agent_id}", self.call),
                web.get("/v1/account/balance", self.balance)]

    # -- shared steps -----------------------------------------------------------------------------
    def _fail(self, rec: dict[str, Any], status: int, code: str, message: str, details: str,
              headers: dict[str, str] | None = None) -> web.StreamResponse:
        return self._finish(rec, json_reply(_error(code, message, details), status, headers), code)

    def _authorize(self, request: web.Request) -> tuple[dict[str, Any], MomoAccount | None]:
        key = bearer(request)
        return self._record(request, key), self.state.momo.get(key) if key else None

    def _unauthorized(self, rec: dict[str, Any]) -> web.StreamResponse:
        return self._fail(rec, 401, "INVALID_API_KEY", "API Key 无效", "检查 API Key 是否正确")

    def _rate_headers(self, decision: Decision | None) -> dict[str, str]:
        if decision is None or not self.cfg.rate_headers:
            return {}
        reset = _seconds(decision.reset)
        headers = {"X-RateLimit-Limit": str(decision.limit), "X-RateLimit-Remaining": str(decision.remaining),
                   "X-RateLimit-Reset": reset}
        if not decision.allowed:
            headers["Retry-After"] = reset
        return headers

    def _error_reply(self, rec: dict[str, Any], fault: str, key: str = "") -> web.StreamResponse:
        if fault == "conflict":
            return self._fail(rec, 409, "CONFLICT", "请求冲突", "同一请求正在处理中")
        if fault == "context_window":
            return self._fail(rec, 400, "INVALID_PARAMETERS", "参数错误", "prompt 超出模型的上下文窗口")
        if fault == "echo_key":
            return self._fail(rec, 400, "INVALID_PARAMETERS", "参数错误", f"密钥 {key[3:]} 无权设置该参数")
        if fault == "rate_limit":  # an injected 429 says "wait one (scaled) second"
            headers = {"Retry-After": _seconds(self.cfg.window_seconds / 60)} if self.cfg.rate_headers else {}
            return self._fail(rec, 429, "RATE_LIMIT", "请求过于频繁", "稍后重试,遵守限流规则", headers)
        if fault == "long_rate_limit":
            headers = {"Retry-After": _seconds(self.cfg.faults.long_retry_after)}
            return self._fail(rec, 429, "RATE_LIMIT", "请求过于频繁", "稍后重试,遵守限流规则", headers)
        if fault == "hang":
            return self._fail(rec, 504, "INTERNAL_ERROR", "网关超时", "upstream model did not answer in time")
        status = 200 if fault == "success_false" else 500
        return self._fail(rec, status, "INTERNAL_ERROR", "服务器内部错误", "upstream model failed")

    def _sample_body(self, rec: dict[str, Any]) -> dict[str, Any]:
        return {"success": True, "data": {"id": request_id("req_"), "content": "Answer to: …", "tokens_used": 100,
                                          "cost": 0.001}}

    # -- endpoints --------------------------------------------------------------------------------
    async def list_agents(self, request: web.Request) -> web.StreamResponse:
        rec, account = self._authorize(request)
        if account is None:
            return self._unauthorized(rec)
        page = _whole(request.query.get("page", "1"))
        page_size = _whole(request.query.get("page_size", "20"))
        if not page or not page_size or page_size > 100:
            return self._fail(rec, 400, "INVALID_PARAMETERS", "参数错误", "page ≥ 1, 1 ≤ page_size ≤ 100")
        if (reply := await self._other_fault(request, rec)) is not None:
            return reply
        agents = list(self.state.agents.values())[(page - 1) * page_size: page * page_size]
        data = {"agents": [a.as_json() for a in agents], "total": len(self.state.agents),
                "page": page, "page_size": page_size}
        return self._finish(rec, json_reply({"success": True, "data": data}))

    async def balance(self, request: web.Request) -> web.StreamResponse:
        rec, account = self._authorize(request)
        if account is None:
            return self._unauthorized(rec)
        if (reply := await self._other_fault(request, rec)) is not None:
            return reply
        data = {"balance": round(account.balance, 6), "currency": "CNY",
                "agents": [{"agent_id": a, "remaining_tokens": t} for a, t in sorted(account.packages.items())]}
        return self._finish(rec, json_reply({"success": True, "data": data}))

    async def call(self, request: web.Request) -> web.StreamResponse:
        rec, account = self._authorize(request)
        if account is None:
            return self._unauthorized(rec)
        agent = self._agent(request.match_info["agent_id"], rec)
        if agent is None:
            return self._fail(rec, 404, "AGENT_NOT_FOUND", "智能体不存在", f"agent_id {rec['target']} 不存在")
        params = parse_call(await request.read())
        if isinstance(params, str):
            return self._fail(rec, 400, "INVALID_PARAMETERS", "参数错误", params)
        rec["prompt_sha"] = sha = hashlib.sha256(params.prompt.encode()).hexdigest()
        rec["n"] = n = self.state.seen(rec["key"], sha)
        rec["stream"] = params.stream
        decision = account.limiter.acquire(self.state.clock()) if account.limiter is not None else None
        headers = self._rate_headers(decision)
        if decision is not None and not decision.allowed:
            return self._fail(rec, 429, "RATE_LIMIT", "请求过于频繁", f"{decision.limit} 请求/分钟", headers)
        rec["fault"] = fault = self.state.faults.choose(rec["key"], sha, n, call=True, stream=params.stream)
        if fault is not None and (reply := await self._fault_reply(request, rec, fault, params.stream)):
            return reply
        if self.cfg.latency_ms:
            await asyncio.sleep(self.state.latency())
        return await self._answer(request, rec, account, agent, params, headers)

    def _agent(self, raw_id: str, rec: dict[str, Any]) -> Agent | None:
        agent_id = _whole(raw_id)
        rec["target"] = raw_id if agent_id is None else agent_id
        return None if agent_id is None else self.state.agents.get(agent_id)

    async def _answer(self, request: web.Request, rec: dict[str, Any], account: MomoAccount, agent: Agent,
                      params: CallParams, headers: dict[str, str]) -> web.StreamResponse:
        prompt = params.prompt
        tokens = count_tokens(prompt) + PROMPT_OVERHEAD + completion_tokens(agent.id, prompt, params.max_tokens)
        charge = self.state.quote(account, agent, tokens)
        if account.balance < charge.cost:
            details = f"当前余额: {account.balance:.2f} 元,本次请求需要: {charge.cost:.4f} 元"
            return self._fail(rec, 402, "INSUFFICIENT_BALANCE", "余额不足", details, headers)
        self.state.apply(account, agent, charge)
        rid = request_id("req_")
        rec.update(charged=True, cost=charge.cost, tokens_used=tokens, package_tokens=charge.package_tokens,
                   request_id=rid)
        labeller = self.state.labeller if agent.id in LABEL_AGENT_IDS else None
        content = answer(agent.id, prompt, params.temperature, rec["n"], labeller=labeller)
        # a lying answer: cost -x and tokens -n, or a NaN cost beside honest tokens
        usage = told(rec["fault"], {"tokens_used": tokens, "cost": charge.cost}, nan=("cost",))
        data = {"id": rid, "content": content, **usage}
        if (lost := await self._after_charge(request, rec, {"success": True, "data": data}, params.stream)):
            return lost
        if not params.stream:
            return self._finish(rec, json_reply({"success": True, "data": data}, headers=headers))
        fault = rec["fault"]
        summary = {"done": True, "id": rid, **usage}
        stream = EventStream.framed_for(request, fault, headers)
        self._finish(rec, stream.response)  # charged now, whatever happens to the stream
        tail = ["[DONE]"] if fault == "stream_no_summary" else [summary, "[DONE]"]
        error = {"error": {"code": "SERVER_ERROR", "message": "upstream model failed mid-stream"}}
        return await stream_reply(stream, [{"delta": p} for p in pieces(content)], tail, fault, error)
