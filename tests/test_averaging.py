"""Weight averaging (issue 32): ``train.ema`` / ``train.swa`` — the EMA arithmetic against a hand
computation, evaluation and checkpoints from the averaged weights, resume equality, run ids and
errors, cohort refusal, and the paired-SD table of a study with and without averaging."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from transfuse.config import DataSpec, ModelSpec, RunSpec, TrainSpec, run_id, spec_from_dict
from transfuse.data import load_dataset
from transfuse.errors import ConfigError
from transfuse.models import create_model
from transfuse.train.averaging import make_averaging
from transfuse.train.cohort import cohort_refusal
from transfuse.train.loop import evaluate
from transfuse.train.resume import RESUME_FILE
from tests.test_resume import Stop, _fit  # the killed-and-resumed fit of the resume tests


# -- configuration --------------------------------------------------------------------------------
def test_defaults_keep_existing_run_ids():
    """A spec written before the keys existed hashes to the id it always had."""
    spec = RunSpec(data=DataSpec(name="medmnist:retinamnist@28"), model=ModelSpec(name="cbr_small"),
                   train=TrainSpec(steps=200, lr=0.02, eval_every=20, warmup_steps=10), seed=3)
    # the id this spec had on main before issue 32 (computed there)
    assert run_id(spec) == "3f665cb5b81b"
    assert "ema" not in spec.to_dict()["train"] and "swa" not in spec.to_dict()["train"]
    on = RunSpec(data=spec.data, model=spec.model, train=TrainSpec(steps=200, lr=0.02, eval_every=20,
                                                                 warmup_steps=10, ema=0.99), seed=3)
    assert run_id(on) != run_id(spec) and on.to_dict()["train"]["ema"] == 0.99


@pytest.mark.parametrize("train, message", [
    ({"ema": 1.5}, "train.ema must be in (0, 1), got 1.5"),
    ({"ema": 0}, "train.ema must be in (0, 1), got 0"),
    ({"ema": 1}, "train.ema must be in (0, 1), got 1"),
    ({"ema": "fast"}, "train.ema='fast' must be a number"),
    ({"swa": 0}, "train.swa must be >= 1"),
    ({"swa": 300, "steps": 200}, "train.swa=300 starts after the last step (train.steps=200)"),
    ({"swa": 1.5}, "train.swa=1.5 must be an integer"),
    ({"ema": 0.99, "swa": 100}, "give train.ema or train.swa, not both"),
])
def test_bad_values_name_the_key(train, message):
    with pytest.raises(ConfigError) as e:
        spec_from_dict({"data": {"name": "d"}, "model": {"name": "cbr_tiny"}, "train": train})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_value_exits_2_on_the_command_line(capsys):
    from transfuse.cli import main

    code = main(["train", "--dataset", "builtin:brain_tissue", "--model", "cbr_tiny",
                 "--set", "train.ema=1.5", "-w", "/nonexistent-never-created"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "train.ema must be in (0, 1)" in err[-1]


def test_set_override_and_study_arm(tmp_path):
    from transfuse.overrides import override_run, override_study
    from transfuse.study.spec import expand, load_study

    spec = RunSpec(data=DataSpec(name="d"), model=ModelSpec(name="cbr_tiny"))
    assert override_run(spec, sets=["train.ema=0.99"]).train.ema == 0.99
    assert override_run(spec, sets=["train.swa=150"]).train.swa == 150
    f = tmp_path / "s.yaml"
    f.write_text("name: s\nbase:\n  data: {name: 'builtin:brain_tissue'}\n  model: {name: cbr_tiny}\n"
                 "  train: {steps: 20}\ngrid:\n  train.ema: [null, 0.9]\n  seed: [0, 1]\n")
    study = load_study(f)
    emas = sorted((s.train.ema is not None, s.seed) for s in expand(study))
    assert emas == [(False, 0), (False, 1), (True, 0), (True, 1)]
    wide = override_study(study, sets=["base.train.swa=10"])
    # a study-wide setting beside the arm: the EMA arm now asks for both and is refused
    with pytest.raises(ConfigError, match="give train.ema or train.swa, not both"):
        expand(wide)


def test_cohorts_refuse_averaging():
    assert cohort_refusal(TrainSpec(ema=0.99)) == "train.ema is not implemented for cohorts"
    assert cohort_refusal(TrainSpec(swa=10)) == "train.swa is not implemented for cohorts"
    assert cohort_refusal(TrainSpec()) is None


# -- the arithmetic -------------------------------------------------------------------------------
class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.bn = nn.BatchNorm1d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(x))


def test_ema_matches_a_hand_computation():
    """timm ModelEmaV3 semantics: step 1 copies the weights, then e ← d·e + (1−d)·w for every
    floating-point tensor (BN running statistics included); integer buffers are copied."""
    torch.manual_seed(0)
    model = Tiny()
    avg = make_averaging(TrainSpec(ema=0.9), model=model, raw_model=model, total=3, bn_data=None,
                         batch_size=4, device=torch.device("cpu"))
    snapshots = []
    for step in (1, 2, 3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(float(step))
        model.train()
        model(torch.randn(4, 2))  # moves the BN running statistics
        avg.update(step)
        snapshots.append(copy.deepcopy(model.state_dict()))
    evaluated, holder = avg.evaluated(3)
    assert evaluated is holder and evaluated is not model
    got = holder.state_dict()
    for k, w3 in snapshots[2].items():
        if not w3.is_floating_point():
            assert torch.equal(got[k], w3)  # num_batches_tracked
            continue
        e = snapshots[0][k].clone()  # step 1: a copy
        for snap in snapshots[1:]:
            e = 0.9 * e + 0.1 * snap[k]
        torch.testing.assert_close(got[k], e, rtol=0, atol=1e-6)


def test_swa_averages_equally_from_its_start_and_recomputes_bn():
    torch.manual_seed(0)
    model = Tiny()
    xs = torch.randn(16, 2) * 3 + 1
    data = [(xs[i], torch.zeros(()), torch.ones(())) for i in range(16)]
    avg = make_averaging(TrainSpec(swa=2, steps=4), model=model, raw_model=model, total=4,
                         bn_data=data, batch_size=16, device=torch.device("cpu"))
    weights = []
    for step in (1, 2, 3, 4):
        with torch.no_grad():
            model.lin.weight.fill_(float(step))
            model.lin.bias.fill_(0.0)
        avg.update(step)
        weights.append(float(step))
    assert avg.evaluated(1)[0] is model  # before its start: the model itself
    ev, holder = avg.evaluated(4)
    w = sum(weights[1:]) / 3  # steps 2, 3, 4
    torch.testing.assert_close(holder.lin.weight, torch.full((1, 2), w))
    # update_bn: the running mean is the mean of the averaged model's pre-BN outputs
    torch.testing.assert_close(holder.bn.running_mean, (xs @ torch.full((2, 1), w)).mean(0),
                               rtol=1e-5, atol=1e-5)


# -- fit() ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def brain():
    return load_dataset(DataSpec(name="builtin:brain_tissue", n_train=64))




def _loaders(data):
    from torch.utils.data import DataLoader

    return DataLoader(data.val, batch_size=256), DataLoader(data.test, batch_size=256)


@pytest.mark.parametrize("avg", [{"ema": 0.8}, pytest.param({"swa": 10}, marks=pytest.mark.slow)])
def test_evaluation_checkpoints_and_test_use_the_averaged_weights(brain, tmp_path, avg):
    spec = TrainSpec(steps=12, eval_every=4, batch_size=16, lr=0.05, **avg)
    model, res = _fit(brain, spec, tmp_path)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["step"] == res.best_step
    # the final model holds best.pt: its test metrics are the stored ones
    net = create_model("cbr_tiny", spatial_dims=2, in_channels=brain.info.in_channels,
                       num_classes=brain.info.num_classes)
    net.load_state_dict(best["state_dict"])
    val_loader, test_loader = _loaders(brain)
    test, _ = evaluate(net, test_loader, data=brain, device=torch.device("cpu"), amp=False)
    assert test["auc"] == pytest.approx(res.test["auc"], abs=1e-12)
    # the validation curve is the averaged model's: best.pt scores the recorded value at its step
    val, _ = evaluate(net, val_loader, data=brain, device=torch.device("cpu"), amp=False)
    recorded = {s: m["auc"] for s, sp, m in res.history if sp == "val"}
    assert val["auc"] == pytest.approx(recorded[res.best_step], abs=1e-12)
    # and differs from training without averaging (same seed, same batches)
    _, plain = _fit(brain, TrainSpec(steps=12, eval_every=4, batch_size=16, lr=0.05),
                    tmp_path / "plain")
    plain_curve = {s: m["loss"] for s, sp, m in plain.history if sp == "val"}
    avg_curve = {s: m["loss"] for s, sp, m in res.history if sp == "val"}
    assert avg_curve[0] == plain_curve[0]  # step 0: the init, for both
    assert avg_curve[12] != plain_curve[12]
    if "swa" in avg:  # before its start SWA evaluates the current weights
        assert avg_curve[8] == plain_curve[8]


@pytest.mark.parametrize("avg, stops", [({"ema": 0.8}, [4, 8]),
                                        pytest.param({"swa": 6}, [4, 8], marks=pytest.mark.slow)])
def test_interrupted_fit_with_averaging_resumes_bit_identical(brain, tmp_path, avg, stops):
    spec = TrainSpec(steps=12, eval_every=4, batch_size=16, lr=0.05, checkpoint_every=2, **avg)
    ref_model, ref = _fit(brain, spec, tmp_path / "ref")
    for stop in stops:
        with pytest.raises(Stop):
            _fit(brain, spec, tmp_path / "cut", stop_at=stop)
        ck = torch.load(tmp_path / "cut" / RESUME_FILE, weights_only=True)
        assert ck["averaging"]["kind"] == next(iter(avg))
    model, res = _fit(brain, spec, tmp_path / "cut")
    assert res.resumed_from == stops[-1] - 2
    assert res.history == ref.history and res.test == ref.test and res.best_step == ref.best_step
    for name in ("best.pt", "last.pt"):
        a, b = (torch.load(d / name, weights_only=True)["state_dict"]
                for d in (tmp_path / "ref", tmp_path / "cut"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- the paired-SD table (synthetic store) --------------------------------------------------------
PLAIN = {"random": [0.80, 0.82, 0.78, 0.81, 0.79], "meanvar": [0.85, 0.84, 0.86, 0.80, 0.90]}
EMA = {"random": [0.81, 0.81, 0.80, 0.81], "meanvar": [0.84, 0.845, 0.835, 0.84]}  # no seed 4


@pytest.fixture()
def averaged_ws(tmp_path):
    from transfuse.store import Store

    store = Store(tmp_path)
    for ema, table in ((None, PLAIN), (0.99, EMA)):
        for init, scores in table.items():
            for seed, auc in enumerate(scores):
                spec = spec_from_dict({"data": {"name": "<b>x</b>"}, "model": {"name": "cbr_tiny"},
                                       "init": {"name": init}, "train": {"ema": ema},
                                       "seed": seed, "study": "syn"})
                rid = store.start_run(spec)
                store.set_info(rid, data_info={"task": "multiclass", "name": "<b>x</b>"},
                               model_info={"name": "cbr_tiny", "spatial_dims": 2})
                for step, v in ((0, 0.5), (10, auc)):
                    store.log_metrics(rid, step, "val", {"auc": v, "loss": 1 - v})
                store.finish_run(rid, step=10, test_metrics={"auc": auc}, summary={})
    return tmp_path


def _expected():
    import statistics

    plain = [a - b for a, b in zip(PLAIN["meanvar"][:4], PLAIN["random"][:4])]
    avg = [a - b for a, b in zip(EMA["meanvar"], EMA["random"])]
    return statistics.stdev(plain), statistics.stdev(avg)


def test_paired_sd_with_and_without_averaging(averaged_ws):
    from transfuse.store import Store
    from transfuse.decide.averaging import averaging_rows
    from transfuse.decide.results import load_results

    res = load_results(Store(averaged_ws), "syn")
    assert set(res.inits) == {"random", "meanvar", "random · ema=0.99", "meanvar · ema=0.99"}
    (row,) = averaging_rows(res)
    sd0, sd1 = _expected()
    # by hand: diffs (0.05, 0.02, 0.08, -0.01) and (0.03, 0.035, 0.035, 0.03)
    assert sd0 == pytest.approx(0.0387298, abs=1e-6) and sd1 == pytest.approx(0.0028868, abs=1e-6)
    assert (row.arm, row.reference, row.averaging, row.seeds) == ("meanvar", "random", "ema=0.99",
                                                                  (0, 1, 2, 3))
    assert row.sd_plain == pytest.approx(sd0, abs=1e-12)
    assert row.sd_averaged == pytest.approx(sd1, abs=1e-12)
    assert row.ratio == pytest.approx(sd1 / sd0, abs=1e-12)
    assert row.seed_factor == pytest.approx((sd1 / sd0) ** 2, abs=1e-12)
    assert row.mean_plain == pytest.approx(0.035, abs=1e-12)
    assert row.mean_averaged == pytest.approx(0.0325, abs=1e-12)


def test_report_json_html_and_plan_carry_the_table(averaged_ws, tmp_path, capsys):
    import json

    from transfuse.cli import main
    from transfuse.report.study import build_report

    sd0, sd1 = _expected()
    out = build_report(workspace=averaged_ws, study="syn", out=tmp_path / "r.json", format="json")
    data = json.loads(out.read_text())
    (row,) = data["averaging"]
    assert row["n"] == 4 and row["seeds"] == [0, 1, 2, 3]
    assert row["sd_plain"] == pytest.approx(sd0) and row["ratio"] == pytest.approx(sd1 / sd0)
    import jsonschema

    from transfuse.report.export import schema

    jsonschema.validate(data, schema())
    html = build_report(workspace=averaged_ws, study="syn", out=tmp_path / "r.html").read_text()
    assert "Weight averaging: paired SD" in html and f"{sd1 / sd0:.2f}" in html
    assert "<b>x</b>" not in html  # user strings escaped
    f = tmp_path / "syn.yaml"
    f.write_text("name: syn\nbase:\n  data: {name: 'x'}\n  model: {name: cbr_tiny}\n"
                 "grid:\n  init.name: [random, meanvar]\n  train.ema: [null, 0.99]\n"
                 "  seed: [0, 1, 2, 3]\n")
    assert main(["study", "plan", str(f), "-w", str(averaged_ws)]) == 0
    lines = capsys.readouterr().out.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.startswith("weight averaging"))
    cells = lines[i + 2].split()
    assert cells[-4:] == [f"{sd0:.4f}", f"{sd1:.4f}", f"{sd1 / sd0:.2f}", f"{(sd1 / sd0) ** 2:.2f}"]
    # FINDINGS' generated block (docs/findings/render.py) carries the same ratio
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    mod_spec = importlib.util.spec_from_file_location("render_avg", root / "docs/findings/render.py")
    render = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(render)
    block = render.render_block("syn", data)
    (line,) = [ln for ln in block.splitlines() if ln.startswith("| cbr_tiny | full | meanvar vs")]
    assert f"| {sd0:.4f} | {sd1:.4f} | {sd1 / sd0:.2f} |" in line


def test_no_table_without_an_averaging_axis(averaged_ws):
    from transfuse.arms import arm_labels, split_averaging
    from transfuse.decide.averaging import averaging_lines

    specs = [{"model": {"name": "m"}, "init": {"name": n}, "train": {"ema": 0.99}}
             for n in ("random", "meanvar")]
    assert arm_labels(specs) == ["random", "meanvar"]  # study-wide: the reference keeps its name
    assert split_averaging("meanvar · augment=basic · ema=0.99") == ("meanvar · augment=basic",
                                                                     "ema=0.99")
    assert split_averaging("random") == ("random", None)

    class Res:  # a study without an averaging axis
        rows, models, sizes, inits, reference, metric = (), ["m"], ["full"], ["random"], "random", "auc"

    assert averaging_lines(Res()) == []  # type: ignore[arg-type]
