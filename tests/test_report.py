"""Study results and the HTML report, on a run store filled with known numbers."""

import base64
import io
import re

import numpy as np
import pytest
import torch

from transfuse.cli import main
from transfuse.config import spec_from_dict
from transfuse.report.study import build_report
from transfuse.store import Store
from transfuse.decide.results import load_results

EVIL = "<script>alert(1)</script>"
STEPS = [0, 10, 20, 30, 40]


def _add_run(store, *, init, seed, test_auc, curve, study="syn", dataset=EVIL, n_train=None,
             probs=None, y=None):
    spec = spec_from_dict({"data": {"name": dataset, "n_train": n_train},
                           "model": {"name": "cbr_tiny"}, "init": {"name": init},
                           "seed": seed, "study": study})
    rid = store.start_run(spec)
    store.set_info(rid, data_info={"task": "multiclass", "name": dataset},
                   model_info={"name": "cbr_tiny", "spatial_dims": 2})
    for s, v in zip(STEPS, curve):
        store.log_metrics(rid, s, "val", {"auc": v, "loss": 1 - v})
    d = store.run_dir(rid)
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for name in ("init.pt", "best.pt"):
        torch.save({"state_dict": {"stem.conv.weight": torch.randn(8, 1, 5, 5, generator=g)}, "step": 0},
                   d / name)
    if probs is not None:
        np.savez(d / "test_predictions.npz", probs=probs, targets=y, masks=np.ones(len(y)))
    store.finish_run(rid, step=STEPS[-1], test_metrics={"auc": test_auc}, summary={})
    return rid


@pytest.fixture()
def study_ws(tmp_path):
    store = Store(tmp_path)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    for seed in range(3):
        good = np.stack([1 - y * 0.6 - rng.random(200) * 0.4, y * 0.6 + rng.random(200) * 0.4], 1)
        bad = rng.random((200, 2))
        # random reaches 0.9 at step 40, meanvar at step 20: a 2× speed-up on every seed
        _add_run(store, init="random", seed=seed, test_auc=0.80 + 0.01 * seed,
                 curve=[0.5, 0.7, 0.8, 0.85, 0.9], probs=bad, y=y)
        _add_run(store, init="meanvar", seed=seed, test_auc=0.85 + 0.01 * seed + 0.002 * seed**2,
                 curve=[0.5, 0.85, 0.9, 0.92, 0.93], probs=good, y=y)
    return tmp_path


def test_results_cells_comparisons_and_speedup(study_ws):
    res = load_results(Store(study_ws), "syn", thresholds=(0.9,), relative=(0.95,))
    assert res.inits == ["random", "meanvar"] and res.sizes == ["full"] and len(res.rows) == 6
    mv = res.cell("cbr_tiny", "meanvar", "full")
    assert mv.final.mean == pytest.approx(np.mean([0.85, 0.862, 0.878]))
    assert mv.steps_abs[0.9].mean == 20 and mv.reached_abs[0.9] == 3
    (c,) = res.comparisons
    assert c.final.mean_diff == pytest.approx(np.mean([0.05, 0.052, 0.058]))
    assert np.exp(c.speedup[0.9].mean) == pytest.approx(2.0)
    assert all(d.p < 0.001 and d.diff > 0 for d in c.delong.values())
    from transfuse.decide.decisions import decide

    dec = decide(res)
    v = {q.question.endpoint: q for q in dec.verdicts}
    assert v["final"].verdict == "better_beyond_margin" and v["final"].decision.mean == pytest.approx(0.0533, abs=1e-4)
    assert v["speed@0.9"].verdict == "better_beyond_margin"  # 2× on every seed: a point interval above 1.2×
    (rec,) = dec.recommendations
    assert rec.text.startswith("meanvar: better than random by more than the margin (±0.01 AUC): "
                               "+0.053 AUC")


def test_not_significant_is_undecided(tmp_path):
    from transfuse.decide.decisions import decide

    store = Store(tmp_path)
    for seed, (a, b) in enumerate([(0.80, 0.81), (0.82, 0.80), (0.79, 0.80)]):
        _add_run(store, init="random", seed=seed, test_auc=a, curve=[0.5, 0.6, 0.7, 0.75, 0.8], dataset="d")
        _add_run(store, init="pretrained", seed=seed, test_auc=b, curve=[0.5, 0.6, 0.7, 0.75, 0.8], dataset="d")
    dec = decide(load_results(store, "syn", thresholds=(0.95,)))
    final = [v for v in dec.verdicts if v.question.endpoint == "final"][0]
    assert final.verdict == "undecided"
    speed = [v for v in dec.verdicts if v.question.endpoint == "speed@0.95"][0]
    assert speed.verdict == "undecided" and "not reached" in speed.reason
    assert dec.recommendations[0].text.startswith("undecided: needs")


def _pngs(html):
    return re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', html)


def test_report_is_self_contained_escaped_and_has_figures(study_ws):
    out = build_report(workspace=study_ws, study="syn", out=study_ws / "r.html")
    html = out.read_text()
    assert EVIL not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script" not in html.lower()
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from a network
    pngs = _pngs(html)
    assert len(pngs) >= 3  # curves, steps, filters
    from PIL import Image

    for b in pngs:
        img = np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("L"), dtype=float)
        assert img.std() > 5  # not blank
    for title in ("Decision card", "Summary", "Verdicts", "Forest plots and scores", "Final scores", "Learning curves",
                  "Steps to threshold", "First-layer filters", "Methods"):
        assert f">{title}</h2>" in html
    assert "paired t-test" in html and "DeLong" in html and "TOST" in html and "Holm" in html


def test_report_cli_and_errors(study_ws, tmp_path, capsys):
    assert main(["report", str(study_ws), "--study", "syn", "-o", str(tmp_path / "x.html")]) == 0
    assert (tmp_path / "x.html").is_file()
    assert main(["report", str(study_ws), "--study", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no runs of study 'nope'" in err[0] and "syn" in err[0]
    assert main(["report", str(tmp_path / "empty"), "--study", "syn"]) == 2
    assert "no run store" in capsys.readouterr().err


def test_a_moved_or_copied_store_keeps_its_per_seed_delong_and_its_files(study_ws, tmp_path_factory):
    """A store's runs table records each run's folder as an absolute path; a workspace copied to
    another machine or folder (docs/findings snapshots, a Ray driver's store) must still find its
    predictions there, not at the old path (DeLong silently vanished before)."""
    import shutil

    from transfuse.store_check import check_store

    before = load_results(Store(study_ws), "syn").comparisons[0].delong
    moved = tmp_path_factory.mktemp("elsewhere") / "ws"
    shutil.copytree(study_ws, moved)
    shutil.rmtree(study_ws / "runs")  # the old folders are gone, as on another machine
    store = Store(moved)
    assert all(r.run_dir == str(moved / "runs" / r.run_id) for r in store.list_runs())
    after = load_results(store, "syn").comparisons[0].delong
    assert len(after) == 3 and all(d is not None for d in after.values())
    assert {s: (d.diff, d.p) for s, d in after.items()} == {s: (d.diff, d.p) for s, d in before.items()}
    # the fixture writes no last.pt; every other file is found in the new folder
    assert set(check_store(moved).missing.values()) == {("last.pt",)}
