"""transfuse: transfer learning for medical imaging, measured on your own data.

Public API::

    from transfuse import load_dataset, create_model, list_models, fit, train_run, Store

The names are imported on first use (PEP 562), so ``import transfuse`` — and every CLI command
that needs no model, such as ``transfuse --help`` or ``transfuse runs list`` — does not pay for
importing torch, MONAI or timm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "DataSpec": "config", "InitSpec": "config", "ModelSpec": "config", "RunSpec": "config",
    "TrainSpec": "config", "run_id": "config", "list_datasets": "data", "load_dataset": "data",
    "TransfuseError": "errors", "create_model": "models", "get_stages": "models",
    "list_models": "models", "train_run": "run", "Store": "store", "fit": "train",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from .config import DataSpec, InitSpec, ModelSpec, RunSpec, TrainSpec, run_id  # noqa: F401
    from .data import list_datasets, load_dataset  # noqa: F401
    from .errors import TransfuseError  # noqa: F401
    from .models import create_model, get_stages, list_models  # noqa: F401
    from .run import train_run  # noqa: F401
    from .store import Store  # noqa: F401
    from .train import fit  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'transfuse' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
