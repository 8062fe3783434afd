"""Self-supervised pretraining files: one YAML file describes one SSL pretraining.

.. code-block:: yaml

    name: ssl-pneumonia              # output <workspace>/pretrain/<name>/, source ssl:<name>
    method: simclr                   # simclr | byol | restoration (Models Genesis)
    model: cbr_small                 # any transfuse model (`transfuse models`); dims follow the data
    data: {name: "medmnist:pneumoniamnist@28"}   # the training split, labels dropped
    # data: {folder: scans/png, image_size: 64, channels: 1}     # or an image folder
    # data: {folder: scans/nifti, patch_size: 32, spacing: 2}    # or a NIfTI folder (3D)
    steps: 1000
    batch_size: 64
    lr: 0.001
    optimizer: adamw                 # sgd (Nesterov momentum 0.9), adam or adamw
    weight_decay: 0.0001
    warmup_steps: 0                  # linear warm-up, then cosine decay
    seed: 0
    temperature: 0.5                 # simclr only: NT-Xent temperature
    momentum: 0.99                   # byol only: EMA momentum of the target, cosine → 1
    proj_dim: 128                    # simclr/byol: projection (and BYOL prediction) output
    hidden_dim: 512                  # simclr/byol: hidden width of the heads

``data`` is either a data spec — the same keys as ``data:`` in run and study files, so the
train/val/test split is the one every run with those settings uses (``split_seed``,
``val_fraction``, ``test_fraction``) and only its **training** split is read — or a folder of
unlabelled images (``.png``/``.jpg``/``.jpeg``/``.bmp``/``.tif``/``.tiff``/``.npy``, 2D) or
volumes (``.nii``/``.nii.gz``, 3D), every file of which is training data.

Parsing imports no torch (model and dataset names are checked against ``catalog.json``). Every
error is a one-line :class:`~transfuse.errors.ConfigError` naming the file and the key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..config import OPTIMIZERS, DataSpec, read_yaml_file
from ..config import where as _where
from ..errors import ConfigError, check_name
from ..spec.fields import field_types, spec_field, validate

__all__ = ["SSL_METHODS", "FolderSpec", "SSLSpec", "ssl_from_dict", "load_ssl", "ssl_schema", "SMOKE"]

#: method → what it learns from (see docs/SSL.md).
SSL_METHODS = {
    "simclr": "contrastive: two augmented views of an image attract, other images repel (NT-Xent)",
    "byol": "two views, an online network predicts a momentum (EMA) target's projection",
    "restoration": "Models Genesis: recover the image from non-linear intensity change, local "
                   "pixel shuffling and in-/out-painting (decoder + MSE)",
}
#: keys that only some methods read (any other method refuses them rather than ignore them)
METHOD_KEYS = {"temperature": ("simclr",), "momentum": ("byol",),
               "proj_dim": ("simclr", "byol"), "hidden_dim": ("simclr", "byol")}
#: ``--smoke``: at most these steps / batch; datasets keep 16 training images, folders 16 files,
#: 3D crops are 16 voxels a side.
SMOKE: dict[str, int] = {"steps": 4, "batch_size": 4, "images": 16, "patch_size": 16}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy")
VOLUME_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class FolderSpec:
    """A folder of unlabelled images (2D) or NIfTI volumes (3D); every file is training data.

    Attributes:
        folder: the folder (searched recursively; files in sorted order).
        image_size: 2D: resize every image to this side (required when sizes differ).
        channels: 1 (grayscale) or 3 (RGB); ``None`` keeps the files' own (2D).
        patch_size: 3D: side of the random crops the views are made from (default 32).
        spacing: 3D: resample every volume to this voxel spacing in mm (``None``: native).
        limit: read only the first ``limit`` files (``None``: all).
    """

    folder: str
    image_size: int | None = None
    channels: int | None = None
    patch_size: int | None = None
    spacing: float | tuple[float, ...] | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.folder, str) or not self.folder.strip():
            raise ConfigError(f"data.folder={self.folder!r} must be a folder path")
        if self.channels not in (None, 1, 3):
            raise ConfigError(f"data.channels={self.channels!r} must be 1, 3 or unset")
        for k, low in (("image_size", 8), ("patch_size", 8), ("limit", 1)):
            v = getattr(self, k)
            if v is not None and v < low:
                raise ConfigError(f"data.{k}={v} must be >= {low}")
        sp = self.spacing
        if isinstance(sp, (list, tuple)):
            sp = tuple(float(v) for v in sp)
            if len(sp) not in (1, 3):
                raise ConfigError(f"data.spacing={list(sp)} must be one number or three (mm)")
            object.__setattr__(self, "spacing", sp[0] if len(set(sp)) == 1 else sp)
        vals = self.spacing if isinstance(self.spacing, tuple) else (self.spacing,)
        if self.spacing is not None and not all(v > 0 for v in vals):
            raise ConfigError(f"data.spacing={self.spacing!r} must be > 0 (mm)")


@dataclass(frozen=True)
class SSLSpec:
    """A parsed SSL pretraining file (see the module docstring for the keys).

    Its fields are the file's keys: :func:`ssl_from_dict` checks the top level against them
    (:func:`transfuse.spec.fields.validate`) before it reads ``data``.
    """

    name: str
    method: str = spec_field(choices=tuple(SSL_METHODS))
    model: str = spec_field()
    data: DataSpec | FolderSpec = spec_field()
    steps: int = spec_field(1000, ge=1)
    batch_size: int = spec_field(64, ge=2)
    lr: float = spec_field(1e-3, gt=0)
    optimizer: str = spec_field("adamw", choices=OPTIMIZERS)
    weight_decay: float = spec_field(1e-4, ge=0)
    warmup_steps: int = spec_field(0, ge=0)
    seed: int = spec_field(0, ge=0)
    temperature: float = spec_field(0.5, gt=0)
    momentum: float = spec_field(0.99, ge=0, le=1)
    proj_dim: int = spec_field(128, ge=1)
    hidden_dim: int = spec_field(512, ge=1)
    description: str = ""
    smoke: bool = spec_field(False, file_key=False)

    def shrink(self) -> SSLSpec:
        """The ``--smoke`` version: a few steps on 16 images, name ``<name>-smoke``."""
        n = SMOKE["images"]
        if isinstance(self.data, FolderSpec):
            data: DataSpec | FolderSpec = replace(
                self.data, limit=min(self.data.limit or n, n),
                patch_size=min(self.data.patch_size or SMOKE["patch_size"], SMOKE["patch_size"]))
        else:
            data = replace(self.data, n_train=min(self.data.n_train or n, n), fraction=None)
            if data.patch_size is not None:
                data = replace(data, patch_size=min(data.patch_size, SMOKE["patch_size"]))
        return replace(self, name=f"{self.name}-smoke", data=data, smoke=True,
                       steps=min(self.steps, SMOKE["steps"]),
                       batch_size=min(self.batch_size, SMOKE["batch_size"]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: every key written out, ``data`` with ``kind`` dataset or folder."""
        d = asdict(self)
        kind = "folder" if isinstance(self.data, FolderSpec) else "dataset"
        d["data"] = {"kind": kind, **{k: list(v) if isinstance(v, tuple) else v
                                       for k, v in asdict(self.data).items()}}
        return d

    def identity(self) -> dict[str, Any]:
        """What the result depends on: :meth:`to_dict` without where the data sits
        (``data_root``) and the free-text description. A finished output with the same
        identity is skipped."""
        d = self.to_dict()
        d["data"].pop("data_root", None)
        d.pop("description", None)
        return d


def _data(raw: Any, path: str) -> DataSpec | FolderSpec:
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict) or ("name" in raw) == ("folder" in raw):
        raise ConfigError(_where(path, "data must be a dataset name, a data mapping like "
                                       "{name: \"medmnist:pneumoniamnist@28\"} or a folder like "
                                       "{folder: path/to/images}"))
    raw = dict(raw)
    if "folder" in raw:
        cls: type = FolderSpec
        raw["folder"] = str(raw["folder"]) if isinstance(raw["folder"], Path) else raw["folder"]
    else:
        cls = DataSpec
        if "label_columns" in raw and isinstance(raw["label_columns"], list):
            raw["label_columns"] = tuple(raw["label_columns"])
    try:
        spec = validate(cls, raw, where="data")  # typed fields, unknown keys named ("data.<key>")
    except ConfigError as e:
        raise ConfigError(_where(path, str(e))) from None
    if isinstance(spec, DataSpec):
        _check_dataset_name(spec.name, path)
    return spec


def _check_dataset_name(name: str, path: str) -> None:
    from ..catalog import load

    known = load()["datasets"]
    family = name if name in known else name.partition(":")[0]
    if family not in known:
        raise ConfigError(_where(path, f"data.name={name!r} is not a known dataset; see "
                                       "`transfuse datasets` (or give data.folder for a folder of "
                                       "unlabelled images)"))


def _check_model(name: Any, path: str) -> str:
    from ..catalog import load

    if not isinstance(name, str) or not name.strip():
        raise ConfigError(_where(path, f"model={name!r} must be a model name (see `transfuse models`)"))
    models = load()["models"]
    if name.startswith("timm:") or name in models:
        return name
    import difflib

    close = difflib.get_close_matches(name, list(models), n=2)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    raise ConfigError(_where(path, f"model={name!r} is not a transfuse model{hint} (see "
                                   "`transfuse models`, or timm:<name>)"))


def ssl_from_dict(raw: Any, *, path: str = "") -> SSLSpec:
    """Validate an SSL pretraining mapping (parsed YAML) into an :class:`SSLSpec`.

    Raises:
        ConfigError: an unknown, missing or invalid key; the message names ``path`` and the key.
    """
    try:  # keys, types, choices and bounds of the top level: SSLSpec's field table
        raw = validate(SSLSpec, raw, where="", partial=True, required=True, typed=True)
    except ConfigError as e:
        raise ConfigError(_where(path, str(e))) from None
    name = raw["name"]
    try:  # the output folder <workspace>/pretrain/<name>/
        name = check_name(name.strip() if isinstance(name, str) else name, field="name")
    except ConfigError as e:
        raise ConfigError(_where(path, str(e))) from None
    method = raw["method"]
    for key, methods in METHOD_KEYS.items():
        if key in raw and method not in methods:
            raise ConfigError(_where(path, f"{key} applies to method {' or '.join(methods)} only, "
                                           f"not {method}; drop it"))
    opt = raw.get("optimizer", "adamw")
    types = field_types(SSLSpec)
    num = {k: raw.get(k, SSLSpec.__dataclass_fields__[k].default) for k in
           ("steps", "batch_size", "lr", "weight_decay", "warmup_steps", "seed", "temperature",
            "momentum", "proj_dim", "hidden_dim")}
    num = {k: float(v) if types[k] is float else v for k, v in num.items()}
    if num["warmup_steps"] >= num["steps"]:
        raise ConfigError(_where(path, f"warmup_steps={num['warmup_steps']} must be < "
                                       f"steps={num['steps']}"))
    return SSLSpec(name=name, method=method, model=_check_model(raw["model"], path),
                   data=_data(raw["data"], path), optimizer=opt,
                   description=str(raw.get("description", "")), **num)


def ssl_schema(raw: Any) -> dict[str, Any]:
    """The ``--set`` schema of a parsed file: the top keys, and ``data`` as a data spec or a
    folder (:func:`transfuse.overrides.load_ssl_overridden`)."""
    top = {k: t for k, t in field_types(SSLSpec).items() if k not in ("data", "smoke")}
    folder = isinstance(raw, dict) and isinstance(raw.get("data"), dict) and "folder" in raw["data"]
    return {**top, "data": FolderSpec if folder else DataSpec}


def load_ssl(path: str | Path) -> SSLSpec:
    """Read and validate an SSL pretraining YAML file (``--set``: ``load_ssl_overridden``).

    Raises:
        ConfigError: the file is missing, not YAML, or has an invalid key (named).
    """
    return ssl_from_dict(read_yaml_file(path, what="SSL pretraining"), path=str(Path(path)))
