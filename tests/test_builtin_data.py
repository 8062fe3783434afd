"""Behaviour of the built-in real datasets ``builtin:brain_tissue`` and ``builtin:modality``."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import transfuse.data.builtin as bi
from transfuse.data import list_datasets, load_dataset
from transfuse.errors import DataError

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache folder for the whole module (generation happens once per seed)."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("transfuse-cache")
    mp.setenv("TRANSFUSE_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def brain(cache):
    return bi.load_brain_tissue(_spec("builtin:brain_tissue"))


@pytest.fixture(scope="module")
def modality(cache):
    return bi.load_modality(_spec("builtin:modality"))


def _spec(name, **kw):
    from transfuse.config import DataSpec

    return DataSpec(name=name, **kw)


def _rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x.reshape(len(x), -1)}


def test_registered():
    assert {"builtin:brain_tissue", "builtin:modality"} <= set(list_datasets("builtin:*"))


@pytest.mark.parametrize("which, classes, side, counts", [
    ("brain", bi.BRAIN_CLASSES, 32, {"train": 800, "val": 125, "test": 125}),
    ("modality", bi.MODALITY_CLASSES, 64, {"train": 400, "val": 60, "test": 100}),
])
def test_shapes_dtypes_and_balanced_classes(which, classes, side, counts, request):
    raw = request.getfixturevalue(which)
    assert raw.task == "multiclass" and raw.spatial_dims == 2
    assert tuple(raw.class_names) == classes
    assert raw.source and raw.license and raw.description
    for s in SPLITS:
        arr = raw.splits[s]
        assert arr.images.dtype == np.uint8
        assert arr.images.shape == (len(arr.labels), 1, side, side)
        assert arr.labels.dtype == np.int64 and arr.labels.ndim == 1
        per_class = np.bincount(arr.labels, minlength=len(classes))
        assert len(per_class) == len(classes)
        assert (per_class == counts[s]).all(), (s, per_class)
        assert arr.images.std() > 10  # real image content, not blank
        for c in range(len(classes)):
            assert arr.images[arr.labels == c].std() > 5, (s, classes[c])


@pytest.mark.parametrize("which", ["brain", "modality"])
def test_no_identical_example_across_splits(which, request):
    raw = request.getfixturevalue(which)
    rows = {s: _rows(raw.splits[s].images) for s in SPLITS}
    assert not rows["train"] & rows["test"]
    assert not rows["train"] & rows["val"]
    assert not rows["val"] & rows["test"]


def test_brain_train_and_test_come_from_different_images(brain):
    # Train/val are nilearn's MNI152, test is SPM's Colin27: the origins say so, and a centre
    # pixel is 0 exactly for background in both images (skull-stripped), never for tissue.
    assert "MNI152" in brain.splits["train"].origin and "Colin27" in brain.splits["test"].origin
    for s in SPLITS:
        x, y = brain.splits[s].images, brain.splits[s].labels
        centre = x[:, 0, 16, 16]
        assert (centre[y == 0] == 0).all()
        assert (centre[y > 0] > 0).mean() > 0.99


def test_brain_val_slices_disjoint_from_train(cache):
    (_, lab), _ = bi._brain_volumes()
    z = bi._brain_slices(lab)
    assert (np.diff(z) == 1).all() and len(z) > 40  # a contiguous stack of brain slices
    for seed in (0, 1, 2):
        train_z, val_z = bi._brain_slice_split(z, np.random.default_rng(seed), 4, 3, 2)
        assert len(val_z) == 12 and len(train_z) == len(z) - 28
        assert not set(val_z.tolist()) & set(train_z.tolist())
        # at least two unused guard slices between any val and any train slice
        assert np.abs(val_z[:, None] - train_z[None, :]).min() >= 3


def test_brain_deterministic_per_seed(brain):
    again = bi.make_brain_tissue(0)  # bypasses the cache
    for s in SPLITS:
        np.testing.assert_array_equal(again[f"{s}_x"], brain.splits[s].images)
        np.testing.assert_array_equal(again[f"{s}_y"], brain.splits[s].labels)
    other = bi.make_brain_tissue(1)
    assert not np.array_equal(other["train_x"], again["train_x"])
    assert not np.array_equal(other["test_x"], again["test_x"])


def test_modality_deterministic_per_seed(modality):
    again = bi.make_modality(0)
    for s in SPLITS:
        np.testing.assert_array_equal(again[f"{s}_x"], modality.splits[s].images)
        np.testing.assert_array_equal(again[f"{s}_y"], modality.splits[s].labels)
    other = bi.make_modality(1, n_train=20, n_val=5, n_test=5)
    assert not np.array_equal(other["test_x"], again["test_x"][: len(other["test_x"])])


def test_modality_sources_leakage_rule():
    by_class: dict[str, dict[str, set[str]]] = {}
    for src in bi.MODALITY_SOURCES:
        by_class.setdefault(src.cls, {}).setdefault(src.role, set()).add(src.name)
    assert set(by_class) == set(bi.MODALITY_CLASSES)
    for cls, roles in by_class.items():
        names = set().union(*roles.values())
        if len(names) >= 2:  # train and test from different files
            assert set(roles) == {"train", "test"}, cls
            assert not roles["train"] & roles["test"]
        else:  # single source: disjoint regions of it
            assert set(roles) == {"all"}, cls
    assert {c for c, r in by_class.items() if "all" in r} == {"NM", "histology"}


def test_modality_single_source_regions_disjoint():
    for h, w in [(1024, 256), (512, 512)]:
        reg = bi._regions("all", 1, h, w)
        boxes = {}
        for s, (_, (r0, r1), (c0, c1)) in reg.items():
            boxes[s] = (r0 * h, r1 * h, c0 * w, c1 * w)
        for a in SPLITS:
            for b in SPLITS:
                if a < b:
                    A, B = boxes[a], boxes[b]
                    overlap_r = min(A[1], B[1]) - max(A[0], B[0])
                    overlap_c = min(A[3], B[3]) - max(A[2], B[2])
                    assert overlap_r <= 0 or overlap_c <= 0, (h, w, a, b)


def test_load_dataset_through_shared_pipeline(cache):
    data = load_dataset("builtin:brain_tissue", n_train=200)
    assert data.info.num_classes == 4 and data.info.in_channels == 1
    assert data.info.image_shape == (32, 32)
    assert data.info.split_sizes == {"train": 200, "val": 500, "test": 500}
    x, y, m = data.train[0]
    assert x.shape == (1, 32, 32) and str(x.dtype) == "torch.float32" and int(y) in range(4)
    big = load_dataset("builtin:brain_tissue", image_size=64, channels=3, n_train=40)
    assert big.info.image_shape == (64, 64) and big.test[0][0].shape == (3, 64, 64)
    mod = load_dataset("builtin:modality", n_train=70)
    assert mod.info.num_classes == 7 and mod.info.image_shape == (64, 64)


def test_cache_round_trip(cache, brain):
    params = {"patch": 32, "n_train": 800, "n_val": 125, "n_test": 125, "val_blocks": 4,
              "block": 3, "guard": 2}
    path = bi._cache_path(bi.BRAIN, params, 0)
    assert path.is_file() and path.parent.parent == cache
    assert not list(path.parent.glob("*.tmp"))

    def fail():
        raise AssertionError("cache hit expected")

    hit = bi.cached_arrays(bi.BRAIN, params, 0, fail)
    np.testing.assert_array_equal(hit["train_x"], brain.splits["train"].images)

    # A corrupt cache file is ignored and rewritten.
    calls = []
    fake = {f"{s}_{k}": np.zeros((2, 1, 4, 4) if k == "x" else (2,), np.uint8) for s in SPLITS
            for k in "xy"}
    key = {"test": "corrupt"}
    bad = bi._cache_path("builtin:unit", key, 0)
    bad.write_bytes(b"not an npz")
    out = bi.cached_arrays("builtin:unit", key, 0, lambda: calls.append(1) or fake)
    assert calls == [1] and out["train_x"].shape == (2, 1, 4, 4)
    again = bi.cached_arrays("builtin:unit", key, 0, fail)
    np.testing.assert_array_equal(again["val_x"], fake["val_x"])
    # Different seed or version → different file.
    assert bi._cache_path("builtin:unit", key, 1) != bad


def test_missing_package_raises_data_error(monkeypatch, cache):
    bi._brain_volumes.cache_clear()
    try:
        monkeypatch.setitem(sys.modules, "nilearn.datasets", None)
        with pytest.raises(DataError, match="pip install nilearn"):
            bi.make_brain_tissue(0)
    finally:
        monkeypatch.undo()
        bi._brain_volumes.cache_clear()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "spm_runtime" else real(name, *a))
    with pytest.raises(DataError, match="pip install --no-deps spm-runtime"):
        bi._spm_image("tpm/TPM.nii")
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(DataError, match="pip install pydicom"):
        bi.make_modality(0)


def test_missing_source_file_raises_data_error(monkeypatch):
    srcs = tuple(bi.Source(s.cls, s.kind, "missing_" + s.name if s.cls == "XR" else s.name,
                           s.role, s.scale) for s in bi.MODALITY_SOURCES)
    monkeypatch.setattr(bi, "MODALITY_SOURCES", srcs)
    with pytest.raises(DataError, match="class XR.*pip install pydicom-data"):
        bi.make_modality(0, n_train=7, n_val=7, n_test=7)
