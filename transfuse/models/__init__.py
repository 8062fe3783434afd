"""Models: one contract for 2D and 3D, named stages, built by the library that owns them.

>>> model = create_model("cbr_small", spatial_dims=3, in_channels=1, num_classes=2)
>>> [s.name for s in model.stage_info]
['stem', 'block1', 'block2', 'block3', 'head']
"""

import importlib
from typing import Any

from ._stages import Stage, get_stages, stage_module, stage_names, stage_of, stage_parameters
from .registry import MODELS, create_model, list_models, model_info, register_model

# Builders register themselves when their module is imported; MODELS imports them on its first
# lookup or listing (registry.BUILDER_MODULES), and the names below load on first use, so
# ``import transfuse.models`` costs torch and the CBRs only (no torchvision, MONAI or timm).
_LAZY = {
    "InflationReport": "inflate", "adapt_input_conv": "inflate", "inflate_model": "inflate",
    "inflate_state_dict": "inflate", "inflate_weight": "inflate", "transposed_strides": "inflate",
    "Med3DEncoder": "med3d", "Med3DResNet": "med3d", "Med3DSeg": "med3d", "UNet": "unet",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Stage", "MODELS", "create_model", "list_models", "model_info", "register_model",
    "get_stages", "stage_module", "stage_names", "stage_of", "stage_parameters",
    "InflationReport", "adapt_input_conv", "inflate_model", "inflate_state_dict", "inflate_weight",
    "transposed_strides",
    "Med3DEncoder", "Med3DResNet", "Med3DSeg", "UNet",
]
