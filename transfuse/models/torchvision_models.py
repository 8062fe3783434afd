"""ResNet-18/34/50 and Inception-v3, built by torchvision (never re-implemented here).

Parameter names are torchvision's own, so torchvision checkpoints load unchanged. For an input
with other than 3 channels the first convolution is rebuilt with ``in_channels`` inputs (weights
for it are adapted by the init strategies, not here).

ResNets take ``stage_widths`` (``{"block3": 0.5}``, see :func:`~transfuse.models.create_model`):
``layerN`` of each listed stage is rebuilt by torchvision's own ``ResNet._make_layer`` with
``planes × multiplier``; the stages after the first rebuilt one are rebuilt too (their inputs
change) and ``fc`` takes the new feature width. Rebuilt layers get torchvision's init (He-normal,
fan-out convs; BatchNorm 1/0).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn
from torchvision import models as tvm

from .registry import WidthsAbove, register_model, resolve_stage_widths, scaled_width

__all__: list[str] = []


def _replace_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if conv.in_channels == in_channels:
        return conv
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                     conv.padding, bias=conv.bias is not None)


_RESNET_PLANES = (64, 128, 256, 512)  # planes of layer1..layer4 in torchvision's ResNet
_RESNET_STAGES = ["stem", "block1", "block2", "block3", "block4"]


def _rewiden(model: tvm.ResNet, mult: dict[str, float], num_classes: int) -> None:
    """Rebuild ``layerN`` (N ≥ the first stage in ``mult``) with scaled planes, and ``fc``."""
    first = min(int(s[5:]) for s in mult)
    block = type(model.layer1[0])
    model.inplanes = 64 if first == 1 else _RESNET_PLANES[first - 2] * block.expansion
    model.dilation = 1
    for i in range(first, 5):
        planes = scaled_width(_RESNET_PLANES[i - 1], mult.get(f"block{i}", 1.0))
        n_blocks = len(getattr(model, f"layer{i}"))
        layer = model._make_layer(block, planes, n_blocks, stride=1 if i == 1 else 2)
        for m in layer.modules():  # torchvision's ResNet init (BatchNorm defaults are 1 / 0)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        setattr(model, f"layer{i}", layer)
    model.fc = nn.Linear(model.inplanes, num_classes)


def _resnet(fn):
    def build(*, spatial_dims: int, in_channels: int, num_classes: int, drop_rate: float = 0.0,
              stage_widths: Mapping[str, float] | WidthsAbove | None = None):
        mult = resolve_stage_widths(stage_widths, model=fn.__name__, stages=_RESNET_STAGES,
                                    scalable=_RESNET_STAGES[1:])
        model = fn(weights=None, num_classes=num_classes)
        if mult:
            _rewiden(model, mult, num_classes)
        model.conv1 = _replace_first_conv(model.conv1, in_channels)
        if drop_rate:
            model.fc = nn.Sequential(nn.Dropout(drop_rate), model.fc)
        head = "fc"
        groups = [("stem", ("conv1", "bn1"), "maxpool")]
        groups += [(f"block{i}", (f"layer{i}",), f"layer{i}") for i in range(1, 5)]
        groups.append(("head", (head,), head))
        return model, groups

    return build


for _n, _fn in (("resnet18", tvm.resnet18), ("resnet34", tvm.resnet34), ("resnet50", tvm.resnet50)):
    register_model(_n, spatial_dims=(2,), inflated_dims=(3,), min_size=16, family="resnet",
                   description=f"torchvision {_n}; 3D: inflated (kernels=1xkxk or kxkxk)")(_resnet(_fn))

_INCEPTION_STAGES = {
    "stem": ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"),
    "block1": ("Mixed_5b", "Mixed_5c", "Mixed_5d"),
    "block2": ("Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"),
    "block3": ("Mixed_7a", "Mixed_7b", "Mixed_7c"),
}


@register_model("inception_v3", spatial_dims=(2,), min_size=75, family="inception", probe_size=299,
                 description="torchvision Inception-v3 (no auxiliary head); inputs >= 75 px; "
                 "2D only (its blocks pool with 2D functions)")
def _inception(*, spatial_dims: int, in_channels: int, num_classes: int, drop_rate: float = 0.5):
    model = tvm.inception_v3(weights=None, aux_logits=False, init_weights=True,
                             num_classes=num_classes, dropout=drop_rate)
    model.Conv2d_1a_3x3.conv = _replace_first_conv(model.Conv2d_1a_3x3.conv, in_channels)
    groups = [("stem", _INCEPTION_STAGES["stem"], "maxpool2")]
    groups += [(k, v, v[-1]) for k, v in _INCEPTION_STAGES.items() if k != "stem"]
    groups.append(("head", ("fc",), "fc"))
    return model, groups
