"""The arm a run belongs to, as one label: init · source · fine-tuning · augmentation · ….

One function, used by the study report (cells), ``runs list``/``show``/``export`` and
``study status -v``, so an ImageNet full fine-tune, an ImageNet linear probe and an ``ssl:``
source are told apart the same way everywhere. Pure functions over run specs as dicts; nothing
heavy is imported.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

__all__ = ["arm_label", "arm_labels", "split_averaging", "AVERAGING_KEYS"]

# How a run trains, beyond its init (train.finetune & co., issue 15; imbalance and early
# stopping, issue 33): shown in the arm's label when it differs from the default, so a study
# without these axes keeps its plain init labels.
_ARM_TRAIN_KEYS = (("finetune", "full"), ("layer_decay", 1.0), ("head_lr_mult", 1.0),
                   ("freeze_bn", False), ("augment", "none"), ("class_weights", "none"),
                   ("sampler", "random"), ("early_stop", None),
                   # issue 32: weight averaging ("ema=0.99", "swa=150"), last in the label
                   ("ema", None), ("swa", None))
#: The averaging keys of a label: :func:`arm_labels` leaves them out when every run shares them
#: (a study-wide setting), so the reference arm keeps its plain name.
AVERAGING_KEYS = ("ema", "swa")


def arm_label(spec: dict[str, Any], ambiguous: set[str] | frozenset[str] = frozenset(), *,
              averaging: bool = True) -> str:
    """The arm a run belongs to: its init, then how it fine-tunes where that is not the default.

    ``"pretrained"``, ``"pretrained · lpft:100"``, ``"pretrained · linear_probe · augment=basic"``,
    ``"random · layer_decay=0.75"``, ``"random · sampler=balanced"``; the init's source in
    brackets where the init name alone is ``ambiguous`` (one model runs it from several sources).
    Weight averaging comes last (``"pretrained · ema=0.99"``) unless ``averaging`` is false.
    """
    name = spec["init"]["name"]
    src = spec["init"].get("source")
    parts = [f"{name} ({src})" if src and name in ambiguous else name]
    train = spec.get("train", {})
    for key, default in _ARM_TRAIN_KEYS:
        value = train.get(key, default)
        if value == default or (key in AVERAGING_KEYS and not averaging):
            continue
        if key == "finetune":
            parts.append(str(value))
        elif key == "freeze_bn":
            parts.append("freeze_bn")
        else:
            parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return " · ".join(parts)


def arm_labels(specs: list[dict[str, Any]]) -> list[str]:
    """:func:`arm_label` of each spec, with the source shown wherever one model runs the same
    init from several sources among ``specs`` (as the report labels its cells)."""
    sources: dict[tuple[str, str], set] = defaultdict(set)
    for sp in specs:
        sources[(sp["model"]["name"], sp["init"]["name"])].add(sp["init"].get("source"))
    ambiguous = {init for (_, init), s in sources.items() if len(s) > 1}
    settings = {tuple(sp.get("train", {}).get(k) for k in AVERAGING_KEYS) for sp in specs}
    return [arm_label(sp, ambiguous, averaging=len(settings) > 1) for sp in specs]


def split_averaging(label: str) -> tuple[str, str | None]:
    """An arm label without its weight averaging, and that averaging:
    ``"pretrained · ema=0.99"`` → ``("pretrained", "ema=0.99")``, ``"random"`` → ``("random", None)``."""
    parts = label.split(" · ")
    avg = [p for p in parts if p.partition("=")[0] in AVERAGING_KEYS]
    base = " · ".join(p for p in parts if p not in avg)
    return base, (" · ".join(avg) if avg else None)
