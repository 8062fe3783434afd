"""Datasets: MedMNIST files, CSV image folders, splitting, subsampling, channels and resizing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from transfuse import DataSpec, InitSpec, ModelSpec, RunSpec, Store, TrainSpec, load_dataset, train_run
from transfuse.data.base import convert_channels, resize, split_indices, stratified_subsample
from transfuse.errors import DataError

LUMA = np.array([0.299, 0.587, 0.114])


def _denorm(ds, info) -> torch.Tensor:
    """Images of an in-memory split back in 0–1."""
    shape = (1, -1) + (1,) * info.spatial_dims
    mean, std = torch.tensor(info.norm_mean), torch.tensor(info.norm_std)
    return ds.images * std.view(shape) + mean.view(shape)


# -- RetinaMNIST (real file) ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def retina_raw(retinamnist_npz: Path) -> dict[str, np.ndarray]:
    with np.load(retinamnist_npz) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def retina(retinamnist_npz: Path):
    return load_dataset("medmnist:retinamnist@28", data_root=str(retinamnist_npz.parent))


def test_retinamnist_official_splits_and_info(retina, retina_raw):
    info = retina.info
    assert info.split_sizes == {"train": 1080, "val": 120, "test": 400}
    assert (len(retina.train), len(retina.val), len(retina.test)) == (1080, 120, 400)
    assert info.task == "multiclass" and info.num_classes == 5 and info.in_channels == 3
    assert info.spatial_dims == 2 and info.image_shape == (28, 28)
    x, y, m = retina.train[0]
    assert x.shape == (3, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and m.item() == 1.0
    for split in ("train", "val", "test"):  # labels and image order round-trip from the file
        np.testing.assert_array_equal(retina.split(split).targets.numpy(),
                                      retina_raw[f"{split}_labels"][:, 0])


def test_retinamnist_normalisation_uses_train_split_stats(retina, retina_raw):
    raw_mean = (retina_raw["train_images"] / 255.0).mean(axis=(0, 1, 2))
    raw_std = (retina_raw["train_images"] / 255.0).std(axis=(0, 1, 2), ddof=1)
    np.testing.assert_allclose(retina.info.norm_mean, raw_mean, atol=2e-6)
    np.testing.assert_allclose(retina.info.norm_std, raw_std, atol=2e-6)
    x = retina.train.images.double()
    np.testing.assert_allclose(x.mean((0, 2, 3)).numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(x.std((0, 2, 3)).numpy(), 1, atol=1e-4)
    # Val/test use the train statistics: undoing them gives back the raw pixels.
    back = _denorm(retina.test, retina.info).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(back, retina_raw["test_images"] / 255.0, atol=1e-4)


def test_retinamnist_fraction_is_stratified_and_deterministic(retinamnist_npz, retina_raw):
    root = str(retinamnist_npz.parent)
    a = load_dataset("medmnist:retinamnist@28", data_root=root, fraction=0.5)
    b = load_dataset("medmnist:retinamnist@28", data_root=root, fraction=0.5)
    assert a.info.split_sizes == {"train": 540, "val": 120, "test": 400}
    full = np.bincount(retina_raw["train_labels"][:, 0], minlength=5)
    kept = np.bincount(a.train.targets.numpy(), minlength=5)
    assert np.abs(kept - full * 0.5).max() <= 1
    torch.testing.assert_close(a.train.images, b.train.images)
    # Normalisation stats are those of the kept examples.
    kept_raw = _denorm(a.train, a.info)
    np.testing.assert_allclose(kept_raw.mean((0, 2, 3)).numpy(), a.info.norm_mean, atol=1e-5)


def test_retinamnist_n_train_proportions_and_seed(retinamnist_npz, retina_raw):
    root = str(retinamnist_npz.parent)
    a = load_dataset("medmnist:retinamnist@28", data_root=root, n_train=100)
    c = load_dataset("medmnist:retinamnist@28", data_root=root, n_train=100, split_seed=1)
    assert len(a.train) == 100 and len(a.val) == 120 and len(a.test) == 400
    full = np.bincount(retina_raw["train_labels"][:, 0], minlength=5)
    kept = np.bincount(a.train.targets.numpy(), minlength=5)
    assert np.abs(kept - full / full.sum() * 100).max() < 1  # [45, 11.9, 19.1, 18, 6.1]
    assert kept.sum() == 100 and (kept > 0).all()
    assert not torch.equal(a.train.images, c.train.images)  # another seed, another subsample
    # The official test split is untouched (its pixels are normalised with each run's train stats).
    torch.testing.assert_close(a.test.targets, c.test.targets)
    torch.testing.assert_close(_denorm(a.test, a.info), _denorm(c.test, c.info), atol=1e-5, rtol=0)


def test_retinamnist_grayscale_and_resize(retinamnist_npz, retina):
    g = load_dataset("medmnist:retinamnist@28", data_root=str(retinamnist_npz.parent),
                     channels=1, image_size=32)
    assert g.info.in_channels == 1 and g.info.image_shape == (32, 32)
    assert g.train[0][0].shape == (1, 32, 32)
    # Luma is linear, so the grey mean is the luma-weighted RGB mean (resizing keeps the mean).
    assert g.info.norm_mean[0] == pytest.approx(float(LUMA @ np.array(retina.info.norm_mean)), abs=2e-3)


def test_training_run_on_retinamnist_stores_test_metrics(retinamnist_npz, tmp_path):
    spec = RunSpec(
        data=DataSpec(name="medmnist:retinamnist@28", data_root=str(retinamnist_npz.parent), n_train=64),
        model=ModelSpec(name="cbr_tiny"), init=InitSpec(),
        train=TrainSpec(steps=3, batch_size=16, eval_every=3, lr=0.01, amp=False), seed=0)
    out = train_run(spec, workspace=tmp_path / "ws", device="cpu", progress=False)
    assert not out.skipped and out.record.status == "finished"
    assert 0.0 <= out.test["auc"] <= 1.0 and 0.0 <= out.test["acc"] <= 1.0
    assert set(f"auc/grade{i}" for i in range(5)) <= set(out.test)
    store = Store(tmp_path / "ws")
    [rec] = store.list_runs()
    assert rec.run_id == out.record.run_id and rec.model_info["spatial_dims"] == 2
    assert store.final_metrics(rec.run_id)["auc"] == pytest.approx(out.test["auc"])
    assert rec.data_info["split_sizes"] == {"train": 64, "val": 120, "test": 400}
    assert len(rec.data_info["norm_mean"]) == 3
    with np.load(Path(rec.run_dir) / "test_predictions.npz") as z:
        assert z["probs"].shape == (400, 5)
        np.testing.assert_allclose(z["probs"].sum(1), 1, atol=1e-5)
    again = train_run(spec, workspace=tmp_path / "ws", device="cpu", progress=False)
    assert again.skipped and again.test["auc"] == pytest.approx(out.test["auc"])


# -- AdrenalMNIST3D (real file) and synthetic 3D --------------------------------------------------

def test_adrenalmnist3d_loads_as_volumes(adrenalmnist3d_npz):
    d = load_dataset("medmnist:adrenalmnist3d", data_root=str(adrenalmnist3d_npz.parent))
    assert d.info.spatial_dims == 3 and d.info.in_channels == 1 and d.info.num_classes == 2
    assert d.info.image_shape == (28, 28, 28)
    assert d.info.split_sizes == {"train": 1188, "val": 98, "test": 298}
    x, y, _ = d.train[0]
    assert x.shape == (1, 28, 28, 28) and int(y) in (0, 1)


def test_3d_channels_and_resize(tmp_path, make_npz):
    make_npz(tmp_path / "adrenalmnist3d.npz", n=(6, 2, 2), shape=(28, 28, 28), num_classes=2)
    d = load_dataset("medmnist:adrenalmnist3d", data_root=str(tmp_path), channels=3, image_size=16)
    assert d.info.in_channels == 3 and d.info.image_shape == (16, 16, 16)
    x = d.train[0][0]
    assert x.shape == (3, 16, 16, 16)
    torch.testing.assert_close(x[0], x[1])  # 1→3 repeats the channel


# -- split_indices / stratified_subsample ---------------------------------------------------------

LABELS = np.repeat([0, 1, 2], [50, 30, 20])


def test_split_indices_deterministic_disjoint_and_complete():
    a = split_indices(LABELS, seed=3, val_fraction=0.1, test_fraction=0.2)
    b = split_indices(LABELS, seed=3, val_fraction=0.1, test_fraction=0.2)
    c = split_indices(LABELS, seed=4, val_fraction=0.1, test_fraction=0.2)
    for k in ("train", "val", "test"):
        np.testing.assert_array_equal(a[k], b[k])
        assert (np.diff(a[k]) > 0).all() and a[k].dtype == np.int64
    allidx = np.concatenate([a["train"], a["val"], a["test"]])
    assert len(allidx) == len(set(allidx.tolist())) == len(LABELS)
    assert not np.array_equal(a["test"], c["test"])
    # Stratified: per class round(n * fraction).
    assert np.bincount(LABELS[a["test"]]).tolist() == [10, 6, 4]
    assert np.bincount(LABELS[a["val"]]).tolist() == [5, 3, 2]


def test_split_indices_multilabel_with_missing_first_label_covers_all():
    lab = np.zeros((40, 2), np.float32)
    lab[::2, 0] = 1
    lab[::5, 0] = np.nan  # empty cells in the first (stratification) column
    lab[1::7, 0] = -1
    s = split_indices(lab, seed=0, val_fraction=0.1, test_fraction=0.2)
    allidx = np.sort(np.concatenate(list(s.values())))
    np.testing.assert_array_equal(allidx, np.arange(40))


def test_stratified_subsample_keeps_proportions():
    big = np.repeat([0, 1, 2], [500, 300, 200])
    idx = stratified_subsample(big, 100, seed=0)
    assert np.bincount(big[idx]).tolist() == [50, 30, 20]
    assert len(set(idx.tolist())) == 100 and (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(idx, stratified_subsample(big, 100, seed=0))
    assert not np.array_equal(idx, stratified_subsample(big, 100, seed=1))


def test_stratified_subsample_keeps_every_class_and_everything_when_n_large():
    lab = np.repeat([0, 1, 2], [90, 9, 1])
    idx = stratified_subsample(lab, 7, seed=0)
    counts = np.bincount(lab[idx], minlength=3)
    assert counts.sum() == 7 and (counts >= 1).all()
    np.testing.assert_array_equal(stratified_subsample(lab, 500, seed=0), np.arange(100))


def test_stratified_subsample_multilabel_with_missing_first_label():
    lab = np.zeros((30, 2), np.float32)
    lab[::3, 0] = np.nan
    lab[1::3, 0] = 1
    idx = stratified_subsample(lab, 12, seed=0)
    assert len(idx) == 12 and np.isnan(lab[idx, 0]).sum() == 4


# -- channels and resizing ------------------------------------------------------------------------

def test_convert_channels_gray_to_rgb_repeats():
    x = torch.rand(2, 1, 5, 5)
    y = convert_channels(x, 3)
    assert y.shape == (2, 3, 5, 5)
    for c in range(3):
        torch.testing.assert_close(y[:, c], x[:, 0])
    assert convert_channels(x, 1) is x


def test_convert_channels_rgb_to_gray_uses_luma_weights():
    x = torch.eye(3).view(3, 3, 1, 1).expand(3, 3, 2, 2)  # pure red, green, blue images
    y = convert_channels(x, 1)
    assert y.shape == (3, 1, 2, 2)
    torch.testing.assert_close(y[:, 0, 0, 0], torch.tensor(LUMA, dtype=torch.float32))
    v = torch.rand(2, 3, 4, 4, 4)  # 3D too
    torch.testing.assert_close(convert_channels(v, 1)[:, 0],
                               torch.einsum("nc...,c->n...", v, torch.tensor(LUMA, dtype=torch.float32)))


def test_convert_channels_refuses_other_counts():
    with pytest.raises(DataError, match="cannot convert 2 channels to 3"):
        convert_channels(torch.rand(1, 2, 4, 4), 3)


def test_resize_2d_and_3d():
    x = torch.full((2, 3, 28, 28), 0.25)
    y = resize(x, 16)
    assert y.shape == (2, 3, 16, 16)
    torch.testing.assert_close(y, torch.full_like(y, 0.25))  # a constant image stays constant
    assert resize(torch.rand(1, 1, 8, 8, 8), 12).shape == (1, 1, 12, 12, 12)
    assert resize(x, 28) is x


# -- CSV image folders ----------------------------------------------------------------------------

def _single_label_rows():
    names = ["dog", "cat", "bird", "cat", "dog", "bird", "cat", "dog", "bird"]
    splits = ["train"] * 5 + ["val"] * 2 + ["test"] * 2
    return [{"path": f"img/{i}.png", "label": n, "split": s, "value": 20 * i}
            for i, (n, s) in enumerate(zip(names, splits))]


def test_csv_single_label_class_names_and_split_column(make_csv_dataset):
    rows = _single_label_rows()
    csv_path = make_csv_dataset(rows)
    d = load_dataset(f"csv:{csv_path}", label_columns=("label",), split_column="split")
    assert d.info.task == "multiclass" and d.info.class_names == ("bird", "cat", "dog")
    assert d.info.split_sizes == {"train": 5, "val": 2, "test": 2}
    assert d.info.in_channels == 1 and d.info.image_shape == (8, 8)
    lookup = {"bird": 0, "cat": 1, "dog": 2}
    for split in ("train", "val", "test"):
        mine = [r for r in rows if r["split"] == split]
        assert d.split(split).targets.tolist() == [lookup[r["label"]] for r in mine]
        pix = _denorm(d.split(split), d.info)[:, 0, 0, 0]  # each image is one grey value
        np.testing.assert_allclose(pix.numpy(), [r["value"] / 255 for r in mine], atol=1e-5)


def test_csv_integer_labels_and_rgb(make_csv_dataset):
    rows = [{"path": f"{i}.png", "label": str(i % 3), "value": 10 * i} for i in range(12)]
    csv_path = make_csv_dataset(rows)
    d = load_dataset(f"csv:{csv_path}", label_columns=("label",), channels=3,
                     val_fraction=0.25, test_fraction=0.25)
    assert d.info.class_names == ("0", "1", "2") and d.info.in_channels == 3
    assert d.info.split_sizes == {"train": 6, "val": 3, "test": 3}
    x = d.train[0][0]
    torch.testing.assert_close(x[0], x[2])


def _multilabel_rows():
    # a, b: 1, 0, -1 (uncertain) or "" (missing).
    vals = [("1", "0"), ("-1", "1"), ("0", ""), ("1", "-1"), ("0", "1"), ("", "0")]
    return [{"path": f"{i}.png", "a": a, "b": b, "split": "train" if i < 4 else ("val" if i == 4 else "test"),
             "value": 30 * i} for i, (a, b) in enumerate(vals)]


@pytest.mark.parametrize("policy,u", [("ignore", None), ("ones", 1.0), ("zeros", 0.0)])
def test_csv_multilabel_uncertain_policies(make_csv_dataset, policy, u):
    csv_path = make_csv_dataset(_multilabel_rows())
    d = load_dataset(f"csv:{csv_path}", label_columns=("a", "b"), split_column="split", uncertain=policy)
    assert d.info.task == "multilabel" and d.info.class_names == ("a", "b")
    y, m = d.train.targets, d.train.mask
    uu = 0.0 if u is None else u
    assert y.tolist() == [[1, 0], [uu, 1], [0, 0], [1, uu]]
    um = 0.0 if u is None else 1.0  # -1 is masked only under "ignore"; empty is always masked
    assert m.tolist() == [[1, 1], [um, 1], [1, 0], [1, um]]
    assert d.test.mask.tolist() == [[0, 1]]


def test_csv_same_seed_same_split_other_seed_other_split(make_csv_dataset):
    rows = [{"path": f"{i}.png", "label": "ab"[i % 2], "value": 10 * i} for i in range(20)]
    csv_path = make_csv_dataset(rows)

    def test_values(seed):
        d = load_dataset(f"csv:{csv_path}", label_columns=("label",), split_seed=seed)
        assert d.info.split_sizes == {"train": 14, "val": 2, "test": 4}
        return sorted(np.round(_denorm(d.test, d.info)[:, 0, 0, 0].numpy() * 255).astype(int).tolist())

    first = test_values(0)
    assert first == test_values(0)
    assert first != test_values(5)
    assert set(first) <= {10 * i for i in range(20)}


def test_csv_npy_float_images_and_image_root(tmp_path, make_csv_dataset):
    rows = [{"path": f"v/{i}.npy", "label": str(i % 2), "npy": np.full((6, 6), i / 10, np.float32)}
            for i in range(8)]
    csv_path = make_csv_dataset(rows, name="x.csv")
    d = load_dataset(f"csv:{csv_path}", label_columns=("label",), data_root=str(csv_path.parent),
                     val_fraction=0.25, test_fraction=0.25)
    assert d.info.image_shape == (6, 6)
    got = _denorm(d.train, d.info)[:, 0, 0, 0].double().numpy() * 10  # float .npy is taken as 0–1
    np.testing.assert_allclose(got, np.round(got), atol=1e-4)
    assert len(set(np.round(got).astype(int).tolist())) == 4
