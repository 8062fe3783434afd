"""The study report's figures (matplotlib, Agg backend): curves, bars, size plot, filter grids.

Every ``*_figure`` builder returns a matplotlib Figure whose data panels each carry a legend (or,
for image grids, a key), as :func:`transfuse.report.html.figure_img` requires.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from ..decide.results import StudyResults
from .html import esc, figure_img, new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["curves_figure", "steps_figure", "size_figure", "filters_figure", "FilterColumn",
           "conv1_section", "filter_grid", "first_conv_weight", "NOT_REACHED"]


def _colors(names: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def _largest_size(res: StudyResults, model: str) -> str:
    """The largest training-set size this model was run with."""
    have = {r.size for r in res.rows if r.model == model}
    return [s for s in res.sizes if s in have][-1]


def _legend(ax, **kw) -> None:
    """A legend on this panel, when it has labelled artists (every data panel has one)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, **kw)


def curves_figure(res: StudyResults) -> Figure:
    """Validation score vs step for each model (its largest training-set size), one line per init.

    Returns:
        A matplotlib Figure, one panel per model, each with its own legend.
    """
    models = res.models
    fig, axes = new_figure(width=min(4.2 * len(models), 13), height=3.4, ncols=len(models))
    col = _colors(res.inits)
    for ax, model in zip(axes[0], models):
        size = _largest_size(res, model)
        for init in res.inits:
            cell = res.cell(model, init, size)
            if cell is None:
                continue
            steps = sorted({s for r in cell.runs for s in r.curve_steps})
            ys = np.array([[dict(zip(r.curve_steps, r.curve)).get(s) for s in steps] for r in cell.runs],
                          dtype=np.float64)  # None → nan
            with np.errstate(all="ignore"):
                mean = np.nanmean(ys, 0)
            n = len(cell.runs)
            ax.plot(steps, mean, label=f"{init} (mean of {n})" if n > 1 else init, color=col[init], lw=1.6)
            if n > 1:
                ax.fill_between(steps, np.nanmin(ys, 0), np.nanmax(ys, 0), color=col[init], alpha=0.15)
        ax.set_title(f"{model} (n_train={size})", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(f"validation {res.metric}")
        ax.grid(alpha=0.3)
        _legend(ax, loc="lower right")
    return fig


NOT_REACHED = "not-reached"  # gid of the steps figure's "not reached" markers


def steps_figure(res: StudyResults) -> Figure:
    """Mean steps to each absolute threshold per init (error bar: sd).

    A threshold an init never reached is an ✗ near the top of the panel (inside the axes), with
    a "not reached" entry in the legend; the markers have gid :data:`NOT_REACHED`.

    Returns:
        A matplotlib Figure, one panel per model, each with its own legend.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    models = res.models
    fig, axes = new_figure(width=min(4.2 * len(models), 13), height=3.4, ncols=len(models))
    col = _colors(res.inits)
    w = 0.8 / max(len(res.inits), 1)
    for ax, model in zip(axes[0], models):
        size = _largest_size(res, model)
        handles, missing, top = [], [], 0.0
        for j, init in enumerate(res.inits):
            cell = res.cell(model, init, size)
            if cell is None:
                continue
            handles.append(Patch(color=col[init], label=init))
            for i, t in enumerate(res.thresholds):
                s = cell.steps_abs[t]
                x = i + (j - (len(res.inits) - 1) / 2) * w
                if s is None:
                    missing.append((x, init))
                    top = max([top, *(r.curve_steps[-1] for r in cell.runs if r.curve_steps)])
                    continue
                ax.bar(x, s.mean, width=w, color=col[init], yerr=s.sd or 0, capsize=2)
                top = max(top, s.mean + (s.sd or 0))
        top = top or 1.0
        ax.set_ylim(0, top * 1.22)
        if missing:  # markers at 90 % of the axes height: inside the plotting area, above the bars
            ax.plot([x for x, _ in missing], [top * 1.12] * len(missing), ls="none", marker="x",
                    ms=7, mew=2, color="0.25", gid=NOT_REACHED, label="_not reached")
            for x, init in missing:
                ax.plot([x], [top * 1.12], ls="none", marker="x", ms=5, mew=1.2, color=col[init])
            handles.append(Line2D([], [], ls="none", marker="x", ms=7, mew=2, color="0.25",
                                  label="✗ not reached"))
        ax.set_xticks(range(len(res.thresholds)), [f"{res.metric} ≥ {t:g}" for t in res.thresholds])
        ax.set_xlim(-0.5, len(res.thresholds) - 0.5)
        ax.set_title(f"{model} (n_train={size})", fontsize=9)
        ax.set_ylabel("steps")
        ax.grid(alpha=0.3, axis="y")
        if handles:
            ax.legend(handles=handles, fontsize=7, loc="best", ncols=2 if len(handles) > 4 else 1)
    return fig


def size_figure(res: StudyResults) -> Figure:
    """Test score vs training-set size, one line per init (error bar: 95 % CI).

    Returns:
        A matplotlib Figure, one panel per model, each with its own legend.
    """
    models = res.models
    fig, axes = new_figure(width=min(4.2 * len(models), 13), height=3.4, ncols=len(models))
    col = _colors(res.inits)
    xs = list(range(len(res.sizes)))
    for ax, model in zip(axes[0], models):
        for init in res.inits:
            pts = [(x, res.cell(model, init, s)) for x, s in zip(xs, res.sizes)]
            pts = [(x, c.final) for x, c in pts if c is not None and c.final is not None]
            if not pts:
                continue
            m = [f.mean for _, f in pts]
            err = [[f.mean - (f.ci_low if f.ci_low is not None else f.mean) for _, f in pts],
                   [(f.ci_high if f.ci_high is not None else f.mean) - f.mean for _, f in pts]]
            ax.errorbar([x for x, _ in pts], m, yerr=err, label=init, color=col[init], marker="o",
                        capsize=3, lw=1.4)
        ax.set_xticks(xs, res.sizes)
        ax.set_xlabel("n_train")
        ax.set_ylabel(f"test {res.metric}")
        ax.set_title(model, fontsize=9)
        ax.grid(alpha=0.3)
        _legend(ax)
    return fig


def first_conv_weight(state: dict[str, torch.Tensor]) -> tuple[str, torch.Tensor] | None:
    """The first convolution weight (4D or 5D) in state-dict order, with its key."""
    for k, v in state.items():
        if k.endswith("weight") and v.ndim in (4, 5):
            return k, v
    return None


def filter_grid(w: torch.Tensor, *, max_filters: int = 32) -> np.ndarray:
    """Tile conv filters ``(O, I, kh, kw)`` or ``(O, I, kd, kh, kw)`` into one image.

    3D filters show their middle depth slice; 3 input channels show as RGB, others as the mean
    over inputs (grayscale). Each filter is min-max scaled on its own.

    Returns:
        ``(H, W, 3)`` float array in [0, 1].
    """
    w = w.detach().float().cpu()
    if w.ndim == 5:
        w = w[:, :, w.shape[2] // 2]
    w = w[:max_filters]
    if w.shape[1] != 3:
        w = w.mean(1, keepdim=True).repeat(1, 3, 1, 1)
    o, _, kh, kw = w.shape
    cols = int(math.ceil(math.sqrt(o)))
    rows = int(math.ceil(o / cols))
    pad = 1
    grid = np.ones((rows * (kh + pad) + pad, cols * (kw + pad) + pad, 3), dtype=np.float32)
    for i in range(o):
        f = w[i].permute(1, 2, 0).numpy()
        lo, hi = f.min(), f.max()
        f = (f - lo) / (hi - lo) if hi > lo else np.full_like(f, 0.5)
        r, c = divmod(i, cols)
        grid[pad + r * (kh + pad): pad + r * (kh + pad) + kh, pad + c * (kw + pad): pad + c * (kw + pad) + kw] = f
    return grid


def _load_state(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    ck = torch.load(path, map_location="cpu", weights_only=True)
    return ck.get("state_dict", ck) if isinstance(ck, dict) else None


class FilterColumn(NamedTuple):
    """One column of a filter figure: an init's first-layer filters before and after training."""

    title: str
    start: torch.Tensor
    trained: torch.Tensor
    start_note: str = "at init"
    trained_note: str = "after training"


FILTER_KEY = ("top row: first-layer filters at initialisation (or as pretrained)",
              "bottom row: the same filters after training",
              "each filter min–max scaled on its own; 3 input channels as RGB, others as their mean")


def filters_figure(*, columns: Sequence[FilterColumn]) -> Figure:
    """Filter grids (:func:`filter_grid`), one column per init: start on top, trained below.

    The figure's legend is a text key under the panels (:data:`FILTER_KEY`) saying what the rows
    are and how each filter is scaled.

    Returns:
        A matplotlib Figure with ``2 × len(columns)`` image panels.
    """
    from matplotlib.lines import Line2D

    fig, axes = new_figure(width=max(2.1 * len(columns) + 0.4, 4.0), height=4.6, ncols=len(columns), nrows=2)
    for j, c in enumerate(columns):
        for i, (w, when) in enumerate(((c.start, c.start_note), (c.trained, c.trained_note))):
            ax = axes[i][j]
            ax.imshow(filter_grid(w), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{c.title}\n{when}" if i == 0 else when, fontsize=7)
    blank = [Line2D([], [], ls="none") for _ in FILTER_KEY]
    fig.legend(blank, FILTER_KEY, loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=7,
               handlelength=0, handletextpad=0, frameon=False)
    return fig


def conv1_section(res: StudyResults, *, max_inits: int = 8) -> str:
    """Filter grids at initialisation and after training (best checkpoint), per init.

    One model (the first with a convolutional stem), its largest size, the lowest seed.
    """
    html = ""
    for model in res.models:
        size = _largest_size(res, model)
        pairs = []
        for init in res.inits[:max_inits]:
            cell = res.cell(model, init, size)
            if cell is None or not cell.runs[0].run_dir:
                continue
            d = Path(cell.runs[0].run_dir)
            s0, s1 = _load_state(d / "init.pt"), _load_state(d / "best.pt")
            if s0 is None or s1 is None:
                continue
            w0, w1 = first_conv_weight(s0), first_conv_weight(s1)
            if w0 is None or w1 is None:
                continue
            pairs.append((init, w0, w1, cell.runs[0].seed))
        if not pairs:
            continue
        fig = filters_figure(columns=[FilterColumn(init, w0, w1, "init", "trained")
                                      for init, (_, w0), (_, w1), _ in pairs])
        k0, seed = pairs[0][1][0], pairs[0][3]
        html += figure_img(fig, alt=f"{model}: first-layer filters ({k0}) at initialisation (top) "
                                    f"and after training (bottom), lowest seed ({seed}), n_train={size}")
        html += f"<p>{esc(model)}: {len(pairs)} inits shown.</p>"
        break
    return html
