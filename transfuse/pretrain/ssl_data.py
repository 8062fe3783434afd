"""The unlabelled images of an SSL pretraining: a dataset's training split or a folder.

:func:`load_unlabelled` turns the ``data`` of an :class:`~transfuse.pretrain.ssl_config.SSLSpec`
into :class:`UnlabelledImages`:

- a **data spec** (``medmnist:pneumoniamnist@28``, ``builtin:brain_seg3d``, ``csv:...``) is
  prepared by :func:`~transfuse.data.load_dataset` exactly as a run with the same data settings
  prepares it, and only its ``train`` split is read, without its labels: the validation and
  test splits are never touched, so a downstream run on the same data is evaluated on images
  the pretraining has not seen. Images are normalised with the training split's mean/std.
  Segmentation data (whole training volumes) gives random crops of ``patch_size``;
- a **folder** of 2D images (PIL; ``.npy`` too) or NIfTI volumes (MONAI ``LoadImage``, reoriented
  to RAS, optionally resampled to ``spacing`` mm, intensities scaled so the 0.5–99.5th
  percentiles map to 0–1, as transfuse's segmentation data) — every file is training data.

Item ``i`` of :class:`UnlabelledImages` is training image ``i`` (index into the training split
as transfuse prepares it, or into the folder's sorted file list); the pretraining records which
indices it drew (``images.json``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..config import DataSpec
from ..data.base import PreparedData, channel_stats, convert_channels, to_float
from ..errors import DataError
from .ssl_config import IMAGE_SUFFIXES, SMOKE, VOLUME_SUFFIXES, FolderSpec, SSLSpec

__all__ = ["UnlabelledImages", "load_unlabelled", "from_prepared", "read_folder"]

DEFAULT_PATCH = 32  # voxels: 3D crops of a NIfTI folder unless data.patch_size is set


@dataclass
class UnlabelledImages:
    """Training images without labels, normalised, each drawable by index.

    Attributes:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        image_shape: the spatial shape every drawn image has (the crop of larger volumes).
        norm_mean: per-channel mean used for normalisation (0–1 pixel scale).
        norm_std: per-channel std used for normalisation.
        origin: where the images came from, for the record (dataset name and split settings,
            or the folder and its files).
        images: ``(N, C, *image_shape)`` normalised images (fixed-size data), or ``None``.
        volumes: normalised volumes ``(C, *spatial)``, each at least ``image_shape``, that
            random crops are drawn from, or ``None``.
        dataset: any other training ``Dataset`` (its items' first element is the image).
    """

    spatial_dims: int
    in_channels: int
    image_shape: tuple[int, ...]
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]
    origin: dict[str, Any] = field(default_factory=dict)
    images: torch.Tensor | None = None
    volumes: list[torch.Tensor] | None = None
    dataset: Dataset | None = None

    def __len__(self) -> int:
        if self.images is not None:
            return len(self.images)
        if self.volumes is not None:
            return len(self.volumes)
        return len(self.dataset)  # type: ignore[arg-type]

    def batch(self, index: Sequence[int], rng: np.random.Generator) -> torch.Tensor:
        """Images ``index`` as one batch ``(B, C, *image_shape)`` (volumes: one random crop each,
        its corner drawn from ``rng``)."""
        if self.images is not None:
            return self.images[torch.as_tensor(np.asarray(index), dtype=torch.long)]
        if self.volumes is not None:
            return torch.stack([_crop(self.volumes[i], self.image_shape, rng) for i in index])
        return torch.stack([self.dataset[int(i)][0] for i in index])  # type: ignore[index]


def _crop(v: torch.Tensor, shape: tuple[int, ...], rng: np.random.Generator) -> torch.Tensor:
    lo = [int(rng.integers(0, s - p + 1)) for s, p in zip(v.shape[1:], shape)]
    return v[(slice(None), *(slice(a, a + p) for a, p in zip(lo, shape)))]


def _pad_to(v: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    short = [max(0, p - s) for p, s in zip(shape, v.shape[1:])]
    if not any(short):
        return v
    pad = [w for d in reversed(short) for w in (d // 2, d - d // 2)]
    return F.pad(v, pad)


def from_prepared(data: PreparedData, spec: DataSpec) -> UnlabelledImages:
    """The training split of prepared data, labels dropped (``data.val``/``data.test`` unread)."""
    from ..data.base import ArrayDataset
    from ..data.segmentation import PatchDataset

    info, train = data.info, data.train
    origin = {"kind": "dataset", "name": spec.name, "split": "train",
              "split_seed": spec.split_seed, "val_fraction": spec.val_fraction,
              "test_fraction": spec.test_fraction, "n_train": spec.n_train,
              "fraction": spec.fraction, "split_sizes": dict(info.split_sizes),
              "train_available": info.train_available}
    common = {"spatial_dims": info.spatial_dims, "in_channels": info.in_channels,
              "norm_mean": tuple(info.norm_mean), "norm_std": tuple(info.norm_std),
              "origin": origin}
    if isinstance(train, PatchDataset):  # segmentation: crops of the whole training volumes
        shape = tuple(info.image_shape)
        return UnlabelledImages(image_shape=shape, volumes=[_pad_to(v.image, shape) for v in
                                                            train.volumes], **common)
    if isinstance(train, ArrayDataset):
        return UnlabelledImages(image_shape=tuple(train.images.shape[2:]), images=train.images,
                                **common)
    return UnlabelledImages(image_shape=tuple(info.image_shape), dataset=train, **common)


def _files(folder: Path, limit: int | None) -> tuple[list[Path], int]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; data.folder must be a folder of images "
                        f"({', '.join(IMAGE_SUFFIXES)}) or NIfTI volumes (.nii, .nii.gz)")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.name.lower().endswith(IMAGE_SUFFIXES + VOLUME_SUFFIXES))
    if not files:
        raise DataError(f"{folder}: no images found ({', '.join(IMAGE_SUFFIXES)}, .nii, .nii.gz)")
    vols = [p.name.lower().endswith(VOLUME_SUFFIXES) for p in files]
    if any(vols) and not all(vols):
        a, b = files[vols.index(True)], files[vols.index(False)]
        raise DataError(f"{folder}: mixes NIfTI volumes ({a.name}) and 2D images ({b.name}); "
                        "keep one kind per folder")
    return (files[:limit] if limit else files), 3 if vols[0] else 2


def _read_2d(files: list[Path], spec: FolderSpec) -> torch.Tensor:
    from ..data.csvfolder import read_image

    arrays = [read_image(p, size=spec.image_size, channels=spec.channels) for p in files]
    odd = next((i for i, a in enumerate(arrays) if a.shape != arrays[0].shape), None)
    if odd is not None:
        raise DataError(f"{spec.folder}: images differ in shape ({files[0].name}: "
                        f"{arrays[0].shape}, {files[odd].name}: {arrays[odd].shape}); set "
                        "data.image_size (and data.channels) to read them at one size")
    x = to_float(np.stack(arrays))  # a writable copy (PIL's arrays are read-only)
    return convert_channels(x, spec.channels) if spec.channels is not None else x


def _read_3d(files: list[Path], spec: FolderSpec) -> list[torch.Tensor]:
    import warnings

    from monai.transforms import Orientation, ScaleIntensityRangePercentiles, Spacing

    from ..data.segmentation import load_volume, per_axis

    sp = per_axis(spec.spacing, 3, where=str(spec.folder))
    out = []
    for p in files:
        x = load_volume(p, "image", "")
        if x.ndim != 4:
            raise DataError(f"{p}: the image has shape {tuple(x.shape[1:])}; a NIfTI folder for "
                            "3D pretraining holds 3D volumes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI deprecation notes; flat images
            x = Orientation(axcodes="RAS")(x)
            if sp is not None:
                x = Spacing(pixdim=sp, mode="bilinear")(x)
            x = ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0,
                                               clip=True, channel_wise=True)(x)
        t = x.as_tensor().float().contiguous() if hasattr(x, "as_tensor") else torch.as_tensor(x)
        if not torch.isfinite(t).all():
            raise DataError(f"{p}: the volume contains NaN or inf voxels; fix or remove it")
        if spec.channels is not None:
            t = convert_channels(t[None], spec.channels)[0]
        out.append(t)
    if len({t.shape[0] for t in out}) > 1:
        raise DataError(f"{spec.folder}: volumes have different channel counts; set data.channels")
    return out


def read_folder(spec: FolderSpec) -> UnlabelledImages:
    """Every image (2D) or volume (3D) of ``spec.folder``, normalised with their mean/std.

    Raises:
        DataError: missing folder, no or mixed files, unreadable files (named), 2D images of
            different shapes without ``image_size``.
    """
    folder = Path(spec.folder).expanduser()
    files, dims = _files(folder, spec.limit)
    origin = {"kind": "folder", "folder": str(folder.resolve()), "split": "all files",
              "files": [str(p.relative_to(folder)) for p in files]}
    if dims == 2:
        x = _read_2d(files, spec)
        mean, std = channel_stats(x)
        x = (x - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
        return UnlabelledImages(spatial_dims=2, in_channels=int(x.shape[1]),
                                image_shape=tuple(x.shape[2:]), images=x, origin=origin,
                                norm_mean=tuple(round(float(v), 6) for v in mean),
                                norm_std=tuple(round(float(v), 6) for v in std))
    vols = _read_3d(files, spec)
    c = vols[0].shape[0]
    flat = torch.cat([v.reshape(c, -1) for v in vols], dim=1).double()
    mean, std = flat.mean(1).float(), flat.std(1).clamp_min(1e-6).float()
    shape = (spec.patch_size or DEFAULT_PATCH,) * 3
    norm = [_pad_to((v - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1), shape) for v in vols]
    return UnlabelledImages(spatial_dims=3, in_channels=int(c), image_shape=shape, volumes=norm,
                            origin=origin, norm_mean=tuple(round(float(v), 6) for v in mean),
                            norm_std=tuple(round(float(v), 6) for v in std))


def load_unlabelled(spec: SSLSpec) -> UnlabelledImages:
    """The unlabelled training images of ``spec`` (see the module docstring).

    Raises:
        ConfigError, DataError: unknown dataset, unreadable files (named).
    """
    if isinstance(spec.data, FolderSpec):
        return read_folder(spec.data)
    from ..data import load_dataset

    data = spec.data
    if spec.smoke and data.patch_size is None:
        from ..catalog import load

        known = load()["datasets"]
        meta = known.get(data.name) or known.get(data.name.partition(":")[0]) or {}
        if meta.get("task") == "segmentation":
            from dataclasses import replace

            data = replace(data, patch_size=SMOKE["patch_size"])
    return from_prepared(load_dataset(data), data)
