"""Image folder + CSV: ``csv:<file.csv>``.

The CSV has a path column (``DataSpec.path_column``, default ``path``) with image paths relative
to the image root (``DataSpec.data_root``, default: the CSV's folder), and label column(s)
(``DataSpec.label_columns``):

- one column → single-label multi-class; values are class names or integer indices;
- several columns → multi-label, each 0, 1, -1 (uncertain, CheXpert style) or empty (missing,
  always masked). ``DataSpec.uncertain`` maps -1 to 1 (``ones``), 0 (``zeros``) or masks it out
  of the loss and the AUC (``ignore``).

An optional ``split_column`` holds ``train``/``val``/``test``; otherwise a seeded stratified split
is made. Paths may not escape the root. Images (PNG, JPEG, TIFF, BMP via Pillow; ``.npy``) are
read into memory once, at ``DataSpec.image_size`` if given (otherwise all must share one size).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..config import DataSpec
from ..errors import DataError
from .base import SplitArrays
from .registry import RawData, register_dataset

__all__ = ["read_image", "safe_join"]

SPLITS = ("train", "val", "test")
MAX_CLASSES = 10_000  #: most classes an integer label column may index (0..MAX_CLASSES - 1)


def safe_join(root: Path, rel: str, *, csv_path: Path, row: int) -> Path:
    """``root / rel``, refusing absolute paths and ``..`` that leave ``root``."""
    p = Path(rel)
    full = (root / p).resolve()
    if p.is_absolute() or not full.is_relative_to(root.resolve()):
        raise DataError(
            f"{csv_path}: row {row}: path {rel!r} escapes the image root {root}; "
            "use paths relative to the root"
        )
    return full


def read_image(path: Path, *, size: int | None, channels: int | None) -> np.ndarray:
    """Read one image as uint8 ``(C, H, W)`` (``.npy``: any dtype, ``(H, W)`` or ``(C, H, W)``).

    Raises:
        DataError: missing or undecodable file, named.
    """
    if not path.is_file():
        raise DataError(f"{path}: image file not found; fix the path in the CSV or the image root")
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read .npy ({e})") from None
        a = a[None] if a.ndim == 2 else a
        if size is not None and a.shape[1:] != (size, size):
            raise DataError(f"{path}: .npy images are not resized; store them at {size}x{size}")
        return a
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode = {1: "L", 3: "RGB"}.get(channels or 0) or ("L" if im.mode in ("L", "I", "I;16", "F", "1") else "RGB")
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            a = np.asarray(im)
    except Image.DecompressionBombError as e:  # e.g. 15000x15000: gigabytes once decoded
        raise DataError(f"{path}: image too large to read safely ({e}); downscale it "
                        "first") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: cannot decode image ({e}); the file is corrupt or not an image") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def _read_rows(csv_path: Path, spec: DataSpec) -> tuple[list[str], list[dict[str, str]]]:
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: CSV file not found")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{csv_path}: cannot read CSV ({e})") from None
    if not spec.label_columns:
        raise DataError(f"{csv_path}: say which column(s) hold labels with --label-columns "
                        f"(columns: {', '.join(header)})")
    need = [spec.path_column, *spec.label_columns] + ([spec.split_column] if spec.split_column else [])
    missing = [c for c in need if c not in header]
    if missing:
        raise DataError(f"{csv_path}: column {missing[0]!r} not found; columns are: {', '.join(header)}")
    if not rows:
        raise DataError(f"{csv_path}: the CSV has no rows; the dataset is empty")
    for i, r in enumerate(rows):
        short = [c for c in need if r.get(c) is None]
        if short:  # DictReader fills the fields of a short row with None
            raise DataError(f"{csv_path}: row {i + 2} has no value for column {short[0]!r}; "
                            f"every row needs {len(header)} comma-separated fields")
    return header, rows


def _labels(rows: list[dict[str, str]], spec: DataSpec, csv_path: Path):
    cols = spec.label_columns
    if len(cols) == 1:
        values = [r[cols[0]].strip() for r in rows]
        if "" in values:
            raise DataError(f"{csv_path}: row {values.index('') + 2}: empty label in column "
                            f"{cols[0]!r}; every image needs a class")
        if all(v.lstrip("-").isdigit() for v in values):
            big = [i for i, v in enumerate(values) if len(v) > 9 or int(v) >= MAX_CLASSES]
            if big:  # the class count is the largest index + 1: 10^12 would allocate terabytes
                raise DataError(f"{csv_path}: row {big[0] + 2}: label {values[big[0]]} in column "
                                f"{cols[0]!r} is out of range; integer labels are class indices "
                                f"0..{MAX_CLASSES - 1} — number the classes from 0, or use names")
            ints = np.array([int(v) for v in values], dtype=np.int64)
            bad = np.flatnonzero(ints < 0)
            if len(bad):
                raise DataError(f"{csv_path}: row {bad[0] + 2}: label {ints[bad[0]]} in column "
                                f"{cols[0]!r} is out of range; class indices start at 0")
            names = tuple(str(i) for i in range(int(ints.max()) + 1))
            return "multiclass", names, ints
        names = tuple(sorted(set(values)))
        lookup = {n: i for i, n in enumerate(names)}
        return "multiclass", names, np.array([lookup[v] for v in values], dtype=np.int64)
    lab = np.empty((len(rows), len(cols)), dtype=np.float32)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            v = r[c].strip()
            try:
                x = float(v) if v else np.nan
            except ValueError:
                x = None
            if x is None or not (np.isnan(x) or x in (0.0, 1.0, -1.0)):
                raise DataError(f"{csv_path}: row {i + 2}, column {c!r}: value {v!r} is not 0, 1, "
                                "-1 (uncertain) or empty")
            lab[i, j] = x
    return "multilabel", tuple(cols), lab


@register_dataset("csv", description="image folder + CSV: csv:<file.csv> with --label-columns")
def load_csv(spec: DataSpec, arg: str) -> RawData:
    """Read the CSV, the images it lists and its labels (see module docstring)."""
    csv_path = Path(arg).expanduser()
    _, rows = _read_rows(csv_path, spec)
    root = Path(spec.data_root).expanduser() if spec.data_root else csv_path.parent
    task, names, labels = _labels(rows, spec, csv_path)
    paths = [safe_join(root, r[spec.path_column].strip(), csv_path=csv_path, row=i + 2)
             for i, r in enumerate(rows)]
    images = []
    shape0 = None
    for p in tqdm(paths, desc=f"reading {csv_path.name}", disable=len(paths) < 500, leave=False):
        a = read_image(p, size=spec.image_size, channels=spec.channels)
        if shape0 is None:
            shape0 = a.shape
        elif a.shape != shape0:
            raise DataError(f"{p}: shape {a.shape} differs from the first image's {shape0}; "
                            "set --image-size to resize all images to one size")
        images.append(a)
    images_arr = np.stack(images)
    origin = str(csv_path)
    if spec.split_column:
        splits = {}
        col = [r[spec.split_column].strip().lower() for r in rows]
        bad = sorted(set(col) - set(SPLITS))
        if bad:
            raise DataError(f"{csv_path}: column {spec.split_column!r} has value {bad[0]!r}; "
                            "use train, val or test")
        for s in SPLITS:
            idx = np.array([i for i, v in enumerate(col) if v == s], dtype=np.int64)
            splits[s] = SplitArrays(images_arr[idx], labels[idx], origin)
    else:
        splits = {"all": SplitArrays(images_arr, labels, origin)}
    return RawData(task=task, class_names=names, spatial_dims=2, splits=splits,
                   source=str(csv_path), description=f"image folder + CSV ({len(rows)} rows)")
