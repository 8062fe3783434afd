"""``transfuse pretrain med3d``: Med3D-style multi-dataset pretraining (one shared encoder, one
head per dataset), the YAML checks, the head isolation of a step, the seeded dataset schedule,
the outputs as a ``file:`` source for the init strategies, and the built-in
``builtin:spm_tissue6`` data. Tiny: med3d_resnet10, 16³ patches, batch 2, 2–4 steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from transfuse.cli import main
from transfuse.data import load_dataset
from transfuse.errors import ConfigError
from transfuse.models import create_model
from transfuse.pretrain import (MultiHeadMed3D, load_pretrain, load_pretrain_data, make_optimizers,
                                pretrain_from_dict, pretrain_med3d, pretrain_step)
from transfuse.pretrain.med3d import dataset_schedule

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "med3d_pretrain.yaml"


def _raw(**kw) -> dict:
    d = {"name": "t", "encoder": "med3d_resnet10",
         "datasets": [{"data": {"name": "builtin:brain_seg3d"}, "weight": 1}]}
    d.update(kw)
    return d


# -- the file --------------------------------------------------------------------------------------

def test_example_parses_with_common_spacing_and_patch():
    spec = load_pretrain(EXAMPLE)
    assert spec.depth == 10 and [e.data.name for e in spec.datasets] == [
        "builtin:spm_tissue6", "builtin:spm_tissue6_pd"]
    assert all(e.data.spacing == 3.0 and e.data.patch_size == 32 for e in spec.datasets)
    small = spec.shrink()
    assert small.name == "med3d-spm2-smoke" and small.smoke and small.steps == 4
    assert small.batch_size == 2 and all(e.data.patch_size == 16 for e in small.datasets)
    # A dataset's own spacing wins over the common one.
    own = pretrain_from_dict(_raw(spacing=3, datasets=[
        {"data": {"name": "builtin:brain_seg3d", "spacing": 6}, "weight": 2}]))
    assert own.datasets[0].data.spacing == 6.0 and own.datasets[0].weight == 2.0


@pytest.mark.parametrize("raw, needle", [
    ({"encoder": "med3d_resnet10", "datasets": []}, "missing key 'name'"),
    (_raw(encoder="resnet18"), "encoder='resnet18' is not a Med3D encoder"),
    (_raw(encoder="med3d_resnet11"), "encoder='med3d_resnet11'"),
    (_raw(datasets=[]), "datasets must be a non-empty list"),
    (_raw(datasets=[{"data": {"name": "builtin:brain_seg3d"}, "weight": 0}]), "datasets[0].weight=0"),
    (_raw(datasets=[{"data": {"name": "builtin:brain_tissue"}}]),
     "datasets[0].data.name='builtin:brain_tissue' is multiclass data"),
    (_raw(datasets=[{"data": {"name": "builtin:brain_seg3d", "colour": 1}}]),
     "unknown key datasets[0].data.colour"),
    (_raw(datasets=[{"data": {"name": "builtin:brain_seg3d"}}] * 2), "listed twice"),
    (_raw(datasets=[{"data": {"name": "builtin:nope"}}]), "is not a known dataset"),
    (_raw(patch_size=8), "patch_size=8 must be an integer >= 16"),
    (_raw(steps=0), "steps=0 must be an integer >= 1"),
    (_raw(lr=0), "lr=0 must be a number > 0"),
    (_raw(optimizer="lbfgs"), "optimizer='lbfgs' is not valid"),
    (_raw(spacing=-1), "spacing=-1 must be a number > 0"),
    (_raw(epochs=3), "unknown key 'epochs'"),
    (_raw(name="a/b"), "name='a/b' is not a valid name"),
])
def test_bad_files_raise_one_line_config_errors(raw, needle):
    with pytest.raises(ConfigError) as e:
        pretrain_from_dict(raw, path="p.yaml")
    msg = str(e.value)
    assert needle in msg and msg.startswith("p.yaml: ") and "\n" not in msg


def test_cli_bad_file_exits_2(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nencoder: med3d_resnet10\ndatasets:\n  - data: {name: 'builtin:modality'}\n")
    assert main(["pretrain", "med3d", str(f), "-w", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "multiclass data" in err and "segmentation" in err
    assert not (tmp_path / "pretrain").exists()


# -- the step and the schedule ---------------------------------------------------------------------

def test_dataset_schedule_is_seeded_and_proportional_to_weights():
    a = dataset_schedule([1, 3], 4000, seed=5)
    assert np.array_equal(a, dataset_schedule([1, 3], 4000, seed=5))
    assert not np.array_equal(a, dataset_schedule([1, 3], 4000, seed=6))
    assert abs((a == 1).mean() - 0.75) < 0.03


def _state(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_a_step_updates_the_encoder_and_only_its_own_head():
    torch.manual_seed(0)
    spec = pretrain_from_dict(_raw(optimizer="sgd", lr=0.1))
    model = MultiHeadMed3D(depth=10, heads={"a": 3, "b": 4})
    opts = make_optimizers(model, spec)
    x = torch.randn(2, 1, 16, 16, 16)
    # Step on b first, so b's optimiser holds momentum; then steps on a must leave b untouched.
    pretrain_step(model, opts, "b", x, torch.randint(0, 4, (2, 16, 16, 16)))
    enc0, a0, b0 = _state(model.encoder), _state(model.head("a")), _state(model.head("b"))
    loss = pretrain_step(model, opts, "a", x, torch.randint(0, 3, (2, 16, 16, 16)))
    assert torch.isfinite(loss)
    b1 = _state(model.head("b"))
    assert all(torch.equal(b0[k], b1[k]) for k in b0)  # bit-identical, buffers included
    assert all(p.grad is None for p in model.head("b").parameters())
    a1, enc1 = _state(model.head("a")), _state(model.encoder)
    assert not torch.equal(a0["6.weight"], a1["6.weight"])
    assert not torch.equal(enc0["conv1.weight"], enc1["conv1.weight"])
    assert model(x, "b").shape == (2, 4, 16, 16, 16) and model(x, "a").shape == (2, 3, 16, 16, 16)


# -- the smoke run, end to end ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The example's ``--smoke`` run through the CLI (one run for the tests below)."""
    ws = tmp_path_factory.mktemp("ws")
    assert main(["pretrain", "med3d", str(EXAMPLE), "-w", str(ws), "--smoke", "--device", "cpu",
                 "--no-progress"]) == 0
    return ws / "pretrain" / "med3d-spm2-smoke"


def test_smoke_writes_encoder_heads_and_summary(smoke, capsys):
    enc = torch.load(smoke / "encoder.pt", weights_only=True)
    ref = create_model("med3d_resnet10", spatial_dims=3, in_channels=1, num_classes=2).state_dict()
    assert set(enc) == set(ref) - {"fc.weight", "fc.bias"}
    assert all(enc[k].shape == ref[k].shape for k in enc)
    heads = torch.load(smoke / "heads.pt", weights_only=True)
    assert list(heads) == ["builtin:spm_tissue6", "builtin:spm_tissue6_pd"]
    assert heads["builtin:spm_tissue6"]["conv_seg.6.weight"].shape[0] == 6
    assert heads["builtin:spm_tissue6_pd"]["conv_seg.6.weight"].shape[0] == 6
    # A head loads into med3d_seg_resnet10 next to the encoder: together they are the whole model.
    seg = create_model("med3d_seg_resnet10", spatial_dims=3, in_channels=1, num_classes=6)
    seg.load_state_dict({**enc, **heads["builtin:spm_tissue6_pd"]}, strict=True)
    assert not torch.equal(heads["builtin:spm_tissue6"]["conv_seg.6.weight"],
                           heads["builtin:spm_tissue6_pd"]["conv_seg.6.weight"])
    s = json.loads((smoke / "pretrain.json").read_text())
    assert s["steps"] == 4 and s["smoke"] and s["seconds"] > 0 and s["encoder"] == "med3d_resnet10"
    assert sum(d["steps"] for d in s["datasets"]) == 4
    assert s["config"]["datasets"][0]["data"]["patch_size"] == 16
    for d in s["datasets"]:
        assert [h["step"] for h in d["val"]] == [2, 4]  # eval_every 2 and at the end
        assert 0 <= d["final_dice"] <= 1 and d["final_dice"] == d["val"][-1]["dice"]
    assert s["datasets"][0]["spacing"] == [3.0, 3.0, 3.0]


@pytest.mark.parametrize("init", ["transfusion:block4", "meanvar", "pretrained"])
def test_encoder_is_a_file_source_for_init_strategies(smoke, init):
    from transfuse.inits import apply_init

    src = f"file:{smoke / 'encoder.pt'}"
    enc = torch.load(smoke / "encoder.pt", weights_only=True)
    for name in ("med3d_seg_resnet10", "med3d_resnet10")[:2 if init == "transfusion:block4" else 1]:
        model = create_model(name, spatial_dims=3, in_channels=1, num_classes=3)
        rep = apply_init(model, init, source=src, partial=init == "pretrained")
        acts = {r.key: r.action for r in rep.records}
        state = model.state_dict()
        if init == "meanvar":
            assert sum(a == "redrawn" for a in acts.values()) > 0
            assert all(torch.isfinite(v.float()).all() for v in state.values())
            continue
        for k in enc:
            if k.endswith("num_batches_tracked"):
                continue
            assert acts[k] == "loaded", (name, init, k)
            assert torch.equal(state[k], enc[k]), k


def test_smoke_is_reproducible_from_the_seed(smoke, tmp_path):
    spec = load_pretrain(EXAMPLE).shrink()
    out = pretrain_med3d(spec, out_dir=tmp_path, device="cpu", progress=False,
                         data=load_pretrain_data(spec))
    a = torch.load(smoke / "encoder.pt", weights_only=True)
    b = torch.load(out.out_dir / "encoder.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


# -- builtin:spm_tissue6 ---------------------------------------------------------------------------

def test_spm_tissue6_is_real_6_class_head_segmentation_on_disjoint_slabs():
    from transfuse.data import builtin_spm

    d = load_dataset("builtin:spm_tissue6", patch_size=16)
    info = d.info
    assert info.task == "segmentation" and info.spatial_dims == 3 and info.in_channels == 1
    assert info.class_names == ("background", "grey_matter", "white_matter", "csf", "bone",
                                "soft_tissue")
    assert info.split_sizes == {"train": 3, "val": 1, "test": 1} and info.spacing == (3.0,) * 3
    for split in ("val", "test"):  # every class in the held-out slabs
        assert set(np.unique(d.split(split).volumes[0].label.numpy())) == set(range(6))
    v = builtin_spm.spm_tissue6_volumes(seed=0)
    a = builtin_spm._sources()
    full = builtin_spm._volume(a["train_x"][0], a["train_y"][0], (3.0,) * 3, "head")
    (below, between, above), [val], [test] = v["train"], v["val"], v["test"]
    zv = [int(t) for t in val.name.split("z=")[1].split("..")]
    zt = [int(t) for t in test.name.split("z=")[1].split("..")]
    nz = full.label.shape[-1]
    assert zv[1] - zv[0] + 1 == 8 and zt[1] - zt[0] + 1 == 8  # 24 mm slabs at 3 mm
    assert 0.2 * nz < zv[0] < 0.5 * nz < zt[0] < 0.8 * nz
    assert torch.equal(val.label, full.label[..., zv[0]:zv[1] + 1])
    assert torch.equal(test.label, full.label[..., zt[0]:zt[1] + 1])
    # 6 mm (2-slice) guards on both sides of each slab; every other slice is training data
    assert torch.equal(below.label, full.label[..., :zv[0] - 2])
    assert torch.equal(between.label, full.label[..., zv[1] + 3:zt[0] - 2])
    assert torch.equal(above.label, full.label[..., zt[1] + 3:])
    assert sum(t.label.shape[-1] for t in (below, between, above)) == nz - 16 - 8
    others = {builtin_spm.spm_tissue6_volumes(seed=s)["val"][0].name for s in range(1, 6)}
    assert others - {val.name}  # the seed moves the slabs


# -- in a study ------------------------------------------------------------------------------------

def test_study_runs_the_med3d_pretraining_first_then_skips_it(tmp_path):
    from transfuse.inits import apply_init  # noqa: F401  (registers strategies)
    from transfuse.study import load_study, run_study
    from transfuse.study.spec import expand

    study_file = tmp_path / "s.yaml"
    study_file.write_text(f"""
name: m3d-study
pretrain:
  enc: {{med3d: {EXAMPLE}}}
base:
  data: {{name: "builtin:brain_seg3d", spacing: 6, patch_size: 16}}
  model: {{name: med3d_seg_resnet10, spatial_dims: 3}}
  init: {{name: "transfusion:block4", source: "pretrain:enc"}}
  train: {{steps: 2, eval_every: 2, batch_size: 2}}
""")
    study = load_study(study_file)
    (spec,) = expand(study, smoke=True)
    assert spec.init.source == "med3d:med3d-spm2-smoke"
    ws = tmp_path / "ws"
    out = run_study(study, workspace=ws, smoke=True, progress=False)
    assert out.ok and len(out.finished) == 1
    meta = ws / "pretrain" / "med3d-spm2-smoke" / "pretrain.json"
    stamp = meta.stat().st_mtime_ns
    from transfuse.store import Store

    (rec,) = Store(ws).list_runs(study="m3d-study-smoke")
    enc = torch.load(meta.parent / "encoder.pt", weights_only=True)
    assert any("segmentation head not in the source" in n for n in rec.init_report["notes"])
    best = torch.load(Path(rec.run_dir) / "init.pt", weights_only=True)
    best = best.get("state_dict", best) if isinstance(best, dict) else best
    assert torch.equal(best["layer4.0.conv1.weight"], enc["layer4.0.conv1.weight"])
    from transfuse.report.med3d import med3d_section

    sec = med3d_section(Store(ws), "m3d-study-smoke")
    assert sec.title == "Med3D pretraining"
    assert "builtin:spm_tissue6_pd" in sec.body and "med3d:med3d-spm2-smoke" in sec.body
    again = run_study(study, workspace=ws, smoke=True, progress=False)
    assert again.ok and not again.finished and len(again.skipped) == 1
    assert meta.stat().st_mtime_ns == stamp  # the pretraining was not repeated


def test_med3d_source_errors(tmp_path):
    from transfuse.study import load_study
    from transfuse.weights.io import WeightsError
    from transfuse.weights import resolve_source

    with pytest.raises(WeightsError, match=r"med3d:nope: .*encoder.pt not found; run `transfuse "
                                           r"pretrain med3d FILE.yaml --workspace"):
        resolve_source("med3d:nope", workspace=tmp_path)
    bad = tmp_path / "s.yaml"
    bad.write_text("name: x\npretrain:\n  enc: {med3d: missing.yaml}\nbase: {data: {name: "
                   "'builtin:brain_seg3d'}, model: {name: med3d_seg_resnet10}}\n")
    with pytest.raises(ConfigError, match=r"s.yaml: pretrain.enc.med3d: .*missing.yaml not found"):
        load_study(bad)
    bad.write_text("name: x\npretrain:\n  enc: {med3d: a.yaml, steps: 3}\nbase: {data: {name: "
                   "'builtin:brain_seg3d'}, model: {name: med3d_seg_resnet10}}\n")
    with pytest.raises(ConfigError, match=r"pretrain.enc: a Med3D entry is only"):
        load_study(bad)
