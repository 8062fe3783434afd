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
import re
import sys
import warnings
import zipfile
from pathlib import Path

import torch

from ..errors import TransfuseError

__all__ = ["clean_keys", "load_state_dict", "WeightsError"]

PREFIXES = ("module.", "_orig_mod.", "_forward_module.")
NESTED = ("state_dict", "model", "model_state_dict", "net", "weights")
RESAVE = ("re-save only the tensors where the file was made — torch.save(model.state_dict(), "
          "'clean.pt') — or save them as .safetensors")


class WeightsError(TransfuseError):
    """A checkpoint or pretrained source cannot be used; the message names it and the fix."""


def clean_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip ``module.``, ``_orig_mod.`` and ``_forward_module.`` prefixes (repeatedly).

    Raises:
        WeightsError: two keys become the same once stripped (``module.x`` and ``x``).
    """
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    for key, v in state.items():
        k, changed = key, True
        while changed:
            changed = False
            for p in PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        if k in out:
            raise WeightsError(f"state dict keys {origin[k]!r} and {key!r} both become {k!r} once "
                               f"the wrapper prefixes ({', '.join(PREFIXES)}) are stripped")
        out[k], origin[k] = v, key
    return out


def _has_tensors(obj: object, depth: int = 3) -> bool:
    if not isinstance(obj, dict) or depth == 0:
        return False
    return any(isinstance(v, torch.Tensor) or _has_tensors(v, depth - 1) for v in obj.values())


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(3):  # {"state_dict": {...}} / {"model": {"state_dict": ...}}
        if not isinstance(obj, dict):
            break
        # The first wrapper key whose value holds tensors ({"model": cfg, "model_state_dict": sd}).
        nested = next((obj[k] for k in NESTED if _has_tensors(obj.get(k))), None)
        if nested is not None:
            obj = nested
            continue
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
        break
    raise WeightsError(f"{path}: no state_dict found (expected a dict of tensors, or one under "
                       f"{', '.join(NESTED)})")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]*)")


def _cut_short(dotted: str) -> bool:
    """A global that only a truncated legacy checkpoint names: ``collectio.`` (empty name), or
    ``torch._utils._rebuild_tensor_`` (a torch/collections name that does not exist). Only those
    modules are checked — a missing ``__main__.MyClass`` is a real payload — and nothing is
    imported here (importing runs code)."""
    parts = dotted.split(".")
    if not all(parts):  # "collectio." — a GLOBAL opcode cut short
        return True
    if parts[0] not in ("torch", "collections"):
        return False
    for i in range(len(parts) - 1, 0, -1):
        mod = sys.modules.get(".".join(parts[:i]))
        if mod is not None:
            obj: object = mod
            for name in parts[i:]:
                if not hasattr(obj, name):
                    return True
                obj = getattr(obj, name)
            return False
    return False


def _refusal(path: Path, err: Exception) -> WeightsError:
    """One-line error for a ``weights_only`` refusal: pickled object, or a damaged file."""
    msg = _ANSI.sub("", str(err))
    with open(path, "rb") as f:
        zip_like = f.read(2) == b"PK"
    if zip_like and not zipfile.is_zipfile(path):  # a cut-off zip that torch read as a pickle
        return _damaged(path, err)
    m = _GLOBAL.search(msg)
    if m is None and ("truncated" in msg or "EOF" in msg or "ran out of input" in msg.lower()):
        return _damaged(path, err)
    if m is not None and _cut_short(m.group(1)):
        return WeightsError(f"{path}: cannot read checkpoint (it names {m.group(1)}, which does not "
                            "exist); the file is truncated or corrupt — copy or download it again")
    what = f"a pickled Python object ({m.group(1)})" if m else "pickled Python objects"
    if m is None:
        detail = next((ln.strip() for ln in msg.splitlines()
                       if ln.strip() and "WeightsUnpickler error" not in ln
                       and not ln.startswith(("Weights only", "Check the doc", "Please file", "\t("))), "")
        what += f" ({detail[:80]})" if detail else ""
    return WeightsError(f"{path}: refused — the checkpoint contains {what}, and unpickling it "
                        f"could run arbitrary code; transfuse loads tensors only "
                        f"(torch.load weights_only=True). If you trust the file, {RESAVE}")


def _damaged(path: Path, err: BaseException) -> WeightsError:
    first = _ANSI.sub("", str(err)).strip().splitlines()
    detail = f"{type(err).__name__}: {first[0][:120]}" if first else type(err).__name__
    return WeightsError(f"{path}: cannot read checkpoint ({detail}); the file is truncated, "
                        "corrupt or not a PyTorch checkpoint")


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file into a clean ``{key: tensor}`` dict on the CPU.

    Raises:
        WeightsError: missing file, unreadable file, or a pickle payload (refused for safety).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found")
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise WeightsError(f"{path}: reading .safetensors needs `pip install safetensors`") from None
        try:
            return clean_keys(load_file(str(path), device="cpu"))
        except Exception as e:  # safetensors raises its own error types
            raise WeightsError(f"{path}: cannot read safetensors file ({str(e).strip()[:160]}); "
                               "the file is truncated or not a safetensors file") from None
    with open(path, "rb") as f:
        head = f.read(2)
    if not head:
        raise WeightsError(f"{path}: cannot read checkpoint (the file is empty)")
    if not head.startswith((b"PK", b"\x80")):  # neither torch.save's zip nor a pickle (protocol 2+)
        raise WeightsError(f"{path}: cannot read checkpoint (it starts with {head!r}, not as a "
                           "torch.save file does); the file is corrupt or not a PyTorch checkpoint")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": refused below anyway
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(path, e) from None
    except Exception as e:  # RuntimeError, EOFError, BadZipFile, struct.error, KeyError...: damaged
        raise _damaged(path, e) from None
    return clean_keys(_unwrap(obj, path))
