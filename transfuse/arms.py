"""The arm a run belongs to, as one label: init · source · fine-tuning · augmentation · ….

One function, used by the study report (cells), ``runs list``/``show``/``export`` and
``study status -v``, so an ImageNet full fine-tune, an ImageNet linear probe and an ``ssl:``
source are told apart the same way everywhere. Pure functions over run specs as dicts; nothing
heavy is imported.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

__all__ = ["arm_label", "arm_labels"]

# How a run trains, beyond its init (train.finetune & co., issue 15; imbalance and early
# stopping, issue 33): shown in the arm's label when it differs from the default, so a study
# without these axes keeps its plain init labels.
_ARM_TRAIN_KEYS = (("finetune", "full"), ("layer_decay", 1.0), ("head_lr_mult", 1.0),
                   ("freeze_bn", False), ("augment", "none"), ("class_weights", "none"),
                   ("sampler", "random"), ("early_stop", None))


def arm_label(spec: dict[str, Any], ambiguous: set[str] | frozenset[str] = frozenset()) -> str:
    """The arm a run belongs to: its init, then how it fine-tunes where that is not the default.

    ``"pretrained"``, ``"pretrained · lpft:100"``, ``"pretrained · linear_probe · augment=basic"``,
    ``"random · layer_decay=0.75"``, ``"random · sampler=balanced"``; the init's source in
    brackets where the init name alone is ``ambiguous`` (one model runs it from several sources).
    """
    name = spec["init"]["name"]
    src = spec["init"].get("source")
    parts = [f"{name} ({src})" if src and name in ambiguous else name]
    train = spec.get("train", {})
    for key, default in _ARM_TRAIN_KEYS:
        value = train.get(key, default)
        if value == default:
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
    return [arm_label(sp, ambiguous) for sp in specs]
