"""``train.cuda_graph`` (issue 27) on the CPU: the option's parsing and errors, run ids that do
not depend on it, and the decision whether a run's step is captured, with the reason recorded.
The capture itself needs CUDA (bench/train_overhead.py --cuda-graph measures it there)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from transfuse.cli import main
from transfuse.config import TrainSpec, run_id, spec_from_dict
from transfuse.errors import ConfigError
from transfuse.train.graph import check_cuda_graph, decide_cuda_graph, graph_refusal

BASE = {"data": {"name": "builtin:brain_tissue", "n_train": 32, "image_size": 8},
        "model": {"name": "cbr_tiny"}, "train": {"steps": 2, "eval_every": 2, "batch_size": 8}}
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def _spec(**train):
    return spec_from_dict({**BASE, "train": {**BASE["train"], **train}})


def test_option_parses_yaml_on_off_and_refuses_other_values():
    for text, want in (("on", "on"), ("off", "off"), ("auto", "auto"), ("'on'", "on")):
        d = yaml.safe_load(f"train: {{cuda_graph: {text}}}")  # YAML 1.1: bare on/off are bools
        assert _spec(**d["train"]).train.cuda_graph == want
    assert TrainSpec().cuda_graph == "auto"
    with pytest.raises(ConfigError, match=r"train.cuda_graph='maybe' is not valid; choose one of "
                                          r"auto, on, off"):
        TrainSpec(cuda_graph="maybe")


def test_run_id_and_stored_spec_do_not_depend_on_it():
    ids = {run_id(_spec(cuda_graph=v)) for v in ("auto", "on", "off", True, False)}
    assert len(ids) == 1 and ids == {run_id(_spec())}
    assert "cuda_graph" not in _spec().to_dict()["train"]  # at its default: as before the key
    assert _spec(cuda_graph="off").to_dict()["train"]["cuda_graph"] == "off"
    assert run_id(_spec(steps=3)) != run_id(_spec())  # (a key that is part of the id)


def test_on_without_cuda_is_one_error_line_before_anything_is_stored(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"^train.cuda_graph: on needs a CUDA device; use auto "
                                          r"or off$"):
        check_cuda_graph(TrainSpec(cuda_graph="on"), CPU)
    check_cuda_graph(TrainSpec(cuda_graph="on"), CUDA)  # no error: a CUDA device
    check_cuda_graph(TrainSpec(), CPU)
    capsys.readouterr()
    rc = main(["train", "--dataset", "builtin:brain_tissue", "--model", "cbr_tiny", "--steps", "2",
               "--device", "cpu", "-w", str(tmp_path / "ws"), "--set", "train.cuda_graph=on",
               "--no-progress"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 2 and err == ["error: train.cuda_graph: on needs a CUDA device; use auto or off"]
    assert not (tmp_path / "ws" / "transfuse.db").exists()


def test_decision_and_recorded_reason():
    ok = dict(task="multiclass", preloaded=True, world_size=1, lpft=False)
    t = TrainSpec()
    # off CUDA: never captured, nothing recorded (CPU runs store what they stored before)
    assert decide_cuda_graph(t, device=CPU, **ok) == (False, None)
    assert decide_cuda_graph(dataclasses.replace(t, cuda_graph="off"), device=CPU, **ok) == (False, None)
    assert decide_cuda_graph(t, device=CUDA, **ok) == (True, "captured")
    assert decide_cuda_graph(dataclasses.replace(t, cuda_graph="on"), device=CUDA, **ok) == (True, "captured")
    assert decide_cuda_graph(dataclasses.replace(t, cuda_graph="off"), device=CUDA, **ok) == (False, "off")
    cases = [
        (t, {"world_size": 2}, "distributed (torchrun) steps are not captured"),
        (t, {"task": "segmentation"}, "segmentation steps are not captured"),
        (t, {"preloaded": False}, "the training set is not preloaded on the device (train.preload)"),
        (dataclasses.replace(t, augment="basic"), {}, "train.augment draws new random transforms every step"),
        (dataclasses.replace(t, compile=True), {}, "train.compile compiles the model its own way"),
        (dataclasses.replace(t, finetune="lpft:5"), {"lpft": True}, "train.finetune=lpft:5 unfreezes parameters mid-run"),
        (dataclasses.replace(t, ema=0.99), {}, "weight averaging (train.ema/train.swa) is not captured"),
        (dataclasses.replace(t, swa=5), {}, "weight averaging (train.ema/train.swa) is not captured"),
    ]
    for spec, kw, why in cases:
        args = {**ok, **kw}
        assert graph_refusal(spec, **args) == why
        assert decide_cuda_graph(spec, device=CUDA, **args) == (False, f"not captured: {why}")
        with pytest.raises(ConfigError, match="^train.cuda_graph: on cannot capture this run's step: "
                                              + why.replace("(", r"\(").replace(")", r"\)")
                                              + "; use auto or off$"):
            decide_cuda_graph(dataclasses.replace(spec, cuda_graph="on"), device=CUDA, **args)
        assert decide_cuda_graph(spec, device=CPU, **args) == (False, None)
    assert graph_refusal(t, **ok) is None


def test_cpu_fit_records_nothing_and_trains_as_without_the_key(tmp_path):
    """On the CPU ``auto`` is off: the same weights as ``off``, and no summary key."""
    from transfuse.run import train_run
    from transfuse.store import Store

    a = train_run(_spec(), workspace=tmp_path / "a", device="cpu", progress=False)
    b = train_run(_spec(cuda_graph="off"), workspace=tmp_path / "b", device="cpu", progress=False)
    assert a.record.run_id == b.record.run_id
    assert "cuda_graph" not in Store(tmp_path / "a").get_run(a.record.run_id).summary
    wa, wb = (torch.load(Store(p).run_dir(a.record.run_id) / "last.pt", weights_only=True)["state_dict"]
              for p in (tmp_path / "a", tmp_path / "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cohorts_refuse_on_and_take_auto_and_off():
    from transfuse.train.cohort import cohort_refusal

    assert cohort_refusal(TrainSpec(cuda_graph="off")) is None
    assert cohort_refusal(TrainSpec()) is None
    assert cohort_refusal(TrainSpec(cuda_graph="on")) == (
        "train.cuda_graph: on captures a run's own step; such runs train alone")
