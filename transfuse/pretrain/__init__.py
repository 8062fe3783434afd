"""Pretraining an encoder ourselves: ``transfuse pretrain med3d|ssl FILE.yaml``.

- Med3D-style multi-dataset pretraining (:mod:`transfuse.pretrain.med3d`): one shared
  :class:`~transfuse.models.Med3DEncoder` co-trained on several 3D segmentation datasets, one head
  per dataset; its ``encoder.pt`` is the source ``med3d:<name>`` for every init strategy on
  ``med3d_*``.
- Self-supervised pretraining on unlabelled images (:mod:`transfuse.pretrain.ssl`): SimCLR and
  BYOL (2D and 3D) and Models Genesis restoration, on any transfuse model; its ``encoder.pt`` is
  the source ``ssl:<name>`` (docs/SSL.md).
"""

import importlib
from typing import Any

from .config import DatasetEntry, PretrainSpec, load_pretrain, pretrain_from_dict
from .ssl_config import SSL_METHODS, FolderSpec, SSLSpec, load_ssl, ssl_from_dict

_LAZY = {  # the training code (torch) loads on first use
    ".med3d": ("MultiHeadMed3D", "PretrainResult", "conv_seg_head", "dataset_schedule",
               "default_out_dir", "load_pretrain_data", "make_optimizers", "pretrain_med3d",
               "pretrain_step"),
    ".ssl": ("pretrain_ssl", "SSLResult", "StageEncoder", "SkipDecoder", "encoder_state"),
    ".ssl_data": ("UnlabelledImages", "load_unlabelled"),
}


def __getattr__(name: str) -> Any:
    for module, names in _LAZY.items():
        if name in names:
            value = getattr(importlib.import_module(module, __name__), name)
            globals()[name] = value
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["DatasetEntry", "PretrainSpec", "load_pretrain", "pretrain_from_dict", "MultiHeadMed3D",
           "PretrainResult", "conv_seg_head", "dataset_schedule", "load_pretrain_data",
           "make_optimizers", "pretrain_med3d", "pretrain_step", "default_out_dir",
           "SSL_METHODS", "FolderSpec", "SSLSpec", "load_ssl", "ssl_from_dict", "pretrain_ssl",
           "SSLResult", "StageEncoder", "SkipDecoder", "encoder_state", "UnlabelledImages",
           "load_unlabelled"]
