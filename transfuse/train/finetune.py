"""Fine-tuning strategies: which stages train, at which learning rate.

``TrainSpec.finetune`` names a strategy over the model's stages (``stem``, ``block1`` … ``head``,
see :mod:`transfuse.models._stages`; a U-Net's decoder belongs to its ``head``):

- ``full``: every stage trains;
- ``linear_probe``: only the head trains;
- ``freeze:<stage>``: ``stem`` … ``<stage>`` are frozen, the stages after it train;
- ``surgical:<stage>``: only ``<stage>`` and the head train;
- ``lpft:<steps>``: linear probe for ``steps`` optimiser steps, then every stage trains.

Learning rates decay layer-wise from the head down, as timm's ``--layer-decay``: the head trains
at ``lr × head_lr_mult`` and the stage ``k`` below the head at ``lr × layer_decay**k``. Frozen
parameters get ``requires_grad=False`` and are not in the optimiser; with ``freeze_bn`` the
BatchNorm layers of frozen stages stay in eval mode, so their running statistics are fixed too.

:func:`plan_finetune` resolves the strategy against one model and returns a :class:`Finetune`,
the small object the training loop uses: ``param_groups()`` for the optimiser, ``apply(model)``
before the first step and ``on_step(step, model, optimizer, scheduler)`` before each step.

LP-FT's switch *adds* the body's parameter groups to the running optimiser (fresh momentum for
them) and extends the ``LambdaLR`` with their base learning rates, instead of rebuilding both:
the head keeps its optimiser state and every group continues on the same schedule, at the step
the schedule has reached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..config import TrainSpec
from ..spec.finetune_names import finetune_parts
from ..errors import ConfigError
from ..models import get_stages, stage_of

__all__ = ["Finetune", "StageGroup", "plan_finetune", "stage_lrs", "trainable_stages"]

_BatchNorm = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class StageGroup:
    """One stage as the optimiser sees it.

    Attributes:
        stage: the stage name.
        lr: its peak learning rate (before the schedule's multiplier).
        trainable: whether it trains from the first step.
        parameters: number of parameter elements it owns.
    """

    stage: str
    lr: float
    trainable: bool
    parameters: int

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "lr": self.lr, "trainable": self.trainable,
                "parameters": self.parameters}


def stage_lrs(stages: list[str], *, lr: float, layer_decay: float = 1.0,
              head_lr_mult: float = 1.0) -> dict[str, float]:
    """Peak learning rate per stage: ``head`` → ``lr × head_lr_mult``, the stage ``k`` below
    the head (``k = 1`` for the last block) → ``lr × layer_decay**k``.

    Args:
        stages: stage names in forward order, ``head`` last.
    """
    n = len(stages)
    return {s: lr * head_lr_mult if s == "head" else lr * layer_decay ** (n - 1 - i)
            for i, s in enumerate(stages)}


def trainable_stages(finetune: str, stages: list[str]) -> tuple[list[str], int | None]:
    """The stages that train from step 1 under ``finetune``, and LP-FT's switch step.

    Args:
        finetune: a ``train.finetune`` value.
        stages: the model's stage names in forward order, ``head`` last.

    Returns:
        ``(trainable stage names, switch step or None)``; with ``lpft:N`` every stage trains
        from step ``N + 1``.

    Raises:
        ConfigError: malformed value, or a stage the model does not have (the message lists the
            model's stages).
    """
    kind, arg = finetune_parts(finetune)
    if kind in ("freeze", "surgical"):
        if arg not in stages:
            raise ConfigError(f"train.finetune={finetune!r}: the model has no stage {arg!r}; "
                              f"stages are {', '.join(stages)}")
        if kind == "freeze" and arg == "head":
            raise ConfigError(f"train.finetune={finetune!r} would freeze every stage; freeze a "
                              f"stage before the head ({', '.join(stages[:-1])})")
    if kind == "full":
        return list(stages), None
    if kind in ("linear_probe", "lpft"):
        return ["head"], arg if kind == "lpft" else None
    if kind == "freeze":
        return stages[stages.index(arg) + 1:], None
    return [s for s in stages if s in (arg, "head")], None


@dataclass
class Finetune:
    """A fine-tuning strategy resolved against one model (build it with :func:`plan_finetune`).

    Attributes:
        spec: the training settings it came from.
        groups: one :class:`StageGroup` per stage, in forward order.
        switch_step: LP-FT: the step before which the body is unfrozen (``N + 1``), else ``None``.
    """

    spec: TrainSpec
    groups: list[StageGroup]
    switch_step: int | None
    _params: dict[str, list[nn.Parameter]] = field(repr=False, default_factory=dict)
    _bn: dict[str, list[nn.Module]] = field(repr=False, default_factory=dict)
    _hooks: list[Any] = field(repr=False, default_factory=list)
    #: leading dimensions of every parameter that are not the weight's own (a cohort's stacked
    #: members: 1), left out where the weight's rank decides its weight decay
    stacked: int = 0

    @property
    def frozen(self) -> list[str]:
        """Stages frozen at the start."""
        return [g.stage for g in self.groups if not g.trainable]

    def trainable_parameters(self) -> int:
        """Parameter elements that train from step 1."""
        return sum(g.parameters for g in self.groups if g.trainable)

    def _stage_groups(self, stages: list[str]) -> list[dict[str, Any]]:
        out = []
        lrs = {g.stage: g.lr for g in self.groups}
        for s in stages:
            params = self._params[s]
            # As make_optimizer: no weight decay on norms and biases.
            for wd, ps in ((self.spec.weight_decay, [p for p in params if p.ndim - self.stacked > 1]),
                           (0.0, [p for p in params if p.ndim - self.stacked <= 1])):
                if ps:
                    out.append({"params": ps, "lr": lrs[s], "weight_decay": wd, "stage": s})
        return out

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups of the stages that train from step 1: per stage, one group
        with weight decay (weights) and one without (norms, biases), each with the stage's
        ``lr`` and a ``stage`` key."""
        return self._stage_groups([g.stage for g in self.groups if g.trainable])

    def apply(self, model: nn.Module) -> None:
        """Freeze the frozen stages of ``model`` (``requires_grad=False``) and, with
        ``freeze_bn``, keep their BatchNorm layers in eval mode (a forward pre-hook, so
        ``model.train()`` cannot undo it). Call before wrapping the model in DDP."""
        for g in self.groups:
            for p in self._params[g.stage]:
                p.requires_grad_(g.trainable)
        if self.spec.freeze_bn:
            for s in self.frozen:
                for m in self._bn[s]:
                    self._hooks.append(m.register_forward_pre_hook(_eval_mode))
                    m.eval()

    def release(self) -> None:
        """Remove the BatchNorm hooks (the model behaves normally again)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def on_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: torch.optim.lr_scheduler.LambdaLR | None = None) -> bool:
        """Before optimiser step ``step`` (1-based): LP-FT unfreezes the body at its switch step.

        The body's groups are added to ``optimizer`` at their peak lr × the schedule's current
        multiplier, and ``scheduler`` (if given) learns their base lrs, so every group
        continues on the same schedule.

        Returns:
            whether anything changed at this step.
        """
        if step != self.switch_step:
            return False
        frozen = self.frozen
        self.release()
        for s in frozen:
            for p in self._params[s]:
                p.requires_grad_(True)
        new = self._stage_groups(frozen)
        mult = scheduler.lr_lambdas[0](scheduler.last_epoch) if scheduler is not None else 1.0
        for g in new:
            g["initial_lr"] = g["lr"]
            g["lr"] = g["lr"] * mult
            optimizer.add_param_group(g)
            if scheduler is not None:
                scheduler.base_lrs.append(g["initial_lr"])
                scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
        if scheduler is not None:
            scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
        self.groups = [StageGroup(g.stage, g.lr, True, g.parameters) for g in self.groups]
        for s in frozen:  # BatchNorms kept in eval mode follow the model's mode again
            for m in self._bn[s]:
                m.train(model.training)
        return True

    def describe(self) -> dict[str, Any]:
        """What the run record keeps: the strategy, trainable parameter count, stage groups."""
        return {"finetune": self.spec.finetune, "layer_decay": self.spec.layer_decay,
                "head_lr_mult": self.spec.head_lr_mult, "freeze_bn": self.spec.freeze_bn,
                "switch_step": self.switch_step,
                "trainable_parameters": self.trainable_parameters(),
                "param_groups": [g.to_dict() for g in self.groups]}


def _eval_mode(module: nn.Module, args: Any) -> None:
    module.training = False  # frozen stage: normalise with (and keep) the running statistics


def plan_finetune(model: nn.Module, spec: TrainSpec) -> Finetune:
    """Resolve ``spec.finetune`` and the learning-rate multipliers against ``model``'s stages.

    Nothing is changed on the model until :meth:`Finetune.apply`.

    Args:
        model: built by :func:`transfuse.models.create_model` (has ``stage_info``).
        spec: ``finetune``, ``lr``, ``layer_decay``, ``head_lr_mult``, ``freeze_bn``,
            ``weight_decay``.

    Returns:
        the :class:`Finetune` plan.

    Raises:
        ConfigError: malformed ``train.finetune`` or a stage the model does not have.
        ModelError: the model has no ``stage_info``, or a parameter no stage owns.
    """
    stages = get_stages(model)
    names = [s.name for s in stages]
    train, switch = trainable_stages(spec.finetune, names)
    lrs = stage_lrs(names, lr=spec.lr, layer_decay=spec.layer_decay,
                    head_lr_mult=spec.head_lr_mult)

    params: dict[str, list[nn.Parameter]] = {n: [] for n in names}
    for key, p in model.named_parameters():
        params[stage_of(model, key)].append(p)
    bn: dict[str, list[nn.Module]] = {n: [] for n in names}
    for key, m in model.named_modules():
        if isinstance(m, _BatchNorm) and key:
            bn[stage_of(model, key)].append(m)
    groups = [StageGroup(n, lrs[n], n in train, sum(p.numel() for p in params[n])) for n in names]
    return Finetune(spec=spec, groups=groups, switch_step=None if switch is None else switch + 1,
                    _params=params, _bn=bn)
