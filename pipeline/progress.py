"""Live progress: a rich bar on a terminal, plain log lines otherwise (CI, pipes, files)."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .result import RowResult
from .runner import RunStats


def _fields(stats: RunStats) -> str:
    elapsed = max(time.monotonic() - stats.started, 1e-9)
    done_now = stats.ok + stats.error + stats.skipped
    return (
        f"{done_now / elapsed:7.1f} rows/s  tokens {stats.tokens:,}  cost {stats.cost:.4f}  "
        f"errors {stats.error}  429s {stats.rate_limited}  retries {stats.retries}{_paused(stats)}"
    )


def _paused(stats: RunStats) -> str:
    """While a pause the server asked for lasts: until when (local time)."""
    until = stats.paused_until
    if until is None or until <= time.time():
        return ""
    return f"  paused by the server until {_clock(until)}"


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


class Reporter:
    """Call :meth:`update` after each result; use as a context manager around the run."""

    def __init__(self, stats: RunStats, *, stream: TextIO | None = None,
                 interval: float = 5.0, enabled: bool = True) -> None:
        self.stats = stats
        self.stream = stream or sys.stderr
        self.interval = interval
        self.enabled = enabled
        self.live = enabled and self.stream.isatty()
        self._last = 0.0
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._said_until = 0.0  # the end of the last pause a line said
        stats.on_pause = self.paused

    def __enter__(self) -> Reporter:
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]rows"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=Console(file=self.stream),
                refresh_per_second=4,
            )
            self._progress.start()
            self._task = self._progress.add_task("run", total=None, info="")
        return self

    def update(self, _: RowResult | None = None) -> None:
        if not self.enabled:
            return
        s = self.stats
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, total=s.total, completed=s.done, info=_fields(s))
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            print(f"progress: {s.done}/{s.total} rows  {_fields(s)}", file=self.stream, flush=True)

    def paused(self, seconds: float) -> None:
        """The server asked every request to wait ``seconds``: say so now, with when it ends (rows
        stop finishing meanwhile, so the next per-row update could be far away)."""
        if not self.enabled:
            return
        if self._progress is not None:
            self.update()
            return
        until = self.stats.paused_until or time.time() + seconds
        if seconds < 1 or until < self._said_until + 1:  # a blip, or a pause already said
            return
        self._said_until = until
        print(f"paused: the server asked to wait {seconds:g} s (Retry-After), until {_clock(until)}",
              file=self.stream, flush=True)

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self.update()
            self._progress.stop()
