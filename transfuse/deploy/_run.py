"""A finished run, rebuilt for deployment: its spec, stored preprocessing and trained model.

:func:`load_run` is the one place that turns a run id into a model with the run's weights: the
architecture comes from the stored spec and ``model_info`` (``create_model`` with the same
options as in training), the weights from ``best.pt`` or ``last.pt`` in the run folder, read with
``torch.load(weights_only=True)``. Every problem (no store, unknown or unfinished run, missing or
unusable checkpoint) is a one-line :class:`~transfuse.errors.TransfuseError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RunSpec, spec_from_dict
from ..errors import ConfigError, DataError, ModelError, StoreError, check_name
from ..store import RunRecord, Store

__all__ = ["DeployedRun", "load_run", "CHECKPOINTS"]

#: Checkpoints a finished run keeps in its folder: best on validation, and the last step.
CHECKPOINTS = ("best", "last")


@dataclass(frozen=True)
class DeployedRun:
    """A finished run with its model loaded (CPU, eval mode).

    Attributes:
        record: the stored run.
        spec: the run's :class:`~transfuse.config.RunSpec`.
        model: maps ``(N, C, *image_shape)`` to logits ``(N, K)`` (segmentation:
            ``(N, K, *spatial)``).
        checkpoint: ``"best"`` or ``"last"``.
        checkpoint_path: the file the weights came from.
        checkpoint_step: the training step of those weights (``None`` if not recorded).
        state_dict: the loaded weights (CPU tensors, as in the checkpoint).
        test_metrics: the run's stored test metrics (``None`` where undefined).
    """

    record: RunRecord
    spec: RunSpec
    model: nn.Module
    checkpoint: str
    checkpoint_path: Path
    checkpoint_step: int | None
    state_dict: dict[str, torch.Tensor]
    test_metrics: dict[str, float | None]

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def info(self) -> dict[str, Any]:
        """The run's ``data_info``: task, class names, channels, image shape, mean/std, ..."""
        return self.record.data_info

    @property
    def task(self) -> str:
        """``multiclass``, ``multilabel`` or ``segmentation``."""
        return str(self.info["task"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.info["class_names"])

    @property
    def in_channels(self) -> int:
        return int(self.info["in_channels"])

    @property
    def spatial_dims(self) -> int:
        return int(self.record.model_info.get("spatial_dims") or self.info["spatial_dims"])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Input shape the model was trained at, ``(H, W)`` / ``(D, H, W)`` (segmentation: the
        training patch, also the sliding window)."""
        return tuple(int(s) for s in self.info["image_shape"])

    @property
    def norm(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel ``(mean, std)`` the run normalised its inputs with (0–1 pixel scale)."""
        return tuple(self.info["norm_mean"]), tuple(self.info["norm_std"])

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """The extra ``create_model`` options the architecture was built with."""
        return dict(getattr(self.model, "model_kwargs", {}) or {})


def open_store(workspace: str | Path) -> Store:
    """The run store of ``workspace``, which must already exist (reading never creates one).

    Raises:
        StoreError: there is no ``transfuse.db`` in ``workspace``.
    """
    ws = Path(workspace).expanduser()
    if not (ws / "transfuse.db").is_file():
        raise StoreError(f"no run store in {ws} ({ws / 'transfuse.db'} not found); pass the "
                         "workspace the run was trained in with -w/--workspace")
    return Store(ws)


def load_run(run_id: str, *, workspace: str | Path, checkpoint: str = "best") -> DeployedRun:
    """Rebuild a finished run's model with its trained weights.

    Args:
        run_id: the run id or a unique prefix.
        workspace: the folder holding the run store.
        checkpoint: ``"best"`` (best on validation: the weights the test metrics come from) or
            ``"last"`` (the final training step).

    Returns:
        :class:`DeployedRun`; its model is on the CPU in eval mode.

    Raises:
        ConfigError: unknown ``checkpoint``, a malformed id, or a run that is not finished.
        StoreError: no run store in ``workspace``.
        TransfuseError: no run (or several) with that id.
        DataError: the checkpoint file is missing.
        ModelError: the checkpoint does not fit the run's architecture.
    """
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"--checkpoint {checkpoint!r} is not one of {', '.join(CHECKPOINTS)}; "
                          "best = best on validation, last = the final step")
    check_name(run_id, field="run id")
    store = open_store(workspace)
    rec = store.get_run(run_id)
    if rec.status != "finished":
        raise ConfigError(f"run {rec.run_id} is {rec.state}, not finished; finish it first (run the "
                          "same `transfuse train ...` again) or pick a finished run (`transfuse "
                          "runs list`)")
    path = Path(rec.run_dir or store.run_dir(rec.run_id)) / f"{checkpoint}.pt"
    if not path.is_file():
        raise DataError(f"{path}: checkpoint of run {rec.run_id} not found (was the run folder "
                        "moved or deleted?); `transfuse runs check` lists runs missing files")
    from ..weights.io import load_state_dict

    state = load_state_dict(path)  # weights_only=True; unwraps {"state_dict": ...}, clean keys
    obj = torch.load(path, map_location="cpu", weights_only=True)  # readable: just loaded
    step = obj.get("step") if isinstance(obj, dict) else None
    spec = spec_from_dict(rec.spec)
    model = _build(rec, spec, state, path)
    return DeployedRun(record=rec, spec=spec, model=model, checkpoint=checkpoint,
                       checkpoint_path=path, checkpoint_step=int(step) if step is not None else None,
                       state_dict=state, test_metrics=store.final_metrics(rec.run_id))


def _build(rec: RunRecord, spec: RunSpec, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """The run's architecture (as :func:`~transfuse.run.train_run` built it) with ``state``."""
    from ..inits import init_model_kwargs
    from ..models import create_model

    di, mi = rec.data_info, rec.model_info
    model = create_model(spec.model.name, spatial_dims=int(mi.get("spatial_dims") or di["spatial_dims"]),
                         in_channels=int(di["in_channels"]), num_classes=len(di["class_names"]),
                         **init_model_kwargs(spec.init.name))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        why = first[1].strip() if len(first) > 1 else first[0] if first else ""
        raise ModelError(f"{path}: the checkpoint does not fit model {spec.model.name!r} of run "
                         f"{rec.run_id} ({why[:160]}); the run folder holds another run's files") from None
    return model.eval()
