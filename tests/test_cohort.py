"""Cohorts (issue 27): runs that differ only in seed and init, trained as one vectorised model,
end as their solo runs do — in float64 within 1e-10 after 10 steps (CBR-Tiny: full, linear_probe,
freeze:block1; EfficientNet-Lite0: one step) — and are stored as their solo runs would be: same
run id, metrics.csv, test predictions, init report; a diverging member fails alone; a cohort
resumes from its members' ``resume.pt``, which a member can also resume alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from transfuse.config import DataSpec, InitSpec, ModelSpec, RunSpec, TrainSpec, run_id
from transfuse.data.base import ArrayDataset, DatasetInfo, PreparedData
from transfuse.inits import INITS, apply_init
from transfuse.inits.base import Action, register_init
from transfuse.models import create_model
from transfuse.store import Store
from transfuse.train.cohort import Member, cohort_refusal, fit_cohort
from transfuse.train.device import seed_everything
from transfuse.train.loop import evaluate, fit
from transfuse.train.resume import RESUME_FILE

SIDE = 8
COMBOS = [("random", 1), ("random", 2), ("gabor", 1), ("gabor", 2)]  # two inits × two seeds


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Tiny tensors: one intra-op thread (see conftest)."""


def _data(dtype=torch.float64, side=SIDE, n=(32, 16, 16)) -> PreparedData:
    g = torch.Generator().manual_seed(0)

    def split(k: int) -> ArrayDataset:
        x = torch.randn(k, 1, side, side, generator=g, dtype=dtype)
        y = torch.arange(k) % 3
        h = side // 2
        x[y == 1, :, :h, :h] += 1
        x[y == 2, :, h:, h:] += 1
        return ArrayDataset(x, y, torch.ones(k))

    info = DatasetInfo(name="synth", task="multiclass", class_names=("a", "b", "c"),
                       spatial_dims=2, in_channels=1, image_shape=(side, side))
    return PreparedData(info, split(n[0]), split(n[1]), split(n[2]))


def _model(init: str, seed: int, name: str = "cbr_tiny", dtype=torch.float64) -> torch.nn.Module:
    """Built and initialised as train_run does it."""
    seed_everything(seed)
    m = create_model(name, spatial_dims=2, in_channels=1, num_classes=3).to(dtype)
    apply_init(m, InitSpec(name=init), source=None, seed=seed)
    return m


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Global relative norm of the difference of two state dicts (floating tensors)."""
    keys = [k for k in b if b[k].is_floating_point()]
    num = sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys) ** 0.5
    den = sum((b[k].double() ** 2).sum() for k in keys) ** 0.5
    return float(num / den)


def _last(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["state_dict"]


@pytest.mark.parametrize("finetune,extra", [
    ("full", {}), ("linear_probe", {}), ("freeze:block1", {}),
    # LP-FT's switch adds groups mid-run; per-stage learning rates; AdamW's per-element state
    ("lpft:4", {"layer_decay": 0.5, "head_lr_mult": 2.0, "optimizer": "adamw", "lr": 0.01})])
def test_cohort_of_four_equals_its_solo_runs_in_float64(tmp_path, finetune, extra):
    data = _data()
    spec = TrainSpec(**{**dict(steps=10, batch_size=4, eval_every=5, lr=0.05, amp=False,
                               finetune=finetune), **extra})
    res = fit_cohort([Member(_model(i, s), s, tmp_path / f"c-{i}-{s}") for i, s in COMBOS],
                     data, spec, device="cpu", progress=False)
    for (init, seed), r in zip(COMBOS, res):
        solo = fit(_model(init, seed), data, spec, seed=seed, device="cpu",
                   run_dir=tmp_path / f"s-{init}-{seed}", progress=False)
        c, s = _last(tmp_path / f"c-{init}-{seed}"), _last(tmp_path / f"s-{init}-{seed}")
        assert c.keys() == s.keys()
        assert _rel(c, s) < 1e-10, (init, seed, _rel(c, s))
        assert all(torch.equal(c[k], s[k]) for k in s if "num_batches_tracked" in k)
        assert r.best_step == solo.best_step and r.steps == solo.steps == 10
        # the same weights evaluated batched and alone: identical metrics (float64)
        assert r.test.keys() == solo.test.keys()
        assert all(r.test[k] == solo.test[k] for k in r.test if k != "loss"), (r.test, solo.test)
        assert r.test["loss"] == pytest.approx(solo.test["loss"], rel=1e-10)
        assert [(st, sp) for st, sp, _ in r.history] == [(st, sp) for st, sp, _ in solo.history]
        init_sd = torch.load(tmp_path / f"c-{init}-{seed}" / "init.pt", weights_only=True)["state_dict"]
        frozen = {"linear_probe": ("stem", "block"), "freeze:block1": ("stem", "block1")}.get(finetune, ())
        params = dict(_model(init, seed).named_parameters())
        for k in params:  # frozen parameters stay bit-identical; trained ones move
            if k.startswith(frozen):
                assert torch.equal(c[k], init_sd[k]), k
        assert any(not torch.equal(c[k], init_sd[k]) for k in params if not k.startswith(frozen))
        assert not (tmp_path / f"c-{init}-{seed}" / RESUME_FILE).exists()


def test_efficientnet_lite0_cohort_one_step_equals_solo(tmp_path):
    pytest.importorskip("timm")
    data = _data(side=32, n=(8, 4, 4))
    spec = TrainSpec(steps=1, batch_size=4, eval_every=1, lr=0.05, amp=False)
    combos = [("random", 1), ("random", 2)]
    fit_cohort([Member(_model(i, s, "timm:efficientnet_lite0"), s, tmp_path / f"c{s}")
                for i, s in combos], data, spec, device="cpu", progress=False)
    for init, seed in combos:
        fit(_model(init, seed, "timm:efficientnet_lite0"), data, spec, seed=seed, device="cpu",
            run_dir=tmp_path / f"s{seed}", progress=False)
        rel = _rel(_last(tmp_path / f"c{seed}"), _last(tmp_path / f"s{seed}"))
        assert rel < 1e-10, rel


def test_interrupted_cohort_resumes_whole_and_a_member_resumes_alone(tmp_path):
    data = _data()
    spec = TrainSpec(steps=10, batch_size=4, eval_every=5, lr=0.05, amp=False)
    combos = COMBOS[:2]

    class Stop(KeyboardInterrupt):
        pass

    def stopper(step, split, metrics):
        if step == 5 and split == "val":
            raise Stop()

    full = fit_cohort([Member(_model(i, s), s, tmp_path / f"u{s}") for i, s in combos], data, spec,
                      device="cpu", progress=False)
    members = [Member(_model(i, s), s, tmp_path / f"k{s}", log=stopper if s == 2 else None)
               for i, s in combos]
    with pytest.raises(Stop):  # dies at step 5's evaluation: its last checkpoint is step 3's
        fit_cohort(members, data, dataclasses.replace(spec, checkpoint_every=3), device="cpu",
                   progress=False)
    for s in (1, 2):
        ck = torch.load(tmp_path / f"k{s}" / RESUME_FILE, weights_only=True)
        assert ck["step"] == 3 and set(ck) >= {"model", "optimizer", "scheduler", "stream", "rng"}
    # the whole cohort resumes from step 3 and ends bit for bit as the uninterrupted one
    again = fit_cohort([Member(_model(i, s), s, tmp_path / f"k{s}") for i, s in combos], data,
                       dataclasses.replace(spec, checkpoint_every=3), device="cpu", progress=False)
    for (i, s), a, b in zip(combos, again, full):
        assert a.resumed_from == 3
        assert _rel(_last(tmp_path / f"k{s}"), _last(tmp_path / f"u{s}")) == 0.0
        assert a.test == b.test
    # a member's resume.pt is fit()'s own format: member 1 killed again resumes alone
    with pytest.raises(Stop):
        fit_cohort([Member(_model(i, s), s, tmp_path / f"m{s}", log=stopper if s == 2 else None)
                    for i, s in combos], data, dataclasses.replace(spec, checkpoint_every=3),
                   device="cpu", progress=False)
    solo = fit(_model(*combos[0]), data, dataclasses.replace(spec, checkpoint_every=3), seed=1,
               device="cpu", run_dir=tmp_path / "m1", progress=False)
    assert solo.resumed_from == 3
    assert _rel(_last(tmp_path / "m1"), _last(tmp_path / "u1")) < 1e-10


@pytest.mark.parametrize("phase", ["write", "rename"])
def test_a_kill_inside_a_cohort_checkpoint_leaves_one_step_for_all(tmp_path, monkeypatch, phase):
    """A kill while the cohort writes its members' checkpoints (between two members' files, or
    between two renames) is settled before the rerun: every member resumes from the same step —
    the previous checkpoint (writing cut short) or the new one (renaming begun) — as one cohort,
    and ends bit for bit as the uninterrupted cohort."""
    import transfuse.train.resume as resume

    data = _data()
    spec = TrainSpec(steps=10, batch_size=4, eval_every=5, lr=0.05, amp=False, checkpoint_every=3)
    combos = COMBOS[:3]
    full = fit_cohort([Member(_model(i, s), s, tmp_path / f"u{i}{s}") for i, s in combos], data,
                      spec, device="cpu", progress=False)

    class Kill(BaseException):
        pass

    calls = {"n": 0}
    target = resume.save_resume if phase == "write" else resume.promote

    def dies_on_second_call_at_step_6(*args, **kwargs):
        if phase == "write":  # save_resume(path, state): the second member's file at step 6
            counted = args[1]["step"] == 6
        else:  # promote(pending, path): step 3's 3 renames, then the second of step 6
            counted = True
        calls["n"] += counted
        if counted and calls["n"] == (2 if phase == "write" else 5):
            raise Kill()
        return target(*args, **kwargs)

    if phase == "write":
        monkeypatch.setattr(resume, "save_resume", dies_on_second_call_at_step_6)
    else:
        monkeypatch.setattr(resume, "promote", dies_on_second_call_at_step_6)
    dirs = [tmp_path / f"k{i}{s}" for i, s in combos]
    with pytest.raises(Kill):
        fit_cohort([Member(_model(i, s), s, d) for (i, s), d in zip(combos, dirs)], data, spec,
                   device="cpu", progress=False)
    monkeypatch.undo()
    steps = [torch.load(d / RESUME_FILE, weights_only=True)["step"] for d in dirs]
    pending = [(d / resume.RESUME_NEXT).exists() for d in dirs]
    if phase == "write":  # member 0's new file pending, every resume.pt still at step 3
        assert steps == [3, 3, 3] and pending == [True, False, False]
    else:  # member 0 renamed to step 6; members 1 and 2 pending at step 6
        assert steps == [6, 3, 3] and pending == [False, True, True]
    assert resume.settle_cohort_resume(dirs) == ("discarded" if phase == "write" else "committed")
    want = 3 if phase == "write" else 6
    assert [torch.load(d / RESUME_FILE, weights_only=True)["step"] for d in dirs] == [want] * 3
    assert not any((d / resume.RESUME_NEXT).exists() for d in dirs)
    assert resume.settle_cohort_resume(dirs) is None  # nothing pending now
    again = fit_cohort([Member(_model(i, s), s, d) for (i, s), d in zip(combos, dirs)], data,
                       spec, device="cpu", progress=False)
    for (i, s), d, a, b in zip(combos, dirs, again, full):
        assert a.resumed_from == want
        assert _rel(_last(d), _last(tmp_path / f"u{i}{s}")) == 0.0
        assert a.test == b.test
        assert not (d / RESUME_FILE).exists() and not (d / resume.RESUME_NEXT).exists()


def test_cohort_refuses_settings_it_does_not_implement(monkeypatch):
    import transfuse.train.cohort as cohort

    assert cohort_refusal(TrainSpec()) is None
    assert "segmentation" in cohort_refusal(TrainSpec(), task="segmentation")
    monkeypatch.setattr(cohort, "COHORT_TRAIN_KEYS", cohort.COHORT_TRAIN_KEYS - {"augment"})
    assert cohort_refusal(TrainSpec()) is None  # at its default, an unknown setting is harmless
    assert cohort_refusal(TrainSpec(augment="basic")) == "train.augment is not implemented for cohorts"
    with pytest.raises(Exception, match="cannot train as a cohort: train.augment"):
        fit_cohort([], _data(), TrainSpec(augment="basic"))


# --- stored runs ----------------------------------------------------------------------------

BLOWUP = "test_cohort_blowup"


@pytest.fixture()
def blowup_init():
    """An init that scales every weight by 1e30: float32 overflows, the run diverges."""

    def blowup(state, source, ctx):
        out = {}
        for k in sorted(ctx.eligible):
            if state[k].is_floating_point() and state[k].ndim > 1:
                state[k] = state[k] * 1e30
                out[k] = Action("adapted", "×1e30")
        return out

    register_init(BLOWUP, description="test only")(blowup)
    yield BLOWUP
    INITS._entries.pop(BLOWUP, None)


def _spec(init: str, seed: int, **train) -> RunSpec:
    t = dict(steps=6, batch_size=8, lr=0.05, eval_every=3, amp=False)
    t.update(train)
    return RunSpec(data=DataSpec(name="builtin:brain_tissue", n_train=32, image_size=8),
                   model=ModelSpec("cbr_tiny"), init=InitSpec(name=init), train=TrainSpec(**t),
                   seed=seed, study="cohort-test")


def _run_cohort(specs: list[RunSpec], ws: Path) -> list[tuple[str, str, str]]:
    """As a study worker runs a cohort: members that cannot join train alone."""
    from transfuse.study.task import CohortTask, execute_any

    return execute_any(CohortTask(tuple(s.to_dict() for s in specs), str(ws), "cpu", 1))


def test_stored_cohort_members_are_their_solo_runs(tmp_path, blowup_init):
    from transfuse.run import train_run

    specs = [_spec(i, s) for i, s in COMBOS] + [_spec(blowup_init, 3, lr=10.0)]
    ws = tmp_path / "ws"
    out = _run_cohort(specs, ws)
    assert [o[0] for o in out] == [run_id(s) for s in specs]
    # the blow-up member has its own lr: it cannot fuse, trains alone and fails as alone
    assert [o[1] for o in out] == ["finished"] * 4 + ["failed"], out
    assert "diverged" in out[4][2]
    store = Store(ws)
    solo_ws = tmp_path / "solo"
    for spec in specs[:4]:
        rid = run_id(spec)
        rec = store.get_run(rid)
        assert rec.state == "finished" and rec.env["cohort"] == 4
        run_dir = store.run_dir(rid)
        for f in ("metrics.csv", "test_predictions.npz", "init.pt", "best.pt", "last.pt"):
            assert (run_dir / f).is_file(), f
        assert not (run_dir / RESUME_FILE).exists()
        assert rec.init_report["tensors"] if "tensors" in rec.init_report else rec.init_report
        solo = train_run(spec, workspace=solo_ws, device="cpu", progress=False)
        assert "cohort" not in solo.record.env
        # fp32: the same training within rounding; the same data order and best step
        assert store.final_metrics(rid)["auc"] == pytest.approx(solo.test["auc"], abs=0.02)
        # evaluating the stored best weights alone gives the stored metrics
        from transfuse.data import load_dataset

        data = load_dataset(spec.data)
        model = create_model("cbr_tiny", spatial_dims=2, in_channels=data.info.in_channels,
                             num_classes=data.info.num_classes)
        model.load_state_dict(torch.load(run_dir / "best.pt", weights_only=True)["state_dict"])
        from torch.utils.data import DataLoader

        metrics, probs = evaluate(model, DataLoader(data.test, batch_size=256), data=data,
                                  device=torch.device("cpu"), amp=False)
        stored = store.final_metrics(rid)
        solo_keys = set(solo.test)
        assert set(stored) == solo_keys and "auc" in stored  # clinical metrics (ece, brier) too
        for k in stored.keys() & metrics.keys():  # fp32: batched evaluation rounds differently
            assert metrics[k] == pytest.approx(stored[k], abs=1e-3), k
        np.testing.assert_allclose(np.load(run_dir / "test_predictions.npz")["probs"], probs,
                                   atol=1e-5)
    assert store.get_run(run_id(specs[4])).state == "failed"


def test_a_diverging_member_fails_alone(tmp_path, blowup_init):
    specs = [_spec("random", 1, lr=2.0), _spec(blowup_init, 2, lr=2.0), _spec("random", 3, lr=2.0)]
    ws = tmp_path / "ws"
    out = _run_cohort(specs, ws)
    assert [o[1] for o in out] == ["finished", "failed", "finished"], out
    assert "diverged" in out[1][2] and "stored as failed" in out[1][2]
    store = Store(ws)
    assert store.get_run(run_id(specs[1])).state == "failed"
    assert store.get_run(run_id(specs[0])).env["cohort"] == 3
    assert not (store.run_dir(run_id(specs[1])) / RESUME_FILE).exists()
