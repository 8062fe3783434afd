"""``seg_unet_tiny``: a small 2D/3D U-Net for segmentation, built from MONAI's DynUNet blocks.

Four levels of ``UnetBasicBlock`` (two 3×3(×3) convs, instance norm, leaky ReLU; widths 8-16-32-64,
stride 2 between levels), a decoder of ``UnetUpBlock`` (transposed conv, skip concatenation, two
convs) and a 1×1 ``UnetOutBlock``. It maps ``(N, C, *spatial)`` to logits ``(N, K, *spatial)``;
every spatial side must be a multiple of 8. Stages: ``stem`` and ``block1``–``block3`` are the
encoder levels; ``head`` is the decoder plus the output conv (what a new task re-initialises).
Registered with ``task="segmentation"``, which ``check_compatible`` matches against the data. It
is the fast model of the segmentation tests and benchmark; the pretrainable U-Nets are in
:mod:`transfuse.models.unet`.
"""

from __future__ import annotations

import torch
from torch import nn

from .registry import register_model

__all__ = ["TinyUNet"]


class TinyUNet(nn.Module):
    """U-Net with encoder stages ``stem``, ``block1``..``block3`` and a ``decoder`` + ``out`` head.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        num_classes: output channels (classes including background).
        widths: channels per level, finest first.
    """

    def __init__(self, *, spatial_dims: int, in_channels: int, num_classes: int,
                 widths: tuple[int, ...] = (8, 16, 32, 64)) -> None:
        from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, UnetUpBlock

        super().__init__()
        self.block_names = ["stem"] + [f"block{i}" for i in range(1, len(widths))]
        ins = (in_channels,) + tuple(widths[:-1])
        for name, cin, cout, stride in zip(self.block_names, ins, widths, [1] + [2] * (len(widths) - 1)):
            self.add_module(name, UnetBasicBlock(spatial_dims, cin, cout, kernel_size=3,
                                                 stride=stride, norm_name="instance"))
        self.decoder = nn.ModuleList(
            UnetUpBlock(spatial_dims, widths[i], widths[i - 1], kernel_size=3, stride=1,
                        upsample_kernel_size=2, norm_name="instance")
            for i in range(len(widths) - 1, 0, -1))
        self.out = UnetOutBlock(spatial_dims, widths[0], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for name in self.block_names:
            x = getattr(self, name)(x)
            skips.append(x)
        x = skips.pop()
        for up in self.decoder:  # coarsest first; each step doubles the resolution
            x = up(x, skips.pop())
        return self.out(x)


def _build(*, spatial_dims: int, in_channels: int, num_classes: int):
    model = TinyUNet(spatial_dims=spatial_dims, in_channels=in_channels, num_classes=num_classes)
    groups = [(n, (n,), n) for n in model.block_names] + [("head", ("decoder", "out"), "out")]
    return model, groups


register_model("seg_unet_tiny", spatial_dims=(2, 3), min_size=8, family="unet",
               description="tiny MONAI U-Net (8-16-32-64) for segmentation; sides multiple of 8",
               task="segmentation", size_multiple=8)(_build)
