"""init × fine-tuning strategy × augmentation as study arms: labels, verdicts, the JSON export,
the HTML report, and the check that the reference arm exists."""

from __future__ import annotations

import json
import re

import pytest

from transfuse.cli import main
from transfuse.report.study import build_report
from transfuse.decide.verdicts import VERDICTS
from transfuse.study import load_study
from transfuse.study.check import check_study
from transfuse.decide.results import arm_label, cell_keys


def _spec(init: str = "pretrained", source: str | None = "run:abc", **train) -> dict:
    return {"model": {"name": "cbr_tiny"}, "data": {"name": "d"}, "seed": 0,
            "init": {"name": init, **({"source": source} if source else {})}, "train": train}


@pytest.mark.parametrize("train, label", [
    ({}, "pretrained"),
    ({"finetune": "full", "augment": "none", "layer_decay": 1.0}, "pretrained"),  # defaults
    ({"finetune": "lpft:100"}, "pretrained · lpft:100"),
    ({"finetune": "linear_probe", "augment": "basic"}, "pretrained · linear_probe · augment=basic"),
    ({"layer_decay": 0.75, "head_lr_mult": 10.0}, "pretrained · layer_decay=0.75 · head_lr_mult=10"),
    ({"finetune": "freeze:block1", "freeze_bn": True}, "pretrained · freeze:block1 · freeze_bn"),
    ({"lr": 0.5, "steps": 3}, "pretrained"),  # other training settings are not arms
])
def test_arm_labels(train, label):
    assert arm_label(_spec(**train)) == label


def test_ambiguous_sources_stay_in_brackets_before_the_strategy():
    specs = [_spec(source="run:a", finetune="linear_probe"), _spec(source="run:b")]
    assert [k[1] for k in cell_keys(specs)] == ["pretrained (run:a) · linear_probe",
                                                "pretrained (run:b)"]


ARMS = """
name: arms
base:
  data: {name: "builtin:brain_tissue", n_train: 64}
  model: {name: cbr_tiny}
  train: {steps: 6, eval_every: 3, batch_size: 16, lr: 0.02}
grid:
  train.finetune: [full, linear_probe]
  train.augment: [none, basic]
  seed: [0, 1]
evaluation:
  auc_thresholds: [0.99]
"""


def test_strategy_arms_get_verdicts_in_json_and_html(tmp_path, capsys):
    f = tmp_path / "arms.yaml"
    f.write_text(ARMS)
    ws = tmp_path / "ws"
    assert main(["study", "run", str(f), "-w", str(ws), "--no-progress", "--report"]) == 0
    capsys.readouterr()
    data = json.loads(build_report(workspace=ws, study="arms", out=ws / "r.json",
                                   format="json").read_text())
    arms = {c["arm"] for c in data["cells"]}
    assert arms == {"random", "random · linear_probe", "random · augment=basic",
                    "random · linear_probe · augment=basic"}
    final = {c["arm"]: c for c in data["comparisons"] if c["endpoint"] == "final"}
    assert set(final) == arms - {"random"}
    for c in final.values():
        assert c["reference"] == "random" and c["verdict"] in VERDICTS
        assert c["seeds"] == [0, 1] and c["reason"]
    html = (ws / "report-arms.html").read_text()
    assert "random · linear_probe · augment=basic" in html


def test_reference_must_be_an_arm(tmp_path, capsys):
    f = tmp_path / "arms.yaml"
    f.write_text(ARMS + "  reference: pretrained\n")
    report = check_study(load_study(f, validate=False), workspace=tmp_path)
    (p,) = report.problems
    assert p.key == "evaluation.reference"
    assert re.match(r"'pretrained' is not an arm of this study, so nothing could be compared with "
                    r"it; set evaluation.reference to one of 'random', 'random · augment=basic'",
                    p.message), p.message
    assert main(["study", "run", str(f), "-w", str(tmp_path / "ws"), "--no-progress"]) == 2
    assert "evaluation.reference" in capsys.readouterr().err
    assert not (tmp_path / "ws" / "transfuse.db").exists()
    f.write_text(ARMS + "  reference: random · linear_probe\n")
    assert check_study(load_study(f), workspace=tmp_path).ok
