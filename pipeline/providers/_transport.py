"""The HTTP layer both clients share: one ``httpx.AsyncClient`` and one translation of failures.

We keep httpx's API (requests, ``MockTransport`` in tests) but not, by default, its connection
pool: httpcore's pool does work quadratic in the number of open connections (upstream PR #1035),
which capped a 100-in-flight job at a few hundred requests/s at 100 % CPU. The ``aiohttp``
transport (``httpx-aiohttp``) keeps the httpx surface over aiohttp's pool; ``bench/transport.py``
measures both and the README records the figures. ``MOMO_BATCH_TRANSPORT=httpx`` picks httpx's
own pool.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
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
    relay_message,
    request_id_in,
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
    httpx has no switch for it: the client's public ``cookies`` is a jar that keeps nothing.

    Building the request has no switch either, and is cut here for the calls a job makes (a path
    of its own, no headers, params or timeout of their own; a JSON body or none): ``build_request``
    16 µs → 6 µs. What goes out is what httpx's own would send: ``tests/test_providers_momo.py``
    compares them. Sending is httpx's own ``send``: only public methods are overridden."""

    _jar = _NoCookies()

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._built: dict[str, _Template] = {}
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
            template = self._template(url)
            # JSON or no body (``AsyncClient.request`` passes the unused ones as None)
            if all(value is None for name, value in body.items() if name != "json"):
                return template.request(method, body.get("json"), self._timeout_extension)
            return httpx.Request(method, template.url, headers=self.headers, extensions=self._timeout_extension,
                                 **body)
        return super().build_request(method, url, params=params, headers=headers, cookies=cookies,
                                     timeout=timeout, extensions=extensions, **body)

    def _template(self, url: str) -> _Template:
        template = self._built.get(url)
        raw = self.headers.raw  # the client's headers can change in place: a template is for one set
        if template is None or template.client_headers != raw:
            template = _Template(_joined(self.base_url, url), raw)
            if len(self._built) < 1024:  # one per path: an endpoint, or an agent's call
                self._built[url] = template
        return template


def _joined(base: httpx.URL, path: str) -> httpx.URL:
    """``path`` on the client's base URL as httpx's client joins them (not RFC 3986's ``join``): a
    relative path goes after the base's path, which the client always ends with "/"."""
    url = httpx.URL(path)
    if not url.is_relative_url:
        return url
    return base.copy_with(raw_path=base.raw_path + url.raw_path.lstrip(b"/"))


_SENDS_A_LENGTH = ("POST", "PUT", "PATCH")  # httpx gives these "Content-Length: 0" when bodiless
# httpx's own JSON encoding (what ``httpx.Request(json=...)`` sends), with the encoder made once
_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class _Template:
    """One path's URL and headers, as httpx's ``build_request`` makes them for a call without
    headers of its own: ``Host`` first, then the client's, then what the body adds."""

    def __init__(self, url: httpx.URL, client_headers: list[tuple[bytes, bytes]]) -> None:
        self.url = url
        self.client_headers = client_headers
        host = [] if any(k.lower() == b"host" for k, _ in client_headers) or not url.host else \
            [(b"Host", url.netloc)]
        self.headers = httpx.Headers(host + client_headers)
        self._sets_length = "content-length" not in self.headers and "transfer-encoding" not in self.headers
        self._sets_type = "content-type" not in self.headers
        # a bodiless POST: httpx puts its "Content-Length: 0" beside Host, before the client's
        self._empty = httpx.Headers(host + [(b"Content-Length", b"0")] + client_headers) if self._sets_length \
            else self.headers

    def request(self, method: str, body: object, extensions: dict[str, Any]) -> httpx.Request:
        content = b""
        if body is not None:
            headers = self.headers.copy()
            content = _encode_json(body).encode()
            if self._sets_length:
                headers["Content-Length"] = str(len(content))
            if self._sets_type:
                headers["Content-Type"] = "application/json"
        else:
            headers = self._empty if method in _SENDS_A_LENGTH else self.headers  # httpx.Request copies it
        # ``stream=`` is httpx's way to say "these headers, as they are" (no merging, no defaults)
        request = httpx.Request(method, self.url, headers=headers, stream=httpx.ByteStream(content),
                                extensions=extensions)
        request.read()
        return request


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


class translated:  # noqa: N801 - used as ``with translated(key):``, like a function
    """Turn transport failures into the error tree; never let a key into a message.

    A class rather than a ``@contextmanager`` generator: it wraps every call (~1 µs less each)."""

    __slots__ = ("_secrets",)

    def __init__(self, *secrets: str | None) -> None:
        self._secrets = secrets

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None or isinstance(exc, APIError):
            return
        secrets = self._secrets
        if isinstance(exc, httpx.TimeoutException):
            # httpx-aiohttp reports every aiohttp connection error as ConnectTimeout; only a cause
            # that is a real timeout (or none: httpx's own pool) is one. A reset is a lost connection.
            if exc.__cause__ is None or isinstance(exc.__cause__, TimeoutError):
                raise Timeout(f"no answer in time ({type(exc).__name__})") from None
            raise ConnectionLost(redact(f"{type(exc.__cause__).__name__}: {exc}", *secrets)) from None
        if isinstance(exc, httpx.TransportError | OSError):
            # aiohttp's disconnects arrive as httpx.ConnectTimeout/ReadError via httpx-aiohttp's
            # map; their text can carry the URL, never a header, but we scrub it anyway.
            raise ConnectionLost(redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                                        *secrets)) from None
        if isinstance(exc, httpx.DecodingError):
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
    return number if math.isfinite(number) and number >= 0 else None  # "inf" would make int() raise


def _int(value: str | None) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


RELAY_REQUEST_ID = "X-Oneapi-Request-Id"  # new-api and one-api: the id of the request in the relay's log

_RATE_HEADERS = {b"x-ratelimit-limit": 0, b"x-ratelimit-remaining": 1, b"x-ratelimit-reset": 2}


def rate_limit_info(headers: httpx.Headers) -> RateLimitInfo | None:
    """``X-RateLimit-*`` as seconds-from-now; a reset given as a Unix time is converted.

    Read in one pass over the headers: each ``headers.get`` is a pass of its own (~1.5 µs), and
    every answer carries them. A header given twice reads as httpx's ``get`` joins it."""
    found: list[str | None] = [None, None, None]
    for key, value in headers.raw:
        slot = _RATE_HEADERS.get(key.lower())
        if slot is not None:
            text = value.decode(headers.encoding)
            found[slot] = text if found[slot] is None else f"{found[slot]}, {text}"
    limit, remaining, reset = _int(found[0]), _int(found[1]), _float(found[2])
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
    cls = classify(status, raw, message)
    # new-api / one-api send the id of the request in their log as a header and at the message's end
    rid = headers.get(RELAY_REQUEST_ID) or request_id_in(message)
    if cls is RateLimited:
        info = rate_limit_info(headers)
        return RateLimited(message, status=status, details=details, server_code=raw, retry_after=retry_after(headers),
                           remaining=info.remaining if info else None, reset=info.reset if info else None,
                           request_id=rid)
    return cls(relay_message(cls, message), status=status, details=details, server_code=raw, request_id=rid)


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


class deadline:  # noqa: N801 - used as ``with deadline(seconds):``, like a function
    """Bound a whole call, connect to last byte (httpx's timeout bounds each read only).

    A cancel scope with a deadline, which is what ``anyio.fail_after`` makes too, without its
    extra layers (10 µs a call instead of 22 here); a class, not a ``@contextmanager``
    generator, for ~1.5 µs less again."""

    __slots__ = ("_scope", "_seconds")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def __enter__(self) -> None:
        self._scope = anyio.CancelScope(deadline=anyio.current_time() + self._seconds)
        self._scope.__enter__()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._scope.__exit__(kind, exc, tb)  # swallows only its own cancellation, which is ours to say
        if self._scope.cancelled_caught:
            raise Timeout(f"no complete answer within {self._seconds:g} s (provider.timeout)") from None


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
