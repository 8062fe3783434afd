"""Inflate 2D conv nets (torchvision, timm, transfuse) into 3D, and 2D state dicts into 3D ones.

Three modes say how a 2D kernel ``W`` of shape ``(O, I, k_h, k_w)`` becomes a 3D kernel ``V`` of
shape ``(O, I, k_d, k_h, k_w)`` (``t`` indexes depth):

``1xkxk`` (Wacker et al. 2019, pseudo-3D)
    ``k_d = 1``, ``V[:, :, 0] = W``; strides, padding and pooling act in-plane only
    (``(1, s, s)``), so depth is never mixed nor downsampled. Exactness: a volume of identical
    slices gives, on every slice, the 2D network's output.
``center``
    ``k_d = k_h``, ``V[:, :, t] = W if t = ⌊k_d/2⌋ else 0``; depth strides/padding copy the
    height ones. At initialisation each output only sees its own slice, so a depth-constant
    input gives the 2D response (exactly, for max-pool and conv nets).
``mean`` (I3D, Carreira & Zisserman 2017)
    ``k_d = k_h``, ``V[:, :, t] = W / k_d`` for every ``t``. A depth-constant input ``x`` gives
    ``Σ_t V[:, :, t] * x = W * x``, the 2D response, away from the depth borders (zero padding
    there changes the sum).

Transposed convolutions with depth stride ``s`` receive ``k_d / s`` taps per output slice, so
``mean`` scales them by ``s / k_d`` and ``center`` places ``W`` on the ``s`` central taps (both
keep the depth-constant response; ``k_d = s = 2`` copies ``W`` into both taps).

:func:`inflate_model` converts modules (one pass, on a copy):

=========================================== ===================================================
2D                                          3D
=========================================== ===================================================
``Conv2d``, ``ConvTranspose2d``             ``Conv3d``, ``ConvTranspose3d`` (weights per mode)
``BatchNorm2d`` (timm ``BatchNormAct2d``)   ``BatchNorm3d`` (γ, β and running statistics copied)
``InstanceNorm2d``, timm ``LayerNorm2d``    ``InstanceNorm3d``, channels-first 3D layer norm
``MaxPool2d``, ``AvgPool2d``                ``MaxPool3d``, ``AvgPool3d`` (depth as for convs)
``AdaptiveAvg/MaxPool2d((h, w))``           ``AdaptiveAvg/MaxPool3d((1, h, w))``: pools depth
``Dropout2d``, ``Upsample``                 ``Dropout3d``, ``Upsample`` (depth scale per mode)
timm squeeze-excite (``SqueezeExcite``,     :class:`SqueezeExcite3d`: same children and keys, its
``SEModule``, ``EffectiveSEModule``)        1×1 convs inflated, pools over ``(D, H, W)``
``Linear``, activations, ``Dropout``,       kept as they are (they work on any rank)
``GroupNorm``, ``LayerNorm``, ``Flatten``
=========================================== ===================================================

Containers (``Sequential``, ResNet blocks, MONAI blocks) are recursed into; their ``forward`` is
trusted to be dimension-agnostic, except for known 2D-only ones (timm's ECA, CBAM, gather-excite,
global-context and channels-last squeeze-excite modules, which average over ``(2, 3)`` or call 2D
ops), which raise. Any other leaf module raises a
:class:`~transfuse.errors.ModelError` naming its path and type; pass ``passthrough=(Type,)`` for a
custom module that works on 5-D tensors unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from .norm import STABLE_3D, BatchNormAct3d, LayerNorm3d

__all__ = ["MODES", "InflationReport", "adapt_input_conv", "Conversion", "inflate_model",
           "inflate_state_dict", "inflate_weight", "transposed_strides", "BatchNormAct3d", "LayerNorm3d",
           "SqueezeExcite3d"]

MODES = ("1xkxk", "center", "mean")
StateDict = dict[str, torch.Tensor]

_KEEP: tuple[type, ...] = (
    nn.Linear, nn.Identity, nn.Flatten, nn.Dropout, nn.AlphaDropout, nn.GroupNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
    nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus,
    nn.Softmax, nn.LogSoftmax,
)
# Parameter-free timm layers that work on any rank.
_KEEP_TIMM = {"DropPath", "Swish", "SwishMe", "Mish", "MishMe", "Sigmoid", "Tanh", "GELU",
              "GELUTanh", "HardSwish", "HardSwishMe", "HardSigmoid", "HardSigmoidMe", "HardMish",
              "HardMishMe", "QuickGELU", "PReLU"}
# timm's squeeze-excite blocks (pool over (2, 3), then their children in order, then x * gate):
# class name -> child names, in order. A module of that name with other children is refused.
_TIMM_SE: dict[str, tuple[tuple[str, ...], ...]] = {
    "SqueezeExcite": (("conv_reduce", "act1", "conv_expand", "gate"),),  # models/_efficientnet_blocks
    "SEModule": (("fc1", "bn", "act", "fc2", "gate"),  # layers/squeeze_excite (seresnet, regnety, ...)
                 ("fc1", "relu", "fc2", "sigmoid")),   # models/senet (legacy_seresnet)
    "EffectiveSEModule": (("fc", "gate"),),  # layers/squeeze_excite (ese_vovnet)
}
# Containers whose forward is 2D-only (e.g. ``x.mean((2, 3))``): silently wrong on volumes
# (the squeeze-excite names stay here for a variant whose children differ from _TIMM_SE).
_DENY = {"SqueezeExcite", "SEModule", "EffectiveSEModule", "SqueezeExciteCl", "EcaModule",
         "CecaModule", "CbamModule", "LightCbamModule", "GatherExcite", "GlobalContext",
         "BlurPool2d", "SpaceToDepth", "Inception3"}


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError(f"inflation mode {mode!r} is not one of {', '.join(MODES)}")


@dataclass(frozen=True)
class Conversion:
    """One converted module: its path (``""`` is the root) and types/shapes before and after."""

    path: str
    before: str
    after: str


@dataclass
class InflationReport:
    """What :func:`inflate_model` did: every converted module, every kept leaf module.

    Attributes:
        mode: ``1xkxk``, ``center`` or ``mean``.
        converted: modules replaced by their 3D counterparts, in module order.
        kept: leaf modules kept as they are (dimension-agnostic).
        input_conv: note on the input-channel adaptation of the first convolution, if any.
    """

    mode: str
    converted: list[Conversion] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    input_conv: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "input_conv": self.input_conv, "kept": list(self.kept),
                "converted": [c.__dict__ for c in self.converted]}

    def summary(self) -> str:
        extra = f"; {self.input_conv}" if self.input_conv else ""
        return (f"inflated ({self.mode}): {len(self.converted)} modules converted, "
                f"{len(self.kept)} kept{extra}")


# -- tensors --------------------------------------------------------------------------------------
def inflate_weight(w: torch.Tensor, *, depth: int, mode: str,
                   transposed_stride: int | None = None) -> torch.Tensor:
    """Inflate a 2D kernel ``(O, I, k_h, k_w)`` to ``(O, I, depth, k_h, k_w)`` (see module doc).

    Args:
        w: the 2D kernel (for a transposed conv, its ``(I, O/groups, k_h, k_w)`` weight).
        depth: kernel depth ``k_d`` (``1`` for ``1xkxk``).
        mode: ``1xkxk``, ``center`` or ``mean``.
        transposed_stride: depth stride ``s`` if ``w`` belongs to a transposed convolution.

    Returns:
        A new tensor, same dtype and device.

    Raises:
        ModelError: ``1xkxk`` with ``depth != 1``, or ``depth < 1``.
    """
    _check_mode(mode)
    if w.ndim != 4:
        raise ModelError(f"inflate_weight expects a 2D kernel (O, I, kh, kw), got shape {tuple(w.shape)}")
    if depth < 1 or (mode == "1xkxk" and depth != 1):
        raise ModelError(f"inflation mode {mode!r} cannot make a kernel of depth {depth}; "
                         "1xkxk makes depth 1, center/mean any depth >= 1")
    v = w.unsqueeze(2)
    if depth == 1:
        return v.clone()
    s = min(transposed_stride or 1, depth)
    if mode == "mean":
        return v.repeat(1, 1, depth, 1, 1) * (s / depth)
    out = torch.zeros(*w.shape[:2], depth, *w.shape[2:], dtype=w.dtype, device=w.device)
    start = (depth - s) // 2 if transposed_stride else depth // 2
    out[:, :, start:start + s] = v
    return out


def adapt_input_conv(w: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a conv weight ``(O, I, *k)`` to ``(O, in_channels, *k)``, as timm does.

    1 channel: sum over the inputs (a gray image is R = G = B, so the response is unchanged);
    N channels: repeat the inputs cyclically and scale by I / N (keeps the activation scale).

    Args:
        w: weight of the pretrained first convolution.
        in_channels: input channels of the target.

    Returns:
        The adapted weight, same dtype.
    """
    i = w.shape[1]
    if in_channels == i:
        return w.clone()
    if in_channels == 1:
        return w.sum(dim=1, keepdim=True)
    reps = -(-in_channels // i)
    return (w.repeat(1, reps, *([1] * (w.ndim - 2)))[:, :in_channels] * (i / in_channels)).contiguous()


def inflate_state_dict(state2d: Mapping[str, torch.Tensor], *,
                       target_state: Mapping[str, torch.Tensor] | None = None,
                       target_shapes: Mapping[str, Sequence[int]] | None = None,
                       mode: str = "1xkxk",
                       transposed: Mapping[str, int] | None = None) -> tuple[StateDict, dict[str, str]]:
    """Inflate the 2D conv kernels of a state dict to the kernel depths of a 3D target.

    A pure function for the init framework (a 2D pretrained source loaded into a 3D model). A
    source tensor ``(O, I, k_h, k_w)`` whose target is ``(O', I', k_d, k_h, k_w)`` becomes
    ``(O, I, k_d, k_h, k_w)`` — output/input channels stay the source's, so the input conv can be
    adapted afterwards as for 2D. Every other tensor (norms, linear layers, keys the target lacks)
    is returned unchanged (the same tensor object).

    Args:
        state2d: the 2D source ``{key: tensor}``.
        target_state: the 3D model's ``state_dict()`` (only shapes are read), or
        target_shapes: ``{key: shape}`` of the 3D model (exactly one of the two).
        mode: ``1xkxk``, ``center`` or ``mean``.
        transposed: ``{key: depth stride}`` of transposed-conv weights (from
            :func:`transposed_strides`), whose scaling differs (see module doc).

    Returns:
        ``(state3d, notes)``: the new state dict (same keys as ``state2d``) and ``{key: note}`` for
        every inflated tensor, e.g. ``"7×7 → 1×7×7 (1xkxk)"``.

    Raises:
        ConfigError: neither or both targets given; unknown mode.
        ModelError: a target kernel depth the mode cannot make (``1xkxk`` into ``k×k×k``).
    """
    _check_mode(mode)
    if (target_state is None) == (target_shapes is None):
        raise ConfigError("inflate_state_dict needs exactly one of target_state= or target_shapes=")
    shapes = ({k: tuple(v.shape) for k, v in target_state.items()} if target_state is not None
              else {k: tuple(v) for k, v in target_shapes.items()})
    transposed = transposed or {}
    out: StateDict = {}
    notes: dict[str, str] = {}
    for k, v in state2d.items():
        t = shapes.get(k)
        if t is None or v.ndim != 4 or len(t) != 5 or tuple(t[3:]) != tuple(v.shape[2:]):
            out[k] = v
            continue
        if mode == "1xkxk" and t[2] != 1:
            raise ModelError(f"{k}: the target kernel is {'×'.join(map(str, t[2:]))} but mode '1xkxk' "
                             "makes depth 1; use mode='center' or 'mean' for a full 3D target")
        out[k] = inflate_weight(v, depth=t[2], mode=mode, transposed_stride=transposed.get(k))
        notes[k] = f"{'×'.join(map(str, v.shape[2:]))} → {'×'.join(map(str, t[2:]))} ({mode})"
    return out, notes


def transposed_strides(model: nn.Module) -> dict[str, int]:
    """``{state-dict key: depth stride}`` of every ``ConvTranspose3d`` weight in ``model`` (the
    ``transposed=`` argument of :func:`inflate_state_dict`)."""
    return {f"{n}.weight" if n else "weight": m.stride[0] for n, m in model.named_modules()
            if isinstance(m, nn.ConvTranspose3d)}


# -- modules --------------------------------------------------------------------------------------
def _depth_of(mode: str, k: int, s: int, p: Any, d: int = 1) -> tuple[int, int, Any, int]:
    """Kernel, stride, padding, dilation along depth."""
    return (1, 1, 0, 1) if mode == "1xkxk" else (k, s, p, d)


def _where(m: nn.Module) -> dict[str, Any]:
    t = next(iter(m.parameters()), None)
    if t is None:
        t = next(iter(m.buffers()), None)
    return {} if t is None else {"device": t.device, "dtype": t.dtype}


def _label(m: nn.Module) -> str:
    """``Conv2d 7×7``, ``Conv3d 1×7×7``, ``BatchNorm3d``: a module's type and kernel."""
    conv = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    kernel = f" {'×'.join(map(str, m.weight.shape[2:]))}" if isinstance(m, conv) else ""
    return type(m).__name__ + kernel


def _conv(m: nn.Conv2d | nn.ConvTranspose2d, mode: str, weight: torch.Tensor) -> nn.Module:
    transposed = isinstance(m, nn.ConvTranspose2d)
    pad = m.padding
    kd, sd, pd, dd = _depth_of(mode, m.kernel_size[0], m.stride[0],
                               None if isinstance(pad, str) else pad[0], m.dilation[0])
    kw: dict[str, Any] = {"kernel_size": (kd, *m.kernel_size), "stride": (sd, *m.stride),
                          "dilation": (dd, *m.dilation), "groups": m.groups,
                          "bias": m.bias is not None, "padding_mode": m.padding_mode,
                          "padding": pad if isinstance(pad, str) else (pd, *pad)}
    in_ch = weight.shape[0] if transposed else weight.shape[1] * m.groups
    if transposed:
        op = m.output_padding
        kw["output_padding"] = (0 if mode == "1xkxk" else op[0], *op)
        new = nn.ConvTranspose3d(in_ch, m.out_channels, device="meta", **kw)
    else:
        new = nn.Conv3d(in_ch, m.out_channels, device="meta", **kw)
    w = inflate_weight(weight.detach(), depth=kd, mode=mode, transposed_stride=sd if transposed else None)
    new.weight = nn.Parameter(w, requires_grad=m.weight.requires_grad)
    if m.bias is not None:
        new.bias = nn.Parameter(m.bias.detach().clone(), requires_grad=m.bias.requires_grad)
    return new


def _norm(m: nn.Module, cls: type, **extra: Any) -> nn.Module:
    if isinstance(m, nn.LayerNorm):
        new = cls(m.normalized_shape, eps=m.eps, elementwise_affine=m.elementwise_affine,
                  bias=m.bias is not None, **_where(m))
    else:
        new = cls(m.num_features, eps=m.eps, momentum=m.momentum, affine=m.affine,
                  track_running_stats=m.track_running_stats, **extra, **_where(m))
    new.load_state_dict(m.state_dict())
    return new


def _pool(m: nn.Module, mode: str) -> nn.Module:
    def trip(v: Any) -> tuple:
        v = (v, v) if isinstance(v, int) else tuple(v)
        return v

    k, s, p = trip(m.kernel_size), trip(m.stride if m.stride is not None else m.kernel_size), trip(m.padding)
    if isinstance(m, nn.MaxPool2d):
        kd, sd, pd, dd = _depth_of(mode, k[0], s[0], p[0], trip(m.dilation)[0])
        return nn.MaxPool3d((kd, *k), (sd, *s), (pd, *p), (dd, *trip(m.dilation)),
                            return_indices=m.return_indices, ceil_mode=m.ceil_mode)
    kd, sd, pd, _ = _depth_of(mode, k[0], s[0], p[0])
    return nn.AvgPool3d((kd, *k), (sd, *s), (pd, *p), ceil_mode=m.ceil_mode,
                        count_include_pad=m.count_include_pad, divisor_override=m.divisor_override)


def _adaptive(m: nn.Module) -> nn.Module:
    size = m.output_size
    size = (size, size) if isinstance(size, int) or size is None else tuple(size)
    cls = nn.AdaptiveAvgPool3d if isinstance(m, nn.AdaptiveAvgPool2d) else nn.AdaptiveMaxPool3d
    return cls((1, *size)) if cls is nn.AdaptiveAvgPool3d else cls((1, *size), return_indices=m.return_indices)


def _upsample(m: nn.Upsample, mode: str, path: str) -> nn.Module:
    if m.size is not None:
        raise ModelError(f"cannot inflate {path or 'the model'} (nn.Upsample with a fixed size "
                         f"{m.size}): its depth is unknown; use scale_factor instead")
    sf = m.scale_factor
    sf = (sf, sf) if not isinstance(sf, tuple) else sf
    depth = 1.0 if mode == "1xkxk" else sf[0]
    interp = {"bilinear": "trilinear", "nearest": "nearest", "nearest-exact": "nearest-exact"}.get(m.mode)
    if interp is None:
        raise ModelError(f"cannot inflate {path or 'the model'} (nn.Upsample mode {m.mode!r}): "
                         "only nearest and bilinear have a 3D counterpart")
    return nn.Upsample(scale_factor=(depth, *sf), mode=interp, align_corners=m.align_corners)


class SqueezeExcite3d(nn.Module):
    """The any-rank twin of a timm squeeze-excite block (``SqueezeExcite``, ``SEModule``,
    ``EffectiveSEModule``): the same children under the same names (so the same state-dict keys),
    whose 1×1 convolutions :func:`inflate_model` inflates like any other.

    ``forward``: ``s = x.mean(spatial dims)`` (``+ amax`` halves if the source had
    ``add_maxpool``), then each child in order (reduce, act, expand, gate), then ``x * s``. On a
    depth-constant volume it gives, on every slice, the 2D block's output.
    """

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        self.source = f"{type(source).__module__}.{type(source).__name__}"
        self.add_maxpool = bool(getattr(source, "add_maxpool", False))
        for name, child in source.named_children():
            self.add_module(name, child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.ndim))
        s = x.mean(dims, keepdim=True)
        if self.add_maxpool:
            s = 0.5 * s + 0.5 * x.amax(dims, keepdim=True)
        for child in self.children():
            s = child(s)
        return x * s

    def extra_repr(self) -> str:
        return f"source={self.source}" + (", add_maxpool=True" if self.add_maxpool else "")


def _timm_se(m: nn.Module) -> bool:
    """``m`` is one of timm's squeeze-excite blocks, with the children its forward uses."""
    t = type(m)
    want = _TIMM_SE.get(t.__name__)
    if want is None or not t.__module__.startswith("timm."):
        return False
    names = tuple(n for n, _ in m.named_children())
    own = next(iter((*m.parameters(recurse=False), *m.buffers(recurse=False))), None)
    return own is None and names in want


def _kept(m: nn.Module, passthrough: tuple[type, ...]) -> bool:
    t = type(m)
    if t in _KEEP or isinstance(m, passthrough):
        return True
    if t.__module__.startswith("timm.") and t.__name__ in _KEEP_TIMM:
        return True
    return t is nn.LayerNorm


def _convert(m: nn.Module, path: str, mode: str, first: str | None,
             first_w: torch.Tensor | None) -> nn.Module | None:
    """The 3D replacement of ``m`` (``None``: keep it, recurse into its children)."""
    t, name = type(m), type(m).__name__
    if t in (nn.Conv2d, nn.ConvTranspose2d):
        return _conv(m, mode, first_w if path == first else m.weight)
    if t is nn.BatchNorm2d:
        return _norm(m, nn.BatchNorm3d)
    if t in STABLE_3D:  # models/norm.py: the 3D twin keeps the degenerate-batch fallback
        extra = {"drop": m.drop, "act": m.act} if hasattr(m, "act") else {}
        return _norm(m, STABLE_3D[t], **extra)
    if name == "BatchNormAct2d" and isinstance(m, nn.BatchNorm2d) and hasattr(m, "act"):
        return _norm(m, BatchNormAct3d, drop=m.drop, act=m.act)
    if t is nn.InstanceNorm2d:
        return _norm(m, nn.InstanceNorm3d)
    if name == "LayerNorm2d" and isinstance(m, nn.LayerNorm):
        return _norm(m, LayerNorm3d)
    if t in (nn.MaxPool2d, nn.AvgPool2d):
        return _pool(m, mode)
    if t in (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
        return _adaptive(m)
    if t is nn.Dropout2d:
        return nn.Dropout3d(m.p, inplace=m.inplace)
    if t is nn.Upsample:
        return _upsample(m, mode, path)
    if _timm_se(m):  # its children (1×1 convs, norm, activations) are inflated by _walk
        return SqueezeExcite3d(m)
    return None


def _walk(m: nn.Module, path: str, mode: str, first: str | None, first_w: torch.Tensor | None,
          passthrough: tuple[type, ...], report: InflationReport) -> nn.Module:
    new = _convert(m, path, mode, first, first_w)
    if new is not None:
        new.train(m.training)
        report.converted.append(Conversion(path, _label(m), _label(new)))
        m = new  # BatchNormAct3d, SqueezeExcite3d carry children that are inflated below
    elif _kept(m, passthrough):
        report.kept.append(path)
        return m
    else:
        own = [n for n, _ in (*m.named_parameters(recurse=False), *m.named_buffers(recurse=False))]
        has_children = any(True for _ in m.children())
        container = isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict))
        if type(m).__name__ in _DENY or own or not (has_children or container):
            where = path or "the model"
            why = ("its forward is 2D-only" if type(m).__name__ in _DENY else "no 3D counterpart known"
                   + (f" for a module holding tensors ({', '.join(own[:3])})" if own else ""))
            raise ModelError(f"cannot inflate {where} ({type(m).__module__}.{type(m).__name__}): {why}; "
                             "pass passthrough=(ThatType,) if it works on 5-D tensors unchanged")
    for cname, child in list(m.named_children()):
        setattr(m, cname, _walk(child, f"{path}.{cname}" if path else cname, mode, first, first_w,
                                passthrough, report))
    return m


def inflate_model(model2d: nn.Module, *, mode: str = "1xkxk", in_channels: int | None = None,
                  passthrough: tuple[type, ...] = ()) -> tuple[nn.Module, InflationReport]:
    """A 3D copy of a 2D conv net, its weights inflated per ``mode`` (see module doc).

    Args:
        model2d: any 2D network (torchvision, timm, transfuse); left unchanged.
        mode: ``1xkxk`` (pseudo-3D), ``center`` or ``mean`` (full 3D).
        in_channels: input channels of the 3D model; the first convolution (in module order) is
            adapted in the same pass (1: sum over channels; N: repeat, × C/N — as timm).
        passthrough: extra module types to keep as they are (they must accept 5-D tensors).

    Returns:
        ``(model3d, report)``: the model maps ``(N, C, D, H, W)`` where the 2D one mapped
        ``(N, C, H, W)``; classifiers pool over depth too, fully-convolutional nets return
        ``(N, K, D', H', W')``. A ``spatial_dims`` attribute, if present, is set to 3, and a
        model's ``on_inflate(mode)`` method, if it has one, is called; ``stage_info`` stays valid
        (same names, modules, channels and in-plane strides).

    Raises:
        ConfigError: unknown mode.
        ModelError: a module with no 3D counterpart (its path and type in the message),
            ``in_channels < 1``, or no convolution to adapt.
    """
    _check_mode(mode)
    report = InflationReport(mode=mode)
    model = copy.deepcopy(model2d)
    first, first_w = None, None
    if in_channels is not None:
        if in_channels < 1:
            raise ModelError(f"in_channels={in_channels} must be >= 1")
        first, conv = next(((n, c) for n, c in model.named_modules() if type(c) is nn.Conv2d), (None, None))
        if conv is None:
            raise ModelError(f"inflate_model(in_channels={in_channels}): {type(model2d).__name__} "
                             "has no Conv2d to adapt")
        first_w = conv.weight.detach()
        if conv.in_channels != in_channels:
            if conv.groups != 1:
                raise ModelError(f"cannot adapt {first}: a grouped first convolution (groups={conv.groups})")
            first_w = adapt_input_conv(first_w, in_channels)
            how = "sum over channels" if in_channels == 1 else f"repeated, × {conv.in_channels}/{in_channels}"
            report.input_conv = f"{first}: input channels {conv.in_channels} → {in_channels} ({how})"
    model = _walk(model, "", mode, first, first_w, tuple(passthrough), report)
    if hasattr(model, "spatial_dims"):
        model.spatial_dims = 3
    if callable(getattr(model, "on_inflate", None)):  # e.g. the U-Net's size check learns the mode
        model.on_inflate(mode)
    return model, report
