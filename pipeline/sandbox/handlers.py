"""Steps both APIs' handlers share: a log record per request, logging the reply, injected faults.

Each API says how its own errors look (:meth:`Handlers._error_reply`) and what a success body
looks like (:meth:`Handlers._sample_body`, cut in half for ``malformed``); the faults that look the
same everywhere (HTML 502, reset, hang) live here.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .config import POST_CHARGE_FAULTS, STREAM_FAULTS
from .log import fingerprint
from .state import SandboxState
from .wire import BAD_GATEWAY_HTML, abort, bearer, new_record, trickle, truncated

__all__ = ["Handlers"]


class Handlers:
    api = ""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.cfg = state.cfg

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def _record(self, request: web.Request, key: str | None) -> dict[str, Any]:
        return new_record(self.api, request, self.state.clock(), fingerprint(key) if key else None)

    def _finish(self, rec: dict[str, Any], response: web.StreamResponse, code: str | None = None) -> web.StreamResponse:
        """Log the request with the reply's status, and return the reply."""
        rec["status"], rec["code"] = response.status, code
        self.state.log.append(rec)
        return response

    def _error_reply(self, rec: dict[str, Any], fault: str, key: str = "") -> web.StreamResponse:
        """This API's reply (logged) for ``rate_limit``, ``server_error``, ``success_false``, ``hang``,
        ``conflict``, ``context_window`` or ``echo_key`` (which quotes ``key``)."""
        raise NotImplementedError

    def _sample_body(self, rec: dict[str, Any]) -> dict[str, Any]:
        """A plausible success body, for ``malformed`` to cut short."""
        raise NotImplementedError

    async def _fault_reply(self, request: web.Request, rec: dict[str, Any], fault: str,
                           stream: bool = False) -> web.StreamResponse | None:
        """The reply an injected fault gives instead of an answer; None for stream faults. Nothing is charged."""
        if fault in STREAM_FAULTS or fault in POST_CHARGE_FAULTS:
            return None  # the answer path charges first, then applies it
        if fault == "bad_gateway_html":
            return self._finish(rec, web.Response(status=502, text=BAD_GATEWAY_HTML, content_type="text/html"))
        if fault == "reset":
            self.state.log.append(rec)
            return abort(request, reset=True)
        if fault == "malformed":
            return self._finish(rec, await truncated(request, self._sample_body(rec), stream))
        if fault == "trickle":
            self._finish(rec, web.Response(status=200))  # logged as answered; the body never completes
            return await trickle(request, self.cfg.hang_seconds, stream)
        reply = self._error_reply(rec, fault, bearer(request) or "")
        if fault == "hang":  # logged now; answered (504) when the client has long given up
            await asyncio.sleep(self.cfg.hang_seconds)
        return reply

    async def _after_charge(self, request: web.Request, rec: dict[str, Any], body: Any,
                            stream: bool) -> web.StreamResponse | None:
        """A post-charge fault: the call is paid for, the answer is lost on the way (logged as charged)."""
        if rec["fault"] == "charged_reset":
            self.state.log.append(rec)
            return abort(request, reset=True)
        if rec["fault"] == "charged_malformed":
            return self._finish(rec, await truncated(request, body, stream))
        return None

    async def _other_fault(self, request: web.Request, rec: dict[str, Any]) -> web.StreamResponse | None:
        """A fault on a request that is not a call (only with ``faults.apply_to = "all"``)."""
        picker = self.state.faults
        if picker.faults.apply_to != "all":
            return None
        subject = rec["key"] or ""
        rec["n"] = n = self.state.seen(subject, request.path)
        rec["fault"] = fault = picker.choose(subject, request.path, n, call=False)
        return None if fault is None else await self._fault_reply(request, rec, fault)
