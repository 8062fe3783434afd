"""U-Nets with a pretrainable encoder: ResNet-18/34/50 (torchvision), EfficientNet-Lite0 (timm; its
real ImageNet weights install offline as ``imagenet:efficientnet_lite0``) or CBR-Small, 2D,
pseudo-3D or 3D, for multi-class segmentation.

The encoder's modules are the classification model's own, at the same names (``conv1``, ``bn1``,
``layer1`` … for ResNets; ``stem``, ``block1`` … for CBRs), so a checkpoint of ``resnet34`` or
``torchvision:resnet34`` fits the encoder key for key and ``transfusion:block2`` addresses the
same layers as on the classifier. Stages: ``stem``, ``block1``… are the encoder's; ``head`` is
the decoder plus the 1×1 output conv ``seg`` (what a new task re-initialises; Mean-Var leaves it
at its default, like a classifier).

Decoder: one MONAI ``UpCat`` per ×2 upsampling (transposed conv, concatenation with the encoder
map at that stride, two conv-BN-ReLU), channels 256-128-64-32-16 (ResNets) or 128-64-32-16
(CBR), then ``seg``. Skips are the stem's activation before max-pooling (stride 2) and the
stage outputs below the bottom one.

3D (``spatial_dims=3``) is the 2D network inflated by :func:`~transfuse.models.inflate_model`
(Wacker et al. 2019, shared/reference/papers.md §3):

- ``kernels="1xkxk"`` (default): pseudo-3D — every k×k conv becomes 1×k×k, strides and pools act
  in-plane only (depth is never downsampled, any depth works); with ``through_plane=True``
  (default) four 3×1×1 conv-BN-ReLU layers mix slices, as in Wacker's AlbuNet3D: on the bottom
  map and after decoder blocks 1, 3 and the last (``decoder.through.*``, part of the head);
- ``kernels="kxkxk"``: full 3D — k×k×k kernels, isotropic strides; load 2D weights into it with
  ``inflate_state_dict(mode="center" | "mean")``.

Weights are He-normal (fan-out) for every conv, BatchNorm 1/0, biases 0. Input sides must be
multiples of the encoder's total stride (32 for ResNets, 16 for CBR; in-plane only for 1xkxk):
pad or crop (``monai.transforms.DivisiblePad``); other sizes raise a ``ModelError``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torchvision import models as tvm

from ..errors import ModelError
from .cbr import CBR, CBR_CONFIGS
from .inflate import inflate_model
from .norm import stabilise_batchnorm
from .registry import WidthsAbove, register_model, resolve_stage_widths, scaled_width
from .torchvision_models import _replace_first_conv, _rewiden

__all__ = ["UNet", "KERNELS"]

KERNELS = ("1xkxk", "kxkxk")
Tap = tuple[str, int, int]  # (encoder module, channels, stride)


class _Decoder(nn.Module):
    """``UpCat`` blocks from the bottom map up to stride 1, plus (Identity) through-plane slots."""

    def __init__(self, *, taps: Sequence[Tap], channels: Sequence[int], spatial_dims: int) -> None:
        from monai.networks.nets.basic_unet import UpCat  # lazy: MONAI costs seconds to import

        super().__init__()
        by_stride = {s: (i, c) for i, (_, c, s) in enumerate(taps[:-1])}  # the last tap per stride
        c, s = taps[-1][1], taps[-1][2]
        if 2 ** len(channels) != s:
            raise ModelError(f"decoder_channels has {len(channels)} entries but the encoder "
                             f"downsamples by {s}: give log2({s}) = {s.bit_length() - 1} widths")
        self.skip_index: list[int] = []
        blocks = []
        for out in channels:
            s //= 2
            idx, skip_c = by_stride.get(s, (-1, 0))
            blocks.append(UpCat(spatial_dims, c, skip_c, out, act="relu", norm="batch", bias=False))
            self.skip_index.append(idx)
            c = out
        self.blocks = nn.ModuleList(blocks)
        self.through = nn.ModuleList(nn.Identity() for _ in range(len(blocks) + 1))
        last = len(blocks) - 1
        # (slot, channels) of Wacker's through-plane layers: bottom, blocks 0, 2, ..., and the last.
        self.through_slots = [(0, taps[-1][1])] + [(i + 1, channels[i]) for i in range(len(blocks))
                                                   if i % 2 == 0 or i == last]

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = self.through[0](feats[-1])
        for i, (blk, idx) in enumerate(zip(self.blocks, self.skip_index)):
            x = self.through[i + 1](blk(x, feats[idx] if idx >= 0 else None))
        return x


class UNet(nn.Module):
    """Encoder (adopted modules, names unchanged) + ``UpCat`` decoder + 1×1 ``seg`` conv.

    Args:
        encoder: a network whose children, run in order, are its encoder (e.g. a torchvision
            ResNet, a :class:`~transfuse.models.cbr.CBR`, a
            :class:`~transfuse.models.med3d.Med3DEncoder`); children not in ``encoder_modules``
            (pooling, classifier) are dropped.
        encoder_modules: the children to keep, in forward order.
        taps: ``(module, channels, stride)`` of the maps the decoder uses, the bottom one last.
        num_classes: output channels ``K``.
        decoder_channels: widths of the decoder blocks, one per ×2 upsampling.
        spatial_dims: 2 or 3 (the encoder's).

    ``forward``: ``(N, C, *spatial)`` → logits ``(N, K, *spatial)``.
    """

    def __init__(self, *, encoder: nn.Module, encoder_modules: Sequence[str], taps: Sequence[Tap],
                 num_classes: int, decoder_channels: Sequence[int], spatial_dims: int = 2) -> None:
        super().__init__()
        children = dict(encoder.named_children())
        for name in encoder_modules:
            self.add_module(name, children[name])
        self.encoder_modules = tuple(encoder_modules)
        self.taps = tuple(taps)
        self.spatial_dims = spatial_dims
        self.decoder = _Decoder(taps=taps, channels=decoder_channels, spatial_dims=spatial_dims)
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.seg = conv(decoder_channels[-1], num_classes, 1)
        self.divisor = taps[-1][2]
        self.depth_divisor = self.divisor  # 1 once inflated to pseudo-3D
        self.model_label = type(encoder).__name__

    def on_inflate(self, mode: str) -> None:
        """Called by :func:`~transfuse.models.inflate_model`: 1xkxk never downsamples depth."""
        self.depth_divisor = 1 if mode == "1xkxk" else self.divisor

    def check_size(self, shape: Sequence[int]) -> None:
        """Raise a :class:`ModelError` unless every spatial side of ``shape`` is divisible."""
        sides = list(shape[2:])
        divs = [self.divisor] * len(sides)
        if len(sides) == 3:
            divs[0] = self.depth_divisor
        bad = [f"{v} (not a multiple of {d})" for v, d in zip(sides, divs) if v % d]
        if bad:
            name = getattr(self, "model_name", self.model_label)
            raise ModelError(f"{name}: input spatial size {tuple(sides)} does not fit — "
                             f"{', '.join(bad)}; pad or crop it, e.g. monai.transforms.DivisiblePad"
                             f"(k={tuple(divs)})")

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder maps listed in ``taps``, finest first.

        A tap may name a child of an encoder module (``blocks.2`` of timm's EfficientNets): that
        module's children then run one by one.
        """
        want = {t[0] for t in self.taps}
        feats = []
        for name in self.encoder_modules:
            mod = getattr(self, name)
            if any(t.startswith(name + ".") for t in want):
                for sub, child in mod.named_children():
                    x = child(x)
                    if f"{name}.{sub}" in want:
                        feats.append(x)
                continue
            x = mod(x)
            if name in want:
                feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_size(x.shape)
        return self.seg(self.decoder(self.forward_stages(x)))


def he_init(model: nn.Module) -> None:
    """He-normal (fan-out) conv weights, zero conv biases, BatchNorm 1/0 — torchvision's scheme."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def to_3d(model: UNet, *, kernels: str, through_plane: bool) -> UNet:
    """Inflate a 2D :class:`UNet` (see module doc); weights are re-drawn (He-normal)."""
    from monai.networks.blocks import Convolution

    model3d, _ = inflate_model(model, mode="1xkxk" if kernels == "1xkxk" else "center")
    if through_plane:
        for slot, ch in model3d.decoder.through_slots:
            model3d.decoder.through[slot] = Convolution(
                3, ch, ch, kernel_size=(3, 1, 1), padding=(1, 0, 0), act="relu", norm="batch",
                bias=False)
    he_init(model3d)
    return model3d


# -- registry -------------------------------------------------------------------------------------
_RESNETS = {"unet_resnet18": tvm.resnet18, "unet_resnet34": tvm.resnet34, "unet_resnet50": tvm.resnet50}
_RESNET_STAGES = ["stem", "block1", "block2", "block3", "block4"]
_RESNET_MODULES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _resnet_encoder(name: str, in_channels: int, mult: dict[str, float]) -> tuple[nn.Module, list[Tap]]:
    enc = _RESNETS[name](weights=None)
    if mult:
        _rewiden(enc, mult, 1)
    enc.conv1 = _replace_first_conv(enc.conv1, in_channels)

    def width(layer: nn.Sequential) -> int:
        last = layer[-1]
        return (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features

    taps = [("relu", 64, 2)] + [(f"layer{i}", width(getattr(enc, f"layer{i}")), 2 ** (i + 1))
                                for i in range(1, 5)]
    return enc, taps


#: timm's efficientnet_lite0 (real ImageNet weights offline: ``imagenet:efficientnet_lite0``).
#: Taps: the stem's activation and the last block at each stride.
_EFFNET = "unet_efficientnet_lite0"
_EFFNET_TAPS = [("bn1", 32, 2), ("blocks.1", 24, 4), ("blocks.2", 40, 8), ("blocks.4", 112, 16),
                ("blocks.6", 320, 32)]


def _effnet_encoder(in_channels: int, mult: dict[str, float]) -> tuple[nn.Module, list[Tap]]:
    import timm

    if mult:
        raise ModelError(f"{_EFFNET} has no width multipliers (slim needs cbr/resnet encoders)")
    enc = timm.create_model("efficientnet_lite0", pretrained=False, in_chans=in_channels,
                            num_classes=0)
    return enc, list(_EFFNET_TAPS)


def _options(name: str, spatial_dims: int, kernels: str, through_plane: bool | None) -> bool:
    if kernels not in KERNELS:
        raise ModelError(f"{name}: kernels={kernels!r} must be one of {', '.join(KERNELS)} "
                         "(1xkxk: pseudo-3D, kxkxk: full 3D)")
    if through_plane is None:
        return spatial_dims == 3 and kernels == "1xkxk"
    if through_plane and (spatial_dims != 3 or kernels != "1xkxk"):
        raise ModelError(f"{name}: through_plane=True needs spatial_dims=3 with kernels='1xkxk' "
                         "(pseudo-3D); full 3D kernels already mix slices")
    return bool(through_plane)


def _unet_builder(name: str):
    resnet = name in _RESNETS
    effnet = name == _EFFNET
    stages = (_RESNET_STAGES if resnet else
              ["stem"] + [f"block{i}" for i in range(1, 8)] if effnet else
              ["stem", "block1", "block2", "block3"])

    def build(*, spatial_dims: int, in_channels: int, num_classes: int, kernels: str = "1xkxk",
              through_plane: bool | None = None, decoder_channels: Sequence[int] | None = None,
              stage_widths: Mapping[str, float] | WidthsAbove | None = None):
        through = _options(name, spatial_dims, kernels, through_plane)
        mult = resolve_stage_widths(stage_widths, model=name, stages=stages,
                                    scalable=stages[1:] if resnet else stages)
        if effnet:
            enc, taps = _effnet_encoder(in_channels, mult)
            modules = ("conv_stem", "bn1", "blocks")
            groups = [("stem", ("conv_stem", "bn1"), "bn1")]
            groups += [(f"block{i + 1}", (f"blocks.{i}",), f"blocks.{i}") for i in range(7)]
            default_channels = (256, 128, 64, 32, 16)
        elif resnet:
            enc, taps = _resnet_encoder(name, in_channels, mult)
            modules = _RESNET_MODULES
            groups = [("stem", ("conv1", "bn1"), "maxpool")]
            default_channels = (256, 128, 64, 32, 16)
        else:
            kernel, widths, pools = CBR_CONFIGS["cbr_small"]
            widths = tuple(scaled_width(c, mult.get(n, 1.0)) for n, c in zip(stages, widths))
            enc = CBR(widths=widths, kernel=kernel, pools=pools, in_channels=in_channels,
                      num_classes=1)
            taps = [(n, c, 2 ** (i + 1)) for i, (n, c) in enumerate(zip(stages, widths))]
            modules = tuple(stages)
            groups = [("stem", ("stem",), "stem")]
            default_channels = (128, 64, 32, 16)
        if not effnet:
            groups += [(s, (m,), m) for s, m in zip(stages[1:], modules[-(len(stages) - 1):])]
        groups.append(("head", ("decoder", "seg"), "seg"))
        model = UNet(encoder=enc, encoder_modules=modules, taps=taps, num_classes=num_classes,
                     decoder_channels=tuple(decoder_channels or default_channels))
        he_init(model)
        if spatial_dims == 3:
            model = to_3d(model, kernels=kernels, through_plane=through)
        stabilise_batchnorm(model)  # batch 2, 1×1 bottom maps: constant patches (models/norm.py)
        model.model_label = name
        return model, groups

    return build


for _n in (*_RESNETS, "unet_cbr_small", _EFFNET):
    _enc = _n[5:]
    _div = 16 if _n == "unet_cbr_small" else 32
    register_model(_n, spatial_dims=(2, 3), min_size=_div, family="unet", task="segmentation",
                   size_multiple=_div, heavy_dims=(2, 3) if _n == "unet_resnet50" else (),
                   description=f"U-Net, {_enc} encoder (its keys); 3D: pseudo-3D + 3x1x1 "
                   f"through-plane, or kernels=kxkxk; sides multiple of {_div}")(
        _unet_builder(_n))
