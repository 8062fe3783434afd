"""``transfuse study plan`` before the first run (issue 32): from earlier studies, ``--pilot N`` or
``--sd X``; the cost it implies and the design advice. Earlier studies are written straight into the
store (known paired differences, known step times), so every printed number is checked."""

from __future__ import annotations

import math
import re
import statistics

import pytest

from transfuse.cli import main
from transfuse.config import run_id, spec_from_dict
from transfuse.store import Store
from transfuse.study import load_study
from transfuse.decide.design import margin_for_seeds
from transfuse.study.plan import Observed, Plan, PlanQuestion, PlanRow, Sd, pilot_seeds
from transfuse.study.plan_advice import advice_lines, duration
from transfuse.decide.verdicts import seeds_needed

DATA = "builtin:brain_tissue"
NEW = """
name: fresh
base:
  data: {name: "builtin:brain_tissue", n_train: 32}
  model: {name: cbr_tiny}
  train: {steps: 50, eval_every: 25, batch_size: 16, lr: 0.02}
grid:
  init: [random, gabor, "random:kaiming"]
  data.n_train: [32, 64]
  seed: [0, 1, 2]
evaluation:
  auc_thresholds: [0.8]
"""
# per arm: the test AUC per seed (random is the reference); gabor − random and meanvar − random
# have known paired SDs
TESTS = {"random": [0.80, 0.82, 0.79, 0.81], "gabor": [0.83, 0.82, 0.84, 0.80],
         "meanvar": [0.85, 0.86, 0.80, 0.83]}
STEP_S = 0.1  # training seconds per step of every stored run


def _add(store: Store, *, study: str, init: str, seed: int, test: float, model: str = "cbr_tiny",
         n_train: int = 32, batch: int = 16) -> str:
    spec = spec_from_dict({"data": {"name": DATA, "n_train": n_train}, "model": {"name": model},
                           "init": {"name": init}, "seed": seed, "study": study,
                           "train": {"steps": 40, "eval_every": 20, "batch_size": batch}})
    rid = store.start_run(spec, env={"device": "cpu"})
    store.set_info(rid, data_info={"task": "multiclass", "name": DATA, "split_sizes": {"val": 78}},
                   model_info={"name": model, "spatial_dims": 2})
    for s, v in zip((0, 20, 40), (0.5, test - 0.05, test)):
        store.log_metrics(rid, s, "val", {"auc": v})
    store.finish_run(rid, step=40, test_metrics={"auc": test},
                     summary={"steps": 40, "train_seconds": 40 * STEP_S, "best_step": 20})
    return rid


def _prior(ws, name="earlier", **kw) -> None:
    store = Store(ws)
    for arm, tests in TESTS.items():
        for seed, t in enumerate(tests):
            _add(store, study=name, init=arm, seed=seed, test=t, **kw)
    store.put_result("study", name, {"name": name, "auc_thresholds": [0.8],
                                     "relative_thresholds": [0.9]}, study=name)


def _sd(arm: str) -> float:
    return statistics.stdev(a - b for a, b in zip(TESTS[arm], TESTS["random"]))


def _rows(out: str) -> dict[tuple[str, str, str], list[str]]:
    """Table rows keyed by (n_train, arm, question): the columns after them, split on 2+ spaces."""
    rows = {}
    for line in out.splitlines():
        cols = re.split(r"\s{2,}", line.strip())
        if len(cols) >= 8 and cols[0] == "cbr_tiny":
            rows[(cols[1], cols[2], cols[3])] = cols[4:]
    return rows


def _study(tmp_path, text=NEW, name="fresh.yaml"):
    f = tmp_path / name
    f.write_text(text)
    return f


def test_plans_from_an_earlier_study_and_names_it(tmp_path, capsys):
    ws = tmp_path / "ws"
    _prior(ws)
    _prior(ws, name="other_model", model="cbr_small")  # another model: not used
    f = _study(tmp_path)
    assert main(["study", "plan", str(f), "-w", str(ws), "--max-seeds", "8"]) == 0
    out = capsys.readouterr().out
    assert "finished studies" in out and "earlier" in out and "other_model" not in out
    rows = _rows(out)
    k = 4 * 3  # 2 arms × 2 sizes, each final + area + speed@0.8
    a = 0.05 / k
    gabor = _sd("gabor")
    pooled = math.sqrt((_sd("gabor") ** 2 + _sd("meanvar") ** 2) / 2)  # equal seeds: mean of variances
    expect = {("32", "gabor"): (gabor, "same arms"),
              ("64", "gabor"): (gabor, "same arms, other n_train"),
              ("32", "random:kaiming"): (pooled, "pooled, same n_train (2)"),
              ("64", "random:kaiming"): (pooled, "pooled (2)")}
    for (size, arm), (sd, how) in expect.items():
        sd_col, frm, need, need2, m_max = rows[(size, arm, "final")]
        assert float(sd_col) == pytest.approx(sd, abs=5e-5) and frm == how
        assert int(need) == seeds_needed(delta=0.0, sd=sd, margin=0.01, a=a)
        assert int(need2) == seeds_needed(delta=0.0, sd=sd, margin=0.02, a=a)
        assert float(m_max.lstrip("±")) == pytest.approx(margin_for_seeds(n=8, sd=sd, a=a), abs=5e-5)
    # cost: each arm's seeds at ±m; the reference takes the most of its arms
    n32 = max(int(rows[("32", arm, "final")][2]) for arm in ("gabor", "random:kaiming"))
    n64 = max(int(rows[("64", arm, "final")][2]) for arm in ("gabor", "random:kaiming"))
    runs = sum(int(rows[(s, arm, "final")][2]) for s in ("32", "64")
               for arm in ("gabor", "random:kaiming")) + n32 + n64
    cost = next(ln for ln in out.splitlines() if "cost at ±m" in ln)
    assert f"cost at ±m: {runs} runs (6 cells" in cost and "0 already finished" in cost
    assert "at --max-seeds 8: 6 cells × 8 = 48 runs" in cost
    # time: the stored step time (0.1 s) × the new study's 50 steps per run, no other time stored
    t = next(ln for ln in out.splitlines() if "time on cpu" in ln)
    assert f"≈ {duration(runs * 50 * STEP_S)} for the runs to do" in t and "0.1 s per training step" in t
    assert "validation split (a rule of thumb, not measured)" in out and "78 validation images" in out
    assert "in 12 of 12 runs read the checkpoint chosen was before the last step" in out
    assert "averaging (train.ema / train.swa) on cbr_tiny" in out and "not measured" in out


def test_sd_option_matches_seeds_needed_and_margin_for_seeds(tmp_path, capsys):
    f = _study(tmp_path)
    ws = tmp_path / "empty"
    assert main(["study", "plan", str(f), "-w", str(ws), "--sd", "0.03", "--max-seeds", "12"]) == 0
    out = capsys.readouterr().out
    assert "source: the paired SD you gave, --sd 0.03" in out
    rows = _rows(out)
    assert {q for _, _, q in rows} == {"final"}  # --sd plans the final score only
    a = 0.05 / 12
    need = seeds_needed(delta=0.0, sd=0.03, margin=0.01, a=a)
    for cols in rows.values():
        assert cols[:2] == ["0.0300", "given"]
        assert int(cols[2]) == need and int(cols[3]) == seeds_needed(delta=0.0, sd=0.03, margin=0.02, a=a)
        assert float(cols[4].lstrip("±")) == pytest.approx(margin_for_seeds(n=12, sd=0.03, a=a), abs=5e-5)
    assert f"cost at ±m: {6 * need} runs (6 cells × {need} seeds each)" in out
    assert "time: no measured step time" in out  # an empty workspace has no timing


def test_no_source_is_one_line_naming_both_options(tmp_path, capsys):
    f = _study(tmp_path)
    for ws in (tmp_path / "none", tmp_path / "unrelated"):
        if ws.name == "unrelated":
            _prior(ws, name="small", model="cbr_small")  # same data, another model
        assert main(["study", "plan", str(f), "-w", str(ws)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: no runs of study fresh")
        assert "--pilot 2" in err and "--sd 0.03" in err
    assert main(["study", "plan", str(f), "-w", str(ws), "--pilot", "1"]) == 2
    assert "at least 2 seeds" in capsys.readouterr().err
    assert main(["study", "plan", str(f), "-w", str(ws), "--pilot", "2", "--sd", "0.1"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["study", "plan", str(f), "-w", str(ws), "--sd", "-1"]) == 2


def test_pilot_seeds_are_the_grids_first_then_continue(tmp_path):
    f = _study(tmp_path)
    study = load_study(f)
    assert pilot_seeds(study, 2) == [0, 1] and pilot_seeds(study, 5) == [0, 1, 2, 3, 4]
    g = _study(tmp_path, NEW.replace("seed: [0, 1, 2]", "seed: [7]"), "g.yaml")
    assert pilot_seeds(load_study(g), 3) == [7, 8, 9]


def test_averaging_measured_when_both_were_run():
    q = PlanQuestion("m", "32", "a", "random", "final", 0.01, ("d", None), "plain")

    def obs(avg: str, diffs: tuple[float, ...]) -> Observed:
        return Observed("s", "m", "32", "a", "random", "final", ("d", None), avg, diffs, ())

    plain, ema = obs("plain", (0.0, 0.04, -0.04)), obs("ema", (0.0, 0.02, -0.02))
    sd = Sd(0.04, 2, "same arms")
    row = PlanRow(q, sd, seeds_needed(delta=0.0, sd=0.04, margin=0.01, a=0.05), None, None)
    from transfuse.decide.evaluation import Evaluation

    plan = Plan("x", "auc", Evaluation(), 1, 0.05, 10, "prior", [], [row], {}, [plain, ema])
    line = next(x for x in advice_lines(plan, None) if x.startswith("averaging"))
    assert "measured" in line and "0.0200 with train.ema/swa vs 0.0400 without (×0.50)" in line
    with_ = seeds_needed(delta=0.0, sd=0.02, margin=0.01, a=0.05)
    assert f"about {with_} seeds per question with averaging vs {row.need} without" in line


PILOT = """
name: pilot
base:
  data: {name: "builtin:brain_tissue", n_train: 32}
  model: {name: cbr_tiny}
  train: {steps: 2, eval_every: 2, batch_size: 16, lr: 0.02}
grid:
  init: [random, gabor]
  seed: [0, 1, 2]
evaluation:
  auc_thresholds: [0.8]
"""


@pytest.mark.slow
def test_pilot_runs_two_seeds_per_cell_and_plans_from_them(tmp_path, capsys):
    f = _study(tmp_path, PILOT, "pilot.yaml")
    ws = tmp_path / "ws"
    assert main(["study", "plan", str(f), "-w", str(ws), "--pilot", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    store = Store(ws)
    runs = store.list_runs()
    assert len(runs) == 4 and {r.status for r in runs} == {"finished"}
    assert sorted((r.spec["init"]["name"], r.spec["seed"]) for r in runs) == [
        ("gabor", 0), ("gabor", 1), ("random", 0), ("random", 1)]
    study = load_study(f)
    from transfuse.study import expand

    grid = {run_id(s) for s in expand(study)}
    assert {r.run_id for r in runs} <= grid  # real cells of the study: they count later
    assert "pilot: 2 cells × seeds 0, 1 = 4 runs of study pilot — 4 trained now" in out
    assert "source: the pilot's own paired SDs (2 seeds per cell)" in out
    test = {(r.spec["init"]["name"], r.spec["seed"]): store.final_metrics(r.run_id)["auc"] for r in runs}
    sd = abs((test["gabor", 0] - test["random", 0]) - (test["gabor", 1] - test["random", 1])) / math.sqrt(2)
    cols = _rows(out)[("32", "gabor", "final")]
    assert float(cols[0]) == pytest.approx(sd, abs=5e-5) and cols[1] == "pilot (2 seeds)"
    assert "— 4 already finished" in out and "time on cpu" in out
    # the pilot's runs are the study's own now: a plain `study plan` reads their verdicts
    assert main(["study", "plan", str(f), "-w", str(ws)]) == 0
    assert "study pilot: 3 questions" in capsys.readouterr().out


def test_study_with_runs_keeps_its_verdict_table_with_design_columns(tmp_path, capsys):
    ws = tmp_path / "ws"
    _prior(ws, name="fresh")  # the study's own runs (its file names it "fresh")
    f = _study(tmp_path)
    assert main(["study", "plan", str(f), "-w", str(ws), "--max-seeds", "6"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("study fresh: ") and "planned before its runs" not in out
    assert "source: the study's own 12 finished runs" in out
    from transfuse.decide.decisions import load_decisions

    _, dec, _ = load_decisions(Store(ws), "fresh", evaluation=load_study(f).evaluation)
    a = 0.05 / dec.family_size
    v = next(v for v in dec.verdicts if v.question.arm == "gabor" and v.question.endpoint == "final")
    assert v.verdict == "undecided"
    line = next(ln for ln in out.splitlines() if " gabor " in ln and " final " in ln)
    cols = re.split(r"\s{2,}", line.strip())
    assert cols[-3] == str(v.seeds_needed)
    d = v.decision
    assert cols[-2] == str(seeds_needed(delta=d.mean, sd=d.sd, margin=0.02, a=a, at_least=d.n))
    assert float(cols[-1].lstrip("±")) == pytest.approx(margin_for_seeds(n=6, sd=d.sd, a=a), abs=5e-5)
