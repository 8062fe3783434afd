"""Initialisation strategies: pure functions over state dicts, each returning an InitReport.

>>> model = create_model("resnet18", num_classes=4)
>>> report = apply_init(model, "transfusion:block1+meanvar", source="file:resnet18.pth")
>>> report.counts()
"""

from .adapt import Aligned, adapt_input_conv, align_source
from .apply import apply_init, init_state
from .base import INITS, Action, InitContext, InitReport, TensorRecord, list_inits, parse_init, register_init
from . import strategies as _strategies  # noqa: F401  (registers random, pretrained, meanvar, transfusion)

__all__ = [
    "apply_init", "init_state", "list_inits", "register_init", "parse_init", "INITS", "Action",
    "InitContext", "InitReport", "TensorRecord", "Aligned", "adapt_input_conv", "align_source",
]
