"""One tiny registry, used for models, datasets, init strategies and similarity measures.

A registry maps a name to a builder plus free-form metadata. Names are unique (registering a name
twice raises, unlike timm's warning) and can be listed with glob patterns (``list("cbr*")``).
Looking up an unknown name raises a :class:`~transfuse.errors.ConfigError` that lists close
matches, so typos are one-line fixes.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import ConfigError

__all__ = ["Registry", "Entry"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Entry(Generic[F]):
    """A registered builder and its metadata."""

    name: str
    fn: F
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[F]):
    """Name → builder mapping with glob listing and helpful lookup errors.

    Args:
        kind: what the registry holds ("model", "dataset", ...), used in error messages.
        list_command: the CLI command that lists the entries (default ``transfuse <kind>s``).
        load: called once, before the first lookup or listing, to import the modules whose
            decorators fill the registry (so importing the registry's package stays cheap:
            ``import transfuse.models`` does not import torchvision, MONAI or timm).
    """

    def __init__(self, kind: str, *, list_command: str | None = None,
                 load: Callable[[], None] | None = None) -> None:
        self.kind = kind
        self.list_command = list_command or f"transfuse {kind}s"
        self._entries: dict[str, Entry[F]] = {}
        self._load = load

    def _loaded(self) -> dict[str, Entry[F]]:
        if self._load is not None:
            load, self._load = self._load, None
            try:
                load()
            except BaseException:
                self._load = load  # retry next time instead of serving a half-filled registry
                raise
        return self._entries

    def register(self, name: str, **meta: Any) -> Callable[[F], F]:
        """Decorator that registers ``fn`` under ``name`` with metadata ``meta``."""

        def deco(fn: F) -> F:
            self.add(name, fn, **meta)
            return fn

        return deco

    def add(self, name: str, fn: F, **meta: Any) -> None:
        """Register ``fn`` under ``name``; raises ``ValueError`` if the name is taken."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, fn, dict(meta))

    def get(self, name: str) -> Entry[F]:
        """Return the entry for ``name``.

        Raises:
            ConfigError: ``name`` is not registered; the message lists close matches.
        """
        try:
            return self._loaded()[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._loaded()), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown {self.kind} {name!r}{hint} (see `{self.list_command}` for the list)"
            ) from None

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted names matching the glob ``pattern``."""
        return sorted(n for n in self._loaded() if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._loaded()

    def __iter__(self) -> Iterator[Entry[F]]:
        entries = self._loaded()
        return iter(entries[n] for n in sorted(entries))

    def __len__(self) -> int:
        return len(self._loaded())
