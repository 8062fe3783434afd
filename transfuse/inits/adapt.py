"""Named, standalone adaptations of pretrained tensors to a target model.

- :func:`adapt_input_conv`: first-conv weights for a different number of input channels, as timm
  does — 1 channel: sum over RGB (a gray image is R = G = B, so the response is unchanged);
  N channels: repeat RGB cyclically and scale by 3 / N (keeps the activation scale).
- :func:`align_source`: match a source state dict to the target's keys and shapes. The input
  conv is adapted, the classifier is dropped when the class count differs, and every other
  mismatch is collected with both shapes so that strategies that need those tensors can name them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ConfigError

__all__ = ["adapt_input_conv", "align_source", "Aligned", "require"]

StateDict = dict[str, torch.Tensor]


def adapt_input_conv(w: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a conv weight ``(O, I, *k)`` to ``(O, in_channels, *k)``.

    Args:
        w: weight of the pretrained first convolution.
        in_channels: input channels of the target.

    Returns:
        The adapted weight, same dtype.
    """
    i = w.shape[1]
    if in_channels == i:
        return w.clone()
    if in_channels == 1:
        return w.sum(dim=1, keepdim=True)
    reps = -(-in_channels // i)
    return (w.repeat(1, reps, *([1] * (w.ndim - 2)))[:, :in_channels] * (i / in_channels)).contiguous()


@dataclass
class Aligned:
    """A source state dict aligned to a target.

    Attributes:
        state: source tensors usable as they are (same key and shape as the target).
        adapted: keys whose tensors were adapted (input channels).
        problems: target keys with no usable source tensor → reason with both shapes.
        unused: source keys with no target key.
        notes: human-readable notes for the report (e.g. "classifier replaced: 1000 → 4").
        hint: what to say when tensors are missing (set by ``apply_init`` when the source was
            built for another architecture), e.g. which ``--model`` the source fits.
    """

    state: StateDict
    adapted: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hint: str = ""


def align_source(target: StateDict, source: StateDict, *, first_conv: str | None,
                 classifier: tuple[str, ...]) -> Aligned:
    """Match ``source`` to ``target`` key by key (see module docstring)."""
    out = Aligned(state={})
    for k, t in target.items():
        if k.endswith("num_batches_tracked"):
            continue
        s = source.get(k)
        if s is None:
            if k not in classifier:
                out.problems[k] = f"{k}: missing in source (model {tuple(t.shape)})"
            continue
        if s.shape == t.shape:
            out.state[k] = s.to(t.dtype)
        elif k == first_conv and s.ndim == t.ndim and s.shape[0] == t.shape[0] and s.shape[2:] == t.shape[2:]:
            out.state[k] = adapt_input_conv(s, t.shape[1]).to(t.dtype)
            out.adapted[k] = f"input channels {s.shape[1]} → {t.shape[1]}"
        elif k in classifier:
            continue  # the head is replaced below
        else:
            out.problems[k] = f"{k}: model {tuple(t.shape)} vs source {tuple(s.shape)}"
    # The classifier is transferred whole or not at all: a bias that happens to fit is dropped
    # with a weight that does not.
    if any(k in classifier and k not in out.state for k in target if not k.endswith("num_batches_tracked")):
        for k in classifier:
            out.state.pop(k, None)
    head_w = next((k for k in classifier if k.endswith("weight")), None)
    if head_w and head_w in source and head_w not in out.state:
        out.notes.append(f"classifier replaced: {source[head_w].shape[0]} source classes → "
                         f"{target[head_w].shape[0]} classes (re-initialised)")
    out.unused = sorted(set(source) - set(target))
    return out


def require(aligned: Aligned, keys: list[str], *, what: str, partial: bool) -> list[str]:
    """The subset of ``keys`` the source can provide; raise on a gap unless ``partial``.

    Raises:
        ConfigError: some keys have no usable source tensor; the message names up to five with
            their shapes and says how to allow partial loading.
    """
    missing = [k for k in keys if k not in aligned.state and k in aligned.problems]
    if missing and not partial:
        shown = "; ".join(aligned.problems[k] for k in missing[:5])
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        hint = f" ({aligned.hint})" if aligned.hint else ""
        raise ConfigError(f"{what}: the source does not fit the model — {shown}{more}; use a source "
                          f"built for this architecture{hint}, or allow partial loading "
                          "(init.partial / --init-partial) to keep those tensors at their default")
    return [k for k in keys if k in aligned.state]
