"""Why do large models change less (issue 31): per-stage change, size verdicts, report sections."""

from __future__ import annotations

import json
import math

import pytest
import torch

from transfuse.analysis.change import (ChangeOptions, RunChange, StageRow, _comparisons,
                                       stage_rows, study_change, tracks_sentence)
from transfuse.cli import main
from transfuse.models import create_model, get_stages

STUDY = """
name: grow
base:
  data: {name: "builtin:brain_tissue", n_train: 48}
  model: {name: cbr_tiny}
  train: {steps: 3, lr: 0.05, batch_size: 16, eval_every: 3}
grid:
  model.name: [cbr_tiny, cbr_small]
  strategy:
    - {train.finetune: full}
    - {train.finetune: "freeze:block1", train.freeze_bn: true}   # stem and block1 never move
  seed: [0, 1]
"""


def _model():
    torch.manual_seed(0)
    return create_model("cbr_tiny", spatial_dims=2, in_channels=1, num_classes=3)


def test_identity_fine_tuning_is_cka_one_and_no_weight_change_at_every_stage():
    model = _model()
    s0 = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(12, 1, 28, 28)
    rows = stage_rows(model=model, init_state=s0, final_state=s0, images=x,
                      lrs={"stem": 0.1, "head": 0.1})
    assert [r.stage for r in rows] == [s.name for s in get_stages(model)]
    for r in rows:
        assert r.cka == pytest.approx(1.0, abs=1e-9)
        assert r.relative_change == 0.0 and r.update_rms == 0.0
    # effective lr = lr / mean squared filter norm at init (definition in the module docstring)
    stem = rows[0]
    from transfuse.models import stage_parameters

    keys = [k for k in stage_parameters(model, "stem") if s0[k].ndim >= 2]
    f2 = torch.cat([s0[k].double().reshape(s0[k].shape[0], -1).square().sum(1) for k in keys]).mean()
    assert stem.effective_lr == pytest.approx(0.1 / float(f2), rel=1e-9)
    assert rows[1].lr == 0.0 and rows[1].effective_lr == 0.0  # no lr given: never trained


def test_moving_one_stage_changes_that_stage_and_leaves_the_ones_below_exactly():
    model = _model()
    s0 = {k: v.clone() for k, v in model.state_dict().items()}
    from transfuse.models import stage_parameters

    moved = set(stage_parameters(model, "block2"))
    s1 = {k: (v + 0.3 * torch.randn_like(v) if k in moved and v.ndim >= 2 else v.clone())
          for k, v in s0.items()}
    rows = {r.stage: r for r in stage_rows(model=model, init_state=s0, final_state=s1,
                                           images=torch.randn(16, 1, 28, 28))}
    for st in ("stem", "block1"):
        assert rows[st].cka == pytest.approx(1.0, abs=1e-9) and rows[st].relative_change == 0.0
    assert rows["block2"].relative_change > 0.1 and rows["block2"].cka < 1 - 1e-6
    d = sum(float((s1[k].double() - s0[k].double()).square().sum()) for k in moved if s0[k].ndim >= 2)
    n = sum(s0[k].numel() for k in moved if s0[k].ndim >= 2)
    assert rows["block2"].update_rms == pytest.approx(math.sqrt(d / n), rel=1e-9)
    assert rows["block3"].relative_change == 0.0  # weights above untouched (activations move)


def _run(model, seed, params, ckas, *, arm="random", lr=0.1, upd=(0.01, 0.01), widths=(32, 64)):
    rows = tuple(StageRow(st, w, 100, c, 0.1, u, lr, 0.05)
                 for st, w, c, u in zip(("stem", "head"), widths, ckas, upd))
    return RunChange(f"{model}{seed}{arm}", model, arm, "all", seed, "d", None, params, "init.pt", rows)


def test_size_verdicts_pair_by_seed_and_say_what_changing_less_tracks():
    runs = []
    for seed, noise in enumerate((0.0, 0.01, -0.01, 0.005)):
        runs.append(_run("small", seed, 1000, (0.5 + noise, 0.7), upd=(0.02, 0.01)))
        runs.append(_run("big", seed, 4000, (0.8 + noise, 0.7 + noise / 10), upd=(0.01, 0.01)))
        runs.append(_run("small", seed, 1000, (1.0, 1.0), arm="frozen", lr=0.0))
        runs.append(_run("big", seed, 4000, (1.0, 1.0), arm="frozen", lr=0.0))
    comps = _comparisons(runs, margin=0.05, alpha=0.05)
    assert {(c["arm"], c["stage"]) for c in comps} == {("random", "stem"), ("random", "head")}
    stem = next(c for c in comps if c["stage"] == "stem")
    assert stem["smaller"] == "small" and stem["larger"] == "big" and stem["n"] == 4
    assert stem["verdict"] == "better_beyond_margin" and stem["mean"] == pytest.approx(0.3)
    assert stem["ci_low"] > 0.05 and stem["predicted"] == {"width": 0, "parameters": 1, "update_rms": 1}
    head = next(c for c in comps if c["stage"] == "head")
    assert head["verdict"] == "equivalent"
    t = tracks_sentence(comps)
    # stem: the larger model changed less, predicted by parameters and update size, not width;
    # head: no difference, predicted by width (equal) and update size (equal)
    assert t["decided"] == 2 and t["matches"] == {"width": 1, "parameters": 1, "update_rms": 2}
    assert t["best"] == ["update_rms"] and "tracks the per-parameter update size best" in t["sentence"]
    assert "undecided" not in t["sentence"]
    none = tracks_sentence([{**stem, "verdict": "undecided"}])
    assert none["decided"] == 0 and none["sentence"].startswith("No size comparison is decided")


def test_models_of_different_depth_compare_stem_last_encoder_stage_and_head():
    from transfuse.analysis.change import _matched

    assert _matched(["stem", "block1", "head"], ["stem", "block1", "head"]) == [
        ("stem", "stem", "stem"), ("block1", "block1", "block1"), ("head", "head", "head")]
    assert _matched(["stem", "block1", "block2", "head"], ["stem", "block1", "head"]) == [
        ("stem", "stem", "stem"), ("last encoder stage", "block2", "block1"), ("head", "head", "head")]


def test_bad_options_are_refused():
    from transfuse.errors import ConfigError

    with pytest.raises(ConfigError, match="--margin"):
        ChangeOptions(margin=0)
    with pytest.raises(ConfigError, match="--images"):
        ChangeOptions(images=3)
    from transfuse.report.analyses import parse_sections

    assert parse_sections("change, forgetting,change") == ("change", "forgetting")
    with pytest.raises(ConfigError, match="choose from forgetting, change, transferability"):
        parse_sections("change,forgeting")


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grow")
    f = tmp / "s.yaml"
    f.write_text(STUDY)
    assert main(["study", "run", str(f), "-w", str(tmp / "ws"), "--no-progress"]) == 0
    return tmp / "ws"


@pytest.mark.slow
def test_a_tiny_study_reports_every_model_with_intervals_and_frozen_stages_unchanged(ws, capsys):
    res = study_change(workspace=ws, study="grow", options=ChangeOptions(images=32))
    assert len(res.runs) == 8 and all(r.init_from == "init.pt" for r in res.runs)
    assert {(c["model"], c["arm"]) for c in res.cells} == {
        (m, a) for m in ("cbr_tiny", "cbr_small")
        for a in ("random", "random · freeze:block1 · freeze_bn")}
    for c in res.cells:
        assert c["seeds"] == [0, 1]
        for s in c["stages"]:  # every stage: a mean and an interval over seeds
            assert s["cka"]["n"] == 2 and s["cka"]["ci_low"] is not None
            assert s["cka"]["ci_low"] <= s["cka"]["mean"] <= s["cka"]["ci_high"]
        if "freeze" in c["arm"]:
            for s in c["stages"][:2]:  # stem, block1: frozen with their BN statistics
                assert s["stage"] in ("stem", "block1")
                assert s["relative_change"]["mean"] == 0.0 and s["update_rms"]["mean"] == 0.0
                assert s["cka"]["mean"] == pytest.approx(1.0, abs=1e-9)
                assert s["lr"]["mean"] == 0.0
            assert c["stages"][2]["relative_change"]["mean"] > 0
    # frozen in both models: no size question; the rest: cbr_tiny → cbr_small by parameters
    asked = {(q["arm"], q["stage"]) for q in res.comparisons}
    assert ("random · freeze:block1 · freeze_bn", "stem") not in asked and ("random", "stem") in asked
    assert all(q["smaller"] == "cbr_tiny" and q["larger"] == "cbr_small" for q in res.comparisons)
    # the CLI prints the same and writes the JSON
    out = ws.parent / "change.json"
    assert main(["analyze", str(ws), "--study", "grow", "--change", "--images", "32", "--json",
                 str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "cbr_small · n_train=48 · random (2 seeds" in text and "CKA " in text
    data = json.loads(out.read_text())
    assert set(data) == {"study", "options", "definitions", "cells", "comparisons", "tracks", "runs"}
    assert set(data["tracks"]) == {"decided", "matches", "best", "sentence"}
    assert data["tracks"]["sentence"] in text


@pytest.mark.slow
def test_a_run_without_init_pt_is_rebuilt_exactly_from_its_spec(ws):
    from transfuse.analysis.change import _init_state
    from transfuse.analysis.runs import load_checkpoint
    from transfuse.store import Store

    store = Store(ws)
    rec = store.list_runs(study="grow", status="finished")[0]
    saved = load_checkpoint(rec, "init")
    p = store.run_dir(rec.run_id) / "init.pt"
    p.rename(p.with_suffix(".bak"))
    try:
        state, how = _init_state(store, rec)
    finally:
        p.with_suffix(".bak").rename(p)
    assert how == "rebuilt" and state.keys() == saved.keys()
    for k in saved:
        assert torch.equal(state[k], saved[k]), k


@pytest.mark.slow
def test_report_sections_appear_only_when_asked(ws, capsys):
    html, js = ws.parent / "r.html", ws.parent / "r.json"
    assert main(["report", "-w", str(ws), "--study", "grow", "-o", str(html)]) == 0
    plain = html.read_text()
    assert "Why do large models change less?" not in plain and "analysis-change" not in plain
    assert main(["report", "-w", str(ws), "--study", "grow", "--format", "json", "-o", str(js)]) == 0
    assert "analyses" not in json.loads(js.read_text())
    assert main(["report", "-w", str(ws), "--study", "grow", "-o", str(html),
                 "--sections", "change,forgetting"]) == 0
    page = html.read_text()
    assert '<section id="analysis-change"><h2>Why do large models change less?</h2>' in page
    assert "CKA(init, final)" in page
    # forgetting does not apply (no source with a head): the section says so, the report is made
    assert '<section id="analysis-forgetting">' in page and "Not available for this study" in page
    assert main(["report", "-w", str(ws), "--study", "grow", "--format", "json", "-o", str(js),
                 "--sections", "change,forgetting"]) == 0
    data = json.loads(js.read_text())
    assert set(data["analyses"]) == {"change", "forgetting"}
    assert "error" in data["analyses"]["forgetting"]
    assert {"cells", "comparisons", "tracks"} <= set(data["analyses"]["change"])
    import jsonschema

    from transfuse.report.export import schema

    jsonschema.validate(data, schema())
    capsys.readouterr()
    assert main(["report", "-w", str(ws), "--study", "grow", "--sections", "chang"]) == 2
    assert "error: --sections 'chang'" in capsys.readouterr().err
