"""Every 2D classifier with ``inflated_dims`` (torchvision ResNets, ``timm:<name>``) builds in 3D
through ``inflate_model`` (issue 17, item 11).

- for each registry entry (and two timm models): the 3D model has no 2D module left, keeps the
  2D stages, and on a volume of identical slices gives the 2D logits (1xkxk, eval);
- ``kernels="kxkxk"`` is full 3D; bad ``kernels`` and non-inflatable modules raise, naming them;
- timm's squeeze-excite blocks (``efficientnet_b0``'s ``SqueezeExcite``, ``seresnet18``'s
  ``SEModule``) become ``SqueezeExcite3d``: same state-dict keys, a forward on a 32³ volume, and
  on a depth-constant volume each slice of the block's output is the 2D block's output;
- a 2D-only model on 3D data says so before any input-size advice;
- ``transfuse models`` prints a minimum size on every row, ``timm:`` included;
- acceptance: ``timm:efficientnet_lite0`` in 3D, initialised from ``imagenet:efficientnet_lite0``
  (2D kernels inflated by the init framework), trains a few steps on AdrenalMNIST3D and reports
  a test AUC.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from transfuse.cli import main
from transfuse.config import DataSpec, InitSpec, ModelSpec, RunSpec, TrainSpec
from transfuse.errors import ConfigError, ModelError
from transfuse.models import create_model, list_models, model_info

INFLATABLE = [n for n in list_models() if model_info(n)["inflated_dims"]] + [
    "timm:efficientnet_lite0", "timm:resnet18"]
_2D_MODULES = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Tiny tensors: one intra-op thread (see conftest)."""


def test_the_registry_declares_3d_by_inflation():
    assert {"resnet18", "resnet34", "resnet50"} <= set(INFLATABLE)
    for n in INFLATABLE:
        info = model_info(n)
        assert info["inflated_dims"] == (3,) and info["spatial_dims"] == (2, 3), n
        assert info["task"] == "classification"
    assert model_info("inception_v3")["spatial_dims"] == (2,)  # its blocks call F.avg_pool2d


@pytest.mark.parametrize("name", INFLATABLE)
def test_2d_classifier_builds_in_3d_and_matches_2d_on_identical_slices(name):
    torch.manual_seed(0)
    m2 = create_model(name, spatial_dims=2, in_channels=1, num_classes=3).eval()
    torch.manual_seed(0)  # the same 2D weights: inflation copies them
    m3 = create_model(name, spatial_dims=3, in_channels=1, num_classes=3).eval()
    assert m3.spatial_dims == 3 and m3.model_name == name and m3.model_kwargs == {}
    assert not [n for n, m in m3.named_modules() if isinstance(m, _2D_MODULES)]
    assert [(s.name, s.channels, s.stride) for s in m3.stage_info] == \
        [(s.name, s.channels, s.stride) for s in m2.stage_info]
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        want = m2(x)
        got = m3(x.unsqueeze(2).repeat(1, 1, 3, 1, 1))  # (N, 1, 3, 32, 32): any depth works
    assert got.shape == (2, 3)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_kxkxk_is_full_3d_and_recorded():
    m = create_model("resnet18", spatial_dims=3, in_channels=1, num_classes=2, kernels="kxkxk").eval()
    assert m.conv1.kernel_size == (7, 7, 7) and m.conv1.stride == (2, 2, 2)
    assert m.model_kwargs == {"kernels": "kxkxk"}
    assert m(torch.randn(1, 1, 16, 16, 16)).shape == (1, 2)
    m1 = create_model("timm:efficientnet_lite0", spatial_dims=3, in_channels=1, num_classes=2)
    assert m1.conv_stem.kernel_size == (1, 3, 3)


@pytest.mark.parametrize(("name", "se_path"), [("timm:efficientnet_b0", "blocks.0.0.se"),
                                               ("timm:seresnet18", "layer1.0.se")])
@pytest.mark.parametrize("kernels", ["1xkxk", "kxkxk"])
def test_timm_squeeze_excite_inflates(name, se_path, kernels):
    from transfuse.models import inflate_state_dict
    from transfuse.models.inflate import SqueezeExcite3d

    torch.manual_seed(0)
    m2 = create_model(name, spatial_dims=2, in_channels=1, num_classes=3).eval()
    torch.manual_seed(0)
    m3 = create_model(name, spatial_dims=3, in_channels=1, num_classes=3, kernels=kernels).eval()
    se2, se3 = m2.get_submodule(se_path), m3.get_submodule(se_path)
    assert isinstance(se3, SqueezeExcite3d) and type(se2).__name__ in se3.source
    assert not [n for n, m in m3.named_modules() if isinstance(m, _2D_MODULES)]
    assert all(isinstance(c, nn.Conv3d) and c.kernel_size == (1, 1, 1)
               for c in se3.children() if isinstance(c, (nn.Conv2d, nn.Conv3d)))
    # the same keys: a 2D state dict (e.g. pretrained weights) maps onto the 3D model key for key
    sd2, sd3 = m2.state_dict(), m3.state_dict()
    assert list(sd3) == list(sd2)
    inflated, notes = inflate_state_dict(sd2, target_state=sd3,
                                         mode="1xkxk" if kernels == "1xkxk" else "center")
    reduce = next(n for n, c in se2.named_children() if isinstance(c, nn.Conv2d))
    assert f"{se_path}.{reduce}.weight" in notes
    m3.load_state_dict(inflated, strict=True)
    with torch.no_grad():
        assert m3(torch.randn(2, 1, 32, 32, 32)).shape == (2, 3)
        # inflation invariant: a depth-constant volume gives, on every slice, the 2D SE output
        feats: dict[str, torch.Tensor] = {}
        h2 = se2.register_forward_hook(lambda mod, i, o: feats.__setitem__("2d", (i[0], o)))
        h3 = se3.register_forward_hook(lambda mod, i, o: feats.__setitem__("3d", (i[0], o)))
        x = torch.randn(2, 1, 32, 32)
        want = m2(x)
        got = m3(x.unsqueeze(2).repeat(1, 1, 4, 1, 1))
        h2.remove()
        h3.remove()
    (_, out2), (in3, out3) = feats["2d"], feats["3d"]
    assert in3.ndim == 5 and out3.shape == in3.shape
    assert kernels != "1xkxk" or in3.shape[2] == 4  # kxkxk: depth strided like height
    for d in range(in3.shape[2]):
        torch.testing.assert_close(out3[:, :, d], out2, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_errors_name_the_problem():
    # squeeze-excite inflates (above); ECA attention is still 2D-only and says so, by name
    with pytest.raises(ModelError, match=r"cannot be built in 3D: .*layer1\.0\.se .*EcaModule.*2D-only"):
        create_model("timm:ecaresnet26t", spatial_dims=3, num_classes=2)
    with pytest.raises(ModelError, match="kernels='3x3' must be one of 1xkxk, kxkxk"):
        create_model("resnet18", spatial_dims=3, num_classes=2, kernels="3x3")
    with pytest.raises(ModelError, match="kernels= applies to 3D models only"):
        create_model("resnet18", spatial_dims=2, num_classes=2, kernels="1xkxk")
    with pytest.raises(ModelError, match="2D only, not 3D"):
        create_model("inception_v3", spatial_dims=3, num_classes=2)


def test_a_2d_only_model_on_3d_data_says_so_before_the_size(adrenalmnist3d_npz):
    from transfuse.data import load_dataset
    from transfuse.run import check_compatible

    data = load_dataset(DataSpec(name="medmnist:adrenalmnist3d", data_root=str(adrenalmnist3d_npz.parent),
                                 n_train=8))
    spec = RunSpec(data=DataSpec(name="medmnist:adrenalmnist3d"), model=ModelSpec(name="inception_v3"))
    with pytest.raises(ModelError, match=r"'inception_v3' is 2D only but dataset .* is 3D") as e:
        check_compatible(spec, data)  # 28 px < 75 px, but the size is not the problem
    assert "image-size" not in str(e.value)
    # timm's 32 px minimum is what remains for a model that does build in 3D
    spec = RunSpec(data=spec.data, model=ModelSpec(name="timm:efficientnet_lite0"))
    with pytest.raises(ConfigError, match="at least 32 px .* pass --image-size 32"):
        check_compatible(spec, data)


def test_models_listing_shows_every_minimum_size(capsys):
    assert main(["models"]) == 0
    rows = [r.split() for r in capsys.readouterr().out.splitlines()[1:] if r.startswith("  ") and
            not r.strip().startswith("3D*")]
    by_name = {r[0]: r for r in rows}
    assert set(list_models()) | {"timm:<name>"} <= set(by_name)
    for name, r in by_name.items():
        assert r[3].isdigit(), r  # name, dims, task, min px
    assert by_name["timm:<name>"][1:4] == ["2D/3D*", "clf", "32"]
    assert by_name["resnet18"][1] == "2D/3D*" and by_name["inception_v3"][1] == "2D"


def _balanced(ds, n: int) -> Subset:
    """The first ``n / 2`` examples of each class of a binary split."""
    y = [int(ds[i][1]) for i in range(len(ds))]
    idx = [i for i, v in enumerate(y) if v == 0][: n // 2] + [i for i, v in enumerate(y) if v == 1][: n // 2]
    return Subset(ds, idx)


def test_3d_classifier_from_imagenet_efficientnet_lite0_trains_on_adrenalmnist3d(adrenalmnist3d_npz):
    """Fast: 32 training volumes, 4 steps, 16 val / 32 test volumes (balanced)."""
    from transfuse.data import load_dataset
    from transfuse.inits import apply_init
    from transfuse.train.loop import fit

    data = load_dataset(DataSpec(name="medmnist:adrenalmnist3d", data_root=str(adrenalmnist3d_npz.parent),
                                 n_train=32, image_size=32))
    data = replace(data, val=_balanced(data.val, 16), test=_balanced(data.test, 32))
    torch.manual_seed(0)
    model = create_model("timm:efficientnet_lite0", spatial_dims=3, in_channels=1, num_classes=2)
    report = apply_init(model, "pretrained", source="imagenet:efficientnet_lite0", seed=0)
    notes = " ".join(report.notes)
    assert "inflated 2D source into 3D" in notes and "(1xkxk)" in notes, notes
    stem = model.conv_stem.weight
    assert stem.shape == (32, 1, 1, 3, 3) and float(stem.detach().abs().sum()) > 0
    out = fit(model, data, TrainSpec(steps=4, batch_size=8, lr=0.01, eval_every=4), device="cpu",
              progress=False)
    auc = out.test["auc"]
    assert math.isfinite(auc) and 0.0 <= auc <= 1.0


@pytest.mark.slow
def test_train_run_3d_classifier_from_imagenet_on_adrenalmnist3d(adrenalmnist3d_npz, tmp_path):
    """The CLI's path (``train_run``), full val/test splits: ~1 min on 2 cores."""
    from transfuse.run import train_run

    spec = RunSpec(
        data=DataSpec(name="medmnist:adrenalmnist3d", data_root=str(adrenalmnist3d_npz.parent),
                      n_train=32, image_size=32),
        model=ModelSpec(name="timm:efficientnet_lite0", spatial_dims=3),
        init=InitSpec(name="pretrained", source="imagenet:efficientnet_lite0"),
        train=TrainSpec(steps=4, batch_size=8, lr=0.01, eval_every=4))
    out = train_run(spec, workspace=tmp_path, device="cpu", progress=False)
    r = out.record
    assert r.status == "finished" and r.model_info["spatial_dims"] == 3
    auc = out.test["auc"]
    assert auc is not None and math.isfinite(auc) and 0.0 <= auc <= 1.0
    assert any("inflated 2D source into 3D" in n for n in r.init_report["notes"])


@pytest.mark.parametrize("mode", ["1xkxk", "center"])
def test_timm_se_layers_with_maxpool_norm_and_effective_se(mode):
    """``SEModule(add_maxpool=True, norm_layer=BatchNorm2d)`` and ``EffectiveSEModule`` directly."""
    import timm.layers

    from transfuse.models import inflate_model
    from transfuse.models.inflate import SqueezeExcite3d

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1),
                        timm.layers.SEModule(8, rd_channels=4, add_maxpool=True,
                                             norm_layer=nn.BatchNorm2d),
                        timm.layers.EffectiveSEModule(8, add_maxpool=True)).eval()
    net3, rep = inflate_model(net, mode=mode)
    assert isinstance(net3[1], SqueezeExcite3d) and isinstance(net3[2], SqueezeExcite3d)
    assert net3[1].add_maxpool and isinstance(net3[1].bn, nn.BatchNorm3d)
    assert ("1", "SEModule", "SqueezeExcite3d") in [(c.path, c.before, c.after) for c in rep.converted]
    assert list(net3.state_dict()) == list(net.state_dict())
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        want, got = net(x), net3(x.unsqueeze(2).repeat(1, 1, 3, 1, 1))
    for d in range(3):
        torch.testing.assert_close(got[:, :, d], want, atol=2e-5, rtol=1e-4)
    # a squeeze-excite whose children are not the ones its twin knows stays refused
    odd = timm.layers.SEModule(8)
    odd.extra = nn.Identity()
    with pytest.raises(ModelError, match=r"inflate the model \(timm\.layers.*SEModule\): its forward is 2D-only"):
        inflate_model(odd)
