"""Any timm model by name: ``timm:<name>`` (built by timm, never re-implemented here).

Stages are read off the module tree: the children before the first block container
(``blocks``, ``layers``, ``stages``, ``features``) are the ``stem``; each element of the container
is a ``block``; children between the container and the classifier join the last block; the
classifier is the ``head``.
"""

from __future__ import annotations

import re

from torch import nn

from ..errors import ConfigError

__all__ = ["build_timm"]

_CONTAINERS = ("blocks", "layers", "stages", "features")


def build_timm(*, timm_name: str, spatial_dims: int, in_channels: int, num_classes: int,
               drop_rate: float = 0.0):
    import timm

    if not timm.is_model(timm_name):
        import difflib

        close = difflib.get_close_matches(timm_name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise ConfigError(f"unknown timm model {timm_name!r}{hint}")
    model = timm.create_model(timm_name, pretrained=False, num_classes=num_classes,
                              in_chans=in_channels, drop_rate=drop_rate)
    # Probe stage shapes at the model's native input size (ViTs accept no other).
    model.probe_size = int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])
    return model, _timm_groups(model, timm_name)


def _timm_groups(model: nn.Module, timm_name: str) -> list[tuple[str, tuple[str, ...], str]]:
    clf = model.get_classifier()
    head_name = _module_name(model, clf) if isinstance(clf, nn.Module) else None
    children = [n for n, m in model.named_children()
                if n == head_name or any(True for _ in m.parameters()) or any(True for _ in m.buffers())]
    container = next((n for n in children if n in _CONTAINERS), None)
    if container is not None:
        blocks = [f"{container}.{n}" for n, _ in getattr(model, container).named_children()]
        first = children.index(container)
        last = first
    else:  # resnet-style: layer1 ... layerN are direct children
        idx = [i for i, n in enumerate(children) if re.fullmatch(r"layer\d+", n)]
        blocks = [children[i] for i in idx]
        first, last = (idx[0], idx[-1]) if idx else (None, None)
    if not blocks or head_name is None or first == 0:
        raise ConfigError(f"timm:{timm_name}: cannot find its stem, blocks or classifier; "
                          "this timm family is not supported yet")
    # Parameters held directly by the root (ViT's cls_token, pos_embed) belong to the stem.
    root_params = tuple(n for n, _ in model.named_parameters(recurse=False))
    stem = tuple(children[:first])
    tail: tuple[str, ...] = ()
    for c in children[last + 1:]:
        if c == head_name:
            continue
        if head_name.startswith(c + "."):  # e.g. ConvNeXt's head.norm beside head.fc
            tail += tuple(f"{c}.{n}" for n, m in model.get_submodule(c).named_children()
                          if f"{c}.{n}" != head_name and any(True for _ in m.parameters()))
        else:
            tail += (c,)
    groups = [("stem", stem + root_params, stem[-1])]
    for j, b in enumerate(blocks, 1):
        mods = (b,) + (tail if j == len(blocks) else ())
        groups.append((f"block{j}", mods, mods[-1]))
    groups.append(("head", (head_name,), head_name))
    return groups


def _module_name(model: nn.Module, target: nn.Module) -> str | None:
    return next((n for n, m in model.named_modules() if m is target), None)
