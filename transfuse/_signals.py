"""SIGTERM as a request to stop, not a kill (torch-free: the CLI and the study driver use it)."""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["SigtermGuard"]


class SigtermGuard:
    """While active, SIGTERM sets :attr:`requested` instead of killing the process, so the caller
    can stop at a safe point (main thread only; elsewhere a no-op). Subclasses extend
    :meth:`_handle` (the study driver forwards the signal to its workers)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None

    def __enter__(self) -> SigtermGuard:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None
