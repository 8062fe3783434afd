"""``fit()``: the training loop, readable in one sitting.

Step-based: ``TrainSpec.steps`` optimiser steps (or ``epochs`` passes), validation every
``eval_every`` steps and at the end, then the test split with the best-on-validation weights.
Checkpoints ``init.pt`` (before any step — analysis compares init with final), ``best.pt`` and
``last.pt`` hold the unwrapped model's ``state_dict`` and load with ``weights_only=True``.
With ``train.ema`` or ``train.swa`` (:mod:`transfuse.train.averaging`) the average is updated after
each optimiser step, and the averaged weights are what is evaluated, selected on validation, saved
in ``best.pt``/``last.pt`` and tested (SWA: from its start step on, with BatchNorm statistics
recomputed on the training set); the average is part of ``resume.pt``.
Segmentation data (``data.info.task == "segmentation"``) goes through the same loop: the loss,
the whole-volume evaluation and the selection score (mean Dice instead of AUC) come from
:mod:`transfuse.train.segment`.
Under ``torchrun`` the model is wrapped in DDP and each process sees its shard of the training
set; every process evaluates the full validation set (identical numbers, no gathering) and only
rank 0 writes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .._progress import step as report_step
from .._signals import stop_signal
from ..atomic import atomic_write
from ..config import TrainSpec
from ..data.base import PreparedData
from ..errors import PreemptedError
from .augment import make_augment
from .averaging import make_averaging
from .clinical import clinical_metrics
from .device import autocast, init_distributed, resolve_device
from .metrics import classification_metrics
from .resume import (RESUME_FILE, BatchStream, SigtermGuard, drop_resume, load_resume,
                     restore_parts, resume_state, save_resume)
from .graph import make_step
from .parts import FitState, diverged as _diverged, make_loaders, place_model, progress_bar
from .segment import evaluate_segmentation, segmentation_loss

__all__ = ["fit", "FitResult", "evaluate", "make_optimizer", "lr_lambda", "loss_fn", "primary_metric"]

LogFn = Callable[[int, str, dict[str, float]], None]


@dataclass
class FitResult:
    """What ``fit`` returns: final test metrics and the curve of validation metrics."""

    test: dict[str, float]
    best_step: int
    steps: int
    history: list[tuple[int, str, dict[str, float]]] = field(default_factory=list)
    train_seconds: float = 0.0  # the training steps only: evaluation and checkpoints excluded
    examples_per_second: float = 0.0
    resumed_from: int | None = None  # the step a mid-run checkpoint let this attempt start after
    stopped_step: int | None = None  # train.early_stop ended training at this step
    cuda_graph: str | None = None  # train.cuda_graph on CUDA: "captured", "off" or why not


def loss_fn(logits: torch.Tensor, y: torch.Tensor, m: torch.Tensor, task: str,
            weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy (multi-class), masked BCE (multi-label; masked labels add nothing) or
    Dice + cross-entropy (segmentation: logits ``(N, K, *spatial)``, targets ``(N, *spatial)``).
    ``weight`` ``(K,)``: class weights (multi-class) or positive weights (multi-label)."""
    if task == "segmentation":
        return segmentation_loss(logits, y, m)
    if task == "multiclass":
        return F.cross_entropy(logits, y, weight=weight)
    per = F.binary_cross_entropy_with_logits(logits, y, reduction="none", pos_weight=weight) * m
    return per.sum() / m.sum().clamp_min(1.0)


def make_optimizer(model: nn.Module, spec: TrainSpec, *,
                   groups: list[dict[str, Any]] | None = None) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, Adam or AdamW. No weight decay on norms and biases.

    Args:
        groups: parameter groups to optimise instead of all of ``model``'s parameters in two
            groups (e.g. :meth:`~transfuse.train.finetune.Finetune.param_groups`: per stage, with
            their own ``lr``); a group without ``lr`` gets ``spec.lr``.
    """
    if groups is None:
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": spec.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.momentum > 0)
    cls = torch.optim.Adam if spec.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, lr=spec.lr)


def lr_lambda(spec: TrainSpec, total: int) -> Callable[[int], float]:
    """LR multiplier per step: linear warm-up, then constant / cosine / step / linear decay."""

    def f(step: int) -> float:
        if step < spec.warmup_steps:
            return (step + 1) / spec.warmup_steps
        t = (step - spec.warmup_steps) / max(1, total - spec.warmup_steps)
        if spec.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        if spec.schedule == "linear":
            return 1 - t
        if spec.schedule == "step":
            return 0.1 ** ((t >= 0.5) + (t >= 0.75))
        return 1.0

    return f


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, task: str,
            amp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Probabilities ``(N, K)``, targets, masks and mean loss over ``loader``."""
    was_training = model.training
    model.eval()
    probs, ys, ms, loss_sum, n = [], [], [], 0.0, 0
    for x, y, m in loader:
        x, y, m = x.to(device, non_blocking=True), y.to(device), m.to(device)
        with autocast(device, amp):
            logits = model(x)
        logits = logits.float()
        loss_sum += loss_fn(logits, y, m, task).item() * len(x)
        n += len(x)
        probs.append((logits.softmax(1) if task == "multiclass" else logits.sigmoid()).cpu())
        ys.append(y.cpu())
        ms.append(m.cpu())
    model.train(was_training)
    return (torch.cat(probs).numpy(), torch.cat(ys).numpy(), torch.cat(ms).numpy(), loss_sum / max(n, 1))


def evaluate(model: nn.Module, loader: DataLoader, *, data: PreparedData, device: torch.device,
             amp: bool = False) -> tuple[dict[str, float], np.ndarray]:
    """Loss, macro and per-class AUC and accuracy on one split; also returns the probabilities.

    Segmentation: loss and Dice from sliding-window inference on whole volumes, and the per-case
    Dice instead of probabilities (see :func:`~transfuse.train.segment.evaluate_segmentation`).
    """
    if data.info.task == "segmentation":
        return evaluate_segmentation(model, loader, data=data, device=device, amp=amp)
    probs, y, m, loss = predict(model, loader, device, data.info.task, amp)
    return score_predictions(probs, y, m, loss, data=data), probs


def score_predictions(probs: np.ndarray, y: np.ndarray, m: np.ndarray, loss: float, *,
                      data: PreparedData) -> dict[str, float]:
    """Loss, macro and per-class AUC and accuracy of probabilities ``(N, K)`` on one split.

    Raises:
        FloatingPointError: NaN/inf probabilities (training diverged).
    """
    if not np.isfinite(probs).all():
        raise FloatingPointError("the model predicts NaN/inf; training diverged — lower the "
                                 "learning rate or check the inputs for extreme values")
    return {"loss": loss, **classification_metrics(
        probs, y, task=data.info.task, class_names=data.info.class_names, mask=m)}


def primary_metric(task: str) -> str:
    """The validation score that selects the best checkpoint: ``dice`` or ``auc``."""
    return "dice" if task == "segmentation" else "auc"


def _save_predictions(path: Path, data: PreparedData, preds: np.ndarray) -> None:
    """``test_predictions.npz``: probabilities, targets and masks, or per-case Dice (segmentation)."""
    if data.info.task == "segmentation":
        cols = list(data.info.class_names[1:]) + list(data.info.regions)
        arrays = {"dice": preds, "columns": np.array(cols)}
    else:
        items = [data.test[i] for i in range(len(data.test))]
        arrays = {"probs": preds, "targets": torch.stack([it[1] for it in items]).numpy(),
                  "masks": torch.stack([torch.as_tensor(it[2]) for it in items]).numpy()}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to the name
            np.savez(f, **arrays)

    atomic_write(path, write)


def _save(model: nn.Module, path: Path, step: int) -> None:
    _save_state(model.state_dict(), path, step)


def _save_state(state: dict[str, torch.Tensor], path: Path, step: int) -> None:
    """A checkpoint file (``init.pt``, ``best.pt``, ``last.pt``): ``{"state_dict", "step"}``."""
    atomic_write(path, lambda tmp: torch.save({"state_dict": state, "step": step}, tmp))


def checkpoint_or_stop(step: int, total: int, *, every: int, guard: Any,
                       checkpoint: Callable[[int], None], bar: Any) -> float:
    """The mid-run checkpoint every ``every`` steps, and at once when a stop was requested
    (SIGTERM or Ctrl-C), which then ends the run with :class:`PreemptedError`.

    Returns:
        the seconds the checkpoint took (0 when none was due).
    """
    if not (step < total and (step % every == 0 or guard.requested)):
        return 0.0
    t = time.perf_counter()
    checkpoint(step)
    if guard.requested:
        bar.close()
        raise PreemptedError(f"stopped by {stop_signal()} after step {step} of {total}; its "
                             "checkpoint is kept: run it again to resume", step=step)
    return time.perf_counter() - t


def _evaluate(model: nn.Module, loader: DataLoader, *, data: PreparedData, device: torch.device,
              spec: TrainSpec, step: int) -> tuple[dict[str, float], np.ndarray]:
    """:func:`evaluate`, with NaN/inf predictions reported as a divergence at ``step``."""
    try:
        return evaluate(model, loader, data=data, device=device, amp=spec.amp)
    except FloatingPointError:
        raise _diverged("the model predicts NaN/inf", step, spec) from None


def fit(model: nn.Module, data: PreparedData, spec: TrainSpec, *, seed: int = 0,
        device: str | None = None, run_dir: Path | str | None = None, log: LogFn | None = None,
        progress: bool = True) -> FitResult:
    """Train ``model`` on ``data.train``, select on ``data.val``, report on ``data.test``.

    Args:
        model: maps ``(N, C, *spatial)`` to logits ``(N, K)`` (segmentation: ``(N, K, *spatial)``).
        data: prepared splits yielding ``(image, target, mask)``.
        spec: optimisation settings.
        seed: seeds batch order (the model is initialised by the caller).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``None`` for automatic.
        run_dir: where ``init.pt``, ``best.pt``, ``last.pt`` and ``test_predictions.npz`` go.
        log: called as ``log(step, split, metrics)`` after each evaluation (rank 0 only).
        progress: show a progress bar.

    Returns:
        :class:`FitResult` with test metrics of the best-on-validation checkpoint.
    """
    dev = resolve_device(device)
    dist_info = init_distributed(dev)
    task, main = data.info.task, dist_info.is_main
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None and main:
        run_dir.mkdir(parents=True, exist_ok=True)
    placed = place_model(model, spec, device=dev, world_size=dist_info.world_size,
                         spatial_dims=data.info.spatial_dims)
    model, raw_model, finetune = placed.model, placed.raw, placed.finetune
    loaders = make_loaders(data, spec, device=dev, world_size=dist_info.world_size, seed=seed)
    total = spec.steps or spec.epochs * len(loaders.train)
    augment = make_augment(spec.augment, spatial_dims=data.info.spatial_dims,
                           channels=data.info.in_channels, task=task,
                           norm_mean=tuple(data.info.norm_mean), norm_std=tuple(data.info.norm_std))
    opt = make_optimizer(raw_model, spec, groups=finetune.param_groups())
    # One LambdaLR multiplier for every group: each group keeps its own (per-stage) base lr.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec, total))
    averaging = make_averaging(spec, model=model, raw_model=raw_model, total=total, bn_data=data.train,
                               batch_size=loaders.eval_batch_size, device=dev)  # train.ema/swa
    st = FitState.start(dev)
    step_fn = make_step(model, spec=spec, task=task, seed=seed, dist=dist_info, loaders=loaders,
                        placed=placed, augment=augment, opt=opt, sched=sched, loss_fn=loss_fn,
                        device=dev)  # the eager step, or a CUDA graph of it (train.cuda_graph)

    def record(step: int, split: str, metrics: dict[str, float]) -> None:
        st.history.append((step, split, metrics))
        if log is not None and main:
            log(step, split, metrics)

    def evaluate_on(loader: DataLoader, step: int, net: nn.Module = model) -> tuple[dict[str, float], np.ndarray]:
        return _evaluate(net, loader, data=data, device=dev, spec=spec, step=step)

    primary = primary_metric(task)
    batches = BatchStream(loaders.train, loaders.generator)
    fingerprint = resume_fingerprint(spec, seed, dist_info.world_size)
    # resume.pt: these parts' state_dict()s, FitState's keys and the random states
    parts = {"model": raw_model, "optimizer": opt, "scheduler": sched, "averaging": averaging, "stream": batches}
    ckpt = load_resume(run_dir, fingerprint)
    start = 1 if ckpt is None else int(ckpt["step"]) + 1
    if ckpt is not None:  # a killed or preempted attempt left a checkpoint: continue from it
        if finetune.switch_step is not None and start > finetune.switch_step:
            finetune.on_step(finetune.switch_step, raw_model, opt, sched)  # the groups, first
        restore_parts(ckpt, parts)
        st.restore(ckpt, record=record)
        st.best_state = _best_state(run_dir, st.best_step, dev)
    else:
        if run_dir is not None and main:
            _save(raw_model, run_dir / "init.pt", 0)
        record(0, "val", evaluate_on(loaders.val, 0, averaging.evaluated(0)[0])[0])

    def checkpoint(step: int) -> None:
        if run_dir is not None and main:
            save_resume(run_dir / RESUME_FILE, resume_state(
                fingerprint=fingerprint, step=step, parts=parts, **st.saved(early_stop=spec.early_stop is not None)))

    bar = progress_bar(total, start=start, enabled=progress and main)
    t0, eval_seconds = time.perf_counter(), 0.0
    model.train()
    with SigtermGuard() as sigterm:
        for step in range(start, total + 1):
            finetune.on_step(step, raw_model, opt, sched)  # LP-FT: unfreeze the body at its step
            loss, n = step_fn(next(batches), step)
            averaging.update(step)
            st.after_step(loss, n, step)
            bar.update(1)
            report_step(step)  # a study's progress bar, if one listens (transfuse._progress)
            if step % spec.eval_every == 0 or step == total:
                t_eval = time.perf_counter()
                train_loss = st.train_loss(step, spec)  # waits for the queued steps to finish
                # "lr": the schedule at train.lr (per-stage groups scale it by their multipliers)
                record(step, "train", {"loss": train_loss, "lr": spec.lr * sched.lr_lambdas[0](step)})
                evaluated, holder = averaging.evaluated(step)  # the averaged weights, if any
                val_metrics, val_probs = evaluate_on(loaders.val, step, evaluated)
                record(step, "val", val_metrics)
                score = val_metrics[primary] if math.isfinite(val_metrics[primary]) else -val_metrics["loss"]
                if st.improved(score, step, val_probs, holder) and run_dir is not None and main:
                    _save(holder, run_dir / "best.pt", step)
                bar.set_postfix({"loss": f"{train_loss:.3f}", f"val_{primary}": f"{val_metrics[primary]:.3f}"})
                eval_seconds += time.perf_counter() - t_eval
                if st.early_stop(score, spec, step, total):
                    break
            eval_seconds += checkpoint_or_stop(step, total, every=spec.checkpoint_every or spec.eval_every,
                                               guard=sigterm, checkpoint=checkpoint, bar=bar)
    bar.close()
    finetune.release()
    seconds = time.perf_counter() - t0 - eval_seconds
    steps_done = st.stopped_step or total
    if run_dir is not None and main:
        _save(averaging.evaluated(steps_done)[1], run_dir / "last.pt", steps_done)

    test_metrics = _final_test(raw_model, st, evaluate_on=evaluate_on, loaders=loaders, data=data,
                               spec=spec, run_dir=run_dir if main else None)
    return FitResult(test=test_metrics, best_step=st.best_step, steps=steps_done, history=st.history,
                     train_seconds=seconds,
                     examples_per_second=(st.seen * dist_info.world_size / seconds) if seconds else 0.0,
                     resumed_from=start - 1 if ckpt is not None else None,
                     stopped_step=st.stopped_step, cuda_graph=step_fn.note)


def _final_test(raw_model: nn.Module, st: FitState, *, evaluate_on: Callable[..., Any], loaders: Any,
                data: PreparedData, spec: TrainSpec, run_dir: Path | None) -> dict[str, float]:
    """Test metrics of the best-on-validation weights (loaded into ``raw_model``), with the
    clinical metrics at the operating point chosen on validation; ``test_predictions.npz`` and
    the end of ``resume.pt`` when ``run_dir`` is given."""
    if st.best_state is not None:  # else: no evaluation scored (cannot happen with finite losses)
        raw_model.load_state_dict(st.best_state)
    test_metrics, test_probs = evaluate_on(loaders.test, st.best_step)
    if data.info.task == "multiclass":  # calibration; two classes: the operating point on val
        if st.best_val_probs is None:  # resumed after its best evaluation: score val again
            st.best_val_probs = evaluate_on(loaders.val, st.best_step)[1]
        test_metrics.update(clinical_metrics(st.best_val_probs, _targets(data.val), test_probs,
                                             _targets(data.test), rule=spec.operating_point))
    if run_dir is not None:
        _save_predictions(run_dir / "test_predictions.npz", data, test_probs)
        drop_resume(run_dir)  # done: nothing to resume
    return test_metrics


def _best_state(run_dir: Path | None, best_step: int, dev: torch.device) -> dict[str, torch.Tensor] | None:
    """The weights of a resumed run's best evaluation, from ``best.pt``; ``None`` when that file
    is newer than the checkpoint (the run reaches, and rewrites, it again on the way)."""
    if not best_step or run_dir is None or not (run_dir / "best.pt").is_file():
        return None
    best = torch.load(run_dir / "best.pt", map_location=dev, weights_only=True)
    return best["state_dict"] if int(best["step"]) == best_step else None


def _targets(ds: Any) -> np.ndarray:
    """``(N,)`` targets of an evaluation split."""
    t = getattr(ds, "targets", None)
    if isinstance(t, torch.Tensor):
        return t.numpy()
    return torch.stack([torch.as_tensor(ds[i][1]) for i in range(len(ds))]).numpy()


def resume_fingerprint(spec: TrainSpec, seed: int, world_size: int) -> str:
    """What a checkpoint must match to be resumed: the training settings (save frequency
    aside), the seed and the number of processes."""
    import dataclasses
    import json

    d = dataclasses.asdict(spec)
    for k in ("checkpoint_every", "compile", "preload", "operating_point"):  # not the training
        d.pop(k, None)
    from ..config import FINETUNE_DEFAULTS

    for k in ("early_stop", "min_delta", "class_weights", "sampler", "ema", "swa"):  # added later
        if d.get(k) == FINETUNE_DEFAULTS[k]:
            d.pop(k)
    return json.dumps({"train": d, "seed": seed, "world_size": world_size}, sort_keys=True)
