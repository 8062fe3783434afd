"""Pretrained weights: sources with preprocessing and provenance, and safe checkpoint loading."""

from .io import WeightsError, clean_keys, load_state_dict
from .sources import SOURCES, SourceWeights, list_sources, register_source, resolve_source
from . import imagenet as _imagenet  # noqa: F401  registers imagenet:efficientnet_lite0, _lite2

__all__ = ["WeightsError", "clean_keys", "load_state_dict", "SOURCES", "SourceWeights",
           "list_sources", "register_source", "resolve_source"]
