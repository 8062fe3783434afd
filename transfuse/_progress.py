"""Step reports from a run's training loop to the study that shows its progress.

``fit()`` calls :func:`step` after every optimiser step; nothing happens unless a reporter is
set. A study sets one: in its own process a function that moves its bar, in worker processes one
that puts ``(run_id, step)`` on a queue the driver reads. Reports are throttled to one per
``interval`` seconds, so the bar moves every few seconds at the cost of nothing measurable.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["set_reporter", "begin", "step"]

Reporter = Callable[[str, int], None]

_reporter: Reporter | None = None
_interval = 1.0
_run: str | None = None
_last = 0.0


def set_reporter(fn: Reporter | None, *, interval: float = 1.0) -> Reporter | None:
    """Send ``(run_id, step)`` to ``fn`` (``None``: stop reporting); returns the previous one."""
    global _reporter, _interval
    prev, _reporter, _interval = _reporter, fn, interval
    return prev


def begin(run_id: str) -> None:
    """The run whose steps the next reports are."""
    global _run, _last
    _run, _last = run_id, 0.0


def step(n: int) -> None:
    """Report that the current run has done ``n`` optimiser steps (at most once per interval)."""
    global _last
    if _reporter is None or _run is None:
        return
    now = time.monotonic()
    if now - _last >= _interval:
        _last = now
        _reporter(_run, n)
