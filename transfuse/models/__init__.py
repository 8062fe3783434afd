"""Models: one contract for 2D and 3D, named stages, built by the library that owns them.

>>> model = create_model("cbr_small", spatial_dims=3, in_channels=1, num_classes=2)
>>> [s.name for s in model.stage_info]
['stem', 'block1', 'block2', 'block3', 'head']
"""

from ._stages import Stage, get_stages, stage_module, stage_names, stage_of, stage_parameters
from .registry import MODELS, create_model, list_models, model_info, register_model
from . import torchvision_models as _tv  # noqa: F401  (registers builders)
from . import seg_tiny as _seg_tiny  # noqa: F401  (seg_unet_tiny, task=segmentation)
from .inflate import (InflationReport, adapt_input_conv, inflate_model, inflate_state_dict, inflate_weight,
                      transposed_strides)
from .med3d import Med3DEncoder, Med3DResNet, Med3DSeg  # registers med3d_resnet*, med3d_seg_resnet*
from .unet import UNet  # registers unet_resnet18/34/50, unet_cbr_small (task=segmentation)

__all__ = [
    "Stage", "MODELS", "create_model", "list_models", "model_info", "register_model",
    "get_stages", "stage_module", "stage_names", "stage_of", "stage_parameters",
    "InflationReport", "adapt_input_conv", "inflate_model", "inflate_state_dict", "inflate_weight",
    "transposed_strides",
    "Med3DEncoder", "Med3DResNet", "Med3DSeg", "UNet",
]
