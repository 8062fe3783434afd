"""The named parts :func:`transfuse.train.fit` is built from.

- :func:`place_model` — the model on its device: fine-tuning plan applied, channels-last on CUDA,
  DDP, ``torch.compile``;
- :func:`make_loaders` — the seeded, resumable training sampler (random, distributed or
  class-balanced), the training loader (or the training set preloaded on the device), the
  evaluation loaders and the class weights;
- :class:`FitState` — every number the loop carries between steps (loss sum, divergence step,
  best-on-validation score, early-stopping counters, history), saved in ``resume.pt`` and
  restored whole;
- :func:`train_step` — one optimiser step on one batch.

Each part is the loop's own, not a copy: the cohort executor (:mod:`transfuse.train.cohort`)
shares the loss, optimiser, schedule, checkpoint and evaluation functions of :mod:`.loop`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import TrainSpec
from ..data.base import ArrayDataset, PreparedData
from ..errors import ConfigError, DivergedError
from .device import autocast
from .finetune import Finetune, plan_finetune
from .imbalance import (SkipBalancedSampler, balanced_class_weights, balanced_sample_weights,
                        training_targets)
from .resume import SkipDistributedSampler, SkipRandomSampler

__all__ = ["Placed", "Loaders", "FitState", "place_model", "make_loaders", "train_step", "preload", "diverged",
           "check_loss", "progress_bar"]


def diverged(what: str, step: int, spec: TrainSpec, *, prefix: str = "train.", flag: str = "--lr ",
             warmup: bool = True) -> DivergedError:
    """The one-line error of a run whose loss or predictions became NaN/inf at ``step``.

    Args:
        prefix: where the settings live in the user's file (``"train."`` for a run, ``""`` for a
            pretraining file).
        flag: how to set the learning rate on the command line (``"--lr "``, ``"--set lr="``).
        warmup: suggest ``warmup_steps`` (a setting the file has).
    """
    warm = f", add {prefix}warmup_steps," if warmup else ","
    return DivergedError(f"{what} at step {step} ({prefix}lr={spec.lr}); lower {prefix}lr (e.g. "
                         f"{flag}{spec.lr / 10:g}){warm} or check the inputs for extreme values")


def check_loss(loss: float, what: str, step: int, spec: TrainSpec, **hint: Any) -> float:
    """``loss`` when finite, else the :func:`diverged` error (``hint``: its keywords).

    Raises:
        DivergedError: ``"<what> is nan at step 3 (lr=0.1); lower lr ..."``.
    """
    if not math.isfinite(loss):
        raise diverged(f"{what} is {loss}", step, spec, **hint)
    return loss


def progress_bar(total: int, *, start: int = 1, enabled: bool = True, desc: str = "train") -> Any:
    """A loop's step bar: redrawn 10×/s on a terminal; in logs (CI, nohup) one line every 10 s."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start - 1, disable=not enabled, desc=desc, unit="step",
                leave=False, mininterval=0.1 if sys.stderr.isatty() else 10.0)


@dataclass
class Placed:
    """The model as trained (``model``: maybe DDP-wrapped and compiled) and as saved (``raw``)."""

    model: nn.Module
    raw: nn.Module
    finetune: Finetune
    channels_last: bool


def place_model(model: nn.Module, spec: TrainSpec, *, device: torch.device, world_size: int,
                spatial_dims: int) -> Placed:
    """Move ``model`` to ``device`` and wrap it for training.

    Which stages train, at which lr (``train.finetune``) is set before DDP wraps the model, since
    DDP only reduces the gradients of parameters that require them then. 2D convnets on CUDA use
    the NHWC memory layout (same weights). Checkpoints keep ``raw``'s keys (no ``module.`` or
    ``_orig_mod.``).

    Raises:
        ConfigError: an LP-FT schedule under DDP (it unfreezes parameters mid-run).
    """
    model.to(device)
    raw = model
    finetune = plan_finetune(raw, spec)
    if finetune.switch_step is not None and world_size > 1:
        raise ConfigError(f"train.finetune={spec.finetune!r} unfreezes parameters during training, "
                          "which DDP cannot follow; run it on one process or use "
                          "linear_probe/freeze:<stage>")
    finetune.apply(raw)
    channels_last = device.type == "cuda" and spatial_dims == 2
    if channels_last:
        raw.to(memory_format=torch.channels_last)
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if spec.compile:  # true: torch.compile's default mode; else the mode named
        model = torch.compile(model) if spec.compile is True else torch.compile(model, mode=spec.compile)
    return Placed(model, raw, finetune, channels_last)


@dataclass
class Loaders:
    """The training stream's pieces and the evaluation loaders of one run."""

    train: DataLoader  # yields batches, or index batches into ``preloaded``
    val: DataLoader
    test: DataLoader
    generator: torch.Generator  # the run's data-order generator (resumable)
    preloaded: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    class_weight: torch.Tensor | None
    eval_batch_size: int


def make_loaders(data: PreparedData, spec: TrainSpec, *, device: torch.device, world_size: int,
                 seed: int) -> Loaders:
    """The run's loaders, its data order drawn from ``seed``.

    The samplers draw exactly as ``RandomSampler``/``DistributedSampler`` do and can skip ahead,
    so a resumed run continues the same data order without loading the batches it skips;
    ``train.sampler=balanced`` draws each class equally often from the same generator.

    Raises:
        ConfigError: a balanced sampler under DDP; ``train.preload=always`` that cannot hold.
    """
    task = data.info.task
    gen = torch.Generator().manual_seed(seed)
    sampler: Any = (SkipDistributedSampler(data.train, shuffle=True, seed=seed, drop_last=True)
                    if world_size > 1 else SkipRandomSampler(data.train, generator=gen))
    if spec.sampler == "balanced":
        if world_size > 1:
            raise ConfigError("train.sampler=balanced runs on one process; use "
                              "train.class_weights=balanced under DDP")
        sampler = SkipBalancedSampler(balanced_sample_weights(
            training_targets(data.train, what="train.sampler"), task=task), generator=gen)
    class_weight = None
    if spec.class_weights == "balanced":
        class_weight = balanced_class_weights(
            training_targets(data.train, what="train.class_weights"),
            num_classes=data.info.num_classes, task=task).to(device)
    bs = min(spec.batch_size, len(data.train) // world_size)
    pin = device.type == "cuda"
    preloaded = preload(data.train, device, spec.preload)
    if preloaded is not None:  # batches of indices into the training set on the device
        train = DataLoader(range(len(data.train)), batch_size=bs, sampler=sampler, generator=gen,
                           drop_last=True)
    else:
        train = DataLoader(data.train, batch_size=bs, sampler=sampler, generator=gen,
                           drop_last=True, num_workers=spec.num_workers, pin_memory=pin,
                           persistent_workers=spec.num_workers > 0)
    eval_bs = 1 if task == "segmentation" else max(bs, 256)  # whole volumes differ in shape

    def evaluation(ds: Any) -> DataLoader:
        return DataLoader(ds, batch_size=eval_bs, num_workers=spec.num_workers, pin_memory=pin)

    return Loaders(train, evaluation(data.val), evaluation(data.test), gen, preloaded,
                   class_weight, eval_bs)


def preload(ds: Any, dev: torch.device, mode: str
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


@dataclass
class FitState:
    """What the loop carries from step to step; :meth:`saved` and :meth:`restore` move it whole.

    ``loss_acc`` and ``first_bad`` stay on the device (reading them every step would wait for the
    GPU); ``best_state`` and ``best_val_probs`` are not saved (``best.pt`` holds the weights, and
    the validation probabilities are recomputed when needed).
    """

    loss_acc: torch.Tensor  # summed training loss since the last evaluation
    first_bad: torch.Tensor  # first step with a NaN/inf loss (0: none)
    best_score: float = -math.inf
    best_step: int = 0
    seen: int = 0  # training examples seen (this process)
    stop_best: float = -math.inf  # train.early_stop: the best score by more than min_delta ...
    stop_wait: int = 0  # ... and the evaluations since it
    stopped_step: int | None = None
    history: list[tuple[int, str, dict[str, float]]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    best_val_probs: np.ndarray | None = None

    @classmethod
    def start(cls, device: torch.device) -> FitState:
        return cls(torch.zeros((), device=device), torch.zeros((), dtype=torch.long, device=device))

    def saved(self, *, early_stop: bool) -> dict[str, Any]:
        """The keys this state adds to ``resume.pt``."""
        out = {"best_score": self.best_score, "best_step": self.best_step,
               "loss_acc": float(self.loss_acc), "first_bad": int(self.first_bad), "seen": self.seen,
               "history": [[st, sp, dict(m)] for st, sp, m in self.history]}
        if early_stop:
            out["early_stop"] = [self.stop_best, self.stop_wait]
        return out

    def restore(self, ckpt: dict[str, Any], *, record: Callable[[int, str, dict[str, float]], None]) -> None:
        """Take the state of a ``resume.pt``; each stored evaluation goes through ``record``
        again (the store restarted the run's metric rows)."""
        self.best_score, self.best_step = float(ckpt["best_score"]), int(ckpt["best_step"])
        self.loss_acc.fill_(ckpt["loss_acc"])
        self.first_bad.fill_(int(ckpt["first_bad"]))
        self.seen = int(ckpt["seen"])
        if "early_stop" in ckpt:
            self.stop_best, self.stop_wait = float(ckpt["early_stop"][0]), int(ckpt["early_stop"][1])
        for step, split, metrics in ckpt["history"]:
            record(int(step), split, dict(metrics))

    def after_step(self, loss: torch.Tensor, n: int, step: int) -> None:
        """Count one step's detached loss (on the device: no wait) and ``n`` examples."""
        self.loss_acc += loss
        self.first_bad.masked_fill_((self.first_bad == 0) & ~torch.isfinite(loss), step)
        self.seen += n

    def train_loss(self, step: int, spec: TrainSpec) -> float:
        """The mean training loss since the last evaluation (then reset to 0).

        Raises:
            DivergedError: it is NaN/inf, naming the first step whose loss was.
        """
        n_since = step - (step - 1) // spec.eval_every * spec.eval_every
        loss = self.loss_acc.item() / n_since
        if not math.isfinite(loss):
            raise diverged(f"the training loss became {loss}", int(self.first_bad) or step, spec)
        self.loss_acc.zero_()
        return loss

    def improved(self, score: float, step: int, val_probs: np.ndarray, holder: nn.Module) -> bool:
        """Keep ``holder``'s weights as the best so far when ``score`` beats the best (the caller
        then writes ``best.pt``)."""
        if score <= self.best_score:
            return False
        self.best_score, self.best_step, self.best_val_probs = score, step, val_probs
        self.best_state = {k: v.detach().clone() for k, v in holder.state_dict().items()}
        return True

    def early_stop(self, score: float, spec: TrainSpec, step: int, total: int) -> bool:
        """Count an evaluation for ``train.early_stop``; ``True`` (and ``stopped_step`` set) when
        training should end here."""
        if spec.early_stop is None:
            return False
        if score > self.stop_best + spec.min_delta:
            self.stop_best, self.stop_wait = score, 0
        else:
            self.stop_wait += 1
        if self.stop_wait >= spec.early_stop and step < total:
            self.stopped_step = step
            return True
        return False


def train_step(model: nn.Module, batch: Any, *, step: int, seed: int, rank: int, spec: TrainSpec,
               task: str, loaders: Loaders, placed: Placed, augment: Any, opt: torch.optim.Optimizer,
               sched: Any, loss_fn: Callable[..., torch.Tensor], device: torch.device) -> tuple[torch.Tensor, int]:
    """One optimiser step on ``batch`` (or its indices into the preloaded set); returns the
    detached loss (on the device) and the batch size.

    ``augment`` (``train.augment``) is seeded by ``(seed, step, rank)`` and sees training batches
    only.
    """
    if loaders.preloaded is not None:
        idx = batch.to(loaders.preloaded[0].device)
        x, y, m = (t[idx] for t in loaders.preloaded)
    else:
        x, y, m = batch
    if augment is not None:
        x, y = augment(x, y, seed=seed, step=step, rank=rank)
    x, y, m = (x.to(device, non_blocking=True), y.to(device, non_blocking=True),
               m.to(device, non_blocking=True))
    if placed.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, spec.amp):
        logits = model(x)
    loss = loss_fn(logits.float(), y, m, task, loaders.class_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.detach(), len(x)
