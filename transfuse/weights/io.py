"""Loading and normalising checkpoints: one place for every load path.

- :func:`clean_keys` strips the wrapper prefixes that training frameworks add
  (``module.`` from DDP/DataParallel, ``_orig_mod.`` from ``torch.compile``, ``_forward_module.``
  from Lightning), so state-dict keys are the lingua franca between libraries.
- :func:`load_state_dict` reads ``.pt``/``.pth``/``.bin`` with ``torch.load(weights_only=True)`` —
  a checkpoint that carries a pickled object (arbitrary code) is refused with a clear message —
  and ``.safetensors`` with safetensors. A nested ``{"state_dict": ...}`` / ``{"model": ...}`` is
  unwrapped.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from ..errors import TransfuseError

__all__ = ["clean_keys", "load_state_dict", "WeightsError"]

PREFIXES = ("module.", "_orig_mod.", "_forward_module.")
NESTED = ("state_dict", "model", "model_state_dict", "net", "weights")


class WeightsError(TransfuseError):
    """A checkpoint or pretrained source cannot be used; the message names it and the fix."""


def clean_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.``, ``_orig_mod.`` and ``_forward_module.`` prefixes (repeatedly)."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # {"state_dict": {...}} / {"model": {"state_dict": ...}}
        if not isinstance(obj, dict):
            break
        nested = next((obj[k] for k in NESTED if isinstance(obj.get(k), dict)), None)
        if nested is not None:
            obj = nested
            continue
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        break
    raise WeightsError(f"{path}: no state_dict found (expected a dict of tensors, or one under "
                       f"{', '.join(NESTED)})")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a clean ``{key: tensor}`` dict on the CPU.

    Raises:
        WeightsError: missing file, unreadable file, or a pickle payload (refused for safety).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise WeightsError(f"{path}: reading .safetensors needs `pip install safetensors`") from None
        try:
            return clean_keys(load_file(str(path), device="cpu"))
        except Exception as e:  # safetensors raises its own error types
            raise WeightsError(f"{path}: cannot read safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{path}: refused — the checkpoint contains pickled Python objects, which can run "
            f"arbitrary code ({str(e).splitlines()[0][:120]}); re-save it as a plain state_dict "
            "(torch.save(model.state_dict(), ...)) or as .safetensors") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise WeightsError(f"{path}: cannot read checkpoint ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:160]}); the file is truncated or not a "
                           "PyTorch checkpoint") from None
    return clean_keys(_unwrap(obj, path))
