"""The init-strategy contract: pure functions over state dicts that return what they did.

A strategy is registered under a name and called as::

    fn(state, source, ctx) -> dict[key, Action]

- ``state``: the target model's default-initialised ``state_dict`` — a new dict over the model's
  own tensors, not copies: the strategy *replaces* the entries it changes
  (``state[k] = new_tensor``) and never writes into a tensor in place (``apply_init`` checks the
  tensors' version counters and raises if one was modified). The model itself is only written
  once every part of the spec has succeeded;
- ``source``: the pretrained source aligned to the target's keys and shapes
  (:class:`~transfuse.inits.adapt.Aligned`: a 2D source's kernels inflated for a 3D model, input
  channels adapted, classifier dropped when the class count differs, mismatches listed), or
  ``None``;
- ``ctx``: :class:`InitContext` — stage and kind of every key, the keys this strategy may touch
  (``ctx.eligible``; earlier parts of a combination claim theirs first), its argument
  (``transfusion:block2`` → ``"block2"``) and a seeded generator.

It returns an :class:`Action` for each key it set; every other key keeps its default. The
framework then computes the per-tensor :class:`InitReport` (action, mean and std before and
after) — strategies never build reports themselves, so every report is complete and alike.
Combinations (``transfusion:block1+meanvar``, ``gabor+meanvar``) run left to right, each part on
the keys the earlier parts left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._registry import Registry
from ..errors import ConfigError, TransfuseError
from ..models import get_stages
from ..spec.init_names import parse_init_name

__all__ = [
    "Action", "InitContext", "InitReport", "TensorRecord", "INITS", "register_init", "list_inits",
    "tensor_kind", "parse_init", "init_model_kwargs",
]

ACTIONS = ("loaded", "redrawn", "adapted", "default")
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Action:
    """What a strategy did to one tensor: ``loaded``, ``redrawn`` or ``adapted`` (+ a note)."""

    action: str
    note: str = ""
    #: ``(mean, std)`` of the new tensor when the strategy already computed it (the report then
    #: skips its own pass over the tensor); ``None``: the report computes it.
    stats: tuple[float, float] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r} not in {ACTIONS}")


@dataclass(frozen=True)
class InitContext:
    """Everything a strategy may need to know about the target model.

    Attributes:
        model_name: registry name of the target model.
        spatial_dims: 2 or 3.
        stage_names: ``["stem", "block1", ..., "head"]``.
        key_stage: stage of every state-dict key.
        key_kind: kind of every key (see :func:`tensor_kind`).
        eligible: keys this strategy may set.
        arg: the text after ``name:`` in the spec (``None`` if absent).
        generator: seeded RNG for every random draw.
        source_name: name of the pretrained source, if any.
        first_conv: key of the first convolution's weight.
        classifier: keys of the classifier (head) parameters.
        partial: keys the source cannot provide stay default instead of raising.
        task: ``"classification"`` or ``"segmentation"`` (registry metadata of the model).
        head_modules: module-name prefixes of the ``head`` stage (``("fc",)``,
            ``("decoder", "seg")``).
        model_kwargs: the builder options the model was created with (``model.model_kwargs``,
            e.g. ``(("kernels", "kxkxk"),)``), as sorted ``(name, value)`` pairs, lists as tuples.
    """

    model_name: str
    spatial_dims: int
    stage_names: tuple[str, ...]
    key_stage: dict[str, str]
    key_kind: dict[str, str]
    eligible: frozenset[str]
    arg: str | None
    generator: torch.Generator
    source_name: str | None = None
    first_conv: str | None = None
    classifier: tuple[str, ...] = ()
    partial: bool = False
    task: str = "classification"
    head_modules: tuple[str, ...] = ()
    model_kwargs: tuple[tuple[str, Any], ...] = ()

    def stages_up_to(self, stage: str) -> list[str]:
        """Stage names from ``stem`` through ``stage`` (inclusive).

        Raises:
            ConfigError: ``stage`` is not a stage of this model.
        """
        if stage not in self.stage_names:
            raise ConfigError(f"stage {stage!r} is not a stage of {self.model_name}; stages are "
                              f"{', '.join(self.stage_names)}")
        return list(self.stage_names[: self.stage_names.index(stage) + 1])

    def keys_in(self, stages: list[str]) -> list[str]:
        """Eligible keys owned by ``stages``, in state-dict order."""
        want = set(stages)
        return [k for k, s in self.key_stage.items() if s in want and k in self.eligible]


@dataclass(frozen=True)
class TensorRecord:
    """One row of an :class:`InitReport`."""

    key: str
    stage: str
    kind: str
    shape: tuple[int, ...]
    action: str
    mean_before: float
    std_before: float
    mean_after: float
    std_after: float
    note: str = ""


@dataclass
class InitReport:
    """Per-tensor account of an initialisation; stored with the run."""

    strategy: str
    source: str | None
    records: list[TensorRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Number of tensors per action."""
        out = dict.fromkeys(ACTIONS, 0)
        for r in self.records:
            out[r.action] += 1
        return out

    def by_key(self) -> dict[str, TensorRecord]:
        return {r.key: r for r in self.records}

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "source": self.source, "counts": self.counts(),
                "notes": list(self.notes),
                "tensors": [{**r.__dict__, "shape": list(r.shape)} for r in self.records]}

    def summary(self) -> str:
        c = self.counts()
        src = f" from {self.source}" if self.source else ""
        return (f"{self.strategy}{src}: {c['loaded']} loaded, {c['adapted']} adapted, "
                f"{c['redrawn']} re-drawn, {c['default']} default")


InitFn = Callable[[StateDict, Any, InitContext], dict[str, Action]]
INITS: Registry[InitFn] = Registry("init")


def register_init(name: str, *, needs_source: bool = False, description: str = "",
                  arg: str = "",
                  model_kwargs: Callable[[str | None], dict[str, Any]] | None = None,
                  ) -> Callable[[InitFn], InitFn]:
    """Register an init strategy (see the module docstring for the contract).

    Args:
        needs_source: the strategy reads pretrained weights (``--source`` is required).
        description: one line for ``transfuse inits``.
        arg: what the ``name:arg`` argument means, e.g. ``"stage"``; empty if none.
        model_kwargs: for strategies that change the architecture (``slim``): maps the argument
            to extra ``create_model`` keyword arguments; the model is built with them before
            the strategy runs.
    """
    return INITS.register(name, needs_source=needs_source, description=description, arg=arg,
                          model_kwargs=model_kwargs)


def init_model_kwargs(spec: str) -> dict[str, Any]:
    """Extra ``create_model`` arguments an init spec asks for (e.g. ``slim`` widths)."""
    out: dict[str, Any] = {}
    for name, arg in parse_init(spec):
        fn = INITS.get(name).meta.get("model_kwargs")
        if fn is not None:
            out.update(fn(arg))
    return out


def list_inits(pattern: str = "*") -> list[str]:
    """Registered init strategies matching ``pattern``."""
    return INITS.list(pattern)


def parse_init(spec: str) -> list[tuple[str, str | None]]:
    """``"transfusion:block1+meanvar"`` → ``[("transfusion", "block1"), ("meanvar", None)]``.

    Raises:
        ConfigError: empty part or unknown strategy (with close matches).
    """
    parts = parse_init_name(spec)
    for part in parts:
        INITS.get(part.name)  # raises with suggestions
    return [(p.name, p.arg) for p in parts]


_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def tensor_kind(model: nn.Module, keys: list[str] | None = None) -> dict[str, str]:
    """Kind of every state-dict key (``keys``: the model's state-dict keys, if already known).

    Kinds: ``conv`` (conv weight), ``linear`` (linear weight), ``norm_weight``, ``norm_bias``,
    ``bias`` (conv/linear bias), ``running_mean``, ``running_var``, ``num_batches_tracked``,
    ``other`` (e.g. ViT position embeddings).
    """
    kinds: dict[str, str] = {}
    for mname, mod in model.named_modules():
        prefix = f"{mname}." if mname else ""
        for pname, _ in list(mod.named_parameters(recurse=False)) + list(mod.named_buffers(recurse=False)):
            key = prefix + pname
            if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
                kind = "conv" if pname == "weight" else "bias"
            elif isinstance(mod, nn.Linear):
                kind = "linear" if pname == "weight" else "bias"
            elif isinstance(mod, _NORMS):
                kind = {"weight": "norm_weight", "bias": "norm_bias"}.get(pname, pname)
            else:
                kind = "other"
            kinds[key] = kind
    state_keys = model.state_dict().keys() if keys is None else keys
    return {k: kinds.get(k, "other") for k in state_keys}


def build_context(model: nn.Module, *, eligible: frozenset[str], arg: str | None,
                  generator: torch.Generator, source_name: str | None,
                  partial: bool = False, keys: list[str] | None = None) -> InitContext:
    """:class:`InitContext` for ``model`` (stages from ``stage_info``; ``keys``: its state-dict
    keys, if already known)."""
    from ..models import stage_of

    stages = get_stages(model)
    keys = list(model.state_dict()) if keys is None else keys
    kinds = tensor_kind(model, keys)
    key_stage = {k: stage_of(model, k) for k in keys}
    first_conv = next((k for k in keys if kinds[k] == "conv"), None)
    classifier = tuple(k for k in keys if key_stage[k] == "head")
    head = next((s for s in stages if s.name == "head"), None)
    return InitContext(
        model_name=getattr(model, "model_name", type(model).__name__),
        spatial_dims=getattr(model, "spatial_dims", 2), stage_names=tuple(s.name for s in stages),
        key_stage=key_stage, key_kind=kinds, eligible=eligible, arg=arg, generator=generator,
        source_name=source_name, first_conv=first_conv, classifier=classifier, partial=partial,
        task=_task(model), head_modules=tuple(head.modules) if head is not None else (),
        model_kwargs=freeze_kwargs(getattr(model, "model_kwargs", None) or {}))


def freeze_kwargs(kwargs: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """``{"kernels": "kxkxk", "decoder_channels": [8, 8]}`` → sorted pairs, lists as tuples
    (so that caches can key on them; other values are kept as they are)."""
    def freeze(v: Any) -> Any:
        return tuple(freeze(x) for x in v) if isinstance(v, (list, tuple)) else v

    return tuple(sorted((k, freeze(v)) for k, v in kwargs.items()))


def _task(model: nn.Module) -> str:
    """The registry's ``task`` for a model built by ``create_model`` (else classification)."""
    from ..models import model_info

    name = getattr(model, "model_name", None)
    if not name:
        return "classification"
    try:
        return str(model_info(name).get("task", "classification"))
    except TransfuseError:
        return "classification"
