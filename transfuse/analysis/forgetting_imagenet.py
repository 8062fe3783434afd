"""Forgetting of ImageNet: the ImageNet head re-attached to an encoder fine-tuned from ImageNet.

For runs initialised with ``pretrained`` from an ``imagenet:`` source (e.g. EfficientNet-Lite0 in
examples/transfusion.yaml), the source model is the ImageNet network with its 1000-class
classifier, and the source task is scored on :data:`PHOTOS`: **six** natural photos that ship
with scikit-image (a dependency, so offline), each hand-labelled with the set of ImageNet-1k
classes that describe it (any of them counts). The set is tiny — six images, no held-out
ImageNet validation data is available offline — so the score is the mean log-probability the
model puts on each photo's label set (a continuous score, less coarse than accuracy over six
images), and the curve says how the source classifier's confidence moves as fine-tuned stages
replace the source's, not a benchmark accuracy.

The photos are resized to the source's input size (224 px for Lite0) and normalised as the source
expects (mean = std = 0.5); the hybrids are built as in :func:`~.forgetting.hybrid_scores` (keep
``stem … stage k`` from the fine-tuned run, the rest and the head from the source; BatchNorm
statistics travel with their stage).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["PHOTOS", "photo_batch", "label_log_likelihood", "imagenet_hybrid_scores",
           "study_imagenet_forgetting", "ImageNetForgetting"]

#: scikit-image photo → (what it shows, ImageNet-1k class indices that describe it), hand-labelled
#: from the picture (not from any model's prediction).
PHOTOS: dict[str, tuple[str, tuple[int, ...]]] = {
    "chelsea.png": ("a tabby cat", (281, 282, 285)),            # tabby, tiger cat, Egyptian cat
    "coffee.png": ("a cup of coffee on a saucer", (967, 968, 504)),  # espresso, cup, coffee mug
    "rocket.jpg": ("a rocket on its launch pad", (657, 744, 812)),   # missile, projectile, space shuttle
    "motorcycle_left.png": ("a motorcycle", (670, 665)),         # motor scooter, moped
    "camera.png": ("a photographer with a camera on a tripod", (872, 759)),  # tripod, reflex camera
    "clock_motion.png": ("a wall clock, motion-blurred", (892, 409)),  # wall clock, analog clock
}


def photo_batch(*, size: int = 224, mean: tuple[float, ...] = (0.5, 0.5, 0.5),
                std: tuple[float, ...] = (0.5, 0.5, 0.5)) -> tuple[Any, list[tuple[int, ...]]]:
    """The labelled photos as one normalised batch ``(6, 3, size, size)`` and their label sets."""
    import torch
    import torch.nn.functional as F
    from skimage import data as skdata
    from skimage import io

    root = Path(skdata.__file__).parent
    xs = []
    for name in PHOTOS:
        im = io.imread(root / name)
        if im.ndim == 2:
            im = np.stack([im] * 3, -1)
        x = torch.tensor(np.ascontiguousarray(im[..., :3])).permute(2, 0, 1).float()[None] / 255
        xs.append(F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                align_corners=False))
    x = torch.cat(xs)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s, [labels for _, labels in PHOTOS.values()]


def label_log_likelihood(probs: np.ndarray, labels: list[tuple[int, ...]]) -> float:
    """Mean over photos of ``log Σ_{c ∈ label set} p_c``; ``probs`` ``(N, 1000)``, rows in photo order."""
    vals = [math.log(max(float(probs[i, list(ls)].sum()), 1e-300)) for i, ls in enumerate(labels)]
    return float(np.mean(vals))


class _Photos:
    """The photos as a source 'dataset' for :func:`~.forgetting.hybrid_scores` (its ``test``)."""

    def __init__(self, x: Any) -> None:
        import torch
        from torch.utils.data import TensorDataset

        self.test = TensorDataset(x, torch.arange(len(x)))


def imagenet_hybrid_scores(source: Any, finetuned: dict[str, Any], *, size: int = 224,
                           device: Any = None) -> list[tuple[str, float]]:
    """:func:`~.forgetting.hybrid_scores` on :data:`PHOTOS`, scored by :func:`label_log_likelihood`.

    Args:
        source: the ImageNet model with its 1000-class head (weights loaded).
        finetuned: the fine-tuned run's state dict.
    """
    from .forgetting import hybrid_scores

    x, labels = photo_batch(size=size)
    return hybrid_scores(source, finetuned, _Photos(x), device=device,
                         score=lambda p, y: label_log_likelihood(p, [labels[int(i)] for i in y]))


@dataclass
class ImageNetForgetting:
    """Curves of a study's ImageNet-initialised runs (:func:`study_imagenet_forgetting`)."""

    runs: list[Any]
    curves: list[Any]
    sources: list[str]

    def caption(self) -> str:
        return (f"ImageNet forgetting: mean log-probability of the labelled classes on {len(PHOTOS)} "
                "scikit-image photos (a tiny set) with the ImageNet head on the fine-tuned "
                "stem..stage k (0 is certainty; the source alone is the first point)")

    def to_dict(self) -> dict[str, Any]:
        return {"score": "mean log-probability of each photo's hand-labelled ImageNet classes",
                "photos": {k: {"shows": v[0], "imagenet_classes": list(v[1])}
                           for k, v in PHOTOS.items()},
                "n_photos": len(PHOTOS), "sources": self.sources,
                "curves": [c.to_dict() for c in self.curves],
                "runs": [r.__dict__ for r in self.runs]}


def study_imagenet_forgetting(store: Any, study: str, *, device: Any = None, margin: float = 0.1,
                              alpha: float = 0.05) -> ImageNetForgetting | None:
    """The ImageNet forgetting curves of the study's ``pretrained`` runs from an ``imagenet:``
    source, per arm over seeds (``None`` when the study has none).

    ``margin`` is in mean log-probability (the strategy-vs-full verdicts of
    :func:`~.forgetting.arm_curves`).
    """
    from ..models import create_model
    from ..decide.results import load_results
    from ..weights import resolve_source
    from .forgetting import RunForgetting, arm_curves
    from .runs import load_checkpoint, run_info

    res = load_results(store, study)
    models: dict[str, Any] = {}
    runs = []
    for row in res.rows:
        rec = store.get_run(row.run_id)
        init = rec.spec.get("init") or {}
        src = str(init.get("source") or "")
        if init.get("name") != "pretrained" or not src.startswith("imagenet:"):
            continue
        if src not in models:
            sw = resolve_source(src)
            if not sw.num_classes or sw.arch is None:
                raise ConfigError(f"{src} has no classifier to re-attach")
            model = create_model(sw.arch, spatial_dims=2, in_channels=sw.in_channels,
                                 num_classes=sw.num_classes)
            model.load_state_dict(sw.loader())
            models[src] = (model, sw)
        model, sw = models[src]
        size = int((sw.input_size or (224,))[0])
        pts = imagenet_hybrid_scores(model, load_checkpoint(rec, "best"), size=size, device=device)
        info = run_info(rec)
        runs.append(RunForgetting(rec.run_id, row.init, info.model, info.size, info.seed, src,
                                  tuple(s for s, _ in pts), tuple(v for _, v in pts)))
    if not runs:
        return None
    return ImageNetForgetting(runs, arm_curves(runs, margin=margin, alpha=alpha), sorted(models))
