"""``transfuse study check`` and the check that starts every ``run_study``: every problem of
every cell at once, with the YAML key to change; nothing trained or stored while one remains."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from transfuse.cli import main
from transfuse.errors import ConfigError
from transfuse.store import Store
from transfuse.study import expand, load_study, run_study
from transfuse.study.check import StudyCheckError, check_study
from transfuse.study.spec import pretrain_specs

ROOT = Path(__file__).resolve().parents[1]

# A missing file source (arch 0, pretrained cells) and EfficientNet at 16 px (arch 1, every cell).
BROKEN = """
name: broken
base:
  data: {name: "builtin:brain_tissue", n_train: 48, image_size: 16}
  model: {name: cbr_tiny}
  train: {steps: 3, eval_every: 3, batch_size: 16}
grid:
  arch:
    - {model.name: cbr_tiny, init.source: "file:/nowhere/ckpt.pt"}
    - {model.name: "timm:efficientnet_lite0", init.source: "imagenet:efficientnet_lite0"}
  init.name: [random, pretrained]
  seed: [0, 1]
"""

MISSING = ("grid.arch[0].init.source: /nowhere/ckpt.pt: checkpoint not found; give the path of a "
           ".pt/.pth/.safetensors file [2 cells: arch[0] cbr_tiny · pretrained · n_train=48 · seed=0; "
           "arch[0] cbr_tiny · pretrained · n_train=48 · seed=1]")
SMALL = ("base.data.image_size: model 'timm:efficientnet_lite0' needs inputs of at least 32 px but "
         "'builtin:brain_tissue' is 16 px; set data.image_size to 32 or larger [4 cells: "
         "arch[1] timm:efficientnet_lite0 · random · n_train=48 · seed=0; "
         "arch[1] timm:efficientnet_lite0 · random · n_train=48 · seed=1; "
         "arch[1] timm:efficientnet_lite0 · pretrained · n_train=48 · seed=0; +1 more]")

# Five more kinds of problem, in different cells (load_study alone stops at the first).
MANY = """
name: many
pretrain:
  mod: {data: {name: "builtin:modality", n_train: 48, image_size: 32}, model: {name: cbr_tiny},
        train: {steps: 3, eval_every: 3, batch_size: 16}}
base:
  data: {name: "builtin:brain_tissue", n_train: 48}
  model: {name: cbr_tiny}
  train: {steps: 3, eval_every: 3, batch_size: 16}
grid:
  arch:
    - {model.name: cbr_tiny, init.source: "pretrain:mod"}
    - {model.name: cbr_small, init.source: "pretrain:moo"}
    - {model.name: cbr_tiny, train.lr: -1}
    - {model.name: cbr_tiny, data.n_train: 100000}
  init.name: [pretrained, "transfusion:block9"]
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_check_reports_both_problems_with_cells_and_keys(tmp_path, capsys):
    p = write(tmp_path, BROKEN)
    assert main(["study", "check", str(p), "-w", str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"error: {p}: study broken cannot run: 2 problems in 6 of 8 cells; nothing was "
                   "trained or stored", f"  {MISSING}", f"  {SMALL}"]
    assert not (tmp_path / "ws").exists()  # the check reads; it creates no store


def test_run_refuses_and_the_store_stays_without_runs(tmp_path, capsys):
    p = write(tmp_path, BROKEN)
    ws = tmp_path / "ws"
    Store(ws)  # an existing, empty store
    assert main(["study", "run", str(p), "-w", str(ws), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert MISSING in err and SMALL in err
    with pytest.raises(StudyCheckError) as e:  # the Python API refuses as well
        run_study(load_study(p, validate=False), workspace=ws, progress=False)
    assert e.value.report.bad_cells() == 6 and [x.key for x in e.value.report.problems] == [
        "grid.arch[0].init.source", "base.data.image_size"]
    with sqlite3.connect(ws / "transfuse.db") as con:
        assert con.execute("SELECT COUNT(*) FROM runs").fetchone() == (0,)
        assert con.execute("SELECT COUNT(*) FROM results").fetchone() == (0,)  # no study row


def test_every_kind_of_problem_at_once(tmp_path):
    p = write(tmp_path, MANY)
    with pytest.raises(ConfigError, match=r"grid cell \[arch=.*'pretrain:moo' names no entry") as e:
        load_study(p)  # the first bad cell only
    assert "train.lr" not in str(e.value)
    report = check_study(load_study(p, validate=False), workspace=tmp_path / "ws")
    got = {(x.key, x.message.split(";")[0]): x.cells for x in report.problems}
    assert got == {
        ("grid.init.name[1]", "init transfusion:block9: 'block9' is not a stage of cbr_tiny"): (
            "arch[0] cbr_tiny · transfusion:block9 · n_train=48 · seed=0",
            "arch[3] cbr_tiny · transfusion:block9 · n_train=100000 · seed=0"),
        ("grid.arch[1].init.source", "init.source 'pretrain:moo' names no entry of pretrain (have: mod)"): (
            "arch[1] cbr_small · pretrained · n_train=48 · seed=0",
            "arch[1] cbr_small · transfusion:block9 · n_train=48 · seed=0"),
        ("grid.arch[2].train.lr", "train.lr=-1 must be > 0"): (
            "arch[2] cbr_tiny · pretrained · n_train=48 · seed=0",
            "arch[2] cbr_tiny · transfusion:block9 · n_train=48 · seed=0"),
        ("base.init.source", "init 'pretrained' reads pretrained weights but the cell has no init.source"): (
            "arch[3] cbr_tiny · pretrained · n_train=100000 · seed=0",),
        ("base.init.source", "init 'transfusion:block9' reads pretrained weights but the cell has no "
                             "init.source"): ("arch[3] cbr_tiny · transfusion:block9 · n_train=100000 · seed=0",),
        ("grid.arch[3].data.n_train", "data.n_train=100000 is larger than the 3200 training examples of "
                                      "'builtin:brain_tissue'"): (
            "arch[3] cbr_tiny · pretrained · n_train=100000 · seed=0",
            "arch[3] cbr_tiny · transfusion:block9 · n_train=100000 · seed=0"),
        # a problem of the whole study: no cell is the reference arm
        ("evaluation.reference", "'random' is not an arm of this study, so nothing could be "
                                 "compared with it"): (),
    }
    assert (report.cells, report.pretrain, report.bad_cells()) == (8, 1, 7)
    assert "set data.n_train to 3200 or less" in report.lines()[4]  # the CLI's flag, as a YAML key


def test_pretrain_entries_and_smoke_keys_name_their_own_yaml_keys(tmp_path):
    text = """
name: keys
pretrain:
  big: {data: {name: "builtin:modality", n_train: 48, image_size: 16},
        model: {name: "timm:efficientnet_lite0"}, train: {steps: 3, eval_every: 3, batch_size: 16}}
base:
  data: {name: "builtin:brain_tissue", n_train: 48}
  model: {name: cbr_tiny}
  init: {name: pretrained, source: "pretrain:big"}
  train: {steps: 3, eval_every: 3, batch_size: 16}
smoke: {train.eval_every: 0}
"""
    study = load_study(write(tmp_path, text), validate=False)
    (full,) = check_study(study, workspace=None).problems
    assert (full.key, full.cells) == ("pretrain.big.data.image_size", ("pretrain.big",))
    assert full.message.startswith("model 'timm:efficientnet_lite0' needs inputs of at least 32 px")
    smoke = check_study(study, workspace=None, smoke=True)
    assert [(x.key, x.message, len(x.cells)) for x in smoke.problems] == [
        ("smoke.train.eval_every", "train.eval_every=0 must be >= 1", 2)]  # the entry and the cell


@pytest.mark.parametrize("file, smoke, cells, pretrain", [
    ("quickstart.yaml", False, 15, 1), ("quickstart.yaml", True, 5, 1),
    ("transfusion.yaml", True, 15, 2), ("transfusion.yaml", False, 90, 2),
    ("finetune.yaml", True, 24, 0), ("finetune.yaml", False, 72, 0),
    ("ssl_pneumonia.yaml", True, 6, 1), ("ssl_pneumonia.yaml", False, 54, 1),
    ("ssl_retina.yaml", True, 6, 1), ("ssl_retina.yaml", False, 54, 1),
    ("ssl_seg3d_brain.yaml", True, 2, 0), ("ssl_seg3d_brain.yaml", False, 8, 0),
    ("heldout_pneumonia.yaml", True, 4, 0), ("heldout_pneumonia.yaml", False, 12, 0),
])
def test_shipped_studies_check_clean(file, smoke, cells, pretrain, medmnist_dir, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TRANSFUSE_DATA", str(medmnist_dir))
    study = load_study(ROOT / "examples" / file)
    report = check_study(study, workspace=tmp_path, smoke=smoke)
    assert report.ok, report.lines()
    assert (report.cells, report.pretrain) == (cells, pretrain)
    assert report.cells == len(expand(study, smoke=smoke))  # the same cells as the runner
    assert report.pretrain == len(pretrain_specs(study, smoke=smoke))
    if file == "transfusion.yaml":  # cached per distinct model build and dataset
        assert (report.builds, report.datasets, report.sources) == (7, 3, 1)
    args = ["study", "check", str(ROOT / "examples" / file), "-w", str(tmp_path)] + (["--smoke"] if smoke else [])
    assert main(args) == 0
    out = capsys.readouterr().out
    name = study.name + ("-smoke" if smoke else "")
    runs = f" and {pretrain} pretraining run" + ("" if pretrain == 1 else "s") if pretrain else ""
    assert out.startswith(f"study {name}: {cells} cells{runs} check clean (")
    assert not (tmp_path / "transfuse.db").exists()


def test_check_with_set_fixes_what_it_reported(tmp_path, capsys):
    import torch

    from transfuse.models import create_model

    p = write(tmp_path, BROKEN)
    fix = ["--set", "base.data.image_size=32"]
    rc = main(["study", "check", str(p), *fix, "--set", "grid.arch[0].init.source=imagenet:efficientnet_lite0"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and len(err) == 2 and err[1].startswith(  # EfficientNet weights on a CBR
        "  grid.arch[0].init.source: pretrained: the source does not fit the model — stem.0.weight: "
        "missing in source (model (32, 1, 5, 5)); ")
    assert err[1].endswith("[2 cells: arch[0] cbr_tiny · pretrained · n_train=48 · seed=0; "
                           "arch[0] cbr_tiny · pretrained · n_train=48 · seed=1]")
    ckpt = tmp_path / "cbr_tiny.pt"
    torch.save(create_model("cbr_tiny", spatial_dims=2, in_channels=1, num_classes=4).state_dict(), ckpt)
    rc = main(["study", "check", str(p), *fix, "--set", f"grid.arch[0].init.source=file:{ckpt}"])
    assert rc == 0 and capsys.readouterr().out.startswith("study broken: 8 cells check clean (")


def test_every_model_builds_and_runs_on_meta_at_its_min_size():
    """The check's model probe has no false alarm on any registered model (2D and 3D)."""
    from transfuse.models import MODELS, model_info
    from transfuse.study.check import _build, _forward

    checked = set()
    for e in MODELS:
        info = model_info(e.name)
        seg = info["task"] == "segmentation"
        for dims in info["spatial_dims"]:
            if dims in info["heavy_dims"]:
                continue
            size = max(info["min_size"], 16 if dims == 3 else 32)
            size = -(-size // info["size_multiple"]) * info["size_multiple"]
            model = _build(e.name, dims, 1, 3, {})
            assert not isinstance(model, str), model
            assert next(model.parameters()).is_meta  # no memory, no arithmetic
            assert _forward(model, 1, (size,) * dims, 3, seg) is None, (e.name, dims)
            checked.add(e.name)
    light = {e.name for e in MODELS if set(model_info(e.name)["spatial_dims"]) - set(model_info(e.name)["heavy_dims"])}
    assert checked == light and len(light) >= 10
