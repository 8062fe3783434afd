"""``--set KEY=VALUE``: typed overrides of run specs, studies, chains and pretraining files."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from transfuse.cli import main
from transfuse.config import DataSpec, ModelSpec, RunSpec, run_id, spec_from_dict
from transfuse.errors import ConfigError
from transfuse.overrides import (apply_overrides, coerce, load_chain_overridden,
                                 load_pretrain_overridden, override_study, parse_set)
from transfuse.study import expand, load_study

ROOT = Path(__file__).resolve().parents[1]
SPEC = RunSpec(data=DataSpec(name="builtin:brain_tissue"), model=ModelSpec(name="cbr_tiny"))

TINY_STUDY = """
name: ov
base:
  data: {name: "builtin:brain_tissue", n_train: 48}
  model: {name: cbr_tiny}
  train: {steps: 3, eval_every: 3, batch_size: 16, lr: 0.02}
grid:
  init.name: [random, "random:kaiming"]
  seed: [0, 1]
evaluation: {margin: 0.01}
"""


@pytest.mark.parametrize("tp, text, want", [
    (int, "500", 500), (int, "5e2", 500), (float, "1e-3", 0.001), (float, "2", 2.0),
    (bool, "no", False), (bool, "TRUE", True), (bool, "1", True), (bool, "0", False),
    (str, "true", "true"), (str, "12", "12"), (int | None, "none", None), (int | None, "null", None),
    (str | None, "~", None), (tuple[str, ...], "a, b", ("a", "b")), (tuple[int, ...], "[1, 2]", (1, 2)),
    (tuple[str, ...], "", ()), (float | tuple[float, ...] | None, "1.5,1.5,3", (1.5, 1.5, 3.0)),
    (float | tuple[float, ...] | None, "2", 2.0), (list[int], "3", [3]),
])
def test_values_are_typed_against_the_field(tp, text, want):
    _, value, raw = parse_set(f"k={text}")
    got = coerce(value, tp, key="k", raw=raw)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("tp, text, needle", [
    (float, "abc", "expects a number (float), got 'abc'"),
    (int, "1.5", "expects an integer (int), got '1.5'"),
    (int, "true", "expects an integer (int)"),
    (bool, "maybe", "expects true or false (bool)"),
    (int | None, "x", "expects an integer or none (int | None)"),
    (str, "null", "expects a string (str)"),
    (tuple[int, ...], "1,a", "expects a comma-separated list of integers (tuple[int, ...])"),
])
def test_wrong_types_name_the_key_and_the_type(tp, text, needle):
    _, value, raw = parse_set(f"k={text}")
    with pytest.raises(ConfigError, match=r"^k ") as e:
        coerce(value, tp, key="k", raw=raw)
    assert needle in str(e.value)


def test_run_spec_overrides_land_in_nested_dataclasses():
    spec = apply_overrides(SPEC, sets=["train.lr=0.05", "data.n_train=500", "train.amp=no",
                                       "data.label_columns=a,b", "init.source=imagenet:efficientnet_lite0",
                                       "seed=3", "data.regions={WT: [1, 2, 3]}", "data.channels=null"])
    assert spec.train.lr == 0.05 and spec.data.n_train == 500 and spec.train.amp is False
    assert spec.data.label_columns == ("a", "b") and spec.seed == 3
    assert spec.init.source == "imagenet:efficientnet_lite0" and spec.data.regions == (("WT", (1, 2, 3)),)
    assert SPEC.train.lr == 0.01  # the original is untouched
    assert run_id(spec) != run_id(SPEC)
    later = apply_overrides(SPEC, sets=["train.lr=0.05", "train.lr=0.1"])
    assert later.train.lr == 0.1  # in order: the last one wins


@pytest.mark.parametrize("text, message", [
    ("train.lrr=0.1", "--set train.lrr=0.1: unknown key train.lrr; did you mean train.lr? (valid train keys: "),
    ("lr=0.1", "--set lr=0.1: unknown key lr; did you mean train.lr?"),
    ("optim.lr=1", "--set optim.lr=1: unknown key optim (valid keys: data, model, init, train, seed"),
    ("train.lr=abc", "--set train.lr=abc: train.lr expects a number (float), got 'abc'"),
    ("data.n_train=lots", "--set data.n_train=lots: data.n_train expects an integer or none (int | None), got 'lots'"),
    ("train.lr=-1", "--set train.lr=-1: train.lr=-1.0 must be > 0"),
    ("data.image_size=4", "--set data.image_size=4: data.image_size=4 must be >= 8"),
    ("train=3", "--set train=3: train is a section; set one of its keys, e.g. train.steps"),
    ("train.lr", "--set train.lr: expected KEY=VALUE"),
    ("train.lr.x=1", "--set train.lr.x=1: train.lr has no key 'x'"),
])
def test_bad_overrides_are_one_line_errors_naming_the_key(text, message):
    with pytest.raises(ConfigError) as e:
        apply_overrides(SPEC, sets=[text])
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_dict_targets_are_typed_by_a_schema_and_checked_per_section():
    raw = {"data": {"name": "x"}, "train": {"steps": 5}}
    out = apply_overrides(raw, sets=["train.lr=1e-2", "data.spacing=1,2,3"], schema=RunSpec)
    assert out == {"data": {"name": "x", "spacing": [1.0, 2.0, 3.0]}, "train": {"steps": 5, "lr": 0.01}}
    assert raw == {"data": {"name": "x"}, "train": {"steps": 5}}
    with pytest.raises(ConfigError, match=r"^--set train.steps=0: train.steps=0 must be >= 1$"):
        apply_overrides(raw, sets=["train.steps=0"], schema=RunSpec)


def test_cli_train_set_lands_in_the_stored_spec(tmp_path, capsys):
    ws = tmp_path / "ws"
    args = ["train", "--dataset", "builtin:brain_tissue", "--n-train", "48", "--model", "cbr_tiny",
            "--steps", "4", "--eval-every", "2", "--batch-size", "16", "-w", str(ws),
            "--no-progress", "--json"]
    assert main([*args, "--set", "train.lr=0.05", "--set", "data.n_train=64", "--set", "seed=7",
                 "--set", "train.schedule=constant"]) == 0
    out = json.loads(capsys.readouterr().out)
    with sqlite3.connect(ws / "transfuse.db") as con:
        (stored,) = [json.loads(r[0]) for r in con.execute("SELECT spec FROM runs WHERE run_id = ?",
                                                             (out["run_id"],))]
    assert stored["train"]["lr"] == 0.05 and stored["data"]["n_train"] == 64 and stored["seed"] == 7
    assert stored["train"]["schedule"] == "constant" and stored["train"]["steps"] == 4  # flags kept
    assert out["run_id"] == run_id(spec_from_dict(stored))  # the id hashes the overridden spec
    assert main(args) == 0  # without --set: another run
    assert json.loads(capsys.readouterr().out)["run_id"] != out["run_id"]


@pytest.mark.parametrize("text, needle", [
    ("train.lrr=0.1", "error: --set train.lrr=0.1: unknown key train.lrr; did you mean train.lr?"),
    ("train.lr=abc", "error: --set train.lr=abc: train.lr expects a number (float), got 'abc'"),
])
def test_cli_bad_set_exits_2_naming_the_key(tmp_path, capsys, text, needle):
    rc = main(["train", "--dataset", "builtin:brain_tissue", "--model", "cbr_tiny", "-w",
               str(tmp_path / "ws"), "--set", text])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(needle) and len(err.splitlines()) == 1
    assert not (tmp_path / "ws" / "transfuse.db").exists()  # refused before anything is stored


def test_study_overrides_set_the_base_and_change_every_run_id(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(TINY_STUDY)
    study = load_study(p)
    new = override_study(study, sets=["train.lr=0.05", "base.data.n_train=64", "evaluation.margin=0.02",
                                      "evaluation.auc_thresholds=0.7,0.75", "grid.seed=[3]",
                                      "grid.init.name[1]=gabor"])
    before, after = expand(study), expand(new)
    assert [(s.init.name, s.seed) for s in after] == [("random", 3), ("gabor", 3)]
    assert all(s.train.lr == 0.05 and s.data.n_train == 64 for s in after)
    assert {run_id(s) for s in after}.isdisjoint(run_id(s) for s in before)
    assert new.evaluation.margin == 0.02 and new.auc_thresholds == (0.7, 0.75)
    assert study.base["train"]["lr"] == 0.02 and study.evaluation.margin == 0.01  # unchanged


@pytest.mark.parametrize("text, message", [
    ("seed=5", "--set seed=5: seed is a grid axis key (grid.seed sets it in every cell, over the base "
               "spec); change the axis instead, e.g. --set grid.seed=[...]"),
    ("init.name=gabor", "--set init.name=gabor: init.name is a grid axis key (grid.init.name sets it"),
    ("grid.lr=[1]", "--set grid.lr=[1]: grid.lr is not an axis of study ov (axes: grid.init.name, grid.seed)"),
    ("grid.seed=[]", "--set grid.seed=[]: grid.seed must be a non-empty list"),
    ("grid.seed=a,b", "--set grid.seed=a,b: grid.seed[0] expects an integer (int), got 'a'"),
    ("evaluation.margin=2", "--set evaluation.margin=2: evaluation.margin must be a number in (0, 1), got 2"),
    ("evaluation.marginn=0.1", "--set evaluation.marginn=0.1: unknown key evaluation.marginn; did you mean "
                               "evaluation.margin?"),
    ("evaluation.auc_thresholds=2", "--set evaluation.auc_thresholds=2: evaluation.auc_thresholds must be"),
    ("name=a/b", "--set name=a/b: name='a/b' is not a valid name"),
])
def test_study_override_errors(tmp_path, text, message):
    p = tmp_path / "s.yaml"
    p.write_text(TINY_STUDY)
    with pytest.raises(ConfigError) as e:
        override_study(load_study(p), sets=[text])
    assert str(e.value).startswith(message), str(e.value)


def test_study_run_with_set_stores_the_overridden_spec(tmp_path, capsys):
    p = tmp_path / "s.yaml"
    p.write_text(TINY_STUDY)
    ws = tmp_path / "ws"
    rc = main(["study", "run", str(p), "-w", str(ws), "--no-progress", "--set", "grid.seed=[0]",
               "--set", "train.lr=0.05", "--set", "train.steps=2", "--set", "grid.init.name=[random]"])
    assert rc == 0, capsys.readouterr().err
    with sqlite3.connect(ws / "transfuse.db") as con:
        specs = [json.loads(r[0]) for r in con.execute("SELECT spec FROM runs")]
    assert len(specs) == 1 and specs[0]["train"]["lr"] == 0.05 and specs[0]["train"]["steps"] == 2
    assert specs[0]["seed"] == 0 and specs[0]["study"] == "ov"
    rc = main(["study", "status", str(p), "-w", str(ws), "--set", "grid.seed=[0]", "--set", "train.lr=0.05",
               "--set", "train.steps=2", "--set", "grid.init.name=[random]"])
    assert rc == 0 and "study ov: 1 runs — 1 finished" in capsys.readouterr().out


def test_chain_overrides_typed_and_validated():
    f = ROOT / "examples" / "selftrain_pneumonia.yaml"
    chain = load_chain_overridden(f, sets=["generations=2", "student.noise.dropout=0.3",
                                           "train.lr=0.05", "pseudo.mode=hard", "seeds=4,5"])
    assert chain.generations == 2 and chain.noise.dropout == 0.3 and chain.pseudo.mode == "hard"
    assert chain.base["train"]["lr"] == 0.05 and chain.seeds == (4, 5)
    with pytest.raises(ConfigError, match=r"^--set generations=two: generations expects an integer \(int\)"):
        load_chain_overridden(f, sets=["generations=two"])
    with pytest.raises(ConfigError, match=r"^--set student.noise.dropoutt=1: unknown key "
                                          r"student.noise.dropoutt; did you mean student.noise.dropout\?"):
        load_chain_overridden(f, sets=["student.noise.dropoutt=1"])


def test_pretrain_overrides_typed_and_validated():
    f = ROOT / "examples" / "med3d_pretrain.yaml"
    spec = load_pretrain_overridden(f, sets=["steps=12", "lr=0.02", "datasets[1].weight=2",
                                             "spacing=2,2,3", "datasets[0].data.patch_size=48"])
    assert spec.steps == 12 and spec.lr == 0.02 and spec.datasets[1].weight == 2.0
    assert spec.spacing == (2.0, 2.0, 3.0) and spec.datasets[0].data.patch_size == 48
    with pytest.raises(ConfigError, match=r"^--set datasets\[5\].weight=1: datasets\[5\] does not exist "
                                          r"\(datasets has 2 entries\)"):
        load_pretrain_overridden(f, sets=["datasets[5].weight=1"])
    with pytest.raises(ConfigError, match=r"^--set stepz=1: unknown key stepz; did you mean steps\?"):
        load_pretrain_overridden(f, sets=["stepz=1"])


def test_every_set_option_states_its_default_and_import_needs_no_torch():
    from transfuse.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()  # type: ignore[union-attr]
    assert "--set KEY=VALUE" in text and "(default: none)" in " ".join(text.split())
    code = "import sys, transfuse.overrides; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT).stdout.strip() == "False"
