"""Why do large models change less? Per stage, how far training moved each model from its init.

Transfusion (Raghu et al. 2019) found that large models' representations move less during
fine-tuning than small ones'. For every finished run of a study this module measures, per stage
(``stem``, ``block1`` … ``head``, :mod:`transfuse.models._stages`):

- **CKA(init, final)**: linear CKA (:func:`~transfuse.analysis.cka.linear_cka`) between the stage's
  globally pooled activations at initialisation and after training, on one fixed probe batch of
  the study's data (the same ``images`` test images for every run, each normalised as that run was
  trained). 1 means the representation did not change (up to rotation and scale).
- **relative weight change** ``‖W_final − W_init‖_F / ‖W_init‖_F`` over the stage's conv/linear
  kernels (norm parameters and biases excluded), as analysis (c) of ``transfuse analyze``.
- **per-parameter update size** ``‖W_final − W_init‖_F / √P`` (P kernel elements): the RMS
  distance one weight travelled.
- **learning rate** ``lr``: the stage's nominal peak learning rate (``train.lr`` × its
  ``train.finetune`` multiplier; 0 for a stage that never trains).
- **effective learning rate** ``lr / mean_c ‖w_c,init‖²``, the mean over the stage's filters
  ``w_c`` (rows of each kernel, one per output channel). Definition: a filter followed by
  BatchNorm is scale-invariant, its gradient scales as ``1/‖w_c‖``, so one SGD step turns it by
  about ``lr · ‖ĝ‖ / ‖w_c‖²`` (van Laarhoven 2017; Hoffer et al. 2018, "Norm matters"): the same
  ``lr`` is a larger step for a stage whose filters start small. It is computed from the init
  alone — a prediction, where the per-parameter update size is the measurement.

The init weights are the run's ``init.pt`` (saved before the first step); a run folder without
it is rebuilt exactly from the run's spec and seed (:func:`transfuse.run.initial_model`).

Over a study, each (model, training-set size, arm) gets a mean and 95 % t-interval over seeds per
stage and measure. **The size effect**: per dataset, size and arm, the models ordered by parameter
count, each successive pair (smaller → larger) is compared paired by seed on CKA(init, final) of
each stage they share — every stage when both have the same stage names, else the ``stem``, the
last encoder stage and the ``head`` — with the verdicts of :mod:`transfuse.decide.verdicts` (one Holm
family, a CKA margin): ``better_*`` means the larger model's stage is *more* similar to its init
(it changed less). Finally each decided comparison is checked against three explanations — the
stage's width (channels), the model's parameter count, and the measured per-parameter update
size — each predicting the direction (or, within 10 %, no difference); the sentence names the
explanation that matches the most decided comparisons. With few models these explanations are
confounded (the counts say so).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError, TransfuseError

__all__ = ["ChangeOptions", "StageRow", "RunChange", "stage_rows", "run_change", "study_change",
           "ChangeResult", "MEASURES", "DEFINITIONS", "tracks_sentence"]

MEASURES = ("cka", "relative_change", "update_rms", "lr", "effective_lr")
DEFINITIONS = {
    "cka": "linear CKA between the stage's pooled activations at init and after training, on the "
           "same probe images (1 = unchanged up to rotation and scale)",
    "relative_change": "||W_final - W_init||_F / ||W_init||_F over the stage's conv/linear kernels",
    "update_rms": "||W_final - W_init||_F / sqrt(P): RMS distance one kernel weight travelled",
    "lr": "the stage's nominal peak learning rate (train.lr x its train.finetune multiplier; 0 if "
          "it never trains)",
    "effective_lr": "lr / mean over the stage's filters of ||w_c,init||^2: the angular step of a "
                    "BatchNorm-normalised filter per unit gradient (van Laarhoven 2017; Hoffer et al. "
                    "2018), from the init alone",
}
SAME = math.log(1.1)  # an explanation whose ratio is within 10 % predicts no difference


@dataclass(frozen=True)
class ChangeOptions:
    """How the change analysis measures (CLI flags in brackets).

    Attributes:
        images: probe images per run [--images] (the same ones for every run; at least 16).
        split: split they come from [--split].
        checkpoint: ``best`` or ``last`` [--checkpoint]; seed: picks the probe images [--seed].
        margin: CKA margin of the size verdicts [--margin]; alpha: their family-wise error rate.
    """

    images: int = 256
    split: str = "test"
    checkpoint: str = "best"
    seed: int = 0
    batch_size: int = 64
    margin: float = 0.05
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if self.images < 16:
            raise ConfigError(f"--images {self.images} is too few; use at least 16")
        if self.split not in ("train", "val", "test"):
            raise ConfigError(f"--split {self.split!r} must be train, val or test")
        if self.checkpoint not in ("best", "last"):
            raise ConfigError(f"--checkpoint {self.checkpoint!r} must be best or last")
        if not 0 < self.margin < 1:
            raise ConfigError(f"--margin {self.margin} must be a CKA difference in (0, 1)")


@dataclass(frozen=True)
class StageRow:
    """One stage of one run (``None``: undefined, e.g. a stage without kernels or zero variance)."""

    stage: str
    width: int
    parameters: int
    cka: float | None
    relative_change: float | None
    update_rms: float | None
    lr: float
    effective_lr: float | None


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


@torch.no_grad()
def _pooled(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int,
            device: str | None) -> dict[str, torch.Tensor]:
    from .capture import capture_activations

    if device:
        model.to(device)
    acts = capture_activations(model, images.split(batch_size), policy="pool", n_images=len(images),
                               min_images=4, device=device)
    return acts.values


def stage_rows(*, model: torch.nn.Module, init_state: Mapping[str, torch.Tensor],
               final_state: Mapping[str, torch.Tensor], images: torch.Tensor,
               lrs: Mapping[str, float] | None = None, batch_size: int = 64,
               device: str | None = None) -> list[StageRow]:
    """Every stage's change between two states of ``model``.

    Args:
        model: built by ``create_model`` (its weights are replaced).
        init_state, final_state: state dicts of the same architecture.
        images: the probe batch ``(N, C, *spatial)``, normalised as the run was trained, N >= 4.
        lrs: stage → nominal peak learning rate (default 0 for every stage).

    Returns:
        one :class:`StageRow` per stage, in forward order.
    """
    from ..models import get_stages, stage_parameters
    from .cka import linear_cka

    model.load_state_dict(dict(init_state))
    a0 = _pooled(model.eval(), images, batch_size=batch_size, device=device)
    model.load_state_dict(dict(final_state))
    a1 = _pooled(model.eval(), images, batch_size=batch_size, device=device)
    rows = []
    for st in get_stages(model):
        try:
            cka = _finite(linear_cka(a0[st.name].double(), a1[st.name].double()))
        except DataError:  # zero variance (a dead stage): undefined
            cka = None
        keys = [k for k in stage_parameters(model, st.name)
                if init_state[k].is_floating_point() and init_state[k].ndim >= 2]
        w0 = [init_state[k].detach().double().cpu() for k in keys]
        d2 = sum(float((final_state[k].detach().double().cpu() - w).square().sum())
                 for k, w in zip(keys, w0))
        n2 = sum(float(w.square().sum()) for w in w0)
        p = sum(w.numel() for w in w0)
        filt = torch.cat([w.reshape(w.shape[0], -1).square().sum(1) for w in w0]) if w0 else None
        lr = float((lrs or {}).get(st.name, 0.0))
        f2 = float(filt.mean()) if filt is not None and len(filt) else 0.0
        rows.append(StageRow(st.name, int(st.channels), int(p), cka,
                             _finite(d2**0.5 / n2**0.5) if n2 > 0 else None,
                             _finite(d2**0.5 / p**0.5) if p else None,
                             lr, _finite(lr / f2) if f2 > 0 else None))
    return rows


@dataclass(frozen=True)
class RunChange:
    """One run's stages: its identity and :class:`StageRow` per stage."""

    run_id: str
    model: str
    arm: str
    size: str
    seed: int
    dataset: str
    image_size: int | None
    parameters: int
    init_from: str  # "init.pt" or "rebuilt"
    stages: tuple[StageRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stage_lrs(rec: Any) -> dict[str, float]:
    """Nominal peak learning rate per stage from the run's recorded fine-tuning plan."""
    ft = (rec.model_info or {}).get("finetune") or {}
    groups = ft.get("param_groups") or []
    if not groups:  # no plan recorded: every stage at train.lr
        lr = float(rec.spec.get("train", {}).get("lr", 0.0))
        return {s["name"]: lr for s in (rec.model_info or {}).get("stages") or []}
    later = ft.get("switch_step") is not None  # LP-FT: frozen stages train after the switch
    return {g["stage"]: float(g["lr"]) if (g.get("trainable") or later) else 0.0 for g in groups}


def _init_state(store: Any, rec: Any) -> tuple[dict[str, torch.Tensor], str]:
    from .runs import load_checkpoint

    try:
        return load_checkpoint(rec, "init"), "init.pt"
    except DataError:
        from ..config import spec_from_dict
        from ..run import initial_model

        model = initial_model(spec_from_dict(rec.spec), workspace=store.workspace)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}, "rebuilt"


def run_change(store: Any, rec: Any, *, images: Any, options: ChangeOptions, arm: str | None = None,
               device: str | None = None) -> RunChange:
    """:class:`RunChange` of one finished run; ``images`` an :class:`~.runs.AnalysisImages`."""
    from .runs import load_checkpoint, run_info, run_model

    s0, how = _init_state(store, rec)
    s1 = load_checkpoint(rec, options.checkpoint)
    model = run_model(rec, s1)
    x = images.for_run(rec)
    rows = stage_rows(model=model, init_state=s0, final_state=s1, images=x, lrs=_stage_lrs(rec),
                      batch_size=options.batch_size, device=device)
    info = run_info(rec)
    d = rec.spec["data"]
    params = int((rec.model_info or {}).get("parameters") or sum(p.numel() for p in model.parameters()))
    return RunChange(rec.run_id, info.model, arm or info.init, info.size, info.seed, d["name"],
                     d.get("image_size"), params, how, tuple(rows))


def _summary(values: Sequence[float | None]) -> dict[str, Any]:
    from ..decide.stats import summarize

    s = summarize([v for v in values if v is not None])
    if s is None:
        return {"n": 0, "mean": None, "ci_low": None, "ci_high": None}
    return {"n": s.n, "mean": s.mean, "ci_low": s.ci_low, "ci_high": s.ci_high}


@dataclass
class ChangeResult:
    """The study's change-vs-size analysis (:func:`study_change`); :meth:`to_dict` is its JSON."""

    study: str
    options: ChangeOptions
    runs: list[RunChange]
    cells: list[dict[str, Any]]
    comparisons: list[dict[str, Any]]
    tracks: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.study, "options": asdict(self.options), "definitions": DEFINITIONS,
                "cells": self.cells, "comparisons": self.comparisons, "tracks": self.tracks,
                "runs": [r.to_dict() for r in self.runs]}


def _cells(runs: Sequence[RunChange]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str, str], list[RunChange]] = defaultdict(list)
    for r in runs:
        groups[(r.model, r.size, r.arm)].append(r)
    out = []
    for (model, size, arm), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r.seed)
        stages = []
        for i, st in enumerate(rs[0].stages):
            rows = [r.stages[i] for r in rs if len(r.stages) > i and r.stages[i].stage == st.stage]
            stages.append({"stage": st.stage, "width": st.width, "parameters": st.parameters,
                           **{m: _summary([getattr(x, m) for x in rows]) for m in MEASURES}})
        out.append({"model": model, "size": size, "arm": arm, "dataset": rs[0].dataset,
                    "image_size": rs[0].image_size, "parameters": rs[0].parameters,
                    "seeds": [r.seed for r in rs], "stages": stages})
    return out


def _matched(a: Sequence[str], b: Sequence[str]) -> list[tuple[str, str, str]]:
    """``(label, stage of a, stage of b)``: every stage when the names agree, else stem, the last
    encoder stage and head."""
    if list(a) == list(b):
        return [(s, s, s) for s in a]
    out = []
    if "stem" in a and "stem" in b:
        out.append(("stem", "stem", "stem"))
    enc_a, enc_b = [s for s in a if s != "head"], [s for s in b if s != "head"]
    if enc_a and enc_b:
        out.append(("last encoder stage", enc_a[-1], enc_b[-1]))
    if "head" in a and "head" in b:
        out.append(("head", "head", "head"))
    return out


def _sign(log_ratio: float | None) -> int | None:
    if log_ratio is None or not math.isfinite(log_ratio):
        return None
    return 0 if abs(log_ratio) < SAME else (1 if log_ratio > 0 else -1)


def _log(a: float | None, b: float | None) -> float | None:
    return math.log(a / b) if a and b and a > 0 and b > 0 else None


def _comparisons(runs: Sequence[RunChange], *, margin: float, alpha: float
                 ) -> list[dict[str, Any]]:
    from ..decide.verdicts import decide_family

    by: dict[tuple[str, str, str], dict[str, list[RunChange]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        by[(r.dataset, r.size, r.arm)][r.model].append(r)
    questions: list[tuple[dict[str, Any], list[float]]] = []
    for (dataset, size, arm), models in sorted(by.items()):
        order = sorted(models, key=lambda m: (models[m][0].parameters, m))
        for small, large in zip(order, order[1:]):
            rs = {r.seed: r for r in models[small]}
            rl = {r.seed: r for r in models[large]}
            seeds = sorted(set(rs) & set(rl))
            if not seeds:
                continue
            names_s = [s.stage for s in rs[seeds[0]].stages]
            names_l = [s.stage for s in rl[seeds[0]].stages]
            for label, st_s, st_l in _matched(names_s, names_l):
                pick = lambda r, n: next(x for x in r.stages if x.stage == n)  # noqa: E731
                pairs = [(pick(rs[s], st_s), pick(rl[s], st_l)) for s in seeds]
                if all(a.lr == 0 and b.lr == 0 for a, b in pairs):
                    continue  # frozen in both models: nothing trained it, no size effect to ask
                ok = [(s, a, b) for s, (a, b) in zip(seeds, pairs) if a.cka is not None and b.cka is not None]
                diffs = [b.cka - a.cka for _, a, b in ok]
                mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
                a0, b0 = pairs[0]
                upd_s = mean([a.update_rms for a, _ in pairs if a.update_rms is not None])
                upd_l = mean([b.update_rms for _, b in pairs if b.update_rms is not None])
                q = {"dataset": dataset, "size": size, "arm": arm, "smaller": small, "larger": large,
                     "stage": label, "stage_smaller": st_s, "stage_larger": st_l,
                     "seeds": [s for s, _, _ in ok],
                     "image_sizes": [rs[seeds[0]].image_size, rl[seeds[0]].image_size],
                     "width": [a0.width, b0.width],
                     "parameters": [rs[seeds[0]].parameters, rl[seeds[0]].parameters],
                     "update_rms": [upd_s, upd_l],
                     "relative_change": [mean([a.relative_change for a, _ in pairs if a.relative_change is not None]),
                                         mean([b.relative_change for _, b in pairs if b.relative_change is not None])],
                     "cka": [mean([a.cka for _, a, _ in ok]), mean([b.cka for _, _, b in ok])],
                     "verdict": "undecided", "mean": mean(diffs), "ci_low": None, "ci_high": None,
                     "p_adjusted": None, "margin": margin, "n": len(diffs),
                     "predicted": {"width": _sign(_log(b0.width, a0.width)),
                                   "parameters": _sign(_log(rl[seeds[0]].parameters, rs[seeds[0]].parameters)),
                                   # a smaller per-parameter update predicts a higher CKA
                                   "update_rms": _sign(_log(upd_s, upd_l))}}
                questions.append((q, diffs))
    decidable = [(q, d) for q, d in questions if len(d) >= 2]
    if decidable:
        decs = decide_family([d for _, d in decidable], [margin] * len(decidable), alpha=alpha)
        for (q, _), dec in zip(decidable, decs):
            q.update(verdict=dec.verdict, mean=dec.mean, ci_low=dec.ci_low, ci_high=dec.ci_high,
                     level=dec.level, p_adjusted=dec.p_adjusted)
    return [q for q, _ in questions]


OBSERVED = {"better_beyond_margin": 1, "better_within_margin": 1, "equivalent": 0,
            "worse_within_margin": -1, "worse_beyond_margin": -1}
EXPLANATIONS = {"width": "the stage's width", "parameters": "the parameter count",
                "update_rms": "the per-parameter update size"}


def tracks_sentence(comparisons: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Which explanation of "the larger model changes less" matches the decided comparisons.

    Returns:
        ``{"decided": n, "matches": {explanation: k}, "best": [...], "sentence": str}``; a
        comparison counts for an explanation when the direction it predicts (+1 the larger model
        changes less, −1 more, 0 no difference) equals the verdict's.
    """
    decided = [c for c in comparisons if c.get("verdict") in OBSERVED]
    matches = {e: sum(1 for c in decided if c["predicted"].get(e) == OBSERVED[c["verdict"]])
               for e in EXPLANATIONS}
    n = len(decided)
    if not n:
        return {"decided": 0, "matches": matches, "best": [],
                "sentence": f"No size comparison is decided ({len(comparisons)} asked): the study "
                            "cannot say whether changing less tracks width, parameter count or the "
                            "per-parameter update size."}
    top = max(matches.values())
    best = [e for e, k in matches.items() if k == top]
    counts = ", ".join(f"{EXPLANATIONS[e]} {k}/{n}" for e, k in matches.items())
    larger_less = sum(1 for c in decided if OBSERVED[c["verdict"]] == 1)
    head = (f"Of {len(comparisons)} stage comparisons between successive model sizes, {n} are "
            f"decided; in {larger_less} the larger model's stage changed less (higher CKA(init, "
            f"final)). Direction predicted correctly by {counts}.")
    if top == 0:
        tail = " None of the three explanations predicts any decided comparison."
    elif len(best) == 1:
        tail = f" Changing less tracks {EXPLANATIONS[best[0]]} best here."
    else:
        tail = (" " + " and ".join(EXPLANATIONS[e] for e in best).capitalize()
                + " predict equally well: this design cannot tell them apart.")
    return {"decided": n, "matches": matches, "best": best, "sentence": head + tail}


def study_change(*, workspace: str | Path, study: str, options: ChangeOptions | None = None,
                 device: str | None = None, progress: bool = False) -> ChangeResult:
    """The change-vs-size analysis of every finished run of ``study`` (module docstring).

    Raises:
        TransfuseError: no store, no finished runs, a missing final checkpoint, too few images.
    """
    from ..store import Store
    from ..decide.results import load_results
    from .runs import AnalysisImages

    opts = options or ChangeOptions()
    ws = Path(workspace)
    if not (ws / "transfuse.db").is_file():
        raise TransfuseError(f"no run store in {ws}; pass the workspace the study ran in")
    store = Store(ws)
    res = load_results(store, study)
    if not res.rows:
        raise TransfuseError(f"study {study!r} has no finished runs in {ws}; see `transfuse runs list`")
    images = AnalysisImages(opts)
    recs = [(row, store.get_run(row.run_id)) for row in res.rows]
    for _, rec in recs:  # every input problem before any forward pass
        images.check(rec)
    from tqdm.auto import tqdm

    runs = [run_change(store, rec, images=images, options=opts, arm=row.init, device=device)
            for row, rec in tqdm(recs, desc="change", disable=not progress, leave=False)]
    comps = _comparisons(runs, margin=opts.margin, alpha=opts.alpha)
    return ChangeResult(study, opts, runs, _cells(runs), comps, tracks_sentence(comps))
