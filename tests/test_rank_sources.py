"""``transfuse rank-sources``: scores before training, and τ against a finished study (issue 31)."""

from __future__ import annotations

import json
import math

import pytest

from transfuse.cli import main
from transfuse.transferability.rank import SourceScores, check_ranking

STUDY = """
name: rank
base:
  data: {name: "builtin:brain_tissue", n_train: 48}
  model: {name: cbr_tiny}
  train: {steps: 4, eval_every: 2, batch_size: 16}
grid:
  init: [random, gabor, "random:kaiming"]
  seed: [0, 1, 2]
"""


def test_check_ranking_gives_tau_one_for_a_perfect_ranking_and_minus_one_reversed():
    outcomes = {("m", a, "all"): {s: base + 0.01 * s for s in range(4)}
                for a, base in (("a", 0.6), ("b", 0.7), ("c", 0.8))}
    good = {("m", a, "all"): SourceScores(a, {"x": v, "y": -v}) for a, v in
            (("a", 1.0), ("b", 2.0), ("c", 3.0))}
    agree = {g.estimator: g for g in check_ranking(good, outcomes, n_boot=200)}
    assert agree["x"].tau == pytest.approx(1.0) and agree["y"].tau == pytest.approx(-1.0)
    assert agree["x"].ci_low == pytest.approx(1.0)  # seeds never reorder these arms
    assert agree["x"].n_seeds == 4 and agree["x"].arms == ("a", "b", "c")


def test_check_ranking_interval_is_wide_when_seeds_reorder_the_arms():
    import numpy as np

    rng = np.random.default_rng(0)
    outcomes = {("m", a, "all"): {s: 0.7 + 0.05 * rng.normal() for s in range(5)} for a in "abc"}
    scores = {("m", a, "all"): SourceScores(a, {"x": float(i)}) for i, a in enumerate("abc")}
    (g,) = check_ranking(scores, outcomes, n_boot=500)
    assert g.ci_low is not None and g.ci_high - g.ci_low > 0.6  # at least two of τ = ±1, ±1/3


def test_rank_sources_prints_every_estimator_with_its_cost(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["rank-sources", "builtin:brain_tissue", "--model", "cbr_tiny", "--source",
                 "random", "--source", "gabor", "--n-train", "60", "--estimators",
                 "logme,hscore,nce", "-w", str(tmp_path / "ws"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "60 training examples" in text and "gabor" in text
    rows = json.loads(out.read_text())
    assert [r["label"] for r in rows] == ["random", "gabor"]
    for r in rows:
        assert math.isfinite(r["scores"]["logme"]) and r["scores"]["nce"] is None  # no source head
        assert r["n"] == 60 and r["seconds"]["logme"] >= 0
    assert not (tmp_path / "ws" / "transfuse.db").exists()  # scoring stores nothing


def test_an_estimator_that_cannot_score_leaves_the_others_scoring(tmp_path, capsys):
    # 4 examples of the tissue classes: some class has one, too few for the probe's folds;
    # LogME still scores every source (before, the whole source was dropped)
    out = tmp_path / "r.json"
    assert main(["rank-sources", "builtin:brain_tissue", "--model", "cbr_tiny", "--source",
                 "random", "--source", "gabor", "--n-train", "4", "--estimators", "logme,probe",
                 "-w", str(tmp_path / "ws"), "--json", str(out)]) == 0
    assert "probe: not scored (the probe needs at least 2 examples of every class)" in \
        capsys.readouterr().out
    for r in json.loads(out.read_text()):
        assert math.isfinite(r["scores"]["logme"]) and r["scores"]["probe"] is None
        assert r["errors"] == {"probe": "the probe needs at least 2 examples of every class"}


def test_check_against_a_workspace_and_its_results_json(tmp_path, capsys):
    f = tmp_path / "s.yaml"
    f.write_text(STUDY)
    ws = tmp_path / "ws"
    assert main(["study", "run", str(f), "-w", str(ws), "--no-progress"]) == 0
    js = tmp_path / "r.json"
    assert main(["report", str(ws), "--study", "rank", "--format", "json", "-o", str(js)]) == 0
    capsys.readouterr()
    out1 = tmp_path / "a1.json"
    assert main(["rank-sources", "--check-against", str(ws), "--study", "rank", "--estimators",
                 "logme,hscore", "--bootstrap", "300", "--json", str(out1)]) == 0
    text = capsys.readouterr().out
    assert "cbr_tiny · n_train=48 · logme" in text and "3 arms, 3 seeds" in text
    out2 = tmp_path / "a2.json"
    assert main(["rank-sources", "--check-against", str(js), "--study-file", str(f),
                 "--estimators", "logme,hscore", "--bootstrap", "300", "--json", str(out2)]) == 0
    a1, a2 = json.loads(out1.read_text()), json.loads(out2.read_text())
    assert a1 == a2  # the store and its JSON give the same answer
    (g,) = [x for x in a1["agreements"] if x["estimator"] == "logme"]
    assert -1.0 <= g["tau"] <= 1.0 and g["ci_low"] <= g["tau"] <= g["ci_high"]


def test_a_results_json_without_its_study_file_is_refused(tmp_path, capsys):
    js = tmp_path / "r.json"
    js.write_text("{}")
    assert main(["rank-sources", "--check-against", str(js)]) == 2
    assert "give --study-file FILE" in capsys.readouterr().err
