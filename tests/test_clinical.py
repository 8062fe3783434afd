"""Issue 33: early stopping, class weights, balanced sampling, operating points, calibration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from sklearn.metrics import balanced_accuracy_score, brier_score_loss, recall_score, roc_curve

from transfuse.config import TrainSpec
from transfuse.errors import ConfigError
from transfuse.train import clinical
from transfuse.train.imbalance import (SkipBalancedSampler, balanced_class_weights,
                                       balanced_sample_weights)

# -- operating point and calibration on fixed predictions ---------------------------------------

P1 = np.array([0.1, 0.35, 0.4, 0.8, 0.65, 0.2, 0.9, 0.55, 0.3, 0.7])
Y = np.array([0, 0, 1, 1, 0, 0, 1, 1, 0, 1])
PROBS = np.stack([1 - P1, P1], 1)


def test_youden_threshold_and_metrics_equal_sklearn():
    thr = clinical.choose_threshold(P1, Y, rule="youden")
    fpr, tpr, t = roc_curve(Y, P1)
    assert thr == pytest.approx(t[np.argmax(tpr - fpr)])
    m = clinical.at_threshold(P1, Y, thr)
    pred = (P1 >= thr).astype(int)
    assert m["sensitivity"] == pytest.approx(recall_score(Y, pred))
    assert m["specificity"] == pytest.approx(recall_score(1 - Y, 1 - pred))
    assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(Y, pred))
    # by hand: thr 0.4 → TP 5 (0.4 .8 .9 .55 .7), FP 1 (0.65), TN 4, FN 0
    assert thr == 0.4 and (m["sensitivity"], m["specificity"]) == (1.0, 0.8)
    assert (m["ppv"], m["npv"]) == (pytest.approx(5 / 6), 1.0)


def test_target_sensitivity_picks_the_highest_threshold_reaching_it():
    thr = clinical.choose_threshold(P1, Y, rule="sensitivity=0.8")
    assert thr == 0.55  # 0.9, 0.8, 0.7, 0.55 are 4 of the 5 positives
    assert clinical.at_threshold(P1, Y, thr)["sensitivity"] == 0.8
    with pytest.raises(ConfigError, match=r"train.operating_point='sens=1' is not valid"):
        TrainSpec(operating_point="sens=1")


def test_ece_and_brier_by_hand_and_sklearn():
    # 2 bins of 15 hold everything: conf 0.9 (x2, one right) and 0.6 (x2, both right)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    y = np.array([0, 1, 1, 0])
    assert clinical.expected_calibration_error(probs, y) == pytest.approx(
        0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6))
    assert clinical.brier(PROBS, Y) == pytest.approx(brier_score_loss(Y, P1))
    three = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert clinical.brier(three, np.array([0, 1])) == pytest.approx(
        (0.09 + 0.04 + 0.01 + 0.01 + 0.81 + 0.64) / 2)


def test_ece_equals_torchmetrics():
    tm = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(500, 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, 4, 500)
    ref = tm.multiclass_calibration_error(torch.tensor(probs), torch.tensor(y), num_classes=4,
                                          n_bins=15, norm="l1")
    assert clinical.expected_calibration_error(probs, y) == pytest.approx(float(ref), abs=1e-6)


# -- class weights and balanced sampling ----------------------------------------------------------

def test_balanced_class_weights_equal_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    y = np.array([0] * 73 + [1] * 27)
    w = balanced_class_weights(torch.tensor(y), num_classes=2, task="multiclass")
    assert w.numpy() == pytest.approx(compute_class_weight("balanced", classes=np.array([0, 1]), y=y))


def test_balanced_sampler_draws_classes_equally():
    y = torch.tensor([0] * 730 + [1] * 200 + [2] * 70)
    gen = torch.Generator().manual_seed(0)
    s = SkipBalancedSampler(balanced_sample_weights(y, task="multiclass"), generator=gen)
    draws = np.concatenate([list(s) for _ in range(10)])  # 10 epochs of 1000 = 10k draws
    counts = np.bincount(y.numpy()[draws], minlength=3)
    assert len(draws) == 10_000
    assert chisquare(counts).pvalue > 0.01, counts  # equal frequencies not rejected
    assert chisquare(np.bincount(y.numpy(), minlength=3) * 10).pvalue < 1e-100  # the data are not


# -- early stopping on a scripted validation curve ------------------------------------------------

def test_early_stop_stops_at_the_expected_step(monkeypatch, tmp_path, make_npz):
    from transfuse.data import load_dataset
    from transfuse.models import create_model
    from transfuse.train import loop

    curve = {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.705, 4: 0.69, 5: 0.71, 6: 0.70, 7: 0.9, 8: 0.95}
    real = loop._evaluate
    calls = []

    def scripted(model, loader, *, data, device, spec, step):
        metrics, probs = real(model, loader, data=data, device=device, spec=spec, step=step)
        calls.append(step)
        return {**metrics, "auc": curve.get(step, 0.5)}, probs

    monkeypatch.setattr(loop, "_evaluate", scripted)
    make_npz(tmp_path / "pneumoniamnist.npz", n=(32, 16, 16), shape=(28, 28), num_classes=2)
    data = load_dataset("medmnist:pneumoniamnist", data_root=str(tmp_path))
    torch.manual_seed(0)
    model = create_model("cbr_tiny", spatial_dims=2, in_channels=data.info.in_channels,
                         num_classes=data.info.num_classes)
    # patience 3, min_delta 0.01: best 0.7 at step 2; 0.705 (3), 0.69 (4), 0.71 (5) are within
    # 0.01 of it -> the third evaluation without improvement is step 5
    res = loop.fit(model, data, TrainSpec(steps=8, eval_every=1, batch_size=8, amp=False,
                                          early_stop=3, min_delta=0.01, lr=1e-3),
                   device="cpu", progress=False, run_dir=tmp_path)
    assert res.stopped_step == 5 and res.steps == 5
    assert res.best_step == 5  # the checkpoint is still the best score (0.71), min_delta aside
    assert max(s for s, split, _ in res.history if split == "val") == 5
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 5
    assert {"ece", "brier"} <= set(res.test)


def test_new_settings_keep_old_run_ids_and_are_validated():
    from transfuse.config import DataSpec, ModelSpec, RunSpec

    base = RunSpec(data=DataSpec(name="builtin:brain_tissue"), model=ModelSpec(name="cbr_tiny"))
    assert not {"early_stop", "min_delta", "class_weights", "sampler",
                "operating_point"} & set(base.to_dict()["train"])
    for bad, msg in [({"sampler": "even"}, "train.sampler='even' is not valid"),
                     ({"early_stop": 0}, "train.early_stop=0 must be >= 1"),
                     ({"class_weights": "inverse"}, "train.class_weights='inverse' is not valid")]:
        with pytest.raises(ConfigError, match=msg):
            TrainSpec(**bad)
    assert math.isnan(clinical.choose_threshold(P1, np.zeros(10), rule="youden"))


# -- a two-class run end to end: runs show, predict --threshold, the export's model.json ----------

def test_binary_run_shows_predicts_and_exports_its_operating_point(medmnist_dir, tmp_path, capsys):
    import csv
    import json

    from transfuse.cli import main
    from transfuse.deploy.export import export_run
    from transfuse.store import Store

    if not (medmnist_dir / "pneumoniamnist.npz").is_file():
        pytest.skip("pneumoniamnist.npz not in the shared data")
    ws = tmp_path / "ws"
    assert main(["train", "--dataset", "medmnist:pneumoniamnist", "--data-root", str(medmnist_dir),
                 "--n-train", "64", "--model", "cbr_tiny", "--steps", "4", "--eval-every", "2",
                 "--batch-size", "16", "-w", str(ws), "--no-progress", "--json",
                 "--set", "train.sampler=balanced", "--set", "train.class_weights=balanced"]) == 0
    res = json.loads(capsys.readouterr().out)
    test = res["test"]
    assert 0 < test["threshold"] < 1 and 0 <= test["ece"] <= 1 and 0 <= test["brier"] <= 1
    assert test["balanced_acc"] == pytest.approx((test["sensitivity"] + test["specificity"]) / 2)
    assert main(["runs", "show", res["run_id"], "-w", str(ws)]) == 0
    out = capsys.readouterr().out
    assert f"clinical  threshold {test['threshold']:.3f} (chosen on val)  sensitivity " in out
    assert "arm    random · class_weights=balanced · sampler=balanced" in out
    pred = tmp_path / "p.csv"
    assert main(["predict", res["run_id"], "-i", "test", "-o", str(pred), "-w", str(ws),
                 "--threshold", "val", "--no-progress"]) == 0
    rows = list(csv.DictReader(pred.open()))
    assert list(rows[0]) == ["input", "normal", "pneumonia", "predicted"]
    called = [r["predicted"] == "pneumonia" for r in rows]
    assert called == [float(r["pneumonia"]) >= test["threshold"] for r in rows]
    # the sensitivity on test at that threshold, recomputed from predict's own output
    with np.load(Store(ws).get_run(res["run_id"]).run_dir + "/test_predictions.npz") as z:
        y = z["targets"]
    assert np.mean(np.array(called)[y == 1]) == pytest.approx(test["sensitivity"], abs=1e-6)
    meta = export_run(res["run_id"], workspace=ws, format="safetensors", out_dir=tmp_path / "m").metadata
    op = meta["operating_point"]
    assert op["positive_class"] == "pneumonia" and op["threshold"] == test["threshold"]
    assert op["rule"] == "youden" and op["test"]["sensitivity"] == test["sensitivity"]
    assert main(["predict", res["run_id"], "-i", "test", "-w", str(ws), "--threshold", "1.5"]) == 2
    assert "--threshold '1.5' must be val or a number in (0, 1)" in capsys.readouterr().err


# -- the report: operating points and calibration as extra questions with verdicts ---------------

def test_report_section_judges_clinical_questions(tmp_path):
    from scipy.stats import ttest_rel

    from transfuse.config import DataSpec, ModelSpec, RunSpec
    from transfuse.report.clinical import clinical_questions, clinical_section
    from transfuse.store import Store

    store = Store(tmp_path)
    sens = {"random": [0.60, 0.62, 0.65], "balanced": [0.80, 0.85, 0.90]}
    ece = {"random": [0.05, 0.07, 0.03], "balanced": [0.05, 0.06, 0.04]}
    for arm in ("random", "balanced"):
        for seed in range(3):
            spec = RunSpec(data=DataSpec(name="d"), model=ModelSpec(name="cbr_tiny"), seed=seed,
                           study="clin", train=TrainSpec(sampler=arm))
            rid = store.start_run(spec)
            store.finish_run(rid, step=1, summary={}, test_metrics={
                "auc": 0.8, "sensitivity": sens[arm][seed], "specificity": 0.7,
                "balanced_acc": 0.7, "ece": ece[arm][seed], "brier": 0.2})
    q = {r["metric"]: r for r in clinical_questions(store, "clin")}
    s = q["sensitivity"]
    assert s["arm"] == "random · sampler=balanced" and s["reference"] == "random" and s["n"] == 3
    assert s["diff"] == pytest.approx(np.mean(np.subtract(sens["balanced"], sens["random"])))
    assert s["p"] == pytest.approx(ttest_rel(sens["balanced"], sens["random"]).pvalue)
    assert s["verdict"] == "higher" and q["ece"]["verdict"] == "undecided"
    assert "specificity" not in q or q["specificity"]["verdict"] == "undecided"
    sec = clinical_section(store, "clin")
    assert sec.title == "Operating points and calibration"
    assert "sensitivity: random · sampler=balanced vs random" in sec.body and "higher" in sec.body
