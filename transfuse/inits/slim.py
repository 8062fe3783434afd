"""``slim:<stage>[,<width>]``: pretrained weights up to a stage, a narrower random top.

Raghu et al. 2019 (shared/reference/papers.md §1.10): reuse the pretrained weights from the stem
up to and including ``<stage>`` (tensors and BatchNorm statistics, as ``transfusion``) and make
every block stage above it "more lightweight": its channel widths × ``<width>`` (default 0.5;
halving is the usual reading, unconfirmed by the paper), randomly initialised. The head is
rebuilt for the new feature width and the target's classes.

The strategy changes the architecture, so it declares ``model_kwargs``: ``init_model_kwargs(
"slim:block2")`` is ``{"stage_widths": WidthsAbove("block2", 0.5)}``, which the CBR and ResNet
builders of :func:`~transfuse.models.create_model` resolve to their own stages (``{"block3": 0.5}``
for ``cbr_small``, ``{"block3": 0.5, "block4": 0.5}`` for ``resnet50``). :func:`transfuse.run.
train_run` passes it; when calling :func:`~transfuse.inits.apply_init` yourself, build the model
with it::

    model = create_model("resnet50", num_classes=4, **init_model_kwargs("slim:block2"))
    apply_init(model, "slim:block2", source="torchvision:resnet50")

A model with other widths is refused with a :class:`~transfuse.errors.ConfigError` that says so.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch

from ..errors import ConfigError, TransfuseError
from ..models.registry import WidthsAbove
from .adapt import Aligned, require
from .base import Action, InitContext, register_init

__all__ = ["DEFAULT_WIDTH", "parse_slim"]

DEFAULT_WIDTH = 0.5
StateDict = dict[str, torch.Tensor]


def parse_slim(arg: str | None) -> tuple[str, float]:
    """``"block2"`` → ``("block2", 0.5)``; ``"block2,0.25"`` → ``("block2", 0.25)``.

    Raises:
        ConfigError: no stage, or a width that is not a number in (0, 1].
    """
    if not arg or not arg.split(",")[0].strip():
        raise ConfigError("init slim needs a stage: slim:<stage>[,<width>], e.g. slim:block2 "
                          f"(pretrained up to block2, the stages above × {DEFAULT_WIDTH} wide)")
    stage, _, width_s = arg.partition(",")
    stage = stage.strip()
    if not width_s.strip():
        return stage, DEFAULT_WIDTH
    try:
        width = float(width_s)
    except ValueError:
        width = math.nan
    if not 0 < width <= 1:  # also rejects nan
        raise ConfigError(f"init slim:{arg}: width {width_s.strip()!r} must be a number in (0, 1], "
                          "e.g. slim:block2,0.5")
    return stage, width


def _model_kwargs(arg: str | None) -> dict[str, Any]:
    stage, width = parse_slim(arg)
    return {"stage_widths": WidthsAbove(stage, width, label=f"init slim:{arg}")}


@lru_cache(maxsize=32)
def _expected_shapes(model_name: str, spatial_dims: int, in_channels: int, stage: str,
                     width: float, arg: str, options: tuple[tuple[str, Any], ...] = ()
                     ) -> dict[str, tuple[int, ...]]:
    """Shapes of the non-head tensors of ``model_name`` built with its builder ``options`` (the
    model's ``model_kwargs``, e.g. a U-Net's ``kernels="kxkxk"``) for ``slim:<arg>`` (meta device:
    shapes only, no memory, no init cost)."""
    from ..models import create_model, stage_of

    with torch.device("meta"):
        model = create_model(model_name, spatial_dims=spatial_dims, in_channels=in_channels,
                             num_classes=1, **dict(options),
                             stage_widths=WidthsAbove(stage, width, f"init slim:{arg}"))
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if stage_of(model, k) != "head"}


def _check_widths(state: StateDict, ctx: InitContext, stage: str, width: float) -> None:
    """Refuse a model whose widths are not the ones ``slim:<arg>`` builds (with the model's own
    builder options, ``ctx.model_kwargs``)."""
    in_ch = int(state[ctx.first_conv].shape[1]) if ctx.first_conv else 3
    args = (ctx.model_name, ctx.spatial_dims, in_ch, stage, width, ctx.arg or "", ctx.model_kwargs)
    try:
        hash(args)
    except TypeError:  # an unhashable builder option: build without the cache
        shapes = _expected_shapes.__wrapped__
    else:
        shapes = _expected_shapes
    try:
        want = shapes(*args)
    except TransfuseError as e:  # a family without width multipliers, a model not from create_model
        raise ConfigError(f"init slim:{ctx.arg} cannot be used with {ctx.model_name}: {e}") from None
    body = [k for k in state if ctx.key_stage[k] != "head"]
    bad = [k for k in body if want.get(k) != tuple(state[k].shape)]
    bad += [k for k in want if k not in state]
    if bad:
        k = bad[0]
        got = tuple(state[k].shape) if k in state else "missing"
        opts = "".join(f", {n}={v!r}" for n, v in ctx.model_kwargs)
        raise ConfigError(
            f"init slim:{ctx.arg}: the model's widths do not match — {k} is {got}, slim expects "
            f"{want.get(k, 'no such tensor')}; build the model with "
            f"create_model({ctx.model_name!r}, ...{opts}, **init_model_kwargs({'slim:' + (ctx.arg or '')!r}))")


@register_init("slim", needs_source=True, arg="stage[,width]", model_kwargs=_model_kwargs,
               description="Slim: source weights up to and including <stage>; every block stage "
               f"above it × <width> channels (default {DEFAULT_WIDTH}), random (CBR, ResNet)")
def slim_init(state: StateDict, source: Aligned | None, ctx: InitContext) -> dict[str, Action]:
    stage, width = parse_slim(ctx.arg)
    if stage == "head" or stage not in ctx.stage_names:
        body = [s for s in ctx.stage_names if s != "head"]
        raise ConfigError(f"init slim:{ctx.arg}: {stage!r} is not a stage of {ctx.model_name} "
                          f"that can be kept; stages are {', '.join(body)}")
    _check_widths(state, ctx, stage, width)
    assert source is not None
    keys = [k for k in ctx.keys_in(ctx.stages_up_to(stage)) if not k.endswith("num_batches_tracked")]
    out = {}
    for k in require(source, keys, what=f"slim:{ctx.arg}", partial=ctx.partial):
        state[k] = source.state[k]  # load_state_dict copies it into the model
        out[k] = Action("loaded")
    return out
