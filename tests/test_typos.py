"""Unknown keys (issue 33): one line, one "did you mean" at the key where it was written, and
nothing created by a command that fails on its input."""

from __future__ import annotations

import pytest

from transfuse.cli import main

STUDY = """name: typo
base:
  data: {{name: "builtin:brain_tissue", n_train: 32}}
  model: {{name: cbr_tiny}}
{train}
grid:
  seed: [0, 1, 2]
"""


@pytest.mark.parametrize("train, expect", [
    ("  trian: {steps: 2}", "unknown key base.trian; did you mean base.train?"),
    ("  train: {steps: 2, eval_evry: 1}",
     "unknown key base.train.eval_evry; did you mean base.train.eval_every?"),
])
@pytest.mark.parametrize("cmd", ["run", "check"])
def test_study_yaml_typo_is_one_line_at_its_key(tmp_path, capsys, train, expect, cmd):
    f = tmp_path / "s.yaml"
    f.write_text(STUDY.format(train=train))
    ws = tmp_path / "ws"
    assert main(["study", cmd, str(f), "-w", str(ws), "--no-progress"][:5 if cmd == "check" else 6]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and expect in err, err
    assert not ws.exists()


def test_grid_typo_suggests_the_key(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text(STUDY.format(train="  train: {steps: 2}").replace("  seed: [0, 1, 2]",
                                                                    "  train.eval_evry: [1, 2]"))
    assert main(["study", "run", str(f), "-w", str(tmp_path / "ws"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean train.eval_every?" in err, err


def test_set_typo_and_yaml_typo_say_the_same(tmp_path, capsys):
    assert main(["train", "--dataset", "builtin:brain_tissue", "--model", "cbr_tiny", "-w",
                 str(tmp_path / "ws"), "--set", "train.eval_evry=5"]) == 2
    assert "did you mean train.eval_every?" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


def test_data_root_typo_creates_no_workspace(tmp_path, capsys):
    ws = tmp_path / "ws"
    assert main(["train", "--dataset", "medmnist:retinamnist", "--data-root", str(tmp_path / "nope"),
                 "--model", "cbr_tiny", "--steps", "1", "-w", str(ws), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "retinamnist.npz not found" in err
    assert not (ws / "transfuse.db").exists() and not ws.exists()


@pytest.mark.parametrize("replace, expect", [
    (("grid:", "gird:"), "unknown key 'gird'; did you mean grid?"),
    (("grid:", "evaluation: {marign: 0.01}\ngrid:"),
     "unknown key evaluation.marign; did you mean evaluation.margin?"),
])
def test_other_study_keys_get_a_suggestion_too(tmp_path, capsys, replace, expect):
    f = tmp_path / "s.yaml"
    f.write_text(STUDY.format(train="  train: {steps: 2}").replace(*replace))
    assert main(["study", "check", str(f), "-w", str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expect in err, err
