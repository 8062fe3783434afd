"""``apply_init``: run an init spec (one strategy or a ``+`` combination) on a model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from ..config import InitSpec
from ..errors import ConfigError
from ..models import transposed_strides
from ..weights.sources import SourceWeights, resolve_source
from .adapt import Aligned, align_source, check_inflate
from .base import INITS, Action, InitReport, TensorRecord, build_context, parse_init
from .stats import mean_std_many

__all__ = ["apply_init", "init_state"]


def apply_init(model: nn.Module, init: str | InitSpec = "random", *,
               source: SourceWeights | str | None = None, seed: int = 0, partial: bool = False,
               workspace: str | Path | None = None, inflate: str = "mean") -> InitReport:
    """Initialise ``model`` in place and report what happened to every tensor.

    Args:
        model: a model from :func:`~transfuse.models.create_model` (it has ``stage_info``).
        init: strategy spec — ``"meanvar"``, ``"transfusion:block2"``,
            ``"transfusion:block1+meanvar"`` — or an :class:`InitSpec` (its ``source`` is used
            when ``source`` is not given).
        source: pretrained weights (a :class:`SourceWeights` or a source name).
        seed: seed of every random draw.
        partial: tensors the source cannot provide stay at their default instead of raising.
        workspace: run store, for ``run:<id>`` sources.
        inflate: a 2D source for a 3D model is inflated automatically (every 2D conv kernel whose
            model kernel is 3D, through :func:`~transfuse.models.inflate_state_dict`): kernels of
            depth 1 (pseudo-3D) by ``1xkxk``, deeper ones by ``"mean"`` (I3D, default) or
            ``"center"``; ``"1xkxk"`` refuses deeper ones. The report notes how many kernels were
            inflated and each such tensor's note says how (``"3×3 → 1×3×3 (1xkxk)"``).

    Returns:
        :class:`InitReport` with one record per state-dict key.

    Raises:
        ConfigError: unknown strategy, missing source, a source that does not fit (a 2D kernel
            whose in-plane size differs from the model's is named), unknown ``inflate``.
        WeightsError: the source's weights cannot be loaded.
    """
    if isinstance(init, InitSpec):
        name = init.name
        source = source if source is not None else init.source
        partial = partial or init.partial
    else:
        name = init
    parts = parse_init(name)
    check_inflate(inflate)
    needs = [n for n, _ in parts if INITS.get(n).meta["needs_source"]]
    if isinstance(source, str):
        source = resolve_source(source, workspace=workspace)
    if needs and source is None:
        raise ConfigError(f"init {name!r} needs pretrained weights: pass a source, e.g. "
                          "--source imagenet:efficientnet_lite0 or --source file:ckpt.pt")

    # No copy: strategies replace entries of ``state`` and never write into its tensors (checked
    # below through the version counters), so the model is unchanged until every part succeeded.
    own = model.state_dict()
    versions = {k: v._version for k, v in own.items()}
    before = dict(zip(own, mean_std_many(list(own.values()))))
    probe = build_context(model, eligible=frozenset(own), arg=None, generator=torch.Generator(),
                          source_name=None, keys=list(own))
    state = dict(own)
    aligned: Aligned | None = None
    notes: list[str] = []
    if source is not None and needs:
        aligned = align_source(state, source.state_dict(), first_conv=probe.first_conv,
                               classifier=probe.classifier, inflate=inflate,
                               transposed=transposed_strides(model), task=probe.task,
                               head_modules=probe.head_modules)
        notes += aligned.notes
        if source.arch and source.arch != probe.model_name:
            aligned.hint = (f"{source.name} holds {source.arch} weights, the model is "
                            f"{probe.model_name}: --model {source.arch} fits it")
        if aligned.unused:
            notes.append(f"{len(aligned.unused)} source tensors have no counterpart in the model "
                         f"(e.g. {aligned.unused[0]})")

    gen = torch.Generator().manual_seed(seed)
    actions: dict[str, Action] = {}
    remaining = set(state)
    for part, arg in parts:
        reads_source = INITS.get(part).meta["needs_source"]
        ctx = dataclasses.replace(probe, eligible=frozenset(remaining), arg=arg, generator=gen,
                                  source_name=source.name if source is not None else None,
                                  partial=partial)
        done = INITS.get(part).fn(state, aligned, ctx)
        stray = set(done) - remaining
        if stray:
            raise RuntimeError(f"init {part} set keys it was not given: {sorted(stray)[:3]}")
        inplace = [k for k, v in own.items() if v._version != versions[k]]
        if inplace:
            raise RuntimeError(f"init {part} wrote into the model's tensors in place "
                               f"({inplace[0]}, ...): assign state[key] = new_tensor instead")
        for k, a in done.items():
            if a.action == "loaded" and aligned is not None and k in aligned.adapted:
                a = Action("adapted", aligned.adapted[k])
            elif reads_source and a.action != "default" and aligned is not None and k in aligned.inflated:
                # drawn from an inflated tensor (meanvar, moments, ...): its statistics are the 3D ones
                note = f"source inflated {aligned.adapted[k]}"
                a = Action(a.action, f"{a.note}; {note}" if a.note else note, stats=a.stats)
            actions[k] = a
        remaining -= set(done)

    # Copy only what a strategy set; every other tensor is the model's own, unchanged.
    result = model.load_state_dict({k: state[k] for k in actions}, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    kinds = probe.key_kind
    todo = [k for k, a in actions.items() if a.stats is None]
    after = dict(zip(todo, mean_std_many([state[k] for k in todo])))
    after.update({k: a.stats for k, a in actions.items() if a.stats is not None})
    records = []
    for k, v in state.items():
        a = actions.get(k, Action("default"))
        mb, sb = before[k]
        ma, sa = after.get(k, (mb, sb))  # default: after == before
        records.append(TensorRecord(key=k, stage=probe.key_stage[k], kind=kinds[k],
                                    shape=tuple(v.shape), action=a.action, mean_before=mb,
                                    std_before=sb, mean_after=ma, std_after=sa, note=a.note))
    return InitReport(strategy=name, source=source.name if source is not None and needs else None,
                      records=records, notes=notes)

def init_state(model: nn.Module, init: str | InitSpec, **kwargs) -> tuple[dict[str, torch.Tensor], InitReport]:
    """Like :func:`apply_init` but also return the resulting ``state_dict`` (a copy)."""
    report = apply_init(model, init, **kwargs)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, report

