"""Shared fixtures: the real MedMNIST files and writers for small synthetic datasets.

The MedMNIST files live in ``shared/data/medmnist`` beside the repository checkout (CI clones the
repo next to ``shared/``); tests that need them are skipped, with the reason, when it is missing.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

MEDMNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medmnist"


@pytest.fixture(scope="session")
def medmnist_dir() -> Path:
    """Folder with the official MedMNIST ``.npz`` files; skips the test when it is absent."""
    if not MEDMNIST_DIR.is_dir():
        pytest.skip(f"MedMNIST files not found in {MEDMNIST_DIR} (shared/data/medmnist beside the repo)")
    return MEDMNIST_DIR


def _need(medmnist_dir: Path, name: str) -> Path:
    f = medmnist_dir / name
    if not f.is_file():
        pytest.skip(f"{f} not found")
    return f


@pytest.fixture(scope="session")
def retinamnist_npz(medmnist_dir: Path) -> Path:
    return _need(medmnist_dir, "retinamnist.npz")


@pytest.fixture(scope="session")
def adrenalmnist3d_npz(medmnist_dir: Path) -> Path:
    return _need(medmnist_dir, "adrenalmnist3d.npz")


def write_image_csv(root: Path, rows: Sequence[dict], *, name: str = "labels.csv",
                    size: int = 8, columns: Sequence[str] | None = None) -> Path:
    """Write a small image folder + CSV and return the CSV path.

    Each row is a dict of CSV fields. A row with ``"value"`` gets an image file written at its
    ``"path"`` (relative to ``root``): a constant grayscale ``size``×``size`` PNG of that value
    (0–255), or, with ``"npy"`` set to an array, that array saved as ``.npy``. ``value``/``npy``
    are not written as columns. ``columns`` fixes the header (default: the first row's keys).
    """
    root.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    out_rows = []
    for r in rows:
        r = dict(r)
        value, arr = r.pop("value", None), r.pop("npy", None)
        if arr is not None:
            (root / r["path"]).parent.mkdir(parents=True, exist_ok=True)
            np.save(root / r["path"], arr)
        elif value is not None:
            (root / r["path"]).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((size, size), value, np.uint8)).save(root / r["path"])
        out_rows.append(r)
    header = list(columns) if columns is not None else list(out_rows[0])
    csv_path = root / name
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(out_rows)
    return csv_path


@pytest.fixture
def make_csv_dataset(tmp_path: Path) -> Callable[..., Path]:
    """``make_csv_dataset(rows, **kw) -> csv path`` under ``tmp_path/"images"``; see write_image_csv."""

    def make(rows: Sequence[dict], **kw) -> Path:
        return write_image_csv(tmp_path / "images", rows, **kw)

    return make


def write_medmnist_npz(path: Path, *, n: Sequence[int] = (12, 4, 4), shape: Sequence[int] = (28, 28, 3),
                       num_classes: int = 5, dtype=np.uint8, seed: int = 0, compressed: bool = True,
                       drop: Sequence[str] = (), **override: np.ndarray) -> Path:
    """Write a synthetic MedMNIST-format ``.npz`` (``{split}_images``/``{split}_labels``).

    ``n`` is the train/val/test sizes; labels cycle over ``num_classes`` and are shaped ``(N, 1)``
    as in the official files. ``override`` replaces arrays by key; ``drop`` leaves keys out.
    """
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        imgs = rng.integers(0, 256, (k, *shape))
        arrays[f"{split}_images"] = imgs.astype(dtype) if dtype == np.uint8 else (imgs / 255).astype(dtype)
        arrays[f"{split}_labels"] = (np.arange(k) % num_classes).astype(np.uint8)[:, None]
    arrays.update(override)
    for key in drop:
        arrays.pop(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


@pytest.fixture
def make_npz() -> Callable[..., Path]:
    """``make_npz(path, **kw) -> path``; see write_medmnist_npz."""
    return write_medmnist_npz


@pytest.fixture(scope="module")
def one_thread_module():
    """One intra-op thread for a module of tiny-tensor tests: faster, and immune to oversubscribed CPUs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
