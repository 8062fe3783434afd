"""What the registries hold, readable without importing torch: a snapshot of their metadata.

The registries (:data:`transfuse.models.MODELS`, :data:`transfuse.data.DATASETS`,
:data:`transfuse.inits.INITS`, :data:`transfuse.weights.SOURCES`) are filled by the modules that
implement their entries, which import torch, torchvision, MONAI or timm (2–3 s and ~0.9 GB).
Commands that only *list* or *look up metadata* — ``transfuse datasets|models|inits``, ``study
status`` (which needs to know which inits read a source) — read ``catalog.json`` instead, the
registries' metadata written by :func:`write`. The registries stay the one source of truth:
``tests/test_catalog.py`` fails when the snapshot differs from them and names the command that
rewrites it::

    python -m transfuse.catalog --write

Entries registered at run time by user code (``register_model`` and friends) are not in the
snapshot; lookups of such names fall back to the live registry (:func:`init_needs_source`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["load", "snapshot", "builtin", "write", "init_needs_source", "PATH"]

PATH = Path(__file__).with_name("catalog.json")


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata as JSON keeps it: tuples become lists, callables their presence (``True``)."""
    out = {}
    for k, v in meta.items():
        if callable(v):
            v = True
        out[k] = json.loads(json.dumps(v))
    return out


def builtin(entries: Any) -> list[Any]:
    """The entries transfuse itself registers (a builder defined in the ``transfuse`` package);
    what user code or tests register at run time is not part of the snapshot."""
    return [e for e in entries if getattr(e.fn, "__module__", "").split(".")[0] == "transfuse"]


def snapshot() -> dict[str, Any]:
    """The live registries' metadata, built-in entries only (imports every entry's module:
    torch and friends)."""
    from .data import DATASETS
    from .data.medmnist import MEDMNIST_INFO
    from .inits import INITS
    from .models import MODELS
    from .models.registry import TIMM_INFO
    from .weights import SOURCES

    return {
        "datasets": {e.name: _jsonable(e.meta) for e in builtin(DATASETS)},
        "medmnist": [[k, *v] for k, v in MEDMNIST_INFO.items()],  # in MedMNIST's order
        "models": {e.name: _jsonable(e.meta) for e in builtin(MODELS)},
        "timm": _jsonable(TIMM_INFO),
        "inits": {e.name: _jsonable(e.meta) for e in builtin(INITS)},
        "sources": {e.name: _jsonable(e.meta) for e in builtin(SOURCES)},
    }


def write(path: Path = PATH) -> Path:
    """Rewrite the snapshot from the live registries."""
    path.write_text(json.dumps(snapshot(), indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return path


@lru_cache(maxsize=1)
def load() -> dict[str, Any]:
    """The snapshot (``catalog.json`` beside this module), parsed once per process."""
    return json.loads(PATH.read_text())


def init_needs_source(name: str) -> bool:
    """Whether the init strategy ``name`` (one part of ``a:x+b``, without its argument) reads
    pretrained weights; names outside the snapshot are looked up in the live registry.

    Raises:
        ConfigError: an unknown strategy (with close matches), from the live registry.
    """
    meta = load()["inits"].get(name)
    if meta is None:
        from .inits import INITS

        return bool(INITS.get(name).meta["needs_source"])
    return bool(meta["needs_source"])


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m transfuse.catalog --write")
    print(f"wrote {write()}")
