"""Pretraining files: one YAML file describes a Med3D-style multi-dataset pretraining.

.. code-block:: yaml

    name: med3d-spm2                 # output folder <workspace>/pretrain/<name>/
    encoder: med3d_resnet10            # the shared encoder (any Med3D depth)
    datasets:                          # segmentation data only; one head per entry
      - data: {name: "builtin:spm_tissue6"}           # a DataSpec mapping, as in study files
        weight: 1.0                    # probability of a step ∝ weight
      - data: {name: "builtin:brain_seg3d", spacing: 2}  # its own spacing wins
        weight: 1.0
    spacing: 3                         # mm, for every dataset that sets none
    patch_size: 32                     # training patch / sliding window, unless a dataset sets one
    steps: 2000
    batch_size: 4
    lr: 0.01
    optimizer: sgd                     # sgd (Nesterov momentum 0.9), adam or adamw
    seed: 0
    eval_every: 200                    # val Dice per dataset every this many steps and at the end

Every error is a one-line :class:`~transfuse.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..config import OPTIMIZERS, DataSpec, read_yaml_file
from ..config import where as _where
from ..errors import ConfigError, check_name
from ..spec.fields import spec_field, validate

__all__ = ["DatasetEntry", "PretrainSpec", "load_pretrain", "pretrain_from_dict", "SMOKE",
           "MIN_PATCH"]

#: ``--smoke``: at most these steps / eval interval / batch, and patches of this side.
SMOKE: dict[str, int] = {"steps": 4, "eval_every": 2, "batch_size": 2, "patch_size": 16}
#: Smallest patch side: the encoder's output stride is 8 and its head upsamples ×2.
MIN_PATCH = 16
_ENCODER = re.compile(r"med3d_resnet(\d+)")


@dataclass(frozen=True)
class DatasetEntry:
    """One pretraining dataset: its data spec (spacing/patch filled in) and sampling weight."""

    data: DataSpec
    weight: float = spec_field(1.0, gt=0)  # probability of a step ∝ weight


@dataclass(frozen=True)
class PretrainSpec:
    """A parsed pretraining file (see the module docstring for the keys).

    Its fields are the file's keys: :func:`pretrain_from_dict` checks the top level against them
    (:func:`transfuse.spec.fields.validate`) before it builds the dataset entries.
    """

    name: str
    encoder: str
    datasets: tuple[DatasetEntry, ...]
    spacing: float | tuple[float, ...] | None = None
    patch_size: int = spec_field(32, ge=MIN_PATCH)
    steps: int = spec_field(1000, ge=1)
    batch_size: int = spec_field(4, ge=1)
    lr: float = spec_field(0.01, gt=0)
    optimizer: str = spec_field("sgd", choices=OPTIMIZERS)
    seed: int = spec_field(0, ge=0)
    eval_every: int = spec_field(100, ge=1)
    description: str = ""
    smoke: bool = spec_field(False, file_key=False)

    @property
    def depth(self) -> int:
        """The Med3D depth of :attr:`encoder` (``med3d_resnet10`` → 10)."""
        return int(_ENCODER.fullmatch(self.encoder).group(1))  # type: ignore[union-attr]

    def shrink(self) -> PretrainSpec:
        """The ``--smoke`` version: a few steps, batch 2, 16³ patches, name ``<name>-smoke``."""
        small = {k: min(getattr(self, k), v) for k, v in SMOKE.items()}
        entries = tuple(replace(e, data=replace(e.data, patch_size=small["patch_size"]))
                        for e in self.datasets)
        return replace(self, name=f"{self.name}-smoke", datasets=entries, smoke=True, **small)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (data specs in full, defaults written out)."""
        d = asdict(self)
        d["datasets"] = [{"data": asdict(e.data), "weight": e.weight} for e in self.datasets]
        return d


def _entry(i: int, e: Any, spec: dict[str, Any], path: str) -> DatasetEntry:
    where = f"datasets[{i}]"
    if isinstance(e, dict) and isinstance(e.get("data"), str):
        e = {**e, "data": {"name": e["data"]}}
    try:  # the entry's and its data spec's keys and values, through their field tables
        e = validate(DatasetEntry, e, where=where, partial=True, required=True, typed=True)
        data = validate(DataSpec, e["data"], where=f"{where}.data", partial=True, required=True)
    except ConfigError as err:
        raise ConfigError(_where(path, str(err))) from None
    data = dict(data)
    if data.get("spacing") is None and spec["spacing"] is not None:
        data["spacing"] = spec["spacing"]
    if data.get("patch_size") is None:
        data["patch_size"] = spec["patch_size"]
    try:
        ds = DataSpec(**data)
    except ConfigError as err:  # the DataSpec names the field; add where it is
        raise ConfigError(_where(path, f"{where}.{err}")) from None
    if ds.patch_size is not None and ds.patch_size < MIN_PATCH:
        raise ConfigError(_where(path, f"{where}.data.patch_size={ds.patch_size} must be >= "
                                       f"{MIN_PATCH} (Med3D's output stride is 8)"))
    _check_segmentation_name(ds.name, f"{where}.data.name", path)
    return DatasetEntry(ds, float(e.get("weight", 1.0)))


def _check_segmentation_name(name: str, key: str, path: str) -> None:
    """Refuse data that the registry already knows is not segmentation (others: at load time)."""
    from ..data import DATASETS

    family = name if name in DATASETS else name.partition(":")[0]
    if family not in DATASETS:
        raise ConfigError(_where(path, f"{key}={name!r} is not a known dataset; see "
                                       "`transfuse datasets`"))
    task = DATASETS.get(family).meta.get("task")
    if task is not None and task != "segmentation":
        raise ConfigError(_where(path, f"{key}={name!r} is {task} data; Med3D pretraining needs "
                                       "segmentation data (a label per voxel), e.g. "
                                       "builtin:brain_seg3d, builtin:spm_tissue6, msd:<folder>"))


def pretrain_from_dict(raw: Any, *, path: str = "") -> PretrainSpec:
    """Validate a pretraining mapping (parsed YAML) into a :class:`PretrainSpec`.

    Raises:
        ConfigError: an unknown, missing or invalid key; the message names ``path`` and the key.
    """
    from ..models.med3d import MED3D_DEPTHS

    try:  # keys, types, choices and bounds of the top level: PretrainSpec's field table
        raw = validate(PretrainSpec, raw, where="", partial=True, required=True, typed=True)
    except ConfigError as e:
        raise ConfigError(_where(path, str(e))) from None
    name = raw["name"]
    try:  # the output folder <workspace>/pretrain/<name>/
        name = check_name(name.strip() if isinstance(name, str) else name, field="name")
    except ConfigError as e:
        raise ConfigError(_where(path, str(e))) from None
    enc = raw["encoder"]
    m = _ENCODER.fullmatch(str(enc))
    if m is None or int(m.group(1)) not in MED3D_DEPTHS:
        depths = ", ".join(f"med3d_resnet{d}" for d in MED3D_DEPTHS)
        raise ConfigError(_where(path, f"encoder={enc!r} is not a Med3D encoder; choose one of {depths}"))
    spacing = raw.get("spacing")
    if spacing is not None:
        vals = list(spacing) if isinstance(spacing, (list, tuple)) else [spacing]
        if not vals or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0
                               for v in vals) or len(vals) not in (1, 3):
            raise ConfigError(_where(path, f"spacing={spacing!r} must be a number > 0 (mm) or "
                                           "three of them"))
        spacing = float(vals[0]) if len(set(vals)) == 1 else tuple(float(v) for v in vals)
    opt = raw.get("optimizer", "sgd")
    top = {k: raw.get(k, PretrainSpec.__dataclass_fields__[k].default)
           for k in ("patch_size", "steps", "batch_size", "lr", "seed", "eval_every")}
    top["lr"] = float(top["lr"])
    top["spacing"] = spacing
    entries = raw["datasets"]
    if not isinstance(entries, (list, tuple)) or not entries:
        raise ConfigError(_where(path, "datasets must be a non-empty list of {data: ..., weight: ...}"))
    datasets = tuple(_entry(i, e, top, path) for i, e in enumerate(entries))
    seen: set[str] = set()
    for i, e in enumerate(datasets):
        if e.data.name in seen:
            raise ConfigError(_where(path, f"datasets[{i}].data.name={e.data.name!r} is listed "
                                           "twice; each dataset gets one head"))
        seen.add(e.data.name)
    return PretrainSpec(name=name.strip(), encoder=str(enc), datasets=datasets, optimizer=opt,
                        description=str(raw.get("description", "")), **top)


def load_pretrain(path: str | Path) -> PretrainSpec:
    """Read and validate a pretraining YAML file.

    Raises:
        ConfigError: the file is missing, not YAML, or has an invalid key (named).
    """
    return pretrain_from_dict(read_yaml_file(path, what="pretraining"), path=str(Path(path)))
