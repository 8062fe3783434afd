"""Forgetting (issue 31): the source's head re-attached to the fine-tuned encoder, stage by stage."""

from __future__ import annotations

import json

import pytest
import torch

from transfuse.analysis.forgetting import hybrid_scores, study_forgetting
from transfuse.cli import main
from transfuse.store import Store

STUDY = """
name: forget
pretrain:
  modality:
    data: {name: "builtin:modality", image_size: 32, n_train: 200}
    model: {name: cbr_tiny}
    train: {steps: 30, lr: 0.05, batch_size: 32, eval_every: 30}
base:
  data: {name: "builtin:brain_tissue", n_train: 64}
  model: {name: cbr_tiny}
  init: {name: pretrained, source: "pretrain:modality"}
  train: {steps: 12, lr: 0.05, batch_size: 16, eval_every: 6}
grid:
  strategy:
    - {train.finetune: full}
    - {train.finetune: linear_probe, train.freeze_bn: true}   # a frozen encoder, BN statistics too
  seed: [0, 1, 2]
evaluation: {reference: pretrained}
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("forget")
    f = tmp / "s.yaml"
    f.write_text(STUDY)
    assert main(["study", "run", str(f), "-w", str(tmp / "ws"), "--no-progress"]) == 0
    return tmp / "ws"


def _source(ws):
    from transfuse.analysis.forgetting import _source_run, run_forgetting

    store = Store(ws)
    rec = next(r for r in store.list_runs(study="forget") if r.status == "finished")
    return store, rec, _source_run(store, rec), run_forgetting


def test_identity_fine_tuning_leaves_every_stage_at_the_source_score(ws):
    from transfuse.config import DataSpec
    from transfuse.data import load_dataset
    from transfuse.models import create_model
    from transfuse.weights import load_state_dict

    store, _, src, _ = _source(ws)
    data = load_dataset(DataSpec(name="builtin:modality", image_size=32, n_train=200))
    model = create_model("cbr_tiny", spatial_dims=2, in_channels=data.info.in_channels,
                         num_classes=data.info.num_classes)
    state = load_state_dict(store.run_dir(src.run_id) / "best.pt")
    model.load_state_dict(state)
    pts = hybrid_scores(model, state, data)  # "fine-tuning" that changed nothing
    assert [s for s, _ in pts][:2] == ["none", "stem"] and len(pts) >= 3
    assert len({v for _, v in pts}) == 1 and 0.5 < pts[0][1] <= 1.0
    changed = {k: (v + 0.5 * torch.randn_like(v) if v.ndim >= 2 else v)  # conv/linear weights
               for k, v in state.items()}
    moved = hybrid_scores(model, changed, data)
    assert moved[0][1] == pts[0][1] and moved[-1][1] != pts[-1][1]  # k = 0 is always the source


def test_a_linear_probe_keeps_the_source_score_at_every_encoder_stage(ws, capsys):
    runs, curves = study_forgetting(Store(ws), "forget")
    assert len(runs) == 6
    probe = [r for r in runs if "linear_probe" in r.arm]
    full = [r for r in runs if r.arm == "pretrained"]
    assert len(probe) == 3 and len(full) == 3
    for r in probe:  # frozen encoder (BN statistics too): exactly the source's score
        assert len(set(r.scores)) == 1, r.scores
    assert any(len(set(r.scores)) > 1 for r in full)  # full fine-tuning moved the encoder
    (pc,) = [c for c in curves if "linear_probe" in c.arm]
    assert pc.verdict["versus"] == "pretrained" and pc.verdict["n"] == 3
    out = ws.parent / "f.json"
    assert main(["analyze", str(ws), "--study", "forget", "--forgetting", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pretrained · linear_probe · freeze_bn (3 seeds): none " in text
    assert "vs pretrained on the whole encoder" in text
    data = json.loads(out.read_text())
    assert {c["arm"] for c in data["curves"]} == {"pretrained", "pretrained · linear_probe · freeze_bn"}


def test_a_study_without_a_run_source_is_refused(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text("name: plain\nbase:\n  data: {name: \"builtin:brain_tissue\", n_train: 48}\n"
                 "  model: {name: cbr_tiny}\n  train: {steps: 2, eval_every: 2, batch_size: 16}\n"
                 "grid:\n  seed: [0]\n")
    assert main(["study", "run", str(f), "-w", str(tmp_path / "ws"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "ws"), "--study", "plain", "--forgetting"]) == 2
    assert "no finished run initialised from a run: source" in capsys.readouterr().err


def test_every_strategy_arm_is_compared_with_full_fine_tuning_layer_decay_included():
    # issue 31: the layer_decay arm differs from full fine-tuning by train.layer_decay, not
    # train.finetune, and was left without a verdict
    from transfuse.analysis.forgetting import RunForgetting, arm_curves

    arms = ("pretrained", "pretrained · linear_probe", "pretrained · lpft:50",
            "pretrained · freeze:block1", "pretrained · surgical:block1",
            "pretrained · layer_decay=0.7", "pretrained · head_lr_mult=10",
            "pretrained · augment=basic", "pretrained · layer_decay=0.7 · augment=basic")
    runs = [RunForgetting(f"{arm}-{s}", arm, "m", "all", s, "run:x", ("none", "stem"),
                          (0.9, 0.8 + 0.001 * s)) for arm in arms for s in range(3)]
    by = {c.arm: c for c in arm_curves(runs)}
    assert by["pretrained · layer_decay=0.7"].verdict["versus"] == "pretrained"
    assert by["pretrained · head_lr_mult=10"].verdict["versus"] == "pretrained"
    assert by["pretrained · layer_decay=0.7 · augment=basic"].verdict["versus"] == \
        "pretrained · augment=basic"
    for arm in ("pretrained · linear_probe", "pretrained · lpft:50", "pretrained · freeze:block1",
                "pretrained · surgical:block1"):
        assert by[arm].verdict["versus"] == "pretrained"
    assert not by["pretrained"].verdict and not by["pretrained · augment=basic"].verdict
