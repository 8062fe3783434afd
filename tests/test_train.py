"""Training: reproducibility, checkpoints, multi-label masks, schedules, optimisers, NaN handling
and proof that the loop learns. All on tiny synthetic data on CPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transfuse.config import DataSpec, ModelSpec, RunSpec, TrainSpec, run_id
from transfuse.data.base import SplitArrays
from transfuse.data.registry import DATASETS, RawData, load_dataset, register_dataset
from transfuse.models import create_model
from transfuse.run import train_run
from transfuse.store import Store
from transfuse.train import fit
from transfuse.train.loop import loss_fn, lr_lambda, make_optimizer

FAMILY = "synth_train_tests"  # unique to this module
SIDE = 16


def synthetic_arrays(kind: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Easily separable images: each label switches on a bright quadrant.

    ``kind``: ``binary`` (2 classes, quadrant 0 on for class 1) or ``multilabel`` (3 labels, one
    quadrant each; about a fifth of the labels are uncertain, -1).
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(0.3, 0.1, size=(n, 1, SIDE, SIDE)).astype(np.float32)
    h = SIDE // 2
    quads = [(slice(0, h), slice(0, h)), (slice(h, None), slice(h, None)), (slice(0, h), slice(h, None))]
    if kind == "binary":
        y = np.arange(n) % 2
        rng.shuffle(y)
        for i in np.flatnonzero(y == 1):
            x[i, 0][quads[0]] += 0.5
        names = ("neg", "pos")
    else:
        y = (rng.random((n, 3)) < 0.5).astype(np.int64)
        for i, j in zip(*np.nonzero(y)):
            x[i, 0][quads[j]] += 0.5
        y[rng.random((n, 3)) < 0.2] = -1  # uncertain: the image may or may not show it
        names = ("a", "b", "c")
    return np.clip(x, 0, 1), y, names


def _loader(spec: DataSpec, arg: str) -> RawData:
    kind, _, n = arg.partition("@")
    x, y, names = synthetic_arrays(kind, int(n or 200), seed=spec.split_seed)
    return RawData(task="multiclass" if kind == "binary" else "multilabel", class_names=names,
                   spatial_dims=2, splits={"all": SplitArrays(x, y, f"synthetic {arg}")},
                   description="synthetic test data")


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Tiny tensors: run this module with one intra-op thread (see conftest)."""


@pytest.fixture(scope="module", autouse=True)
def synthetic_dataset():
    if FAMILY not in DATASETS:
        register_dataset(FAMILY, description="synthetic (tests)")(_loader)


def make_spec(*, seed=0, dataset="binary@200", model="cbr_tiny", **train) -> RunSpec:
    t = dict(steps=12, batch_size=16, lr=0.05, eval_every=6, schedule="cosine")
    t.update(train)
    return RunSpec(data=DataSpec(name=f"{FAMILY}:{dataset}"), model=ModelSpec(model),
                   train=TrainSpec(**t), seed=seed)


def _state(path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert set(ckpt) == {"state_dict", "step"}
    return ckpt["state_dict"]


# -- reproducibility and checkpoints -------------------------------------------------------------
@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    """The same spec trained in two workspaces, plus one with another seed."""
    spec = make_spec()
    out = {}
    for name, s in (("a", spec), ("b", spec), ("seed1", make_spec(seed=1))):
        ws = tmp_path_factory.mktemp(f"ws_{name}")
        outcome = train_run(s, workspace=ws, device="cpu", progress=False)
        store = Store(ws)
        rid = outcome.record.run_id
        assert rid == run_id(s)  # the id is the spec's as given (no data needed to compute it)
        out[name] = (outcome, store, rid, store.run_dir(rid))
    return out


def test_same_spec_gives_identical_metrics(twice):
    (oa, sa, ra, _), (ob, sb, rb, _) = twice["a"], twice["b"]
    assert ra == rb and not oa.skipped and not ob.skipped
    rows_a, rows_b = sa.metrics(ra), sb.metrics(rb)
    # steps 0, 6, 12 × (val, train at 6/12) + test: a full curve, equal to the last bit.
    assert {(s, sp) for s, sp, *_ in rows_a} == {(0, "val"), (6, "train"), (6, "val"), (12, "train"),
                                                  (12, "val"), (12, "test")}
    assert rows_a == rows_b
    assert oa.test == ob.test
    assert oa.record.summary["best_step"] == ob.record.summary["best_step"]


def test_same_spec_gives_identical_checkpoints(twice):
    da, db = twice["a"][3], twice["b"][3]
    for name in ("init.pt", "best.pt", "last.pt"):
        sa, sb = _state(da / name), _state(db / name)
        assert list(sa) == list(sb)
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}:{k}"
    pa, pb = np.load(da / "test_predictions.npz"), np.load(db / "test_predictions.npz")
    np.testing.assert_array_equal(pa["probs"], pb["probs"])


def test_other_seed_gives_other_metrics(twice):
    (oa, sa, ra, da), (o1, s1, r1, d1) = twice["a"], twice["seed1"]
    assert ra != r1
    va = {(s, sp, n): v for s, sp, n, v in sa.metrics(ra)}
    v1 = {(s, sp, n): v for s, sp, n, v in s1.metrics(r1)}
    assert set(va) == set(v1)
    assert va[(6, "train", "loss")] != v1[(6, "train", "loss")]
    assert va[(0, "val", "loss")] != v1[(0, "val", "loss")]  # another initialisation
    assert not torch.equal(_state(da / "init.pt")["stem.0.weight"], _state(d1 / "init.pt")["stem.0.weight"])


def test_checkpoints(twice):
    outcome, store, rid, d = twice["a"]
    init, best, last = (_state(d / f) for f in ("init.pt", "best.pt", "last.pt"))
    assert torch.load(d / "init.pt", weights_only=True)["step"] == 0
    assert torch.load(d / "last.pt", weights_only=True)["step"] == 12
    assert torch.load(d / "best.pt", weights_only=True)["step"] == outcome.record.summary["best_step"]
    assert outcome.record.summary["best_step"] in (6, 12)
    assert list(init) == list(last) == list(best)
    # keys are the unwrapped model's own
    model = create_model("cbr_tiny", spatial_dims=2, in_channels=1, num_classes=2)
    assert list(init) == list(model.state_dict())
    model.load_state_dict(last)
    changed = [k for k in init if init[k].is_floating_point() and not torch.equal(init[k], last[k])]
    assert "stem.0.weight" in changed and "fc.weight" in changed
    # BatchNorm batch counters count the steps taken
    assert int(last["stem.1.num_batches_tracked"]) == 12 and int(init["stem.1.num_batches_tracked"]) == 0
    assert not list(d.glob("*.tmp"))  # atomic writes left nothing behind
    # Predictions saved for the test split come from the best checkpoint
    preds = np.load(d / "test_predictions.npz")
    n_test = outcome.record.data_info["split_sizes"]["test"]
    assert preds["probs"].shape == (n_test, 2) and preds["targets"].shape == (n_test,)
    np.testing.assert_allclose(preds["probs"].sum(1), 1.0, rtol=1e-5)


def test_finished_run_is_not_repeated(twice):
    outcome, store, rid, d = twice["a"]
    mtime = (d / "last.pt").stat().st_mtime_ns
    again = train_run(make_spec(), workspace=store.workspace, device="cpu", progress=False)
    assert again.skipped and again.record.run_id == rid
    assert again.test == store.final_metrics(rid)
    assert (d / "last.pt").stat().st_mtime_ns == mtime


def test_run_record(twice):
    outcome, store, rid, d = twice["a"]
    r = outcome.record
    assert r.status == "finished" and r.model_info["spatial_dims"] == 2  # taken from the data
    assert r.model_info["name"] == "cbr_tiny"
    assert [s["name"] for s in r.model_info["stages"]] == ["stem", "block1", "block2", "block3", "head"]
    assert r.data_info["task"] == "multiclass" and r.data_info["in_channels"] == 1
    assert r.summary["steps"] == 12 and r.summary["examples_per_second"] > 0
    lr_rows = {s: v for s, sp, n, v in store.metrics(rid, split="train") if n == "lr"}
    f = lr_lambda(TrainSpec(steps=12, schedule="cosine"), 12)
    assert lr_rows[6] == pytest.approx(0.05 * f(6)) and lr_rows[12] == pytest.approx(0.05 * f(12))


# -- learning ------------------------------------------------------------------------------------
def test_learns_separable_task(tmp_path):
    spec = make_spec(steps=30, eval_every=10, lr=0.05, dataset="binary@240")
    out = train_run(spec, workspace=tmp_path, device="cpu", progress=False)
    store = Store(tmp_path)
    val = {s: v for s, sp, n, v in store.metrics(out.record.run_id, split="val") if n == "auc"}
    assert max(val[s] for s in (10, 20, 30)) > 0.9
    assert out.test["auc"] > 0.9 and out.test["acc"] > 0.75
    losses = {s: v for s, sp, n, v in store.metrics(out.record.run_id, split="val") if n == "loss"}
    assert losses[30] < losses[0]


def test_multilabel_with_masks(tmp_path):
    spec = make_spec(dataset="multilabel@240", steps=30, eval_every=15, optimizer="adam", lr=3e-3)
    data = load_dataset(spec.data)
    assert data.info.task == "multilabel" and data.info.num_classes == 3
    _, y, m = data.train[0]
    assert y.shape == m.shape == (3,) and y.dtype == torch.float32
    all_m = torch.stack([data.train[i][2] for i in range(len(data.train))])
    all_y = torch.stack([data.train[i][1] for i in range(len(data.train))])
    assert 0.1 < (all_m == 0).float().mean() < 0.3  # uncertain labels are masked ...
    assert (all_y[all_m == 0] == 0).all()  # ... and zero-filled under "ignore"
    out = train_run(spec, workspace=tmp_path, device="cpu", progress=False)
    assert set(out.test) >= {"loss", "auc", "acc", "auc/a", "auc/b", "auc/c"}
    assert all(math.isfinite(out.test[k]) for k in ("loss", "auc", "auc/a", "auc/b", "auc/c"))
    assert out.test["auc"] > 0.8
    preds = np.load(Store(tmp_path).run_dir(out.record.run_id) / "test_predictions.npz")
    assert preds["probs"].shape[1] == 3 and ((preds["probs"] > 0) & (preds["probs"] < 1)).all()


def test_masked_labels_add_nothing_to_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(5, 3)
    y = (torch.rand(5, 3) > 0.5).float()
    m = torch.ones(5, 3)
    m[0, 1] = m[3, 2] = 0
    base = loss_fn(logits, y, m, "multilabel")
    y2 = y.clone()
    y2[0, 1], y2[3, 2] = 1 - y2[0, 1], 1 - y2[3, 2]  # flip only masked labels
    assert loss_fn(logits, y2, m, "multilabel") == pytest.approx(base.item())
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    assert base.item() == pytest.approx((per * m).sum().item() / 13)
    assert loss_fn(logits, y, torch.zeros(5, 3), "multilabel").item() == 0.0
    assert loss_fn(logits, torch.tensor([0, 1, 2, 0, 1]), torch.ones(5), "multiclass").item() == \
        pytest.approx(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1])).item())


# -- schedules and optimisers --------------------------------------------------------------------
def test_lr_cosine_endpoints():
    f = lr_lambda(TrainSpec(steps=100, schedule="cosine"), 100)
    assert f(0) == 1.0
    assert f(50) == pytest.approx(0.5)
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    vals = [f(s) for s in range(101)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))


def test_lr_step_decays_at_half_and_three_quarters():
    f = lr_lambda(TrainSpec(steps=100, schedule="step"), 100)
    assert [f(s) for s in (0, 49)] == [1.0, 1.0]
    assert [f(s) for s in (50, 74)] == pytest.approx([0.1, 0.1])
    assert [f(s) for s in (75, 99)] == pytest.approx([0.01, 0.01])


def test_lr_linear_and_constant():
    lin = lr_lambda(TrainSpec(steps=10, schedule="linear"), 10)
    assert [lin(s) for s in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    const = lr_lambda(TrainSpec(steps=10, schedule="constant"), 10)
    assert {const(s) for s in range(11)} == {1.0}


def test_lr_warmup():
    spec = TrainSpec(steps=110, schedule="cosine", warmup_steps=10)
    f = lr_lambda(spec, 110)
    assert [f(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f(10) == 1.0  # warm-up done: the schedule starts from its peak
    assert f(60) == pytest.approx(0.5)
    assert f(110) == pytest.approx(0.0, abs=1e-12)
    g = lr_lambda(TrainSpec(steps=40, schedule="step", warmup_steps=20), 40)
    assert g(0) == pytest.approx(0.05) and g(20) == 1.0 and g(30) == pytest.approx(0.1)


def test_schedule_drives_the_optimizer():
    model = torch.nn.Linear(2, 2)
    spec = TrainSpec(steps=8, schedule="step", lr=0.4, optimizer="sgd")
    opt = make_optimizer(model, spec)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec, 8))
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.4] * 4 + [0.04] * 2 + [0.004] * 2)


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                      ("adamw", torch.optim.AdamW)])
def test_optimizers(name, cls):
    model = create_model("cbr_tiny", in_channels=1, num_classes=2)
    spec = TrainSpec(optimizer=name, lr=0.03, weight_decay=5e-4, momentum=0.8)
    opt = make_optimizer(model, spec)
    assert type(opt) is cls
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each parameter exactly once
    assert all(g["lr"] == 0.03 for g in opt.param_groups)
    if name == "sgd":
        assert decay["momentum"] == 0.8 and decay["nesterov"] is True
    # one step changes the weights
    before = model.fc.weight.detach().clone()
    model(torch.randn(4, 1, 16, 16)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.fc.weight)


def test_sgd_without_momentum_is_plain_sgd():
    opt = make_optimizer(torch.nn.Linear(2, 2), TrainSpec(optimizer="sgd", momentum=0.0))
    assert opt.param_groups[0]["nesterov"] is False


# -- failures ------------------------------------------------------------------------------------
def test_nan_loss_raises_and_marks_run_failed(tmp_path):
    spec = make_spec(steps=4, eval_every=2, lr=1e30, schedule="constant", momentum=0.0,
                     weight_decay=0.0)
    with pytest.raises(FloatingPointError, match=r"train\.lr=1e\+30"):
        train_run(spec, workspace=tmp_path, device="cpu", progress=False)
    store = Store(tmp_path)
    (rec,) = store.list_runs()
    rid = rec.run_id
    r = store.get_run(rid)
    assert r.status == "failed" and "diverged" in r.error and "at step" in r.error and "lr" in r.error
    assert not (store.run_dir(rid) / "last.pt").exists()


def test_fit_directly_on_prepared_data(tmp_path):
    spec = make_spec(steps=5, eval_every=100)
    data = load_dataset(spec.data)
    torch.manual_seed(0)
    model = create_model("cbr_tiny", in_channels=1, num_classes=2)
    logged = []
    res = fit(model, data, spec.train, seed=0, device="cpu", run_dir=tmp_path / "r",
              log=lambda s, sp, m: logged.append((s, sp)), progress=False)
    # eval_every > steps: evaluated at step 0 and at the end only
    assert logged == [(0, "val"), (5, "train"), (5, "val")]
    assert [(s, sp) for s, sp, _ in res.history] == logged
    assert res.steps == 5 and res.best_step == 5
    assert res.examples_per_second > 0 and res.train_seconds > 0
    assert set(res.test) >= {"loss", "auc", "acc", "auc/neg", "auc/pos"}
    assert (tmp_path / "r" / "best.pt").exists()


def test_epochs_set_the_step_count(tmp_path):
    spec = make_spec(steps=None, epochs=2, batch_size=32, eval_every=1000)
    data = load_dataset(spec.data)
    model = create_model("cbr_tiny", in_channels=1, num_classes=2)
    res = fit(model, data, spec.train, device="cpu", progress=False)
    assert res.steps == 2 * (len(data.train) // 32)


def test_train_seconds_exclude_evaluation(tmp_path, monkeypatch):
    import time as _time

    import transfuse.train.loop as loop

    real_evaluate = loop.evaluate
    calls = []

    def slow_evaluate(*a, **kw):
        calls.append(1)
        _time.sleep(0.3)
        return real_evaluate(*a, **kw)

    monkeypatch.setattr(loop, "evaluate", slow_evaluate)
    spec = make_spec(steps=4, eval_every=1)
    data = load_dataset(spec.data)
    model = create_model("cbr_tiny", in_channels=1, num_classes=2)
    t0 = _time.perf_counter()
    res = fit(model, data, spec.train, device="cpu", run_dir=tmp_path / "r", progress=False)
    wall = _time.perf_counter() - t0
    assert len(calls) == 6  # step 0, steps 1-4, test
    assert wall > 1.8
    assert 0 < res.train_seconds < wall - 1.5  # the 4 in-loop evaluations (1.2 s of sleep) are not training
    assert res.examples_per_second == pytest.approx(4 * 16 / res.train_seconds)
