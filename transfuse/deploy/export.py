"""``export``: a finished run's model as a file other runtimes load, plus ``model.json``.

Formats (:data:`FORMATS`), each checked right after it is written, the check stored in
``model.json``:

- ``torchscript`` → ``model.pt``: ``torch.jit.trace`` of the model in eval mode; loads with
  ``torch.jit.load`` in any Python with torch (transfuse not needed). Checked: the reloaded file
  against the eager model (tolerance :data:`TORCH_TOL`).
- ``onnx`` → ``model.onnx``: torch's TorchScript-based ONNX exporter (``dynamo=False``: offline,
  no onnxscript), opset :data:`OPSET`, dynamic batch axis. Checked: onnxruntime (CPU) against
  torch (tolerance :data:`ONNX_TOL`).
- ``safetensors`` → ``model.safetensors``: the state dict (rebuild the architecture with
  ``transfuse.create_model`` as ``model.json["model"]`` says). Checked: read back, every tensor
  equal.

The model maps ``(N, C, *input_shape)`` inputs, normalised as ``model.json["normalization"]``
says, to logits ``(N, K)`` (segmentation: ``(N, K, *spatial)``); ``model.json["output"]`` names
the activation that gives probabilities.

``model.json`` (schema ``transfuse.model/1``): ``format``, ``file``, ``run_id``, ``checkpoint``
(``best``/``last``) and its ``checkpoint_step``, ``model`` (name, spatial dims, parameters,
builder options), ``task``, ``class_names``, ``input`` (shape, channels, spatial dims, dtype,
value range, dynamic axes), ``normalization`` (per-channel mean/std), ``preprocessing`` (image
size / channels, or spacing and sliding window for segmentation), ``output``, ``init`` and
``source`` (provenance of the initial weights), ``dataset``, ``test_metrics``,
``operating_point`` (two-class runs: the threshold chosen on validation, the positive class and
the test metrics at it; otherwise ``null``), ``check``, ``transfuse_version``, ``torch_version``,
``exported``.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write, write_text
from ..errors import ConfigError, DataError, ModelError
from ..train.clinical import operating_point_info
from ._run import DeployedRun, load_run

__all__ = ["FORMATS", "FILES", "ONNX_TOL", "TORCH_TOL", "OPSET", "SCHEMA", "ExportResult",
           "export_run", "model_metadata", "example_input"]

FORMATS = ("torchscript", "onnx", "safetensors")
FILES = {"torchscript": "model.pt", "onnx": "model.onnx", "safetensors": "model.safetensors"}
ONNX_TOL = 1e-4  #: max |onnxruntime − torch| accepted for an ONNX export
TORCH_TOL = 1e-5  #: max |reloaded TorchScript − eager| accepted
OPSET = 17
SCHEMA = "transfuse.model/1"
INSTALL_HINT = "pip install 'transfuse[export]'"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_run` wrote.

    Attributes:
        model_file: the model file (``model.pt``, ``model.onnx`` or ``model.safetensors``).
        metadata_file: ``model.json`` beside it.
        metadata: the contents of ``model.json``.
        removed: stale temporaries of an interrupted earlier export, removed first.
    """

    model_file: Path
    metadata_file: Path
    metadata: dict[str, Any]
    removed: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        """The post-export check passed."""
        return bool(self.metadata["check"]["passed"])


def _need(module: str, fmt: str) -> Any:
    """Import an optional dependency of a format, or one line saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"--format {fmt} needs the {module} package, which is not installed; "
                          f"{INSTALL_HINT}") from None


def example_input(run: DeployedRun, *, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal input ``(batch, C, *image_shape)`` (normalised inputs are ~N(0, 1))."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, run.in_channels, *run.image_shape, generator=g)


def export_run(run_id: str, *, workspace: str | Path, format: str, out_dir: str | Path,
               checkpoint: str = "best") -> ExportResult:
    """Export a finished run's model and write ``model.json`` beside it.

    Args:
        run_id: run id or unique prefix.
        workspace: the run store's folder.
        format: ``torchscript``, ``onnx`` or ``safetensors``.
        out_dir: folder to write into (created).
        checkpoint: ``best`` (the weights of the stored test metrics) or ``last``.

    Returns:
        :class:`ExportResult`; ``result.passed`` tells whether the check passed (recorded in
        ``model.json["check"]`` either way).

    Raises:
        ConfigError: unknown format, or its package missing (the message says what to install).
        TransfuseError: unknown or unfinished run, missing checkpoint, unwritable ``out_dir``.
        ModelError: the model cannot be traced / exported in this format.
    """
    if format not in FORMATS:
        raise ConfigError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
    if format == "onnx":
        _need("onnx", format)
        _need("onnxruntime", format)
    elif format == "safetensors":
        _need("safetensors", format)
    run = load_run(run_id, workspace=workspace, checkpoint=checkpoint)
    out = Path(out_dir).expanduser()
    if out.is_file():
        raise DataError(f"-o {out}: is a file; give a folder for the model and model.json")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"-o {out}: cannot create the folder ({e.strerror or e}); pass a writable "
                        "one") from None
    # a kill during an earlier export can leave its temporaries (model.onnx.tmp): remove them
    stale = [p for p in (out / f"{n}.tmp" for n in (*FILES.values(), "model.json")) if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    model = run.model.cpu().eval()
    path = out / FILES[format]
    checks: list[Any] = []
    try:
        atomic_write(path, lambda tmp: checks.append(
            {"torchscript": _torchscript, "onnx": _onnx, "safetensors": _safetensors}[format](run, model, tmp)))
    except OSError as e:
        raise DataError(f"{path}: cannot write the model ({e.strerror or e}); free space or pass "
                        "another -o") from None
    check = checks[0]
    meta = model_metadata(run, format=format, check=check)
    meta_path = out / "model.json"
    write_text(meta_path, json.dumps(meta, indent=1, default=str) + "\n")
    return ExportResult(path, meta_path, meta, removed=tuple(str(p) for p in stale))


def _max_diff(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).max())


def _torchscript(run: DeployedRun, model: nn.Module, tmp: Path) -> dict[str, Any]:
    x = example_input(run)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer notes
        try:
            traced = torch.jit.trace(model, x, check_trace=False)
        except Exception as e:  # the tracer raises many types (RuntimeError, TracingCheckError…)
            raise ModelError(f"model {run.spec.model.name!r} cannot be traced for TorchScript "
                             f"({type(e).__name__}: {str(e).strip()[:160]}); export it as onnx or "
                             "safetensors instead") from None
        torch.jit.save(traced, str(tmp))
        loaded = torch.jit.load(str(tmp), map_location="cpu")
        x2 = example_input(run, batch=3, seed=1)  # another batch size: the batch axis is free
        diff = max(_max_diff(loaded(x), model(x)), _max_diff(loaded(x2), model(x2)))
    return {"method": "torch.jit.load of the file vs the eager model, 2 seeded inputs",
            "batch_sizes": [2, 3], "max_abs_diff": diff, "tolerance": TORCH_TOL,
            "passed": bool(diff <= TORCH_TOL)}


def _onnx(run: DeployedRun, model: nn.Module, tmp: Path) -> dict[str, Any]:
    import onnx
    import onnxruntime as ort

    x = example_input(run)
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notes
        try:
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, input_names=["input"],
                              output_names=["logits"], dynamic_axes=axes, opset_version=OPSET,
                              do_constant_folding=True)
        except Exception as e:  # the exporter raises many types for unsupported operators
            raise ModelError(f"model {run.spec.model.name!r} cannot be exported to ONNX "
                             f"({type(e).__name__}: {str(e).strip()[:160]}); export it as "
                             "torchscript or safetensors instead") from None
        onnx.checker.check_model(onnx.load(str(tmp)))
        sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        x2 = example_input(run, batch=3, seed=1)
        diff = max(_max_diff(sess.run(None, {"input": t.numpy()})[0], model(t)) for t in (x, x2))
        # Torch's own float32 rounding on this model (vs float64): the floor any runtime meets;
        # recorded so that a failed check can be told apart from a wrong export.
        m64 = copy.deepcopy(model).double()
        floor = max(_max_diff(model(t), m64(t.double())) for t in (x, x2))
    return {"method": "onnxruntime (CPUExecutionProvider) vs torch, 2 seeded inputs",
            "onnxruntime": ort.__version__, "onnx": onnx.__version__, "opset": OPSET,
            "batch_sizes": [2, 3], "max_abs_diff": diff, "tolerance": ONNX_TOL,
            "torch_float32_vs_float64": floor, "passed": bool(diff <= ONNX_TOL)}


def _safetensors(run: DeployedRun, model: nn.Module, tmp: Path) -> dict[str, Any]:
    from safetensors.torch import load_file, save_file

    # clone(): safetensors refuses tensors that share memory (e.g. tied weights).
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": "pt", "transfuse_run": run.run_id,
                                         "model": run.spec.model.name})
    back = load_file(str(tmp))
    same = set(back) == set(state) and all(
        back[k].dtype == v.dtype and torch.equal(back[k], v) for k, v in state.items())
    return {"method": "safetensors.torch.load_file of the file vs the state dict, exact",
            "tensors": len(state), "passed": bool(same)}


def model_metadata(run: DeployedRun, *, format: str, check: dict[str, Any]) -> dict[str, Any]:
    """The contents of ``model.json`` (see the module docstring for the fields)."""
    import platform

    from .. import __version__

    info, spec, rec = run.info, run.spec, run.record
    seg = run.task == "segmentation"
    mean, std = run.norm
    layout = "NC" + ("HW" if run.spatial_dims == 2 else "DHW")
    if seg:
        from ..train.segment import SW_OVERLAP

        prep: dict[str, Any] = {
            "orientation": "RAS", "spacing_mm": list(info.get("spacing") or []) or None,
            "spacing_setting": spec.data.spacing,
            "intensity": "per channel: 0.5th..99.5th percentile -> 0..1, clipped",
            "channels": spec.data.channels,
            "sliding_window": {"roi_size": list(run.image_shape), "overlap": SW_OVERLAP,
                               "mode": "gaussian"}}
        output = {"shape": ["batch", len(run.class_names), *run.image_shape], "kind": "logits",
                  "activation": "softmax over axis 1; argmax gives the label map"}
    else:
        prep = {"image_size": spec.data.image_size, "channels": spec.data.channels,
                "pixel_scale": "uint8 / 255 (float images as 0..1)"}
        output = {"shape": ["batch", len(run.class_names)], "kind": "logits",
                  "activation": ("softmax over axis 1" if run.task == "multiclass"
                                 else "sigmoid per class")}
    return {
        "schema": SCHEMA,
        "format": format,
        "file": FILES[format],
        "run_id": run.run_id,
        "study": rec.study,
        "checkpoint": run.checkpoint,
        "checkpoint_step": run.checkpoint_step,
        "model": {"name": spec.model.name, "spatial_dims": run.spatial_dims,
                  "parameters": int(sum(p.numel() for p in run.model.parameters())),
                  "kwargs": run.model_kwargs,
                  "rebuild": "transfuse.create_model(name, spatial_dims=..., in_channels=..., "
                             "num_classes=len(class_names), **kwargs)"},
        "task": run.task,
        "class_names": list(run.class_names),
        "input": {"shape": [1, run.in_channels, *run.image_shape], "channels": run.in_channels,
                  "spatial_dims": run.spatial_dims, "layout": layout, "dtype": "float32",
                  "dynamic_axes": ["batch"], "name": "input",
                  "value_range": "0..1 before normalization"},
        "normalization": {"mean": list(mean), "std": list(std),
                          "formula": "(x - mean[c]) / std[c] per channel c"},
        "preprocessing": prep,
        "output": output,
        "init": dict(rec.spec.get("init") or {}),
        "source": (rec.init_report or {}).get("source_info"),
        "dataset": {"name": info.get("name"), "source": info.get("source"),
                    "license": info.get("license"), "split_sizes": info.get("split_sizes")},
        "test_metrics": dict(run.test_metrics),
        # two-class runs: the decision threshold chosen on validation, and the test at it
        "operating_point": operating_point_info(
            dict(run.test_metrics), class_names=list(run.class_names),
            rule=(rec.spec.get("train") or {}).get("operating_point", "youden")),
        "check": check,
        "transfuse_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
