"""Init names and source references: parsed and formatted in one place (syntax only).

An init name is one or more ``+``-joined parts, each ``name`` or ``name:arg``
(``"transfusion:block1+meanvar"``). A source reference is ``family:argument``
(``"imagenet:efficientnet_lite0"``, ``"run:<run_id>"``, ``"med3d:<name>"``, ``"file:ckpt.pt"``);
a bare checkpoint path (``"ckpt.pt"``) is short for ``file:ckpt.pt``. Whether a name is
registered is checked by the registries (:func:`transfuse.inits.parse_init`,
:func:`transfuse.weights.resolve_source`); this module imports nothing of the library's.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["InitPart", "SourceRef", "parse_init_name", "format_init_name", "parse_source",
           "source_ref", "format_source", "CHECKPOINT_SUFFIXES"]

#: file endings that make a bare path a ``file:`` source
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class InitPart:
    """One ``+``-joined part of an init name: ``transfusion:block1`` → ``InitPart("transfusion", "block1")``."""

    name: str
    arg: str | None = None

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}:{self.arg}"


@dataclass(frozen=True)
class SourceRef:
    """A source reference split at its first colon: ``run:abc`` → ``SourceRef("run", "abc")``."""

    family: str
    arg: str

    def __str__(self) -> str:
        return f"{self.family}:{self.arg}"


def parse_init_name(text: str) -> tuple[InitPart, ...]:
    """``"transfusion:block1+meanvar"`` → ``(InitPart("transfusion", "block1"), InitPart("meanvar"))``.

    Parts are stripped of surrounding spaces; an empty argument (``"name:"``) is ``None``.

    Raises:
        ConfigError: an empty part (``"a++b"``, ``""``, ``":x"``).
    """
    parts = []
    for part in str(text).split("+"):
        name, _, arg = part.strip().partition(":")
        if not name:
            raise ConfigError(f"init {text!r} has an empty part; write e.g. transfusion:block1+meanvar")
        parts.append(InitPart(name, arg or None))
    return tuple(parts)


def format_init_name(parts: tuple[InitPart, ...] | list[InitPart]) -> str:
    """The init name of ``parts``; ``format_init_name(parse_init_name(s)) == s`` for a canonical ``s``."""
    return "+".join(str(p) for p in parts)


def source_ref(text: str) -> SourceRef | None:
    """``text`` split at its first colon, or ``None`` where it has none (lenient: never raises;
    the argument may be empty). For code that only asks which family a stored source is."""
    family, sep, arg = str(text).partition(":")
    return SourceRef(family, arg) if sep else None


def parse_source(text: str) -> SourceRef:
    """A source reference as :func:`transfuse.weights.resolve_source` reads it: ``family:arg``,
    or a bare checkpoint path (``.pt``/``.pth``/``.bin``/``.safetensors``) as ``file:<path>``.

    Raises:
        ConfigError: no family or no argument, with examples of the form.
    """
    text = str(text)
    if text.endswith(CHECKPOINT_SUFFIXES) and ":" not in text.split("/")[0]:
        return SourceRef("file", text)
    ref = source_ref(text)
    if ref is None or not ref.arg:
        raise ConfigError(f"source {text!r} must look like family:argument, e.g. "
                          "imagenet:efficientnet_lite0, torchvision:resnet50.IMAGENET1K_V2, "
                          "file:/path/to/ckpt.pt or run:<run_id>")
    return ref


def format_source(ref: SourceRef) -> str:
    """``SourceRef("run", "abc")`` → ``"run:abc"``."""
    return str(ref)
