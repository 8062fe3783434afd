"""``fit()``: the training loop, readable in one sitting.

Step-based: ``TrainSpec.steps`` optimiser steps (or ``epochs`` passes), validation every
``eval_every`` steps and at the end, then the test split with the best-on-validation weights.
Checkpoints ``init.pt`` (before any step — analysis compares init with final), ``best.pt`` and
``last.pt`` hold the unwrapped model's ``state_dict`` and load with ``weights_only=True``.
With ``train.ema`` or ``train.swa`` (:mod:`transfuse.train.averaging`) the averaged weights are
what is evaluated, selected on validation, saved in ``best.pt``/``last.pt`` and tested.
Segmentation data (``data.info.task == "segmentation"``) goes through the same loop: the loss,
the whole-volume evaluation and the selection score (mean Dice instead of AUC) come from
:mod:`transfuse.train.segment`.
Under ``torchrun`` the model is wrapped in DDP and each process sees its shard of the training
set; every process evaluates the full validation set (identical numbers, no gathering) and only
rank 0 writes.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
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
from ..config import TrainSpec
from ..data.base import ArrayDataset, PreparedData
from ..errors import ConfigError, DivergedError, PreemptedError
from .augment import make_augment
from .averaging import make_averaging
from .clinical import clinical_metrics
from .device import autocast, init_distributed, resolve_device
from .finetune import plan_finetune
from .imbalance import (SkipBalancedSampler, balanced_class_weights, balanced_sample_weights,
                        training_targets)
from .metrics import classification_metrics
from .resume import (RESUME_FILE, BatchStream, SigtermGuard, SkipDistributedSampler,
                     SkipRandomSampler, load_resume, rng_state, set_rng_state)
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

    _atomic_write(path, write)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename onto ``path``: a crash never leaves a half-written file, and a
    failed write removes its ``.tmp`` (torch reports a full disk as a RuntimeError: it becomes
    the OSError it is)."""
    tmp = path.with_suffix(".tmp")
    try:
        write(tmp)
        tmp.replace(path)
        return
    except BaseException as e:
        if not isinstance(e, RuntimeError):
            tmp.unlink(missing_ok=True)
            raise
        full = tmp.exists() and shutil.disk_usage(tmp.parent).free < 1 << 20
    # Outside the except block: torch's half-closed writer (referenced by the RuntimeError's
    # traceback) is released first, so unlinking really frees the space the store needs.
    import gc

    gc.collect()
    tmp.unlink(missing_ok=True)
    code = errno.ENOSPC if full else errno.EIO
    raise OSError(code, os.strerror(code), str(path))


def _save(model: nn.Module, path: Path, step: int) -> None:
    _save_state(model.state_dict(), path, step)


def _save_state(state: dict[str, torch.Tensor], path: Path, step: int) -> None:
    """A checkpoint file (``init.pt``, ``best.pt``, ``last.pt``): ``{"state_dict", "step"}``."""
    _atomic_write(path, lambda tmp: torch.save({"state_dict": state, "step": step}, tmp))


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


def _diverged(what: str, step: int, spec: TrainSpec) -> DivergedError:
    return DivergedError(f"{what} at step {step} (train.lr={spec.lr}); lower train.lr (e.g. --lr "
                         f"{spec.lr / 10:g}), add train.warmup_steps, or check the inputs for "
                         "extreme values")


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

    Weight averaging (``spec.ema``, ``spec.swa``): the average is updated after each optimiser
    step, and every evaluation, the best-on-validation selection, ``best.pt``, ``last.pt`` and
    the test predictions use the averaged weights (SWA: from its start step on, with BatchNorm
    statistics recomputed on the training set); the average is part of ``resume.pt``.
    """
    dev = resolve_device(device)
    dist_info = init_distributed(dev)
    task = data.info.task
    run_dir = Path(run_dir) if run_dir is not None else None
    main = dist_info.is_main
    if run_dir is not None and main:
        run_dir.mkdir(parents=True, exist_ok=True)

    model.to(dev)
    raw_model = model  # checkpoints always hold the unwrapped model's keys
    # Which stages train, at which lr (train.finetune); frozen ones must be set before DDP wraps
    # the model, since DDP only reduces the gradients of parameters that require them then.
    finetune = plan_finetune(raw_model, spec)
    if finetune.switch_step is not None and dist_info.world_size > 1:
        raise ConfigError(f"train.finetune={spec.finetune!r} unfreezes parameters during training, "
                          "which DDP cannot follow; run it on one process or use "
                          "linear_probe/freeze:<stage>")
    finetune.apply(raw_model)
    # GPU fast path: NHWC memory layout for 2D convnets (tensor cores prefer it); same weights
    channels_last = dev.type == "cuda" and data.info.spatial_dims == 2
    if channels_last:
        raw_model.to(memory_format=torch.channels_last)
    if dist_info.world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if spec.compile:
        model = torch.compile(model)  # checkpoints keep raw_model's keys (no "_orig_mod.")

    gen = torch.Generator().manual_seed(seed)
    # The samplers draw exactly as RandomSampler/DistributedSampler do and can skip ahead, so a
    # resumed run continues the same data order without loading the batches it skips.
    sampler = (SkipDistributedSampler(data.train, shuffle=True, seed=seed, drop_last=True)
               if dist_info.world_size > 1 else SkipRandomSampler(data.train, generator=gen))
    if spec.sampler == "balanced":  # each class drawn equally often, from the same generator
        if dist_info.world_size > 1:
            raise ConfigError("train.sampler=balanced runs on one process; use "
                              "train.class_weights=balanced under DDP")
        sampler = SkipBalancedSampler(balanced_sample_weights(
            training_targets(data.train, what="train.sampler"), task=task), generator=gen)
    class_weight = None
    if spec.class_weights == "balanced":
        class_weight = balanced_class_weights(
            training_targets(data.train, what="train.class_weights"),
            num_classes=data.info.num_classes, task=task).to(dev)
    bs = min(spec.batch_size, len(data.train) // dist_info.world_size)
    pin = dev.type == "cuda"
    preloaded = _preload(data.train, dev, spec.preload)
    if preloaded is not None:  # batches of indices into the training set on the device
        train_loader = DataLoader(range(len(data.train)), batch_size=bs, sampler=sampler,
                                  generator=gen, drop_last=True)
    else:
        train_loader = DataLoader(data.train, batch_size=bs, sampler=sampler,
                                  generator=gen, drop_last=True, num_workers=spec.num_workers,
                                  pin_memory=pin, persistent_workers=spec.num_workers > 0)
    eval_bs = 1 if task == "segmentation" else max(bs, 256)  # whole volumes differ in shape
    eval_loader = lambda ds: DataLoader(ds, batch_size=eval_bs, num_workers=spec.num_workers,  # noqa: E731
                                        pin_memory=pin)
    val_loader, test_loader = eval_loader(data.val), eval_loader(data.test)
    total = spec.steps or spec.epochs * len(train_loader)

    # train.augment: training batches only, seeded by (seed, step, rank); evaluation never sees it
    augment = make_augment(spec.augment, spatial_dims=data.info.spatial_dims,
                           channels=data.info.in_channels, task=task,
                           norm_mean=tuple(data.info.norm_mean), norm_std=tuple(data.info.norm_std))
    opt = make_optimizer(raw_model, spec, groups=finetune.param_groups())
    # One LambdaLR multiplier for every group: each group keeps its own (per-stage) base lr.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec, total))
    averaging = make_averaging(spec, model=model, raw_model=raw_model, total=total,
                               bn_data=data.train, batch_size=eval_bs, device=dev)
    history: list[tuple[int, str, dict[str, float]]] = []

    def record(step: int, split: str, metrics: dict[str, float]) -> None:
        history.append((step, split, metrics))
        if log is not None and main:
            log(step, split, metrics)

    primary = primary_metric(task)
    best_score, best_step, best_state, best_val_probs = -math.inf, 0, None, None
    # train.early_stop: the best score by more than min_delta, and evaluations since it
    stop_best, stop_wait, stopped_step = -math.inf, 0, None
    batches = BatchStream(train_loader, gen)
    loss_acc = torch.zeros((), device=dev)  # summed on device: .item() every step would sync
    first_bad = torch.zeros((), dtype=torch.long, device=dev)  # first step with a NaN/inf loss
    seen, start = 0, 1
    fingerprint = _fingerprint(spec, seed, dist_info.world_size)
    ckpt = load_resume(run_dir, fingerprint)
    if ckpt is not None:  # a killed or preempted attempt left a checkpoint: continue from it
        start = int(ckpt["step"]) + 1
        if finetune.switch_step is not None and start > finetune.switch_step:
            finetune.on_step(finetune.switch_step, raw_model, opt, sched)  # the groups, first
        raw_model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if spec.ema is not None or spec.swa is not None:
            averaging.load_state_dict(ckpt.get("averaging"))
        best_score, best_step = float(ckpt["best_score"]), int(ckpt["best_step"])
        if best_step and run_dir is not None and (run_dir / "best.pt").is_file():
            best = torch.load(run_dir / "best.pt", map_location=dev, weights_only=True)
            # a best.pt newer than the checkpoint is reached (and rewritten) again on the way
            best_state = best["state_dict"] if int(best["step"]) == best_step else None
        loss_acc.fill_(ckpt["loss_acc"]), first_bad.fill_(int(ckpt["first_bad"]))
        seen = int(ckpt["seen"])
        if "early_stop" in ckpt:
            stop_best, stop_wait = float(ckpt["early_stop"][0]), int(ckpt["early_stop"][1])
        for step_, split_, metrics_ in ckpt["history"]:
            record(int(step_), split_, dict(metrics_))  # the store restarted the run's rows
        batches.restore(ckpt["stream"])
        set_rng_state(ckpt["rng"])
    else:
        if run_dir is not None and main:
            _save(raw_model, run_dir / "init.pt", 0)
        val_metrics, _ = _evaluate(averaging.evaluated(0)[0], val_loader, data=data, device=dev,
                                   spec=spec, step=0)
        record(0, "val", val_metrics)
    every = spec.checkpoint_every or spec.eval_every

    def checkpoint(step: int) -> None:
        if run_dir is None or not main:
            return
        state = {"fingerprint": fingerprint, "step": step, "model": raw_model.state_dict(),
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "best_score": best_score, "best_step": best_step,
                 "loss_acc": float(loss_acc), "first_bad": int(first_bad), "seen": seen,
                 "history": [[st, sp, dict(m)] for st, sp, m in history],
                 "stream": batches.state(), "rng": rng_state()}
        if spec.early_stop is not None:
            state["early_stop"] = [stop_best, stop_wait]
        if spec.ema is not None or spec.swa is not None:
            state["averaging"] = averaging.state_dict()
        _atomic_write(run_dir / RESUME_FILE, lambda tmp: torch.save(state, tmp))

    from tqdm.auto import tqdm

    import sys

    # On a terminal the bar redraws 10×/s; in logs (CI, nohup) one line every 10 s is enough.
    bar = tqdm(total=total, initial=start - 1, disable=not (progress and main), desc="train",
               unit="step", leave=False, mininterval=0.1 if sys.stderr.isatty() else 10.0)
    t0, eval_seconds = time.perf_counter(), 0.0
    model.train()
    with SigtermGuard() as sigterm:
        for step in range(start, total + 1):
            finetune.on_step(step, raw_model, opt, sched)  # LP-FT: unfreeze the body at its step
            batch = next(batches)
            if preloaded is not None:
                idx = batch.to(preloaded[0].device)
                x, y, m = (t[idx] for t in preloaded)
            else:
                x, y, m = batch
            if augment is not None:
                x, y = augment(x, y, seed=seed, step=step, rank=dist_info.rank)
            x, y, m = (x.to(dev, non_blocking=True), y.to(dev, non_blocking=True),
                       m.to(dev, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(dev, spec.amp):
                logits = model(x)
            loss = loss_fn(logits.float(), y, m, task, class_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            averaging.update(step)
            loss_acc += loss.detach()
            first_bad.masked_fill_((first_bad == 0) & ~torch.isfinite(loss.detach()), step)
            seen += len(x)
            bar.update(1)
            report_step(step)  # a study's progress bar, if one listens (transfuse._progress)

            if step % spec.eval_every == 0 or step == total:
                n_since = step - (step - 1) // spec.eval_every * spec.eval_every
                train_loss = loss_acc.item() / n_since  # waits for the queued steps to finish
                t_eval = time.perf_counter()
                if not math.isfinite(train_loss):
                    raise _diverged(f"the training loss became {train_loss}", int(first_bad) or step, spec)
                # "lr": the schedule at train.lr (per-stage groups scale it by their multipliers)
                record(step, "train", {"loss": train_loss, "lr": spec.lr * sched.lr_lambdas[0](step)})
                loss_acc.zero_()
                evaluated, holder = averaging.evaluated(step)  # the averaged weights, if any
                val_metrics, val_probs = _evaluate(evaluated, val_loader, data=data, device=dev,
                                                   spec=spec, step=step)
                record(step, "val", val_metrics)
                val_score = val_metrics[primary]
                score = val_score if math.isfinite(val_score) else -val_metrics["loss"]
                if score > best_score:
                    best_score, best_step, best_val_probs = score, step, val_probs
                    best_state = {k: v.detach().clone() for k, v in holder.state_dict().items()}
                    if run_dir is not None and main:
                        _save(holder, run_dir / "best.pt", step)
                bar.set_postfix({"loss": f"{train_loss:.3f}", f"val_{primary}": f"{val_score:.3f}"})
                eval_seconds += time.perf_counter() - t_eval
                if spec.early_stop is not None:
                    if score > stop_best + spec.min_delta:
                        stop_best, stop_wait = score, 0
                    else:
                        stop_wait += 1
                    if stop_wait >= spec.early_stop and step < total:
                        stopped_step = step
                        break
            eval_seconds += checkpoint_or_stop(step, total, every=every, guard=sigterm,
                                               checkpoint=checkpoint, bar=bar)
    bar.close()
    finetune.release()
    seconds = time.perf_counter() - t0 - eval_seconds
    steps_done = stopped_step or total
    if run_dir is not None and main:
        _save(averaging.evaluated(steps_done)[1], run_dir / "last.pt", steps_done)

    if best_state is not None:  # else: no evaluation scored (cannot happen with finite losses)
        raw_model.load_state_dict(best_state)
    test_metrics, test_probs = _evaluate(model, test_loader, data=data, device=dev, spec=spec,
                                         step=best_step)
    if task == "multiclass":  # calibration; two classes: the operating point chosen on val
        if best_val_probs is None:  # resumed after its best evaluation: score val again
            _, best_val_probs = _evaluate(model, val_loader, data=data, device=dev, spec=spec,
                                          step=best_step)
        test_metrics.update(clinical_metrics(best_val_probs, _targets(data.val), test_probs,
                                             _targets(data.test), rule=spec.operating_point))
    if run_dir is not None and main:
        _save_predictions(run_dir / "test_predictions.npz", data, test_probs)
        (run_dir / RESUME_FILE).unlink(missing_ok=True)  # done: nothing to resume
    return FitResult(test=test_metrics, best_step=best_step, steps=steps_done, history=history,
                     train_seconds=seconds,
                     examples_per_second=(seen * dist_info.world_size / seconds) if seconds else 0.0,
                     resumed_from=start - 1 if ckpt is not None else None,
                     stopped_step=stopped_step)


def _targets(ds: Any) -> np.ndarray:
    """``(N,)`` targets of an evaluation split."""
    t = getattr(ds, "targets", None)
    if isinstance(t, torch.Tensor):
        return t.numpy()
    return torch.stack([torch.as_tensor(ds[i][1]) for i in range(len(ds))]).numpy()


def _preload(ds: Any, dev: torch.device, mode: str
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(images, targets, mask)`` of an in-memory training set on ``dev`` (``train.preload``),
    or ``None`` for the data loader.

    On the CPU an in-memory set is used where it is; on CUDA it is copied once when it takes at
    most a quarter of the free device memory.

    Raises:
        ConfigError: ``preload: always`` where the data is not in memory or does not fit.
    """
    if mode == "never":
        return None
    if not isinstance(ds, ArrayDataset):
        if mode == "always":
            raise ConfigError("train.preload=always: this training set is not held in memory "
                              "(it is drawn per example, e.g. random 3D patches); use auto or never")
        return None
    tensors = (ds.images, ds.targets, torch.as_tensor(ds.mask))
    if dev.type == "cuda":
        need = sum(t.numel() * t.element_size() for t in tensors)
        free, _ = torch.cuda.mem_get_info(dev)
        if need > free // 4:
            if mode == "always":
                raise ConfigError(f"train.preload=always: the training set needs {need / 2**30:.1f} "
                                  f"GiB, more than a quarter of the {free / 2**30:.1f} GiB free on "
                                  f"{dev}; use auto or never")
            return None
    return tuple(t.to(dev) for t in tensors)  # type: ignore[return-value]


def _fingerprint(spec: TrainSpec, seed: int, world_size: int) -> str:
    """What a checkpoint must match to be resumed: the training settings (save frequency
    aside), the seed and the number of processes."""
    import dataclasses
    import json

    d = dataclasses.asdict(spec)
    for k in ("checkpoint_every", "compile", "preload", "operating_point"):  # not the training
        d.pop(k, None)
    from ..config import _FINETUNE_DEFAULTS

    for k in ("early_stop", "min_delta", "class_weights", "sampler", "ema", "swa"):  # added later
        if d.get(k) == _FINETUNE_DEFAULTS[k]:
            d.pop(k)
    return json.dumps({"train": d, "seed": seed, "world_size": world_size}, sort_keys=True)
