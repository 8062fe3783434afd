"""Fine-tuning strategies (``train.finetune``): frozen stages stay bit-identical, trainable ones
move, LP-FT switches at its step, per-stage learning rates follow the layer-decay table, and the
run ids of specs that leave the new fields at their defaults do not change.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from transfuse.cli import main
from transfuse.config import DataSpec, InitSpec, ModelSpec, RunSpec, TrainSpec, run_id
from transfuse.errors import ConfigError
from transfuse.models import MODELS, create_model, model_info, stage_of
from transfuse.store import Store
from transfuse.train.finetune import plan_finetune, stage_lrs, trainable_stages
from transfuse.train.loop import lr_lambda, make_optimizer

BASE = ["train", "--dataset", "builtin:brain_tissue", "--n-train", "64", "--model", "cbr_tiny",
        "--eval-every", "2", "--batch-size", "16", "--no-progress", "--json"]


# -- spec ----------------------------------------------------------------------------------------
def test_run_id_unchanged_while_the_new_fields_hold_their_defaults():
    spec = RunSpec(data=DataSpec(name="builtin:brain_tissue", n_train=64),
                   model=ModelSpec(name="cbr_tiny", spatial_dims=2),
                   init=InitSpec(name="pretrained", source="run:abc"),
                   train=TrainSpec(steps=4, lr=0.03), seed=3)
    assert run_id(spec) == "d0292e4eacb6"  # computed with config.py before the fields existed
    assert not {"finetune", "layer_decay", "head_lr_mult", "freeze_bn"} & set(spec.to_dict()["train"])
    for change in ({"finetune": "linear_probe"}, {"layer_decay": 0.7}, {"head_lr_mult": 10.0},
                   {"freeze_bn": True}):
        other = RunSpec(data=spec.data, model=spec.model, init=spec.init, seed=3,
                        train=TrainSpec(steps=4, lr=0.03, **change))
        assert run_id(other) != run_id(spec)
        assert other.to_dict()["train"].items() >= change.items()


@pytest.mark.parametrize("value", ["", "probe", "full:1", "linear_probe:x", "freeze", "freeze:",
                                   "lpft", "lpft:x", "lpft:0"])
def test_malformed_finetune_is_a_config_error(value):
    with pytest.raises(ConfigError, match="train.finetune"):
        TrainSpec(finetune=value)


@pytest.mark.parametrize("key", ["layer_decay", "head_lr_mult"])
def test_multipliers_must_be_positive(key):
    with pytest.raises(ConfigError, match=f"train.{key}"):
        TrainSpec(**{key: 0.0})


def test_unknown_stage_names_the_field_and_lists_the_stages():
    model = create_model("cbr_small", in_channels=1, num_classes=2)
    with pytest.raises(ConfigError, match=r"train.finetune='surgical:block7'.*stages are stem, "
                       r"block1, block2, block3, head"):
        plan_finetune(model, TrainSpec(finetune="surgical:block7"))
    with pytest.raises(ConfigError, match="would freeze every stage"):
        plan_finetune(model, TrainSpec(finetune="freeze:head"))


def test_trainable_stages_per_strategy():
    st = ["stem", "block1", "block2", "head"]
    assert trainable_stages("full", st) == (st, None)
    assert trainable_stages("linear_probe", st) == (["head"], None)
    assert trainable_stages("freeze:block1", st) == (["block2", "head"], None)
    assert trainable_stages("freeze:stem", st) == (["block1", "block2", "head"], None)
    assert trainable_stages("surgical:block1", st) == (["block1", "head"], None)
    assert trainable_stages("surgical:head", st) == (["head"], None)
    assert trainable_stages("lpft:5", st) == (["head"], 5)


# -- learning rates --------------------------------------------------------------------------------
LR_TABLES = {  # lr 0.1, layer_decay 0.5, head_lr_mult 10, by hand
    "cbr_small": {"stem": 0.00625, "block1": 0.0125, "block2": 0.025, "block3": 0.05, "head": 1.0},
    "resnet18": {"stem": 0.003125, "block1": 0.00625, "block2": 0.0125, "block3": 0.025,
                 "block4": 0.05, "head": 1.0},
}


@pytest.mark.parametrize("name", sorted(LR_TABLES))
def test_optimizer_groups_carry_the_layer_decay_table(name):
    model = create_model(name, in_channels=1, num_classes=2)
    spec = TrainSpec(lr=0.1, layer_decay=0.5, head_lr_mult=10.0, weight_decay=1e-3)
    ft = plan_finetune(model, spec)
    opt = make_optimizer(model, spec, groups=ft.param_groups())
    table = LR_TABLES[name]
    assert {g["stage"]: g["lr"] for g in opt.param_groups} == pytest.approx(table)
    assert {g.stage: g.lr for g in ft.groups} == pytest.approx(table)
    assert stage_lrs(list(table), lr=0.1, layer_decay=0.5, head_lr_mult=10.0) == pytest.approx(table)
    names = {id(p): k for k, p in model.named_parameters()}
    for g in opt.param_groups:  # each group holds its stage's parameters; no decay on norms/biases
        assert all(stage_of(model, names[id(p)]) == g["stage"] for p in g["params"])
        assert g["weight_decay"] == (1e-3 if all(p.ndim > 1 for p in g["params"]) else 0.0)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(names)  # full: every parameter exactly once

    # freeze:block1: stem and block1 are out of the optimiser and do not require grad
    ft = plan_finetune(model, TrainSpec(lr=0.1, layer_decay=0.5, head_lr_mult=10.0,
                                        finetune="freeze:block1"))
    ft.apply(model)
    opt = make_optimizer(model, spec, groups=ft.param_groups())
    assert {g["stage"] for g in opt.param_groups} == set(table) - {"stem", "block1"}
    assert ft.frozen == ["stem", "block1"]
    for k, p in model.named_parameters():
        assert p.requires_grad == (stage_of(model, k) not in ("stem", "block1")), k
    assert ft.trainable_parameters() == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_lpft_switch_adds_groups_on_the_running_schedule():
    model = create_model("cbr_tiny", in_channels=1, num_classes=2)
    spec = TrainSpec(steps=10, lr=0.1, layer_decay=0.5, finetune="lpft:3", schedule="cosine")
    ft = plan_finetune(model, spec)
    ft.apply(model)
    opt = make_optimizer(model, spec, groups=ft.param_groups())
    f = lr_lambda(spec, 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, f)
    assert {g["stage"] for g in opt.param_groups} == {"head"}
    for step in range(1, 11):
        changed = ft.on_step(step, model, opt, sched)
        assert changed == (step == 4)
        # every group, old or new, runs at its stage's peak lr × the schedule's multiplier
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(dict((s.stage, s.lr) for s in ft.groups)[g["stage"]]
                                            * f(step - 1))
        opt.step()
        sched.step()
    assert {g["stage"] for g in opt.param_groups} == {"stem", "block1", "block2", "block3", "head"}
    assert all(p.requires_grad for p in model.parameters())


# -- training runs ---------------------------------------------------------------------------------
def _states(ws, rid):
    r = Store(ws).get_run(rid)
    load = lambda n: torch.load(Path(r.run_dir) / n, weights_only=True)["state_dict"]  # noqa: E731
    return r, load("init.pt"), load("last.pt")


@pytest.fixture
def train(tmp_path, capsys):
    """``train(*flags) -> (workspace, run_id)``: a tiny ``transfuse train`` run (CLI flags)."""

    def run(*args: str) -> tuple:
        assert main([*BASE, "--workspace", str(tmp_path), *args]) == 0
        return tmp_path, json.loads(capsys.readouterr().out)["run_id"]

    return run


def _is_param(model, key):
    return key in dict(model.named_parameters())


def test_frozen_stages_and_their_bn_statistics_stay_bit_identical(train):
    ws, rid = train("--steps", "4", "--finetune", "freeze:block1", "--set", "train.freeze_bn=true")
    r, init, last = _states(ws, rid)
    model = create_model("cbr_tiny", in_channels=1, num_classes=4)
    for k in init:
        frozen = stage_of(model, k) in ("stem", "block1")
        if frozen:  # parameters and running statistics alike
            assert torch.equal(init[k], last[k]), k
        elif _is_param(model, k):
            assert not torch.equal(init[k], last[k]), k  # every trainable parameter moved
    info = r.model_info["finetune"]
    assert info["finetune"] == "freeze:block1" and info["freeze_bn"] is True
    n_trainable = sum(v.numel() for k, v in init.items()
                      if _is_param(model, k) and stage_of(model, k) not in ("stem", "block1"))
    assert info["trainable_parameters"] == n_trainable
    assert [(g["stage"], g["trainable"]) for g in info["param_groups"]] == [
        ("stem", False), ("block1", False), ("block2", True), ("block3", True), ("head", True)]
    assert all(g["lr"] == 0.01 for g in info["param_groups"])


def test_without_freeze_bn_frozen_running_statistics_move(train):
    ws, rid = train("--steps", "2", "--set", "train.finetune=linear_probe")
    _, init, last = _states(ws, rid)
    assert torch.equal(init["stem.0.weight"], last["stem.0.weight"])
    assert not torch.equal(init["stem.1.running_mean"], last["stem.1.running_mean"])
    assert not torch.equal(init["fc.weight"], last["fc.weight"])


def test_lpft_trains_the_head_only_until_its_step(train):
    model = create_model("cbr_tiny", in_channels=1, num_classes=4)
    params = [k for k, _ in model.named_parameters()]
    for steps, body_moves in (("2", False), ("4", True)):
        ws, rid = train("--steps", steps, "--finetune", "lpft:2", "--set", "train.freeze_bn=true")
        r, init, last = _states(ws, rid)
        for k in params:
            moved = not torch.equal(init[k], last[k])
            assert moved == (body_moves or stage_of(model, k) == "head"), (steps, k)
        assert r.model_info["finetune"]["switch_step"] == 3
        assert r.model_info["finetune"]["trainable_parameters"] == sum(
            init[k].numel() for k in params if stage_of(model, k) == "head")


# -- every registered classification model ---------------------------------------------------------
def _classifiers() -> list:
    """Every registered classifier in 2D where it has 2D (3D-only ones, Med3D's, in 3D), and a
    timm network; heavy builds run in the slow suite."""
    out = [pytest.param("timm:efficientnet_lite0", 2, id="timm:efficientnet_lite0-2d")]
    for name in MODELS.list():
        info = model_info(name)
        if info["task"] != "classification":
            continue
        dims = 2 if 2 in info["spatial_dims"] else 3
        slow = dims in info["heavy_dims"] or name == "inception_v3"  # 299-px probe at build
        out.append(pytest.param(name, dims, id=f"{name}-{dims}d", marks=[pytest.mark.slow] if slow else []))
    return out


@pytest.mark.parametrize(("name", "dims"), _classifiers())
def test_every_classifier_trains_only_the_intended_stages(name, dims):
    torch.manual_seed(0)
    base = create_model(name, spatial_dims=dims, in_channels=1, num_classes=2)
    side = max(model_info(name)["min_size"], 16) if not name.startswith("timm:") else 32
    x, y = torch.randn(4, 1, *[side] * dims), torch.tensor([0, 1, 0, 1])
    for finetune, trains in (("linear_probe", {"head"}), ("freeze:block1", None),
                             ("surgical:block1", {"block1", "head"})):
        model = copy.deepcopy(base)
        spec = TrainSpec(lr=0.05, finetune=finetune, freeze_bn=True)
        ft = plan_finetune(model, spec)
        ft.apply(model)
        opt = make_optimizer(model, spec, groups=ft.param_groups())
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.train()
        for _ in range(2):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        ft.release()
        stages = [g.stage for g in ft.groups]
        want = trains or set(stages[stages.index("block1") + 1:])
        after = model.state_dict()
        for k, p in model.named_parameters():
            moved = not torch.equal(before[k], after[k])
            assert moved == (stage_of(model, k) in want), (finetune, k, moved)
        for k in before:  # freeze_bn: frozen stages' running statistics did not move either
            if stage_of(model, k) not in want:
                assert torch.equal(before[k], after[k]), (finetune, k)
