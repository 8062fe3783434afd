"""``builtin:spm_tissue6``: real 3D head segmentation (6 classes) from SPM12's bundled templates.

A second built-in 3D segmentation task, deliberately unlike ``builtin:brain_seg3d`` (T1 brain
only, 4 classes), so that multi-dataset pretraining (``transfuse pretrain med3d``) has two
genuinely different datasets without any download:

- **image**: SPM's ``canonical/avg152T2.nii`` — the MNI152 average T2-weighted head (2 mm), with
  skull and scalp;
- **labels**: the argmax over SPM12's six tissue probability maps ``tpm/TPM.nii`` (1.5 mm,
  trilinearly resampled onto the T2 grid): 1 grey matter, 2 white matter, 3 CSF, 4 bone,
  5 soft tissue; 0 (background) where air is the most probable class or where the six
  probabilities sum to less than 0.5 (outside the TPM's field of view).

There is one head, so the splits are disjoint axial slabs (the last, inferior→superior axis) of
it: a **val** slab near 35 % of the head's height and a **test** slab near 65 % (24 mm each,
positions jittered by ``split_seed``, 6 mm unused guards on each side); the parts below, between
and above them are three **train** volumes, so training sees every level of the head. The head is cropped to its bounding box (+ 4 mm) and resampled to
``data.spacing`` (default 3 mm) by the shared segmentation pipeline. The 2 mm arrays are built
once (a few seconds) and cached like the other built-in data.
"""

from __future__ import annotations

import numpy as np

from ..config import DataSpec
from ..errors import DataError
from .builtin import _resample, _spm_image, _to_uint8, cached_arrays
from .builtin3d import _slab, _volume, volumes_raw_data
from .registry import RawData, register_dataset
from .segmentation import Volume, per_axis

__all__ = ["SPM6", "SPM6_PD", "SPM6_CLASSES", "DEFAULT_SPACING", "DEFAULT_PATCH", "spm_tissue6_volumes",
           "load_spm_tissue6"]

SPM6 = "builtin:spm_tissue6"
SPM6_PD = "builtin:spm_tissue6_pd"  # the same labels on SPM's proton-density average
_IMAGES = {SPM6: "avg152T2", SPM6_PD: "avg152PD"}
SPM6_CLASSES = ("background", "grey_matter", "white_matter", "csf", "bone", "soft_tissue")
DEFAULT_SPACING = 3.0  # mm
DEFAULT_PATCH = 32  # voxels
_SLAB_MM, _GUARD_MM = 24.0, 6.0
_SOURCE = ("SPM12 canonical/avg152T2.nii (MNI152 average T2, 2 mm) labelled by the argmax of SPM12 "
           "tpm/TPM.nii (GM, WM, CSF, bone, soft tissue, air), from spm-runtime")
_LICENSE = ("SPM12 (spm-runtime): GPL-2.0; avg152T2 from the MNI ICBM152 average (free use with "
            "notice); TPM.nii built from IXI scans (CC BY-SA 3.0)")


def _tissue6_labels(p: np.ndarray) -> np.ndarray:
    """``(X, Y, Z, 6)`` probabilities (GM, WM, CSF, bone, soft tissue, air) → uint8 labels 0..5."""
    lab = np.argmax(p, axis=-1).astype(np.uint8) + 1
    lab[(lab == 6) | (p.sum(-1) < 0.5)] = 0  # air, or outside the maps' field of view
    return lab


def _sources(name: str = SPM6) -> dict[str, np.ndarray]:
    """The RAS-ordered 2 mm T2 (or PD) head (uint8) and its labels (uint8), cached."""
    image = _IMAGES[name]

    def build() -> dict[str, np.ndarray]:
        t2 = _spm_image(f"canonical/{image}.nii")
        tpm = _spm_image("tpm/TPM.nii")
        lab = _tissue6_labels(_resample(tpm, t2, channels=tuple(range(6))))
        img = _to_uint8(np.asarray(t2.dataobj, np.float32), lab > 0)
        empty = np.zeros((0,), np.uint8)
        return {"train_x": img[None], "train_y": lab[None], "val_x": empty, "val_y": empty,
                "test_x": empty, "test_y": empty}

    return cached_arrays(name, {"image": image, "labels": "TPM6", "mm": 2.0}, 0, build)


def spm_tissue6_volumes(*, seed: int = 0, spacing: float | tuple[float, ...] | None = None,
                        name: str = SPM6) -> dict[str, list[Volume]]:
    """The train / val / test volumes of ``builtin:spm_tissue6`` (before normalisation).

    Args:
        seed: chooses the axial position of the val and test slabs.
        spacing: voxel spacing in mm (one value or three); ``None`` = :data:`DEFAULT_SPACING`.
        name: :data:`SPM6` (T2 image) or :data:`SPM6_PD` (proton-density image, same labels).

    Returns:
        ``{"train": [below, between, above], "val": [slab], "test": [slab]}``: images
        ``(1, X, Y, Z)`` scaled to 0–1 and uint8 labels ``(X, Y, Z)``; along Z
        (inferior→superior) the order is train, guard, val, guard, train, guard, test, guard,
        train.
    """
    sp = per_axis(spacing if spacing is not None else DEFAULT_SPACING, 3, where=SPM6)
    a = _sources(name)
    head = _volume(a["train_x"][0], a["train_y"][0], sp, f"{name} (SPM {_IMAGES[name]})")
    nz = head.label.shape[-1]
    block = max(1, int(round(_SLAB_MM / sp[2])))
    guard = max(1, int(round(_GUARD_MM / sp[2])))
    # val near 35 % of the height, test near 65 %, each jittered by the seed: training volumes
    # below, between and above them cover the whole head (neck, brain, vertex), so the held-out
    # slabs hold no tissue mix that training never saw.
    rng = np.random.default_rng(seed)
    jit = max(1, int(round(0.05 * nz)))
    z0 = int(round(0.35 * nz - block / 2)) + int(rng.integers(-jit, jit + 1))
    z1 = int(round(0.65 * nz - block / 2)) + int(rng.integers(-jit, jit + 1))
    z0 = max(z0, guard + 1)
    z1 = min(max(z1, z0 + block + 2 * guard + 1), nz - block - guard - 1)
    if z1 < z0 + block + 2 * guard + 1:
        raise DataError(f"{name}: at {sp[2]} mm the head has only {nz} slices, too few for two "
                        f"{_SLAB_MM:g} mm held-out slabs; use a finer data.spacing")
    return {"train": [_slab(head, 0, z0 - guard, f"{head.name}, below the val slab"),
                      _slab(head, z0 + block + guard, z1 - guard, f"{head.name}, between the slabs"),
                      _slab(head, z1 + block + guard, nz, f"{head.name}, above the test slab")],
            "val": [_slab(head, z0, z0 + block, f"{head.name}, val slab z={z0}..{z0 + block - 1}")],
            "test": [_slab(head, z1, z1 + block, f"{head.name}, test slab z={z1}..{z1 + block - 1}")]}


def _loader(name: str, source: str, description: str):
    def load(spec: DataSpec, arg: str = "") -> RawData:
        return volumes_raw_data(
            lambda spec: spm_tissue6_volumes(seed=spec.split_seed, spacing=spec.spacing, name=name),
            class_names=SPM6_CLASSES, default_patch=DEFAULT_PATCH, source=source,
            license=_LICENSE.replace("avg152T2", _IMAGES[name]), description=description)

    load.__doc__ = f"Loader for ``{name}`` (volumes are built when the data is prepared)."
    return load


_SOURCE_PD = _SOURCE.replace("avg152T2.nii (MNI152 average T2", "avg152PD.nii (MNI152 average PD")

load_spm_tissue6 = register_dataset(
    SPM6, description="3D head MRI segmentation (bg/GM/WM/CSF/bone/soft tissue), SPM avg152T2 "
    "labelled by TPM.nii, 3 mm; disjoint axial slabs per split", task="segmentation",
    classes=SPM6_CLASSES, spatial_dims=3, channels=1)(_loader(
        SPM6, _SOURCE, "Tissue class (background/air, grey matter, white matter, CSF, bone, soft "
        "tissue) of every voxel of a T2-weighted head MRI volume."))
load_spm_tissue6_pd = register_dataset(
    SPM6_PD, description="3D head MRI segmentation (bg/GM/WM/CSF/bone/soft tissue), SPM avg152PD "
    "(proton density) labelled by TPM.nii, 3 mm; disjoint axial slabs", task="segmentation",
    classes=SPM6_CLASSES, spatial_dims=3, channels=1)(_loader(
        SPM6_PD, _SOURCE_PD, "Tissue class of every voxel of a proton-density-weighted head MRI "
        "volume."))
