"""The four analyses over stored runs, and ``transfuse analyze``.

For a study's finished runs (see docs/ANALYSIS.md):

(a) layer × layer similarity between two trained runs — by default, per model and training-set
    size, random seed A vs random seed B (the baseline) and random vs every other init at seed A;
(b) each stage's representation at initialisation (``init.pt``) vs after training;
(c) relative weight change per stage, ‖W_final − W_init‖ / ‖W_init‖;
(d) the first convolution's filters at initialisation (pretrained for transferred inits) and after.

Activations come from the same ``images`` of the test split for every run, each normalised as that
run was trained (its stored ``norm_mean``/``norm_std``). Results go to the store
(:mod:`transfuse.analysis.results`); the study report reads them from there.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import DataSpec
from ..errors import ConfigError, DataError, TransfuseError
from ..store import RunRecord, Store
from .capture import POLICIES, Activations, capture_activations
from .canonical import GRID_MEASURES, similarity_grid
from .results import (KINDS, AnalysisMeta, FilterSnapshot, LayerGrid, RunInfo, StageChange,
                      WeightChange, clean, to_payload)

__all__ = ["AnalysisOptions", "Pair", "AnalysisSummary", "default_pairs", "parse_pairs",
           "analyze_study", "run_info", "weight_change", "filter_snapshot", "load_checkpoint",
           "run_model", "AnalysisImages"]

BASELINE = "random"
MIN_POINTS = 16


@dataclass(frozen=True)
class AnalysisOptions:
    """How ``transfuse analyze`` measures (CLI flags in brackets).

    Attributes:
        images: test images per run [--images] (the same ones for every run; at least 16).
        split: split the images come from [--split].
        policy: ``pool`` or ``positions`` [--policy] (see :mod:`transfuse.analysis.capture`).
        per_image: positions per image under ``positions`` [--per-image].
        measures: any of cca, svcca, pwcca, linear_cka [--measures].
        keep: SVD variance fraction kept before svcca/pwcca [--keep].
        max_dims: cap on SVD directions (default: datapoints // 5, the tutorial's 5× rule).
        checkpoint: ``best`` (the checkpoint tested) or ``last`` [--checkpoint].
        seed: seeds the image subset, position sampling and the chance shuffle.
        batch_size: images per forward pass.
    """

    images: int = 256
    split: str = "test"
    policy: str = "pool"
    per_image: int = 16
    measures: tuple[str, ...] = ("linear_cka", "svcca", "pwcca")
    keep: float = 0.99
    max_dims: int | None = None
    checkpoint: str = "best"
    seed: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "measures", tuple(self.measures))
        if self.policy not in POLICIES:
            raise ConfigError(f"--policy {self.policy!r} is not valid; choose {' or '.join(POLICIES)}")
        if self.images < MIN_POINTS:
            raise ConfigError(f"--images {self.images} is too few; use at least {MIN_POINTS} (a few hundred is typical)")
        bad = [m for m in self.measures if m not in GRID_MEASURES]
        if bad or not self.measures:
            raise ConfigError(f"--measures {','.join(self.measures)!r}: choose from {', '.join(GRID_MEASURES)}")
        if self.split not in ("train", "val", "test"):
            raise ConfigError(f"--split {self.split!r} must be train, val or test")
        if self.checkpoint not in ("best", "last"):
            raise ConfigError(f"--checkpoint {self.checkpoint!r} must be best or last")
        if not 0 < self.keep <= 1:
            raise ConfigError(f"--keep {self.keep} must be a variance fraction in (0, 1]")
        if self.per_image < 1 or self.batch_size < 1 or (self.max_dims is not None and self.max_dims < 1):
            raise ConfigError("--per-image, batch size and --max-dims must be >= 1")

    def dims_cap(self, n_points: int) -> int:
        """SVD directions kept at most for a layer with ``n_points`` datapoints."""
        return self.max_dims or max(1, n_points // 5)


@dataclass(frozen=True)
class Pair:
    """Two runs to compare layer by layer; ``baseline`` is the random-vs-random pair to show beside."""

    a: str
    b: str
    role: str
    baseline: tuple[str, str] | None = None


@dataclass(frozen=True)
class AnalysisSummary:
    """What :func:`analyze_study` did."""

    study: str
    runs: list[str]
    pairs: list[Pair]
    results: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _size(spec: dict) -> str:
    d = spec["data"]
    return str(d["n_train"]) if d.get("n_train") else (f"{d['fraction']:g}" if d.get("fraction") else "all")


def run_info(r: RunRecord) -> RunInfo:
    """The run's model, init, seed and training-set size."""
    return RunInfo(r.run_id, r.spec["model"]["name"], r.spec["init"]["name"], int(r.spec["seed"]), _size(r.spec))


def _group(r: RunRecord) -> tuple[str, str, str]:
    return (r.spec["data"]["name"], r.spec["model"]["name"], _size(r.spec))


def default_pairs(runs: Sequence[RunRecord]) -> list[Pair]:
    """Per (dataset, model, size): random at the two lowest seeds (baseline), and random vs each
    other init at the lowest seed where both exist."""
    groups: dict[tuple[str, str, str], list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(_group(r), []).append(r)
    pairs = []
    for rs in groups.values():
        rand = sorted((r for r in rs if r.spec["init"]["name"] == BASELINE), key=lambda r: r.spec["seed"])
        base = (rand[0].run_id, rand[1].run_id) if len(rand) > 1 else None
        if base:
            pairs.append(Pair(*base, "baseline"))
        by_init: dict[str, list[RunRecord]] = {}
        for r in rs:
            if r.spec["init"]["name"] != BASELINE:
                by_init.setdefault(r.spec["init"]["name"], []).append(r)
        for others in by_init.values():
            for ref in rand:
                mate = next((o for o in others if o.spec["seed"] == ref.spec["seed"]), None)
                if mate is not None:
                    pairs.append(Pair(ref.run_id, mate.run_id, "comparison", base))
                    break
    return pairs


def parse_pairs(store: Store, texts: Iterable[str], runs: Sequence[RunRecord]) -> list[Pair]:
    """``RUNID:RUNID`` (unique prefixes) → pairs, each with its group's baseline when there is one."""
    by_id = {r.run_id: r for r in runs}
    defaults = {_group(by_id[p.a]): (p.a, p.b) for p in default_pairs(runs) if p.role == "baseline"}
    out = []
    for t in texts:
        a, sep, b = t.partition(":")
        if not sep or not a or not b:
            raise ConfigError(f"--pairs {t!r} must be RUN_ID:RUN_ID (see `transfuse runs list`)")
        ra, rb = store.get_run(a), store.get_run(b)
        for r in (ra, rb):
            if r.status != "finished":
                raise ConfigError(f"--pairs {t!r}: run {r.run_id} is {r.status}, not finished")
        base = defaults.get(_group(ra))
        if base and base not in [(p.a, p.b) for p in out] and {ra.run_id, rb.run_id} != set(base):
            out.append(Pair(*base, "baseline"))
        out.append(Pair(ra.run_id, rb.run_id, "explicit", base))
    return out


def _checkpoint_path(r: RunRecord, which: str) -> Path:
    d = Path(r.run_dir or "")
    names = [f"{which}.pt"] + (["last.pt"] if which == "best" else [])
    for n in names:
        if (d / n).is_file():
            return d / n
    raise DataError(f"run {r.run_id} has no {names[0]} in {d}; its checkpoints are needed for the analysis "
                    "(retrain it, or leave it out with --pairs)")


def load_checkpoint(r: RunRecord, which: str) -> dict[str, torch.Tensor]:
    """The state dict of ``init``, ``best`` or ``last`` (``best`` falls back to ``last``)."""
    ck = torch.load(_checkpoint_path(r, which), map_location="cpu", weights_only=True)
    return ck["state_dict"] if isinstance(ck, dict) and "state_dict" in ck else ck


def run_model(r: RunRecord, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """The run's model (as its record describes it) with ``state`` loaded."""
    from ..inits import init_model_kwargs
    from ..models import create_model

    di, mi = r.data_info, r.model_info
    model = create_model(r.spec["model"]["name"], spatial_dims=int(mi["spatial_dims"]),
                         in_channels=int(di["in_channels"]), num_classes=len(di["class_names"]),
                         **init_model_kwargs(r.spec["init"]["name"]))
    model.load_state_dict(state)
    return model


class AnalysisImages:
    """The analysis images of each dataset, loaded once, un-normalised (normalised per run).

    ``opts`` needs ``split``, ``images`` and ``seed`` (an :class:`AnalysisOptions` has them)."""

    def __init__(self, opts: Any) -> None:
        self.opts = opts
        self._raw: dict[str, torch.Tensor] = {}

    def key(self, r: RunRecord) -> str:
        """Runs with equal keys see the same analysis images. ``n_train``/``fraction`` only subsample
        the training split, and each run is normalised with its own statistics."""
        skip = ("normalize",) if self.opts.split == "train" else ("n_train", "fraction", "normalize")
        d = {k: v for k, v in r.spec["data"].items() if k not in skip}
        return json.dumps(d, sort_keys=True)

    def check(self, r: RunRecord) -> None:
        n = int(r.data_info.get("split_sizes", {}).get(self.opts.split, 0))
        if n < MIN_POINTS:
            raise DataError(f"run {r.run_id}: the {self.opts.split} split of {r.spec['data']['name']!r} has "
                            f"{n} images; the analysis needs at least {MIN_POINTS} (try --split train)")

    def for_run(self, r: RunRecord) -> torch.Tensor:
        from ..data import load_dataset

        key = self.key(r)
        if key not in self._raw:
            c = int(r.data_info["in_channels"])
            spec = DataSpec(**{**json.loads(key), "normalize": "data"})
            data = load_dataset(spec, norm=((0.0,) * c, (1.0,) * c))
            ds = getattr(data, self.opts.split)
            g = torch.Generator().manual_seed(self.opts.seed)
            idx = torch.randperm(len(ds), generator=g)[: self.opts.images].sort().values
            self._raw[key] = torch.stack([ds[int(i)][0] for i in idx])
        x = self._raw[key]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = torch.tensor(r.data_info["norm_mean"], dtype=x.dtype).view(shape)
        std = torch.tensor(r.data_info["norm_std"], dtype=x.dtype).view(shape)
        return (x - mean) / std


def _capture(r: RunRecord, state: dict, images: torch.Tensor, opts: AnalysisOptions,
             device: str | None) -> Activations:
    model = run_model(r, state)
    if device:
        model.to(device)
    return capture_activations(model, images.split(opts.batch_size), policy=opts.policy,
                               per_image=opts.per_image, seed=opts.seed, n_images=len(images),
                               min_images=MIN_POINTS, device=device)


def _grid_kwargs(opts: AnalysisOptions) -> dict:
    # SVCCA and PWCCA both see the same SVD-reduced data, capped per layer by its datapoints.
    return {"measures": opts.measures, "keep": opts.keep, "max_dims": opts.dims_cap,
            "pwcca_keep": opts.keep, "pwcca_max_dims": opts.dims_cap}


def _rows(values: dict[str, torch.Tensor]) -> dict[str, list[list[float | None]]]:
    return {m: [[clean(v) for v in row] for row in t.tolist()] for m, t in values.items()}


def layer_grid(ra: RunRecord, acts_a: Activations, rb: RunRecord, acts_b: Activations, *,
               opts: AnalysisOptions, role: str, baseline: str | None) -> LayerGrid:
    """Analysis (a): every stage of ``ra`` vs every stage of ``rb`` (trained), plus chance."""
    same = lambda x, y: acts_a.comparable(x, acts_b, y)  # noqa: E731
    n = max(len(v) for v in acts_a.values.values())
    kw = _grid_kwargs(opts)
    g = similarity_grid(acts_a.values, acts_b.values, comparable=same, **kw)
    sh = similarity_grid(acts_a.values, acts_b.values, comparable=lambda x, y: x == y and same(x, y),
                         shuffle_seed=opts.seed, **kw)
    chance = {m: [clean(sh.values[m][i, sh.names_y.index(s)]) if s in sh.names_y else None
                  for i, s in enumerate(sh.names_x)] for m in opts.measures}
    return LayerGrid(run_info(ra), run_info(rb), role, baseline, list(g.names_x), list(g.names_y),
                     _rows(g.values), chance, n, g.dims_x, g.dims_y)


def stage_change(r: RunRecord, acts_init: Activations, acts_final: Activations, *,
                 opts: AnalysisOptions) -> StageChange:
    """Analysis (b): each stage at initialisation vs after training."""
    n = max(len(v) for v in acts_init.values.values())
    g = similarity_grid(acts_init.values, acts_final.values, comparable=lambda x, y: x == y,
                        **_grid_kwargs(opts))
    measures = {m: [clean(g.values[m][i, i]) for i in range(len(g.names_x))] for m in opts.measures}
    return StageChange(run_info(r), list(g.names_x), measures, n, opts.checkpoint)


def _kernels(keys: Iterable[str], stage: dict, s0: dict[str, torch.Tensor]) -> list[str]:
    owns = lambda p, k: k == p or k.startswith(p + ".")  # noqa: E731
    mine = [k for k in keys if any(owns(p, k) for p in stage["modules"])]
    return [k for k in mine if s0[k].is_floating_point() and s0[k].ndim >= 2]


def weight_change(r: RunRecord, s0: dict[str, torch.Tensor], s1: dict[str, torch.Tensor], *,
                  checkpoint: str = "best") -> WeightChange:
    """Analysis (c): ‖W_final − W_init‖_F / ‖W_init‖_F over each stage's conv/linear kernels."""
    stages = r.model_info.get("stages") or []
    if not stages:
        raise DataError(f"run {r.run_id} has no stage list in its model info; retrain it with this version")
    rel, norms, counts = [], [], []
    for st in stages:
        keys = _kernels(s0, st, s0)
        d2 = sum(float((s1[k].double() - s0[k].double()).square().sum()) for k in keys)
        n2 = sum(float(s0[k].double().square().sum()) for k in keys)
        rel.append(clean(d2**0.5 / n2**0.5) if n2 > 0 else None)
        norms.append(clean(n2**0.5) if keys else None)
        counts.append(len(keys))
    return WeightChange(run_info(r), [s["name"] for s in stages], rel, norms, counts, checkpoint)


def filter_snapshot(r: RunRecord, s0: dict[str, torch.Tensor], s1: dict[str, torch.Tensor], *,
                    max_filters: int = 32) -> FilterSnapshot | None:
    """Analysis (d): the first convolution's filters before and after training (``None``: no conv)."""
    from ..report.plots import first_conv_weight

    hit = first_conv_weight(s0)
    if hit is None:
        return None
    key, w0 = hit
    w1 = s1[key]
    rec = {t["key"]: t for t in (r.init_report or {}).get("tensors", [])}
    pretrained = rec.get(key, {}).get("action") in ("loaded", "adapted")
    rnd = lambda w: torch.round(w[:max_filters].double(), decimals=5).tolist()  # noqa: E731
    rel = float((w1.double() - w0.double()).norm() / w0.double().norm()) if w0.norm() > 0 else float("nan")
    return FilterSnapshot(run_info(r), key, list(w0.shape), rnd(w0), rnd(w1), pretrained, clean(rel))


def _progress(items: list, desc: str, on: bool):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not on, leave=False)


def analyze_study(*, workspace: str | Path, study: str, pairs: Sequence[str] | None = None,
                  options: AnalysisOptions | None = None, device: str | None = None,
                  progress: bool = True) -> AnalysisSummary:
    """Run analyses (a)–(d) on a study's finished runs and store the results.

    Args:
        workspace: the run store folder; study: the study name.
        pairs: ``["RUNID:RUNID", ...]`` for (a); default :func:`default_pairs`.
        options: :class:`AnalysisOptions`; device: ``cpu``/``cuda`` for the forward passes.

    Raises:
        TransfuseError: no store, no finished runs, bad pairs or options, missing checkpoints —
            all before anything is stored.
    """
    t0 = time.time()
    opts = options or AnalysisOptions()
    ws = Path(workspace)
    if not (ws / "transfuse.db").is_file():
        raise TransfuseError(f"no run store in {ws}; pass the workspace the study ran in")
    store = Store(ws)
    runs = store.list_runs(study=study, status="finished")
    if not runs:
        raise TransfuseError(f"study {study!r} has no finished runs in {ws}; see `transfuse runs list`")
    plist = parse_pairs(store, pairs, runs) if pairs else default_pairs(runs)
    records = {r.run_id: r for r in runs}
    for p in plist:
        for rid in (p.a, p.b):
            records.setdefault(rid, store.get_run(rid))
    images = AnalysisImages(opts)
    for r in records.values():  # every input problem surfaces before anything is computed or stored
        images.check(r)
        _checkpoint_path(r, "init")
        _checkpoint_path(r, opts.checkpoint)
    for p in plist:
        if images.key(records[p.a]) != images.key(records[p.b]):
            raise ConfigError(f"--pairs {p.a}:{p.b}: the runs were trained on different data "
                              f"({records[p.a].spec['data']['name']!r} vs {records[p.b].spec['data']['name']!r}"
                              " or other data options), so their images do not line up; pair runs of one dataset")
    in_pairs = {rid for p in plist for rid in (p.a, p.b)}
    finals: dict[str, Activations] = {}
    counts = dict.fromkeys(("change", "weights", "filters", "grid"), 0)
    for r in _progress(list(records.values()), "analyze runs", progress):
        s0, s1 = load_checkpoint(r, "init"), load_checkpoint(r, opts.checkpoint)
        x = images.for_run(r)
        a1 = _capture(r, s1, x, opts, device)
        if r.run_id in in_pairs:
            finals[r.run_id] = a1
        if r.study == study:
            a0 = _capture(r, s0, x, opts, device)
            results = [("change", stage_change(r, a0, a1, opts=opts)),
                       ("weights", weight_change(r, s0, s1, checkpoint=opts.checkpoint)),
                       ("filters", filter_snapshot(r, s0, s1))]
            for kind, res in results:
                if res is not None:
                    store.put_result(KINDS[kind], r.run_id, to_payload(res), study=study, run_id=r.run_id)
                    counts[kind] += 1
    for p in _progress(plist, "analyze pairs", progress):
        base = f"{p.baseline[0]}:{p.baseline[1]}" if p.baseline else None
        grid = layer_grid(records[p.a], finals[p.a], records[p.b], finals[p.b], opts=opts,
                          role=p.role, baseline=base)
        store.put_result(KINDS["grid"], grid.key, to_payload(grid), study=study)
        counts["grid"] += 1
    seconds = time.time() - t0
    meta = AnalysisMeta(study, {**asdict(opts), "measures": list(opts.measures)},
                        [[p.a, p.b, p.role, f"{p.baseline[0]}:{p.baseline[1]}" if p.baseline else None]
                         for p in plist], [r.run_id for r in runs], round(seconds, 2))
    store.put_result(KINDS["meta"], study, to_payload(meta), study=study)
    return AnalysisSummary(study, [r.run_id for r in runs], plist, counts, seconds)
