"""``transfuse pretrain ssl``: self-supervised pretraining on unlabelled images as a weight source.

The file's checks (one-line errors, exit 2), the loss falling over the first 100 steps on a fixed
seed, the data-split guarantee (the stage reads the training split only: val/test are made
unreadable and the drawn indices are checked against the images), the pipeline end to end in 2D
(simclr, byol) and 3D (restoration on a NIfTI folder, simclr on 3D MedMNIST-format data) into a
source ``ssl:<name>`` that every init strategy and ``transfuse train`` load, and rerunning a
finished pretraining (skipped; another config refused). Tiny: 16 px / 16³ voxels, cbr_tiny or
seg_unet_tiny, synthetic smooth images written to tmp folders.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from transfuse.cli import main
from transfuse.errors import ConfigError
from transfuse.pretrain import load_ssl, pretrain_ssl, ssl_from_dict
from transfuse.pretrain.ssl_config import FolderSpec

pytestmark = pytest.mark.usefixtures("one_thread_module")


# -- synthetic data ----------------------------------------------------------------------------

def blobs(n: int, size: int, seed: int, dims: int = 2) -> np.ndarray:
    """``n`` smooth uint8 images (three Gaussian blobs each) of side ``size``, ``(n, *size)``."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(0, 1, size)] * dims, indexing="ij"))
    out = np.zeros((n,) + (size,) * dims)
    for i in range(n):
        for _ in range(3):
            c = rng.uniform(0.2, 0.8, (dims,) + (1,) * dims)
            r = rng.uniform(0.08, 0.25)
            out[i] += rng.uniform(0.3, 1) * np.exp(-((grid - c) ** 2).sum(0) / (2 * r * r))
    peak = out.max(axis=tuple(range(1, dims + 1)), keepdims=True)
    return (255 * out / peak).astype(np.uint8)


def _npz(root: Path, flag: str, sizes: tuple[int, int, int], dims: int) -> dict[str, np.ndarray]:
    arrays = {}
    for split, n, seed in zip(("train", "val", "test"), sizes, (0, 1, 2)):
        arrays[f"{split}_images"] = blobs(n, 28, seed, dims)
        arrays[f"{split}_labels"] = (np.arange(n) % 2)[:, None].astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(root / f"{flag}.npz", **arrays)
    return arrays


@pytest.fixture(scope="module")
def pneumonia(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """A MedMNIST-format pneumoniamnist.npz (28 px, 1 channel): 48 train, 8 val, 8 test."""
    root = tmp_path_factory.mktemp("pneumonia")
    return root, _npz(root, "pneumoniamnist", (48, 8, 8), 2)


@pytest.fixture(scope="module")
def adrenal3d(tmp_path_factory) -> Path:
    """A MedMNIST-format adrenalmnist3d.npz (28³): 12 train, 4 val, 4 test volumes."""
    root = tmp_path_factory.mktemp("adrenal")
    _npz(root, "adrenalmnist3d", (12, 4, 4), 3)
    return root


@pytest.fixture(scope="module")
def nifti_dir(tmp_path_factory) -> Path:
    """A folder of 6 unlabelled NIfTI volumes (20³, two in a sub-folder)."""
    import nibabel as nib

    root = tmp_path_factory.mktemp("nifti")
    (root / "more").mkdir()
    for i, v in enumerate(blobs(6, 20, 5, dims=3)):
        where = root / "more" if i >= 4 else root
        nib.save(nib.Nifti1Image(v.astype(np.float32), np.eye(4)), where / f"case{i}.nii.gz")
    return root


def _raw(root: Path, **kw) -> dict:
    d = {"name": "t", "method": "simclr", "model": "cbr_tiny", "steps": 3, "batch_size": 8,
         "data": {"name": "medmnist:pneumoniamnist@28", "data_root": str(root), "image_size": 16}}
    d.update(kw)
    return d


def _yaml(path: Path, raw: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(raw))
    return path


def _run_cli(capsys, *args: str) -> tuple[int, dict | str]:
    code = main(["pretrain", "ssl", *args, "--no-progress"])
    out, err = capsys.readouterr()
    return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 else err)


# -- the file ----------------------------------------------------------------------------------

def test_file_defaults_smoke_and_folder():
    spec = ssl_from_dict({"name": "a", "method": "byol", "model": "cbr_small",
                          "data": "medmnist:pneumoniamnist@28"})
    assert (spec.steps, spec.batch_size, spec.optimizer, spec.momentum) == (1000, 64, "adamw", 0.99)
    small = spec.shrink()
    assert small.name == "a-smoke" and small.smoke and small.steps == 4 and small.batch_size == 4
    assert small.data.n_train == 16 and small.data.fraction is None
    # a label fraction in the file is the file's choice; smoke keeps 16 images whatever it was
    frac = ssl_from_dict({**_raw(Path("."), data={"name": "builtin:modality", "fraction": 0.5})})
    assert frac.shrink().data.fraction is None and frac.shrink().data.n_train == 16
    f = ssl_from_dict({"name": "f", "method": "restoration", "model": "seg_unet_tiny",
                       "data": {"folder": "scans", "patch_size": 32, "spacing": [2, 2, 2]}})
    assert isinstance(f.data, FolderSpec) and f.data.spacing == 2.0
    assert f.shrink().data.limit == 16 and f.shrink().data.patch_size == 16
    assert f.to_dict()["data"]["kind"] == "folder"
    # where the data sits does not change what the pretraining is
    a, b = (ssl_from_dict(_raw(Path(p))) for p in ("/x", "/y"))
    assert a.identity() == b.identity() and a.to_dict() != b.to_dict()


@pytest.mark.parametrize("change, needle", [
    ({"name": None}, "missing key 'name'"),
    ({"epochs": 3}, "unknown key 'epochs'"),
    ({"method": "mae"}, "method='mae' is not valid; choose one of simclr, byol, restoration"),
    ({"model": "cbr_tiy"}, "model='cbr_tiy' is not a transfuse model; did you mean cbr_tiny"),
    ({"method": "byol", "temperature": 0.1}, "temperature applies to method simclr only"),
    ({"method": "restoration", "proj_dim": 64}, "proj_dim applies to method simclr or byol only"),
    ({"data": {"name": "builtin:nope"}}, "data.name='builtin:nope' is not a known dataset"),
    ({"data": {"name": "builtin:modality", "folder": "x"}}, "data must be a dataset name"),
    ({"data": {"name": "builtin:modality", "colour": 1}}, "unknown key data.colour"),
    ({"data": {"name": "builtin:modality", "n_train": "many"}}, "data.n_train='many' must be an integer"),
    ({"data": {"folder": "x", "channels": 2}}, "data.channels=2 must be 1, 3 or unset"),
    ({"steps": 0}, "steps=0 must be an integer >= 1"),
    ({"batch_size": 1}, "batch_size=1 must be an integer >= 2"),
    ({"lr": 0}, "lr=0 must be a number > 0"),
    ({"momentum": 1.5, "method": "byol"}, "momentum=1.5 must be a number >= 0 and <= 1"),
    ({"warmup_steps": 3}, "warmup_steps=3 must be < steps=3"),
    ({"optimizer": "lbfgs"}, "optimizer='lbfgs' is not valid"),
    ({"name": "a/b"}, "name='a/b' is not a valid name"),
])
def test_bad_files_raise_one_line_config_errors(change, needle):
    raw = _raw(Path("."))
    raw.update(change)
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(ConfigError) as e:
        ssl_from_dict(raw, path="p.yaml")
    msg = str(e.value)
    assert needle in msg and msg.startswith("p.yaml: ") and "\n" not in msg


def test_cli_bad_file_and_bad_set_exit_2(tmp_path, capsys):
    bad = _yaml(tmp_path / "bad.yaml", {**_raw(tmp_path), "method": "moco"})
    code, err = _run_cli(capsys, str(bad), "-w", str(tmp_path))
    assert code == 2 and err.startswith("error: ") and "method='moco'" in err
    assert err.count("\n") == 1 and str(bad) in err
    good = _yaml(tmp_path / "good.yaml", _raw(tmp_path))
    code, err = _run_cli(capsys, str(good), "-w", str(tmp_path), "--set", "stpes=5")
    assert code == 2 and "unknown key stpes; did you mean steps?" in err
    code, err = _run_cli(capsys, str(tmp_path / "none.yaml"), "-w", str(tmp_path))
    assert code == 2 and "SSL pretraining file not found" in err
    assert not (tmp_path / "pretrain").exists()  # nothing written


def test_missing_data_folder_is_a_one_line_error(tmp_path, capsys):
    f = _yaml(tmp_path / "f.yaml", {**_raw(tmp_path), "data": {"folder": str(tmp_path / "no")}})
    code, err = _run_cli(capsys, str(f), "-w", str(tmp_path))
    assert code == 2 and "folder not found" in err and err.count("\n") == 1


# -- training ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["simclr", "byol", "restoration"])
def test_loss_falls_over_the_first_100_steps(method, pneumonia, tmp_path):
    spec = ssl_from_dict(_raw(pneumonia[0], method=method, steps=100, batch_size=16))
    s = pretrain_ssl(spec, out_dir=tmp_path / method, progress=False).summary
    loss = np.array(s["loss"])
    assert len(loss) == 100 and np.isfinite(loss).all()
    first, last = loss[:10].mean(), loss[-10:].mean()
    assert last < first - 0.05, (method, first, last)
    assert s["loss_first10"] == pytest.approx(first, abs=1e-6)
    assert s["loss_last10"] == pytest.approx(last, abs=1e-6)


def test_same_seed_same_losses_other_seed_other_losses(pneumonia, tmp_path):
    raw = _raw(pneumonia[0], method="byol", steps=3)
    a, b = (pretrain_ssl(ssl_from_dict(raw), out_dir=tmp_path / k, progress=False).summary["loss"]
            for k in ("a", "b"))
    c = pretrain_ssl(ssl_from_dict({**raw, "seed": 1}), out_dir=tmp_path / "c",
                     progress=False).summary["loss"]
    assert a == b and a != c


class _Forbidden(Dataset):
    """A split the SSL stage must never read."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __len__(self) -> int:
        raise AssertionError(f"the SSL stage read the length of the {self.name} split")

    def __getitem__(self, i: int):
        raise AssertionError(f"the SSL stage read item {i} of the {self.name} split")


def test_the_ssl_stage_reads_no_validation_or_test_image(pneumonia, tmp_path, monkeypatch):
    import transfuse.data as data_pkg

    root, arrays = pneumonia
    real = data_pkg.load_dataset
    prepared = {}

    def guarded(spec, **kw):  # the data as every run prepares it, val/test made unreadable
        d = real(spec, **kw)
        prepared["train"] = d.train
        d.val, d.test = _Forbidden("val"), _Forbidden("test")
        return d

    monkeypatch.setattr(data_pkg, "load_dataset", guarded)
    spec = ssl_from_dict(_raw(root, steps=12, batch_size=8))  # 96 draws: every image
    out = pretrain_ssl(spec, out_dir=tmp_path / "o", progress=False)
    rec = json.loads((out.out_dir / "images.json").read_text())
    assert rec["split"] == "train" and rec["name"] == spec.data.name
    idx = np.array(rec["indices"])
    assert len(idx) == out.summary["cost"]["unique_images"] == 48
    assert sum(rec["times_drawn"]) == out.summary["cost"]["images_seen"] == 96
    assert idx.min() >= 0 and idx.max() < rec["split_sizes"]["train"] == 48
    # The indices name training images: image i of the split is raw training image i (un-normalised),
    # and none of them is any validation or test image.
    mean, std = out.summary["data"]["norm_mean"][0], out.summary["data"]["norm_std"][0]
    drawn = (prepared["train"].images[idx] * std + mean).numpy()[:, 0]
    raw = torch.nn.functional.interpolate(
        torch.from_numpy(arrays["train_images"][idx]).float()[:, None] / 255, size=16,
        mode="bilinear", antialias=True, align_corners=False).numpy()[:, 0]
    assert np.allclose(drawn, raw, atol=1e-4)
    held_out = np.concatenate([arrays["val_images"], arrays["test_images"]])
    held_out = torch.nn.functional.interpolate(
        torch.from_numpy(held_out).float()[:, None] / 255, size=16, mode="bilinear",
        antialias=True, align_corners=False).numpy()[:, 0]
    gaps = np.abs(drawn[:, None] - held_out[None]).reshape(len(drawn), len(held_out), -1).max(-1)
    assert gaps.min() > 0.05


def test_segmentation_training_volumes_give_random_crops(tmp_path):
    """Segmentation data: crops of the whole training volumes (fewer volumes than a batch:
    each is drawn more than once per step), val/test volumes never read."""
    from transfuse.config import DataSpec
    from transfuse.data.segmentation import Volume, prepare_segmentation
    from transfuse.pretrain.ssl_data import from_prepared

    vols = torch.from_numpy(blobs(4, 20, 3, dims=3)).float()[:, None] / 255
    labels = (vols[:, 0] > 0.5).to(torch.uint8)
    volume = [Volume(v, y, (1.0, 1.0, 1.0), f"v{i}") for i, (v, y) in enumerate(zip(vols, labels))]
    spec = DataSpec(name="nifti:x", patch_size=16)
    data = prepare_segmentation({"train": volume[:2], "val": volume[2:3], "test": volume[3:]},
                                spec, class_names=("bg", "fg"), default_patch=16)
    data.val, data.test = _Forbidden("val"), _Forbidden("test")
    images = from_prepared(data, spec)
    assert len(images) == 2 and images.image_shape == (16, 16, 16)
    ssl = ssl_from_dict({"name": "seg", "method": "restoration", "model": "seg_unet_tiny",
                         "steps": 2, "batch_size": 4, "data": {"name": "nifti:x", "patch_size": 16}})
    out = pretrain_ssl(ssl, out_dir=tmp_path / "seg", progress=False, images=images)
    rec = json.loads((out.out_dir / "images.json").read_text())
    assert rec["indices"] == [0, 1] and sum(rec["times_drawn"]) == 8
    assert out.summary["cost"]["images_seen"] == 8 and out.summary["cost"]["train_images"] == 2


def test_2d_image_folder(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "pngs"
    (folder / "sub").mkdir(parents=True)
    for i, im in enumerate(blobs(6, 24, 7)):
        Image.fromarray(im).save(folder / ("sub" if i % 2 else ".") / f"img{i}.png")
    Image.fromarray(blobs(1, 32, 8)[0]).save(folder / "big.png")
    raw = {"name": "png", "method": "simclr", "model": "cbr_tiny", "steps": 2, "batch_size": 4,
           "data": {"folder": str(folder)}}
    code, err = _run_cli(capsys, str(_yaml(tmp_path / "p.yaml", raw)), "-w", str(tmp_path))
    assert code == 2 and "images differ in shape" in err and "data.image_size" in err
    code, out = _run_cli(capsys, str(tmp_path / "p.yaml"), "-w", str(tmp_path),
                         "--set", "data.image_size=16")
    assert code == 0 and out["train_images"] == 7
    rec = json.loads((tmp_path / "pretrain" / "png" / "images.json").read_text())
    assert set(rec["files"]) <= {"big.png", *(f"img{i}.png" for i in (0, 2, 4)),
                                 *(f"sub/img{i}.png" for i in (1, 3, 5))}
    assert rec["split"] == "all files" and len(rec["files"]) == len(rec["indices"])


# -- end to end: outputs, the ssl: source, every init strategy, transfuse train -----------------

@pytest.fixture(scope="module")
def simclr_ws(pneumonia, tmp_path_factory) -> Path:
    """A workspace with the finished 2D SimCLR pretraining ``ssl:s2d`` (3 steps, via the CLI)."""
    ws = tmp_path_factory.mktemp("ws")
    f = _yaml(ws / "s2d.yaml", _raw(pneumonia[0], name="s2d"))
    assert main(["pretrain", "ssl", str(f), "-w", str(ws), "--no-progress"]) == 0
    return ws


def _check_outputs(folder: Path, *, model: str, dims: int, steps: int, batch: int) -> dict:
    from transfuse.models import create_model, stage_parameters

    state = torch.load(folder / "encoder.pt", weights_only=True)
    full = create_model(model, spatial_dims=dims, in_channels=1, num_classes=1)
    head = set(stage_parameters(full, "head"))
    assert set(state) == set(full.state_dict()) - head and state  # the model's names, no head
    s = json.loads((folder / "pretrain.json").read_text())
    cost = s["cost"]
    assert (cost["steps"], cost["images_seen"]) == (steps, steps * batch)
    assert 0 < cost["unique_images"] <= min(cost["train_images"], steps * batch)
    assert cost["seconds"] > 0 and len(s["loss"]) == steps and s["kind"] == "ssl"
    assert s["stages"][-1] == "head" and s["data"]["spatial_dims"] == dims
    assert json.loads((folder / "images.json").read_text())["indices"]
    return s


def test_2d_simclr_output_is_a_source_for_every_init_strategy(simclr_ws):
    from transfuse.inits import INITS, apply_init, init_model_kwargs
    from transfuse.models import create_model, stage_parameters
    from transfuse.weights import resolve_source

    _check_outputs(simclr_ws / "pretrain" / "s2d", model="cbr_tiny", dims=2, steps=3, batch=8)
    src = resolve_source("ssl:s2d", workspace=simclr_ws)
    assert (src.arch, src.spatial_dims, src.in_channels, src.input_size) == ("cbr_tiny", 2, 1, (16, 16))
    assert src.mean is not None and len(src.mean) == 1
    enc = src.state_dict()
    reading = [e for e in INITS if e.meta["needs_source"]]
    assert {"pretrained", "transfusion", "meanvar"} <= {e.name for e in reading}
    for e in reading:  # the registry: every strategy that reads a source
        spec = f"{e.name}:block1" if str(e.meta.get("arg", "")).startswith("stage") else e.name
        model = create_model("cbr_tiny", in_channels=1, num_classes=2, **init_model_kwargs(spec))
        report = apply_init(model, spec, source="ssl:s2d", workspace=simclr_ws, seed=0)
        assert report.source == "ssl:s2d" and report.counts()["loaded"] + report.counts()["redrawn"]
    model = create_model("cbr_tiny", in_channels=1, num_classes=2)
    report = apply_init(model, "pretrained", source=src)
    loaded = {r.key for r in report.records if r.action == "loaded"}
    assert loaded == {k for k in enc if not k.endswith("num_batches_tracked")}
    assert all(torch.equal(model.state_dict()[k], enc[k]) for k in loaded)
    model = create_model("cbr_tiny", in_channels=1, num_classes=2)
    report = apply_init(model, "transfusion:block1", source=src)
    assert {r.stage for r in report.records if r.action == "loaded"} == {"stem", "block1"}
    assert not set(stage_parameters(model, "head")) & loaded


def test_transfuse_train_initialises_from_the_ssl_source(simclr_ws, pneumonia, capsys):
    code = main(["train", "--dataset", "medmnist:pneumoniamnist@28", "--data-root", str(pneumonia[0]),
                 "--image-size", "16", "--model", "cbr_tiny", "--init", "transfusion:block1",
                 "--source", "ssl:s2d", "-w", str(simclr_ws), "--steps", "2", "--eval-every", "2",
                 "--batch-size", "8", "--no-progress", "--json"])
    out = capsys.readouterr().out
    assert code == 0, out
    from transfuse.store import Store

    [run] = [r for r in Store(simclr_ws).list_runs() if r.spec["init"]["source"] == "ssl:s2d"]
    assert run.status == "finished"


def test_ssl_source_errors_name_the_fix(tmp_path):
    from transfuse.weights import resolve_source
    from transfuse.weights.io import WeightsError

    with pytest.raises(WeightsError, match="no finished SSL pretraining.*transfuse pretrain ssl"):
        resolve_source("ssl:nothing", workspace=tmp_path)
    with pytest.raises(ConfigError, match="is not a valid name"):  # no way out of pretrain/
        resolve_source("ssl:../../etc", workspace=tmp_path)


def test_2d_byol_pipeline(pneumonia, tmp_path, capsys):
    f = _yaml(tmp_path / "b.yaml", _raw(pneumonia[0], name="b2d", method="byol", steps=2))
    code, out = _run_cli(capsys, str(f), "-w", str(tmp_path))
    assert code == 0 and out["use"].startswith("--source ssl:b2d") and not out["skipped"]
    s = _check_outputs(tmp_path / "pretrain" / "b2d", model="cbr_tiny", dims=2, steps=2, batch=8)
    assert s["views"]["library"] == "torchvision v2" and "lightly" in s["libraries"]


# -- 3D ----------------------------------------------------------------------------------------

def test_3d_restoration_on_a_nifti_folder(nifti_dir, tmp_path, capsys):
    from transfuse.inits import apply_init
    from transfuse.models import create_model

    raw = {"name": "r3d", "method": "restoration", "model": "seg_unet_tiny", "steps": 2,
           "batch_size": 2, "data": {"folder": str(nifti_dir), "patch_size": 16}}
    code, out = _run_cli(capsys, str(_yaml(tmp_path / "r.yaml", raw)), "-w", str(tmp_path))
    assert code == 0, out
    s = _check_outputs(tmp_path / "pretrain" / "r3d", model="seg_unet_tiny", dims=3, steps=2,
                       batch=2)
    assert s["data"]["image_shape"] == [16, 16, 16] and s["data"]["kind"] == "folder"
    rec = json.loads((tmp_path / "pretrain" / "r3d" / "images.json").read_text())
    assert set(rec["files"]) <= {f"case{i}.nii.gz" for i in range(4)} | {
        f"more/case{i}.nii.gz" for i in (4, 5)}
    # into a 4-class segmentation U-Net: the encoder loads, the decoder (its head) is new
    model = create_model("seg_unet_tiny", spatial_dims=3, in_channels=1, num_classes=4)
    report = apply_init(model, "pretrained", source="ssl:r3d", workspace=tmp_path)
    assert {r.stage for r in report.records if r.action == "loaded"} == {"stem", "block1", "block2", "block3"}
    assert all(r.action == "default" for r in report.records if r.stage == "head")


def test_3d_simclr_on_volumes_and_transfusion(adrenal3d, tmp_path):
    from transfuse.inits import apply_init
    from transfuse.models import create_model

    spec = ssl_from_dict({"name": "c3d", "method": "simclr", "model": "cbr_tiny", "steps": 2,
                          "batch_size": 4, "data": {"name": "medmnist:adrenalmnist3d@28",
                                                    "data_root": str(adrenal3d), "image_size": 16}})
    out = pretrain_ssl(spec, out_dir=tmp_path / "pretrain" / "c3d", progress=False)
    s = _check_outputs(out.out_dir, model="cbr_tiny", dims=3, steps=2, batch=4)
    assert s["views"]["library"] == "monai" and s["data"]["split_sizes"]["train"] == 12
    model = create_model("cbr_tiny", spatial_dims=3, in_channels=1, num_classes=2)
    report = apply_init(model, "transfusion:block2", source="ssl:c3d", workspace=tmp_path)
    assert {r.stage for r in report.records if r.action == "loaded"} == {"stem", "block1", "block2"}


# -- rerunning ---------------------------------------------------------------------------------

def test_rerun_skips_a_finished_pretraining_and_refuses_another_config(pneumonia, tmp_path, capsys):
    f = _yaml(tmp_path / "s.yaml", _raw(pneumonia[0], name="again", steps=2))
    code, first = _run_cli(capsys, str(f), "-w", str(tmp_path))
    enc = tmp_path / "pretrain" / "again" / "encoder.pt"
    stamp = enc.stat().st_mtime_ns
    assert code == 0 and not first["skipped"]
    code, second = _run_cli(capsys, str(f), "-w", str(tmp_path))
    assert code == 0 and second["skipped"] and second["seconds"] == first["seconds"]
    assert enc.stat().st_mtime_ns == stamp  # not trained again
    assert load_ssl(f).identity() == json.loads(enc.with_name("pretrain.json").read_text())["identity"]
    code, err = _run_cli(capsys, str(f), "-w", str(tmp_path), "--set", "steps=3")
    assert code == 2 and "another config (steps: 2 there, 3 now)" in err and "--force" in err
    assert err.count("\n") == 1 and enc.stat().st_mtime_ns == stamp
    code, third = _run_cli(capsys, str(f), "-w", str(tmp_path), "--set", "steps=3", "--force")
    assert code == 0 and not third["skipped"] and third["steps"] == 3
    # a killed pretraining (no pretrain.json) is not taken for a finished one
    enc.with_name("pretrain.json").unlink()
    code, fourth = _run_cli(capsys, str(f), "-w", str(tmp_path))
    assert code == 0 and not fourth["skipped"]


# -- the encoder view of a model ---------------------------------------------------------------

def test_stage_encoders_leave_the_model_and_each_other_alone():
    """Two encoders over one model both see every stage; the model's own forward is untouched
    while they exist; remove() takes the hooks off and a removed encoder refuses to run."""
    from transfuse.errors import ModelError
    from transfuse.models import create_model
    from transfuse.pretrain.ssl import StageEncoder

    torch.manual_seed(0)
    model = create_model("cbr_tiny", in_channels=1, num_classes=2).eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        logits = model(x)
        a, b = StageEncoder(model), StageEncoder(model)
        fa, fb = a(x), b(x)
        assert [s.name for s in a.stages] == [s.name for s in b.stages] and len(fa) == len(a.stages)
        assert all(torch.equal(u, v) for u, v in zip(fa, fb))
        assert torch.equal(model(x), logits)  # hooks are silent outside an encoder's forward
        a.remove()
        assert torch.equal(b.features(x), fb[-1].flatten(2).mean(2))
        with pytest.raises(ModelError, match="removed"):
            a(x)
        b.remove()
        assert all(not m._forward_hooks for m in model.modules())
