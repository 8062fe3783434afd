"""Med3D-style multi-dataset pretraining: one shared 3D ResNet encoder, one head per dataset.

Med3D (Chen, Ma, Zheng 2019; shared/reference/papers.md §2) co-trains one encoder on several
segmentation datasets with a separate segmentation head for each. Here:

- the encoder is :class:`~transfuse.models.Med3DEncoder` (MedicalNet's names and geometry);
- each head is MedicalNet's ``conv_seg`` (ConvTranspose ×2 → conv → 1×1×1 conv, with the
  dataset's number of classes), logits trilinearly resized to the patch — exactly the head of
  ``med3d_seg_resnet*``, so a head's ``conv_seg.*`` keys load into that model too;
- each step draws ONE dataset with probability ∝ its weight (seeded NumPy generator), takes a
  batch of its training patches and updates the encoder and that dataset's head only. Every head
  has its own optimiser, which steps only when its dataset is drawn: the other heads get no
  gradient, no momentum and no weight decay, so they stay bit-identical;
- every ``eval_every`` steps and at the end: mean Dice per dataset on its whole val volumes
  (sliding window, :func:`~transfuse.train.segment.evaluate_segmentation`).

Outputs in ``out_dir``: ``encoder.pt`` (the encoder's ``state_dict``: the keys of
``create_model("med3d_resnet<depth>")`` minus ``fc``, usable as ``--source file:.../encoder.pt``),
``heads.pt`` (``{dataset name: conv_seg state_dict}``) and ``pretrain.json`` (config, val Dice
history per dataset, steps, seconds). All ``.pt`` files load with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..config import TrainSpec
from ..data.base import PreparedData
from ..errors import DataError
from ..models.med3d import Med3DEncoder, conv_seg_head
from ..train.device import autocast, resolve_device, seed_everything
from ..atomic import atomic_write, write_text
from ..train.loop import checkpoint_or_stop, lr_lambda, make_optimizer
from ..train.parts import check_loss, progress_bar
from ..train.resume import (RESUME_FILE, BatchStream, SigtermGuard, SkipRandomSampler, Stateful,
                            load_resume, restore_parts, resume_state, save_resume)
from ..train.segment import evaluate_segmentation, segmentation_loss
from .config import PretrainSpec

__all__ = ["MultiHeadMed3D", "conv_seg_head", "dataset_schedule", "make_optimizers",
           "pretrain_step", "load_pretrain_data", "pretrain_med3d", "PretrainResult", "default_out_dir"]


class MultiHeadMed3D(nn.Module):
    """A shared :class:`Med3DEncoder` and one ``conv_seg`` head per dataset.

    Args:
        depth: Med3D depth (10, 18, 34, 50, 101, 152, 200).
        heads: dataset name → number of classes (background included).

    ``forward(x, head)``: ``(N, 1, D, H, W)`` → logits ``(N, K_head, D, H, W)``.
    """

    def __init__(self, *, depth: int, heads: dict[str, int]) -> None:
        super().__init__()
        self.encoder = Med3DEncoder(depth=depth)
        self.heads = nn.ModuleDict()
        self.head_names = list(heads)  # ModuleDict keys cannot hold "." or ":"
        for i, k in enumerate(heads.values()):
            self.heads[f"h{i}"] = conv_seg_head(self.encoder.num_features, k)

    def head(self, name: str) -> nn.Module:
        return self.heads[f"h{self.head_names.index(name)}"]

    def forward(self, x: torch.Tensor, head: str) -> torch.Tensor:
        out = self.head(head)(self.encoder.forward_features(x))
        if out.shape[2:] != x.shape[2:]:
            out = F.interpolate(out, size=x.shape[2:], mode="trilinear", align_corners=False)
        return out

    def view(self, head: str) -> nn.Module:
        """A one-input module (encoder + this head) for sliding-window evaluation."""
        return _HeadView(self, head)


class _HeadView(nn.Module):
    def __init__(self, model: MultiHeadMed3D, head: str) -> None:
        super().__init__()
        self.model, self.name = model, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.name)


def dataset_schedule(weights: Sequence[float], steps: int, seed: int) -> np.ndarray:
    """Which dataset each step draws: ``(steps,)`` indices, ``P(i) = w_i / Σ w``, seeded."""
    p = np.asarray(weights, dtype=np.float64)
    return np.random.default_rng(seed).choice(len(p), size=steps, p=p / p.sum())


def _train_spec(spec: PretrainSpec) -> TrainSpec:
    return TrainSpec(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr,
                     optimizer=spec.optimizer, eval_every=spec.eval_every, schedule="cosine",
                     warmup_steps=0)


def make_optimizers(model: MultiHeadMed3D, spec: PretrainSpec) -> dict[str, torch.optim.Optimizer]:
    """One optimiser for the encoder (key ``"encoder"``) and one per head (its dataset name).

    Separate optimisers keep momentum and weight decay off heads that were not drawn.
    """
    t = _train_spec(spec)
    out = {"encoder": make_optimizer(model.encoder, t)}
    out.update({name: make_optimizer(model.head(name), t) for name in model.head_names})
    return out


def pretrain_step(model: MultiHeadMed3D, opts: dict[str, torch.optim.Optimizer], head: str,
                  x: torch.Tensor, y: torch.Tensor, *, lr: float | None = None,
                  amp: bool = False) -> torch.Tensor:
    """One optimiser step of the encoder and ``head`` on a batch of that head's dataset.

    Args:
        x: ``(N, 1, *patch)`` images on the model's device.
        y: ``(N, *patch)`` int64 labels.
        lr: the learning rate for this step (``None`` keeps the optimisers').

    Returns:
        The (detached) loss.
    """
    used = (opts["encoder"], opts[head])
    model.zero_grad(set_to_none=True)  # every head: no stale gradient outlives its step
    for opt in used:
        if lr is not None:
            for g in opt.param_groups:
                g["lr"] = lr
    with autocast(x.device, amp):
        logits = model(x, head)
    loss = segmentation_loss(logits.float(), y)
    loss.backward()
    for opt in used:
        opt.step()
    return loss.detach()


def load_pretrain_data(spec: PretrainSpec) -> list[PreparedData]:
    """Prepare every dataset of ``spec`` (in order).

    Raises:
        DataError: a dataset that is not single-channel 3D segmentation data.
    """
    from ..data import load_dataset

    out = []
    for i, e in enumerate(spec.datasets):
        d = load_dataset(e.data)
        info = d.info
        if info.task != "segmentation":
            raise DataError(f"datasets[{i}]: {e.data.name!r} is {info.task} data; Med3D pretraining "
                            "needs segmentation data (a label per voxel)")
        if info.spatial_dims != 3 or info.in_channels != 1:
            raise DataError(f"datasets[{i}]: {e.data.name!r} is {info.spatial_dims}D with "
                            f"{info.in_channels} channels; Med3D needs 3D volumes with one channel "
                            "(set data.channels: 1)")
        out.append(d)
    return out


def _batches(data: PreparedData, batch_size: int, seed: int) -> BatchStream:
    """The training batches of one dataset, epoch after epoch, in a seeded order (``fit``'s
    resumable stream: the same draws as a shuffling ``DataLoader``)."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(data.train, batch_size=min(batch_size, len(data.train)),
                        sampler=SkipRandomSampler(data.train, generator=gen), generator=gen,
                        drop_last=True)
    return BatchStream(loader, gen)


class _Each:
    """Several parts of ``resume.pt`` as one: ``{name: part}``."""

    def __init__(self, parts: dict[str, Stateful]) -> None:
        self.parts = parts

    def state_dict(self) -> dict[str, Any]:
        return {k: p.state_dict() for k, p in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, p in self.parts.items():
            p.load_state_dict(state[k])


@dataclass
class _Tally:
    """What the loop carries between evaluations (a part of ``resume.pt``): per dataset the val
    history and the losses since the last evaluation; the seconds of earlier attempts."""

    history: dict[str, list[dict[str, Any]]]
    losses: dict[str, list[float]]
    seconds: float = 0.0
    eval_seconds: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, state[f.name])


def _finite(metrics: dict[str, float]) -> dict[str, float | None]:
    return {k: (round(float(v), 6) if math.isfinite(v) else None) for k, v in metrics.items()}


@dataclass
class PretrainResult:
    """Where the outputs went and the ``pretrain.json`` summary."""

    out_dir: Path
    summary: dict[str, Any]


def default_out_dir(spec: PretrainSpec, workspace: str | Path = "workspace") -> Path:
    """``<workspace>/pretrain/<name>/`` (a ``--smoke`` spec's name ends in ``-smoke``)."""
    return Path(workspace) / "pretrain" / spec.name


def _save(obj: Any, path: Path) -> None:
    # atomic, and a failed write (full disk) leaves no .tmp and says which file
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def pretrain_med3d(spec: PretrainSpec, *, out_dir: str | Path, device: str | None = None,
                   progress: bool = True, data: Sequence[PreparedData] | None = None) -> PretrainResult:
    """Pretrain a shared Med3D encoder on every dataset of ``spec``; write the outputs.

    Args:
        spec: the parsed file (already shrunk for ``--smoke``).
        out_dir: folder for ``encoder.pt``, ``heads.pt`` and ``pretrain.json`` (created).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``None`` for automatic.
        progress: show a tqdm bar over the steps.
        data: the prepared datasets (default: :func:`load_pretrain_data`).

    Returns:
        :class:`PretrainResult`.

    SIGTERM or Ctrl-C stops after the current step with ``out_dir/resume.pt`` (as ``fit``'s:
    :mod:`transfuse.train.resume`) and :class:`~transfuse.errors.PreemptedError`; the same call
    again continues from it, to the same result as an uninterrupted pretraining.

    Raises:
        DataError: unreadable or non-segmentation data.
        DivergedError: the loss diverged (a ``FloatingPointError``).
        PreemptedError: stopped by a signal (rerun to resume).
    """
    dev = resolve_device(device)
    datasets = list(data) if data is not None else load_pretrain_data(spec)
    names = [e.data.name for e in spec.datasets]
    seed_everything(spec.seed)  # model init and patch centres (torch's global generator)
    model = MultiHeadMed3D(depth=spec.depth,
                           heads={n: d.info.num_classes for n, d in zip(names, datasets)}).to(dev)
    opts = make_optimizers(model, spec)
    amp = dev.type == "cuda"
    decay = lr_lambda(_train_spec(spec), spec.steps)  # cosine, no warm-up (as fit's schedule)
    schedule = dataset_schedule([e.weight for e in spec.datasets], spec.steps, spec.seed)
    streams = [_batches(d, spec.batch_size, spec.seed + i) for i, d in enumerate(datasets)]
    val = [DataLoader(d.val, batch_size=1) for d in datasets]
    tally = _Tally({n: [] for n in names}, {n: [] for n in names})
    out = Path(out_dir)
    # resume.pt: these parts' state_dict()s and the random states (fit's format); the global
    # torch generator (restored with them) draws the patch centres
    parts = {"model": model, "optimizers": _Each(opts),
             "streams": _Each({str(i): s for i, s in enumerate(streams)}), "tally": tally}
    fingerprint = json.dumps({"med3d": spec.to_dict()}, sort_keys=True)
    ckpt = load_resume(out, fingerprint)
    start = 1 if ckpt is None else restore_parts(ckpt, parts) + 1
    history, losses = tally.history, tally.losses

    def checkpoint(step: int) -> None:
        save_resume(out / RESUME_FILE, resume_state(fingerprint=fingerprint, step=step, parts=parts))

    tspec = _train_spec(spec)
    bar = progress_bar(spec.steps, start=start, enabled=progress, desc=f"pretrain {spec.name}")
    t0 = time.perf_counter()
    model.train()
    with SigtermGuard() as sigterm:
        for step in range(start, spec.steps + 1):
            i = schedule[step - 1]
            x, y, _ = next(streams[i])
            lr = spec.lr * decay(step - 1)  # every optimiser's rate, by the global step
            loss = check_loss(pretrain_step(model, opts, names[i], x.to(dev), y.to(dev), lr=lr, amp=amp).item(),
                              f"the pretraining loss on {names[i]}", step, tspec, prefix="",
                              flag="--set lr=", warmup=False)
            losses[names[i]].append(loss)
            bar.update(1)
            bar.set_postfix({"data": names[i].split(":")[-1][:16], "loss": f"{loss:.3f}"})
            if step % spec.eval_every == 0 or step == spec.steps:
                t_eval = time.perf_counter()
                for n, d, loader in zip(names, datasets, val):
                    metrics, _ = evaluate_segmentation(model.view(n), loader, data=d, device=dev, amp=amp)
                    recent, losses[n] = losses[n], []  # this dataset's steps since the last evaluation
                    history[n].append({"step": step, "train_loss": round(float(np.mean(recent)), 6)
                                       if recent else None, **_finite(metrics)})
                tally.eval_seconds += time.perf_counter() - t_eval
                bar.set_postfix({n.split(":")[-1][:16]: f"{h[-1]['dice'] or 0:.3f}" for n, h in history.items()})
            tally.seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            # only on a stop request: a checkpoint costs about as much as a few steps
            checkpoint_or_stop(step, spec.steps, every=spec.steps, guard=sigterm,
                               checkpoint=checkpoint, bar=bar)
    bar.close()
    seconds, eval_seconds = tally.seconds, tally.eval_seconds

    out.mkdir(parents=True, exist_ok=True)
    _save({k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()},
          out / "encoder.pt")
    _save({n: {f"conv_seg.{k}": v.detach().cpu().clone() for k, v in model.head(n).state_dict().items()}
           for n in names}, out / "heads.pt")
    counts = np.bincount(schedule, minlength=len(names))
    summary = {
        "name": spec.name, "encoder": spec.encoder, "smoke": spec.smoke, "steps": spec.steps,
        "seconds": round(seconds, 2), "train_seconds": round(seconds - eval_seconds, 2),
        "device": str(dev), "config": spec.to_dict(),
        "datasets": [{"name": n, "weight": e.weight, "steps": int(c), "classes": list(d.info.class_names),
                      "spacing": list(d.info.spacing or ()), "patch": list(d.info.image_shape),
                      "val": history[n], "final_dice": history[n][-1]["dice"]}
                     for n, e, d, c in zip(names, spec.datasets, datasets, counts)],
        "files": {"encoder": str(out / "encoder.pt"), "heads": str(out / "heads.pt")},
        "use": f"--source file:{out / 'encoder.pt'}",
    }
    write_text(out / "pretrain.json", json.dumps(summary, indent=2))
    (out / RESUME_FILE).unlink(missing_ok=True)  # finished: nothing to resume
    return PretrainResult(out, summary)
