"""The model contract: named stages.

Every model built by :func:`transfuse.models.create_model` carries ``model.stage_info``, a list of
:class:`Stage` in forward order — ``stem``, ``block1`` … ``blockN``, ``head``. Each stage owns a
disjoint set of parameters (module-name prefixes) and names the module whose output is the
stage's representation. Init strategies ("pretrained up to block2") and representation analysis
("activations of block3") address layers by these names, whatever library built the network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ModelError

__all__ = ["Stage", "get_stages", "stage_of", "stage_names", "stage_parameters", "stage_module"]


@dataclass(frozen=True)
class Stage:
    """One named stage of a model.

    Attributes:
        name: ``stem``, ``block1`` … or ``head``.
        modules: module-name prefixes whose parameters and buffers belong to the stage.
        output: the module whose forward output is the stage's representation (hook target).
        channels: output channels (``head``: number of classes).
        stride: total downsampling factor of the stage's output relative to the input
            (``head``: 0, no spatial map).
    """

    name: str
    modules: tuple[str, ...]
    output: str
    channels: int
    stride: int

    def to_dict(self) -> dict:
        return {"name": self.name, "modules": list(self.modules), "output": self.output,
                "channels": self.channels, "stride": self.stride}


def get_stages(model: nn.Module) -> list[Stage]:
    """The model's stages in forward order.

    Raises:
        ModelError: the model was not built by ``create_model`` (no ``stage_info``).
    """
    stages = getattr(model, "stage_info", None)
    if stages is None:
        raise ModelError(f"{type(model).__name__} has no stage_info; build it with create_model()")
    return list(stages)


def stage_names(model: nn.Module) -> list[str]:
    """``["stem", "block1", ..., "head"]`` for ``model``."""
    return [s.name for s in get_stages(model)]


def _owns(prefix: str, key: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def stage_of(model: nn.Module, key: str) -> str:
    """Name of the stage that owns parameter/buffer ``key`` (a ``state_dict`` key).

    Raises:
        ModelError: no stage owns ``key``.
    """
    for s in get_stages(model):
        if any(_owns(p, key) for p in s.modules):
            return s.name
    raise ModelError(f"no stage of {type(model).__name__} owns {key!r}")


def stage_parameters(model: nn.Module, name: str) -> list[str]:
    """``state_dict`` keys owned by stage ``name``, in state-dict order."""
    stage = {s.name: s for s in get_stages(model)}.get(name)
    if stage is None:
        raise ModelError(f"unknown stage {name!r}; stages are {', '.join(stage_names(model))}")
    return [k for k in model.state_dict() if any(_owns(p, k) for p in stage.modules)]


def stage_module(model: nn.Module, name: str) -> nn.Module:
    """The module whose output is stage ``name``'s representation (for forward hooks)."""
    stage = {s.name: s for s in get_stages(model)}.get(name)
    if stage is None:
        raise ModelError(f"unknown stage {name!r}; stages are {', '.join(stage_names(model))}")
    return model.get_submodule(stage.output)


@torch.no_grad()
def probe_stages(model: nn.Module, groups: list[tuple[str, tuple[str, ...], str]], *,
                 in_channels: int, spatial_dims: int, size: int) -> list[Stage]:
    """Build :class:`Stage` entries by running one dummy input and reading output shapes.

    Args:
        groups: ``(name, module prefixes, output module)`` per stage, ``head`` last.
        size: side length of the dummy input ``(1, in_channels, size, ...)``.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = []
    for name, _, out in groups:
        mod = model.get_submodule(out)
        hooks.append(mod.register_forward_hook(
            lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape))))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, in_channels, *([size] * spatial_dims)))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    stages = []
    for name, mods, out in groups:
        shp = shapes[name]
        # Valid (unpadded) convolutions make size/out inexact; strides are powers of two.
        stride = 0 if len(shp) == 2 else 2 ** int(round(math.log2(size / shp[-1])))
        if len(shp) == 3:  # token sequences (N, T, C): channels last, no spatial grid
            stages.append(Stage(name, tuple(mods), out, int(shp[-1]), 0))
        else:
            stages.append(Stage(name, tuple(mods), out, int(shp[1]), stride))
    return stages
