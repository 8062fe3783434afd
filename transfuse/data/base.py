"""The dataset contract shared by every source (MedMNIST, CSV folders, built-in data).

A source turns a :class:`~transfuse.config.DataSpec` into :class:`SplitArrays` (images and labels
per split) or, for data too large to hold in memory, file-backed splits. :func:`prepare` then does
everything that is the same for all sources, in one place:

- validation (empty split, NaN pixels, label out of range) with errors naming the file;
- stratified, seeded subsampling of the training set to ``n_train`` / ``fraction``;
- grayscale ↔ RGB conversion and resizing;
- per-channel normalisation statistics, computed on the training split only and recorded.

Every split yields ``(image, target, mask)``:

- ``image``: float32 ``(C, H, W)`` or ``(C, D, H, W)``, normalised;
- ``target``: int64 class index (multi-class) or float32 ``(K,)`` 0/1 vector (multi-label);
- ``mask``: float32 scalar (multi-class) or ``(K,)``; 0 where a label is uncertain and ignored.

Segmentation data (``task="segmentation"``, see :mod:`transfuse.data.segmentation`) keeps the same
triple: ``image`` is a training patch or a whole val/test volume ``(C, *spatial)``, ``target`` the
int64 label map ``(*spatial)`` and ``mask`` float32 ones ``(*spatial)``.
"""

from __future__ import annotations


from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError

__all__ = [
    "DatasetInfo",
    "SplitArrays",
    "ArrayDataset",
    "PreparedData",
    "split_indices",
    "stratified_subsample",
    "convert_channels",
    "resize",
    "validate_split",
]

TASKS = ("multiclass", "multilabel", "segmentation")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: task, classes, geometry and provenance.

    Attributes:
        name: the dataset name as given in the spec.
        task: ``multiclass`` (softmax; binary tasks are 2-class), ``multilabel`` (sigmoid) or
            ``segmentation`` (a class per voxel; class 0 is background).
        class_names: one name per class / label.
        spatial_dims: 2 for images, 3 for volumes.
        in_channels: channels after conversion.
        image_shape: spatial shape after resizing, e.g. ``(28, 28)``; for segmentation the
            training patch shape (also the sliding window on whole volumes).
        source: where the data came from (files, packages).
        license: licence of the data.
        description: one sentence on the task.
        norm_mean: per-channel mean used for normalisation (training split).
        norm_std: per-channel std used for normalisation (training split).
        split_sizes: examples per split after subsampling (segmentation: volumes).
        spacing: segmentation: voxel spacing in mm every volume was resampled to.
        regions: segmentation: Dice regions, name → labels whose union forms the region.
        train_available: training examples before ``n_train``/``fraction`` subsampling
            (``None`` where not recorded).
    """

    name: str
    task: str
    class_names: tuple[str, ...]
    spatial_dims: int
    in_channels: int
    image_shape: tuple[int, ...]
    source: str = ""
    license: str = ""
    description: str = ""
    norm_mean: tuple[float, ...] = ()
    norm_std: tuple[float, ...] = ()
    split_sizes: dict[str, int] = field(default_factory=dict)
    spacing: tuple[float, ...] = ()
    regions: dict[str, tuple[int, ...]] = field(default_factory=dict)
    train_available: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name, "task": self.task, "class_names": list(self.class_names),
            "spatial_dims": self.spatial_dims, "in_channels": self.in_channels,
            "image_shape": list(self.image_shape), "source": self.source, "license": self.license,
            "description": self.description, "norm_mean": list(self.norm_mean),
            "norm_std": list(self.norm_std), "split_sizes": dict(self.split_sizes),
        }
        if self.train_available is not None:
            d["train_available"] = self.train_available
        if self.task == "segmentation":
            d["spacing"] = list(self.spacing)
            d["regions"] = {k: list(v) for k, v in self.regions.items()}
        return d


@dataclass
class SplitArrays:
    """One split held in memory.

    Attributes:
        images: ``(N, C, *spatial)`` uint8 (0–255) or float32 (0–1).
        labels: ``(N,)`` int class indices, or ``(N, K)`` multi-label values in {0, 1, -1}
            (-1 = uncertain, resolved by the uncertain-label policy).
        origin: file (or files) the split was read from, for error messages.
    """

    images: np.ndarray
    labels: np.ndarray
    origin: str = ""


def check_pixels(images: np.ndarray, *, where: str) -> None:
    """Images must hold real numbers: not text, objects or complex values (whose imaginary
    part training would drop with only a warning).

    Raises:
        DataError: names ``where``, the dtype and the fix.
    """
    dt = images.dtype
    if dt == np.bool_ or (np.issubdtype(dt, np.number) and not np.issubdtype(dt, np.complexfloating)):
        return
    what = "complex" if np.issubdtype(dt, np.complexfloating) else "non-numeric"
    raise DataError(f"{where}: images have {what} dtype {dt}; give real-valued pixels "
                    "(uint8 0-255, or float 0-1)")


def class_indices(labels: np.ndarray, *, where: str) -> np.ndarray:
    """Multi-class labels as int64 class indices, refusing values a cast would silently change
    (``0.5`` → 0, NaN → -9223372036854775808) or cannot read.

    Raises:
        DataError: the first bad label, with its example index, named after ``where``.
    """
    if labels.dtype == np.bool_ or np.issubdtype(labels.dtype, np.integer):
        return labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.floating):
        raise DataError(f"{where}: labels have dtype {labels.dtype}; give integer class indices")
    flat = labels.reshape(len(labels), -1)
    bad = ~np.isfinite(flat) | (flat != np.round(flat)) | (np.abs(flat) > 2**31)
    if bad.any():
        r = int(np.flatnonzero(bad.any(1))[0])
        raise DataError(f"{where}: label {flat[r].tolist() if flat.shape[1] > 1 else flat[r, 0]} of "
                        f"example {r} is not a class index (a whole number); fix the labels")
    return labels.astype(np.int64)


def validate_split(arr: SplitArrays, *, split: str, task: str, num_classes: int) -> None:
    """Check a split for the errors users actually hit.

    Raises:
        DataError: empty split, shape mismatch, NaN/inf pixels or a label out of range; the
            message names ``arr.origin`` and the split.
    """
    where = f"{arr.origin} [{split}]" if arr.origin else f"[{split}]"
    n = len(arr.images)
    if n == 0:
        raise DataError(f"{where}: the {split} split is empty; check the file or the split options")
    if len(arr.labels) != n:
        raise DataError(
            f"{where}: {n} images but {len(arr.labels)} labels; each image needs one label row"
        )
    check_pixels(arr.images, where=where)
    if np.issubdtype(arr.images.dtype, np.floating) and not np.isfinite(arr.images).all():
        bad = int(np.flatnonzero(~np.isfinite(arr.images.reshape(n, -1)).all(1))[0])
        raise DataError(f"{where}: image {bad} contains NaN or inf pixels; fix or drop it")
    labels = arr.labels
    if task == "multiclass":
        if labels.ndim != 1:
            raise DataError(f"{where}: multi-class labels must be one index per image, got shape {labels.shape}")
        labels = class_indices(labels, where=where)
        if labels.min() < 0 or labels.max() >= num_classes:
            bad = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
            raise DataError(
                f"{where}: label {int(labels[bad])} of example {bad} is out of range 0..{num_classes - 1}; "
                "fix the label or the class list"
            )
    else:
        if labels.ndim != 2 or labels.shape[1] != num_classes:
            raise DataError(f"{where}: multi-label labels must have shape (N, {num_classes}), got {labels.shape}")
        if not (labels.dtype == np.bool_ or np.issubdtype(labels.dtype, np.integer)
                or np.issubdtype(labels.dtype, np.floating)):
            raise DataError(f"{where}: labels have dtype {labels.dtype}; give 0, 1 or -1 values")
        ok = np.isin(labels, (0, 1, -1)) | np.isnan(labels.astype(float))
        if not ok.all():
            r, c = np.argwhere(~ok)[0]
            raise DataError(
                f"{where}: label value {labels[r, c]} (example {r}, label {c}) is not 0, 1 or -1 (uncertain)"
            )


def _strata(labels: np.ndarray) -> np.ndarray:
    """Stratification key: the class index, or the first label of multi-label data.

    A missing (NaN) first label is its own stratum: ``NaN == NaN`` is false, so without this such
    rows would match no stratum and silently drop out of every split.
    """
    strat = labels if labels.ndim == 1 else labels[:, 0]
    if np.issubdtype(strat.dtype, np.floating):
        strat = np.where(np.isnan(strat), -2.0, strat)
    return strat


def split_indices(
    labels: np.ndarray, *, seed: int, val_fraction: float, test_fraction: float
) -> dict[str, np.ndarray]:
    """Deterministic stratified train/val/test split of ``len(labels)`` examples.

    Args:
        labels: ``(N,)`` class indices (stratified) or ``(N, K)`` multi-label (stratified on the
            first label).
        seed: split seed; the same seed always gives the same split.
        val_fraction: fraction for validation.
        test_fraction: fraction for testing.

    Returns:
        ``{"train": idx, "val": idx, "test": idx}``, sorted int64 index arrays.
    """
    strat = _strata(labels)
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for cls in np.unique(strat):
        idx = np.flatnonzero(strat == cls)
        idx = idx[rng.permutation(len(idx))]
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        out["test"] += idx[:n_test].tolist()
        out["val"] += idx[n_test:n_test + n_val].tolist()
        out["train"] += idx[n_test + n_val:].tolist()
    return {k: np.array(sorted(v), dtype=np.int64) for k, v in out.items()}


def stratified_subsample(labels: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """Pick ``n`` indices keeping class proportions (at least one per class when possible).

    Args:
        labels: ``(N,)`` class indices or ``(N, K)`` multi-label (stratified on the first label).
        n: how many to keep; ``n >= N`` keeps everything.
        seed: subsampling seed.

    Returns:
        Sorted int64 indices, ``(min(n, N),)``.
    """
    total = len(labels)
    if n >= total:
        return np.arange(total, dtype=np.int64)
    strat = _strata(labels)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(strat, return_counts=True)
    # Largest-remainder allocation, then at least one per class if n allows.
    quota = counts / total * n
    take = np.floor(quota).astype(int)
    if n >= len(classes):
        take = np.maximum(take, 1)
    rest = n - take.sum()
    order = np.argsort(-(quota - np.floor(quota)))
    i = 0
    while rest != 0:
        j = order[i % len(order)]
        if rest > 0 and take[j] < counts[j]:
            take[j] += 1
            rest -= 1
        elif rest < 0 and take[j] > 1:
            take[j] -= 1
            rest += 1
        i += 1
    chosen = []
    for cls, k in zip(classes, take):
        idx = np.flatnonzero(strat == cls)
        chosen += rng.choice(idx, size=int(k), replace=False).tolist()
    return np.array(sorted(chosen), dtype=np.int64)


_LUMA = torch.tensor([0.299, 0.587, 0.114])


def convert_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grayscale ↔ RGB on a batch ``(N, C, *spatial)``: 1→3 repeats, 3→1 uses ITU-R 601 luma."""
    c = x.shape[1]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(-1, 3, *x.shape[2:]).contiguous()
    if c == 3 and channels == 1:
        w = _LUMA.to(x.dtype).view(1, 3, *([1] * (x.ndim - 2)))
        return (x * w).sum(1, keepdim=True)
    raise DataError(f"cannot convert {c} channels to {channels}; use data.channels 1 or 3")


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a float batch ``(N, C, *spatial)`` so every spatial side is ``size``."""
    spatial = x.shape[2:]
    if all(s == size for s in spatial):
        return x
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    return F.interpolate(x, size=(size,) * len(spatial), mode=mode, align_corners=False,
                         antialias=len(spatial) == 2)


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 0–255 → float32 0–1; float arrays are taken as already in 0–1."""
    t = torch.from_numpy(np.ascontiguousarray(images))
    return t.float().div_(255.0) if images.dtype == np.uint8 else t.float()


def resolve_labels(labels: np.ndarray, *, task: str, policy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets and loss/AUC mask from raw labels under an uncertain-label policy.

    Returns:
        ``(targets, mask)``: multi-class → int64 ``(N,)`` and ones ``(N,)``; multi-label → float32
        ``(N, K)`` in {0, 1} and ``(N, K)`` with 0 where a label is uncertain under ``ignore``
        (or missing, NaN).
    """
    if task == "multiclass":
        y = torch.from_numpy(labels.astype(np.int64))
        return y, torch.ones(len(y))
    lab = labels.astype(np.float32)
    missing = np.isnan(lab)
    unc = lab == -1
    mask = (~missing).astype(np.float32)
    if policy == "ignore":
        mask[unc] = 0.0
        lab = np.where(unc, 0.0, lab)
    elif policy == "ones":
        lab = np.where(unc, 1.0, lab)
    else:
        lab = np.where(unc, 0.0, lab)
    lab = np.nan_to_num(lab, nan=0.0)
    return torch.from_numpy(lab.astype(np.float32)), torch.from_numpy(mask)


class ArrayDataset(Dataset):
    """In-memory split: images are kept as float32 already normalised.

    Args:
        images: ``(N, C, *spatial)`` float32, normalised.
        targets: ``(N,)`` int64 or ``(N, K)`` float32.
        mask: same leading shape as ``targets``.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> None:
        self.images, self.targets, self.mask = images, targets, mask

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.images[i], self.targets[i], self.mask[i]


@dataclass
class PreparedData:
    """A dataset ready for training: info plus the three splits."""

    info: DatasetInfo
    train: Dataset
    val: Dataset
    test: Dataset

    def split(self, name: str) -> Dataset:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of ``(N, C, *spatial)``; std floored at 1e-6."""
    dims = [0] + list(range(2, x.ndim))
    x64 = x.double()
    return x64.mean(dims).float(), x64.std(dims).clamp_min(1e-6).float()
