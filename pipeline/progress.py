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
        f"errors {stats.error}  429s {stats.rate_limited}  retries {stats.retries}"
    )


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

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._progress is not None:
            self.update()
            self._progress.stop()
