"""Med3D / MedicalNet 3D ResNets (Chen, Ma, Zheng 2019; github.com/Tencent/MedicalNet).

The architecture and parameter names follow MedicalNet's ``models/resnet.py`` exactly, so its
released checkpoints load unchanged once ``clean_keys`` has stripped their ``module.`` prefix
(shared/reference/papers.md §2.3):

- stem: ``conv1`` 7×7×7 stride 2 (no bias) → ``bn1`` → ReLU → ``maxpool`` 3×3×3 stride 2;
- ``layer1`` 64 planes stride 1, ``layer2`` 128 planes stride 2, ``layer3`` 256 planes stride 1
  dilation 2, ``layer4`` 512 planes stride 1 dilation 4 (output stride 8); 3×3×3 convs have
  ``padding = dilation``, the dilation applies to every block of the stage;
- BasicBlock (10/18/34) or Bottleneck ×4 (50/101/152/200);
- shortcut ``A``: 1×1×1 average pool with the stride (a subsampling), channels zero-padded —
  no parameters; shortcut ``B``: ``downsample.0`` 1×1×1 conv + ``downsample.1`` BatchNorm.
  MedicalNet's defaults: A for 18 and 34, B otherwise (``MED3D_DEPTHS``);
- He-normal (fan-out) conv init, BatchNorm 1 / 0.

Why not MONAI's ``monai.networks.nets.ResNet``: its keys match, but its blocks have no dilation
and its ``layer3``/``layer4`` have stride 2 (output stride 32), so MedicalNet weights would run
at a different geometry than they were trained with.

Three heads on one backbone (same encoder keys):

- :class:`Med3DEncoder` — features per stage (``forward`` → list of maps), for U-Nets and the
  multi-dataset pretraining (one shared encoder, one head per dataset);
- :class:`Med3DResNet` — classification: global average pool + ``fc``;
- :class:`Med3DSeg` — MedicalNet's segmentation head ``conv_seg`` (ConvTranspose ×2 → conv →
  1×1×1 conv), logits at stride 4, or trilinearly upsampled to the input size (no parameters).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .cbr import PooledLinearHead
from .registry import WidthsAbove, register_model, resolve_stage_widths, scaled_width

__all__ = ["MED3D_DEPTHS", "Med3DEncoder", "Med3DResNet", "Med3DSeg", "conv_seg_head", "BasicBlock3d", "Bottleneck3d",
           "ShortcutA"]

# depth -> (block, blocks per stage, MedicalNet's default shortcut)
MED3D_DEPTHS: dict[int, tuple[str, tuple[int, int, int, int], str]] = {
    10: ("basic", (1, 1, 1, 1), "B"),
    18: ("basic", (2, 2, 2, 2), "A"),
    34: ("basic", (3, 4, 6, 3), "A"),
    50: ("bottleneck", (3, 4, 6, 3), "B"),
    101: ("bottleneck", (3, 4, 23, 3), "B"),
    152: ("bottleneck", (3, 8, 36, 3), "B"),
    200: ("bottleneck", (3, 24, 36, 3), "B"),
}
STAGES = ("stem", "block1", "block2", "block3", "block4")
_PLANES = (64, 128, 256, 512)
_STRIDES = (1, 2, 1, 1)
_DILATIONS = (1, 1, 2, 4)


def _conv3(cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class ShortcutA(nn.Module):
    """MedicalNet's ``downsample_basic_block``: subsample by ``stride``, zero-pad the channels.

    ``(N, C, D, H, W)`` → ``(N, planes, ⌈D/s⌉, ⌈H/s⌉, ⌈W/s⌉)``; no parameters.
    """

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes, self.stride = planes, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:  # avg_pool3d(kernel_size=1, stride=s) is a plain subsampling
            x = x[:, :, ::self.stride, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, 0, 0, self.planes - x.shape[1]))


class BasicBlock3d(nn.Module):
    """Two 3×3×3 convs (MedicalNet ``BasicBlock``); keys ``conv1 bn1 conv2 bn2 [downsample]``."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, *, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3(inplanes, planes, stride=stride, dilation=dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class Bottleneck3d(nn.Module):
    """1×1×1 → 3×3×3 (stride, dilation) → 1×1×1 ×4 (MedicalNet ``Bottleneck``)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, *, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, stride=stride, dilation=dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


class _Backbone(nn.Module):
    """Stem + ``layer1..4`` with MedicalNet's names; shared by the three heads."""

    def __init__(self, *, depth: int, shortcut_type: str | None = None, in_channels: int = 1,
                 widths: Mapping[str, float] | None = None) -> None:
        super().__init__()
        if depth not in MED3D_DEPTHS:
            raise ModelError(f"Med3D depth {depth} is not one of {', '.join(map(str, MED3D_DEPTHS))}")
        kind, blocks, default_sc = MED3D_DEPTHS[depth]
        shortcut_type = default_sc if shortcut_type is None else shortcut_type
        if shortcut_type not in ("A", "B"):
            raise ModelError(f"shortcut_type={shortcut_type!r} must be 'A' (parameter-free) or 'B' "
                             "(1×1×1 conv + BatchNorm)")
        if in_channels < 1:
            raise ModelError(f"in_channels={in_channels} must be >= 1")
        self.depth, self.shortcut_type = depth, shortcut_type
        block = BasicBlock3d if kind == "basic" else Bottleneck3d
        widths = dict(widths or {})
        self.conv1 = nn.Conv3d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(3, stride=2, padding=1)
        inplanes = 64
        chans = [64]
        for i, (n, planes, stride, dil) in enumerate(zip(blocks, _PLANES, _STRIDES, _DILATIONS), 1):
            planes = scaled_width(planes, widths.get(f"block{i}", 1.0))
            layer, inplanes = self._make_layer(block, inplanes, planes, n, stride, dil, shortcut_type)
            self.add_module(f"layer{i}", layer)
            chans.append(inplanes)
        self.num_features = inplanes
        self.feature_info = [
            {"module": m, "num_chs": c, "reduction": r}
            for m, c, r in zip(("relu", "layer1", "layer2", "layer3", "layer4"), chans, (2, 4, 8, 8, 8))]
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_layer(block: type, inplanes: int, planes: int, n: int, stride: int, dilation: int,
                    shortcut_type: str) -> tuple[nn.Sequential, int]:
        out = planes * block.expansion
        down: nn.Module | None = None
        if stride != 1 or inplanes != out:
            # A cannot narrow the channels (only a width-multiplied model asks that): project.
            if shortcut_type == "A" and out >= inplanes:
                down = ShortcutA(out, stride)
            else:
                down = nn.Sequential(nn.Conv3d(inplanes, out, 1, stride=stride, bias=False),
                                     nn.BatchNorm3d(out))
        layers = [block(inplanes, planes, stride=stride, dilation=dilation, downsample=down)]
        layers += [block(out, planes, dilation=dilation) for _ in range(1, n)]
        return nn.Sequential(*layers), out

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, C, D, H, W)`` → five maps, as ``feature_info`` lists them: the stem's activation
        before max-pooling (stride 2, 64 channels) and ``layer1..4`` (strides 4, 8, 8, 8)."""
        x = self.relu(self.bn1(self.conv1(x)))
        out = [x]
        x = self.maxpool(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            out.append(x)
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, D, H, W)`` → ``layer4`` map ``(N, num_features, ⌈D/8⌉, ⌈H/8⌉, ⌈W/8⌉)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class Med3DEncoder(_Backbone):
    """The Med3D backbone alone; its ``state_dict`` is a MedicalNet pretraining checkpoint's.

    Args:
        depth: 10, 18, 34, 50, 101, 152 or 200.
        shortcut_type: ``"A"`` or ``"B"``; ``None`` is MedicalNet's default for the depth.
        in_channels: input channels (MedicalNet: 1).
        widths: ``{"block3": 0.5, ...}`` stage → channel-width multiplier (``slim``).

    ``forward(x)`` returns :meth:`forward_stages`; ``feature_info`` gives each map's module,
    channels and reduction.
    """

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_stages(x)


class Med3DResNet(PooledLinearHead, _Backbone):
    """Med3D classifier: backbone → global average pool → dropout → ``fc``.

    ``(N, in_channels, D, H, W)`` → logits ``(N, num_classes)``. Other args as
    :class:`Med3DEncoder`.
    """

    def __init__(self, *, depth: int, num_classes: int, shortcut_type: str | None = None,
                 in_channels: int = 1, drop_rate: float = 0.0,
                 widths: Mapping[str, float] | None = None) -> None:
        super().__init__(depth=depth, shortcut_type=shortcut_type, in_channels=in_channels,
                         widths=widths)
        self.global_pool = nn.AdaptiveAvgPool3d(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes)


def conv_seg_head(in_channels: int, num_classes: int) -> nn.Sequential:
    """MedicalNet's ``conv_seg`` head (keys ``0 1 3 4 6``), He-normal (fan-out) convs.

    ``(N, in_channels, d, h, w)`` → logits ``(N, num_classes, 2d, 2h, 2w)``.
    """
    head = nn.Sequential(
        nn.ConvTranspose3d(in_channels, 32, 2, stride=2),
        nn.BatchNorm3d(32),
        nn.ReLU(inplace=True),
        nn.Conv3d(32, 32, 3, padding=1, bias=False),
        nn.BatchNorm3d(32),
        nn.ReLU(inplace=True),
        nn.Conv3d(32, num_classes, 1, bias=False),
    )
    for m in head.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return head


class Med3DSeg(_Backbone):
    """Med3D with MedicalNet's segmentation head ``conv_seg`` (keys ``conv_seg.0 .1 .3 .4 .6``).

    Args:
        num_classes: segmentation classes (MedicalNet's ``n_seg_classes``).
        upsample: ``True``: logits trilinearly resized to the input size ``(N, K, D, H, W)``;
            ``False``: MedicalNet's output at stride 4, ``(N, K, ⌈D/4⌉, ⌈H/4⌉, ⌈W/4⌉)`` (it resizes
            the labels instead).
        Other args as :class:`Med3DEncoder`.
    """

    def __init__(self, *, depth: int, num_classes: int, shortcut_type: str | None = None,
                 in_channels: int = 1, upsample: bool = True,
                 widths: Mapping[str, float] | None = None) -> None:
        super().__init__(depth=depth, shortcut_type=shortcut_type, in_channels=in_channels,
                         widths=widths)
        self.upsample = upsample
        self.conv_seg = conv_seg_head(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_seg(self.forward_features(x))
        if self.upsample and out.shape[2:] != x.shape[2:]:
            out = F.interpolate(out, size=x.shape[2:], mode="trilinear", align_corners=False)
        return out


# -- registry -------------------------------------------------------------------------------------
_HEAVY = (18, 34, 50, 101, 152, 200)  # > 30M parameters: seconds per test on CPU


def _builder(depth: int, seg: bool):
    name = f"med3d_{'seg_' if seg else ''}resnet{depth}"

    def build(*, spatial_dims: int, in_channels: int, num_classes: int,
              shortcut_type: str | None = None, drop_rate: float = 0.0, upsample: bool = True,
              stage_widths: Mapping[str, float] | WidthsAbove | None = None):
        widths = resolve_stage_widths(stage_widths, model=name, stages=list(STAGES),
                                      scalable=list(STAGES[1:]))
        kw = {"depth": depth, "num_classes": num_classes, "shortcut_type": shortcut_type,
              "in_channels": in_channels, "widths": widths}
        if seg:
            if drop_rate:
                raise ModelError(f"{name} has no dropout (drop_rate={drop_rate}); MedicalNet's "
                                 "conv_seg head has none")
            model: nn.Module = Med3DSeg(upsample=upsample, **kw)
            head = "conv_seg"
        else:
            if upsample is not True:
                raise ModelError(f"{name} is a classifier: upsample= applies to med3d_seg_* models")
            model = Med3DResNet(drop_rate=drop_rate, **kw)
            head = "fc"
        groups = [("stem", ("conv1", "bn1"), "maxpool")]
        groups += [(f"block{i}", (f"layer{i}",), f"layer{i}") for i in range(1, 5)]
        groups.append(("head", (head,), head))
        return model, groups

    return name, build


for _d, (_kind, _blocks, _sc) in MED3D_DEPTHS.items():
    _desc = f"Med3D/MedicalNet 3D ResNet-{_d} ({_kind}, shortcut {_sc}), output stride 8"
    _n, _fn = _builder(_d, seg=False)
    register_model(_n, spatial_dims=(3,), min_size=16, family="med3d", description=_desc,
                   heavy_dims=(3,) if _d in _HEAVY else ())(_fn)
    _n, _fn = _builder(_d, seg=True)
    register_model(_n, spatial_dims=(3,), min_size=16, family="med3d", task="segmentation",
                   description=_desc + ", MedicalNet conv_seg head",
                   heavy_dims=(3,) if _d in _HEAVY else ())(_fn)
