"""SIGTERM as a request to stop, not a kill (torch-free: the CLI and the study driver use it)."""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["SigtermGuard", "share_stop", "stop_shared"]

#: A flag shared by the processes of one study (a ``multiprocessing`` Event), or ``None``. Set in
#: a study's worker processes by :func:`share_stop`: a SIGTERM any of them catches sets it, and
#: a guard entered after that starts ``requested``, so a worker never trains a run it was told to
#: stop before it began (the executor may already have handed it the next one).
_shared: Any = None


def share_stop(event: Any) -> None:
    """Make ``event`` this process's shared stop flag: SIGTERM sets it — inside a guard and
    outside one, where it would otherwise kill the process — and every later guard starts as
    requested once it is set. Called once per worker process (its pool initializer)."""
    global _shared
    _shared = event
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: event.set())


def stop_shared() -> bool:
    """Whether this process's shared stop flag is set (``False`` without one)."""
    return _shared is not None and _shared.is_set()


class SigtermGuard:
    """While active, SIGTERM sets :attr:`requested` instead of killing the process, so the caller
    can stop at a safe point (main thread only; elsewhere a no-op). Subclasses extend
    :meth:`_handle` (the study driver forwards the signal to its workers)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> SigtermGuard:
        self.requested = self.requested or stop_shared()
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        if _shared is not None:
            _shared.set()

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None
