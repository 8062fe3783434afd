"""Segmentation training: the MONAI loss and Dice metrics (numbers), exact sliding-window stitching,
fit() selecting on Dice, learning on synthetic spheres, end-to-end runs of the built-in 3D brain
data through the library, the CLI and a study, and the model/data task check."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.test_seg_data import write_msd
from transfuse import DataSpec, ModelSpec, RunSpec, Store, TrainSpec, train_run
from transfuse.cli import main
from transfuse.config import run_id, spec_from_dict
from transfuse.data import DatasetInfo, PreparedData
from transfuse.data.segmentation import Volume, VolumeDataset
from transfuse.errors import ConfigError
from transfuse.train.loop import evaluate, loss_fn, primary_metric
from transfuse.train.segment import case_dice, segmentation_loss, segmentation_metrics

TINY = TrainSpec(steps=4, batch_size=2, eval_every=2, amp=False, optimizer="adam", lr=0.01)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Tiny tensors: one intra-op thread (see conftest)."""


# -- loss and Dice --------------------------------------------------------------------------------

def test_loss_is_monai_dice_ce_and_loss_fn_dispatches():
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    logits, y = torch.randn(2, 3, 6, 6, 6), torch.randint(0, 3, (2, 6, 6, 6))
    ref = DiceCELoss(to_onehot_y=True, softmax=True)(logits, y[:, None])
    torch.testing.assert_close(segmentation_loss(logits, y), ref)
    torch.testing.assert_close(loss_fn(logits, y, torch.ones_like(y, dtype=torch.float), "segmentation"), ref)
    perfect = nn.functional.one_hot(y, 3).permute(0, 4, 1, 2, 3).float() * 40 - 20
    assert segmentation_loss(perfect, y) < 0.01 < 1.0 < segmentation_loss(-perfect, y)


def test_case_dice_numbers():
    target = torch.zeros(4, 4, 4, dtype=torch.long)
    pred = torch.zeros_like(target)
    target[0, :2] = 1            # 8 voxels of class 1
    pred[0, :1] = 1              # 4 of them ...
    pred[1, :1] = 1              # ... plus 4 false positives: Dice = 2*4 / (8 + 8) = 0.5
    target[3, 3, 3] = 2          # class 2: one voxel, predicted exactly
    pred[3, 3, 3] = 2
    pred[2, 2, 2] = 3            # class 3: predicted but absent from the truth -> undefined
    d = case_dice(pred, target, num_classes=4, regions={"fg": (1, 2, 3), "three": (3,)})
    assert d[0] == pytest.approx(0.5) and d[1] == pytest.approx(1.0) and math.isnan(d[2])
    # fg region: truth 9 voxels, prediction 10, overlap 5 -> 10 / 19.
    assert d[3] == pytest.approx(10 / 19) and math.isnan(d[4])


def test_segmentation_metrics_average_defined_scores():
    per_case = np.array([[1.0, np.nan, 0.2], [0.5, 0.25, np.nan]])
    m = segmentation_metrics(per_case, class_names=("bg", "a", "b"), regions=("r",))
    assert m["dice/a"] == pytest.approx(0.75) and m["dice/b"] == pytest.approx(0.25)
    assert m["dice/r"] == pytest.approx(0.2) and m["dice"] == pytest.approx(0.5)
    assert math.isnan(segmentation_metrics(np.full((1, 1), np.nan), class_names=("bg", "a"))["dice"])
    assert primary_metric("segmentation") == "dice" and primary_metric("multiclass") == "auc"


def _oracle_data(shapes: list[tuple[int, ...]], k: int = 3) -> PreparedData:
    """Volumes whose intensity is their label; odd shapes, so the windows overlap and pad."""
    rng = np.random.default_rng(0)
    vols = []
    for s in shapes:
        lab = torch.from_numpy(rng.integers(0, k, s).astype(np.uint8))
        vols.append(Volume(lab.float()[None], lab, (1.0,) * len(s), f"v{s}"))
    info = DatasetInfo(name="oracle", task="segmentation", class_names=("bg", "a", "b"),
                       spatial_dims=len(shapes[0]), in_channels=1, image_shape=(8,) * len(shapes[0]),
                       spacing=(1.0,) * len(shapes[0]), regions={"ab": (1, 2)})
    ds = VolumeDataset(vols)
    return PreparedData(info, ds, ds, ds)


@pytest.mark.parametrize("dims", [2, 3])
def test_sliding_window_stitches_whole_volumes_exactly(dims):
    """A 1x1 conv with logit_k = 2k*x - k^2 predicts round(x): perfect Dice on every volume, only
    if the windows (8 voxels, 25 % overlap, padding at the borders) are put back in place."""
    shapes = [(20, 18, 13), (9, 8, 31)] if dims == 3 else [(20, 13), (9, 31)]
    data = _oracle_data(shapes)
    conv = (nn.Conv3d if dims == 3 else nn.Conv2d)(1, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.0, 2.0, 4.0]).view(3, 1, *([1] * dims)))
        conv.bias.copy_(torch.tensor([0.0, -1.0, -4.0]))
    loader = torch.utils.data.DataLoader(data.val, batch_size=1)
    metrics, per_case = evaluate(conv, loader, data=data, device=torch.device("cpu"))
    assert per_case.shape == (2, 3) and np.allclose(per_case, 1.0)
    assert metrics["dice"] == metrics["dice/a"] == metrics["dice/b"] == metrics["dice/ab"] == pytest.approx(1.0)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([100.0, 0.0, 0.0]))  # always background
    metrics, _ = evaluate(conv, loader, data=data, device=torch.device("cpu"))
    assert metrics["dice"] == 0.0 and metrics["loss"] > 1.0


# -- fit() on synthetic spheres -------------------------------------------------------------------

@pytest.fixture(scope="module")
def spheres(tmp_path_factory) -> Path:
    return write_msd(tmp_path_factory.mktemp("seg") / "Task01_Spheres", n=8)


def _spec(root: Path, **train) -> RunSpec:
    return RunSpec(data=DataSpec(name=f"msd:{root}", patch_size=16, regions={"ball": [1, 2]}),
                   model=ModelSpec(name="seg_unet_tiny"),
                   train=TrainSpec(**{**TINY.__dict__, "steps": 60, "eval_every": 20, **train}))


def test_fit_learns_spheres_and_selects_on_dice(spheres, tmp_path):
    spec = _spec(spheres)
    out = train_run(spec, workspace=tmp_path / "ws", device="cpu", progress=False)
    store = Store(tmp_path / "ws")
    rec = store.get_run(out.record.run_id)
    assert rec.data_info["task"] == "segmentation" and rec.data_info["regions"] == {"ball": [1, 2]}
    assert set(out.test) == {"loss", "dice", "dice/shell", "dice/core", "dice/ball"}
    # 60 steps reach about 0.95 for every class (seed 0); a constant prediction scores 0.
    assert min(out.test["dice/shell"], out.test["dice/core"], out.test["dice/ball"]) > 0.8
    val = {step: v for step, split, name, v in store.metrics(rec.run_id) if split == "val" and name == "dice"}
    assert sorted(val) == [0, 20, 40, 60] and val[0] < 0.5 < val[60]
    best = max(val, key=lambda s: (val[s], -s))  # first maximum wins (strictly better only)
    assert rec.summary["best_step"] == best
    with np.load(Path(rec.run_dir) / "test_predictions.npz") as z:
        assert z["dice"].shape == (2, 3) and list(z["columns"]) == ["shell", "core", "ball"]
        assert np.nanmean(z["dice"][:, :2], 0).mean() == pytest.approx(out.test["dice"])


def test_segmentation_runs_are_deterministic_on_cpu(spheres, tmp_path):
    spec = _spec(spheres, steps=6, eval_every=3)
    a = train_run(spec, workspace=tmp_path / "a", device="cpu", progress=False)
    b = train_run(spec, workspace=tmp_path / "b", device="cpu", progress=False)
    assert a.record.run_id == b.record.run_id and a.test == pytest.approx(b.test)
    c = train_run(replace(spec, seed=1), workspace=tmp_path / "c", device="cpu", progress=False)
    assert c.test != pytest.approx(a.test)  # another seed: other patches, other init


def test_classification_model_and_bad_patch_are_refused(spheres, tmp_path):
    for model, patch, needle in (("cbr_tiny", 16, "is a classification model"),
                                 ("seg_unet_tiny", 12, "--patch-size 16")):
        spec = RunSpec(data=DataSpec(name=f"msd:{spheres}", patch_size=patch),
                       model=ModelSpec(name=model), train=TINY)
        with pytest.raises(ConfigError, match=needle):
            train_run(spec, workspace=tmp_path / "ws", device="cpu", progress=False)


def test_segmentation_model_on_classification_data_is_refused(tmp_path, make_npz):
    make_npz(tmp_path / "d" / "organmnist3d.npz", n=(4, 2, 2), shape=(28, 28, 28), num_classes=11)
    spec = RunSpec(data=DataSpec(name="medmnist:organmnist3d", data_root=str(tmp_path / "d")),
                   model=ModelSpec(name="seg_unet_tiny"), train=TINY)
    with pytest.raises(ConfigError, match="'seg_unet_tiny' is a segmentation model but dataset"):
        train_run(spec, workspace=tmp_path / "ws", device="cpu", progress=False)


# -- the built-in 3D brain data end to end --------------------------------------------------------

def test_cli_trains_builtin_brain_seg3d(tmp_path, capsys):
    args = ["train", "--dataset", "builtin:brain_seg3d", "--model", "seg_unet_tiny",
            "--patch-size", "16", "--steps", "4", "--batch-size", "2", "--eval-every", "2",
            "--optimizer", "adam", "--lr", "0.01", "--region", "brain=1,2,3", "--workspace",
            str(tmp_path / "ws"), "--device", "cpu", "--no-progress", "--no-amp"]
    assert main(args + ["--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["test"]) == {"loss", "dice", "dice/grey_matter", "dice/white_matter",
                                "dice/csf", "dice/brain"}
    assert all(0.0 <= v <= 1.0 for k, v in res["test"].items() if k.startswith("dice"))
    assert main(args) == 0  # the second time it is already finished, and says so in Dice
    out = capsys.readouterr().out
    assert "already finished" in out and f"test Dice {res['test']['dice']:.4f}" in out
    assert main(["runs", "list", "--workspace", str(tmp_path / "ws")]) == 0
    assert f"Dice {res['test']['dice']:.4f}" in capsys.readouterr().out
    [rec] = Store(tmp_path / "ws").list_runs()
    assert rec.data_info["split_sizes"] == {"train": 2, "val": 1, "test": 1}
    assert rec.spec["data"]["patch_size"] == 16 and rec.data_info["image_shape"] == [16, 16, 16]


def test_study_results_score_segmentation_runs_by_dice(tmp_path):
    """What a study sees: runs stored under a study name are compared on Dice, not AUC."""
    from transfuse.decide.results import load_results

    for seed in (0, 1):
        spec = RunSpec(data=DataSpec(name="builtin:brain_seg3d", patch_size=16),
                       model=ModelSpec(name="seg_unet_tiny"), train=TINY, seed=seed, study="seg3d")
        train_run(spec, workspace=tmp_path / "ws", device="cpu", progress=False)
    store = Store(tmp_path / "ws")
    res = load_results(store, "seg3d", thresholds=(0.2,))
    assert res.metric == "dice" and res.task == "segmentation" and len(res.rows) == 2
    assert all(r.curve_steps == (0, 2, 4) and 0 <= r.test <= 1 for r in res.rows)

    # The report's Dice-per-class section: the mean of the stored per-class test Dice.
    import numpy as np

    from transfuse.report.med3d import med3d_section
    from transfuse.report.segmentation import class_dice, dice_section

    names, groups = class_dice(store, list(res.rows))
    assert names == ["csf", "grey_matter", "white_matter"]
    ((key, per),) = groups.items()
    for n in names:
        want = [dict((m, v) for _, sp, m, v in store.metrics(r.run_id) if sp == "test")[f"dice/{n}"]
                for r in res.rows]
        assert per[n] == want
    # the study Dice is the mean over foreground classes, run by run
    for i, r in enumerate(res.rows):
        assert r.test == pytest.approx(np.mean([per[n][i] for n in names]))
    sec = dice_section(store, "seg3d")
    assert sec.title == "Dice per class" and "grey_matter" in sec.body and "(n=2)" in sec.body
    assert med3d_section(store, "seg3d") is None  # no med3d: source in this study


@pytest.mark.slow
def test_study_run_on_builtin_brain_seg3d(tmp_path):
    """The whole study runner (spawned worker process) on segmentation: about 30 s."""
    from transfuse.study import load_study, run_study
    from transfuse.decide.results import load_results

    f = tmp_path / "seg.yaml"
    f.write_text("""
name: seg3d
base:
  data: {name: "builtin:brain_seg3d", patch_size: 16}
  model: {name: seg_unet_tiny}
  train: {steps: 4, batch_size: 2, eval_every: 2, optimizer: adam, lr: 0.01, amp: false}
grid:
  seed: [0, 1]
evaluation:
  auc_thresholds: [0.2]
""")
    out = run_study(load_study(f), workspace=tmp_path / "ws", device="cpu", progress=False)
    assert out.ok and len(out.finished) == 2
    res = load_results(Store(tmp_path / "ws"), "seg3d", thresholds=(0.2,))
    assert res.metric == "dice" and res.task == "segmentation"
    assert all(r.curve_steps == (0, 2, 4) and 0 <= r.test <= 1 for r in res.rows)


# -- run ids --------------------------------------------------------------------------------------

def test_new_data_fields_leave_existing_run_ids_alone():
    base = RunSpec(data=DataSpec(name="builtin:brain_tissue"), model=ModelSpec(name="cbr_tiny"))
    d = base.to_dict()["data"]
    assert not {"patch_size", "spacing", "fg_ratio", "regions"} & set(d)
    assert run_id(base) == "6585eb6c6cb5"  # the id this spec had before the fields existed
    seg = RunSpec(data=DataSpec(name="builtin:brain_seg3d", patch_size=16, spacing=[2, 2, 2],
                                fg_ratio=0.7, regions={"brain": [1, 2, 3]}),
                  model=ModelSpec(name="seg_unet_tiny"))
    assert seg.data.spacing == 2.0 and seg.data.regions == (("brain", (1, 2, 3)),)
    assert spec_from_dict(seg.to_dict()) == seg and run_id(spec_from_dict(seg.to_dict())) == run_id(seg)
    assert run_id(seg) != run_id(RunSpec(data=DataSpec(name="builtin:brain_seg3d", patch_size=16),
                                         model=ModelSpec(name="seg_unet_tiny")))
