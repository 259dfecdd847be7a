"""Process-wide collector settings for a batch run: applied by the CLI around its run only.

They change the whole interpreter (what the collector scans, and how often), so a library call
never sets them: a notebook or a service that calls :func:`pipeline.run_job` keeps its own.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

GC_YOUNG = 10_000  # new objects between collections of the youngest generation during a run


@contextlib.contextmanager
def steady_gc() -> Iterator[None]:
    """Keep the collector off the objects that live for the whole run (polars, pydantic, httpx).

    A full collection over them took ~35 ms here: at a scaled 300 requests/s that is ten missed
    slots of the limiter, and at any scale a stall of every in-flight call. ``gc.freeze`` moves
    what exists now out of the collector's generations; ``unfreeze`` gives it back afterwards.

    And collect the youngest generation every 10,000 new objects, not 700: a call makes hundreds
    (httpx and aiohttp objects, most of them freed with it), and 443-480 young collections took
    0.56-0.83 s of the CPU of a 20,000-row run (``gc.callbacks``, thread time), 47-96 of them
    0.26-0.39 s.
    """
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def steady_gc_for_life() -> None:
    """:func:`steady_gc`'s settings, never undone: for a process that runs nothing but a job's
    calls until it ends (a Ray worker of :mod:`pipeline.ray`, a process Ray starts for the run).
    Without them a worker spent more CPU per row than one process running the same calls does."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
