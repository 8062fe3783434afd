"""BatchNorm on a constant or nearly empty batch (issue 17, item 9; ``transfuse/models/norm.py``).

Root cause held here: in training mode a BatchNorm whose batch has no spread multiplies the
gradient by ``γ / sqrt(ε) ≈ 316``; ``unet_efficientnet_lite0`` in 3D has 15 BatchNorms in a row on
1×1 in-plane maps at stride 32, so a batch of two constant 32³ patches gave a gradient norm of
~1e27 (then inf, then NaN). The stable twins normalise such channels with their running
statistics.

- the layer: identical to PyTorch's on an ordinary batch (output, gradient, running stats);
  on a constant batch its output is the evaluation output and its gradient gain is bounded;
- every U-Net's BatchNorms are stable, 2D and 3D (registry-driven); inflation keeps them stable;
- the whole EfficientNet U-Net: a constant and a nearly empty batch give a finite, small gradient;
- slow: 100 training steps on a synthetic four-slab head volume (5 classes, some absent from a
  patch, a constant and a nearly empty batch injected) stay finite.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from transfuse.models import create_model, inflate_model, list_models, model_info
from transfuse.models.norm import (StableBatchNorm, StableBatchNorm2d, StableBatchNorm3d,
                                   StableBatchNormAct3d, stabilise_batchnorm)
from transfuse.train.loop import loss_fn


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread_module):
    """Small tensors: one intra-op thread (see conftest)."""


def _pair(cls, n=6):
    torch.manual_seed(0)
    ref = (nn.BatchNorm2d if cls is StableBatchNorm2d else nn.BatchNorm3d)(n)
    ref.weight.data.uniform_(0.5, 1.5)
    ref.bias.data.uniform_(-0.5, 0.5)
    new = (nn.BatchNorm2d if cls is StableBatchNorm2d else nn.BatchNorm3d)(n)
    new.load_state_dict(ref.state_dict())
    assert stabilise_batchnorm(new) == 1 and type(new) is cls
    return ref, new


@pytest.mark.parametrize("cls", [StableBatchNorm2d, StableBatchNorm3d])
def test_ordinary_batch_is_pytorchs_batchnorm(cls):
    ref, new = _pair(cls)
    x = torch.randn(2, 6, *([4] * (2 if cls is StableBatchNorm2d else 3)), requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    y_ref, y_new = ref(x), new(x2)
    torch.testing.assert_close(y_new, y_ref)
    (y_ref * torch.arange(y_ref.numel()).view_as(y_ref)).sum().backward()
    (y_new * torch.arange(y_new.numel()).view_as(y_new)).sum().backward()
    torch.testing.assert_close(x2.grad, x.grad)
    torch.testing.assert_close(new.running_var, ref.running_var)
    assert list(new.state_dict()) == list(ref.state_dict())


def test_constant_batch_uses_the_running_statistics_with_a_bounded_gain():
    ref, bn = _pair(StableBatchNorm3d)
    with torch.no_grad():  # running statistics as after some training
        bn.running_mean.copy_(torch.linspace(-1, 1, 6))
        bn.running_var.copy_(torch.linspace(0.5, 2, 6))
        ref.load_state_dict(bn.state_dict())
    x = torch.full((2, 6, 32, 1, 1), 0.3, requires_grad=True)  # a 1×1 bottom map, constant
    y = bn.train()(x)
    with torch.no_grad():
        want = nn.BatchNorm3d.forward(ref.eval(), x)
    torch.testing.assert_close(y, want)
    g = torch.randn_like(y)
    y.backward(g)
    gain = float(x.grad.abs().max() / g.abs().max())
    assert gain <= float((bn.weight.detach().abs() / (bn.running_var + bn.eps).sqrt()).max()) + 1e-5
    # PyTorch's: batch variance 0 → gain up to γ / sqrt(ε)
    x2 = x.detach().clone().requires_grad_()
    ref.train()(x2).backward(g)
    assert float(x2.grad.abs().max() / g.abs().max()) > 100 * gain
    # the running statistics still move towards the batch, as PyTorch's do
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    assert bn.num_batches_tracked == 1


def _unets() -> list:
    return [pytest.param(n, d, id=f"{n}-{d}d") for n in list_models("unet_*")
            for d in model_info(n)["spatial_dims"] if d not in model_info(n)["heavy_dims"]]


@pytest.mark.parametrize(("name", "dims"), _unets())
def test_every_unet_batchnorm_is_stable(name, dims):
    with torch.device("meta"):
        m = create_model(name, spatial_dims=dims, in_channels=1, num_classes=3)
    bns = [n for n, mod in m.named_modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m.get_submodule(n), StableBatchNorm) for n in bns)


def test_inflation_keeps_batchnorm_stable():
    m2 = create_model("unet_efficientnet_lite0", in_channels=1, num_classes=3)
    m3, _ = inflate_model(m2, mode="1xkxk")
    assert type(m3.bn1) is StableBatchNormAct3d and type(m3.decoder.blocks[0].convs.conv_0.adn.N) \
        is StableBatchNorm3d
    assert not [n for n, mod in m3.named_modules() if isinstance(mod, nn.BatchNorm2d)]


def _grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.zero_grad()
    loss = loss_fn(model(x).float(), y, torch.ones_like(y), "segmentation")
    loss.backward()
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters()
                         if p.grad is not None))


def test_effnet_unet_gradient_on_constant_and_nearly_empty_batches():
    """Was 2e27 (constant) and 1e8 (nearly empty) with PyTorch's BatchNorm; ordinary: ~5."""
    torch.manual_seed(0)
    m = create_model("unet_efficientnet_lite0", spatial_dims=3, in_channels=1, num_classes=5).train()
    with torch.no_grad():  # running statistics from a few ordinary batches
        for _ in range(3):
            m(torch.randn(2, 1, 32, 32, 32))
    const = torch.full((2, 1, 32, 32, 32), -0.6)
    near = const.clone()
    near[:, :, 14:17, 14:17, 14:17] = 1.4
    y0 = torch.zeros(2, 32, 32, 32, dtype=torch.long)
    y1 = y0.clone()
    y1[:, 14:17, 14:17, 14:17] = 2
    for x, y in ((const, y0), (near, y1)):
        g = _grad_norm(m, x, y)
        assert math.isfinite(g) and g < 100, g


def _head_volume(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A T1-like head, 128×128×62 voxels (2×2×3 mm): ellipsoid shells of 4 tissues in air."""
    z, y, x = np.meshgrid(np.linspace(-1, 1, 128), np.linspace(-1, 1, 128), np.linspace(-1, 1, 62),
                          indexing="ij")
    r = np.sqrt((z / 0.8) ** 2 + (y / 0.9) ** 2 + (x / 0.85) ** 2)
    label = np.select([r < 0.35, r < 0.6, r < 0.7, r < 0.85], [2, 1, 3, 4], 0).astype(np.uint8)
    t1 = np.array([0.0, 0.55, 0.8, 0.2, 0.35])[label] + 0.03 * rng.standard_normal(label.shape)
    return (t1 * 1000 * (label > 0)).astype(np.float32), label


@pytest.mark.slow
def test_effnet_unet_trains_100_steps_on_a_four_slab_volume_without_nan(tmp_path):
    """``nifti:`` folder of four 32-voxel slabs, ``patch_size=32, spacing=2``, batch 2, lr 0.01;
    a constant batch (air) at step 10 and a nearly empty one at step 20. ~1-2 min on 2 cores."""
    import nibabel as nib
    from torch.utils.data import DataLoader

    from transfuse.config import DataSpec, TrainSpec
    from transfuse.data import load_dataset
    from transfuse.train.loop import lr_lambda, make_optimizer

    t1, label = _head_volume(np.random.default_rng(0))
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    for d in ("images", "labels"):
        (tmp_path / d).mkdir()
    for i in range(4):
        sl = slice(32 * i, 32 * (i + 1))
        nib.save(nib.Nifti1Image(t1[sl], aff), tmp_path / "images" / f"slab{i}.nii.gz")
        nib.save(nib.Nifti1Image(label[sl], aff), tmp_path / "labels" / f"slab{i}.nii.gz")
    data = load_dataset(DataSpec(name=f"nifti:{tmp_path}", patch_size=32, spacing=2.0))
    assert data.info.num_classes == 5
    torch.manual_seed(0)
    model = create_model("unet_efficientnet_lite0", spatial_dims=3, in_channels=1, num_classes=5)
    spec = TrainSpec(steps=100, batch_size=2, lr=0.01)
    opt = make_optimizer(model, spec)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec, spec.steps))
    loader = DataLoader(data.train, batch_size=2, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0))
    batches = iter(())
    air = float(data.train[0][0].min())  # the normalised background value
    absent = 0
    model.train()
    for step in range(1, spec.steps + 1):
        try:
            x, y, _ = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y, _ = next(batches)
        if step == 10:  # a constant patch pair
            x, y = torch.full_like(x, air), torch.zeros_like(y)
        elif step == 20:  # nearly empty: a 3-voxel cube of tissue 1 in air
            x, y = torch.full_like(x, air), torch.zeros_like(y)
            x[:, :, 14:17, 14:17, 14:17] = air + 1.0
            y[:, 14:17, 14:17, 14:17] = 1
        absent += len(torch.unique(y)) < 5
        loss = loss_fn(model(x).float(), y, torch.ones_like(y), "segmentation")
        assert math.isfinite(loss.item()), f"loss {loss.item()} at step {step}"
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    assert absent >= 2  # some classes were absent from some patches
    assert all(torch.isfinite(p).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        out = model(data.val[0][0][None, :, :32, :32, :32])
    assert torch.isfinite(out).all()
