"""``builtin:brain_seg3d``: real 3D brain-tissue segmentation from templates bundled with packages.

The same two real T1 images and tissue maps as ``builtin:brain_tissue`` (see
:mod:`transfuse.data.builtin` and ``docs/DATASETS.md``), as whole volumes with a label per voxel:
background / grey matter / white matter / CSF.

- **train / val**: nilearn's MNI152 ICBM 2009a T1 (2 mm) with labels from nilearn's GM/WM maps and
  SPM's CSF map. One slab of axial slices (24 mm thick, position drawn from ``split_seed`` within
  the middle 40 % of the brain) is **val**; 6 mm on either side of it are used by no split; the
  parts below and above are two **train** volumes.
- **test**: a different image, SPM's ``single_subj_T1`` (Colin27), labelled by SPM's TPM.

Each image is cropped to its brain's bounding box (+ 4 mm) and resampled to ``data.spacing``
(default 3 mm isotropic) through the shared segmentation pipeline. No network; the two source
volumes are cached like the other built-in data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..config import DataSpec
from .base import PreparedData
from .builtin import BRAIN_CLASSES, _BRAIN_LICENSE, _BRAIN_SOURCE, _brain_volumes, cached_arrays
from .registry import RawData, register_dataset
from .segmentation import Volume, finish_volume, keep_training, per_axis, prepare_segmentation

__all__ = ["BRAIN3D", "DEFAULT_SPACING", "DEFAULT_PATCH", "brain_seg3d_volumes", "load_brain_seg3d"]

BRAIN3D = "builtin:brain_seg3d"
DEFAULT_SPACING = 3.0  # mm
DEFAULT_PATCH = 32  # voxels (96 mm at 3 mm)
_NATIVE_MM = 2.0  # both source images are 2 mm templates in MNI space
_MARGIN = 2  # voxels (4 mm) kept around the brain's bounding box
_VAL_MM, _GUARD_MM = 24.0, 6.0


def _sources() -> dict[str, np.ndarray]:
    """The two RAS-ordered 2 mm volumes (uint8 image, uint8 labels), from the cache if present."""

    def build() -> dict[str, np.ndarray]:
        (img_tr, lab_tr), (img_te, lab_te) = _brain_volumes()
        empty = np.zeros((0,), np.uint8)
        return {"train_x": img_tr[None], "train_y": lab_tr[None].astype(np.uint8),
                "val_x": empty, "val_y": empty,
                "test_x": img_te[None], "test_y": lab_te[None].astype(np.uint8)}

    return cached_arrays(BRAIN3D, {"volumes": "mni152_2009a+colin27", "mm": _NATIVE_MM}, 0, build)


def _volume(img: np.ndarray, lab: np.ndarray, spacing: tuple[float, ...], name: str) -> Volume:
    """Crop to the brain (+ margin), then resample and scale through the shared pipeline."""
    from monai.data import MetaTensor

    nz = np.argwhere(lab > 0)
    lo = np.maximum(nz.min(0) - _MARGIN, 0)
    hi = np.minimum(nz.max(0) + 1 + _MARGIN, lab.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    affine = torch.diag(torch.tensor([_NATIVE_MM] * 3 + [1.0], dtype=torch.float64))
    x = MetaTensor(torch.from_numpy(img[box].astype(np.float32))[None], affine=affine)
    y = MetaTensor(torch.from_numpy(lab[box].astype(np.float32))[None], affine=affine.clone())
    return finish_volume(x, y, spacing=spacing, name=name)


def _slab(v: Volume, z0: int, z1: int, name: str) -> Volume:
    return Volume(v.image[..., z0:z1].contiguous(), v.label[..., z0:z1].contiguous(), v.spacing, name)


def brain_seg3d_volumes(*, seed: int = 0,
                        spacing: float | tuple[float, ...] | None = None) -> dict[str, list[Volume]]:
    """The train / val / test volumes of ``builtin:brain_seg3d`` (before normalisation).

    Args:
        seed: chooses the axial position of the val slab.
        spacing: voxel spacing in mm (one value or three); ``None`` = :data:`DEFAULT_SPACING`.

    Returns:
        ``{"train": [below, above], "val": [slab], "test": [colin27]}`` with images scaled to 0–1
        ``(1, X, Y, Z)`` and uint8 labels ``(X, Y, Z)`` (RAS: the last axis is inferior→superior).
    """
    sp = per_axis(spacing if spacing is not None else DEFAULT_SPACING, 3, where=BRAIN3D)
    a = _sources()
    mni = _volume(a["train_x"][0], a["train_y"][0], sp, f"{BRAIN3D} (nilearn MNI152 T1)")
    colin = _volume(a["test_x"][0], a["test_y"][0], sp, f"{BRAIN3D} (SPM single_subj_T1 / Colin27)")
    nz = mni.label.shape[-1]
    block = max(1, int(round(_VAL_MM / sp[2])))
    guard = max(1, int(round(_GUARD_MM / sp[2])))
    lo, hi = int(round(0.3 * nz)), max(int(round(0.7 * nz)) - block, int(round(0.3 * nz)))
    z0 = int(np.random.default_rng(seed).integers(lo, hi + 1))
    return {"train": [_slab(mni, 0, z0 - guard, f"{mni.name}, below the val slab"),
                      _slab(mni, z0 + block + guard, nz, f"{mni.name}, above the val slab")],
            "val": [_slab(mni, z0, z0 + block, f"{mni.name}, val slab z={z0}..{z0 + block - 1}")],
            "test": [colin]}


@register_dataset(BRAIN3D, description="3D brain MRI tissue segmentation (bg/GM/WM/CSF), whole "
                  "T1 volumes at 3 mm; train nilearn MNI152, test SPM Colin27", task="segmentation",
                  classes=BRAIN_CLASSES, spatial_dims=3, channels=1)
def load_brain_seg3d(spec: DataSpec, arg: str = "") -> RawData:
    """Loader for ``builtin:brain_seg3d`` (volumes are built when the data is prepared)."""
    return volumes_raw_data(
        lambda spec: brain_seg3d_volumes(seed=spec.split_seed, spacing=spec.spacing),
        class_names=BRAIN_CLASSES, default_patch=DEFAULT_PATCH, source=_BRAIN_SOURCE,
        license=_BRAIN_LICENSE,
        description="Tissue class (background, grey matter, white matter, CSF) of every voxel of "
                    "a T1-weighted brain MRI volume; tested on a different brain image.")


def volumes_raw_data(volumes: Callable[[DataSpec], dict[str, list[Volume]]], *,
                     class_names: tuple[str, ...], default_patch: int, source: str, license: str,
                     description: str) -> RawData:
    """The :class:`RawData` of a built-in 3D segmentation dataset whose ``volumes(spec)`` returns
    ``{"train": [...], "val": [...], "test": [...]}``: built when the data is prepared, through
    the shared segmentation pipeline (``n_train`` keeps that many training volumes)."""

    def prepared(spec: DataSpec, norm: Any = None) -> PreparedData:
        vols = volumes(spec)
        vols["train"] = keep_training(vols["train"], spec)
        return prepare_segmentation(vols, spec, class_names=class_names,
                                    default_patch=default_patch, norm=norm, source=source,
                                    license=license, description=description)

    return RawData(task="segmentation", class_names=class_names, spatial_dims=3, source=source,
                   license=license, prepared=prepared)
