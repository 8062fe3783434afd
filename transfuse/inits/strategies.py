"""The paper's core strategies: ``random``, ``pretrained``, ``meanvar`` and ``transfusion``.

Raghu et al. 2019 (shared/reference/papers.md §1.8–1.9):

- ``random`` keeps the framework's default initialisation (``random:kaiming`` re-draws every
  conv/linear weight with He-normal, fan-out, and zeroes their biases);
- ``pretrained`` loads every tensor of the source (full transfer); the classifier is
  re-initialised when the number of classes differs, the input conv adapted to the channels;
- ``meanvar`` draws every conv/linear weight i.i.d. from N(μ, σ²) of the matching pretrained
  tensor — the pretrained *scale* without its features. Norm affine parameters and biases keep
  their defaults (``meanvar:all`` re-draws them too); BatchNorm running statistics are never
  resampled (a re-drawn running variance can be negative);
- ``transfusion:<stage>`` loads the source from the stem up to and including ``<stage>``
  (tensors, BN statistics) and leaves the stages above random.
"""

from __future__ import annotations

import torch


from ..errors import ConfigError
from .adapt import Aligned, require
from .base import Action, InitContext, register_init
from .stats import mean_std

__all__: list[str] = []

StateDict = dict[str, torch.Tensor]
WEIGHT_KINDS = ("conv", "linear")


def _no_arg(name: str, ctx: InitContext, allowed: tuple[str, ...] = ()) -> None:
    if ctx.arg is not None and ctx.arg not in allowed:
        extra = f" (options: {', '.join(allowed)})" if allowed else ""
        raise ConfigError(f"init {name} takes no argument {ctx.arg!r}{extra}")


@register_init("random", description="framework default init; random:kaiming re-draws conv/linear "
               "weights He-normal (fan-out) with zero biases", arg="[kaiming]")
def random_init(state: StateDict, source: Aligned | None, ctx: InitContext) -> dict[str, Action]:
    _no_arg("random", ctx, ("kaiming", "default"))
    if ctx.arg != "kaiming":
        return {}
    out = {}
    for k in sorted(ctx.eligible):
        kind = ctx.key_kind[k]
        if kind in WEIGHT_KINDS:
            w = torch.empty_like(state[k], dtype=torch.float32)
            fan_out = w.shape[0] * (w[0, 0].numel() if w.ndim > 2 else 1)
            w.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=ctx.generator)
            state[k] = w.to(state[k].dtype)
            out[k] = Action("redrawn", "He-normal, fan-out")
        elif kind == "bias":
            state[k] = torch.zeros_like(state[k])
            out[k] = Action("redrawn", "zero")
    return out


def _load(state: StateDict, source: Aligned, keys: list[str]) -> dict[str, Action]:
    out = {}
    for k in keys:
        state[k] = source.state[k]  # no copy: apply_init's load_state_dict copies it
        out[k] = Action("loaded")
    return out


@register_init("pretrained", needs_source=True, description="full transfer: every tensor from "
               "the source (classifier replaced when classes differ)")
def pretrained_init(state: StateDict, source: Aligned | None, ctx: InitContext) -> dict[str, Action]:
    _no_arg("pretrained", ctx)
    assert source is not None
    keys = [k for k in state if k in ctx.eligible and not k.endswith("num_batches_tracked")]
    return _load(state, source, require(source, keys, what="pretrained", partial=ctx.partial))


@register_init("transfusion", needs_source=True, arg="stage",
               description="weight transfusion: source weights up to and including <stage> "
               "(stem, block1, ...), random above")
def transfusion_init(state: StateDict, source: Aligned | None, ctx: InitContext) -> dict[str, Action]:
    if not ctx.arg:
        raise ConfigError(f"init transfusion needs a stage: transfusion:<stage>, one of "
                          f"{', '.join(ctx.stage_names)}")
    assert source is not None
    keys = [k for k in ctx.keys_in(ctx.stages_up_to(ctx.arg)) if not k.endswith("num_batches_tracked")]
    return _load(state, source, require(source, keys, what=f"transfusion:{ctx.arg}",
                                        partial=ctx.partial))


def meanvar_tensor(like: torch.Tensor, ref: torch.Tensor, generator: torch.Generator,
                   moments: tuple[float, float] | None = None) -> torch.Tensor:
    """I.i.d. N(mean(ref), std(ref)²) with the shape and dtype of ``like`` (a new tensor).

    Drawn directly in ``like``'s dtype: a float64 draw cast to float32 costs 5× more and adds
    nothing (float32 holds N(μ, σ²) samples to 7 digits). ``moments``: ``mean_std(ref)`` if the
    caller already has it.
    """
    mu, sd = mean_std(ref) if moments is None else moments
    dtype = like.dtype if like.is_floating_point() else torch.float32
    return torch.empty(like.shape, dtype=dtype).normal_(mu, sd, generator=generator).to(like.dtype)


def meanvar_note(ref: torch.Tensor, moments: tuple[float, float]) -> str:
    mu, sd = moments
    return f"N({mu:.3g}, {sd:.3g}²)" if ref.numel() > 1 else "N(source value, 0)"


@register_init("meanvar", needs_source=True, arg="[all]",
               description="Mean-Var: conv/linear weights i.i.d. from N(mean, var) of the matching "
               "pretrained tensor; meanvar:all also norms and biases (never BN running stats)")
def meanvar_init(state: StateDict, source: Aligned | None, ctx: InitContext) -> dict[str, Action]:
    _no_arg("meanvar", ctx, ("all",))
    assert source is not None
    kinds = WEIGHT_KINDS + (("norm_weight", "norm_bias", "bias") if ctx.arg == "all" else ())
    keys = [k for k in state if k in ctx.eligible and ctx.key_kind[k] in kinds
            and k not in ctx.classifier]
    out = {}
    for k in require(source, keys, what="meanvar", partial=ctx.partial):
        ref = source.state[k]
        m = mean_std(ref)  # once: used for the draw and the note
        state[k] = meanvar_tensor(state[k], ref, ctx.generator, m)
        out[k] = Action("redrawn", meanvar_note(ref, m))
    return out


