"""Named, standalone adaptations of pretrained tensors to a target model.

- :func:`adapt_input_conv`: first-conv weights for a different number of input channels, as timm
  does (defined beside the inflation helpers in :mod:`transfuse.models.inflate`, which uses it
  too; re-exported here, where it is documented).
- :func:`inflate_source`: a 2D source for a 3D model — every 2D kernel ``(O, I, k_h, k_w)`` whose
  target is 3D goes through :func:`~transfuse.models.inflate_state_dict` (``1xkxk`` for a target
  of depth 1, else ``mean`` (I3D) or, on request, ``center``).
- :func:`align_source`: match a source state dict to the target's keys and shapes. 2D kernels
  are inflated first, the input conv is adapted, the head (classifier or segmentation decoder) is
  dropped whole when any of its tensors does not fit, and every other mismatch is collected with
  both shapes so that strategies that need those tensors can name them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..models.inflate import adapt_input_conv, inflate_state_dict

__all__ = ["adapt_input_conv", "align_source", "inflate_source", "Aligned", "require",
           "INFLATE_MODES", "check_inflate"]

StateDict = dict[str, torch.Tensor]


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
        inflated: keys of 2D source kernels inflated to the model's 3D kernels → note
            (``"3×3 → 1×3×3 (1xkxk)"``); they are in ``adapted`` too.
    """

    state: StateDict
    adapted: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    hint: str = ""
    inflated: dict[str, str] = field(default_factory=dict)


INFLATE_MODES = ("mean", "center", "1xkxk")


def check_inflate(mode: str) -> None:
    """Raise a :class:`ConfigError` unless ``mode`` is one of :data:`INFLATE_MODES`."""
    if mode not in INFLATE_MODES:
        raise ConfigError(f"inflate={mode!r} is not one of {', '.join(INFLATE_MODES)} (how a 2D "
                          "source kernel becomes a 3D one: mean = I3D, center = centre slice)")


def _kernel(shape: Sequence[int]) -> str:
    return "×".join(map(str, shape))


def inflate_source(target: StateDict, source: StateDict, *, mode: str = "mean",
                   transposed: Mapping[str, int] | None = None,
                   ) -> tuple[StateDict, dict[str, str], dict[str, str]]:
    """Inflate the 2D conv kernels of ``source`` whose target kernel is 3D.

    A source tensor ``(O, I, k_h, k_w)`` whose target is ``(O', I', k_d, k_h, k_w)`` goes through
    :func:`~transfuse.models.inflate_state_dict`: mode ``1xkxk`` when ``k_d = 1``, ``mode``
    otherwise. Channels stay the source's (the input conv is adapted afterwards).

    Args:
        target: the model's state dict (only shapes are read).
        source: the source state dict.
        mode: ``mean`` (I3D, default) or ``center`` for kernels of depth > 1; ``1xkxk`` refuses them.
        transposed: ``{key: depth stride}`` of the model's transposed convs
            (:func:`~transfuse.models.transposed_strides`).

    Returns:
        ``(source3d, inflated, problems)``: the source with those kernels inflated (every other
        tensor the same object), ``{key: note}`` per inflated kernel (``"3×3 → 1×3×3 (1xkxk)"``)
        and ``{key: reason}`` per 2D kernel that cannot become the target's (in-plane sizes differ).

    Raises:
        ConfigError: unknown ``mode``, or ``1xkxk`` for a kernel of depth > 1 (names the tensor).
    """
    check_inflate(mode)
    flat = [k for k, v in source.items() if v.ndim == 4 and k in target and target[k].ndim == 5]
    if not flat:
        return source, {}, {}
    problems: dict[str, str] = {}
    by_mode: dict[str, dict[str, tuple[int, ...]]] = {"1xkxk": {}, mode: {}}
    for k in flat:
        s, t = tuple(source[k].shape), tuple(target[k].shape)
        if t[3:] != s[2:]:
            problems[k] = (f"{k}: the 2D source kernel {_kernel(s[2:])} cannot be inflated to the "
                           f"model's {_kernel(t[2:])} (model {t} vs source {s})")
        elif t[2] == 1:
            by_mode["1xkxk"][k] = t
        elif mode == "1xkxk":
            raise ConfigError(f"{k}: the model's kernel is {_kernel(t[2:])} but inflate='1xkxk' "
                              "makes depth 1; use inflate='mean' (I3D) or 'center' for a full 3D model")
        else:
            by_mode[mode][k] = t
    out = dict(source)
    notes: dict[str, str] = {}
    for m, shapes in by_mode.items():
        if shapes:
            state, n = inflate_state_dict({k: source[k] for k in shapes}, target_shapes=shapes,
                                          mode=m, transposed=transposed)
            out.update(state)
            notes.update(n)
    return out, notes, problems


def _head_note(target: StateDict, source: StateDict, classifier: tuple[str, ...],
               aligned: Aligned, *, task: str, head_modules: tuple[str, ...]) -> str | None:
    """Why the head was not transferred, for the report (``None``: nothing to say)."""
    # The output layer: the last ≥2-D weight of the head (fc, seg, out.conv.conv, conv_seg.6).
    out_w = next((k for k in reversed(classifier) if k.endswith("weight") and target[k].ndim >= 2),
                 None)
    if out_w is not None and out_w in source and source[out_w].ndim >= 2 \
            and source[out_w].shape[0] != target[out_w].shape[0]:
        reason = f"{source[out_w].shape[0]} source classes → {target[out_w].shape[0]} classes"
    elif not any(k in source for k in classifier):
        reason = None  # the source has no head at all (an encoder, another task's model)
    else:
        k = next((k for k in classifier if not k.endswith("num_batches_tracked") and (
            k in aligned.problems or k not in source or source[k].shape != target[k].shape)), None)
        if k is None:
            reason = "it does not fit the model"
        else:
            reason = aligned.problems.get(k) or (
                f"{k} missing in source" if k not in source
                else f"{k}: model {tuple(target[k].shape)} vs source {tuple(source[k].shape)}")
    if task == "segmentation":
        mods = ", ".join(head_modules) or "head"
        if reason is None:
            return f"segmentation head not in the source: {mods} re-initialised"
        # "classifier replaced" is kept: reports are searched for it whatever the task.
        return f"segmentation head replaced: {reason} ({mods} re-initialised; classifier replaced whole)"
    if reason is None:
        return None
    return f"classifier replaced: {reason} (re-initialised)"


def align_source(target: StateDict, source: StateDict, *, first_conv: str | None,
                 classifier: tuple[str, ...], inflate: str = "mean",
                 transposed: Mapping[str, int] | None = None, task: str = "classification",
                 head_modules: tuple[str, ...] = ()) -> Aligned:
    """Match ``source`` to ``target`` key by key (see module docstring).

    Args:
        target: the model's state dict.
        source: the source state dict (2D or of the model's dimension).
        first_conv: key of the model's first conv weight (adapted to the input channels).
        classifier: keys of the head (transferred whole or not at all).
        inflate: how 2D kernels become 3D ones of depth > 1 (``mean``, ``center``; depth 1 is
            always ``1xkxk``), see :func:`inflate_source`.
        transposed: ``{key: depth stride}`` of the model's transposed convs.
        task: ``classification`` or ``segmentation`` (the wording of the head note).
        head_modules: the head's modules, named in the note of a segmentation head.

    Raises:
        ConfigError: unknown ``inflate`` or a kernel it cannot make (see :func:`inflate_source`).
    """
    out = Aligned(state={})
    source, inflated, bad = inflate_source(target, source, mode=inflate, transposed=transposed)
    out.problems.update({k: v for k, v in bad.items() if k not in classifier})  # head: below
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
        elif k not in out.problems:
            out.problems[k] = f"{k}: model {tuple(t.shape)} vs source {tuple(s.shape)}"
    # The classifier is transferred whole or not at all: a bias that happens to fit is dropped
    # with a weight that does not.
    if any(k in classifier and k not in out.state for k in target if not k.endswith("num_batches_tracked")):
        for k in classifier:
            out.state.pop(k, None)
        note = _head_note(target, source, classifier, out, task=task, head_modules=head_modules)
        if note:
            out.notes.append(note)
    # Inflated kernels the model uses: the report says so, per tensor and in total.
    used = {k: n for k, n in inflated.items() if k in out.state}
    for k, n in used.items():
        out.inflated[k] = n
        out.adapted[k] = f"{n}; {out.adapted[k]}" if k in out.adapted else n
    if used:
        modes = Counter("1xkxk" if target[k].shape[2] == 1 else inflate for k in used)
        out.notes.insert(0, "inflated 2D source into 3D: " + ", ".join(
            f"{c} kernel{'s' * (c != 1)} ({m})" for m, c in modes.most_common()))
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
