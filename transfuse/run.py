"""One run end to end: spec → data → model → init → ``fit`` → store.

:func:`train_run` is what ``transfuse train`` calls and what studies will call per grid cell. Bad
input is caught before the run is registered, so a typo never leaves a row in the store; a run
that fails during training is marked ``failed`` with its error and retried next time.
"""

from __future__ import annotations

import os
import platform
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .config import RunSpec, run_id
from .data import PreparedData, load_dataset
from .inits import INITS, apply_init, init_model_kwargs, parse_init
from .live import check_tensorboard, live_log
from .errors import (ConfigError, DivergedError, ModelError, PreemptedError, StoreError,
                     TransfuseError)
from .models import create_model, get_stages
from .store import RunRecord, Store
from .train.device import resolve_device, seed_everything
from .train.finetune import plan_finetune
from .train.graph import check_cuda_graph
from .train.loop import fit
from .train.resume import drop_resume
from .weights import SourceWeights, resolve_source

__all__ = ["train_run", "RunOutcome", "check_compatible", "check_sizes", "environment",
           "initial_model"]



@dataclass(frozen=True)
class RunOutcome:
    """Result of :func:`train_run`: the stored record and whether it was already finished."""

    record: RunRecord
    test: dict[str, float | None]
    skipped: bool


def _augment_info(spec: RunSpec, data: Any) -> dict[str, Any] | None:
    """The training augmentation's recipe (level, library, transforms), or None without one."""
    from .train.augment import make_augment

    aug = make_augment(spec.train.augment, spatial_dims=data.info.spatial_dims,
                       channels=data.info.in_channels, task=data.info.task)
    return aug.describe() if aug is not None else None


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, stored with every run."""
    import numpy
    import torchvision

    from . import __version__

    env = {"transfuse": __version__, "python": platform.python_version(), "torch": torch.__version__,
           "torchvision": torchvision.__version__, "numpy": numpy.__version__,
           "platform": platform.platform(), "host": socket.gethostname(), "device": str(device),
           "cpu_threads": torch.get_num_threads(), "world_size": int(os.environ.get("WORLD_SIZE", 1))}
    # which physical GPU: inside a study worker CUDA_VISIBLE_DEVICES holds its one GPU
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    env["cuda_visible_devices"] = visible
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        ids = [x.strip() for x in visible.split(",")] if visible else None
        index = device.index or 0
        env["physical_gpu"] = ids[index] if ids and index < len(ids) else str(index)
    return env


def check_compatible(spec: RunSpec, data: PreparedData) -> int:
    """Check model/data compatibility; return the spatial dims to build the model with.

    The spec itself is not changed (``model.spatial_dims=None`` means "as the data"), so a run's
    id can be computed without loading its data.
    """
    from .models import model_info

    info = model_info(spec.model.name)
    dims = spec.model.spatial_dims or data.info.spatial_dims
    if dims != data.info.spatial_dims:
        raise ConfigError(f"model.spatial_dims={dims} but dataset {data.info.name!r} is "
                          f"{data.info.spatial_dims}D; drop --spatial-dims or pick matching data")
    if dims not in info["spatial_dims"]:  # before the size checks: a size fix would not help
        have = " or ".join(f"{d}D" for d in info["spatial_dims"])
        raise ModelError(f"model {spec.model.name!r} is {have} only but dataset "
                          f"{data.info.name!r} is {dims}D; pick a {dims}D model (`transfuse models`)")
    # Segmentation data needs a model that outputs a map (registry meta task="segmentation").
    model_task = info.get("task", "classification")
    data_task = "segmentation" if data.info.task == "segmentation" else "classification"
    if model_task != data_task:
        raise ConfigError(f"model {spec.model.name!r} is a {model_task} model but dataset "
                          f"{data.info.name!r} is {data_task} data; pick a {data_task} model "
                          "(`transfuse models`)")
    side = min(data.info.image_shape)
    if data_task == "segmentation":
        mult = info.get("size_multiple", 1)
        if side < info["min_size"] or side % mult:
            raise ConfigError(f"model {spec.model.name!r} needs patches of at least "
                              f"{info['min_size']} px and a multiple of {mult}, not {side}; pass "
                              f"--patch-size {max(info['min_size'], -(-side // mult) * mult)}")
        return dims
    if side < info["min_size"]:
        raise ConfigError(f"model {spec.model.name!r} needs inputs of at least {info['min_size']} px "
                          f"but {data.info.name!r} is {side} px; pass --image-size {info['min_size']} "
                          "or larger")
    return dims


def _is_smoke(spec: RunSpec) -> bool:
    """A ``--smoke`` run: its ``n_train``/batch are caps that may exceed a small dataset."""
    return (spec.study or "").endswith(("-smoke", "-smoke-pretrain"))


def check_sizes(spec: RunSpec, data: PreparedData) -> None:
    """``data.n_train`` must not exceed the training set, nor ``train.batch_size`` a subsample.

    Raises:
        ConfigError: naming the field, the sizes and the value to use instead.
    """
    if _is_smoke(spec):
        return
    have = data.info.train_available
    n = spec.data.n_train
    unit = "volumes" if data.info.task == "segmentation" else "examples"
    if n is not None and have is not None and n > have:
        raise ConfigError(f"data.n_train={n} is larger than the {have} training {unit} of "
                          f"{spec.data.name!r}; pass --n-train {have} or less, or leave it out")
    kept = len(data.train)
    if n is not None and data.info.task != "segmentation" and spec.train.batch_size > kept:
        raise ConfigError(f"train.batch_size={spec.train.batch_size} is larger than the {kept} "
                          f"training examples of data.n_train={n}; pass --batch-size {kept} or "
                          "less, or a larger --n-train")


def _clean_tmp(run_dir: Path) -> None:
    """Remove half-written files (``*.tmp``) of an interrupted run; frees space on a full disk."""
    if run_dir.is_dir():
        for p in run_dir.rglob("*.tmp"):
            try:
                p.unlink()
            except OSError:
                pass


def record_failure(store: Store, rid: str, run_dir: Path, e: BaseException) -> BaseException:
    """Clean up after a failed run, mark it ``failed`` where the store is still writable, and
    return the one-line error to raise (``None`` context: no chained tracebacks)."""
    _clean_tmp(run_dir)  # first: on a full disk this frees the space the store needs
    if isinstance(e, Exception) and not isinstance(e, PreemptedError):
        # a failure would only recur from a checkpoint taken just before it: start over next
        # time (a stop — SIGTERM, Ctrl-C — keeps it)
        drop_resume(run_dir)
    if isinstance(e, (PreemptedError, KeyboardInterrupt)):
        # stopped, not failed: the run keeps its checkpoint and stays resumable ("stale")
        msg = f"run {rid} {e}" if isinstance(e, PreemptedError) else f"run {rid} interrupted"
        try:
            store.stop_run(rid, msg)
            stored = "the run keeps its checkpoint and resumes when run again"
        except StoreError as se:
            stored = f"it could not be marked stopped ({se}); `transfuse runs list` shows it as stale"
        return type(e)(f"{msg}; {stored}") if isinstance(e, PreemptedError) else e
    if isinstance(e, DivergedError):
        msg = f"run {rid} diverged: {e}"
    elif isinstance(e, DivergedError):
        msg = f"run {rid} diverged: {e}"
    elif isinstance(e, OSError):
        what = f"{e.filename}: " if e.filename else ""
        msg = (f"run {rid} failed writing its files ({what}{e.strerror or e}); free disk space or "
               f"make {run_dir.parent.parent} writable, then run again")
    elif isinstance(e, TransfuseError):
        msg = f"run {rid} failed: {e}"
    else:
        msg = f"{type(e).__name__}: {e}"
    try:
        store.fail_run(rid, msg)
        stored = "the run is stored as failed and restarts when run again"
    except StoreError as se:
        stored = f"it could not be marked failed ({se}); `transfuse runs list` shows it as stale"
    if isinstance(e, OSError):
        return StoreError(f"{msg}; {stored}")
    if isinstance(e, TransfuseError):  # DivergedError keeps its class: the CLI exits 3
        return type(e)(f"{msg}; {stored}")
    return e  # a bug: re-raised as it is, with its traceback


def run_source(spec: RunSpec, workspace: str | Path) -> SourceWeights | None:
    """Resolve the run's pretrained source (validating the init spec) before anything runs."""
    parts = parse_init(spec.init.name)
    needs = any(INITS.get(n).meta["needs_source"] for n, _ in parts)
    if needs and not spec.init.source:
        raise ConfigError(f"init {spec.init.name!r} needs pretrained weights: pass --source, e.g. "
                          "imagenet:efficientnet_lite0, file:ckpt.pt or run:<run_id>")
    if not spec.init.source:
        return None
    return resolve_source(spec.init.source, workspace=workspace)


def check_run(spec: RunSpec, workspace: str | Path, tensorboard: bool
             ) -> tuple[SourceWeights | None, tuple[Any, Any] | None]:
    """Validate ``spec`` before anything runs; its pretrained source and the normalisation
    ``data.normalize=source`` asks for."""
    if spec.parent is not None:
        raise ConfigError(f"run spec has parent={spec.parent!r}: it is a derived run (e.g. a "
                          "self-training student) and is trained by its own command "
                          "(`transfuse selftrain FILE`), not as a plain run")
    if tensorboard:
        check_tensorboard()
    source = run_source(spec, workspace)
    norm = None
    if spec.data.normalize == "source":
        if source is None or source.mean is None or source.std is None:
            raise ConfigError("data.normalize=source needs a pretrained source that declares its "
                              "mean/std (--source); use data.normalize=data otherwise")
        norm = (source.mean, source.std)
    return source, norm


@dataclass
class _Built:
    """A run's model, initialised, with what its record keeps about it."""

    model: torch.nn.Module
    dims: int
    init_report: dict[str, Any]
    finetune: dict[str, Any]


def build_run(spec: RunSpec, data: PreparedData, *, source: SourceWeights | None,
           workspace: str | Path) -> _Built:
    """Check the spec against the data, build the model and apply the run's init."""
    dims = check_compatible(spec, data)
    check_sizes(spec, data)
    seed_everything(spec.seed)
    model = create_model(spec.model.name, spatial_dims=dims,
                         in_channels=data.info.in_channels, num_classes=data.info.num_classes,
                         **init_model_kwargs(spec.init.name))
    report = apply_init(model, spec.init, source=source, seed=spec.seed, workspace=workspace)
    init_report = {**report.to_dict(), "source_info": source.to_dict() if source else None}
    finetune = plan_finetune(model, spec.train).describe()  # a bad train.finetune fails here
    return _Built(model, dims, init_report, finetune)


def initial_model(spec: RunSpec, *, workspace: str | Path) -> torch.nn.Module:
    """The run's model exactly as :func:`train_run` builds it before its first step (the weights
    its ``init.pt`` holds): same data preparation, seed, model and init, nothing trained.

    Args:
        spec: the run (e.g. ``spec_from_dict(record.spec)``).
        workspace: where its ``run:``/``pretrain:``/``ssl:`` source lives.

    Raises:
        TransfuseError: as :func:`train_run` would for bad input (nothing is stored).
    """
    source, norm = check_run(spec, workspace, False)
    data = load_dataset(spec.data, norm=norm)
    return build_run(spec, data, source=source, workspace=workspace).model


def begin_run(store: Store, spec: RunSpec, built: _Built, data: PreparedData, *, run_dir: Path,
           workspace: str | Path, tensorboard: bool) -> Any:
    """The started run's live log and its stored data, init and model information."""
    rid = run_id(spec)
    log = live_log(store, rid, run_dir=run_dir, workspace=workspace, tensorboard=tensorboard)
    store.set_info(rid, data_info=data.info.to_dict(), init_report=built.init_report, model_info={
        "name": spec.model.name, "spatial_dims": built.dims,
        "parameters": sum(p.numel() for p in built.model.parameters()),
        "stages": [s.to_dict() for s in get_stages(built.model)],
        # trainable parameter count and per-stage learning rates (train.finetune)
        "finetune": built.finetune, "augment": _augment_info(spec, data)})
    return log


def finish_run(store: Store, rid: str, result: Any) -> None:
    """Store a trained run's test metrics and summary: the run is finished."""
    store.finish_run(rid, step=result.steps, test_metrics=result.test, summary={
        "best_step": result.best_step, "steps": result.steps,
        "train_seconds": round(result.train_seconds, 3),
        "step_seconds": round(result.train_seconds / max(result.steps, 1), 5),
        "examples_per_second": round(result.examples_per_second, 1),
        # this attempt continued a killed one from its mid-run checkpoint at that step
        "resumed_from": result.resumed_from,
        # train.early_stop ended it here (only then: older summaries keep their keys)
        **({"stopped_step": result.stopped_step} if getattr(result, "stopped_step", None) else {}),
        # train.cuda_graph on CUDA: "captured", "off" or why it was not (nothing on the CPU)
        **({"cuda_graph": result.cuda_graph} if getattr(result, "cuda_graph", None) else {})})


def train_run(spec: RunSpec, *, workspace: str | Path, device: str | None = None,
              progress: bool = True, tensorboard: bool = False) -> RunOutcome:
    """Train one run and store it; a finished run is returned as is, not repeated.

    Args:
        spec: the run.
        workspace: folder of the run store.
        device: ``None`` (auto), ``"cpu"`` or ``"cuda[:i]"``.
        progress: show a progress bar.
        tensorboard: also write TensorBoard events to ``WORKSPACE/tensorboard/<run_id>/``
            (``metrics.csv`` in the run folder is always written; see :mod:`transfuse.live`).

    Returns:
        :class:`RunOutcome` with the stored record and test metrics.

    Raises:
        TransfuseError: bad input (dataset, model, options), before anything is stored.
    """
    source, norm = check_run(spec, workspace, tensorboard)
    if source is not None and spec.init.source != source.name and source.name.startswith("run:"):
        # `--source run:<prefix>`: the run id and the record name the source run in full, so
        # neither depends on which other runs the store holds
        spec = replace(spec, init=replace(spec.init, source=source.name))
    rid = run_id(spec)
    # A new workspace's store is made only once the input is known good (a --data-root typo
    # must not leave an empty transfuse.db behind); an existing one answers "finished?" first.
    store = Store(workspace) if (Path(workspace) / "transfuse.db").is_file() else None
    if store is not None and store.status(rid) == "finished":
        return RunOutcome(store.get_run(rid), store.final_metrics(rid), skipped=True)
    data = load_dataset(spec.data, norm=norm)
    dev = resolve_device(device)
    check_cuda_graph(spec.train, dev)  # `train.cuda_graph: on` off CUDA: before anything is stored
    built = build_run(spec, data, source=source, workspace=workspace)  # checks spec against data
    store = store or Store(workspace)
    main = int(os.environ.get("RANK", 0)) == 0
    if main:
        store.start_run(spec, env=environment(dev))
    run_dir = store.run_dir(rid)
    log = None
    try:
        if main:
            log = begin_run(store, spec, built, data, run_dir=run_dir, workspace=workspace,
                         tensorboard=tensorboard)
        result = fit(built.model, data, spec.train, seed=spec.seed, device=device,
                     run_dir=run_dir, progress=progress,
                     log=log)
        if main:
            finish_run(store, rid, result)
    except BaseException as e:
        if not main:
            raise
        err = record_failure(store, rid, run_dir, e)
        if err is e:
            raise
        raise err from None
    finally:
        if log is not None:
            log.close()
    if main:
        return RunOutcome(store.get_run(rid), store.final_metrics(rid), skipped=False)
    return RunOutcome(None, result.test, skipped=False)  # type: ignore[arg-type]
