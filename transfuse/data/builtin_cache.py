"""The built-in datasets' cache: generated arrays saved as ``.npz`` under ``$TRANSFUSE_CACHE``.

Keyed by dataset name, parameters, seed and :data:`VERSION`; written atomically under a name of
its own (several workers may build the same data at once); a corrupt or truncated file is
rebuilt. Also the two helpers every built-in loader shares: a one-line error for a missing
package (:func:`_need`) and the :class:`~transfuse.data.registry.RawData` of generated arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..errors import DataError
from .base import SplitArrays
from .registry import RawData

__all__ = ["VERSION", "SPLITS", "cache_dir", "cached_arrays"]

#: Bump when the generated arrays change, so stale cache files are not reused.
VERSION = "1"

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Folder for generated arrays: ``$TRANSFUSE_CACHE`` or ``~/.cache/transfuse``, + ``builtin``."""
    root = os.environ.get("TRANSFUSE_CACHE") or os.path.join("~", ".cache", "transfuse")
    return Path(root).expanduser() / "builtin"


def _cache_path(name: str, params: dict[str, Any], seed: int) -> Path:
    key = json.dumps({"name": name, "params": params, "seed": int(seed), "version": VERSION},
                     sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache_dir() / f"{name.replace(':', '_')}-s{int(seed)}-{digest}.npz"


def _split_keys() -> list[str]:
    return [f"{s}_{k}" for s in SPLITS for k in ("x", "y")]


def cached_arrays(name: str, params: dict[str, Any], seed: int,
                  build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays ``{train,val,test}_{x,y}`` from the cache, or built by ``build()`` and cached.

    The file is written through :func:`transfuse.atomic.atomic_write`, so a
    crash never leaves a half-written cache file. An unreadable or incomplete cache file is
    ignored and regenerated; a cache folder that cannot be written only costs the caching.
    """
    path = _cache_path(name, params, seed)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                out = {k: z[k] for k in _split_keys()}
            if all(len(out[f"{s}_x"]) == len(out[f"{s}_y"]) for s in SPLITS):
                return out
        except Exception:  # corrupt / truncated / foreign file: regenerate below
            pass
    out = build()

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to the name
            np.savez(f, **{k: out[k] for k in _split_keys()})

    try:  # a name of its own: several workers may build the same data at once
        atomic_write(path, write, unique=True)
    except OSError:
        pass
    return out


def _need(module: str, dataset: str, pip_name: str) -> Any:
    """Import ``module`` or raise a one-line :class:`DataError` naming the package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{dataset} needs {pip_name}; pip install {pip_name}") from None


def _raw(name: str, arrays: dict[str, np.ndarray], classes: tuple[str, ...], origins: dict[str, str],
         source: str, license: str, description: str) -> RawData:
    splits = {s: SplitArrays(arrays[f"{s}_x"], arrays[f"{s}_y"].astype(np.int64), origins[s])
              for s in SPLITS}
    return RawData(task="multiclass", class_names=classes, spatial_dims=2, splits=splits,
                   source=source, license=license, description=description)
