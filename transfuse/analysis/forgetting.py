"""How much of the source task a fine-tuned model has forgotten (Transfusion's open question).

For a run initialised from a source that has its own task head (a ``run:`` source, e.g. the
built-in modality pretraining of a study), the source's head is re-attached to the fine-tuned
encoder, one stage at a time: hybrid *k* keeps ``stem … stage k`` from the fine-tuned model and
everything above (and the head) from the source. Its score on the **source task's test split** is
the curve: *k* = 0 is the source itself (before fine-tuning), the last *k* is the whole fine-tuned
encoder under the source's head. BatchNorm statistics travel with their stage.

Over a study, the curve is summarised per arm (fine-tuning strategy, init) over seeds with t
intervals, and each strategy is compared with full fine-tuning, paired by seed, on the last point
(the whole encoder) — with the study's margin, as every other question (one Holm family).

A frozen stage keeps the source's score only if its BatchNorm statistics are frozen too
(``train.freeze_bn: true``): a ``linear_probe`` without it re-estimates every BN layer's running
statistics on the target data, and the source task's score moves with them — forgetting without
a single weight update.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..spec.finetune_names import ARG_KINDS
from ..spec.init_names import source_ref

__all__ = ["hybrid_scores", "run_forgetting", "study_forgetting", "RunForgetting", "ArmCurve",
           "arm_curves"]


def hybrid_scores(source: Any, finetuned: Mapping[str, Any], data: Any, *, device: Any = None,
                  max_examples: int | None = None,
                  score: Callable[[np.ndarray, np.ndarray], float] | None = None
                  ) -> list[tuple[str, float]]:
    """Source-task macro AUC of each hybrid: ``[(stage kept up to, score), ...]``.

    Args:
        source: the source model (its own head, weights loaded), built by ``create_model``.
        finetuned: the fine-tuned run's state dict (its head is never used).
        data: the source task's prepared dataset; its ``test`` split is scored.
        score: ``score(probs (N, C), labels (N,)) -> float`` instead of the macro AUC.

    Returns:
        ``[("none", s0), ("stem", s1), ("block1", s2), ...]``: ``none`` is the source itself; each
        later entry keeps the fine-tuned stages up to and including that one.

    Raises:
        ConfigError: a fine-tuned tensor's shape differs from the source's (another architecture).
    """
    import torch
    from torch.utils.data import DataLoader, Subset

    from ..models import get_stages
    from ..train.metrics import auroc

    base = {k: v.detach().clone() for k, v in source.state_dict().items()}
    stages = [s.name for s in get_stages(source) if s.name != "head"]
    owner = {k: _stage_of(source, k) for k in base}  # one pass: each key's stage (or None)
    keys_of = {s: [k for k in base if owner[k] == s] for s in stages}
    test = data.test
    if max_examples is not None and len(test) > max_examples:
        test = Subset(test, range(max_examples))
    dev = torch.device(device or "cpu")
    out = []
    state = dict(base)
    for i, name in enumerate(["none", *stages]):
        if i > 0:
            for k in keys_of[name]:
                if k not in finetuned:
                    continue
                if tuple(finetuned[k].shape) != tuple(base[k].shape):
                    raise ConfigError(f"fine-tuned tensor {k} has shape {tuple(finetuned[k].shape)}, "
                                      f"the source's {tuple(base[k].shape)}: not the source's "
                                      "architecture")
                state[k] = finetuned[k]
        source.load_state_dict(state)
        source.eval().to(dev)
        probs, ys = [], []
        with torch.no_grad():
            for batch in DataLoader(test, batch_size=128, shuffle=False):
                probs.append(torch.softmax(source(batch[0].to(dev)).double(), 1).cpu())
                ys.append(torch.as_tensor(batch[1]).reshape(len(batch[0]), -1)[:, 0].long())
        p, y = torch.cat(probs).numpy(), torch.cat(ys).numpy()
        out.append((name, float(score(p, y) if score is not None
                                else auroc(p, y, task="multiclass").macro)))
    source.load_state_dict(base)
    return out


def _stage_of(model: Any, key: str) -> str | None:
    from ..models import stage_of

    try:
        return stage_of(model, key)
    except Exception:  # noqa: BLE001 - a key of no stage (e.g. a buffer outside them) stays source
        return None


@dataclass
class RunForgetting:
    """One fine-tuned run's curve: ``scores[i]`` after keeping ``stages[i]``."""

    run_id: str
    arm: str
    model: str
    size: str
    seed: int
    source: str
    stages: tuple[str, ...]
    scores: tuple[float, ...]


def _source_run(store: Any, rec: Any) -> Any:
    ref = source_ref((rec.spec.get("init") or {}).get("source") or "")
    if ref is None or ref.family != "run":
        return None
    return store.get_run(ref.arg)


def run_forgetting(store: Any, run_id: str, *, arm: str | None = None, device: Any = None,
                   max_examples: int | None = None, cache: dict[str, Any] | None = None
                   ) -> RunForgetting:
    """The forgetting curve of one finished run whose init came from a ``run:`` source.

    Raises:
        ConfigError: the run has no ``run:`` source (no source head to re-attach).
        WeightsError: a checkpoint is missing.
    """
    from ..config import DataSpec
    from ..data import load_dataset
    from ..models import create_model
    from ..weights import load_state_dict

    rec = store.get_run(run_id)
    src = _source_run(store, rec)
    if src is None:
        raise ConfigError(f"run {rec.run_id} was not initialised from a run: source (init.source = "
                          f"{(rec.spec.get('init') or {}).get('source')!r}); forgetting needs a "
                          "source with its own task head")
    cache = {} if cache is None else cache
    if src.run_id not in cache:
        dspec = DataSpec(**{k: v for k, v in src.spec["data"].items()
                            if k in DataSpec.__dataclass_fields__})
        data = load_dataset(dspec)
        info = src.model_info or {}
        model = create_model(src.spec["model"]["name"], spatial_dims=int(info.get("spatial_dims", 2)),
                             in_channels=data.info.in_channels, num_classes=data.info.num_classes)
        model.load_state_dict(load_state_dict(store.run_dir(src.run_id) / "best.pt"))
        cache[src.run_id] = (model, data)
    model, data = cache[src.run_id]
    tuned = load_state_dict(store.run_dir(rec.run_id) / "best.pt")
    pts = hybrid_scores(model, tuned, data, device=device, max_examples=max_examples)
    from .runs import run_info

    return RunForgetting(rec.run_id, arm or rec.spec["init"]["name"], rec.spec["model"]["name"],
                         run_info(rec).size, int(rec.spec["seed"]), f"run:{src.run_id}",
                         tuple(s for s, _ in pts), tuple(v for _, v in pts))


@dataclass
class ArmCurve:
    """An arm's curve over seeds: mean and 95 % t-interval per stage kept."""

    model: str
    size: str
    arm: str
    stages: tuple[str, ...]
    seeds: tuple[int, ...]
    mean: tuple[float, ...]
    ci_low: tuple[float | None, ...]
    ci_high: tuple[float | None, ...]
    monotone: bool
    verdict: dict[str, Any] = field(default_factory=dict)  # vs full fine-tuning, last point

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _summaries(values: Sequence[float]) -> tuple[float, float | None, float | None]:
    from ..decide.stats import summarize

    s = summarize(list(values))
    return (s.mean, s.ci_low, s.ci_high) if s is not None else (float("nan"), None, None)


def study_forgetting(store: Any, study: str, *, device: Any = None, max_examples: int | None = None,
                     margin: float = 0.01, alpha: float = 0.05,
                     reference: str = "full") -> tuple[list[RunForgetting], list[ArmCurve]]:
    """Curves of every finished run of ``study`` initialised from a ``run:`` source, per arm.

    The arm label is the study report's (init and fine-tuning strategy). Each arm whose label
    differs from the full fine-tuning arm of the same init only by its strategy is compared with
    it on the last point, paired by seed (:func:`~transfuse.decide.verdicts.decide_family`, Holm
    over those questions, ``margin`` in source-task AUC).
    """
    from ..decide.results import load_results

    res = load_results(store, study)
    cache: dict[str, Any] = {}
    runs = []
    for row in res.rows:
        rec = store.get_run(row.run_id)
        if _source_run(store, rec) is None:
            continue
        runs.append(run_forgetting(store, row.run_id, arm=row.init, device=device,
                                   max_examples=max_examples, cache=cache))
    return runs, arm_curves(runs, margin=margin, alpha=alpha, reference=reference)


def arm_curves(runs: Sequence[RunForgetting], *, margin: float = 0.01, alpha: float = 0.05,
               reference: str = "full") -> list[ArmCurve]:
    """Per (model, size, arm): the curve's mean and t-interval over seeds, whether it is monotone
    within its intervals, and each strategy vs full fine-tuning on the last point (Holm)."""
    from ..decide.verdicts import decide_family

    groups: dict[tuple[str, str, str], list[RunForgetting]] = defaultdict(list)
    for r in runs:
        groups[(r.model, r.size, r.arm)].append(r)
    curves = []
    for (model, size, arm), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r.seed)
        mat = np.array([r.scores for r in rs])
        stats = [_summaries(mat[:, j]) for j in range(mat.shape[1])]
        means = [m for m, _, _ in stats]
        # monotone within intervals: no later point's interval lies wholly above an earlier one's
        lows = [lo if lo is not None else m for m, lo, _ in stats]
        highs = [hi if hi is not None else m for m, _, hi in stats]
        mono = all(lows[j] <= highs[i] for i in range(len(stats)) for j in range(i + 1, len(stats)))
        curves.append(ArmCurve(model, size, arm, rs[0].stages, tuple(r.seed for r in rs),
                               tuple(means), tuple(lo for _, lo, _ in stats),
                               tuple(hi for _, _, hi in stats), mono))
    # strategy vs full fine-tuning on the last point (the whole fine-tuned encoder)
    by = {(c.model, c.size, c.arm): c for c in curves}
    last = {(r.model, r.size, r.arm, r.seed): r.scores[-1] for r in runs}
    pairs = []
    for c in curves:
        base_arm = _full_arm(c.arm, reference)
        if base_arm is None or base_arm == c.arm or (c.model, c.size, base_arm) not in by:
            continue
        seeds = [s for s in c.seeds if (c.model, c.size, base_arm, s) in last]
        diffs = [last[(c.model, c.size, c.arm, s)] - last[(c.model, c.size, base_arm, s)] for s in seeds]
        if len(diffs) >= 2:
            pairs.append((c, base_arm, diffs))
    if pairs:
        decs = decide_family([d for _, _, d in pairs], [margin] * len(pairs), alpha=alpha)
        for (c, base_arm, diffs), d in zip(pairs, decs):
            c.verdict = {"versus": base_arm, "verdict": d.verdict, "mean": d.mean,
                         "ci_low": d.ci_low, "ci_high": d.ci_high, "n": len(diffs),
                         "margin": margin}
    return curves


#: label parts that make an arm a fine-tuning strategy other than full fine-tuning: the
#: ``train.finetune`` values and the per-stage learning-rate and BatchNorm settings
#: (``layer_decay=0.7`` trains everything, but not as full fine-tuning does)
_STRATEGY_PARTS = ("linear_probe", "freeze_bn")
_STRATEGY_SETTINGS = ("layer_decay=", "head_lr_mult=")  # and every ``kind:arg`` of ARG_KINDS


def _full_arm(arm: str, reference: str) -> str | None:
    """The full fine-tuning arm of the same init and settings: the label without its strategy
    (``pretrained · linear_probe · augment=basic`` → ``pretrained · augment=basic``,
    ``pretrained · layer_decay=0.7`` → ``pretrained``)."""
    parts = arm.split(" · ")
    rest = [p for p in parts[1:]
            if not (p in _STRATEGY_PARTS or p.partition(":")[0] in ARG_KINDS
                    or p.startswith(_STRATEGY_SETTINGS))]
    if reference != "full" or len(rest) == len(parts) - 1:
        return None  # no strategy part: this is a full fine-tuning arm
    return " · ".join([parts[0], *rest])
