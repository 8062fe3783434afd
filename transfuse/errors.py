"""User-facing errors.

Every problem caused by the user's input (a missing file, a bad column, an unknown name) is raised
as :class:`TransfuseError` with a one-line message that names the file or field and says how to
fix it. The CLI prints the message and exits with status 2; anything else is a bug.
"""

from __future__ import annotations

__all__ = ["TransfuseError", "ConfigError", "DataError", "ModelError"]


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
