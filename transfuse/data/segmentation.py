"""Segmentation data: volumes (or 2D images) with a label per voxel, read and resampled by MONAI.

Every segmentation source (``msd:``, ``nifti:``, ``builtin:brain_seg3d``) ends in
:func:`prepare_segmentation`, so all of them share one pipeline:

1. **read** (:func:`read_volume`) with MONAI ``LoadImage`` — NIfTI through nibabel, a folder of
   DICOM slices as one series through pydicom, or anything else MONAI reads — channel first;
2. **validate**, with one-line :class:`~transfuse.errors.DataError` messages naming the file:
   missing, truncated or corrupt files, image/label shape mismatch, non-integer or out-of-range
   labels, an empty label map (no foreground voxel), NaN/inf intensities;
3. **resample**: reorient to RAS and resample to ``spacing`` mm (MONAI ``Orientation`` and
   ``Spacing``; bilinear for images, nearest for labels);
4. **scale** each volume and channel so its 0.5th–99.5th intensity percentile maps to 0–1,
   clipped (MONAI ``ScaleIntensityRangePercentiles``);
5. per dataset: optional grayscale ↔ RGB conversion (``channels``) and per-channel normalisation
   with the training split's voxel mean/std (or a pretrained source's), as for images.

The splits then yield the usual ``(image, target, mask)``: the training split yields random
``patch_size`` patches (:class:`PatchDataset`: centred on a foreground voxel with probability
``fg_ratio``, MONAI's ``generate_pos_neg_label_crop_centers``), the val/test splits whole volumes
(:class:`VolumeDataset`) for sliding-window inference. ``target`` is the int64 label map and
``mask`` float32 ones, both ``(*spatial)``. All volumes are held in memory (labels as uint8).
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import DataSpec
from ..errors import ConfigError, DataError
from .base import DatasetInfo, PreparedData, convert_channels

__all__ = [
    "Case",
    "Volume",
    "PatchDataset",
    "VolumeDataset",
    "read_volume",
    "finish_volume",
    "per_axis",
    "split_cases",
    "keep_training",
    "prepare_segmentation",
    "PATCHES_PER_VOLUME",
]

#: Training patches per volume and epoch: ``len(train) = PATCHES_PER_VOLUME × volumes``.
PATCHES_PER_VOLUME = 32
#: Patch centres are drawn from at most this many pre-drawn foreground (and background) voxels
#: per volume, which bounds the memory of the index lists on large CT volumes.
MAX_CENTRES = 2**17
_RAS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass(frozen=True)
class Case:
    """One labelled case on disk.

    Attributes:
        image: image file, or a folder holding one DICOM series.
        label: label map file on the image's voxel grid (0 = background).
        where: what listed the case (e.g. ``dataset.json``), for "file not found" messages.
    """

    image: Path
    label: Path
    where: str = ""


@dataclass
class Volume:
    """A case in memory after reading, resampling and intensity scaling.

    Attributes:
        image: float32 ``(C, *spatial)``, each channel scaled to 0–1 (normalised later).
        label: uint8 ``(*spatial)`` class indices.
        spacing: voxel spacing in mm per spatial axis.
        name: the image file (or a description), for messages.
    """

    image: torch.Tensor
    label: torch.Tensor
    spacing: tuple[float, ...]
    name: str


@functools.lru_cache(maxsize=1)
def _loader() -> Any:
    from monai.transforms import LoadImage

    # Building MONAI's pydicom reader logs a warning about an optional GPU codec plugin.
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    return LoadImage(image_only=True, ensure_channel_first=True, dtype=np.float32)


def _check_dicom_folder(folder: Path, what: str) -> None:
    """Every file of a DICOM series folder must be a readable slice: MONAI silently skips files
    that are not DICOM and slices without an InstanceNumber, which shifts the volume and blames
    the label's shape instead of the bad file."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        return  # MONAI's reader needs pydicom too and says so
    files = [f for f in sorted(folder.iterdir()) if f.is_file() and not f.name.startswith(".")
             and f.name.upper() != "DICOMDIR"]
    if not files:
        raise DataError(f"{folder}: the {what} folder holds no DICOM files; give one series per case")
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError) as e:
            raise DataError(f"{f}: not a readable DICOM slice ({type(e).__name__}); the file is "
                            f"corrupt or not DICOM — replace it or remove it from {folder}") from None
        if "InstanceNumber" not in ds:
            raise DataError(f"{f}: DICOM slice without InstanceNumber, so its place in the series "
                            "is unknown; fix the file or remove it from the folder")


def load_volume(path: Path, what: str, where: str) -> Any:
    """``(C, *spatial)`` MetaTensor of one file / DICOM folder, or a one-line DataError."""
    if not path.exists():
        listed = f" (listed in {where})" if where else ""
        raise DataError(f"{path}: {what} file not found{listed}; check the path")
    if path.is_dir():
        _check_dicom_folder(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = _loader()(str(path))
    except Exception as e:  # nibabel / pydicom / MONAI each raise their own types
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise DataError(f"{path}: cannot read the {what} ({type(e).__name__}: {msg}); the file is "
                        "truncated, corrupt or not an image MONAI can read") from None
    if x.ndim not in (3, 4):
        raise DataError(f"{path}: the {what} has shape {tuple(x.shape[1:])}; expected a 2D or 3D "
                        "image (with channels first or last)")
    return x


def _check_label(y: torch.Tensor, path: Path, num_classes: int | None) -> None:
    if y.shape[0] != 1:
        raise DataError(f"{path}: the label map has {y.shape[0]} channels; expected one integer "
                        "class per voxel")
    if not torch.equal(y, y.round()):
        bad = float(y[y != y.round()][0])
        raise DataError(f"{path}: label value {bad:g} is not an integer; labels are class indices")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or (num_classes is not None and hi >= num_classes) or hi > 255:
        top = num_classes - 1 if num_classes is not None else 255
        raise DataError(f"{path}: label value {lo if lo < 0 else hi} is out of range 0..{top}; "
                        "fix the label map or the dataset's label list")
    if hi == 0:
        raise DataError(f"{path}: the label map is empty (no foreground voxel); fix it or drop the case")


def finish_volume(image: Any, label: Any, *, spacing: Sequence[float] | None, name: str) -> Volume:
    """Reorient to RAS, resample to ``spacing`` and scale intensities (steps 3–4 above).

    Args:
        image: ``(C, *spatial)`` MONAI ``MetaTensor`` (its affine gives orientation and spacing).
        label: ``(1, *spatial)`` on the same grid; it is given the image's affine.
        spacing: target voxel spacing in mm per spatial axis; ``None`` keeps the native grid.
        name: for messages.

    Returns:
        :class:`Volume` with the image scaled to 0–1 per channel and uint8 labels.
    """
    from monai.transforms import Orientation, ScaleIntensityRangePercentiles, Spacing

    dims = image.ndim - 1
    label = label.clone()
    label.affine = image.affine.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI deprecation notes; divide-by-zero on flat images
        orient = Orientation(axcodes="RAS"[:dims], labels=_RAS[:dims])
        image, label = orient(image), orient(label)
        if spacing is not None:
            image = Spacing(pixdim=tuple(spacing), mode="bilinear")(image)
            label = Spacing(pixdim=tuple(spacing), mode="nearest")(label)
        image = ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0,
                                               clip=True, channel_wise=True)(image)
    pixdim = tuple(round(float(v), 4) for v in
                   torch.linalg.norm(image.affine[:dims, :dims].double(), dim=0))
    return Volume(image.as_tensor().float().contiguous(),
                  label.as_tensor()[0].round().to(torch.uint8).contiguous(), pixdim, name)


def per_axis(spacing: float | Sequence[float] | None, dims: int, *, where: str) -> tuple[float, ...] | None:
    """``data.spacing`` as one value per spatial axis (``None`` stays ``None``).

    Raises:
        ConfigError: a per-axis spacing whose length is not ``dims``.
    """
    if spacing is None:
        return None
    if isinstance(spacing, (int, float)):
        return (float(spacing),) * dims
    if len(spacing) != dims:
        raise ConfigError(f"data.spacing has {len(spacing)} values but {where} is {dims}D; give "
                          "one number or one per axis")
    return tuple(float(v) for v in spacing)


def read_volume(case: Case, *, num_classes: int | None,
                spacing: float | Sequence[float] | None, channels: int | None = None) -> Volume:
    """Read, validate, resample and scale one case.

    Args:
        case: the image and label paths.
        num_classes: labels must lie in ``0..num_classes-1`` (``None``: any value in 0..255).
        spacing: target spacing in mm (one value or one per axis), ``None`` = native grid.
        channels: expected image channels (e.g. the modalities of ``dataset.json``), if known.

    Raises:
        DataError: missing / unreadable file, shape mismatch, bad or empty labels, NaN
            intensities, wrong channel count — naming the file.
    """
    x = load_volume(case.image, "image", case.where)
    y = load_volume(case.label, "label", case.where)
    if x.shape[1:] != y.shape[1:]:
        raise DataError(f"{case.label}: label shape {tuple(y.shape[1:])} does not match the image "
                        f"shape {tuple(x.shape[1:])} of {case.image}; labels must be on the image's "
                        "voxel grid")
    if channels is not None and x.shape[0] != channels:
        raise DataError(f"{case.image}: the image has {x.shape[0]} channels but {case.where or 'the'}"
                        f" dataset lists {channels} modalities")
    if not torch.isfinite(x).all():
        raise DataError(f"{case.image}: the image contains NaN or inf voxels; fix or drop the case")
    _check_label(y, case.label, num_classes)
    return finish_volume(x, y, spacing=per_axis(spacing, x.ndim - 1, where=str(case.image)),
                         name=str(case.image))


def split_cases(items: Sequence[Any], spec: DataSpec, *, where: str,
                has_test: bool = False) -> dict[str, list[Any]]:
    """Deterministic train/val(/test) split of labelled cases by ``spec.split_seed``.

    Args:
        items: labelled cases (any objects), in a fixed order.
        spec: ``val_fraction``, ``test_fraction`` and ``split_seed``.
        where: the file that listed the cases, for messages.
        has_test: the source has its own labelled test cases: only val is carved out.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}`` (``test`` empty when ``has_test``), each
        in the original order.

    Raises:
        DataError: too few cases for every split to get at least one.
    """
    n = len(items)
    n_val = max(1, int(round(n * spec.val_fraction))) if spec.val_fraction > 0 else 0
    n_test = 0 if has_test else (max(1, int(round(n * spec.test_fraction)))
                                  if spec.test_fraction > 0 else 0)
    if n_val == 0 or (n_test == 0 and not has_test):
        raise DataError(f"{where}: no {'val' if n_val == 0 else 'test'} split; give "
                        "data.val_fraction and data.test_fraction > 0")
    if n - n_val - n_test < 1:
        raise DataError(f"{where}: {n} labelled case(s) are too few for train, val and test; "
                        f"need at least {n_val + n_test + 1}")
    perm = np.random.default_rng(spec.split_seed).permutation(n)
    pick = {"test": perm[:n_test], "val": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}
    return {k: [items[i] for i in sorted(v)] for k, v in pick.items()}


def keep_training(items: list[Any], spec: DataSpec) -> list[Any]:
    """The training cases kept under ``n_train`` / ``fraction`` (seeded, order preserved)."""
    n = len(items)
    keep = spec.n_train if spec.n_train is not None else (
        max(1, int(round(spec.fraction * n))) if spec.fraction is not None else n)
    if keep >= n:
        return list(items)
    idx = np.random.default_rng(spec.split_seed).choice(n, size=keep, replace=False)
    return [items[i] for i in sorted(idx)]


def _indices(label: torch.Tensor, fg: bool, rng: np.random.Generator) -> np.ndarray:
    idx = np.flatnonzero(label.numpy() > 0 if fg else label.numpy() == 0)
    if len(idx) > MAX_CENTRES:
        idx = np.sort(rng.choice(idx, MAX_CENTRES, replace=False))
    return idx


class PatchDataset(Dataset):
    """Random training patches from whole volumes.

    Item ``i`` is a fresh random patch of volume ``i % len(volumes)``; the centre is a foreground
    voxel with probability ``fg_ratio``, else a background voxel, and is moved inward so the patch
    fits (MONAI ``generate_pos_neg_label_crop_centers``, as in ``RandCropByPosNegLabel``). The
    randomness comes from torch's global generator, which ``DataLoader`` workers seed per worker.

    Args:
        volumes: normalised volumes, each at least ``patch`` on every axis.
        patch: patch shape ``(*spatial)``.
        fg_ratio: probability of a foreground centre.
        seed: seeds the subsampling of candidate centres (see :data:`MAX_CENTRES`).

    Items:
        ``(image (C, *patch) float32, target (*patch) int64, mask (*patch) float32 ones)``.
    """

    def __init__(self, volumes: list[Volume], *, patch: tuple[int, ...], fg_ratio: float,
                 seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.volumes, self.patch, self.fg_ratio = volumes, tuple(patch), float(fg_ratio)
        self.fg = [_indices(v.label, True, rng) for v in volumes]
        self.bg = [_indices(v.label, False, rng) for v in volumes]

    def __len__(self) -> int:
        return PATCHES_PER_VOLUME * len(self.volumes)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from monai.transforms.utils import generate_pos_neg_label_crop_centers

        k = i % len(self.volumes)
        v = self.volumes[k]
        state = np.random.RandomState(int(torch.randint(0, 2**31 - 1, ()).item()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "no background voxels": all-foreground volumes
            [centre] = generate_pos_neg_label_crop_centers(
                self.patch, 1, self.fg_ratio, v.label.shape, self.fg[k], self.bg[k], state)
        box = tuple(slice(int(c) - p // 2, int(c) - p // 2 + p) for c, p in zip(centre, self.patch))
        return v.image[(slice(None), *box)], v.label[box].long(), torch.ones(self.patch)


class VolumeDataset(Dataset):
    """Whole volumes (val/test): ``(image (C, *S), target (*S) int64, mask (*S) ones)``."""

    def __init__(self, volumes: list[Volume]) -> None:
        self.volumes = volumes

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        v = self.volumes[i]
        return v.image, v.label.long(), torch.ones(v.label.shape)

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.volumes]


def _norm_stats(volumes: list[Volume]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over every voxel of ``volumes`` (float64 sums; std ≥ 1e-6)."""
    c = volumes[0].image.shape[0]
    s, s2, n = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for v in volumes:
        x = v.image.reshape(c, -1).double()
        s += x.sum(1)
        s2 += (x * x).sum(1)
        n += x.shape[1]
    mean = s / n
    std = (s2 / n - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.float(), std.float()


def _check_regions(spec: DataSpec, class_names: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    out = {}
    for name, labels in spec.regions:
        if name in class_names:
            raise ConfigError(f"data.regions: region {name!r} has the name of a class of "
                              f"{spec.name!r}; pick another name")
        bad = [v for v in labels if v >= len(class_names)]
        if bad:
            raise ConfigError(f"data.regions[{name!r}]: label {bad[0]} is not a class of "
                              f"{spec.name!r} (0..{len(class_names) - 1})")
        out[name] = labels
    return out


def _pad_to(v: Volume, patch: tuple[int, ...]) -> Volume:
    """Zero-pad (image intensity 0, background label) symmetrically to at least ``patch``."""
    short = [max(0, p - s) for p, s in zip(patch, v.label.shape)]
    if not any(short):
        return v
    pad = [w for d in reversed(short) for w in (d // 2, d - d // 2)]
    return Volume(torch.nn.functional.pad(v.image, pad), torch.nn.functional.pad(v.label, pad),
                  v.spacing, v.name)


def prepare_segmentation(volumes: dict[str, list[Volume]], spec: DataSpec, *,
                         class_names: Sequence[str], default_patch: int,
                         norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
                         source: str = "", license: str = "",
                         description: str = "") -> PreparedData:
    """Turn read volumes into training patches and whole val/test volumes (step 5 above).

    Args:
        volumes: ``train``/``val``/``test`` lists of :class:`Volume` (training already
            subsampled with :func:`keep_training`).
        spec: ``channels``, ``patch_size``, ``fg_ratio``, ``regions`` and ``split_seed``.
        class_names: one per label value, background first.
        default_patch: patch side when ``spec.patch_size`` is unset.
        norm: ``(mean, std)`` per channel (0–1 scale) instead of the training split's.

    Returns:
        :class:`PreparedData` with ``task="segmentation"``; ``info.image_shape`` is the patch.
    """
    for k in ("train", "val", "test"):
        if not volumes.get(k):
            raise DataError(f"dataset {spec.name!r} has no {k} volumes; give val/test fractions > 0")
    class_names = tuple(class_names)
    regions = _check_regions(spec, class_names)
    if spec.channels is not None:
        volumes = {k: [Volume(convert_channels(v.image[None], spec.channels)[0], v.label,
                              v.spacing, v.name) for v in vs] for k, vs in volumes.items()}
    dims = volumes["train"][0].label.ndim
    patch = (spec.patch_size or default_patch,) * dims
    mean, std = _norm_stats(volumes["train"])
    if norm is not None:
        m, sd = torch.tensor(norm[0], dtype=torch.float32), torch.tensor(norm[1], dtype=torch.float32)
        c = len(mean)
        mean, std = (m, sd) if len(m) == c else (m.mean().repeat(c), sd.mean().repeat(c))
    shape = (-1,) + (1,) * dims

    def normalised(v: Volume) -> Volume:
        return Volume((v.image - mean.view(shape)) / std.view(shape), v.label, v.spacing, v.name)

    train = [normalised(_pad_to(v, patch)) for v in volumes["train"]]
    val = [normalised(v) for v in volumes["val"]]
    test = [normalised(v) for v in volumes["test"]]
    info = DatasetInfo(
        name=spec.name, task="segmentation", class_names=class_names, spatial_dims=dims,
        in_channels=int(train[0].image.shape[0]), image_shape=patch, source=source,
        license=license, description=description,
        norm_mean=tuple(round(float(v), 6) for v in mean),
        norm_std=tuple(round(float(v), 6) for v in std),
        split_sizes={"train": len(train), "val": len(val), "test": len(test)},
        spacing=volumes["train"][0].spacing, regions=regions)
    return PreparedData(info, PatchDataset(train, patch=patch, fg_ratio=spec.fg_ratio,
                                           seed=spec.split_seed),
                        VolumeDataset(val), VolumeDataset(test))
