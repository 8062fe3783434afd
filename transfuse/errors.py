"""User-facing errors.

Every problem caused by the user's input (a missing file, a bad column, an unknown name) is raised
as :class:`TransfuseError` with a one-line message that names the file or field and says how to
fix it. The CLI prints the message and exits with status 2; anything else is a bug.

Two subclasses have their own meaning: :class:`StoreError` (the run store file is not a database,
is corrupt, read-only or on a full disk) and :class:`DivergedError` (training produced NaN/inf;
the run is stored as ``failed`` and the CLI exits with :data:`EXIT_DIVERGED`).
"""

from __future__ import annotations

import re

__all__ = ["TransfuseError", "ConfigError", "DataError", "ModelError", "StoreError",
           "DivergedError", "PreemptedError", "EXIT_ERROR", "EXIT_DIVERGED", "EXIT_PREEMPTED",
           "EXIT_INTERRUPTED", "check_name"]

EXIT_ERROR = 2  #: CLI exit status of a TransfuseError (bad input, unusable store, I/O failure)
EXIT_DIVERGED = 3  #: CLI exit status of a run whose loss or predictions became NaN/inf
EXIT_PREEMPTED = 75  #: CLI exit status of a run stopped by SIGTERM after checkpointing (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  #: CLI exit status after Ctrl-C (SIGINT): runs in progress checkpointed

_NAME = re.compile(r"[A-Za-z0-9._-]+")
MAX_NAME = 100  #: longest name check_name accepts (file names stop at 255 bytes)


class TransfuseError(Exception):
    """An error in the user's input. ``str(err)`` is a one-line, actionable message."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(TransfuseError, ValueError):
    """A bad option, name or value in a spec or on the command line."""


class DataError(TransfuseError, ValueError):
    """A dataset file or its contents are missing or invalid."""


class ModelError(TransfuseError, ValueError):
    """A model name or model option is invalid."""


class StoreError(TransfuseError):
    """The run store (``transfuse.db``) or the workspace cannot be read or written."""


class DivergedError(TransfuseError, FloatingPointError):
    """Training diverged (NaN/inf loss or predictions); the message names the step and a fix."""


def check_name(name: object, *, field: str) -> str:
    """``name`` if it is safe as one path component: letters, digits and ``._-``, not ``.``/``..``.

    Every user-given name that becomes a file or folder name (a study, a pretraining entry, a run
    folder, a report file) goes through this one check, so no name can create sub-folders or
    point outside the workspace.

    Args:
        name: the value to check.
        field: the setting it came from, for the message (e.g. ``"study name"``, ``"--study"``).

    Returns:
        The name, unchanged.

    Raises:
        ConfigError: ``name`` is not a string, is empty, ``.``/``..``, has another character,
            or is longer than :data:`MAX_NAME`.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"{field}={name!r} is not a valid name: it becomes a file or folder "
                          "name, so use only letters, digits, '.', '_' and '-' (not '.' or '..')")
    if len(name) > MAX_NAME:  # report-<name>.html and <name>-pretrain must fit a file name
        raise ConfigError(f"{field}={name[:20]!r}... is {len(name)} characters long; it becomes a "
                          f"file name, so use at most {MAX_NAME}")
    return name


class PreemptedError(TransfuseError):
    """SIGTERM stopped a run after it wrote its mid-run checkpoint; running it again resumes
    (the CLI exits with :data:`EXIT_PREEMPTED`).

    Attributes:
        step: the last step done (the checkpoint's).
    """

    def __init__(self, message: str, *, step: int = 0) -> None:
        super().__init__(message)
        self.step = step


def did_you_mean(key: str, valid: "list[str] | tuple[str, ...]", *, prefix: str = "") -> str:
    """``"; did you mean base.train?"`` for the valid key closest to ``key`` (``""`` if none is).

    ``prefix`` is put before the suggestion, so it names the key where it was written.
    """
    import difflib

    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.6)
    return f"; did you mean {prefix}{close[0]}?" if close else ""
