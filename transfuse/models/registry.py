"""Model registry and :func:`create_model`.

Builders are registered with the spatial dimensions they support and the smallest input side
they accept; :func:`create_model` checks both up front, builds the network with the library that
owns it (transfuse's CBRs, torchvision, timm) and attaches the model contract (``stage_info``,
``spatial_dims``, ``model_name``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from .._registry import Registry
from ..errors import ConfigError, ModelError
from . import _stages
from .cbr import CBR, CBR_CONFIGS

__all__ = ["MODELS", "create_model", "list_models", "register_model", "model_info", "WidthsAbove",
           "scaled_width"]

Builder = Callable[..., tuple[nn.Module, list[tuple[str, tuple[str, ...], str]]]]

#: Modules of this package whose ``register_model`` decorators fill :data:`MODELS`; imported on
#: the registry's first lookup or listing (they need torchvision; the CBRs register below).
BUILDER_MODULES = ("torchvision_models", "seg_tiny", "med3d", "unet")


def _load_builders() -> None:
    import importlib

    for m in BUILDER_MODULES:
        importlib.import_module(f"{__package__}.{m}")


MODELS: Registry[Builder] = Registry("model", load=_load_builders)


def register_model(name: str, *, spatial_dims: tuple[int, ...] = (2,), min_size: int = 8,
                   family: str = "", description: str = "",
                   probe_size: int | None = None, task: str = "classification",
                   size_multiple: int = 1, heavy_dims: tuple[int, ...] = (),
                   inflated_dims: tuple[int, ...] = ()) -> Callable[[Builder], Builder]:
    """Register a builder ``fn(*, spatial_dims, in_channels, num_classes, **kw) -> (model, groups)``.

    ``groups`` lists the stages as ``(name, module prefixes, output module)``; channels and
    strides are measured by :func:`~transfuse.models._stages.probe_stages`.

    Metadata (:func:`model_info`): ``task`` is ``"classification"`` (logits ``(N, K)``) or
    ``"segmentation"`` (logits ``(N, K, *spatial)`` at the input size; the training code matches
    it against the data); ``size_multiple``: input sides must be multiples of it (segmentation
    U-Nets: their total downsampling); ``heavy_dims``: spatial dims at which the model has more
    than ~30M parameters (seconds per build on CPU: registry-wide tests mark those cases slow);
    ``inflated_dims`` (``(3,)`` or ``()``): dims at which :func:`create_model` builds the 2D
    network and passes it through :func:`~transfuse.models.inflate_model` (listed in
    ``spatial_dims`` too).
    """
    if set(inflated_dims) - {3} or (inflated_dims and 2 not in spatial_dims):
        raise ModelError(f"{name}: inflated_dims={inflated_dims} must be (3,) for a 2D model, or ()")
    return MODELS.register(name, spatial_dims=tuple(sorted({*spatial_dims, *inflated_dims})),
                           min_size=min_size, family=family, description=description,
                           probe_size=probe_size, task=task, size_multiple=size_multiple,
                           heavy_dims=tuple(heavy_dims), inflated_dims=tuple(inflated_dims))


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching ``pattern``; ``timm:<name>`` works for any timm model."""
    return MODELS.list(pattern)


#: ``model_info`` of every ``timm:<name>``: 2D, and 3D by inflation; 32 px (the total stride of
#: timm's CNNs: the last map is at least 1 px).
TIMM_INFO: dict[str, Any] = {
    "spatial_dims": (2, 3), "inflated_dims": (3,), "min_size": 32, "family": "timm",
    "description": "any timm model by name; 3D: inflated (kernels=1xkxk or kxkxk)",
    "task": "classification", "size_multiple": 1, "heavy_dims": ()}

#: How a 2D classifier becomes 3D (``kernels=`` of :func:`create_model`, as for the U-Nets):
#: ``1xkxk`` pseudo-3D (in-plane kernels, strides and pools; any depth), ``kxkxk`` full 3D
#: (kernels centre-inflated: at initialisation each output sees its own slice).
INFLATED_KERNELS = {"1xkxk": "1xkxk", "kxkxk": "center"}


def model_info(name: str) -> dict[str, Any]:
    """Registry metadata of a model: ``spatial_dims``, ``min_size``, ``family``, ``task``,
    ``size_multiple``, ``heavy_dims``, ``inflated_dims`` (see :func:`register_model`)."""
    if name.startswith("timm:"):
        return dict(TIMM_INFO)
    return {"task": "classification", "size_multiple": 1, "heavy_dims": (), "inflated_dims": (),
            **MODELS.get(name).meta}


def create_model(name: str, *, spatial_dims: int = 2, in_channels: int = 3, num_classes: int,
                 **kwargs: Any) -> nn.Module:
    """Build a model and attach its stage list.

    Args:
        name: a registered name (``transfuse models``) or ``timm:<timm model name>``.
        spatial_dims: 2 for images ``(N, C, H, W)``, 3 for volumes ``(N, C, D, H, W)``.
        in_channels: input channels.
        num_classes: outputs of the classifier.
        **kwargs: passed to the builder (e.g. ``drop_rate``). CBR and ResNet builders accept
            ``stage_widths`` — ``{"block3": 0.5, ...}``, stage name → channel-width multiplier,
            or a :class:`WidthsAbove` — and build those stages that much narrower (random
            weights; the layers after them adapt their inputs). A 2D classifier built in 3D
            (``model_info(name)["inflated_dims"]``: torchvision ResNets, ``timm:<name>``) takes
            ``kernels="1xkxk"`` (default, pseudo-3D) or ``"kxkxk"`` (full 3D), see
            :data:`INFLATED_KERNELS`; its 2D network (random weights, the library's init) goes
            through :func:`~transfuse.models.inflate_model`, and a 2D pretrained source is
            inflated by the init framework.

    Returns:
        ``nn.Module`` mapping ``(N, in_channels, *spatial)`` to logits ``(N, num_classes)``
        (segmentation models, ``model_info(name)["task"] == "segmentation"``:
        ``(N, num_classes, *spatial)``), with
        ``stage_info`` (list of :class:`~transfuse.models.Stage`), ``spatial_dims``,
        ``model_name`` and ``model_kwargs`` (the builder options given, ``stage_widths`` aside)
        attributes.

    Raises:
        ConfigError: unknown name (with close matches).
        ModelError: unsupported ``spatial_dims``, bad channel/class counts, ``stage_widths``
            for a model without width multipliers or naming a stage it cannot scale, or a 2D
            network with a module that has no 3D counterpart (named; e.g. ECA attention).
    """
    if in_channels < 1:
        raise ModelError(f"in_channels={in_channels} must be >= 1")
    if num_classes < 1:
        raise ModelError(f"num_classes={num_classes} must be >= 1")
    if name.startswith("timm:"):
        from .timm_models import build_timm

        fn, meta = build_timm, model_info(name)
        kwargs = {"timm_name": name[5:], **kwargs}
    else:
        entry = MODELS.get(name)
        fn, meta = entry.fn, entry.meta
    if "stage_widths" in kwargs:
        widths = kwargs.pop("stage_widths")
        if widths is not None and widths != {}:
            if "stage_widths" not in inspect.signature(fn).parameters:
                ok = [e.name for e in MODELS if "stage_widths" in inspect.signature(e.fn).parameters]
                raise ModelError(f"model {name!r} has no width multipliers (stage_widths); models "
                                 f"that do: {', '.join(ok)}")
            kwargs["stage_widths"] = widths
    if spatial_dims not in meta["spatial_dims"]:
        dims = " or ".join(f"{d}D" for d in meta["spatial_dims"])
        raise ModelError(f"model {name!r} is {dims} only, not {spatial_dims}D; pick a model that "
                         "supports it (`transfuse models`)")
    inflated = spatial_dims in meta.get("inflated_dims", ())
    if "kernels" in kwargs and not inflated and "kernels" not in inspect.signature(fn).parameters:
        raise ModelError(f"model {name!r}: kernels= applies to 3D models only (a 2D classifier "
                         "inflated to 3D, or a U-Net); drop it for spatial_dims=2")
    kernels = kwargs.pop("kernels", "1xkxk") if inflated else None
    if inflated and kernels not in INFLATED_KERNELS:
        raise ModelError(f"{name}: kernels={kernels!r} must be one of {', '.join(INFLATED_KERNELS)} "
                         "(1xkxk: pseudo-3D, kxkxk: full 3D)")
    build_dims = 2 if inflated else spatial_dims
    model, groups = fn(spatial_dims=build_dims, in_channels=in_channels,
                       num_classes=num_classes, **kwargs)
    probe = (getattr(model, "probe_size", None) or meta.get("probe_size")
             or max(meta["min_size"], 64 if build_dims == 2 else 32))
    # Inflation keeps module names, channels and in-plane strides: probe the 2D network (cheap).
    stage_info = _stages.probe_stages(model, groups, in_channels=in_channels,
                                      spatial_dims=build_dims, size=probe)
    if inflated:
        model = _inflate(model, name=name, mode=INFLATED_KERNELS[kernels])
    model.stage_info = stage_info
    model.spatial_dims = spatial_dims
    model.model_name = name
    model.min_input_size = meta["min_size"]
    # The builder options (e.g. a U-Net's kernels=), so that the same model can be rebuilt.
    model.model_kwargs = {k: v for k, v in kwargs.items() if k not in ("stage_widths", "timm_name")}
    if inflated and kernels != "1xkxk":
        model.model_kwargs["kernels"] = kernels
    return model


def _inflate(model: nn.Module, *, name: str, mode: str) -> nn.Module:
    """The 3D twin of a built 2D classifier (:func:`~transfuse.models.inflate_model`)."""
    from .inflate import inflate_model

    try:
        model3d, _ = inflate_model(model, mode=mode)
    except ModelError as e:
        why = str(e).split("; pass passthrough=")[0]  # that hint is for inflate_model's callers
        raise ModelError(f"model {name!r} cannot be built in 3D: {why}; pick another 2D model "
                         "(e.g. timm:efficientnet_lite0, resnet18) or a 3D one (`transfuse models`)"
                         ) from None
    return model3d


@dataclass(frozen=True)
class WidthsAbove:
    """``stage_widths`` for "every block stage above ``stage``, × ``width``" (what ``slim`` asks).

    The builder resolves it against its own stages, so one value serves every model:
    ``WidthsAbove("block2", 0.5)`` is ``{"block3": 0.5}`` for ``cbr_small`` and
    ``{"block3": 0.5, "block4": 0.5}`` for ``resnet50``. ``label`` names the request in errors.
    """

    stage: str
    width: float
    label: str = ""

    def resolve(self, model: str, stages: list[str]) -> dict[str, float]:
        """``{s: width}`` for the stages after ``stage`` in ``stages`` (head excluded).

        Raises:
            ConfigError: ``stage`` is not one of ``stages``.
        """
        if self.stage not in stages:
            what = self.label or f"widths above {self.stage!r}"
            raise ConfigError(f"{what}: {self.stage!r} is not a stage of {model} that can be kept; "
                              f"stages are {', '.join(stages)} (the head is always replaced)")
        return {s: self.width for s in stages[stages.index(self.stage) + 1:]}


def scaled_width(channels: int, multiplier: float) -> int:
    """``channels × multiplier`` rounded half up, at least 1."""
    return max(1, math.floor(channels * multiplier + 0.5))


def resolve_stage_widths(stage_widths: Mapping[str, float] | WidthsAbove | None, *, model: str,
                         stages: list[str], scalable: list[str]) -> dict[str, float]:
    """Validate a builder's ``stage_widths`` → ``{stage: multiplier}`` (only stages ≠ 1×).

    Args:
        stages: the model's stages without the head, in order.
        scalable: the stages whose width this builder can change.

    Raises:
        ModelError: unknown / unscalable stage (naming the valid ones) or a multiplier ≤ 0.
    """
    if stage_widths is None:
        return {}
    if isinstance(stage_widths, WidthsAbove):
        stage_widths = stage_widths.resolve(model, stages)
    if not isinstance(stage_widths, Mapping):
        raise ModelError(f"stage_widths must map stage names to multipliers, e.g. {{'block3': 0.5}}; "
                         f"got {type(stage_widths).__name__}")
    out = {}
    for s, w in stage_widths.items():
        if s not in scalable:
            raise ModelError(f"stage_widths: {model} has no stage {s!r} whose width can be "
                             f"changed; valid stages are {', '.join(scalable)}")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise ModelError(f"stage_widths[{s!r}]={w!r} must be a number > 0")
        if w != 1:
            out[s] = float(w)
    return out


def _cbr_builder(cfg_name: str) -> Builder:
    kernel, base_widths, pools = CBR_CONFIGS[cfg_name]
    names = ["stem"] + [f"block{i}" for i in range(1, len(base_widths))]

    def build(*, spatial_dims: int, in_channels: int, num_classes: int, drop_rate: float = 0.0,
              stage_widths: Mapping[str, float] | WidthsAbove | None = None):
        mult = resolve_stage_widths(stage_widths, model=cfg_name, stages=names, scalable=names)
        widths = tuple(scaled_width(c, mult.get(n, 1.0)) for n, c in zip(names, base_widths))
        model = CBR(widths=widths, kernel=kernel, pools=pools, spatial_dims=spatial_dims,
                    in_channels=in_channels, num_classes=num_classes, drop_rate=drop_rate)
        groups = [(n, (n,), n) for n in model.block_names] + [("head", ("fc",), "fc")]
        return model, groups

    return build


for _name, (_k, _w, _) in CBR_CONFIGS.items():
    register_model(_name, spatial_dims=(2, 3), min_size=8, family="cbr",
                   heavy_dims=(3,) if _name.startswith("cbr_large") else (),
                   description=f"Transfusion CBR, {_k}x{_k} kernels, widths {'-'.join(map(str, _w))}")(
        _cbr_builder(_name))
