"""The study report's "Representation analysis" section, read from the store only.

Shows what ``transfuse analyze`` stored (:mod:`transfuse.analysis.results`): layer × layer heatmaps
with the random-vs-random baseline beside each comparison, same-stage curves against the
shuffled-rows chance level, per-stage change from initialisation, relative weight change per stage
and first-layer filter grids. Every user string goes through ``esc``/``table``; every
``*_figure`` builder returns a Figure whose data panels carry a legend or colorbar; tables and
figures name stages (stem, block1 …, head), never their index.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .html import Section, esc, figure_img, new_figure, register_section, table
from ..analysis.results import (KINDS, AnalysisMeta, FilterSnapshot, LayerGrid, StageChange, WeightChange,
                      from_payload)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..store import Store

__all__ = ["analysis_section", "grid_figure", "diagonal_figure", "stage_lines_figure",
           "filter_snapshots_figure"]

NAMES = {"cca": "mean CCA", "svcca": "SVCCA", "pwcca": "PWCCA", "linear_cka": "linear CKA"}


def _f(v: float | None, nd: int = 3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{nd}f}"


def _arr(rows: list[list[float | None]]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float64)


def _colors(names: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _run_short(r) -> str:
    """The run without its model (figures and tables are per model): init, seed, size."""
    return f"{r.init} · seed {r.seed}" + ("" if r.size == "all" else f" · n={r.size}")


def _heatmap(fig, ax, g: LayerGrid, measure: str, *, side: float) -> None:
    a = _arr(g.measures[measure])
    im = ax.imshow(a, vmin=0, vmax=1, cmap="viridis", origin="lower")
    fs = 7 if max(a.shape) <= 12 else 6
    ax.set_xticks(range(len(g.stages_b)), g.stages_b, rotation=45, ha="right", rotation_mode="anchor",
                  fontsize=fs)
    ax.set_yticks(range(len(g.stages_a)), g.stages_a, fontsize=fs)
    if max(a.shape) <= side * 2.2:  # the numbers fit in their cells (about 0.45 inch each)
        for (i, j), v in np.ndenumerate(a):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < 0.6 else "black")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    cb.set_label(f"{NAMES.get(measure, measure)} (0 = unrelated, 1 = same)", fontsize=7)
    cb.ax.tick_params(labelsize=6)


def grid_figure(*, grid: LayerGrid, baseline: LayerGrid | None, measures: list[str]) -> Figure:
    """Layer × layer heatmaps of ``grid`` (one per measure), the random-vs-random baseline below.

    Rows are the stages of run A, columns those of run B, both labelled with their stage names;
    each heatmap has a colorbar naming its measure and the 0–1 range.

    Returns:
        A matplotlib Figure with ``(1 or 2) × len(measures)`` heatmaps.
    """
    rows = [grid] + ([baseline] if baseline is not None else [])
    n = max(len(grid.stages_a), len(grid.stages_b))
    side = max(2.8, 0.2 * n + 1.6)
    fig, axes = new_figure(width=(side + 0.9) * len(measures), height=(side + 0.5) * len(rows),
                           ncols=len(measures), nrows=len(rows))
    for i, g in enumerate(rows):
        for j, m in enumerate(measures):
            ax = axes[i][j]
            _heatmap(fig, ax, g, m, side=side)
            what = "baseline (random vs random): " if g is baseline else ""
            ax.set_title(f"{what}{NAMES.get(m, m)}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"rows: run A = {_run_short(g.run_a)}", fontsize=7)
            ax.set_xlabel(f"columns: run B = {_run_short(g.run_b)}", fontsize=7)
    return fig


def _grid_html(g: LayerGrid, base: LayerGrid | None, measures: list[str]) -> str:
    alt = (f"Layer × layer similarity of {g.run_a.label} (rows, run A) and {g.run_b.label} "
           f"(columns, run B), trained, {g.n_points} datapoints")
    if base is not None:
        alt += f"; below: the random-vs-random baseline {base.run_a.label} vs {base.run_b.label}"
    return figure_img(grid_figure(grid=g, baseline=base, measures=measures), alt=alt)


def diagonal_figure(*, grids: list[LayerGrid], measures: list[str]) -> Figure:
    """Same-stage similarity per stage (x: stage names), one line per pair, with chance.

    Returns:
        A matplotlib Figure, one panel per measure, each with its own legend.
    """
    fig, axes = new_figure(width=3.6 * len(measures) + 0.6, height=4.0, ncols=len(measures))
    col = _colors([g.key for g in grids])
    for ax, m in zip(axes[0], measures):
        for g in grids:
            xs = list(range(len(g.stages_a)))
            style = "--" if g.role == "baseline" else "-"
            name = ("baseline " if g.role == "baseline" else "") + f"{_run_short(g.run_a)} vs {_run_short(g.run_b)}"
            ax.plot(xs, [np.nan if v is None else v for v in g.diagonal(m)], style, marker="o",
                    color=col[g.key], label=name, lw=1.5)
        ch = grids[0].chance.get(m, [])
        ax.plot(range(len(ch)), [np.nan if v is None else v for v in ch], ":", color="grey",
                label="chance (rows shuffled)")
        ax.set_xticks(range(len(grids[0].stages_a)), grids[0].stages_a, rotation=45, ha="right",
                      rotation_mode="anchor", fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_title(NAMES.get(m, m), fontsize=9)
        ax.set_ylabel("same-stage similarity", fontsize=8)
        ax.grid(alpha=0.3)
        # below the panel: the lines span the whole height, a legend inside would hide some
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    return fig


def _stage_groups(items: list, run, stages) -> list[tuple[str, list[str], list]]:
    """``items`` grouped by model and stage list: one table each, stage names as headers.

    Returns:
        ``[(model, stages, items)]`` in first-seen order.
    """
    groups: dict[tuple[str, tuple[str, ...]], list] = {}
    for it in items:
        groups.setdefault((run(it).model, tuple(stages(it))), []).append(it)
    return [(m, list(st), v) for (m, st), v in groups.items()]


def _grids_html(grids: dict[str, LayerGrid], meta: AnalysisMeta, measures: list[str]) -> str:
    order = [f"{a}:{b}" for a, b, *_ in meta.pairs if f"{a}:{b}" in grids]
    if not order:
        return ""
    shown_as_base = {grids[k].baseline for k in order if grids[k].role != "baseline"}
    html = "<h3>Layer × layer similarity between runs (trained)</h3>"
    by_model: dict[str, list[LayerGrid]] = {}
    for k in order:
        g = grids[k]
        by_model.setdefault(g.run_a.model, []).append(g)
        if g.role == "baseline" and k in shown_as_base:
            continue
        html += _grid_html(g, grids.get(g.baseline or ""), measures)
    html += "<h3>Same stage, two runs</h3>"
    for model, gs in by_model.items():
        html += figure_img(diagonal_figure(grids=gs, measures=measures),
                           alt=f"{model}: similarity of each stage with the same stage of the other run "
                               "(dashed: random vs random; dotted: chance)")
    all_grids = [g for gs in by_model.values() for g in gs]
    for model, stages, gs in _stage_groups(all_grids, lambda g: g.run_a, lambda g: g.stages_a):
        rows = []
        for g in gs:  # one row of values, one of its chance level: short cells, a table that fits
            a, b = _run_short(g.run_a), _run_short(g.run_b)
            for m in measures:
                rows.append([a, b, g.role, NAMES.get(m, m), *[_f(v) for v in g.diagonal(m)]])
                rows.append([a, b, g.role, f"{NAMES.get(m, m)}: chance", *[_f(c) for c in g.chance.get(m, [])]])
        html += table(["run A", "run B", "role", "measure", *stages], rows,
                      caption=f"{model}: same-stage similarity per stage of run A, and its chance level "
                              "(run B's rows shuffled)")
    return html


def stage_lines_figure(*, items: list[StageChange] | list[WeightChange],
                       values: Callable[[Any], list[float | None]], ylabel: str,
                       logy: bool = False) -> Figure:
    """One panel per model; one line per run over its stages (colour: init, style: seed).

    Args:
        items: :class:`StageChange` or :class:`WeightChange` results.
        values: ``item -> list[float | None]``, one value per stage.

    Returns:
        A matplotlib Figure, one panel per model, each with its own legend.
    """
    models = sorted({it.run.model for it in items})
    inits = sorted({it.run.init for it in items}, key=lambda n: (n != "random", n))
    col = _colors(inits)
    seeds = sorted({it.run.seed for it in items})
    styles = ["-", "--", ":", "-."]
    fig, axes = new_figure(width=min(3.8 * len(models), 13) + 1.0, height=3.4, ncols=len(models))
    for ax, model in zip(axes[0], models):
        for it in sorted((i for i in items if i.run.model == model), key=lambda i: (i.run.init, i.run.seed)):
            ys = [np.nan if v is None else v for v in values(it)]
            ax.plot(range(len(ys)), ys, styles[seeds.index(it.run.seed) % 4], marker="o",
                    color=col[it.run.init], lw=1.4, label=_run_short(it.run))
            ax.set_xticks(range(len(it.stages)), it.stages, rotation=45, ha="right",
                          rotation_mode="anchor", fontsize=7)
        if logy:
            ax.set_yscale("log")
        ax.set_title(model, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return fig


def _change_html(changes: list[StageChange], weights: list[WeightChange], measures: list[str]) -> str:
    html = ""
    if changes:
        html += "<h3>How much each stage changed: representation at init vs after training</h3>"
        for m in measures:
            html += figure_img(stage_lines_figure(items=changes, values=lambda c, m=m: c.measures[m],
                                                  ylabel=NAMES.get(m, m)),
                               alt=f"{NAMES.get(m, m)} between each stage at initialisation and after "
                                   "training (1 = unchanged)")
        for model, stages, cs in _stage_groups(changes, lambda c: c.run, lambda c: c.stages):
            rows = [[_run_short(c.run), NAMES.get(m, m), *[_f(v) for v in c.measures[m]]] for c in cs for m in measures]
            html += table(["run", "measure", *stages], rows,
                          caption=f"{model}: similarity of each stage to itself at initialisation")
    if weights:
        html += "<h3>Relative weight change per stage</h3>"
        html += figure_img(stage_lines_figure(items=weights, values=lambda w: w.relative,
                                              ylabel="‖W_final − W_init‖ / ‖W_init‖", logy=True),
                           alt="Relative change of each stage's conv/linear kernels during training")
        for model, stages, ws in _stage_groups(weights, lambda w: w.run, lambda w: w.stages):
            rows = [[_run_short(w.run), *[_f(v, 4) for v in w.relative]] for w in ws]
            html += table(["run", *stages], rows,
                          caption=f"{model}: ‖W_final − W_init‖_F / ‖W_init‖_F over each stage's kernels")
    return html


def filter_snapshots_figure(*, snaps: list[FilterSnapshot]) -> Figure:
    """First-layer filters of stored snapshots, one column per init (its lowest seed, ≤ 8 inits).

    Returns:
        A matplotlib Figure (:func:`transfuse.report.plots.filters_figure`, with its text key).
    """
    from .plots import FilterColumn, filters_figure

    chosen: dict[str, FilterSnapshot] = {}
    for s in sorted(snaps, key=lambda s: s.run.seed):
        chosen.setdefault(s.run.init, s)
    cols = sorted(chosen.values(), key=lambda s: (s.run.init != "random", s.run.init))[:8]
    return filters_figure(columns=[
        FilterColumn(s.run.init, torch.tensor(s.init), torch.tensor(s.trained),
                     "at init (pretrained)" if s.pretrained else "at init",
                     f"after training (Δ {_f(s.relative, 2)})") for s in cols])


def _filters_html(snaps: list[FilterSnapshot]) -> str:
    if not snaps:
        return ""
    html = "<h3>First-layer filters</h3>"
    for model in sorted({s.run.model for s in snaps}):
        mine = [s for s in snaps if s.run.model == model]
        html += figure_img(filter_snapshots_figure(snaps=mine),
                           alt=f"{model}: first-layer filters ({mine[0].key}) at initialisation or "
                               "pretrained (top) and after training (bottom); Δ = relative change")
    return html


def _load(store: Store, study: str):
    get = lambda kind, cls: {k: from_payload(cls, v) for k, v in store.get_results(KINDS[kind], study=study).items()}  # noqa: E731
    metas = store.get_results(KINDS["meta"], study=study)
    if study not in metas:
        return None
    meta = from_payload(AnalysisMeta, metas[study])
    keep = set(meta.runs)
    pick = lambda d: [v for k, v in d.items() if k in keep]  # noqa: E731
    return (meta, get("grid", LayerGrid), pick(get("change", StageChange)),
            pick(get("weights", WeightChange)), pick(get("filters", FilterSnapshot)))


@register_section("analysis", order=50)
def analysis_section(store: Store, study: str) -> Section | None:
    """The representation-analysis section of ``study``'s report (``None`` if never analysed)."""
    loaded = _load(store, study)
    if loaded is None:
        return None
    meta, grids, changes, weights, snaps = loaded
    o = meta.options
    measures = [m for m in o.get("measures", []) if m in NAMES]
    how = (f"{o.get('images')} {o.get('split')} images per run, policy {o.get('policy')}"
           + (f" ({o.get('per_image')} positions per image)" if o.get("policy") == "positions" else "")
           + f", {o.get('checkpoint')} checkpoint; SVCCA/PWCCA keep {o.get('keep')} of the variance "
           f"(at most datapoints/5 directions); measures {', '.join(NAMES.get(m, m) for m in measures)}.")
    body = (f'<p class="method">Activations of every stage on the same images, {esc(how)} Similarity 1 '
            "means the same representation up to the measure's invariances (CKA: rotation and scale; "
            "CCA family: any invertible linear map). The chance level compares with the images "
            "shuffled; the baseline is the same model trained from random init with another seed.</p>")
    body += _grids_html(grids, meta, measures)
    body += _change_html(changes, weights, measures)
    body += _filters_html(snaps)
    return Section("Representation analysis", body, "analysis")
