"""The HTTP layer both clients share: one ``httpx.AsyncClient`` and one translation of failures.

We keep httpx's API (requests, ``MockTransport`` in tests) but not, by default, its connection
pool: httpcore's pool does work quadratic in the number of open connections (upstream PR #1035),
which capped a 100-in-flight job at a few hundred requests/s at 100 % CPU. The ``aiohttp``
transport (``httpx-aiohttp``) keeps the httpx surface over aiohttp's pool; ``bench/transport.py``
measures both and the README records the figures. ``MOMO_BATCH_TRANSPORT=httpx`` picks httpx's
own pool.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Literal, Self

import anyio
import httpx
from httpx_sse import EventSource, SSEError

from ..errors import (
    APIError,
    ConnectionLost,
    MalformedResponse,
    NoSuchApi,
    RateLimited,
    Timeout,
    check_secret,
    classify,
    redact,
    server_code,
)
from .base import RateLimitInfo

TransportName = Literal["aiohttp", "httpx"]
DEFAULT_TRANSPORT: TransportName = "aiohttp"


def transport_name() -> TransportName:
    """The transport to use: ``MOMO_BATCH_TRANSPORT`` or the measured default."""
    name = os.environ.get("MOMO_BATCH_TRANSPORT", DEFAULT_TRANSPORT)
    return "httpx" if name == "httpx" else "aiohttp"


class ClientBase:
    """What both clients share: ``async with``, ``aclose``, and a repr that never shows the key."""

    _http: httpx.AsyncClient

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    @property
    def base_url(self) -> str:
        return str(self._http.base_url).rstrip("/")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _CookielessClient(httpx.AsyncClient):
    """httpx builds a urllib ``Request`` per response to look for cookies: ~75 µs of CPU per call
    here (16 % of a call). Both APIs authenticate by header, so there is nothing to keep, and
    httpx has no switch for it."""

    _jar = _NoCookies()

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._urls: dict[str, httpx.URL] = {}
        self._timeout_extension = {"timeout": self.timeout.as_dict()}

    @property  # type: ignore[override]
    def cookies(self) -> httpx.Cookies:
        return self._jar

    @cookies.setter
    def cookies(self, value: object) -> None:
        pass

    def build_request(self, method: str, url: httpx.URL | str, *, params: Any = None, headers: Any = None,
                      cookies: Any = None, timeout: Any = httpx.USE_CLIENT_DEFAULT, extensions: Any = None,
                      **body: Any) -> httpx.Request:
        """httpx joins the path onto the base URL and merges headers, cookies, params and the
        timeout afresh for every request (~10 % of a call's CPU, py-spy on ``bench/run.py``). A
        call with none of its own has the same URL and headers every time: those are built once."""
        if (headers is None and params is None and cookies is None and extensions is None
                and timeout is httpx.USE_CLIENT_DEFAULT and isinstance(url, str)):
            full = self._urls.get(url)
            if full is None:
                full = self._merge_url(url)
                if len(self._urls) < 1024:  # one per path: an endpoint, or an agent's call
                    self._urls[url] = full
            return httpx.Request(method, full, headers=self.headers, extensions=self._timeout_extension, **body)
        return super().build_request(method, url, params=params, headers=headers, cookies=cookies,
                                     timeout=timeout, extensions=extensions, **body)


def build_http_client(
    base_url: str,
    *,
    headers: dict[str, str],
    timeout: float,
    max_connections: int = 100,
    transport: httpx.AsyncBaseTransport | TransportName | None = None,
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for ``base_url``; ``transport`` may be a ready transport (tests)."""
    for value in headers.values():
        check_secret(value.removeprefix("Bearer "), "the API key")
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    if transport is None:
        transport = transport_name()
    if transport == "aiohttp":
        from ._aiohttp import WholeBodyTransport

        transport = WholeBodyTransport(limits=limits)
    elif transport == "httpx":
        transport = httpx.AsyncHTTPTransport(limits=limits)
    return _CookielessClient(
        base_url=base_url.rstrip("/") + "/",
        headers=headers,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        transport=transport,
        follow_redirects=False,
    )


@contextlib.contextmanager
def translated(*secrets: str | None) -> Iterator[None]:
    """Turn transport failures into the error tree; never let a key into a message."""
    try:
        yield
    except APIError:
        raise
    except httpx.TimeoutException as exc:
        # httpx-aiohttp reports every aiohttp connection error as ConnectTimeout; only a cause that
        # is a real timeout (or none: httpx's own pool) is one. A reset is a lost connection.
        if exc.__cause__ is None or isinstance(exc.__cause__, TimeoutError):
            raise Timeout(f"no answer in time ({type(exc).__name__})") from None
        raise ConnectionLost(redact(f"{type(exc.__cause__).__name__}: {exc}", *secrets)) from None
    except (httpx.TransportError, OSError) as exc:
        # aiohttp's disconnects arrive as httpx.ConnectTimeout/ReadError via httpx-aiohttp's map;
        # their text can carry the URL, never a header, but we scrub it anyway.
        raise ConnectionLost(redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                                    *secrets)) from None
    except httpx.DecodingError as exc:
        raise MalformedResponse(redact(str(exc), *secrets)) from None


def retry_after(headers: httpx.Headers) -> float | None:
    """``Retry-After`` in seconds (integer or fractional); an HTTP date is ignored."""
    return _float(headers.get("retry-after"))


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number >= 0 else None


def _int(value: str | None) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def rate_limit_info(headers: httpx.Headers) -> RateLimitInfo | None:
    """``X-RateLimit-*`` as seconds-from-now; a reset given as a Unix time is converted."""
    limit, remaining = _int(headers.get("x-ratelimit-limit")), _int(headers.get("x-ratelimit-remaining"))
    reset = _float(headers.get("x-ratelimit-reset"))
    if limit is None and remaining is None and reset is None:
        return None
    if reset is not None and reset > 1e9:  # an epoch timestamp, not a duration
        reset = max(0.0, reset - time.time())
    return RateLimitInfo(limit=limit, remaining=remaining, reset=reset)


def json_body(response: httpx.Response) -> object | None:
    """The body as JSON, or ``None`` when it is empty, HTML or cut short."""
    try:
        return response.json() if response.content else None
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both
        return None


def describe_body(response: httpx.Response) -> str:
    """A short, key-free description of a body that is not the contract's JSON."""
    kind = response.headers.get("content-type", "").split(";")[0] or "no content type"
    return f"HTTP {response.status_code}, {len(response.content)} bytes of {kind}"


def error_from(status: int | None, err: Mapping[str, Any] | None, headers: httpx.Headers,
               *secrets: str | None) -> APIError:
    """The exception for an error answer (both services): :func:`~pipeline.errors.classify` picks the
    class from ``err["code"]`` and ``status``; ``err`` is the body's error object (``None``: none)."""
    err = err or {}
    raw = server_code(err.get("code"))
    message = redact(str(err.get("message") or (f"HTTP {status}" if status else "no message")), *secrets)
    details = redact(str(err["details"]), *secrets) if err.get("details") else None
    cls = classify(status, raw)
    if cls is RateLimited:
        info = rate_limit_info(headers)
        return RateLimited(message, status=status, details=details, server_code=raw, retry_after=retry_after(headers),
                           remaining=info.remaining if info else None, reset=info.reset if info else None)
    return cls(message, status=status, details=details, server_code=raw)


# statuses that say something about the key even when the body is not the API's own
_AUTH_OR_RATE = frozenset({401, 403, 429})


def not_the_api(response: httpx.Response, *, discovery: bool) -> bool:
    """A reply without the API's error body that means "no such API at this URL": a 404 anywhere, and
    on a discovery endpoint (agents, models, balance, billing, user self) any reply but a 5xx or an
    auth/rate status."""
    status = response.status_code
    return status == 404 or (discovery and status < 500 and status not in _AUTH_OR_RATE)


def no_such_api(response: httpx.Response, api: str, *secrets: str | None) -> NoSuchApi:
    """:class:`NoSuchApi` naming the URL that was asked (without its query) and what came back."""
    url = redact(str(response.request.url.copy_with(query=None)), *secrets)
    return NoSuchApi(f"no {api} API at {url} ({describe_body(response)}): check the base URL",
                     status=response.status_code)


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Bound a whole call, connect to last byte (httpx's timeout bounds each read only).

    A cancel scope with a deadline, which is what ``anyio.fail_after`` makes too, without its
    extra layers: 10 µs a call instead of 22 here."""
    scope = anyio.CancelScope(deadline=anyio.current_time() + seconds)
    with scope:
        yield
    if scope.cancelled_caught:
        raise Timeout(f"no complete answer within {seconds:g} s (provider.timeout)")


def is_event_stream(response: httpx.Response) -> bool:
    return response.is_success and "text/event-stream" in response.headers.get("content-type", "")


async def json_events(response: httpx.Response) -> AsyncIterator[Mapping[str, Any]]:
    """The JSON objects of an event stream, until ``[DONE]`` or its end.

    Framing (split reads, CRLF, comments) is httpx-sse's; what is not a JSON object is malformed.
    """
    try:
        async for event in EventSource(response).aiter_sse():
            data = event.data.strip()
            if data == "[DONE]":
                return
            if not data:
                continue
            try:
                payload = event.json()
            except ValueError:
                raise MalformedResponse("stream event is not JSON") from None
            if not isinstance(payload, Mapping):
                raise MalformedResponse("stream event is not a JSON object")
            yield payload
    except SSEError as exc:
        raise MalformedResponse(str(exc)) from None
