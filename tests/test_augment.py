"""Training augmentation (``train.augment``): the same seed gives the same batches and metrics,
evaluation never sees it, labels of segmentation follow the image, and run ids of specs without
it do not change.
"""

from __future__ import annotations

import json

import pytest
import torch

from transfuse.cli import main
from transfuse.config import DataSpec, ModelSpec, RunSpec, TrainSpec, run_id
from transfuse.data import load_dataset
from transfuse.errors import ConfigError
from transfuse.models import create_model
from transfuse.store import Store
from transfuse.train.augment import make_augment
from transfuse.train.loop import evaluate, fit

ENGINES = [(2, 1, "multiclass", "torchvision"), (2, 3, "multilabel", "torchvision"),
           (3, 1, "multiclass", "monai"), (3, 2, "segmentation", "monai"),
           (2, 1, "segmentation", "monai")]


def _batch(dims: int, c: int, task: str, n: int = 4, side: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, c, *([side] * dims), generator=g)
    if task == "segmentation":
        y = torch.randint(0, 3, (n, *([side] * dims)), generator=g)
    elif task == "multilabel":
        y = torch.randint(0, 2, (n, 4), generator=g).float()
    else:
        y = torch.randint(0, 3, (n,), generator=g)
    return x, y


# -- spec ----------------------------------------------------------------------------------------
def test_run_id_unchanged_without_augment_and_changed_with_it():
    spec = RunSpec(data=DataSpec(name="builtin:brain_tissue", n_train=64),
                   model=ModelSpec(name="cbr_tiny", spatial_dims=2), train=TrainSpec(steps=4))
    assert "augment" not in spec.to_dict()["train"]
    assert run_id(spec) == run_id(RunSpec(data=spec.data, model=spec.model,
                                          train=TrainSpec(steps=4, augment="none")))
    basic = RunSpec(data=spec.data, model=spec.model, train=TrainSpec(steps=4, augment="basic"))
    assert basic.to_dict()["train"]["augment"] == "basic" and run_id(basic) != run_id(spec)


def test_unknown_level_names_the_field_and_the_choices():
    with pytest.raises(ConfigError, match=r"train.augment='heavy' is not valid; choose one of "
                                          r"none, basic, strong"):
        TrainSpec(augment="heavy")
    assert make_augment("none", spatial_dims=2, channels=1, task="multiclass") is None


# -- the transforms ------------------------------------------------------------------------------
@pytest.mark.parametrize("level", ["basic", "strong"])
@pytest.mark.parametrize("dims, c, task, library", ENGINES)
def test_seeded_per_batch_shapes_kept_and_global_rng_untouched(dims, c, task, library, level):
    aug = make_augment(level, spatial_dims=dims, channels=c, task=task,
                       norm_mean=(0.4,) * c, norm_std=(0.2,) * c)
    assert aug.describe()["library"] == library
    x, y = _batch(dims, c, task)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    x1, y1 = aug(x, y, seed=5, step=3)
    assert torch.equal(torch.random.get_rng_state(), before)  # dropout & co. draw as without it
    x2, y2 = aug(x, y, seed=5, step=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert (x1.shape, x1.dtype, y1.shape, y1.dtype) == (x.shape, x.dtype, y.shape, y.dtype)
    assert not torch.equal(x1, x)
    for other in ({"seed": 6, "step": 3}, {"seed": 5, "step": 4}, {"seed": 5, "step": 3, "rank": 1}):
        assert not torch.equal(aug(x, y, **other)[0], x1)
    # each example gets its own draw: identical inputs come out different
    same = x[:1].expand_as(x).clone()
    out = aug(same, y, seed=0, step=1)[0]
    assert not all(torch.equal(out[0], out[i]) for i in range(1, len(out)))
    if task != "segmentation":
        assert torch.equal(y1, y)  # class targets are never touched


@pytest.mark.parametrize("dims", [2, 3])
def test_segmentation_labels_follow_the_image(dims):
    aug = make_augment("basic", spatial_dims=dims, channels=1, task="segmentation")
    side = 16
    y = torch.zeros(6, *([side] * dims), dtype=torch.long)
    idx = (slice(None),) + (slice(2, 9),) * dims  # an off-centre cube: flips and rotations move it
    y[idx] = 1
    y[(slice(None),) + (slice(10, 14),) * dims] = 2
    x = y.unsqueeze(1).float()  # the image is its own label map
    xa, ya = aug(x, y, seed=1, step=1)
    assert set(ya.unique().tolist()) <= {0, 1, 2}
    moved = (ya != y).float().mean().item()
    assert moved > 0.02  # the labels did move ...
    img = xa[:, 0]
    peak = img.amax(dim=tuple(range(1, dims + 1)), keepdim=True)  # 2 × the intensity factor
    agree = (img / peak * 2).round()
    assert (agree == ya).float().mean().item() > 0.9  # ... together with the image


def test_rgb_colour_jitter_works_in_the_data_range():
    aug = make_augment("strong", spatial_dims=2, channels=3, task="multiclass",
                       norm_mean=(0.5, 0.4, 0.3), norm_std=(0.25, 0.2, 0.1))
    raw = torch.rand(8, 3, 16, 16)
    x = (raw - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.25, 0.2, 0.1]).view(1, 3, 1, 1)
    back = aug(x, torch.zeros(8, dtype=torch.long), seed=0, step=1)[0]
    back = back * torch.tensor([0.25, 0.2, 0.1]).view(1, 3, 1, 1) + torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    assert back.min() >= -1e-5 and back.max() <= 1 + 1e-5  # in 0-1 again, not clamped garbage
    assert 0.15 < back.std().item() < 0.45


# -- in training ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def brain():
    return load_dataset(DataSpec(name="builtin:brain_tissue", n_train=64))


def _fit(data, augment: str, seed: int = 0, run_dir=None):
    torch.manual_seed(0)
    model = create_model("cbr_tiny", spatial_dims=2, in_channels=data.info.in_channels,
                         num_classes=data.info.num_classes)
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()) if m.training else None)
    res = fit(model, data, TrainSpec(steps=6, eval_every=3, batch_size=16, lr=0.05, augment=augment),
              seed=seed, device="cpu", run_dir=run_dir, progress=False)
    return model, res, seen


def test_same_seed_same_batches_and_metrics_and_evaluation_never_augmented(brain, tmp_path):
    _, a, batches_a = _fit(brain, "basic", run_dir=tmp_path / "a")
    _, b, batches_b = _fit(brain, "basic")
    assert len(batches_a) == 6 and all(torch.equal(p, q) for p, q in zip(batches_a, batches_b))
    assert a.history == b.history and a.test == b.test
    _, none, batches_n = _fit(brain, "none")
    assert not torch.equal(batches_a[0], batches_n[0])  # augmentation changed what trained
    assert none.history[0] == a.history[0]  # step 0: the same model scores the same, unaugmented
    assert [h for h in none.history if h[1] == "train"] != [h for h in a.history if h[1] == "train"]
    _, other, batches_o = _fit(brain, "basic", seed=1)
    assert not torch.equal(batches_o[0], batches_a[0])
    # the test score is the best checkpoint's on the plain test split
    model = create_model("cbr_tiny", spatial_dims=2, in_channels=brain.info.in_channels,
                         num_classes=brain.info.num_classes)
    state = torch.load(tmp_path / "a" / "best.pt", weights_only=True)["state_dict"]
    model.load_state_dict(state)
    from torch.utils.data import DataLoader

    metrics, _ = evaluate(model, DataLoader(brain.test, batch_size=256), data=brain,
                          device=torch.device("cpu"))
    assert metrics["auc"] == pytest.approx(a.test["auc"], abs=1e-6)


def test_cli_flag_is_stored_with_its_recipe(tmp_path, capsys):
    args = ["train", "--dataset", "builtin:brain_tissue", "--n-train", "64", "--model", "cbr_tiny",
            "--steps", "2", "--eval-every", "2", "--batch-size", "16", "--no-progress", "--json",
            "-w", str(tmp_path), "--augment", "strong"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    rec = Store(tmp_path).get_run(out["run_id"])
    assert rec.spec["train"]["augment"] == "strong"
    assert rec.model_info["augment"] == {"level": "strong", "library": "torchvision", "transforms": [
        "RandomHorizontalFlip", "RandomAffine", "RandGrayIntensity"]}
    assert main(["runs", "show", rec.run_id, "-w", str(tmp_path)]) == 0
    assert "  tune   augment strong  (" in capsys.readouterr().out
    assert main(args[:-2]) == 0  # without the flag: another run, no recipe
    plain = Store(tmp_path).get_run(json.loads(capsys.readouterr().out)["run_id"])
    assert plain.run_id != rec.run_id and plain.model_info["augment"] is None
