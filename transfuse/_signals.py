"""SIGTERM and Ctrl-C (SIGINT) as a request to stop, not a kill (torch-free: the CLI and the
study driver use it).

The first SIGINT is handled like SIGTERM: the caller stops at its next safe point (a run
checkpoints, a study starts nothing new). A second SIGINT raises :class:`KeyboardInterrupt` at
once — the user insists; what is stored stays stored (the store is transactional, checkpoints
are written atomically).
"""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["SigtermGuard", "share_stop", "stop_shared", "stop_others", "stop_signal", "set_flag", "STOP_SIGNALS"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: A flag shared by the processes of one study (a ``multiprocessing`` Event), or ``None``. Set in
#: a study's worker processes by :func:`share_stop`: a SIGTERM any of them catches sets it, and
#: a guard entered after that starts ``requested``, so a worker never trains a run it was told to
#: stop before it began (the executor may already have handed it the next one).
_shared: Any = None
#: Set by a stop signal in this process. A handler never touches the shared Event: the main
#: thread may hold its (not re-entrant) lock when the signal arrives (``is_set()``), and the
#: handler would deadlock; the main thread shares the request (``_execute_unless_stopped``).
_stop_here = False
#: Which stop signal this process received first (``None``: none yet); Ctrl-C presses counted.
_received: int | None = None
_sigints = 0


_setting = False


def set_flag(event: Any) -> None:
    """``event.set()`` from the study driver's signal handler. A second signal can interrupt the
    first handler inside ``set()`` (Ctrl-C pressed twice), and a ``multiprocessing`` Event's lock
    is not re-entrant: the nested handler skips (the outer one sets it) instead of deadlocking."""
    global _setting
    if _setting:
        return
    _setting = True
    try:
        event.set()
    finally:
        _setting = False


def _note(signum: int) -> None:
    """Record a stop signal; the second Ctrl-C raises :class:`KeyboardInterrupt` (stop at once)."""
    global _received, _sigints
    if signum in STOP_SIGNALS and _received is None:
        _received = signum
    if signum == signal.SIGINT:
        _sigints += 1
        if _sigints >= 2:
            raise KeyboardInterrupt("Ctrl-C pressed twice")


def stop_signal() -> str:
    """How this process was asked to stop, for messages: ``"Ctrl-C"`` or ``"SIGTERM"``."""
    return "Ctrl-C" if _received == signal.SIGINT else "SIGTERM"


def share_stop(event: Any) -> None:
    """Make ``event`` this process's shared stop flag: every later guard starts as requested once
    it is set, or once SIGTERM or Ctrl-C reached this process — inside a guard or outside one,
    where it would otherwise kill the process. Called once per worker process (its pool
    initializer)."""
    global _shared
    _shared = event
    if threading.current_thread() is threading.main_thread():
        def handle(signum: int, frame: Any) -> None:
            global _stop_here
            _stop_here = True
            _note(signum)

        for s in STOP_SIGNALS:
            signal.signal(s, handle)


def stop_shared() -> bool:
    """Whether this process was asked to stop, or its shared stop flag is set (``False``
    without one)."""
    return _shared is not None and (_stop_here or _shared.is_set())


def stop_others() -> None:
    """Set this process's shared stop flag (if it has one), so the other workers' next runs stop
    too — a signal to this worker alone ends the whole study."""
    if _shared is not None:
        _shared.set()


class SigtermGuard:
    """While active, SIGTERM and a first Ctrl-C set :attr:`requested` instead of killing the
    process, so the caller can stop at a safe point (main thread only; elsewhere a no-op); a
    second Ctrl-C raises :class:`KeyboardInterrupt`. Subclasses extend :meth:`_handle` (the study
    driver forwards the signal to its workers)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> SigtermGuard:
        self.requested = self.requested or stop_shared()
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        global _stop_here
        self.requested = _stop_here = True
        _note(signum)

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}
