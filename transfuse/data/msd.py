"""Segmentation datasets on disk: the Medical Segmentation Decathlon layout and image/label folders.

``msd:<Task folder or dataset.json>``
    A Medical Segmentation Decathlon task: ``dataset.json`` with ``labels`` (``{"0":
    "background", "1": ...}``), optional ``modality`` (``{"0": "FLAIR", ...}``, one per image
    channel), ``training`` (``[{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]``)
    and ``test``. MSD test images come without labels, so val and test are carved from
    ``training`` (seeded by ``split_seed``, ``val_fraction`` / ``test_fraction``); a ``test`` list
    of ``{"image", "label"}`` entries is used as the test split instead.

``nifti:<folder>``
    ``<folder>/images/<case>.<ext>`` with ``<folder>/labels/<case>.<ext>``: NIfTI (``.nii``,
    ``.nii.gz``) or any single file MONAI reads; an image may also be a folder ``images/<case>/``
    of DICOM slices (one series). Classes are ``background``, ``label1`` … up to the largest label
    value found. Val and test are carved from the cases as for MSD.

Relative names are resolved against ``data_root`` when it is given, else the working folder.
Every case is read, validated and resampled up front by
:func:`~transfuse.data.segmentation.read_volume`, so bad files fail before training starts.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..config import DataSpec
from ..errors import DataError
from .base import PreparedData
from .registry import RawData, register_dataset
from .segmentation import Case, keep_training, prepare_segmentation, read_volume, split_cases

__all__ = ["read_msd_json", "find_folder_cases", "load_msd", "load_nifti_folder"]

_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".npy", ".png", ".tif", ".tiff", ".dcm")


def _resolve(spec: DataSpec, arg: str) -> Path:
    p = Path(arg).expanduser()
    if not p.is_absolute() and spec.data_root:
        p = Path(spec.data_root).expanduser() / p
    return p


def _inside(root: Path, rel: Any, where: str, key: str) -> Path:
    """``root/rel`` for a path string of ``dataset.json``; it may not escape ``root``."""
    if not isinstance(rel, str) or not rel:
        raise DataError(f"{where}: {key} must be a file path string, got {rel!r}")
    norm = os.path.normpath(rel)
    if os.path.isabs(norm) or norm == ".." or norm.startswith(".." + os.sep):
        raise DataError(f"{where}: {key} = {rel!r} points outside {root}; paths are relative to "
                        "the dataset folder")
    return root / norm


def read_msd_json(path: Path) -> tuple[tuple[str, ...], int | None, list[Case], list[Case]]:
    """Parse an MSD ``dataset.json``.

    Returns:
        ``(class_names, channels or None, training cases, labelled test cases)``.

    Raises:
        DataError: unreadable JSON, a missing or malformed key, naming the file and the key.
    """
    where = str(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable JSON file ({type(e).__name__}: {e}); give an MSD "
                        "dataset.json") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a JSON object with 'labels' and 'training'")
    for key in ("labels", "training"):
        if key not in d:
            raise DataError(f"{path}: missing key {key!r}; an MSD dataset.json has 'labels' "
                            "({\"0\": \"background\", ...}) and 'training' ([{\"image\", \"label\"}])")
    labels = d["labels"]
    try:
        by_index = {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError, AttributeError):
        raise DataError(f"{path}: 'labels' must map class indices to names, e.g. "
                        "{\"0\": \"background\", \"1\": \"tumour\"}") from None
    if sorted(by_index) != list(range(len(by_index))) or len(by_index) < 2:
        raise DataError(f"{path}: 'labels' keys must be 0..K-1 with K >= 2 (0 = background), got "
                        f"{', '.join(map(str, labels))}")
    names = tuple(by_index[i] for i in range(len(by_index)))
    modality = d.get("modality")
    if modality is not None and not isinstance(modality, dict):
        raise DataError(f"{path}: 'modality' must map channel indices to names, e.g. {{\"0\": \"CT\"}}")
    root = path.parent

    def cases(key: str, need_label: bool) -> list[Case]:
        items = d.get(key) or []
        if not isinstance(items, list):
            raise DataError(f"{path}: {key!r} must be a list of {{\"image\", \"label\"}} entries")
        out = []
        for i, it in enumerate(items):
            if not (isinstance(it, dict) and "image" in it and "label" in it):
                if need_label:
                    raise DataError(f"{path}: {key}[{i}] needs 'image' and 'label' paths")
                continue  # MSD test entries are image paths only: unlabelled, not used
            out.append(Case(_inside(root, it["image"], where, f"{key}[{i}].image"),
                            _inside(root, it["label"], where, f"{key}[{i}].label"), where))
        return out

    train, test = cases("training", True), cases("test", False)
    if not train:
        raise DataError(f"{path}: 'training' lists no cases")
    return names, (len(modality) if modality else None), train, test


def _read_all(cases: dict[str, list[Case]], spec: DataSpec, *, num_classes: int | None,
              channels: int | None) -> dict[str, list]:
    from tqdm.auto import tqdm

    total = sum(len(v) for v in cases.values())
    out: dict[str, list] = {}
    # Only on a terminal: logs and the one-line error contract of the CLI stay clean.
    with tqdm(total=total, desc="read volumes", unit="case", leave=False,
              disable=total < 8 or not sys.stderr.isatty()) as bar:
        for split, items in cases.items():
            out[split] = []
            for c in items:
                out[split].append(read_volume(c, num_classes=num_classes, spacing=spec.spacing,
                                              channels=channels))
                bar.update(1)
    return out


def _splits(spec: DataSpec, train: list[Case], test: list[Case], where: str) -> dict[str, list[Case]]:
    parts = split_cases(train, spec, where=where, has_test=bool(test))
    if test:
        parts["test"] = test
    parts["train"] = keep_training(parts["train"], spec)
    return parts


@register_dataset("msd", description="Medical Segmentation Decathlon task: msd:<Task folder or "
                  "dataset.json> (NIfTI; val/test carved from training)", task="segmentation")
def load_msd(spec: DataSpec, arg: str) -> RawData:
    """Loader for ``msd:<path>``; volumes are read when the data is prepared."""
    path = _resolve(spec, arg)
    if path.is_dir():
        path = path / "dataset.json"
    if not path.is_file():
        raise DataError(f"{path} not found: give an MSD Task folder holding dataset.json, or the "
                        "dataset.json itself")
    names, channels, train, test = read_msd_json(path)

    def prepared(spec: DataSpec, norm: Any = None) -> PreparedData:
        volumes = _read_all(_splits(spec, train, test, str(path)), spec,
                            num_classes=len(names), channels=channels)
        return prepare_segmentation(volumes, spec, class_names=names, default_patch=64, norm=norm,
                                    source=f"Medical Segmentation Decathlon layout ({path})",
                                    description=f"segmentation of {', '.join(names[1:])}")

    return RawData(task="segmentation", class_names=names, spatial_dims=3, prepared=prepared,
                   source=str(path))


def _case_name(p: Path) -> str | None:
    if p.is_dir():
        return p.name
    for suf in _SUFFIXES:
        if p.name.lower().endswith(suf):
            return p.name[: -len(suf)]
    return None


def find_folder_cases(folder: Path) -> list[Case]:
    """Pair ``images/<case>.*`` (or ``images/<case>/`` DICOM) with ``labels/<case>.*``.

    Raises:
        DataError: a missing ``images``/``labels`` folder, an image without a label or a label
            without an image, naming the file.
    """
    im_dir, lab_dir = folder / "images", folder / "labels"
    for d in (im_dir, lab_dir):
        if not d.is_dir():
            raise DataError(f"{d} not found: a nifti: dataset folder holds images/<case>.nii.gz "
                            "and labels/<case>.nii.gz")
    labels = {n: p for p in sorted(lab_dir.iterdir()) if not p.name.startswith(".")
              and (n := _case_name(p)) is not None}
    cases, used = [], set()
    for p in sorted(im_dir.iterdir()):
        name = _case_name(p)
        if name is None or p.name.startswith("."):
            continue
        if name not in labels:
            raise DataError(f"{p}: no label map for case {name!r}; add {lab_dir / (name + '.nii.gz')}")
        cases.append(Case(p, labels[name], str(folder)))
        used.add(name)
    extra = sorted(set(labels) - used)
    if extra:
        raise DataError(f"{labels[extra[0]]}: label map without an image; add "
                        f"{im_dir / (extra[0] + '.nii.gz')} or remove it")
    if not cases:
        raise DataError(f"{im_dir}: no images found (.nii.gz, .nii or DICOM folders)")
    return cases


@register_dataset("nifti", description="image/label folders: nifti:<folder> with images/<case> "
                  "(NIfTI or a DICOM series folder) and labels/<case>.nii.gz", task="segmentation")
def load_nifti_folder(spec: DataSpec, arg: str) -> RawData:
    """Loader for ``nifti:<folder>``; classes are inferred from the largest label value."""
    folder = _resolve(spec, arg)
    if not folder.is_dir():
        raise DataError(f"{folder} not found: give a folder with images/ and labels/")
    cases = find_folder_cases(folder)

    def prepared(spec: DataSpec, norm: Any = None) -> PreparedData:
        volumes = _read_all(_splits(spec, cases, [], str(folder)), spec, num_classes=None,
                            channels=None)
        k = max(int(v.label.max()) for vs in volumes.values() for v in vs) + 1
        names = ("background",) + tuple(f"label{i}" for i in range(1, k))
        return prepare_segmentation(volumes, spec, class_names=names, default_patch=64, norm=norm,
                                    source=f"image/label folder ({folder})",
                                    description=f"{k - 1}-class segmentation")

    return RawData(task="segmentation", class_names=("background",), spatial_dims=3,
                   prepared=prepared, source=str(folder))

