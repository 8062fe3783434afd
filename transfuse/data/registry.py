"""Dataset registry and :func:`load_dataset`.

A dataset name is ``family:argument`` — ``medmnist:retinamnist@28``, ``builtin:brain_tissue``,
``csv:labels.csv``. Each family (or fully named built-in) is registered with a loader
``loader(spec, arg) -> RawData``; :func:`load_dataset` runs it and then :func:`prepare`, which is
the same for every source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .._registry import Registry
from ..config import DataSpec
from ..errors import ConfigError, DataError
from .base import (
    ArrayDataset,
    DatasetInfo,
    PreparedData,
    SplitArrays,
    channel_stats,
    convert_channels,
    resize,
    resolve_labels,
    split_indices,
    stratified_subsample,
    to_float,
    validate_split,
)

__all__ = ["RawData", "DATASETS", "register_dataset", "load_dataset", "list_datasets", "prepare"]


@dataclass
class RawData:
    """What a loader returns before the shared preparation.

    Attributes:
        task: ``multiclass``, ``multilabel`` or ``segmentation``.
        class_names: one per class / label.
        spatial_dims: 2 or 3.
        splits: ``train``/``val``/``test`` arrays, or a single ``all`` that :func:`prepare` splits
            with the spec's fractions and seed.
        source, license, description: provenance, shown by ``transfuse datasets``.
        prepared: a loader that builds its splits itself (volumes, file-backed data) sets this
            instead of ``splits``: ``(spec, norm) -> PreparedData``, ``norm`` as in
            :func:`load_dataset`.
    """

    task: str
    class_names: tuple[str, ...]
    spatial_dims: int
    splits: dict[str, SplitArrays] = field(default_factory=dict)
    source: str = ""
    license: str = ""
    description: str = ""
    prepared: Callable[..., PreparedData] | None = None


Loader = Callable[[DataSpec, str], RawData]
DATASETS: Registry[Loader] = Registry("dataset")


def register_dataset(name: str, **meta: Any) -> Callable[[Loader], Loader]:
    """Register a loader for a family (``"medmnist"``) or a full name (``"builtin:x"``)."""
    return DATASETS.register(name, **meta)


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset families and built-in names matching ``pattern``."""
    return DATASETS.list(pattern)


def lookup_loader(name: str) -> tuple[Loader, str]:
    if name in DATASETS:
        return DATASETS.get(name).fn, ""
    family, sep, arg = name.partition(":")
    if not sep or not arg:
        raise ConfigError(
            f"dataset name {name!r} must look like family:argument, e.g. medmnist:retinamnist@28, "
            "builtin:brain_tissue or csv:labels.csv (see `transfuse datasets`)"
        )
    return DATASETS.get(family).fn, arg


def prepare(raw: RawData, spec: DataSpec, *,
            norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> PreparedData:
    """Split, validate, subsample, convert, resize and normalise raw arrays (see ``base``).

    ``norm`` = ``(mean, std)`` per channel (0–1 pixel scale) overrides the training-split
    statistics, e.g. with a pretrained source's preprocessing. A 3-value ``norm`` on 1-channel
    data is averaged to one value.
    """
    splits = dict(raw.splits)
    if "all" in splits:
        allsplit = splits.pop("all")
        validate_split(allsplit, split="all", task=raw.task, num_classes=len(raw.class_names))
        idx = split_indices(allsplit.labels, seed=spec.split_seed,
                            val_fraction=spec.val_fraction, test_fraction=spec.test_fraction)
        splits = {k: SplitArrays(allsplit.images[v], allsplit.labels[v], allsplit.origin)
                  for k, v in idx.items()}
    for k in ("train", "val", "test"):
        if k not in splits:
            raise DataError(f"dataset {spec.name!r} has no {k} split; give val/test fractions > 0")
        validate_split(splits[k], split=k, task=raw.task, num_classes=len(raw.class_names))

    if raw.task == "multiclass":  # one class: nothing to learn, and every AUC is undefined
        seen = np.unique(np.concatenate([splits[k].labels for k in ("train", "val", "test")]))
        if len(seen) < 2:
            name = raw.class_names[int(seen[0])] if len(seen) else "?"
            raise DataError(f"{splits['train'].origin or spec.name}: every label is class {name!r}; "
                            "a classifier needs examples of at least two classes")
    tr = splits["train"]
    available = len(tr.labels)
    n_keep = spec.n_train
    if spec.fraction is not None:
        n_keep = max(1, int(round(spec.fraction * len(tr.labels))))
    if n_keep is not None:
        keep = stratified_subsample(tr.labels, n_keep, seed=spec.split_seed)
        splits["train"] = SplitArrays(tr.images[keep], tr.labels[keep], tr.origin)

    tensors = {}
    for k, s in splits.items():
        x = to_float(s.images)
        if spec.channels is not None:
            x = convert_channels(x, spec.channels)
        if spec.image_size is not None:
            x = resize(x, spec.image_size)
        tensors[k] = x
    mean, std = channel_stats(tensors["train"])
    if norm is not None:
        c = int(tensors["train"].shape[1])
        m, sd = torch.tensor(norm[0], dtype=torch.float32), torch.tensor(norm[1], dtype=torch.float32)
        if len(m) != c:
            m, sd = m.mean().repeat(c), sd.mean().repeat(c)
        mean, std = m, sd
    shape = (-1,) + (1,) * raw.spatial_dims
    datasets = {}
    for k, x in tensors.items():
        x = (x - mean.view(shape)) / std.view(shape)
        y, m = resolve_labels(splits[k].labels, task=raw.task, policy=spec.uncertain)
        datasets[k] = ArrayDataset(x, y, m)
    info = DatasetInfo(
        name=spec.name, task=raw.task, class_names=tuple(raw.class_names),
        spatial_dims=raw.spatial_dims, in_channels=int(tensors["train"].shape[1]),
        image_shape=tuple(int(s) for s in tensors["train"].shape[2:]), source=raw.source,
        license=raw.license, description=raw.description,
        norm_mean=tuple(round(float(v), 6) for v in mean),
        norm_std=tuple(round(float(v), 6) for v in std),
        split_sizes={k: len(v) for k, v in datasets.items()}, train_available=available,
    )
    return PreparedData(info, datasets["train"], datasets["val"], datasets["test"])


def load_dataset(spec: DataSpec | str, *,
                 norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
                 **overrides: Any) -> PreparedData:
    """Load and prepare a dataset.

    Args:
        spec: a :class:`DataSpec` or just a dataset name.
        norm: ``(mean, std)`` per channel to normalise with instead of the training split's
            statistics (e.g. a pretrained source's).
        **overrides: fields of :class:`DataSpec` to set (e.g. ``n_train=100``).

    Returns:
        :class:`PreparedData` with ``info`` and ``train``/``val``/``test`` datasets that yield
        ``(image, target, mask)``.

    Raises:
        ConfigError: unknown dataset name.
        DataError: missing or invalid files, named in the message.
    """
    if isinstance(spec, str):
        spec = DataSpec(name=spec, **overrides)
    elif overrides:
        spec = replace(spec, **overrides)
    loader, arg = lookup_loader(spec.name)
    raw = loader(spec, arg)
    check_task_options(spec, raw.task)
    if raw.prepared is not None:
        return raw.prepared(spec, norm)
    return prepare(raw, spec, norm=norm)


def check_task_options(spec: DataSpec, task: str) -> None:
    """Options that only one kind of task uses raise instead of being silently ignored."""
    if task == "segmentation":
        if spec.image_size is not None:
            raise ConfigError(f"data.image_size does not apply to segmentation data {spec.name!r}; "
                              "set data.spacing (mm) and data.patch_size instead")
        return
    seg = [k for k, unset in (("patch_size", None), ("spacing", None), ("fg_ratio", 0.5),
                              ("regions", ())) if getattr(spec, k) != unset]
    if seg:
        raise ConfigError(f"data.{seg[0]} only applies to segmentation data; {spec.name!r} is "
                          f"{task}: drop it")
