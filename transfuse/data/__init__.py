"""Datasets: one interface for 2D and 3D, named ``family:argument``.

>>> data = load_dataset("builtin:brain_tissue", n_train=200)
>>> x, y, m = data.train[0]
"""

from .base import DatasetInfo, PreparedData, SplitArrays, split_indices, stratified_subsample
from .registry import DATASETS, RawData, list_datasets, load_dataset, prepare, register_dataset
from . import medmnist as _medmnist  # noqa: F401  (registers loaders)
from . import csvfolder as _csvfolder  # noqa: F401
from . import builtin as _builtin  # noqa: F401
from . import msd as _msd  # noqa: F401  (msd:, nifti: segmentation folders)
from . import builtin3d as _builtin3d  # noqa: F401  (builtin:brain_seg3d)
from . import builtin_spm as _builtin_spm  # noqa: F401  (builtin:spm_tissue6)

__all__ = [
    "DatasetInfo", "PreparedData", "SplitArrays", "RawData", "DATASETS", "load_dataset",
    "list_datasets", "prepare", "register_dataset", "split_indices", "stratified_subsample",
]
