"""Self-supervised pretraining on the user's own unlabelled images: ``transfuse pretrain ssl``.

The encoder is any transfuse model (:func:`~transfuse.models.create_model`); SSL reads it
through the model contract — the outputs of its stages ``stem`` … ``blockN`` (forward hooks on
each stage's output module; the forward stops after the last one, so a U-Net's decoder never
runs) — so the weights it learns carry the model's own parameter names and load into the same
model with every init strategy (``pretrained``, ``transfusion:<stage>``, ``meanvar``...).

Methods (see :mod:`~transfuse.pretrain.ssl_views` for the views):

- ``simclr`` (Chen et al. 2020): the deepest stage, average-pooled, through lightly's
  ``SimCLRProjectionHead``; lightly's ``NTXentLoss`` over the two views of a batch;
- ``byol`` (Grill et al. 2020): lightly's ``BYOLProjectionHead`` and ``BYOLPredictionHead``; a
  target encoder + projection updated as an EMA of the online ones (lightly's
  ``update_momentum``, momentum from ``momentum`` to 1 by lightly's ``cosine_schedule``);
  symmetric ``NegativeCosineSimilarity`` (lightly), so the loss runs from 0 towards -1;
- ``restoration`` (Models Genesis, Zhou et al. 2019): a decoder with skip connections over every
  stage (:class:`SkipDecoder`) reconstructs the clean image from the corrupted one; MSE.

Outputs in ``out_dir`` (written last: ``pretrain.json``, so a killed pretraining is not taken
for a finished one): ``encoder.pt`` — the model's ``state_dict`` without its ``head`` stage,
loadable with ``torch.load(weights_only=True)`` and usable as the source ``ssl:<name>``;
``pretrain.json`` — the config, the cost (steps, images seen, unique images, seconds), the loss
of every step and the data's normalisation; ``images.json`` — the training-split indices (or
folder files) the pretraining drew.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainSpec
from ..errors import ConfigError, ModelError
from ..models import create_model, get_stages
from ..train.device import autocast, resolve_device, seed_everything
from ..atomic import atomic_write, write_text
from ..train.loop import checkpoint_or_stop, lr_lambda, make_optimizer
from ..train.parts import check_loss, progress_bar
from ..train.resume import (RESUME_FILE, SigtermGuard, load_resume, restore_parts, resume_state,
                            save_resume)
from .ssl_config import SSLSpec
from .ssl_data import UnlabelledImages, load_unlabelled
from .ssl_views import Views

__all__ = ["StageEncoder", "SkipDecoder", "SSLMethod", "build_method", "encoder_state",
           "pretrain_ssl", "SSLResult", "default_out_dir", "finished", "KIND"]

#: ``pretrain.json``'s ``kind`` for an SSL pretraining (a Med3D one has none).
KIND = "ssl"


class _Done(Exception):
    """Raised by the last stage's hook: the rest of the forward (head, decoder) is not needed."""


class StageEncoder(nn.Module):
    """A transfuse model read as an encoder: ``forward(x)`` → every stage's output, head excluded.

    Args:
        model: a model from :func:`~transfuse.models.create_model` (it has ``stage_info``).

    ``forward``: ``(N, C, *spatial)`` → list of stage outputs ``(N, C_s, *spatial_s)`` (or
    ``(N, T, C_s)`` tokens), ``stem`` first. :meth:`features` → ``(N, C_last)`` pooled.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.stages = [s for s in get_stages(model) if s.name != "head"]
        if not self.stages:
            raise ModelError(f"{getattr(model, 'model_name', type(model).__name__)} has no "
                             "stages below its head to pretrain")
        self._maps: dict[str, torch.Tensor] = {}
        self._active = False
        # The hooks act only inside this encoder's forward: the model itself, and any other
        # StageEncoder over it, run as if they were not there. remove() takes them off.
        self._handles = [model.get_submodule(s.output).register_forward_hook(self._hook(s.name))
                         for s in self.stages]

    def remove(self) -> None:
        """Take this encoder's hooks off the model (it can no longer be called)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, name: str):
        last = self.stages[-1].name

        def keep(module: nn.Module, args: Any, out: Any) -> None:
            if not self._active:
                return
            self._maps[name] = out[0] if isinstance(out, (tuple, list)) else out
            if name == last:
                raise _Done
        return keep

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self._handles:
            raise ModelError("this StageEncoder was removed; build a new one over the model")
        self._maps, self._active = {}, True
        try:
            self.model(x)
        except _Done:
            pass
        finally:
            self._active = False
        missing = [s.name for s in self.stages if s.name not in self._maps]
        if missing:
            raise ModelError(f"{self.model.model_name}: stage {missing[0]} produced no output in "
                             "the forward pass; it cannot be pretrained by stage")
        maps, self._maps = [self._maps[s.name] for s in self.stages], {}
        return maps

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_last)``: the deepest stage, averaged over space (or tokens)."""
        return pool(self(x)[-1])


def pool(t: torch.Tensor) -> torch.Tensor:
    """``(N, C, *spatial)`` → ``(N, C)`` by the mean; tokens ``(N, T, C)`` → ``(N, C)``."""
    if t.ndim == 2:
        return t
    if t.ndim == 3:
        return t.mean(1)
    return t.flatten(2).mean(2)


_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def _block(c_in: int, c_out: int, dims: int) -> nn.Sequential:
    return nn.Sequential(_CONV[dims](c_in, c_out, 3, padding=1, bias=False), _BN[dims](c_out),
                         nn.ReLU(inplace=True))


class SkipDecoder(nn.Module):
    """A U-Net-style decoder over an encoder's stage outputs (Models Genesis' restoration head).

    From the deepest stage up: upsample to the next shallower stage's size, concatenate it,
    conv-BN-ReLU to its channels; finally upsample to the input size, one more block and a 1×1
    convolution to the image's channels.

    Args:
        channels: channels of each stage output, ``stem`` first.
        out_channels: channels of the reconstructed image.
        spatial_dims: 2 or 3.
    """

    def __init__(self, channels: list[int], *, out_channels: int, spatial_dims: int) -> None:
        super().__init__()
        self.dims = spatial_dims
        ups, c = [], channels[-1]
        for skip in reversed(channels[:-1]):
            ups.append(_block(c + skip, skip, spatial_dims))
            c = skip
        self.ups = nn.ModuleList(ups)
        self.last = _block(c, c, spatial_dims)
        self.out = _CONV[spatial_dims](c, out_channels, 1)

    def _up(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        if x.shape[2:] == size:
            return x
        return F.interpolate(x, size=size, mode="bilinear" if self.dims == 2 else "trilinear",
                             align_corners=False)

    def forward(self, maps: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        """Stage outputs (``stem`` first) → image ``(N, out_channels, *size)``."""
        x = maps[-1]
        for block, skip in zip(self.ups, reversed(maps[:-1])):
            x = block(torch.cat([self._up(x, skip.shape[2:]), skip], dim=1))
        return self.out(self.last(self._up(x, size)))


class SSLMethod(nn.Module):
    """An encoder plus what its method trains on top; :meth:`loss` of one step's views.

    Attributes:
        encoder: the :class:`StageEncoder` whose model's weights are the output.
        method: ``simclr``, ``byol`` or ``restoration``.
    """

    def __init__(self, method: str, encoder: StageEncoder, *, spec: SSLSpec, channels: list[int],
                 in_channels: int, spatial_dims: int, target: StageEncoder | None = None) -> None:
        super().__init__()
        self.method, self.encoder = method, encoder
        c = channels[-1]
        if method == "simclr":
            from lightly.loss import NTXentLoss
            from lightly.models.modules import SimCLRProjectionHead

            self.projection = SimCLRProjectionHead(c, spec.hidden_dim, spec.proj_dim)
            self.criterion = NTXentLoss(temperature=spec.temperature)
        elif method == "byol":
            from lightly.loss import NegativeCosineSimilarity
            from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
            from lightly.models.utils import deactivate_requires_grad

            assert target is not None, "byol needs a target encoder"
            self.projection = BYOLProjectionHead(c, spec.hidden_dim, spec.proj_dim)
            self.prediction = BYOLPredictionHead(spec.proj_dim, spec.hidden_dim, spec.proj_dim)
            self.target = target
            self.target_projection = BYOLProjectionHead(c, spec.hidden_dim, spec.proj_dim)
            self.target.load_state_dict(encoder.state_dict())
            self.target_projection.load_state_dict(self.projection.state_dict())
            deactivate_requires_grad(self.target)
            deactivate_requires_grad(self.target_projection)
            self.criterion = NegativeCosineSimilarity()
        elif method == "restoration":
            if any(m.stride == 0 for m in encoder.stages):
                raise ModelError(f"{encoder.model.model_name} has token (non-spatial) stages; "
                                 "restoration needs a convolutional encoder")
            self.decoder = SkipDecoder(channels, out_channels=in_channels, spatial_dims=spatial_dims)
        else:
            raise ConfigError(f"method={method!r} is not an SSL method")

    def trainable(self) -> list[nn.Parameter]:
        """The parameters the optimiser steps (never BYOL's target)."""
        skip = {id(p) for m in ("target", "target_projection") if hasattr(self, m)
                for p in getattr(self, m).parameters()}
        return [p for p in self.parameters() if id(p) not in skip]

    def loss(self, views: list[torch.Tensor], clean: torch.Tensor | None = None) -> torch.Tensor:
        """The method's loss on one step's views (restoration: ``views[0]`` corrupted, ``clean``
        the target)."""
        if self.method == "simclr":
            z0, z1 = (self.projection(self.encoder.features(v)) for v in views)
            return self.criterion(z0, z1)
        if self.method == "byol":
            p0, p1 = (self.prediction(self.projection(self.encoder.features(v))) for v in views)
            with torch.no_grad():
                t0, t1 = (self.target_projection(self.target.features(v)) for v in views)
            return 0.5 * (self.criterion(p0, t1) + self.criterion(p1, t0))
        x = views[0]
        return F.mse_loss(self.decoder(self.encoder(x), x.shape[2:]).float(), clean.float())

    @torch.no_grad()
    def after_step(self, step: int, steps: int, spec: SSLSpec) -> None:
        """BYOL: move the target towards the online network (momentum cosine-annealed to 1)."""
        if self.method != "byol":
            return
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(step, steps, spec.momentum, 1.0)
        update_momentum(self.encoder, self.target, m)
        update_momentum(self.projection, self.target_projection, m)


def _model(spec: SSLSpec, images: UnlabelledImages) -> nn.Module:
    from ..models import model_info

    info = model_info(spec.model)
    side = min(images.image_shape)
    if side < info["min_size"]:
        raise ConfigError(f"model={spec.model} needs images of at least {info['min_size']} px, "
                          f"the data gives {side}; set data.image_size (or data.patch_size)")
    return create_model(spec.model, spatial_dims=images.spatial_dims,
                        in_channels=images.in_channels, num_classes=1)


def build_method(spec: SSLSpec, images: UnlabelledImages) -> SSLMethod:
    """The model of ``spec`` built for ``images`` and wrapped in its SSL method (seeded by the
    caller); stage channels are measured on one dummy batch of the images' shape."""
    model = _model(spec, images)
    encoder = StageEncoder(model)
    was = model.training
    model.eval()
    with torch.no_grad():
        maps = encoder(torch.zeros(2, images.in_channels, *images.image_shape))
    model.train(was)
    channels = [int(m.shape[-1] if m.ndim == 3 else m.shape[1]) for m in maps]
    target = StageEncoder(_model(spec, images)) if spec.method == "byol" else None
    return SSLMethod(spec.method, encoder, spec=spec, channels=channels,
                     in_channels=images.in_channels, spatial_dims=images.spatial_dims,
                     target=target)


def encoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s ``state_dict`` without the ``head`` stage (CPU copies, the model's names)."""
    head = next((s for s in get_stages(model) if s.name == "head"), None)
    prefixes = head.modules if head is not None else ()
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if not any(k == p or k.startswith(p + ".") for p in prefixes)}


class IndexStream:
    """Indices of each batch: seeded permutations of ``range(n)``, epoch after epoch (the last
    incomplete batch of an epoch is dropped, as BatchNorm and NT-Xent want full batches). Fewer
    images than a batch (a few large volumes, cropped anew at every draw): each batch is the next
    ``batch_size`` of a stream of permutations, so an image may appear more than once in it.

    A part of ``resume.pt``: :meth:`state_dict` holds the generator ``rng`` (which also draws the
    crops) and the place in the current permutation.
    """

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator) -> None:
        self.n, self.batch_size, self.rng = n, batch_size, rng
        self.perm = np.empty(0, dtype=np.int64)  # the current permutation (n >= batch_size) ...
        self.i = 0  # ... and the next batch's start in it; n < batch_size: the stream's rest

    def __iter__(self) -> IndexStream:
        return self

    def __next__(self) -> np.ndarray:
        bs = self.batch_size
        if self.n < bs:
            while len(self.perm) < bs:
                self.perm = np.concatenate([self.perm, self.rng.permutation(self.n)])
            out, self.perm = self.perm[:bs], self.perm[bs:]
            return out
        if self.i + bs > len(self.perm):  # the epoch is done (or none began): a new one
            self.perm, self.i = self.rng.permutation(self.n), 0
        out, self.i = self.perm[self.i:self.i + bs], self.i + bs
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"rng": json.dumps(self.rng.bit_generator.state), "perm": torch.from_numpy(self.perm.copy()),
                "i": self.i}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.perm, self.i = state["perm"].numpy().astype(np.int64), int(state["i"])


@dataclass
class _Tally:
    """What the SSL loop counts (a part of ``resume.pt``): times each image was drawn, the loss of
    every step, the training seconds of earlier attempts."""

    seen: np.ndarray
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"seen": torch.from_numpy(self.seen.copy()), "losses": list(self.losses),
                "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen = state["seen"].numpy().astype(np.int64)
        self.losses, self.seconds = [float(v) for v in state["losses"]], float(state["seconds"])


@dataclass
class SSLResult:
    """Where the outputs went, the ``pretrain.json`` summary and whether it was skipped."""

    out_dir: Path
    summary: dict[str, Any]
    skipped: bool = False


def default_out_dir(spec: SSLSpec, workspace: str | Path = "workspace") -> Path:
    """``<workspace>/pretrain/<name>/`` (a ``--smoke`` spec's name ends in ``-smoke``)."""
    return Path(workspace) / "pretrain" / spec.name


def finished(spec: SSLSpec, out_dir: str | Path) -> dict[str, Any] | None:
    """The summary of a finished pretraining of ``spec`` in ``out_dir``, or ``None``.

    Raises:
        ConfigError: ``out_dir`` holds a finished pretraining of another config (or a Med3D
            one): replacing it would change what ``ssl:<name>`` means for runs already stored.
    """
    out = Path(out_dir)
    meta = out / "pretrain.json"
    if not meta.is_file():
        return None
    try:
        summary = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None  # unreadable: not finished, train again
    if summary.get("kind") != KIND:
        raise ConfigError(f"{out} holds a Med3D pretraining named {spec.name!r}; give the SSL "
                          "file another name")
    new, old = _flat(json.loads(json.dumps(spec.identity()))), _flat(summary.get("identity") or {})
    if new != old:
        diff = next(k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
        raise ConfigError(f"{out} holds a finished SSL pretraining {spec.name!r} with another "
                          f"config ({diff}: {old.get(diff)!r} there, {new.get(diff)!r} now); give "
                          f"the file another name, or pass --force to replace it (runs already "
                          f"trained from ssl:{spec.name} keep their results)")
    return summary if (out / "encoder.pt").is_file() else None


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _write_json(obj: Any, path: Path) -> None:
    write_text(path, json.dumps(obj, indent=1))


def pretrain_ssl(spec: SSLSpec, *, out_dir: str | Path, device: str | None = None,
                 progress: bool = True, images: UnlabelledImages | None = None,
                 force: bool = False) -> SSLResult:
    """Pretrain ``spec.model`` on ``spec.data``'s unlabelled training images; write the outputs.

    Args:
        spec: the parsed file (already shrunk for ``--smoke``).
        out_dir: folder for ``encoder.pt``, ``pretrain.json`` and ``images.json`` (created).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``None`` for automatic.
        progress: show a tqdm bar over the steps.
        images: the unlabelled images (default: :func:`~transfuse.pretrain.ssl_data.load_unlabelled`).
        force: train again even if ``out_dir`` holds a finished pretraining (of any config).

    Returns:
        :class:`SSLResult`; ``skipped`` when ``out_dir`` already held this pretraining.

    SIGTERM or Ctrl-C stops after the current step with ``out_dir/resume.pt`` (as ``fit``'s:
    :mod:`transfuse.train.resume`) and :class:`~transfuse.errors.PreemptedError`; the same call
    again continues from it, to the same result as an uninterrupted pretraining.

    Raises:
        ConfigError: a model that does not fit the data; ``out_dir`` holding another config.
        DataError: unreadable data.
        DivergedError: the loss became NaN/inf.
        PreemptedError: stopped by a signal (rerun to resume).
    """
    out = Path(out_dir)
    if not force:
        done = finished(spec, out)
        if done is not None:
            return SSLResult(out, done, skipped=True)
    dev = resolve_device(device)
    images = images if images is not None else load_unlabelled(spec)
    if len(images) < 2:
        raise ConfigError(f"data: {len(images)} training image; SSL needs at least 2")
    seed_everything(spec.seed)  # model, heads and decoder init
    method = build_method(spec, images).to(dev)
    views = Views(spec.method, spatial_dims=images.spatial_dims, channels=images.in_channels,
                  size=images.image_shape, norm_mean=images.norm_mean, norm_std=images.norm_std)
    tspec = TrainSpec(steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr,
                      optimizer=spec.optimizer, weight_decay=spec.weight_decay, schedule="cosine",
                      warmup_steps=spec.warmup_steps)
    opt = make_optimizer(method, tspec, groups=[
        {"params": [p for p in method.trainable() if p.ndim > 1], "weight_decay": spec.weight_decay},
        {"params": [p for p in method.trainable() if p.ndim <= 1], "weight_decay": 0.0}])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(tspec, spec.steps))
    amp = dev.type == "cuda"
    rng = np.random.default_rng(spec.seed)  # batch order and crop corners
    stream = IndexStream(len(images), spec.batch_size, rng)
    tally = _Tally(np.zeros(len(images), dtype=np.int64))
    # resume.pt: these parts' state_dict()s and the random states (fit's format)
    parts = {"model": method, "optimizer": opt, "scheduler": sched, "stream": stream, "tally": tally}
    fingerprint = json.dumps({"ssl": spec.to_dict()}, sort_keys=True)
    ckpt = load_resume(out, fingerprint)
    start = 0 if ckpt is None else restore_parts(ckpt, parts)  # steps done

    def checkpoint(step: int) -> None:
        save_resume(out / RESUME_FILE, resume_state(fingerprint=fingerprint, step=step, parts=parts))

    bar = progress_bar(spec.steps, start=start + 1, enabled=progress, desc=f"ssl {spec.name}")
    t0 = time.perf_counter()
    method.train()
    with SigtermGuard() as sigterm:
        for step in range(start, spec.steps):
            idx = next(stream)
            np.add.at(tally.seen, idx, 1)
            x = images.batch(idx, rng)
            v = [t.to(dev, non_blocking=True) for t in views(x, seed=spec.seed, step=step)]
            with autocast(dev, amp):
                loss = method.loss(v, clean=x.to(dev) if spec.method == "restoration" else None)
            value = check_loss(float(loss.detach().float()), "SSL loss", step + 1, tspec,
                               prefix="", flag="--set lr=")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            method.after_step(step, spec.steps, spec)
            tally.losses.append(round(value, 6))
            bar.update(1)
            bar.set_postfix({"loss": f"{value:.4f}"})
            tally.seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            # only on a stop request: a checkpoint costs about as much as a few steps
            checkpoint_or_stop(step + 1, spec.steps, every=spec.steps, guard=sigterm,
                               checkpoint=checkpoint, bar=bar)
    bar.close()
    summary = _write(spec, method, images, out, losses=tally.losses, seen=tally.seen,
                     seconds=tally.seconds, views=views, device=dev)
    (out / RESUME_FILE).unlink(missing_ok=True)  # finished: nothing to resume
    return SSLResult(out, summary)


def _write(spec: SSLSpec, method: SSLMethod, images: UnlabelledImages, out: Path, *,
           losses: list[float], seen: np.ndarray, seconds: float, views: Views,
           device: torch.device) -> dict[str, Any]:
    model = method.encoder.model
    out.mkdir(parents=True, exist_ok=True)
    (out / "pretrain.json").unlink(missing_ok=True)  # not finished until it is written again
    _save(encoder_state(model), out / "encoder.pt")
    used = np.flatnonzero(seen)
    origin = dict(images.origin)
    files = origin.pop("files", None)
    record: dict[str, Any] = {"name": spec.name, **origin, "indices": used.tolist(),
                              "times_drawn": seen[used].tolist()}
    if files is not None:
        record["files"] = [files[i] for i in used]
    _write_json(record, out / "images.json")
    k = min(10, len(losses))
    summary = {
        "kind": KIND, "name": spec.name, "method": spec.method, "model": spec.model,
        "smoke": spec.smoke, "identity": spec.identity(), "config": spec.to_dict(),
        "data": {**origin, "spatial_dims": images.spatial_dims, "in_channels": images.in_channels,
                 "image_shape": list(images.image_shape), "norm_mean": list(images.norm_mean),
                 "norm_std": list(images.norm_std)},
        "cost": {"steps": spec.steps, "batch_size": spec.batch_size,
                 "images_seen": int(seen.sum()), "unique_images": int(len(used)),
                 "train_images": int(len(images)), "seconds": round(seconds, 2),
                 "device": str(device)},
        "loss": losses,
        "loss_first10": round(float(np.mean(losses[:k])), 6),
        "loss_last10": round(float(np.mean(losses[-k:])), 6),
        "stages": [s.name for s in get_stages(model)],
        "views": views.describe(),
        "libraries": _versions(),
        "files": {"encoder": str(out / "encoder.pt"), "images": str(out / "images.json")},
        "use": (f"--source ssl:{spec.name} --workspace {out.parent.parent}"
                if out.parent.name == "pretrain" and out.name == spec.name
                else f"--source file:{out / 'encoder.pt'}"),
    }
    _write_json(summary, out / "pretrain.json")  # last: its presence means finished
    return summary


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "torchvision", "monai", "lightly"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out

