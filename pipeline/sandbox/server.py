"""Running the sandbox: in a background thread for tests and ``--sandbox`` runs, or in the foreground.

Both APIs share one port: MOMO's base URL is ``http://host:port/v1`` and the relay's is
``http://host:port``. :class:`Sandbox` helpers that read or change accounts run on the server's
own event loop, so the handlers need no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from aiohttp import web

from .answers import count_tokens
from .config import FaultConfig, SandboxConfig
from .momo import MomoApi
from .relay import RelayApi
from .state import SandboxState

__all__ = ["Sandbox", "build_app", "serve_forever"]

T = TypeVar("T")
# A handler still running at shutdown (a "hang" fault) is cancelled after this long.
_SHUTDOWN_GRACE = 0.25


def build_app(state: SandboxState) -> web.Application:
    app = web.Application()
    missing = set(state.cfg.missing_endpoints)  # left out: aiohttp answers them 404
    app.add_routes([r for r in (*MomoApi(state).routes(), *RelayApi(state).routes())
                    if getattr(r, "path", None) not in missing])
    return app


async def _serve(state: SandboxState, host: str, port: int, on_ready: Callable[[str, int], None],
                 stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set (or the task is cancelled), then shut down cleanly."""
    state.log.open()
    count_tokens("warm-up")  # the tokenizer loads lazily (~0.3 s): not on the first request
    runner = web.AppRunner(build_app(state), access_log=None, handle_signals=False,
                           shutdown_timeout=_SHUTDOWN_GRACE)
    try:
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        on_ready(host, runner.addresses[0][1])
        await stop.wait()
    finally:
        await runner.cleanup()
        state.log.close()


class Sandbox:
    """A sandbox server in a background thread, on 127.0.0.1 and an ephemeral port.

    ``with Sandbox(cfg).running() as sb:`` starts it and stops it again; ``sb.momo_url`` and
    ``sb.relay_url`` are the base URLs; the other methods inspect and change its accounts.
    """

    def __init__(self, config: SandboxConfig | None = None, host: str = "127.0.0.1", *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``clock`` drives the rate limits and log timestamps; a test may pass a fake one."""
        self.config = config or SandboxConfig()
        self.host = host
        self.state = SandboxState(self.config, clock)
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def running(self) -> Iterator[Sandbox]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; returns once the port is bound (raises what start-up raised)."""
        ready: Future[int] = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="sandbox-server", daemon=True)
        self._thread.start()
        self.port = ready.result(timeout)

    def _run(self, ready: Future[int]) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            await _serve(self.state, self.host, 0, lambda _host, port: ready.set_result(port), self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:  # start-up failed: hand the error to start()
            if not ready.done():
                ready.set_exception(exc)
            else:
                raise

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join()
        self._loop = self._stop = self._thread = None

    # -- addresses --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def momo_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def relay_url(self) -> str:
        return self.url

    # -- inspecting and changing state ------------------------------------------------------------
    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server's loop (where handlers mutate state), or here if not running."""
        loop = self._loop
        if loop is None:
            return fn()

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(10.0)

    def records(self) -> list[dict[str, Any]]:
        """The request log so far (copies)."""
        return self.state.log.snapshot()

    def wait_for_requests(self, n: int, timeout: float = 10.0) -> bool:
        """Block until at least ``n`` requests were logged; False on timeout."""
        return self.state.log.wait_for(n, timeout)

    def balance(self, key: str) -> float:
        return self._on_loop(lambda: self.state.momo[key].balance)

    def set_balance(self, key: str, amount: float) -> None:
        def change() -> None:
            self.state.momo[key].balance = round(amount, 6)

        self._on_loop(change)

    def top_up(self, key: str, amount: float) -> None:
        def change() -> None:
            account = self.state.momo[key]
            account.balance = round(account.balance + amount, 6)

        self._on_loop(change)

    def packages(self, key: str) -> dict[int, int]:
        return self._on_loop(lambda: dict(self.state.momo[key].packages))

    def set_faults(self, faults: FaultConfig) -> None:
        self._on_loop(lambda: self.state.faults.set_faults(faults))

    def relay_quota(self, user_id: str = "1") -> int:
        """Remaining quota units of a relay user."""
        return self._on_loop(lambda: self.state.users[user_id].quota)


def serve_forever(config: SandboxConfig | None = None, host: str = "127.0.0.1", port: int = 0,
                  on_ready: Callable[[str], None] | None = None) -> None:
    """Serve in the foreground until SIGTERM (returns) or Ctrl-C (raises KeyboardInterrupt).

    ``on_ready`` receives ``http://host:port`` once the port is bound (useful with ``port=0``).
    """
    state = SandboxState(config or SandboxConfig())

    async def main() -> None:
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread / Windows
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await _serve(state, host, port, lambda h, p: on_ready(f"http://{h}:{p}") if on_ready else None, stop)

    asyncio.run(main())
