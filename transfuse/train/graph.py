"""``train.cuda_graph``: the forward and backward pass of :func:`transfuse.train.fit`'s training
step captured once in a CUDA graph and replayed every step (issue 27).

What is captured: on the preloaded path (``train.preload``: the training set already on the GPU,
batches drawn by index), the gather of the batch from the preloaded tensors into static storage,
the channels-last copy, the forward pass (under autocast without its cache, as PyTorch asks),
the loss and ``backward()``. The graph's gradients live in its private memory pool and stay the
parameters' ``.grad`` tensors, so the optimiser step and the learning-rate schedule run eagerly
after each replay, reading the schedule's current learning rate exactly as an uncaptured run
does (SGD's update takes the learning rate as a Python number, which a captured update would
freeze at its capture-time value). Each step then costs one index copy to the device, one graph
launch and the optimiser's few ``foreach`` kernels, instead of a launch per layer and per
gradient.

The first :data:`WARMUP_STEPS` steps of a run (or of a resumed attempt) are ordinary eager steps
on a side stream — PyTorch asks for warm-up iterations before a capture, and these are real
training steps, so the run is the same run — then the step is captured and replayed from there
on. Batches have one size throughout (the loader drops the ragged last batch).

Not captured (``auto`` trains eagerly and the run's summary says why, ``on`` is a one-line
error): a device other than CUDA, DDP (``torchrun``), a training set that is not preloaded,
``train.augment`` (new random transforms every step), ``train.compile`` (it compiles the model
its own way), an LP-FT schedule (it unfreezes parameters mid-run), weight averaging
(``train.ema``/``train.swa``) and segmentation. Under ``auto`` a capture that fails (an operation
that cannot be captured) falls back to eager steps, with the error recorded.

Not yet run on a GPU: the CPU tests cover the decision and its recorded reasons;
``bench/train_overhead.py --cuda-graph`` (in ``bench/gpu_cohorts.sh``) measures it on CUDA.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..config import TrainSpec
from ..errors import ConfigError
from .device import DistInfo, autocast
from .parts import Loaders, Placed, train_step

__all__ = ["WARMUP_STEPS", "graph_refusal", "check_cuda_graph", "decide_cuda_graph", "make_step",
           "StepFn"]

WARMUP_STEPS = 3  #: eager steps on a side stream before the capture

StepFn = Callable[[Any, int], tuple[torch.Tensor, int]]  # (batch, step) -> (loss, batch size)


def graph_refusal(spec: TrainSpec, *, task: str, preloaded: bool, world_size: int,
                  lpft: bool) -> str | None:
    """Why this run's step cannot be captured (on CUDA), or ``None`` when it can."""
    if world_size > 1:
        return "distributed (torchrun) steps are not captured"
    if task == "segmentation":
        return "segmentation steps are not captured"
    if not preloaded:
        return "the training set is not preloaded on the device (train.preload)"
    if spec.augment != "none":
        return "train.augment draws new random transforms every step"
    if spec.compile:
        return "train.compile compiles the model its own way"
    if lpft:
        return f"train.finetune={spec.finetune} unfreezes parameters mid-run"
    if spec.ema is not None or spec.swa is not None:
        return "weight averaging (train.ema/train.swa) is not captured"
    return None


def check_cuda_graph(spec: TrainSpec, device: torch.device) -> None:
    """The one-line error of ``train.cuda_graph: on`` on a device other than CUDA (checked
    before a run is stored, and again by :func:`decide_cuda_graph`).

    Raises:
        ConfigError: ``train.cuda_graph: on needs a CUDA device; use auto or off``.
    """
    if spec.cuda_graph == "on" and device.type != "cuda":
        raise ConfigError("train.cuda_graph: on needs a CUDA device; use auto or off")


def decide_cuda_graph(spec: TrainSpec, *, device: torch.device, task: str, preloaded: bool,
                      world_size: int, lpft: bool) -> tuple[bool, str | None]:
    """Whether to capture the step, and what the run records about it (``None`` on the CPU
    under ``auto``/``off``: nothing to record there).

    Raises:
        ConfigError: ``train.cuda_graph: on`` where the step cannot be captured.
    """
    mode = spec.cuda_graph
    check_cuda_graph(spec, device)
    if device.type != "cuda":
        return False, None
    if mode == "off":
        return False, "off"
    why = graph_refusal(spec, task=task, preloaded=preloaded, world_size=world_size, lpft=lpft)
    if why is None:
        return True, "captured"
    if mode == "on":
        raise ConfigError(f"train.cuda_graph: on cannot capture this run's step: {why}; "
                          "use auto or off")
    return False, f"not captured: {why}"


def make_step(model: nn.Module, *, spec: TrainSpec, task: str, seed: int, dist: DistInfo,
              loaders: Loaders, placed: Placed, augment: Any, opt: torch.optim.Optimizer, sched: Any,
              loss_fn: Callable[..., torch.Tensor], device: torch.device) -> StepFn:
    """The training step :func:`~transfuse.train.fit` calls as ``step_fn(batch, step)``: the
    eager :func:`~transfuse.train.parts.train_step`, or (``train.cuda_graph``) a captured one.
    Its ``note`` attribute is what the run records (``None``: nothing)."""
    eager = functools.partial(train_step, model, seed=seed, rank=dist.rank, spec=spec, task=task,
                              loaders=loaders, placed=placed, augment=augment, opt=opt,
                              sched=sched, loss_fn=loss_fn, device=device)
    capture, note = decide_cuda_graph(spec, device=device, task=task, world_size=dist.world_size,
                                      preloaded=loaders.preloaded is not None,
                                      lpft=placed.finetune.switch_step is not None)
    if not capture:
        return _Eager(eager, note)
    return _GraphedStep(eager, model=model, spec=spec, task=task, loaders=loaders, placed=placed,
                        opt=opt, sched=sched, loss_fn=loss_fn, device=device, note=note)


class _Eager:
    """The uncaptured step, with the note the run records."""

    def __init__(self, eager: Callable[..., tuple[torch.Tensor, int]], note: str | None) -> None:
        self.eager, self.note = eager, note

    def __call__(self, batch: Any, step: int) -> tuple[torch.Tensor, int]:
        return self.eager(batch, step=step)


class _GraphedStep(_Eager):
    """Warm-up steps, then the captured forward/backward replayed, the optimiser step eager."""

    def __init__(self, eager: Callable[..., tuple[torch.Tensor, int]], *, model: nn.Module,
                 spec: TrainSpec, task: str, loaders: Loaders, placed: Placed,
                 opt: torch.optim.Optimizer, sched: Any, loss_fn: Callable[..., torch.Tensor],
                 device: torch.device, note: str | None) -> None:
        super().__init__(eager, note)
        self.model, self.spec, self.task, self.loaders, self.placed = model, spec, task, loaders, placed
        self.opt, self.sched, self.loss_fn, self.device = opt, sched, loss_fn, device
        self.warm = 0
        self.graph: Any = None
        self.idx: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None
        self.grads: list[tuple[nn.Parameter, torch.Tensor]] = []
        self.side = torch.cuda.Stream(device)

    def __call__(self, batch: Any, step: int) -> tuple[torch.Tensor, int]:
        if self.note != "captured":  # a failed capture: eager from then on
            return self.eager(batch, step=step)
        if self.graph is None and self.warm < WARMUP_STEPS:
            self.warm += 1
            self.side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.side):
                out = self.eager(batch, step=step)
            torch.cuda.current_stream(self.device).wait_stream(self.side)
            return out
        if self.graph is None and not self._capture(len(batch)):
            return self.eager(batch, step=step)
        if len(batch) != self.idx.shape[0]:  # cannot happen with drop_last; never wrong if it did
            out = self.eager(batch, step=step)  # its zero_grad(set_to_none) drops the graph's
            for p, g in self.grads:  # .grad tensors: point the parameters back at them, or the
                p.grad = g  # next replay's gradients would never reach the optimiser
            return out
        self.idx.copy_(batch, non_blocking=True)
        self.graph.replay()
        self.opt.step()
        self.sched.step()
        return self.loss.clone(), len(batch)

    def _capture(self, n: int) -> bool:
        """Capture the step for batches of ``n``; ``False`` (and the note says why) when the
        capture failed under ``auto``."""
        pre = self.loaders.preloaded
        assert pre is not None
        self.idx = torch.zeros(n, dtype=torch.long, device=pre[0].device)
        self.opt.zero_grad(set_to_none=True)  # backward() then allocates .grad in the graph's pool
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                x, y, m = (t[self.idx] for t in pre)
                if self.placed.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(self.device, self.spec.amp, cache=False):
                    logits = self.model(x)
                loss = self.loss_fn(logits.float(), y, m, self.task, self.loaders.class_weight)
                loss.backward()
                self.loss = loss.detach()
        except Exception as e:
            if self.spec.cuda_graph == "on":
                raise ConfigError(f"train.cuda_graph: on: the step could not be captured "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}); "
                                  "use auto or off") from None
            self.note = f"not captured: the capture failed ({type(e).__name__})"
            self.opt.zero_grad(set_to_none=True)
            return False
        self.graph = graph
        # the .grad tensors the replays write into (the graph's pool), kept to restore them
        self.grads = [(p, p.grad) for p in self.model.parameters() if p.grad is not None]
        return True
