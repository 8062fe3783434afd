"""``transfuse predict`` and ``transfuse export`` (transfuse.deploy): predictions that reproduce a
run's stored test predictions (images, folders, CSVs, dataset splits), NIfTI/DICOM label maps on
the input's grid and affine, ONNX against torch (onnxruntime), TorchScript in an interpreter that
never imports transfuse, a safetensors round trip, the model.json fields, and one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from transfuse import DataSpec, ModelSpec, RunSpec, Store, TrainSpec, __version__, train_run
from transfuse.cli import main
from transfuse.deploy import export_run, load_run, predict_run

TINY_SEG = TrainSpec(steps=4, batch_size=2, eval_every=2, amp=False, optimizer="adam", lr=0.01)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Tiny tensors: one intra-op thread (see conftest)."""


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory):
    """A finished 4-step ``cbr_tiny`` run on ``builtin:brain_tissue``: (workspace, record)."""
    ws = tmp_path_factory.mktemp("deploy_ws")
    spec = RunSpec(data=DataSpec(name="builtin:brain_tissue", n_train=64),
                   model=ModelSpec(name="cbr_tiny"),
                   train=TrainSpec(steps=4, eval_every=2, batch_size=16, amp=False), seed=3)
    out = train_run(spec, workspace=ws, device="cpu", progress=False)
    return ws, out.record


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory):
    """A finished 4-step ``seg_unet_tiny`` run on ``builtin:brain_seg3d`` (16³ patches)."""
    ws = tmp_path_factory.mktemp("deploy_seg_ws")
    spec = RunSpec(data=DataSpec(name="builtin:brain_seg3d", patch_size=16),
                   model=ModelSpec(name="seg_unet_tiny"), train=TINY_SEG)
    out = train_run(spec, workspace=ws, device="cpu", progress=False)
    return ws, out.record


def _stored(rec, key: str) -> np.ndarray:
    with np.load(Path(rec.run_dir) / "test_predictions.npz") as z:
        return z[key]


def _read_probs(path: Path, class_names) -> tuple[list[str], list[str], np.ndarray]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        header = list(reader.fieldnames or [])
    return header, [r["input"] for r in rows], np.array([[float(r[c]) for c in class_names]
                                                         for r in rows])


def _predict(ws, rid, *extra) -> int:
    return main(["predict", rid, *extra, "-w", str(ws), "--device", "cpu", "--no-progress"])


def _raw_test_images(rec) -> np.ndarray:
    """The run's test images as the dataset stores them: uint8 ``(N, 1, 32, 32)``."""
    from transfuse.data.builtin import load_brain_tissue

    raw = load_brain_tissue(DataSpec(**rec.spec["data"]), "")
    return raw.splits["test"].images


# -- predict: classification ----------------------------------------------------------------------

def test_predict_test_split_reproduces_stored_predictions(cls_run, tmp_path, capsys):
    ws, rec = cls_run
    names = rec.data_info["class_names"]
    out = tmp_path / "test.csv"
    assert _predict(ws, rec.run_id, "--input", "test", "-o", str(out)) == 0
    assert f"predictions: 500 image(s) -> {out.resolve()}" in capsys.readouterr().out
    header, inputs, probs = _read_probs(out, names)
    ref = _stored(rec, "probs")
    assert header == ["input", *names] and inputs == [f"test:{i}" for i in range(len(ref))]
    assert probs.shape == ref.shape == (500, 4)
    np.testing.assert_allclose(probs, ref, rtol=0, atol=1e-5)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # The same split named as a dataset split: the same numbers.
    res = predict_run(rec.run_id, input="builtin:brain_tissue:test", workspace=ws,
                      output=tmp_path / "ds.csv", device="cpu", progress=False)
    assert res.inputs[0] == "builtin:brain_tissue:test:0"
    np.testing.assert_allclose(res.probs, ref, rtol=0, atol=1e-5)


def test_predict_image_files_folder_and_csv_match_stored(cls_run, tmp_path):
    from PIL import Image

    ws, rec = cls_run
    names = rec.data_info["class_names"]
    images, ref = _raw_test_images(rec), _stored(rec, "probs")
    idx = [0, 7, 123, 250, 499]
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for j, i in enumerate(idx[:4]):
        Image.fromarray(images[i, 0]).save(folder / f"img{j}.png")  # PNG: lossless uint8
    np.save(folder / "sub" / "img4.npy", images[idx[4]])  # (1, 32, 32) uint8
    res = predict_run(rec.run_id, input=str(folder), workspace=ws, output=tmp_path / "f.csv",
                      device="cpu", progress=False)
    assert res.inputs == ("img0.png", "img1.png", "img2.png", "img3.png", "sub/img4.npy")
    np.testing.assert_allclose(res.probs, ref[idx], rtol=0, atol=1e-5)
    _, inputs, probs = _read_probs(tmp_path / "f.csv", names)
    assert inputs == list(res.inputs)
    np.testing.assert_allclose(probs, ref[idx], rtol=0, atol=1e-5)

    # A CSV of paths (relative to the CSV, or absolute), in another order, another column name.
    listing = tmp_path / "list.csv"
    rows = [("imgs/sub/img4.npy", 4), (str(folder / "img1.png"), 1), ("imgs/img0.png", 0)]
    listing.write_text("file,note\n" + "".join(f"{p},x\n" for p, _ in rows))
    out = tmp_path / "c.csv"
    assert _predict(ws, rec.run_id, "--input", str(listing), "--path-column", "file",
                    "-o", str(out)) == 0
    _, inputs, probs = _read_probs(out, names)
    assert inputs == [p for p, _ in rows]
    np.testing.assert_allclose(probs, ref[[idx[j] for _, j in rows]], rtol=0, atol=1e-5)

    # One file.
    res = predict_run(rec.run_id, input=str(folder / "img2.png"), workspace=ws,
                      output=tmp_path, device="cpu", progress=False)
    assert res.output == tmp_path / f"predictions-{rec.run_id}.csv"  # a folder gets the default name
    np.testing.assert_allclose(res.probs, ref[[idx[2]]], rtol=0, atol=1e-5)


def test_checkpoints_load_their_own_weights(cls_run):
    ws, rec = cls_run
    for which in ("best", "last"):
        run = load_run(rec.run_id[:6], workspace=ws, checkpoint=which)
        ck = torch.load(Path(rec.run_dir) / f"{which}.pt", map_location="cpu", weights_only=True)
        assert run.checkpoint_step == ck["step"]
        assert set(run.model.state_dict()) == set(ck["state_dict"])
        assert all(torch.equal(run.model.state_dict()[k], v) for k, v in ck["state_dict"].items())
    assert load_run(rec.run_id, workspace=ws).checkpoint_step == rec.summary["best_step"]


def test_predict_medmnist_split(retinamnist_npz, tmp_path):
    """``medmnist:FLAG@SIZE:SPLIT`` with --data-root: the run's own test split, from the file."""
    ws = tmp_path / "ws"
    spec = RunSpec(data=DataSpec(name="medmnist:retinamnist@28", n_train=64,
                                 data_root=str(retinamnist_npz.parent)),
                   model=ModelSpec(name="cbr_tiny"),
                   train=TrainSpec(steps=2, eval_every=2, batch_size=16, amp=False))
    rec = train_run(spec, workspace=ws, device="cpu", progress=False).record
    out = tmp_path / "r.csv"
    assert _predict(ws, rec.run_id, "--input", "medmnist:retinamnist@28:test", "--data-root",
                    str(retinamnist_npz.parent), "-o", str(out)) == 0
    header, inputs, probs = _read_probs(out, rec.data_info["class_names"])
    assert header == ["input", "grade0", "grade1", "grade2", "grade3", "grade4"]
    assert inputs[:2] == ["medmnist:retinamnist@28:test:0", "medmnist:retinamnist@28:test:1"]
    np.testing.assert_allclose(probs, _stored(rec, "probs"), rtol=0, atol=1e-5)


# -- predict: segmentation ------------------------------------------------------------------------

def _test_volume(rec):
    """The run's test volume before normalisation: RAS, 3 mm, intensities scaled to 0–1."""
    from transfuse.data.builtin3d import brain_seg3d_volumes

    return brain_seg3d_volumes(seed=rec.spec["data"]["split_seed"])["test"][0]


def test_predict_segmentation_split_reproduces_stored_dice(seg_run, tmp_path):
    import nibabel as nib

    ws, rec = seg_run
    out = tmp_path / "split"
    assert _predict(ws, rec.run_id, "--input", "test", "-o", str(out)) == 0
    with open(out / "predictions.csv", newline="") as f:
        [row] = list(csv.DictReader(f))
    cols = [str(c) for c in _stored(rec, "columns")]
    assert cols == ["grey_matter", "white_matter", "csf"]
    np.testing.assert_allclose([float(row[f"dice/{c}"]) for c in cols], _stored(rec, "dice")[0],
                               rtol=0, atol=1e-6)
    lab = np.asarray(nib.load(out / row["output"]).dataobj)
    vol = _test_volume(rec)
    assert lab.shape == tuple(vol.label.shape) and lab.dtype == np.uint8
    assert [int(row[f"voxels/{c}"]) for c in rec.data_info["class_names"]] == \
        np.bincount(lab.ravel(), minlength=4).tolist()


def test_predict_nifti_label_map_has_input_shape_and_affine(seg_run, tmp_path):
    import nibabel as nib

    ws, rec = seg_run
    vol = _test_volume(rec)
    img = vol.image[0].numpy()  # float32 (X, Y, Z), already scaled: rescaling leaves it as is
    n = img.shape[0]
    ras = np.diag([3.0, 3.0, 3.0, 1.0])
    ras[:3, 3] = [-70.0, -100.0, -60.0]
    flip = ras.copy()  # the same physical image stored with the first voxel axis reversed
    flip[0, 0], flip[0, 3] = -3.0, ras[0, 3] + 3.0 * (n - 1)
    oblique = np.array([[0.0, -2.5, 0.0, 80.0], [2.0, 0.0, 0.0, -90.0], [0.0, 0.0, 3.5, -50.0],
                        [0.0, 0.0, 0.0, 1.0]])  # axes permuted, flipped, anisotropic
    inputs = tmp_path / "vols"
    inputs.mkdir()
    nib.save(nib.Nifti1Image(img, ras), inputs / "a_ras.nii.gz")
    nib.save(nib.Nifti1Image(img[::-1].copy(), flip), inputs / "b_flip.nii.gz")
    nib.save(nib.Nifti1Image(img * 1000.0, oblique), inputs / "c_oblique.nii")
    out = tmp_path / "maps"
    assert _predict(ws, rec.run_id, "--input", str(inputs), "-o", str(out)) == 0
    maps = {p: nib.load(out / f"{p}_seg.nii.gz") for p in ("a_ras", "b_flip", "c_oblique")}
    for name, aff in (("a_ras", ras), ("b_flip", flip), ("c_oblique", oblique)):
        m = maps[name]
        assert m.shape == img.shape and m.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(m.affine, aff)
    a, b, c = (np.asarray(maps[p].dataobj) for p in ("a_ras", "b_flip", "c_oblique"))
    # On the training grid (RAS, 3 mm) the file path is the evaluation path: identical labels.
    assert _predict(ws, rec.run_id, "--input", "test", "-o", str(tmp_path / "split")) == 0
    split = np.asarray(nib.load(tmp_path / "split" / "test-000_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(a, split)
    np.testing.assert_array_equal(b, a[::-1])  # the affine, not the array order, decides
    assert set(np.unique(c)) <= {0, 1, 2, 3} and len(np.unique(c)) > 1
    with open(out / "predictions.csv", newline="") as f:
        rows = {r["input"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["a_ras.nii.gz", "b_flip.nii.gz", "c_oblique.nii"]
    counts = [int(rows["c_oblique.nii"][f"voxels/{k}"]) for k in rec.data_info["class_names"]]
    assert counts == np.bincount(c.ravel(), minlength=4).tolist() and sum(counts) == img.size


def test_predict_dicom_series_matches_the_same_volume_as_nifti(seg_run, tmp_path):
    import nibabel as nib

    from tests.test_seg_data import write_dicom_series
    from transfuse.data.segmentation import load_volume as _load

    ws, rec = seg_run
    img = np.rint(_test_volume(rec).image[0].numpy() * 1000.0)
    series = write_dicom_series(tmp_path / "series", img.transpose(2, 1, 0), mm=3.0)
    read = _load(series, "image", "")  # what MONAI makes of it: (1, X, Y, Z) and a RAS affine
    nib.save(nib.Nifti1Image(read[0].numpy(), read.affine.numpy()), tmp_path / "same.nii.gz")
    res = predict_run(rec.run_id, input=str(series), workspace=ws, output=tmp_path / "d",
                      device="cpu", progress=False)
    ref = predict_run(rec.run_id, input=str(tmp_path / "same.nii.gz"), workspace=ws,
                      output=tmp_path / "n", device="cpu", progress=False)
    d, nimg = (nib.load(r.label_maps[0]) for r in (res, ref))
    assert res.inputs == (str(series),) and d.shape == tuple(read.shape[1:]) == img.shape
    np.testing.assert_allclose(d.affine, read.affine.numpy(), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(d.dataobj), np.asarray(nimg.dataobj))


# -- export ---------------------------------------------------------------------------------------

def _normalised_test_images(rec, n: int = 16) -> torch.Tensor:
    x = torch.from_numpy(_raw_test_images(rec)[:n]).float() / 255
    mean, std = (torch.tensor(rec.data_info[k]).view(1, -1, 1, 1) for k in ("norm_mean", "norm_std"))
    return (x - mean) / std


def test_export_onnx_matches_torch(cls_run, tmp_path, capsys):
    import onnxruntime as ort

    ws, rec = cls_run
    assert main(["export", rec.run_id, "--format", "onnx", "-o", str(tmp_path / "e"),
                 "-w", str(ws)]) == 0
    assert "check passed" in capsys.readouterr().out
    meta = json.loads((tmp_path / "e" / "model.json").read_text())
    chk = meta["check"]
    assert chk["passed"] is True and chk["tolerance"] == 1e-4 and 0 <= chk["max_abs_diff"] <= 1e-4
    assert chk["onnxruntime"] == ort.__version__
    model = load_run(rec.run_id, workspace=ws).model
    sess = ort.InferenceSession(str(tmp_path / "e" / "model.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(7))  # another batch size
    with torch.no_grad():
        assert np.abs(sess.run(None, {"input": x.numpy()})[0] - model(x).numpy()).max() <= 1e-4
    # Real test images through onnxruntime, softmax: the run's stored test probabilities.
    logits = sess.run(None, {"input": _normalised_test_images(rec).numpy()})[0]
    np.testing.assert_allclose(torch.from_numpy(logits).softmax(1).numpy(),
                               _stored(rec, "probs")[:16], rtol=0, atol=1e-4)


def test_failed_onnx_check_is_recorded_and_exits_1(cls_run, tmp_path, monkeypatch, capsys):
    import transfuse.deploy.export as export_mod

    ws, rec = cls_run
    monkeypatch.setattr(export_mod, "ONNX_TOL", -1.0)  # no difference can pass
    assert main(["export", rec.run_id, "--format", "onnx", "-o", str(tmp_path), "-w", str(ws)]) == 1
    assert "check FAILED" in capsys.readouterr().err
    chk = json.loads((tmp_path / "model.json").read_text())["check"]
    assert chk["passed"] is False and chk["tolerance"] == -1.0 and chk["max_abs_diff"] >= 0
    assert 0 <= chk["torch_float32_vs_float64"] < 1e-4


def test_export_removes_a_killed_exports_temporaries_and_runs_check_finds_them(cls_run, tmp_path,
                                                                               capsys):
    """SIGKILL during an export can leave ``model.onnx.tmp``: ``runs check`` lists it (anywhere
    in the workspace) and the next export into that folder removes it, saying so."""
    ws, rec = cls_run
    out = ws / "exports" / "e"
    out.mkdir(parents=True)
    (out / "model.onnx.tmp").write_bytes(b"half a model")
    (out / "model.json.tmp").write_text("{")
    capsys.readouterr()
    main(["runs", "check", "-w", str(ws)])
    printed = capsys.readouterr().out
    assert f"leftover temporary file {out / 'model.onnx.tmp'}" in printed
    assert main(["export", rec.run_id, "--format", "safetensors", "-o", str(out), "-w", str(ws)]) == 0
    printed = capsys.readouterr().out
    assert f"removed {out / 'model.onnx.tmp'}: left by an interrupted export" in printed
    assert not list(out.glob("*.tmp")) and (out / "model.safetensors").is_file()
    main(["runs", "check", "-w", str(ws)])
    assert "leftover temporary" not in capsys.readouterr().out


def test_torchscript_runs_in_an_interpreter_without_transfuse(cls_run, tmp_path):
    ws, rec = cls_run
    res = export_run(rec.run_id, workspace=ws, format="torchscript", out_dir=tmp_path / "ts")
    assert res.model_file.name == "model.pt" and res.metadata["check"]["passed"] is True
    model = load_run(rec.run_id, workspace=ws).model
    x = torch.cat([_normalised_test_images(rec, 4), torch.randn(3, 1, 32, 32)])
    with torch.no_grad():
        torch.save({"x": x, "y": model(x)}, tmp_path / "ref.pt")
    code = textwrap.dedent(f"""
        import sys, torch
        m = torch.jit.load({str(res.model_file)!r}, map_location="cpu")
        ref = torch.load({str(tmp_path / 'ref.pt')!r}, weights_only=True)
        with torch.no_grad():
            y = m(ref["x"])
        assert "transfuse" not in sys.modules, "transfuse was imported"
        print(float((y - ref["y"]).abs().max()), tuple(y.shape))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    diff, shape = done.stdout.split(maxsplit=1)
    assert float(diff) <= 1e-5 and shape.strip() == "(7, 4)"


def test_safetensors_round_trip_equals_state_dict(cls_run, tmp_path):
    from safetensors.torch import load_file

    from transfuse.models import create_model

    ws, rec = cls_run
    res = export_run(rec.run_id, workspace=ws, format="safetensors", out_dir=tmp_path / "st")
    back = load_file(str(res.model_file))
    ck = torch.load(Path(rec.run_dir) / "best.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert set(back) == set(ck) and res.metadata["check"] == {
        "method": res.metadata["check"]["method"], "tensors": len(ck), "passed": True}
    for k, v in ck.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    # model.json says how to rebuild the architecture for these weights.
    meta = res.metadata
    m = create_model(meta["model"]["name"], spatial_dims=meta["input"]["spatial_dims"],
                     in_channels=meta["input"]["channels"], num_classes=len(meta["class_names"]),
                     **meta["model"]["kwargs"])
    m.load_state_dict(back, strict=True)
    x = _normalised_test_images(rec, 8)
    with torch.no_grad():
        np.testing.assert_allclose(m.eval()(x).softmax(1).numpy(), _stored(rec, "probs")[:8],
                                   rtol=0, atol=1e-5)


def test_model_json_fields(cls_run, tmp_path):
    ws, rec = cls_run
    res = export_run(rec.run_id, workspace=ws, format="onnx", out_dir=tmp_path / "m",
                     checkpoint="last")
    meta = json.loads(res.metadata_file.read_text())
    assert meta == json.loads(json.dumps(res.metadata, default=str))
    di = rec.data_info
    assert meta["schema"] == "transfuse.model/1" and meta["format"] == "onnx"
    assert meta["file"] == "model.onnx" and (tmp_path / "m" / meta["file"]).is_file()
    assert meta["run_id"] == rec.run_id and meta["checkpoint"] == "last"
    assert meta["checkpoint_step"] == 4
    assert meta["model"]["name"] == "cbr_tiny" and meta["model"]["spatial_dims"] == 2
    assert meta["model"]["parameters"] == rec.model_info["parameters"]
    assert meta["task"] == "multiclass"
    assert meta["class_names"] == di["class_names"] == ["background", "grey_matter",
                                                        "white_matter", "csf"]
    assert meta["input"]["shape"] == [1, 1, 32, 32] and meta["input"]["channels"] == 1
    assert meta["normalization"]["mean"] == di["norm_mean"]
    assert meta["normalization"]["std"] == di["norm_std"]
    assert meta["output"]["shape"] == ["batch", 4] and "softmax" in meta["output"]["activation"]
    assert meta["init"] == {"name": "random", "source": None, "partial": False}
    assert meta["source"] is None
    assert meta["dataset"]["name"] == "builtin:brain_tissue"
    stored = Store(ws).final_metrics(rec.run_id)
    assert meta["test_metrics"] == stored and meta["test_metrics"]["auc"] == pytest.approx(
        float(np.mean([v for k, v in stored.items() if k.startswith("auc/")])))
    assert meta["transfuse_version"] == __version__ and meta["torch_version"] == torch.__version__
    assert meta["check"]["passed"] is True


def test_export_segmentation_model_onnx(seg_run, tmp_path):
    import onnxruntime as ort

    ws, rec = seg_run
    res = export_run(rec.run_id, workspace=ws, format="onnx", out_dir=tmp_path)
    meta = res.metadata
    assert meta["task"] == "segmentation" and meta["input"]["shape"] == [1, 1, 16, 16, 16]
    assert meta["output"]["shape"] == ["batch", 4, 16, 16, 16]
    assert meta["preprocessing"]["spacing_mm"] == [3.0, 3.0, 3.0]
    assert meta["preprocessing"]["sliding_window"] == {"roi_size": [16, 16, 16], "overlap": 0.25,
                                                       "mode": "gaussian"}
    x = torch.randn(2, 1, 16, 16, 16, generator=torch.Generator().manual_seed(3))
    sess = ort.InferenceSession(str(res.model_file), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = load_run(rec.run_id, workspace=ws).model(x).numpy()
    assert np.abs(sess.run(None, {"input": x.numpy()})[0] - ref).max() <= 1e-4
    assert meta["check"]["passed"] is True


# -- bad input: one line, exit 2 ------------------------------------------------------------------

def _rgb_png(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8) + 40).save(path)
    return path


def _gray_png(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((32, 32), np.uint8) + 40).save(path)
    return path


BAD = {  # name -> (which run, argv after the run id (PATH = tmp_path), needle in the message)
    "unknown run": ("none", ["predict", "--input", "test"], "no run with id 'fffffffffff0'"),
    "missing file": ("cls", ["predict", "--input", "PATH/nope.png"], "nope.png: --input not found"),
    "wrong channels": ("cls", ["predict", "--input", "PATH/rgb.png"],
                       "rgb.png: the image has 3 channel(s) but run"),
    "dataset without split": ("cls", ["predict", "--input", "builtin:brain_tissue"],
                              "names a dataset but no split"),
    "bad checkpoint": ("cls", ["predict", "--input", "test", "--checkpoint", "middle"],
                       "--checkpoint 'middle' is not one of best, last"),
    "csv without path column": ("cls", ["predict", "--input", "PATH/list.csv"],
                                "no column 'path' with file paths"),
    "2D image for 3D segmentation": ("seg", ["predict", "--input", "PATH/gray.png"],
                                     "segments 3D volumes"),
    "2D NIfTI for 3D segmentation": ("seg", ["predict", "--input", "PATH/flat.nii.gz"],
                                     "the image is 2D (20, 24) but run"),
    "unknown format": ("cls", ["export", "--format", "tflite", "-o", "PATH/x"],
                       "--format 'tflite' is not one of torchscript, onnx, safetensors"),
    "no store": ("empty", ["export", "--format", "onnx", "-o", "PATH/x"], "no run store in"),
    # issue 29: input the run never saw is refused, not predicted without a word
    "NaN array": ("cls", ["predict", "--input", "PATH/nan.npy"], "nan.npy: the image holds NaN or inf"),
    "inf array": ("cls", ["predict", "--input", "PATH/inf.npy"], "inf.npy: the image holds NaN or inf"),
    "3x3 array": ("cls", ["predict", "--input", "PATH/tiny.npy"],
                  "tiny.npy: the image is 3x3 but run"),
    "512x300 PNG": ("cls", ["predict", "--input", "PATH/big.png"],
                    "big.png: the image is 300x512 but run"),
    "text array": ("cls", ["predict", "--input", "PATH/text.npy"], "non-numeric dtype <U1"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_error_line_and_exit_2(case, cls_run, seg_run, tmp_path, capsys,
                                                monkeypatch):
    import nibabel as nib

    monkeypatch.chdir(tmp_path)  # where default outputs (predictions-RUN_ID...) would appear

    which, argv, needle = BAD[case]
    _rgb_png(tmp_path / "rgb.png")
    _gray_png(tmp_path / "gray.png")
    (tmp_path / "list.csv").write_text("file\nrgb.png\n")
    np.save(tmp_path / "nan.npy", np.full((32, 32), np.nan, np.float32))
    np.save(tmp_path / "inf.npy", np.where(np.eye(32) > 0, np.inf, 0.5).astype(np.float32))
    np.save(tmp_path / "tiny.npy", np.full((3, 3), 0.5, np.float32))
    np.save(tmp_path / "text.npy", np.full((32, 32), "x"))
    from PIL import Image

    Image.fromarray(np.zeros((300, 512), np.uint8)).save(tmp_path / "big.png")
    nib.save(nib.Nifti1Image(np.ones((20, 24), np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    ws, rid = {"cls": (cls_run[0], cls_run[1].run_id), "seg": (seg_run[0], seg_run[1].run_id),
               "none": (cls_run[0], "fffffffffff0"), "empty": (tmp_path / "nows", "abc")}[which]
    args = [a.replace("PATH", str(tmp_path)) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main([args[0], rid, *args[1:], "-w", str(ws)])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_unfinished_run_is_refused(cls_run, capsys):
    ws, rec = cls_run
    spec = RunSpec(data=DataSpec(name="builtin:brain_tissue", n_train=32),
                   model=ModelSpec(name="cbr_tiny"), train=TrainSpec(steps=1, amp=False), seed=99)
    rid = Store(ws).start_run(spec)  # running, owned by this (live) process
    for argv in (["predict", rid, "--input", "test"], ["export", rid, "--format", "onnx", "-o", "x"]):
        assert main([*argv, "-w", str(ws)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: run {rid} is running, not finished; finish it first (run the same "
                       "`transfuse train ...` again) or pick a finished run (`transfuse runs list`)"]


def test_onnx_without_onnxruntime_says_what_to_install(cls_run, tmp_path, monkeypatch, capsys):
    ws, rec = cls_run
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert main(["export", rec.run_id, "--format", "onnx", "-o", str(tmp_path / "x"),
                 "-w", str(ws)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("pip install 'transfuse[export]'")
    assert "onnxruntime" in err[0] and not (tmp_path / "x").exists()
