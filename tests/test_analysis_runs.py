"""The analyses over stored runs, ``transfuse analyze`` and the report section (tiny real runs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from transfuse import DataSpec, InitSpec, ModelSpec, RunSpec, TrainSpec, train_run
from transfuse.report.analysis import analysis_section
from transfuse.analysis.results import KINDS, LayerGrid, StageChange, from_payload
from transfuse.analysis.runs import (AnalysisOptions, Pair, _checkpoint_path, default_pairs,
                                     load_checkpoint, weight_change)
from transfuse.cli import main
from transfuse.errors import ConfigError, DataError
from transfuse.store import RunRecord, Store

pytestmark = pytest.mark.usefixtures("one_thread_module")


@pytest.fixture(scope="module")
def ws(tmp_path_factory, one_thread_module) -> Path:
    """A study 't' with cbr_tiny random seeds 0 and 1 and gabor seed 0, 4 steps each."""
    ws = tmp_path_factory.mktemp("analysis") / "ws"
    for init, seed in [("random", 0), ("random", 1), ("gabor", 0)]:
        spec = RunSpec(data=DataSpec(name="builtin:brain_tissue", n_train=64),
                       model=ModelSpec(name="cbr_tiny"), init=InitSpec(name=init),
                       train=TrainSpec(steps=4, eval_every=2, batch_size=16), seed=seed, study="t")
        train_run(spec, workspace=ws, progress=False)
    return ws


def runs_by(store: Store) -> dict[tuple[str, int], RunRecord]:
    return {(r.spec["init"]["name"], r.spec["seed"]): r for r in store.list_runs(study="t")}


def test_analyze_stores_all_four_analyses(ws, capsys):
    assert main(["analyze", str(ws), "--study", "t", "--images", "64", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "analysed 3 runs and 2 pairs" in out and "3 change, 3 weights, 3 filters, 2 grid" in out
    store = Store(ws)
    r = runs_by(store)
    meta = store.get_results(KINDS["meta"], study="t")["t"]
    base = f"{r['random', 0].run_id}:{r['random', 1].run_id}"
    assert [p[2] for p in meta["pairs"]] == ["baseline", "comparison"]
    assert meta["pairs"][1][:2] == [r["random", 0].run_id, r["gabor", 0].run_id] and meta["pairs"][1][3] == base
    grids = {k: from_payload(LayerGrid, v) for k, v in store.get_results(KINDS["grid"], study="t").items()}
    g = grids[base]
    assert g.stages_a == ["stem", "block1", "block2", "block3", "head"] and g.n_points == 64
    for m in ("linear_cka", "svcca", "pwcca"):
        vals = [v for row in g.measures[m] for v in row]
        assert all(v is not None and 0 <= v <= 1 + 1e-9 for v in vals)  # pool: every pair comparable
        assert all(c is not None and c < 1 for c in g.chance[m])
    assert g.dims_a["block3"] <= 64 // 5 and g.dims_a["head"] <= 4
    changes = store.get_results(KINDS["change"], study="t")
    assert set(changes) == {x.run_id for x in r.values()}
    ch = from_payload(StageChange, changes[r["random", 0].run_id])
    assert ch.stages == g.stages_a and all(0 < v <= 1 + 1e-9 for v in ch.measures["linear_cka"])


def test_a_run_compared_with_itself_is_one_everywhere_on_the_diagonal(ws):
    store = Store(ws)
    rid = runs_by(store)["gabor", 0].run_id
    assert main(["analyze", str(ws), "--study", "t", "--images", "32", "--no-progress",
                 "--pairs", f"{rid[:6]}:{rid}", "--measures", "linear_cka,svcca"]) == 0
    meta = store.get_results(KINDS["meta"], study="t")["t"]
    assert [p[2] for p in meta["pairs"]] == ["baseline", "explicit"]  # the group's baseline comes along
    g = from_payload(LayerGrid, store.get_results(KINDS["grid"], study="t")[f"{rid}:{rid}"])
    for m in ("linear_cka", "svcca"):
        assert all(v == pytest.approx(1.0, abs=1e-6) for v in g.diagonal(m))
        assert all(c < 0.9 for c in g.chance[m])


def test_weight_change_and_filters_match_the_checkpoints(ws):
    assert main(["analyze", str(ws), "--study", "t", "--images", "32", "--no-progress"]) == 0
    store = Store(ws)
    r = runs_by(store)["random", 0]
    s0, s1 = load_checkpoint(r, "init"), load_checkpoint(r, "best")
    stem = [k for k in s0 if k.startswith("stem") and s0[k].ndim >= 2]
    want = (sum((s1[k] - s0[k]).double().square().sum() for k in stem).sqrt()
            / sum(s0[k].double().square().sum() for k in stem).sqrt())
    w = store.get_results(KINDS["weights"], run_id=r.run_id)[r.run_id]
    assert w["stages"][0] == "stem" and w["relative"][0] == pytest.approx(float(want), abs=1e-6)
    assert all(v is not None and v > 0 for v in w["relative"]) and w["tensors"][0] == len(stem)
    f = store.get_results(KINDS["filters"], run_id=r.run_id)[r.run_id]
    torch.testing.assert_close(torch.tensor(f["init"], dtype=torch.float64), s0[f["key"]][:32].double(), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.tensor(f["trained"], dtype=torch.float64), s1[f["key"]][:32].double(), atol=1e-5, rtol=0)
    assert f["pretrained"] is False and f["shape"] == list(s0[f["key"]].shape)


def test_weight_change_numbers_on_a_known_state():
    rec = RunRecord("r1", "t", {"model": {"name": "m"}, "init": {"name": "random"}, "seed": 0,
                                "data": {"name": "d"}}, "finished", 0, 0, 0, 0, {}, {}, {
        "stages": [{"name": "stem", "modules": ["a"]}, {"name": "head", "modules": ["b"]},
                   {"name": "empty", "modules": ["c"]}]}, {}, {}, None, None)
    s0 = {"a.weight": torch.ones(2, 2, 3, 3), "a.bias": torch.ones(2), "b.weight": torch.full((3, 4), 2.0),
          "c.running_mean": torch.zeros(4)}
    s1 = {"a.weight": 1.5 * s0["a.weight"], "a.bias": torch.zeros(2), "b.weight": s0["b.weight"].clone(),
          "c.running_mean": torch.ones(4)}
    w = weight_change(rec, s0, s1)
    assert w.stages == ["stem", "head", "empty"] and w.tensors == [1, 1, 0]
    assert w.relative == [pytest.approx(0.5), 0.0, None]  # bias and buffers excluded


def test_report_section_shows_every_analysis(ws):
    store = Store(ws)
    sec = analysis_section(store, "t")
    assert sec is not None and sec.title == "Representation analysis"
    for h in ("Layer × layer similarity", "Same stage, two runs", "How much each stage changed",
              "Relative weight change per stage", "First-layer filters"):
        assert h in sec.body
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', sec.body)) >= 6
    assert "baseline" in sec.body and "chance" in sec.body
    assert analysis_section(store, "no-such-study") is None


def test_study_report_includes_the_section(ws, tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", str(ws), "--study", "t", "-o", str(out)]) == 0
    html = out.read_text()
    assert "<h2>Representation analysis</h2>" in html and "<script" not in html


def rec(rid: str, init: str, seed: int, model: str = "cbr_tiny", n_train: int | None = 64) -> RunRecord:
    spec = {"data": {"name": "builtin:brain_tissue", "n_train": n_train}, "model": {"name": model},
            "init": {"name": init}, "seed": seed}
    return RunRecord(rid, "t", spec, "finished", 0, 0, 0, 0, {}, {}, {}, {}, {}, None, None)


def test_default_pairs_per_model_and_size():
    runs = [rec("r2", "random", 2), rec("r0", "random", 0), rec("r1", "random", 1), rec("p1", "pretrained", 1),
            rec("p0", "pretrained", 0), rec("m1", "meanvar", 1), rec("x0", "random", 0, model="resnet18"),
            rec("y0", "pretrained", 0, model="resnet18"), rec("s0", "pretrained", 0, n_train=None)]
    pairs = default_pairs(runs)
    assert pairs == [Pair("r0", "r1", "baseline"), Pair("r0", "p0", "comparison", ("r0", "r1")),
                     Pair("r1", "m1", "comparison", ("r0", "r1")),  # meanvar only has seed 1
                     Pair("x0", "y0", "comparison", None)]  # one random seed: no baseline
    assert default_pairs([rec("p0", "pretrained", 0)]) == []


@pytest.mark.parametrize("args, needle", [
    (["--pairs", "abc"], "--pairs 'abc' must be RUN_ID:RUN_ID"),
    (["--pairs", "zzzz:yyyy"], "run id 'zzzz' is not a run id: give its hex digits"),
    (["--pairs", "abcdef:abcdee"], "no run with id 'abcdef'"),
    (["--policy", "flatten"], "--policy 'flatten' is not valid"),
    (["--images", "5"], "--images 5 is too few"),
    (["--measures", "cka"], "--measures 'cka'"),
    (["--checkpoint", "final"], "--checkpoint 'final'"),
])
def test_cli_errors_are_one_line_exit_2(ws, capsys, args, needle):
    assert main(["analyze", str(ws), "--study", "t", "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1


def test_missing_study_store_or_checkpoint(ws, tmp_path, capsys):
    assert main(["analyze", str(ws), "--study", "nope"]) == 2
    assert "study 'nope' has no finished runs" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "none"), "--study", "t"]) == 2
    assert "no run store" in capsys.readouterr().err
    r = rec("r0", "random", 0)
    r = RunRecord(**{**r.__dict__, "run_dir": str(tmp_path)})
    with pytest.raises(DataError, match=r"run r0 has no best.pt in .*retrain it"):
        _checkpoint_path(r, "best")
    with pytest.raises(ConfigError, match="--split 'dev'"):
        AnalysisOptions(split="dev")


def test_positions_policy_compares_only_maps_of_one_size(ws):
    # Runs last in this module: it replaces the pool results of study 't'.
    from transfuse.analysis.runs import analyze_study

    out = analyze_study(workspace=ws, study="t", options=AnalysisOptions(policy="positions", images=16, per_image=4,
                                                                         measures=("linear_cka",)), progress=False)
    store = Store(ws)
    g = from_payload(LayerGrid, store.get_results(KINDS["grid"], study="t")[f"{out.pairs[0].a}:{out.pairs[0].b}"])
    m = g.measures["linear_cka"]
    assert g.n_points == 64
    for i, a in enumerate(g.stages_a):
        for j, b in enumerate(g.stages_b):
            assert (m[i][j] is None) == (i != j)  # cbr_tiny stages all have different map sizes
    assert analysis_section(store, "t") is not None


def test_runs_share_analysis_images_only_on_the_same_data():
    from transfuse.analysis.runs import AnalysisImages as _Images

    test, train = _Images(AnalysisOptions()), _Images(AnalysisOptions(split="train"))
    a, b = rec("a", "random", 0, n_train=64), rec("b", "random", 0, n_train=None)
    other = RunRecord(**{**a.__dict__, "spec": {**a.spec, "data": {"name": "medmnist:bloodmnist@28"}}})
    assert test.key(a) == test.key(b) != test.key(other)  # n_train subsamples only the train split
    assert train.key(a) != train.key(b)
