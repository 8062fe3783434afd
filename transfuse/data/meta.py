"""What a dataset is without its pixels: task, classes, channels, shape, training examples.

``transfuse study check`` asks this of every distinct data spec of a study before anything trains;
for MedMNIST it reads only the ``.npz`` array header (no pixels), for the other families the
loader's arrays or its prepared information.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import DataSpec

__all__ = ["DatasetMeta", "dataset_meta"]


@dataclass(frozen=True)
class DatasetMeta:
    """What a dataset is, without its pixels: enough for the compatibility checks."""

    task: str
    class_names: tuple[str, ...]
    spatial_dims: int
    channels: int
    shape: tuple[int, ...]
    available: int | None


def dataset_meta(spec: DataSpec) -> DatasetMeta:
    """The metadata of ``spec``'s dataset (MedMNIST from its file header, others from the loader).

    Raises:
        TransfuseError: the loader's one-line error (unknown dataset, missing file, bad option).
    """
    return _medmnist_meta(spec) or _read_meta(spec)


def _read_meta(spec: DataSpec) -> DatasetMeta:
    """A dataset's metadata from its loader (in-memory families: arrays only, not prepared)."""
    from .base import split_indices
    from .registry import check_task_options, lookup_loader

    loader, arg = lookup_loader(spec.name)
    raw = loader(spec, arg)
    check_task_options(spec, raw.task)
    if raw.prepared is not None:  # volumes / file-backed data: prepared once (patch shape, counts)
        info = raw.prepared(spec, None).info
        return DatasetMeta(info.task, tuple(info.class_names), info.spatial_dims, info.in_channels,
                     tuple(info.image_shape), info.train_available)
    if "all" in raw.splits:
        s = raw.splits["all"]
        idx = split_indices(s.labels, seed=spec.split_seed, val_fraction=spec.val_fraction,
                            test_fraction=spec.test_fraction)
        images, n = s.images, len(idx["train"])
    else:
        images = raw.splits["train"].images
        n = len(raw.splits["train"].labels)
    return DatasetMeta(raw.task, tuple(raw.class_names), raw.spatial_dims, int(images.shape[1]),
                 tuple(int(x) for x in images.shape[2:]), n)


def _medmnist_meta(spec: DataSpec) -> DatasetMeta | None:
    """MedMNIST without its pixels: the registry's table and the ``.npz`` array header
    (``None``: not MedMNIST, or not readable that way — the loader then says why)."""
    if not spec.name.startswith("medmnist:"):
        return None
    import zipfile

    import numpy as np

    from .medmnist import CLASS_NAMES, MEDMNIST_INFO, data_root, medmnist_path, parse_arg

    flag, size = parse_arg(spec.name.split(":", 1)[1])
    task, k, channels, dims, _ = MEDMNIST_INFO[flag]
    path = medmnist_path(data_root(spec), flag, size)
    try:
        with zipfile.ZipFile(path) as z, z.open("train_labels.npy") as f:
            version = np.lib.format.read_magic(f)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            n = int(reader(f)[0][0])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    return DatasetMeta(task, CLASS_NAMES.get(flag, tuple(str(i) for i in range(k))), dims, channels,
                 (size,) * dims, n)
