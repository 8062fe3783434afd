"""Rank candidate inits/sources on a target dataset before training, and check a ranking against a
study's real fine-tuned outcomes.

``rank_sources`` builds the model exactly as a run would (same data preparation, same
:func:`~transfuse.inits.apply_init`), never trains it, and scores the frozen pooled features of
the stage below the head on the **training split only** (``features``), plus — where the source
carries a classifier (ImageNet weights, a ``run:`` source) — that classifier's probabilities
(``source_probs``, for LEEP and NCE). Each estimator's wall time is reported beside its score.

``check_ranking`` compares, per model × training-set size, each estimator's scores over a study's
arms with the arms' mean test scores: Kendall's τ (scipy), with a percentile bootstrap interval
that resamples seeds (the outcomes' uncertainty; the estimators are computed once, at seed 0).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..spec.init_names import source_ref
from .estimators import ESTIMATORS

__all__ = ["SourceScores", "rank_sources", "score_spec", "check_ranking", "Agreement"]


@dataclass
class SourceScores:
    """One candidate's estimator scores (``None``: the estimator needs a source head it lacks, or
    cannot score these data; ``errors`` says why for the latter)."""

    label: str
    scores: dict[str, float | None] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    feature_seconds: float = 0.0
    n: int = 0
    dim: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _features(model: Any, dataset: Any, *, batch_size: int, device: Any,
              limit: int | None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Pooled input of the head ``(N, D)``, the model's softmax ``(N, C)`` and labels ``(N,)``."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from ..models import stage_module

    if limit is not None and len(dataset) > limit:
        dataset = Subset(dataset, range(limit))
    head = stage_module(model, "head")
    grabbed: list[torch.Tensor] = []

    def hook(_m: Any, inputs: tuple[Any, ...]) -> None:
        x = inputs[0]
        grabbed.append((x.flatten(2).mean(-1) if x.ndim > 2 else x).detach().double().cpu())

    handle = head.register_forward_pre_hook(hook)
    feats, probs, labels = [], [], []
    model.eval().to(device)
    try:
        with torch.no_grad():
            for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
                x, y = batch[0], batch[1]
                logits = model(x.to(device))
                feats.append(grabbed.pop())
                probs.append(torch.softmax(logits.double(), dim=1).cpu())
                labels.append(torch.as_tensor(y).reshape(len(x), -1)[:, 0].long())
    finally:
        handle.remove()
    if not feats:
        raise DataError("the training split is empty: nothing to score")
    return (torch.cat(feats).numpy(), torch.cat(probs).numpy(), torch.cat(labels).numpy())


def score_spec(spec: Any, *, workspace: str | Path, estimators: Sequence[str] | None = None,
               device: str | None = None, max_examples: int | None = 2000,
               label: str | None = None, data: Any = None) -> SourceScores:
    """Score one candidate: a :class:`~transfuse.config.RunSpec` (its data, model and init).

    Args:
        spec: the run the candidate would be (``spec.train`` is not used: nothing is trained).
        workspace: where ``run:``/``ssl:``/``med3d:`` sources are found.
        estimators: names in :data:`~transfuse.transferability.ESTIMATORS` (default all).
        max_examples: score at most this many training examples (the first ones, as stored).
        data: the prepared dataset, when the caller already has it.

    Raises:
        TransfuseError: an unknown estimator, model, source or dataset.
    """
    import torch

    from ..data import load_dataset
    from ..inits import apply_init
    from ..inits.base import init_model_kwargs
    from ..models import create_model
    from ..run import check_compatible
    from ..train.device import resolve_device
    from ..weights import resolve_source

    names = list(estimators or [e.name for e in ESTIMATORS])
    entries = [ESTIMATORS.get(n) for n in names]
    source = resolve_source(spec.init.source, workspace=workspace) if spec.init.source else None
    if data is None:
        norm = None
        if spec.data.normalize == "source" and source is not None and source.mean is not None:
            norm = (source.mean, source.std)
        data = load_dataset(spec.data, norm=norm)
    dims = check_compatible(spec, data)
    head_classes = source.num_classes if source is not None and source.num_classes else None
    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)
    model = create_model(spec.model.name, spatial_dims=dims, in_channels=data.info.in_channels,
                         num_classes=head_classes or data.info.num_classes,
                         **init_model_kwargs(spec.init.name))
    apply_init(model, spec.init, source=source, seed=spec.seed, workspace=workspace)
    feats, probs, labels = _features(model, data.train, batch_size=64,
                                     device=resolve_device(device), limit=max_examples)
    out = SourceScores(label or _label(spec), feature_seconds=round(time.perf_counter() - t0, 3),
                       n=int(feats.shape[0]), dim=int(feats.shape[1]))
    has_head = head_classes is not None and spec.init.name == "pretrained"
    for e in entries:
        if e.meta["needs"] == "source_probs" and not has_head:
            out.scores[e.name] = None
            continue
        t = time.perf_counter()
        x = feats if e.meta["needs"] == "features" else probs
        try:  # one estimator that cannot score these data (a class too rare for the probe's
            out.scores[e.name] = float(e.fn(x, labels))  # folds) leaves the others scoring
        except DataError as err:
            out.scores[e.name], out.errors[e.name] = None, str(err)
        out.seconds[e.name] = round(time.perf_counter() - t, 4)
    return out


def _label(spec: Any) -> str:
    return spec.init.name + (f" ({spec.init.source})" if spec.init.source else "")


def rank_sources(*, dataset: str, model: str, sources: Sequence[str], workspace: str | Path,
                 data_root: str | None = None, n_train: int | None = None,
                 image_size: int | None = None, estimators: Sequence[str] | None = None,
                 device: str | None = None, max_examples: int | None = 2000) -> list[SourceScores]:
    """Score each candidate source for ``model`` on ``dataset``'s training split.

    A candidate is a source name (``imagenet:efficientnet_lite0``, ``run:<id>``, ``ssl:NAME``,
    loaded with the ``pretrained`` init) or an init without a source (``random``, ``gabor``).
    """
    from ..config import DataSpec, InitSpec, ModelSpec, RunSpec
    from ..data import load_dataset
    from ..inits import INITS

    if not sources:
        raise ConfigError("give at least one --source (e.g. imagenet:efficientnet_lite0 or random)")
    dspec = DataSpec(name=dataset, data_root=data_root, n_train=n_train, image_size=image_size)
    out = []
    data = None
    for s in sources:
        head = ref.family if (ref := source_ref(s)) else s
        is_init = head in INITS and head != "pretrained"
        init = InitSpec(name=s) if is_init else InitSpec(name="pretrained", source=s)
        spec = RunSpec(data=dspec, model=ModelSpec(name=model), init=init, seed=0)
        if data is None:
            data = load_dataset(dspec)
        out.append(score_spec(spec, workspace=workspace, estimators=estimators, device=device,
                              max_examples=max_examples, label=s, data=data))
    return out


@dataclass
class Agreement:
    """Kendall's τ between an estimator's ranking of a group's arms and their mean test scores."""

    model: str
    size: str
    estimator: str
    arms: tuple[str, ...]
    tau: float | None
    ci_low: float | None
    ci_high: float | None
    n_seeds: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _tau(a: Sequence[float], b: Sequence[float]) -> float | None:
    from scipy.stats import kendalltau

    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    t = kendalltau(a, b).statistic
    return None if t is None or not math.isfinite(t) else float(t)


def check_ranking(scores: Mapping[tuple[str, str, str], SourceScores],
                  outcomes: Mapping[tuple[str, str, str], Mapping[int, float]], *,
                  n_boot: int = 2000, seed: int = 0) -> list[Agreement]:
    """τ per (model, size, estimator) over the arms that have both scores and outcomes.

    Args:
        scores: ``{(model, arm, size): SourceScores}``.
        outcomes: ``{(model, arm, size): {seed: test score}}`` (the study's finished runs).
        n_boot: bootstrap resamples of the seeds shared by every arm of the group.
    """
    rng = np.random.default_rng(seed)
    groups: dict[tuple[str, str], list[str]] = {}
    for (model, arm, size) in scores:
        if (model, arm, size) in outcomes:
            groups.setdefault((model, size), []).append(arm)
    out = []
    for (model, size), arms in sorted(groups.items()):
        seeds = sorted(set.intersection(*(set(outcomes[(model, a, size)]) for a in arms)))
        table = np.array([[outcomes[(model, a, size)][s] for s in seeds] for a in arms])
        ests = sorted({k for a in arms for k in scores[(model, a, size)].scores})
        for e in ests:
            vals = [(a, scores[(model, a, size)].scores.get(e)) for a in arms]
            keep = [i for i, (_, v) in enumerate(vals) if v is not None]
            est = [vals[i][1] for i in keep]
            if len(keep) < 2 or not seeds:
                out.append(Agreement(model, size, e, tuple(arms[i] for i in keep), None, None, None,
                                     len(seeds)))
                continue
            tau = _tau(est, list(table[keep].mean(1)))
            boot = []
            for _ in range(n_boot):
                idx = rng.integers(0, len(seeds), len(seeds))
                t = _tau(est, list(table[keep][:, idx].mean(1)))
                if t is not None:
                    boot.append(t)
            lo, hi = (np.percentile(boot, [2.5, 97.5]) if boot else (None, None))
            out.append(Agreement(model, size, e, tuple(arms[i] for i in keep), tau,
                                 None if lo is None else float(lo), None if hi is None else float(hi),
                                 len(seeds)))
    return out


def _cell_specs(specs: Sequence[Any]) -> dict[tuple[str, str, str], Any]:
    """The lowest-seed spec of every (model, arm, size) cell, keyed as the study report keys it."""
    from ..decide.results import cell_keys

    out: dict[tuple[str, str, str], Any] = {}
    for spec, key in zip(specs, cell_keys([s.to_dict() for s in specs])):
        if key not in out or spec.seed < out[key].seed:
            out[key] = spec
    return out


def check_against(path: str | Path, *, study: str | None = None, study_file: str | Path | None = None,
                  workspace: str | Path | None = None, estimators: Sequence[str] | None = None,
                  device: str | None = None, max_examples: int | None = 2000, n_boot: int = 2000,
                  data_root: str | None = None) -> tuple[list[Agreement], dict[str, str]]:
    """Score every arm of a finished study and compare each estimator's ranking with the outcomes.

    Args:
        path: the study's workspace (its store) or its results JSON (``report --format json``,
            with per-seed ``scores`` in its cells).
        study: the study's name (a workspace; default: the study file's name).
        study_file: the study file (needed with a JSON: it says how each arm was initialised).
        workspace: where ``run:``/``ssl:`` sources are found (default: ``path`` if a workspace).

    Returns:
        ``(agreements, skipped)``; ``skipped`` maps a cell (``model · arm · size``) to why it was
        not scored (e.g. its source is in a store that is not here).
    """
    import json

    from ..errors import TransfuseError
    from ..study import expand, load_study

    p = Path(path)
    spec_file = load_study(study_file) if study_file is not None else None
    outcomes: dict[tuple[str, str, str], dict[int, float]] = {}
    if p.is_dir():
        from ..store import Store
        from ..decide.results import load_results

        name = study or (spec_file.name if spec_file else None)
        if name is None:
            raise ConfigError("--check-against WORKSPACE needs --study NAME or --study-file FILE")
        store = Store(p)
        res = load_results(store, name)
        for r in res.rows:
            if r.test is not None:
                outcomes.setdefault(r.cell, {})[r.seed] = r.test
        cells = _cell_specs([_spec(store.get_run(r.run_id).spec) for r in res.rows])
        workspace = workspace or p
    elif p.is_file():
        if spec_file is None:
            raise ConfigError(f"{p} is a results JSON: give --study-file FILE, the study that "
                              "produced it (it says how each arm was initialised)")
        try:
            data = json.loads(p.read_text())
            for c in data["cells"]:
                if "scores" not in c:
                    raise ConfigError(f"{p}: its cells carry no per-seed scores; export it again "
                                      "with this version (`transfuse report --format json`)")
                outcomes[(c["model"], c["arm"], c["size"])] = {
                    int(s): float(v) for s, v in zip(c["seeds"], c["scores"]) if v is not None}
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{p} is not a study results JSON ({e})") from None
        if data_root is not None:
            spec_file = dataclasses.replace(spec_file, base={
                **spec_file.base, "data": {**spec_file.base.get("data", {}), "data_root": data_root}})
        cells = _cell_specs(expand(spec_file))
        workspace = workspace or p.parent
    else:
        raise ConfigError(f"--check-against {p}: no such workspace or results JSON")
    scores: dict[tuple[str, str, str], SourceScores] = {}
    skipped: dict[str, str] = {}
    for key, spec in sorted(cells.items()):
        if key not in outcomes:
            continue
        try:
            scores[key] = score_spec(spec, workspace=workspace, estimators=estimators,
                                     device=device, max_examples=max_examples, label=key[1])
        except TransfuseError as e:
            skipped[" · ".join(key)] = str(e)
    return check_ranking(scores, outcomes, n_boot=n_boot), skipped


def _spec(d: Mapping[str, Any]) -> Any:
    from ..config import spec_from_dict

    return spec_from_dict(dict(d))
