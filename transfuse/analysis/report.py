"""The study report's "Representation analysis" section, read from the store only.

Shows what ``transfuse analyze`` stored (:mod:`transfuse.analysis.results`): layer × layer heatmaps
with the random-vs-random baseline beside each comparison, same-stage curves against the
shuffled-rows chance level, per-stage change from initialisation, relative weight change per stage
and first-layer filter grids. Every user string goes through ``esc``/``table``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..report.html import Section, esc, figure_img, new_figure, register_section, table
from .results import (KINDS, AnalysisMeta, FilterSnapshot, LayerGrid, StageChange, WeightChange,
                      from_payload)

if TYPE_CHECKING:
    from ..store import Store

__all__ = ["analysis_section"]

NAMES = {"cca": "mean CCA", "svcca": "SVCCA", "pwcca": "PWCCA", "linear_cka": "linear CKA"}


def _f(v: float | None, nd: int = 3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{nd}f}"


def _arr(rows: list[list[float | None]]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float64)


def _colors(names: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _heatmap(ax, g: LayerGrid, measure: str) -> None:
    a = _arr(g.measures[measure])
    ax.imshow(a, vmin=0, vmax=1, cmap="viridis", origin="lower")
    ax.set_xticks(range(len(g.stages_b)), g.stages_b, rotation=45, fontsize=7)
    ax.set_yticks(range(len(g.stages_a)), g.stages_a, fontsize=7)
    if a.size <= 100:
        for (i, j), v in np.ndenumerate(a):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if v < 0.6 else "black")


def _grid_figure(g: LayerGrid, base: LayerGrid | None, measures: list[str]) -> str:
    rows = [g] + ([base] if base is not None else [])
    fig, axes = new_figure(width=3.0 * len(measures) + 0.6, height=3.0 * len(rows),
                           ncols=len(measures), nrows=len(rows))
    for i, grid in enumerate(rows):
        for j, m in enumerate(measures):
            ax = axes[i][j]
            _heatmap(ax, grid, m)
            what = "baseline: " if grid is base else ""
            ax.set_title(f"{what}{NAMES.get(m, m)}", fontsize=8)
            ax.set_ylabel(grid.run_a.label if j == 0 else "", fontsize=7)
            ax.set_xlabel(grid.run_b.label, fontsize=7)
    alt = (f"Layer × layer similarity of {g.run_a.label} (rows) and {g.run_b.label} (columns), "
           f"trained, {g.n_points} datapoints")
    if base is not None:
        alt += f"; below: the random-vs-random baseline {base.run_a.label} vs {base.run_b.label}"
    return figure_img(fig, alt=alt)


def _diagonal_figure(grids: list[LayerGrid], measures: list[str]) -> str:
    fig, axes = new_figure(width=3.4 * len(measures) + 0.6, height=3.2, ncols=len(measures))
    col = _colors([g.key for g in grids])
    for ax, m in zip(axes[0], measures):
        for g in grids:
            xs = list(range(len(g.stages_a)))
            style = "--" if g.role == "baseline" else "-"
            name = ("baseline " if g.role == "baseline" else "") + f"{g.run_a.init} vs {g.run_b.init}"
            ax.plot(xs, [np.nan if v is None else v for v in g.diagonal(m)], style, marker="o",
                    color=col[g.key], label=name, lw=1.5)
        ch = grids[0].chance.get(m, [])
        ax.plot(range(len(ch)), [np.nan if v is None else v for v in ch], ":", color="grey",
                label="chance (rows shuffled)")
        ax.set_xticks(range(len(grids[0].stages_a)), grids[0].stages_a, rotation=45, fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_title(NAMES.get(m, m), fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("same-stage similarity")
    axes[0][-1].legend(fontsize=6)
    return figure_img(fig, alt=f"{grids[0].run_a.model}: similarity of each stage with the same stage "
                               "of the other run (dashed: random vs random; dotted: chance)")


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
        html += _grid_figure(g, grids.get(g.baseline or ""), measures)
    html += "<h3>Same stage, two runs</h3>"
    rows = []
    for model, gs in by_model.items():
        html += _diagonal_figure(gs, measures)
        for g in gs:
            for m in measures:
                rows.append([g.run_a.label, g.run_b.label, g.role, NAMES.get(m, m),
                             *[f"{_f(v)} (chance {_f(c)})" for v, c in zip(g.diagonal(m), g.chance.get(m, []))]])
    width = max((len(g.stages_a) for gs in by_model.values() for g in gs), default=0)
    html += table(["run A", "run B", "role", "measure", *[f"stage {i}" for i in range(width)]], rows,
                  caption="Same-stage similarity per stage of run A (stem first), with the chance level")
    return html


def _per_model_lines(items: list, values, ylabel: str, title: str, *, logy: bool = False) -> str:
    """One panel per model; one line per run over its stages (colour: init)."""
    models = sorted({it.run.model for it in items})
    inits = sorted({it.run.init for it in items}, key=lambda n: (n != "random", n))
    col = _colors(inits)
    seeds = sorted({it.run.seed for it in items})
    styles = ["-", "--", ":", "-."]
    fig, axes = new_figure(width=min(3.8 * len(models), 13) + 1.0, height=3.2, ncols=len(models))
    for ax, model in zip(axes[0], models):
        for it in sorted((i for i in items if i.run.model == model), key=lambda i: (i.run.init, i.run.seed)):
            ys = [np.nan if v is None else v for v in values(it)]
            ax.plot(range(len(ys)), ys, styles[seeds.index(it.run.seed) % 4], marker="o",
                    color=col[it.run.init], lw=1.4, label=f"{it.run.init} s{it.run.seed}")
            ax.set_xticks(range(len(it.stages)), it.stages, rotation=45, fontsize=7)
        if logy:
            ax.set_yscale("log")
        ax.set_title(model, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    return figure_img(fig, alt=title)


def _change_html(changes: list[StageChange], weights: list[WeightChange], measures: list[str]) -> str:
    html = ""
    if changes:
        html += "<h3>How much each stage changed: representation at init vs after training</h3>"
        for m in measures:
            html += _per_model_lines(changes, lambda c, m=m: c.measures[m], NAMES.get(m, m),
                                     f"{NAMES.get(m, m)} between each stage at initialisation and after "
                                     "training (1 = unchanged)")
        rows = [[c.run.label, NAMES.get(m, m), *[_f(v) for v in c.measures[m]]] for c in changes for m in measures]
        width = max(len(c.stages) for c in changes)
        html += table(["run", "measure", *[f"stage {i}" for i in range(width)]], rows,
                      caption="Similarity of each stage (stem first) to itself at initialisation")
    if weights:
        html += "<h3>Relative weight change per stage</h3>"
        html += _per_model_lines(weights, lambda w: w.relative, "‖W_final − W_init‖ / ‖W_init‖",
                                 "Relative change of each stage's conv/linear kernels during training",
                                 logy=True)
        rows = [[w.run.label, *[f"{s}: {_f(v, 4)}" for s, v in zip(w.stages, w.relative)]] for w in weights]
        html += table(["run", *[f"stage {i}" for i in range(max(len(w.stages) for w in weights))]], rows,
                      caption="‖W_final − W_init‖_F / ‖W_init‖_F over each stage's kernels")
    return html


def _filters_html(snaps: list[FilterSnapshot]) -> str:
    from ..report.plots import filter_grid

    if not snaps:
        return ""
    html = "<h3>First-layer filters</h3>"
    for model in sorted({s.run.model for s in snaps}):
        chosen: dict[str, FilterSnapshot] = {}
        for s in sorted((s for s in snaps if s.run.model == model), key=lambda s: s.run.seed):
            chosen.setdefault(s.run.init, s)
        cols = sorted(chosen.values(), key=lambda s: (s.run.init != "random", s.run.init))[:8]
        fig, axes = new_figure(width=2.1 * len(cols) + 0.4, height=4.6, ncols=len(cols), nrows=2)
        for j, s in enumerate(cols):
            start = "at init (pretrained)" if s.pretrained else "at init"
            for i, (w, when) in enumerate(((s.init, start), (s.trained, "after training"))):
                ax = axes[i][j]
                ax.imshow(filter_grid(torch.tensor(w)), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                ax.set_title(f"{s.run.init}\n{when}" if i == 0 else f"{when} (Δ {_f(s.relative, 2)})", fontsize=7)
        html += figure_img(fig, alt=f"{model}: first-layer filters ({cols[0].key}) at initialisation or "
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
