"""Initialisation strategies: pure functions over state dicts, each returning an InitReport.

>>> model = create_model("resnet18", num_classes=4)
>>> report = apply_init(model, "transfusion:block1+meanvar", source="file:resnet18.pth")
>>> report.counts()
"""

from .adapt import Aligned, adapt_input_conv, align_source, inflate_source
from .apply import apply_init, init_state
from .base import (INITS, Action, InitContext, InitReport, TensorRecord, init_model_kwargs,
                   list_inits, parse_init, register_init)
# Importing a strategy module registers its strategies.
from . import strategies as _strategies  # noqa: F401  random, pretrained, meanvar, transfusion
from . import gabor as _gabor  # noqa: F401  gabor
from . import moments as _moments  # noqa: F401  moments, covariance
from . import slim as _slim  # noqa: F401  slim

__all__ = [
    "apply_init", "init_state", "list_inits", "init_model_kwargs", "register_init", "parse_init", "INITS", "Action",
    "InitContext", "InitReport", "TensorRecord", "Aligned", "adapt_input_conv", "align_source",
    "inflate_source",
]
