"""Segmentation data: the MSD layout, image/label folders (NIfTI and DICOM series), the built-in 3D
brain data, patch sampling, resampling and normalisation — and every bad input as a one-line
error naming the file, through the library and through ``transfuse train`` (exit 2, no run row).
Volumes are tiny (16–24 voxels a side)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from transfuse import DataSpec, ModelSpec, RunSpec, Store, TrainSpec, train_run
from transfuse.cli import main
from transfuse.data import load_dataset
from transfuse.data.segmentation import PATCHES_PER_VOLUME
from transfuse.errors import ConfigError, DataError, TransfuseError

SIDE = 16


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Tiny tensors: one intra-op thread (see conftest)."""


# -- writers (also used by test_segment.py) -------------------------------------------------------

def sphere_case(seed: int, side: int = SIDE, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A noisy bright ball (label 1) with a brighter core (label 2): ``(image, label)``."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).astype(np.float32)
    c = rng.uniform(side * 0.4, side * 0.6, 3)
    r = np.linalg.norm(g - c, axis=-1)
    lab = np.where(r < side * 0.3, 1, 0) + np.where(r < side * 0.15, 1, 0)
    img = 100 * (lab > 0) + 50 * (lab > 1) + rng.normal(0, 10, lab.shape)
    if channels > 1:
        img = np.stack([img * (k + 1) for k in range(channels)], -1)
    return img.astype(np.float32), lab.astype(np.uint8)


def write_nifti(path: Path, arr: np.ndarray, mm: float = 2.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, np.diag([mm, mm, mm, 1.0])), str(path))
    return path


def write_msd(root: Path, n: int = 6, *, channels: int = 1, side: int = SIDE,
              labelled_test: int = 0) -> Path:
    """An MSD task folder with ``n`` training cases (and optionally labelled test cases)."""
    entries, tests = [], []
    for i in range(n + labelled_test):
        img, lab = sphere_case(i, side, channels)
        write_nifti(root / "imagesTr" / f"case_{i:03d}.nii.gz", img)
        write_nifti(root / "labelsTr" / f"case_{i:03d}.nii.gz", lab)
        e = {"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"}
        (entries if i < n else tests).append(e)
    meta = {"name": "Spheres", "labels": {"0": "background", "1": "shell", "2": "core"},
            "modality": {str(k): f"MR{k}" for k in range(channels)}, "numTraining": n,
            "training": entries, "test": tests or ["./imagesTs/unlabelled.nii.gz"]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def write_dicom_series(folder: Path, vol: np.ndarray, mm: float = 2.0) -> Path:
    """``vol`` ``(slices, rows, cols)`` as one CT series of int16 DICOM files."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(vol.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID = CTImageStorage, ExplicitVRLittleEndian
        meta.MediaStorageSOPInstanceUID = sop = generate_uid()
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality, ds.PatientID = CTImageStorage, sop, "CT", "x"
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = series, study, frame
        ds.InstanceNumber, ds.ImagePositionPatient = k + 1, [0.0, 0.0, k * mm]
        ds.ImageOrientationPatient, ds.PixelSpacing, ds.SliceThickness = [1, 0, 0, 0, 1, 0], [mm, mm], mm
        ds.Rows, ds.Columns = vol.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = vol[k].astype(np.int16).tobytes()
        ds.save_as(folder / f"slice{k:03d}.dcm", enforce_file_format=True)
    return folder


def msd_spec(root: Path, **kw) -> DataSpec:
    return DataSpec(name=f"msd:{root}", patch_size=8, **kw)


# -- MSD layout -----------------------------------------------------------------------------------

def test_msd_loads_splits_classes_and_patches(tmp_path):
    root = write_msd(tmp_path / "Task99_Spheres", n=8, channels=2)
    d = load_dataset(msd_spec(root))
    assert d.info.task == "segmentation" and d.info.class_names == ("background", "shell", "core")
    assert d.info.spatial_dims == 3 and d.info.in_channels == 2 and d.info.image_shape == (8, 8, 8)
    # 8 cases: test round(0.2*8)=2, val max(1, round(0.8))=1, train 5; unlabelled test ignored.
    assert d.info.split_sizes == {"train": 5, "val": 1, "test": 2}
    assert len(d.train) == 5 * PATCHES_PER_VOLUME and d.info.spacing == (2.0, 2.0, 2.0)
    x, y, m = d.train[0]
    assert x.shape == (2, 8, 8, 8) and x.dtype == torch.float32
    assert y.shape == (8, 8, 8) and y.dtype == torch.int64 and set(y.unique().tolist()) <= {0, 1, 2}
    assert m.shape == (8, 8, 8) and bool((m == 1).all())
    xv, yv, _ = d.val[0]  # whole volumes for sliding-window inference
    assert xv.shape == (2, SIDE, SIDE, SIDE) and yv.shape == (SIDE, SIDE, SIDE)
    # Normalised with the training voxels' statistics: mean 0, std 1 per channel.
    vox = torch.cat([v.image.reshape(2, -1) for v in d.train.volumes], 1)
    torch.testing.assert_close(vox.mean(1), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(vox.std(1), torch.ones(2), atol=1e-3, rtol=0)
    assert d.info.to_dict()["spacing"] == [2.0, 2.0, 2.0]


def test_msd_split_is_deterministic_per_seed(tmp_path):
    root = write_msd(tmp_path / "T", n=10)
    names = lambda d: [[v.name for v in d.split(s).volumes] for s in ("train", "val", "test")]  # noqa: E731
    a, b = names(load_dataset(msd_spec(root))), names(load_dataset(msd_spec(root)))
    c = names(load_dataset(msd_spec(root, split_seed=3)))
    assert a == b and a != c
    for n in (a, c):  # disjoint and complete
        flat = sum(n, [])
        assert len(flat) == len(set(flat)) == 10


def test_msd_labelled_test_list_and_n_train(tmp_path):
    root = write_msd(tmp_path / "T", n=6, labelled_test=2)
    d = load_dataset(msd_spec(root, n_train=2))
    assert d.info.split_sizes == {"train": 2, "val": 1, "test": 2}
    assert all("case_006" in v.name or "case_007" in v.name for v in d.test.volumes)
    # dataset.json given directly, relative to data_root.
    d2 = load_dataset(DataSpec(name="msd:T/dataset.json", data_root=str(tmp_path), patch_size=8))
    assert d2.info.split_sizes == {"train": 5, "val": 1, "test": 2}


def test_fg_ratio_decides_the_patch_centre(tmp_path):
    """fg_ratio = P(centre on foreground); a background centre near the border is moved inward
    so the patch fits, which can land it on the ball (about 1 in 7 here)."""
    fg = {}
    for ratio in (0.0, 0.5, 1.0):
        d = load_dataset(msd_spec(write_msd(tmp_path / f"T{ratio}", n=5), fg_ratio=ratio))
        torch.manual_seed(0)
        fg[ratio] = np.mean([int(d.train[i][1][4, 4, 4]) > 0 for i in range(200)])
    assert fg[1.0] == 1.0 and fg[0.0] < 0.25 and 0.4 < fg[0.5] < 0.75


def test_patches_are_reproducible_from_the_torch_seed(tmp_path):
    d = load_dataset(msd_spec(write_msd(tmp_path / "T", n=5)))
    torch.manual_seed(1)
    a = [d.train[i][0] for i in range(5)]
    torch.manual_seed(1)
    b = [d.train[i][0] for i in range(5)]
    torch.manual_seed(2)
    c = [d.train[i][0] for i in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_spacing_resamples_and_pads_small_volumes(tmp_path):
    root = write_msd(tmp_path / "T", n=5)
    d = load_dataset(DataSpec(name=f"msd:{root}", spacing=4.0, patch_size=16))
    assert d.info.spacing == (4.0, 4.0, 4.0)
    assert d.val[0][0].shape == (1, 8, 8, 8)  # 16 voxels x 2 mm -> 8 voxels x 4 mm
    assert d.train.volumes[0].image.shape == (1, 16, 16, 16)  # padded to one patch for training
    assert d.train[0][0].shape == (1, 16, 16, 16)
    aniso = load_dataset(DataSpec(name=f"msd:{root}", spacing=(2.0, 2.0, 4.0), patch_size=8))
    assert aniso.val[0][0].shape == (1, 16, 16, 8)


def test_regions_recorded_and_checked(tmp_path):
    root = write_msd(tmp_path / "T", n=5)
    d = load_dataset(msd_spec(root, regions={"whole": [1, 2]}))
    assert d.info.regions == {"whole": (1, 2)}
    with pytest.raises(ConfigError, match=r"data.regions\['x'\]: label 3 is not a class"):
        load_dataset(msd_spec(root, regions={"x": [3]}))
    with pytest.raises(ConfigError, match="has the name of a class"):
        load_dataset(msd_spec(root, regions={"core": [2]}))


# -- nifti: folders (NIfTI, DICOM series, 2D) -----------------------------------------------------

def test_nifti_folder_with_dicom_series_images(tmp_path):
    root = tmp_path / "ds"
    for i in range(4):
        img, lab = sphere_case(i)
        if i == 0:  # a DICOM series folder: slices along the first axis, read back as (x, y, z)
            write_dicom_series(root / "images" / "c0", np.rint(img).transpose(2, 1, 0))
        else:
            write_nifti(root / "images" / f"c{i}.nii.gz", img)
        write_nifti(root / "labels" / f"c{i}.nii.gz", lab)
    d = load_dataset(DataSpec(name=f"nifti:{root}", patch_size=8, val_fraction=0.25,
                              test_fraction=0.25))
    assert d.info.class_names == ("background", "label1", "label2")
    assert sum(d.info.split_sizes.values()) == 4
    dicom = next(v for s in ("train", "val", "test") for v in d.split(s).volumes
                 if v.name.endswith("c0"))
    assert dicom.image.shape == (1, SIDE, SIDE, SIDE)
    # The image is bright exactly where the label says ball: the grids line up.
    inside = dicom.image[0][dicom.label > 0].mean()
    assert inside > dicom.image[0][dicom.label == 0].mean() + 1.0


def test_nifti_folder_2d(tmp_path):
    root = tmp_path / "ds2d"
    for i in range(4):
        img, lab = sphere_case(i, side=24)
        write_nifti(root / "images" / f"s{i}.nii.gz", img[:, :, 12])
        write_nifti(root / "labels" / f"s{i}.nii.gz", lab[:, :, 12])
    d = load_dataset(DataSpec(name=f"nifti:{root}", patch_size=16, val_fraction=0.25,
                              test_fraction=0.25))
    assert d.info.spatial_dims == 2 and d.info.image_shape == (16, 16)
    assert d.train[0][0].shape == (1, 16, 16) and d.test[0][1].shape == (24, 24)


# -- builtin:brain_seg3d --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def brain():
    return load_dataset("builtin:brain_seg3d")


def test_brain_seg3d_is_real_3d_tissue_segmentation(brain):
    info = brain.info
    assert info.task == "segmentation" and info.spatial_dims == 3 and info.in_channels == 1
    assert info.class_names == ("background", "grey_matter", "white_matter", "csf")
    assert info.split_sizes == {"train": 2, "val": 1, "test": 1} and info.spacing == (3.0, 3.0, 3.0)
    assert info.image_shape == (32, 32, 32)
    for split in ("train", "val", "test"):  # every tissue class is present in every split
        for v in brain.split(split).volumes:
            assert set(np.unique(v.label.numpy())) == {0, 1, 2, 3}, (split, v.name)
    # Test is a different image (Colin27) with its own grid; train/val are the MNI152 template.
    assert "Colin27" in brain.test.volumes[0].name
    assert all("MNI152" in v.name for v in brain.train.volumes + brain.val.volumes)
    assert brain.test.volumes[0].label.shape != brain.val.volumes[0].label.shape


def test_brain_seg3d_val_slab_is_held_out_with_guards():
    from transfuse.data import builtin3d

    v = builtin3d.brain_seg3d_volumes(seed=0)
    (below, above), [val] = v["train"], v["val"]
    a = builtin3d._sources()
    full = builtin3d._volume(a["train_x"][0], a["train_y"][0], (3.0,) * 3, "mni")
    z0, z1 = (int(t) for t in val.name.split("z=")[1].split(".."))
    assert z1 - z0 + 1 == 8  # 24 mm at 3 mm
    # Train = everything below and above the slab, minus 2 guard slices (6 mm) on each side.
    assert torch.equal(below.label, full.label[..., :z0 - 2])
    assert torch.equal(val.label, full.label[..., z0:z1 + 1])
    assert torch.equal(above.label, full.label[..., z1 + 3:])
    assert below.label.shape[2] + above.label.shape[2] + 8 + 4 == full.label.shape[2]
    other = builtin3d.brain_seg3d_volumes(seed=1)["val"][0]
    assert other.name != val.name  # another seed moves the slab


def test_brain_seg3d_spacing_option():
    d = load_dataset("builtin:brain_seg3d", spacing=6.0, patch_size=16)
    assert d.info.spacing == (6.0, 6.0, 6.0) and d.val[0][0].shape[-1] == 4  # 24 mm / 6 mm
    at3 = load_dataset("builtin:brain_seg3d").test[0][0].shape[1:]
    assert all(abs(s6 - s3 / 2) <= 1 for s6, s3 in zip(d.test[0][0].shape[1:], at3))


# -- AdrenalMNIST3D (3D classification, real file) ------------------------------------------------

def test_adrenalmnist3d_at_28_trains_end_to_end(adrenalmnist3d_npz):
    from transfuse.models import create_model
    from transfuse.train import fit

    d = load_dataset("medmnist:adrenalmnist3d@28", data_root=str(adrenalmnist3d_npz.parent), n_train=32)
    assert d.info.task == "multiclass" and d.info.image_shape == (28, 28, 28)
    assert d.info.split_sizes == {"train": 32, "val": 98, "test": 298}
    torch.manual_seed(0)
    model = create_model("cbr_tiny", spatial_dims=3, in_channels=1, num_classes=2, stage_widths={
        "stem": 0.25, "block1": 0.125, "block2": 0.0625, "block3": 0.03125})
    res = fit(model, d, TrainSpec(steps=2, batch_size=8, eval_every=2, amp=False), device="cpu",
              progress=False)
    assert 0.0 <= res.test["auc"] <= 1.0 and 0.0 <= res.test["acc"] <= 1.0
    assert [h[:2] for h in res.history] == [(0, "val"), (2, "train"), (2, "val")]


# -- bad input: library and CLI -------------------------------------------------------------------

@dataclass
class Bad:
    """A bad input: DataSpec fields, expected error type and substrings of its message."""

    data: dict
    error: type
    needles: tuple[str, ...]
    model: str = "seg_unet_tiny"


BAD: dict[str, Callable[[Path], Bad]] = {}


def bad(fn: Callable[[Path], Bad]) -> Callable[[Path], Bad]:
    BAD[fn.__name__] = fn
    return fn


def _msd_bad(root: Path, *needles: str, error: type = DataError, **data) -> Bad:
    return Bad({"name": f"msd:{root}", "patch_size": 8, **data}, error, needles)


@bad
def truncated_nifti(tmp: Path) -> Bad:
    root = write_msd(tmp / "T", n=4)
    f = root / "imagesTr" / "case_002.nii.gz"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return _msd_bad(root, str(f), "cannot read the image", "truncated")


@bad
def corrupt_label(tmp: Path) -> Bad:
    root = write_msd(tmp / "T", n=4)
    f = root / "labelsTr" / "case_001.nii.gz"
    f.write_bytes(b"not a nifti file at all")
    return _msd_bad(root, str(f), "cannot read the label")


@bad
def shape_mismatch(tmp: Path) -> Bad:
    root = write_msd(tmp / "T", n=4)
    f = write_nifti(root / "labelsTr" / "case_003.nii.gz", np.ones((SIDE, SIDE, 12), np.uint8))
    return _msd_bad(root, str(f), "label shape (16, 16, 12) does not match", "case_003")


@bad
def empty_label(tmp: Path) -> Bad:
    root = write_msd(tmp / "T", n=4)
    f = write_nifti(root / "labelsTr" / "case_000.nii.gz", np.zeros((SIDE,) * 3, np.uint8))
    return _msd_bad(root, str(f), "label map is empty")


@bad
def label_out_of_range(tmp: Path) -> Bad:
    root = write_msd(tmp / "T", n=4)
    lab = sphere_case(1)[1]
    lab[0, 0, 0] = 7
    f = write_nifti(root / "labelsTr" / "case_001.nii.gz", lab)
    return _msd_bad(root, str(f), "label value 7 is out of range 0..2")


@bad
def fractional_label(tmp: Path) -> Bad:
    root = write_msd(tmp / "T", n=4)
    f = write_nifti(root / "labelsTr" / "case_001.nii.gz", sphere_case(1)[1] * 0.5)
    return _msd_bad(root, str(f), "label value 0.5 is not an integer")


@bad
def missing_image(tmp: Path) -> Bad:
    root = write_msd(tmp / "T", n=4)
    f = root / "imagesTr" / "case_002.nii.gz"
    f.unlink()
    return _msd_bad(root, str(f), "image file not found", "dataset.json")


@bad
def nan_voxels(tmp: Path) -> Bad:
    root = write_msd(tmp / "T", n=4)
    img = sphere_case(2)[0]
    img[3, 3, 3] = np.nan
    f = write_nifti(root / "imagesTr" / "case_002.nii.gz", img)
    return _msd_bad(root, str(f), "NaN or inf")


@bad
def wrong_channel_count(tmp: Path) -> Bad:
    root = write_msd(tmp / "T", n=4, channels=2)
    f = write_nifti(root / "imagesTr" / "case_000.nii.gz", sphere_case(0)[0])
    return _msd_bad(root, str(f), "1 channels", "2 modalities")


@bad
def json_not_json(tmp: Path) -> Bad:
    root = write_msd(tmp / "T", n=4)
    (root / "dataset.json").write_text("{'labels': oops")
    return _msd_bad(root, str(root / "dataset.json"), "not a readable JSON file")


@bad
def json_missing_training(tmp: Path) -> Bad:
    root = write_msd(tmp / "T", n=4)
    meta = json.loads((root / "dataset.json").read_text())
    del meta["training"]
    (root / "dataset.json").write_text(json.dumps(meta))
    return _msd_bad(root, str(root / "dataset.json"), "missing key 'training'")


@bad
def json_entry_without_label(tmp: Path) -> Bad:
    root = write_msd(tmp / "T", n=4)
    meta = json.loads((root / "dataset.json").read_text())
    del meta["training"][2]["label"]
    (root / "dataset.json").write_text(json.dumps(meta))
    return _msd_bad(root, str(root / "dataset.json"), "training[2] needs 'image' and 'label'")


@bad
def json_bad_label_keys(tmp: Path) -> Bad:
    root = write_msd(tmp / "T", n=4)
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {"0": "background", "2": "core"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return _msd_bad(root, str(root / "dataset.json"), "'labels' keys must be 0..K-1")


@bad
def json_path_escapes(tmp: Path) -> Bad:
    root = write_msd(tmp / "T", n=4)
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][0]["image"] = "../../etc/passwd"
    (root / "dataset.json").write_text(json.dumps(meta))
    return _msd_bad(root, str(root / "dataset.json"), "training[0].image", "points outside")


@bad
def no_dataset_json(tmp: Path) -> Bad:
    (tmp / "Empty").mkdir()
    return _msd_bad(tmp / "Empty", str(tmp / "Empty" / "dataset.json"), "not found")


@bad
def too_few_cases(tmp: Path) -> Bad:
    root = write_msd(tmp / "T", n=2)
    return _msd_bad(root, str(root / "dataset.json"), "2 labelled case(s) are too few")


@bad
def truncated_dicom_slice(tmp: Path) -> Bad:
    root = tmp / "ds"
    for i in range(3):
        img, lab = sphere_case(i)
        write_dicom_series(root / "images" / f"c{i}", np.rint(img).transpose(2, 1, 0))
        write_nifti(root / "labels" / f"c{i}.nii.gz", lab)
    f = root / "images" / "c1" / "slice005.dcm"
    f.write_bytes(f.read_bytes()[:-200])
    return Bad({"name": f"nifti:{root}", "patch_size": 8}, DataError,
               (str(root / "images" / "c1"), "cannot read the image"))


@bad
def image_without_label(tmp: Path) -> Bad:
    root = tmp / "ds"
    write_nifti(root / "images" / "a.nii.gz", sphere_case(0)[0])
    write_nifti(root / "labels" / "b.nii.gz", sphere_case(0)[1])
    return Bad({"name": f"nifti:{root}"}, DataError, (str(root / "images" / "a.nii.gz"),
                                                       "no label map for case 'a'"))


@bad
def image_size_on_segmentation(tmp: Path) -> Bad:
    return _msd_bad(write_msd(tmp / "T", n=4), "data.image_size", "data.patch_size",
                    error=ConfigError, image_size=32)


@bad
def classification_model(tmp: Path) -> Bad:
    b = _msd_bad(write_msd(tmp / "T", n=4), "'cbr_tiny' is a classification model",
                 "segmentation data", error=ConfigError)
    b.model = "cbr_tiny"
    return b


@bad
def patch_not_multiple_of_8(tmp: Path) -> Bad:
    return _msd_bad(write_msd(tmp / "T", n=4), "multiple of 8, not 12", "--patch-size 16",
                    error=ConfigError, patch_size=12)


TRAIN = TrainSpec(steps=1, batch_size=2, eval_every=1, amp=False)
FLAGS = {"name": "--dataset", "patch_size": "--patch-size", "image_size": "--image-size"}


def _check(msg: str, b: Bad) -> None:
    assert "\n" not in msg and msg == msg.strip() and msg
    for needle in b.needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def _no_runs(ws: Path) -> None:
    if (ws / "transfuse.db").exists():
        assert Store(ws).list_runs() == []


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_library(name, tmp_path):
    b = BAD[name](tmp_path)
    ws = tmp_path / "ws"
    with pytest.raises(TransfuseError) as ei:
        spec = RunSpec(data=DataSpec(**b.data), model=ModelSpec(name=b.model), train=TRAIN)
        train_run(spec, workspace=ws, device="cpu", progress=False)
    assert type(ei.value) is b.error, f"{type(ei.value).__name__}: {ei.value}"
    _check(str(ei.value), b)
    _no_runs(ws)


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_cli(name, tmp_path, capsys):
    b = BAD[name](tmp_path)
    ws = tmp_path / "ws"
    args = ["train", "--model", b.model, "--workspace", str(ws), "--device", "cpu", "--no-progress",
            "--steps", "1", "--batch-size", "2", "--eval-every", "1", "--no-amp"]
    for k, v in b.data.items():
        args += [FLAGS[k], str(v)]
    capsys.readouterr()
    rc = main(args)
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    _check(lines[0][len("error: "):], b)
    _no_runs(ws)


def test_segmentation_options_on_classification_data_raise(tmp_path, make_npz):
    make_npz(tmp_path / "retinamnist.npz", n=(6, 2, 2))
    for opt, needle in ((dict(patch_size=16), "data.patch_size"), (dict(fg_ratio=0.9), "data.fg_ratio"),
                        (dict(regions={"a": [1]}), "data.regions")):
        with pytest.raises(ConfigError, match=f"{needle} only applies to segmentation"):
            load_dataset("medmnist:retinamnist", data_root=str(tmp_path), **opt)


def test_cli_spacing_and_region_flags_are_checked(capsys):
    for flag in (["--spacing", "3mm"], ["--region", "WT"]):
        assert main(["train", "--dataset", "builtin:brain_seg3d", "--model", "seg_unet_tiny",
                     *flag]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and flag[0] in err[0]


def test_unreadable_cache_is_not_an_error(tmp_path, monkeypatch):
    """The built-in volumes are cached like the other built-in data; a bad cache file is rebuilt."""
    from transfuse.data import builtin3d

    monkeypatch.setenv("TRANSFUSE_CACHE", str(tmp_path))
    builtin3d._sources()
    [f] = list((tmp_path / "builtin").glob("builtin_brain_seg3d-*.npz"))
    f.write_bytes(b"garbage")
    a = builtin3d._sources()
    assert a["train_x"].shape[0] == 1 and os.path.getsize(f) > 1000
