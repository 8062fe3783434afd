"""MedMNIST v2 / MedMNIST+ ``.npz`` files: ``medmnist:<flag>@<size>``.

Files are read from a data root — ``DataSpec.data_root``, else ``$TRANSFUSE_DATA``, else
``~/.medmnist`` (the ``medmnist`` package's own default). Size 28 is ``<flag>.npz``; 64, 128 and
224 are ``<flag>_<size>.npz`` as the ``medmnist`` package names them. Nothing is downloaded: when
a file is missing the error says where to put it and how to get it.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..config import DataSpec
from ..errors import ConfigError, DataError
from ._medmnist_classes import MEDMNIST_LABELS
from .base import SplitArrays, class_indices
from .registry import RawData, register_dataset

__all__ = ["MEDMNIST_INFO", "medmnist_path"]

# flag -> (task, n_classes, channels, spatial_dims, description)
MEDMNIST_INFO: dict[str, tuple[str, int, int, int, str]] = {
    "pathmnist": ("multiclass", 9, 3, 2, "colon pathology tissue type"),
    "chestmnist": ("multilabel", 14, 1, 2, "chest X-ray, 14 findings (NIH ChestX-ray14)"),
    "dermamnist": ("multiclass", 7, 3, 2, "dermatoscopy lesion type (HAM10000)"),
    "octmnist": ("multiclass", 4, 1, 2, "retinal OCT condition"),
    "pneumoniamnist": ("multiclass", 2, 1, 2, "paediatric chest X-ray, pneumonia vs normal"),
    "retinamnist": ("multiclass", 5, 3, 2, "fundus photo, diabetic-retinopathy grade 0-4 (ordinal, scored as multi-class)"),
    "breastmnist": ("multiclass", 2, 1, 2, "breast ultrasound, malignant vs normal/benign"),
    "bloodmnist": ("multiclass", 8, 3, 2, "blood cell type"),
    "tissuemnist": ("multiclass", 8, 1, 2, "kidney cortex cell type"),
    "organamnist": ("multiclass", 11, 1, 2, "abdominal CT organ, axial"),
    "organcmnist": ("multiclass", 11, 1, 2, "abdominal CT organ, coronal"),
    "organsmnist": ("multiclass", 11, 1, 2, "abdominal CT organ, sagittal"),
    "organmnist3d": ("multiclass", 11, 1, 3, "abdominal CT organ, 3D"),
    "nodulemnist3d": ("multiclass", 2, 1, 3, "chest CT lung nodule malignancy, 3D"),
    "adrenalmnist3d": ("multiclass", 2, 1, 3, "adrenal mass vs normal, 3D shape masks from CT"),
    "fracturemnist3d": ("multiclass", 3, 1, 3, "rib fracture type, 3D CT"),
    "vesselmnist3d": ("multiclass", 2, 1, 3, "brain vessel aneurysm vs vessel, 3D"),
    "synapsemnist3d": ("multiclass", 2, 1, 3, "synapse type, 3D electron microscopy"),
}

# Class names for every flag: the table generated from the ``medmnist`` package's INFO
# (tools/medmnist_classes.py), except two names transfuse gave before that table existed and that
# stored runs' metric keys use.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    **MEDMNIST_LABELS,
    "retinamnist": ("grade0", "grade1", "grade2", "grade3", "grade4"),
    "breastmnist": ("malignant", "normal_or_benign"),
}

SIZES_2D = (28, 64, 128, 224)
SIZES_3D = (28, 64)


def data_root(spec: DataSpec) -> Path:
    """The folder MedMNIST files are read from (spec, ``$TRANSFUSE_DATA``, ``~/.medmnist``)."""
    root = spec.data_root or os.environ.get("TRANSFUSE_DATA") or "~/.medmnist"
    return Path(root).expanduser()


def parse_arg(arg: str) -> tuple[str, int]:
    """``"retinamnist@64"`` → ``("retinamnist", 64)``; the size defaults to 28."""
    flag, _, size_s = arg.partition("@")
    flag = flag.lower()
    if flag not in MEDMNIST_INFO:
        import difflib

        close = difflib.get_close_matches(flag, list(MEDMNIST_INFO), n=2)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown MedMNIST flag {flag!r}{hint} (valid: {', '.join(MEDMNIST_INFO)})")
    try:
        size = int(size_s) if size_s else 28
    except ValueError:
        raise ConfigError(f"MedMNIST size {size_s!r} in {arg!r} is not a number; use e.g. @28") from None
    sizes = SIZES_3D if MEDMNIST_INFO[flag][3] == 3 else SIZES_2D
    if size not in sizes:
        raise ConfigError(f"{flag} comes in sizes {', '.join(map(str, sizes))}, not {size}")
    return flag, size


def medmnist_path(root: Path, flag: str, size: int) -> Path:
    """Path of the ``.npz`` file for ``flag`` at ``size`` under ``root``."""
    return root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")


def _check_shapes(path: Path, split: str, images: np.ndarray, labels: np.ndarray, *, sdims: int,
                  size: int, channels: int) -> None:
    """MedMNIST layout: ``(N, H, W)`` / ``(N, H, W, C)`` images (2D), ``(N, D, H, W)`` (3D), and
    one label row per image; anything else is a DataError naming the file, array and shape."""
    key = f"{split}_images"
    want = (f"(N, {size}, {size}) or (N, {size}, {size}, {channels})" if sdims == 2
            else f"(N, {size}, {size}, {size})")
    if sdims == 2:
        ok = images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))
    else:
        ok = images.ndim == 4
    if not ok or min(images.shape[1:], default=0) < 1:
        raise DataError(f"{path}: array {key!r} has shape {tuple(images.shape)}; a "
                        f"{sdims}D MedMNIST file holds {want} images — give the official file "
                        "(e.g. reshape flattened images before saving)")
    if labels.ndim == 0 or len(labels) != len(images):
        raise DataError(f"{path}: array {split + '_labels'!r} has shape {tuple(labels.shape)} but "
                        f"{key!r} has {len(images)} images; give one label row per image")


@register_dataset("medmnist", description="MedMNIST v2/+ .npz files: medmnist:<flag>@<size>",
                  examples=tuple(f"medmnist:{f}@28" for f in MEDMNIST_INFO))
def load_medmnist(spec: DataSpec, arg: str) -> RawData:
    """Read the official train/val/test splits of one MedMNIST file."""
    flag, size = parse_arg(arg)
    task, _, channels, sdims, desc = MEDMNIST_INFO[flag]
    path = medmnist_path(data_root(spec), flag, size)
    if not path.is_file():
        raise DataError(
            f"{path} not found: put {path.name} in {path.parent} (or pass --data-root / set "
            f"TRANSFUSE_DATA); when online, `pip install medmnist` and "
            f"`python -m medmnist download --flag {flag} --size {size}` fetches it"
        )
    splits = {}
    try:
        with np.load(path, allow_pickle=False) as z:
            for split in ("train", "val", "test"):
                for key in (f"{split}_images", f"{split}_labels"):
                    if key not in z.files:
                        raise DataError(f"{path}: missing array {key!r}; is this a MedMNIST file?")
                images = z[f"{split}_images"]
                labels = z[f"{split}_labels"]
                splits[split] = (images, labels)
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as e:
        raise DataError(f"{path}: cannot read .npz ({type(e).__name__}: {e}); the file is "
                        "truncated or corrupt, download it again") from None
    out = {}
    for split, (images, labels) in splits.items():
        _check_shapes(path, split, images, labels, sdims=sdims, size=size, channels=channels)
        # MedMNIST stores (N, H, W) or (N, H, W, 3) for 2D and (N, D, H, W) for 3D.
        if sdims == 2:
            images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        else:
            images = images[:, None]
        if task == "multiclass":  # refuse 0.5 or NaN, which a cast would turn into a class
            labels = class_indices(labels.reshape(len(labels), -1)[:, 0],
                                   where=f"{path}: array {split + '_labels'!r}")
        out[split] = SplitArrays(images, labels, origin=str(path))
    names = CLASS_NAMES[flag]
    return RawData(
        task=task, class_names=names, spatial_dims=sdims, splits=out,
        source=f"MedMNIST v2 {flag} ({path})", license="CC BY 4.0",
        description=desc,
    )
