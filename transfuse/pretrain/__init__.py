"""Pretraining an encoder ourselves: ``transfuse pretrain med3d FILE.yaml``.

Med3D-style multi-dataset pretraining (:mod:`transfuse.pretrain.med3d`): one shared
:class:`~transfuse.models.Med3DEncoder` co-trained on several 3D segmentation datasets, one head
per dataset; its ``encoder.pt`` is a ``file:`` source for every init strategy on ``med3d_*``.
"""

import importlib
from typing import Any

from .config import DatasetEntry, PretrainSpec, load_pretrain, pretrain_from_dict

_MED3D = ("MultiHeadMed3D", "PretrainResult", "conv_seg_head", "dataset_schedule", "default_out_dir",
          "load_pretrain_data", "make_optimizers", "pretrain_med3d", "pretrain_step")


def __getattr__(name: str) -> Any:  # the training code (torch) loads on first use
    if name in _MED3D:
        value = getattr(importlib.import_module(".med3d", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["DatasetEntry", "PretrainSpec", "load_pretrain", "pretrain_from_dict", "MultiHeadMed3D",
           "PretrainResult", "conv_seg_head", "dataset_schedule", "load_pretrain_data",
           "make_optimizers", "pretrain_med3d", "pretrain_step", "default_out_dir"]

