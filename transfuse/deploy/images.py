"""Image files for ``transfuse predict``: read, checked and prepared exactly as the run's training images.

Each file becomes ``(C, *image_shape)`` float32 on the 0–1 scale (PNG/JPEG/TIFF/BMP through the
CSV-folder reader, ``.npy`` arrays in 2D or 3D), with the run's channel conversion and resize,
then normalised with the run's statistics. Every problem is one :class:`~transfuse.errors.DataError`
line naming the file and the fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from ._run import DeployedRun

__all__ = ["IMAGE_SUFFIXES", "fit_shape", "image_batches", "load_image", "normalise", "read_npy"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy")


def fit_shape(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Resize ``(N, C, *spatial)`` to the run's image shape (bilinear / trilinear)."""
    if tuple(x.shape[2:]) == shape:
        return x
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(x, size=shape, mode=mode, align_corners=False, antialias=len(shape) == 2)


def read_npy(path: Path, dims: int) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read .npy ({e}); the file is corrupt or not a NumPy array") from None
    if a.ndim == dims:
        a = a[None]
    if a.ndim != dims + 1 or min(a.shape) < 1:
        want = "(H, W) or (C, H, W)" if dims == 2 else "(D, H, W) or (C, D, H, W)"
        raise DataError(f"{path}: array of shape {a.shape}; this {dims}D run takes {want} arrays")
    return a


def load_image(run: DeployedRun, path: Path) -> torch.Tensor:
    """One image file → ``(C, *image_shape)`` float32 on the 0–1 scale (not yet normalised)."""
    from ..data.base import check_pixels, convert_channels, to_float
    from ..data.csvfolder import read_image

    data = run.spec.data
    low = path.name.lower()
    if not path.is_file():
        raise DataError(f"{path}: image file not found; fix the path (--input or the CSV)")
    if low.endswith(".npy"):
        a = read_npy(path, run.spatial_dims)
    elif run.spatial_dims != 2:
        raise DataError(f"{path}: run {run.run_id} classifies 3D volumes; give them as .npy "
                        "arrays (D, H, W) or (C, D, H, W)")
    elif low.endswith(IMAGE_SUFFIXES):
        a = read_image(path, size=data.image_size, channels=data.channels)
    else:
        raise DataError(f"{path}: not an image file this run reads ({', '.join(IMAGE_SUFFIXES)})")
    check_pixels(a, where=str(path))
    x = to_float(np.array(a))[None]  # a copy: Pillow's arrays are read-only
    if data.channels is not None:
        x = convert_channels(x, data.channels)
    elif x.shape[1] != run.in_channels:
        want = {1: "grayscale", 3: "RGB"}.get(run.in_channels, f"{run.in_channels}-channel")
        raise DataError(f"{path}: the image has {x.shape[1]} channel(s) but run {run.run_id} was "
                        f"trained on {run.in_channels}-channel images; convert it to {want} first")
    if not torch.isfinite(x).all():
        raise DataError(f"{path}: the image holds NaN or inf values; give finite pixel values")
    size, want = "x".join(map(str, x.shape[2:])), "x".join(map(str, run.image_shape))
    if size != want and data.image_size is None:  # its training data were not resized either
        raise DataError(f"{path}: the image is {size} but run {run.run_id} was trained on {want} "
                        f"images without resizing (data.image_size unset); resize it to {want}")
    return fit_shape(x, run.image_shape)[0]  # data.image_size set: resized as in training


def normalise(x: torch.Tensor, run: DeployedRun) -> torch.Tensor:
    mean, std = (torch.tensor(v, dtype=torch.float32) for v in run.norm)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.view(shape)) / std.view(shape)


def image_batches(run: DeployedRun, files: list[tuple[str, Path]], size: int,
                   progress: bool) -> Iterator[torch.Tensor]:
    from tqdm.auto import tqdm

    # No bar for a single batch: it would only flash.
    for i in tqdm(range(0, len(files), size), disable=not progress or len(files) <= size,
                  desc="predict", unit="batch", leave=False):
        chunk = [load_image(run, p) for _, p in files[i:i + size]]
        yield normalise(torch.stack(chunk), run)
