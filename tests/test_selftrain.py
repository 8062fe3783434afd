"""Self-training chains: pseudo-label rules, noise, store linkage, resumption, report, CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from transfuse import Store
from transfuse.cli import main
from transfuse.config import DataSpec, ModelSpec, RunSpec, TrainSpec, run_id, spec_from_dict
from transfuse.data import RawData, SplitArrays, load_dataset, register_dataset
from transfuse.errors import ConfigError, DataError
from transfuse.selftrain import (PseudoSpec, apply_stochastic_depth, baseline_specs,
                                 chain_from_dict, labelled_indices, load_chain, load_run_model,
                                 make_augment, pseudo_label_quality, run_chain,
                                 select_pseudo_labels, student_spec, teacher_logits,
                                 teacher_probs, teacher_spec)
from transfuse.selftrain import chain as chain_mod
from transfuse.selftrain.noise import _Renormalised
from transfuse.report.selftrain import chain_rows, chain_verdict, selftrain_section


# -- tiny real-shaped data: class-dependent bright regions plus noise ------------------------------
def _toy(spec: DataSpec, arg: str) -> RawData:
    rng = np.random.default_rng(0)
    if arg == "mc2d":  # 3 classes, 1x8x8: class c lights up column band c
        def split(n: int) -> SplitArrays:
            y = rng.integers(0, 3, n)
            x = rng.integers(0, 60, (n, 1, 8, 8))
            for i, c in enumerate(y):
                x[i, 0, :, 2 * c:2 * c + 3] += 150
            return SplitArrays(x.astype(np.uint8), y, f"toy:{arg}")
        return RawData("multiclass", ("a", "b", "c"), 2,
                       {"train": split(240), "val": split(48), "test": split(60)})
    # 2-label 3D, 1x8x8x8 float in 0..1: label j lights up half j of the volume
    def split3(n: int) -> SplitArrays:
        y = rng.integers(0, 2, (n, 2))
        x = rng.random((n, 1, 8, 8, 8)) * 0.3
        for i in range(n):
            for j in range(2):
                if y[i, j]:
                    x[i, 0, :, :, 4 * j:4 * j + 4] += 0.6
        return SplitArrays(x.astype(np.float32), y, f"toy:{arg}")
    return RawData("multilabel", ("left", "right"), 3,
                   {"train": split3(120), "val": split3(32), "test": split3(32)})


register_dataset("selftraintoy", description="test-only toy data")(_toy)

TRAIN = {"steps": 6, "lr": 0.05, "batch_size": 16, "eval_every": 3, "amp": False}


def _chain(name: str, *, data: str = "selftraintoy:mc2d", gens: int = 2, mode: str = "hard",
           finetune: dict | None = None, **extra) -> dict:
    return {"name": name, "base": {"data": {"name": data}, "model": {"name": "cbr_tiny"},
                                   "train": TRAIN},
            "labelled_fraction": 0.1, "generations": gens, "seeds": [0],
            "pseudo": {"mode": mode, "threshold": 0.0, "balance": True},
            "student": {"train": {"steps": 6}, "finetune": finetune,
                        "noise": {"magnitude": 5, "dropout": 0.3}}, **extra}


# -- run ids ---------------------------------------------------------------------------------------
def test_parent_field_leaves_existing_run_ids_and_round_trips():
    spec = RunSpec(data=DataSpec(name="medmnist:pneumoniamnist@28", fraction=0.01),
                   model=ModelSpec(name="cbr_tiny"), train=TrainSpec(steps=10), seed=3, study="x")
    assert run_id(spec) == "5e0be45c3d27"  # the id this spec had before `parent` existed
    assert "parent" not in spec.to_dict() and "parent" not in spec.to_json()
    child = spec_from_dict({**spec.to_dict(), "parent": {"teacher": run_id(spec), "generation": 1}})
    other = spec_from_dict({**spec.to_dict(), "parent": {"teacher": "0" * 12, "generation": 1}})
    assert len({run_id(spec), run_id(child), run_id(other)}) == 3
    assert spec_from_dict(child.to_dict()) == child and run_id(spec_from_dict(child.to_dict())) == run_id(child)
    hash(child)  # specs stay hashable


# -- pseudo-labels ---------------------------------------------------------------------------------
def _logits(probs: list[list[float]]) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float64))


def test_threshold_keeps_only_confident_examples():
    lg = _logits([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8], [0.35, 0.65], [0.05, 0.95]])
    sel = select_pseudo_labels(lg, task="multiclass",
                               spec=PseudoSpec(mode="hard", threshold=0.7, balance=False))
    assert sel.indices.tolist() == [0, 2, 4] and sel.targets.tolist() == [0, 1, 1]
    none = select_pseudo_labels(lg, task="multiclass",
                                spec=PseudoSpec(mode="hard", threshold=0.99, balance=False))
    assert len(none) == 0


def test_soft_targets_are_tempered_teacher_probabilities():
    rng = np.random.default_rng(1)
    lg = rng.normal(size=(20, 4)) * 3
    p = teacher_probs(lg, task="multiclass")
    soft1 = select_pseudo_labels(lg, task="multiclass", spec=PseudoSpec(mode="soft", balance=False))
    np.testing.assert_allclose(soft1.targets, p, rtol=1e-5)
    soft2 = select_pseudo_labels(lg, task="multiclass",
                                 spec=PseudoSpec(mode="soft", temperature=2.0, balance=False))
    sharp = p ** 0.5 / (p ** 0.5).sum(1, keepdims=True)  # Noisy Student: p^(1/T), renormalised
    np.testing.assert_allclose(soft2.targets, sharp, rtol=1e-5)
    np.testing.assert_allclose(soft2.targets.sum(1), 1, rtol=1e-6)
    ent = lambda q: -(q * np.log(q)).sum(1)  # noqa: E731
    assert (ent(soft2.targets) > ent(soft1.targets)).all()  # higher T is flatter
    assert soft2.targets.dtype == np.float32 and soft2.targets.shape == (20, 4)


def test_balancing_top_k_and_duplication():
    # class 0: 10 candidates with confidences 0.6..0.95; class 1: 3 candidates
    p0 = np.linspace(0.6, 0.95, 10)
    probs = [[a, 1 - a] for a in p0] + [[0.2, 0.8], [0.3, 0.7], [0.1, 0.9]]
    lg = _logits(probs)
    spec = PseudoSpec(mode="hard", per_class=5, balance=True)
    sel = select_pseudo_labels(lg, task="multiclass", spec=spec, seed=0)
    c0, c1 = sel.indices[sel.targets == 0], sel.indices[sel.targets == 1]
    assert sorted(c0.tolist()) == [5, 6, 7, 8, 9]  # the five most confident of class 0
    assert len(c1) == 5 and set(c1.tolist()) == {10, 11, 12}  # all three, duplicated up to 5
    counts = np.bincount(c1 - 10)
    assert counts.min() >= 1 and counts.max() == 2
    again = select_pseudo_labels(lg, task="multiclass", spec=spec, seed=0)
    assert np.array_equal(again.indices, sel.indices)  # reproducible from the seed
    capped = select_pseudo_labels(lg, task="multiclass",
                                  spec=PseudoSpec(mode="hard", per_class=5, balance=False))
    assert (capped.targets == 1).sum() == 3 and (capped.targets == 0).sum() == 5
    to_max = select_pseudo_labels(lg, task="multiclass", spec=PseudoSpec(mode="hard", balance=True))
    assert (to_max.targets == 0).sum() == (to_max.targets == 1).sum() == 10


def test_balancing_reports_a_class_with_no_candidate():
    lg = _logits([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.8, 0.1]])
    sel = select_pseudo_labels(lg, task="multiclass", spec=PseudoSpec(mode="hard"))
    assert sel.empty_groups == (2,) and np.bincount(sel.targets).tolist() == [2, 2]
    q = pseudo_label_quality(sel, lg, true_targets=np.array([0, 1, 1]),
                             true_masks=np.ones(3), task="multiclass", class_names=("x", "y", "z"))
    assert q["empty_classes"] == ["z"] and q["per_class"] == {"x": 2, "y": 2, "z": 0}
    assert q["pseudo_acc"] == pytest.approx(2 / 3) and q["pool_acc"] == pytest.approx(2 / 3)
    assert q["pseudo_acc_weighted"] == pytest.approx(3 / 4) and q["n_unique"] == 3


def test_multilabel_masks_unconfident_labels_and_balances_with_none_group():
    p = np.array([[0.95, 0.6], [0.9, 0.05], [0.02, 0.03], [0.04, 0.97], [0.5, 0.5]])
    lg = np.log(p / (1 - p))
    sel = select_pseudo_labels(lg, task="multilabel",
                               spec=PseudoSpec(mode="hard", threshold=0.8, balance=False))
    assert sel.indices.tolist() == [0, 1, 2, 3]  # example 4 is confident about nothing
    assert sel.masks.tolist() == [[1, 0], [1, 1], [1, 1], [1, 1]]
    assert sel.targets.tolist() == [[1, 1], [1, 0], [0, 0], [0, 1]]
    bal = select_pseudo_labels(lg, task="multilabel",
                               spec=PseudoSpec(mode="soft", threshold=0.8, per_class=2))
    # label 0: {0, 1}; label 1: {3} twice; none: {2} twice
    assert np.bincount(bal.groups).tolist() == [2, 2, 2]
    assert sorted(bal.indices.tolist()) == [0, 1, 2, 2, 3, 3]
    assert ((bal.targets > 0) & (bal.targets < 1)).all()
    q = pseudo_label_quality(sel, lg, true_targets=np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1]]),
                             true_masks=np.ones((5, 2)), task="multilabel")
    # confident entries right: ex0 1/1, ex1 2/2, ex2 1/2, ex3 2/2
    assert q["pseudo_acc"] == pytest.approx(np.mean([1, 1, 0.5, 1]))


# -- noise and the teacher -------------------------------------------------------------------------
class _Spy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.drop, self.seen = nn.Linear(16, 3), nn.Dropout(0.9), []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(self.training)
        return self.fc(self.drop(x.flatten(1)))


def test_teacher_labels_in_eval_mode_without_noise():
    model = _Spy().train()  # left in training mode by whoever trained it
    x = torch.randn(10, 1, 4, 4)
    ds = torch.utils.data.TensorDataset(x, torch.zeros(10), torch.ones(10))
    a = teacher_logits(model, ds, batch_size=4)
    b = teacher_logits(model, ds, batch_size=7)
    assert model.seen and not any(model.seen) and not model.training
    np.testing.assert_allclose(a, b, rtol=1e-6)  # dropout 0.9 would make these differ
    np.testing.assert_allclose(a, model.fc(x.flatten(1)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_renormalised_ops_keep_the_pixel_range_and_augment_is_reproducible():
    mean, std = [0.4], [0.2]
    x = (torch.rand(1, 12, 12) - 0.4) / 0.2
    ident = _Renormalised(lambda t: t, mean, std, 2, uint8=True)
    assert (ident(x) - x).abs().max() <= 0.5 / 255 / 0.2 + 1e-6  # uint8 round trip only
    aug = make_augment(spatial_dims=2, mean=mean, std=std, ops=2, magnitude=9)
    torch.manual_seed(0)
    y1 = torch.stack([aug(x) for _ in range(8)])
    torch.manual_seed(0)
    y2 = torch.stack([aug(x) for _ in range(8)])
    assert torch.equal(y1, y2) and y1.shape == (8, 1, 12, 12)
    assert (y1 - x).abs().amax((1, 2, 3)).max() > 0.1  # it does change images
    v = torch.rand(1, 8, 8, 8)
    a3 = [make_augment(spatial_dims=3, mean=mean, std=std, ops=2, magnitude=15, seed=s) for s in (1, 1)]
    o1, o2 = a3[0](v), a3[1](v)
    assert type(o1) is torch.Tensor and o1.shape == v.shape and torch.equal(o1, o2)


def test_stochastic_depth_where_supported():
    from transfuse.models import create_model

    cbr = create_model("cbr_tiny", in_channels=1, num_classes=2)
    assert apply_stochastic_depth(cbr, 0.2) == 0  # no residual blocks
    net = create_model("timm:efficientnet_lite0", in_channels=1, num_classes=2).eval()
    x = torch.randn(2, 1, 32, 32)
    before = net(x)
    n = apply_stochastic_depth(net, 0.2)
    probs = [m.drop_prob for m in net.modules() if type(m).__name__ == "DropPath"]
    assert n > 5 and len(probs) == n and probs[-1] == pytest.approx(0.2)
    assert probs == sorted(probs) and probs[0] == pytest.approx(0.2 / n)
    assert torch.allclose(net(x), before)  # a no-op in eval mode


def test_labelled_indices_match_contents():
    full = load_dataset("selftraintoy:mc2d")
    lab = load_dataset("selftraintoy:mc2d", fraction=0.1,
                       norm=(full.info.norm_mean, full.info.norm_std))
    full = load_dataset("selftraintoy:mc2d", norm=(full.info.norm_mean, full.info.norm_std))
    idx = labelled_indices(full.train, lab.train)
    assert len(idx) == len(lab.train) == 24 and len(set(idx.tolist())) == 24
    assert torch.equal(full.train.images[idx], lab.train.images)
    other = load_dataset("selftraintoy:mc2d", norm=((0.0,), (1.0,)))
    with pytest.raises(DataError, match="not in the full training set"):
        labelled_indices(full.train, other.train)


# -- chains in the store ---------------------------------------------------------------------------
def test_chain_links_generations_in_the_store_and_resumes(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    chain = chain_from_dict(_chain("toy-hard", finetune={"steps": 2}))
    monkeypatch.setattr(chain_mod, "_best_val", lambda res: -res.steps)  # fine-tuning "wins"
    out = run_chain(chain, workspace=ws, progress=False)
    roles = [(r.role, r.generation) for r in out.runs]
    assert roles == [("teacher", 0), ("student", 1), ("student", 2), ("labelled", None), ("full", None)]
    t, g1, g2, lab, full = out.runs
    assert (g1.teacher, g2.teacher) == (t.run_id, g1.run_id)
    assert lab.run_id == t.run_id  # same architecture: the labelled baseline is generation 0
    assert len({t.run_id, g1.run_id, g2.run_id, full.run_id}) == 4
    store = Store(ws)
    for r, parent in ((g1, t), (g2, g1)):
        rec = store.get_run(r.run_id)
        assert rec.status == "finished" and rec.study == "toy-hard"
        assert rec.spec["parent"]["teacher"] == parent.run_id == rec.summary["selftrain"]["teacher"]
        assert rec.data_info["split_sizes"]["labelled"] == 24
        assert rec.data_info["split_sizes"]["pool"] == 216
    assert "parent" not in store.get_run(t.run_id).spec
    res = store.get_results("selftrain", study="toy-hard")
    assert {p["run_id"] for p in res.values()} == {t.run_id, g1.run_id, g2.run_id, full.run_id}
    assert res["toy-hard/seed0/gen2"]["teacher"] == g1.run_id
    assert res["toy-hard/seed0/gen1"]["test_auc"] == store.final_metrics(g1.run_id)["auc"]

    # The pseudo-labels came from the un-noised teacher on clean pool images: recompute them.
    pz = np.load(store.run_dir(g2.run_id) / "pseudo_labels.npz")
    assert not set(pz["pool"]) & set(pz["labelled"]) and len(pz["pool"]) + len(pz["labelled"]) == 240
    teacher = load_run_model(store, g1.run_id)  # dropout 0.3 in its spec: rebuilt with it
    rec = store.get_run(g1.run_id)
    full_data = load_dataset(DataSpec(name="selftraintoy:mc2d"),
                             norm=(rec.data_info["norm_mean"], rec.data_info["norm_std"]))
    pool = torch.utils.data.Subset(full_data.train, pz["pool"].tolist())
    np.testing.assert_allclose(teacher_logits(teacher, pool), pz["logits"], rtol=1e-4, atol=1e-5)
    assert np.array_equal(pz["targets"], pz["logits"][pz["indices"]].argmax(1))
    # Quality is measured against the pool's true labels.
    true = full_data.train.targets[pz["pool"]].numpy()
    q = store.get_run(g2.run_id).summary["selftrain"]["pseudo"]
    uniq = np.unique(pz["indices"])
    assert q["pseudo_acc"] == pytest.approx(float((pz["targets"][np.unique(pz["indices"], return_index=True)[1]]
                                                   == true[uniq]).mean()))
    assert q["pool_acc"] == pytest.approx(float((pz["logits"].argmax(1) == true).mean()))
    # Fine-tuned and better on validation: best.pt is the fine-tuned model, the noisy one beside it.
    d, summ = store.run_dir(g1.run_id), store.get_run(g1.run_id).summary["selftrain"]
    assert summ["finetune_kept"] and (d / "student_best.pt").is_file()
    assert (d / "best.pt").read_bytes() == (d / "finetune" / "best.pt").read_bytes()
    assert store.final_metrics(g1.run_id)["auc"] == pytest.approx(summ["finetune_test"]["auc"])
    steps = {s for s, split, _, _ in store.metrics(g1.run_id) if split == "val"}
    assert max(steps) == 8 and store.get_run(g1.run_id).summary["steps"] == 8

    again = run_chain(chain, workspace=ws, progress=False)
    assert all(r.skipped for r in again.runs)
    assert [r.run_id for r in again.runs] == [r.run_id for r in out.runs]
    assert len(store.list_runs()) == 4

    sec = selftrain_section(store, "toy-hard")
    assert sec is not None and "student generation 2" in sec.body and "<img" in sec.body
    assert "first teacher" in sec.body and selftrain_section(store, "nope") is None
    assert [r.generation for r in chain_rows(store, "toy-hard")] == [0, 1, 2, None, None]


def test_killed_chain_continues_from_the_last_finished_generation(tmp_path, monkeypatch):
    ws = tmp_path / "ws"
    chain = chain_from_dict(_chain("toy-resume", mode="soft", gens=2, finetune={"steps": 2}))
    monkeypatch.setattr(chain_mod, "_best_val", lambda res: res.steps)  # fine-tuning "loses"
    real_fit, calls = chain_mod.fit, []

    def dying_fit(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # generation 2's training: the process "dies"
            raise KeyboardInterrupt
        return real_fit(*a, **k)

    monkeypatch.setattr(chain_mod, "fit", dying_fit)
    with pytest.raises(KeyboardInterrupt):
        run_chain(chain, workspace=ws, progress=False)
    store = Store(ws)
    status = {r.spec.get("parent", {}).get("generation", 0): r.status for r in store.list_runs()}
    assert status == {0: "finished", 1: "finished", 2: "failed"}
    g1 = next(r for r in store.list_runs() if r.spec.get("parent", {}).get("generation") == 1)
    mtime = (store.run_dir(g1.run_id) / "best.pt").stat().st_mtime_ns
    # fine-tuning worse on validation: the noisy student stays the generation's model
    assert not g1.summary["selftrain"]["finetune_kept"]
    assert not (store.run_dir(g1.run_id) / "student_best.pt").exists()
    assert store.final_metrics(g1.run_id)["auc"] == pytest.approx(g1.summary["selftrain"]["noisy_test"]["auc"])
    monkeypatch.setattr(chain_mod, "fit", real_fit)
    out = run_chain(chain, workspace=ws, progress=False)
    assert [r.skipped for r in out.runs[:3]] == [True, True, False]
    assert out.runs[2].teacher == g1.run_id and out.runs[2].test_auc is not None
    assert (store.run_dir(g1.run_id) / "best.pt").stat().st_mtime_ns == mtime
    # soft multi-class pseudo-labels: probability rows
    pz = np.load(store.run_dir(out.runs[2].run_id) / "pseudo_labels.npz")
    assert pz["targets"].ndim == 2 and np.allclose(pz["targets"].sum(1), 1, atol=1e-5)


def test_3d_multilabel_chain_with_soft_targets(tmp_path):
    chain = chain_from_dict(_chain("toy-3d", data="selftraintoy:ml3d", gens=1, mode="soft",
                                   baselines=["full"],
                                   pseudo={"mode": "soft", "threshold": 0.6, "balance": False}))
    out = run_chain(chain, workspace=tmp_path / "ws", progress=False)
    assert [r.role for r in out.runs] == ["teacher", "student", "full"]
    store = Store(tmp_path / "ws")
    rec = store.get_run(out.runs[1].run_id)
    assert rec.summary["selftrain"]["noise_applied"]["augment"].startswith("MONAI")
    pz = np.load(store.run_dir(rec.run_id) / "pseudo_labels.npz")
    assert pz["targets"].shape[1] == 2 and set(np.unique(pz["masks"])) <= {0.0, 1.0}
    assert (pz["masks"].sum(1) > 0).all()  # each kept example has a confident label
    assert 0 <= rec.summary["selftrain"]["pseudo"]["pseudo_acc"] <= 1


# -- files and CLI ---------------------------------------------------------------------------------
@pytest.mark.parametrize("edit, match", [
    ({"colour": 1}, "unknown key 'colour'"),
    ({"labelled_fraction": 1.5}, "labelled_fraction=1.5"),
    ({"pseudo": {"mode": "fuzzy"}}, "pseudo.mode='fuzzy'"),
    ({"pseudo": {"treshold": 0.5}}, "unknown key pseudo.treshold"),
    ({"student": {"noise": {"magnitude": 40}}}, "student.noise.magnitude=40"),
    ({"student": {"train": {"lr": -1}}}, "student: train.lr=-1"),
    ({"base": {"data": {"name": "x:y", "fraction": 0.1}, "model": {"name": "cbr_tiny"}}},
     "base.data.fraction is set by the chain"),
    ({"baselines": ["half"]}, "baselines must be a list"),
])
def test_chain_file_errors_name_the_file_and_key(tmp_path, edit, match):
    import yaml

    f = tmp_path / "chain.yaml"
    f.write_text(yaml.safe_dump({**_chain("bad"), **edit}))
    with pytest.raises(ConfigError, match=match) as e:
        load_chain(f)
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_cli_selftrain_errors_exit_2_and_status_lists_runs(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("name: x\nbase: {data: {name: 'selftraintoy:mc2d'}, model: {name: cbr_tiny}}\n"
                 "labelled_fraction: 2\n")
    assert main(["selftrain", str(f), "--workspace", str(tmp_path / "ws")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "labelled_fraction=2" in err and err.count("\n") == 1
    f.write_text(f.read_text().replace("labelled_fraction: 2", "labelled_fraction: 0.1\ngenerations: 2"))
    assert main(["selftrain", str(f), "--status", "--workspace", str(tmp_path / "ws")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and all(line.endswith("missing") for line in lines)
    f.write_text(f.read_text().replace("generations: 2", "generations: 1\nbaselines: []\n"
                                       "base: {data: {name: 'selftraintoy:mc2d'}, model: {name: cbr_tiny}, "
                                       "train: {steps: 3, eval_every: 3, batch_size: 8, amp: false}}")
                 .replace("base: {data: {name: 'selftraintoy:mc2d'}, model: {name: cbr_tiny}}\n", ""))
    ws = str(tmp_path / "ws2")
    assert main(["selftrain", str(f), "--workspace", ws, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "2 runs — 2 trained now" in out and "student generation 1" in out and "first teacher" in out
    assert main(["selftrain", str(f), "--workspace", ws, "--no-progress"]) == 0
    assert "0 trained now, 2 already finished" in capsys.readouterr().out


def test_example_chain_file_is_valid_and_its_smoke_is_small():
    chain = load_chain("examples/selftrain_pneumonia.yaml")
    assert chain.labelled_fraction <= 0.1 and chain.generations >= 2 and len(chain.seeds) >= 2
    small = chain.shrink()
    assert small.name.endswith("-smoke") and small.seeds == chain.seeds[:1]
    assert small.base["train"]["steps"] <= 4 and small.student["train"]["steps"] <= 4
    assert small.unlabelled_limit <= 256 and small.full_n_train == 64
    t = teacher_spec(chain, seed=1)
    s1 = student_spec(chain, seed=1, generation=1, teacher=run_id(t))
    base = baseline_specs(chain, seed=1)
    assert base["labelled"].train == t.train and base["labelled"].model == s1.model
    assert base["full"].train == s1.train and base["full"].data.fraction is None
    assert t.data.fraction == s1.data.fraction == chain.labelled_fraction
    assert t.data.split_seed == teacher_spec(chain, seed=0).data.split_seed + 1  # per-seed subset
    assert base["full"].parent is None and s1.parent["teacher"] == run_id(t)


@pytest.mark.slow
def test_example_smoke_runs_on_real_data(tmp_path, medmnist_dir):
    import yaml

    raw = yaml.safe_load(open("examples/selftrain_pneumonia.yaml"))
    raw["base"]["data"]["data_root"] = str(medmnist_dir)
    out = run_chain(chain_from_dict(raw), workspace=tmp_path / "ws", smoke=True, progress=False)
    assert len(out.runs) == 5 and all(r.test_auc is not None for r in out.runs)
    assert "first teacher" in chain_verdict(chain_rows(Store(tmp_path / "ws"), out.chain))


def test_train_run_refuses_a_student_spec(tmp_path):
    from transfuse.config import spec_from_dict
    from transfuse.errors import ConfigError
    from transfuse.run import train_run

    spec = spec_from_dict({"data": {"name": "builtin:brain_tissue"}, "model": {"name": "cbr_tiny"},
                           "parent": {"teacher": "abc", "generation": 1}})
    with pytest.raises(ConfigError, match=r"derived run .*`transfuse selftrain FILE`"):
        train_run(spec, workspace=tmp_path)
    assert not (tmp_path / "transfuse.db").exists() or not Store(tmp_path).list_runs()
