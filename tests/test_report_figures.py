"""Report figures: a legend (or colorbar, or key) on every data panel, checked by the same rule
``figure_img`` enforces; "not reached" markers inside the axes; stage names on heatmaps and tables."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch

import transfuse.report.analysis as areport
import transfuse.report.plots as plots
from transfuse.report.analysis import analysis_section
from transfuse.analysis.results import (KINDS, AnalysisMeta, FilterSnapshot, LayerGrid, RunInfo,
                                        StageChange, WeightChange, to_payload)
from transfuse.config import spec_from_dict
from transfuse.report.html import check_legends, figure_img, mark_key, new_figure
from transfuse.store import Store
from transfuse.decide.results import load_results

from .test_report import STEPS

STAGES = ["stem", *[f"block{i}" for i in range(1, 9)], "head"]  # ten stages: a wide table


# ---------------------------------------------------------------- synthetic analysis payloads

def _info(run_id: str, init: str, seed: int, model: str = "cbr_tiny") -> RunInfo:
    return RunInfo(run_id=run_id, model=model, init=init, seed=seed, size="64")


def _grid(a: RunInfo, b: RunInfo, role: str, baseline: str | None, rng, stages=STAGES) -> LayerGrid:
    n = len(stages)
    m = {k: rng.uniform(0, 1, (n, n)).round(3).tolist() for k in ("linear_cka", "svcca", "pwcca")}
    return LayerGrid(run_a=a, run_b=b, role=role, baseline=baseline, stages_a=list(stages),
                     stages_b=list(stages), measures=m,
                     chance={k: rng.uniform(0, 0.2, n).round(3).tolist() for k in m},
                     n_points=64, dims_a={s: 4 for s in stages}, dims_b={s: 4 for s in stages})


def synthetic_analysis(seed: int = 0, stages=STAGES):
    """Meta, grids (baseline + comparison), changes, weights and filter snapshots of 3 runs."""
    rng = np.random.default_rng(seed)
    r0, r1, g0 = _info("r0", "random", 0), _info("r1", "random", 1), _info("g0", "gabor", 0)
    base = _grid(r0, r1, "baseline", None, rng, stages)
    comp = _grid(r0, g0, "comparison", base.key, rng, stages)
    n = len(stages)
    changes = [StageChange(run=r, stages=list(stages), n_points=64, checkpoint="best",
                           measures={k: rng.uniform(0.3, 1, n).round(3).tolist()
                                     for k in ("linear_cka", "svcca", "pwcca")}) for r in (r0, r1, g0)]
    weights = [WeightChange(run=r, stages=list(stages), relative=rng.uniform(0.01, 1, n).round(4).tolist(),
                            init_norm=[1.0] * n, tensors=[1] * n, checkpoint="best") for r in (r0, r1, g0)]
    filt = lambda: rng.normal(size=(8, 1, 5, 5)).round(5).tolist()  # noqa: E731
    snaps = [FilterSnapshot(run=r, key="stem.conv.weight", shape=[8, 1, 5, 5], init=filt(), trained=filt(),
                            pretrained=False, relative=0.3) for r in (r0, r1, g0)]
    meta = AnalysisMeta(study="syn", options={"measures": ["linear_cka", "svcca", "pwcca"], "images": 64,
                                              "split": "val", "policy": "pool", "checkpoint": "best",
                                              "keep": 0.99},
                        pairs=[["r0", "r1", "baseline", None], ["r0", "g0", "comparison", base.key]],
                        runs=["r0", "r1", "g0"], seconds=1.0)
    return meta, [base, comp], changes, weights, snaps


def store_analysis(store: Store, study: str, *, stages=STAGES) -> None:
    """Put the synthetic analysis results of ``study`` in the store, as ``transfuse analyze`` would."""
    meta, grids, changes, weights, snaps = synthetic_analysis(stages=stages)
    meta = AnalysisMeta(**{**to_payload(meta), "study": study})
    for kind, items in (("change", changes), ("weights", weights), ("filters", snaps)):
        for it in items:
            store.put_result(KINDS[kind], it.run.run_id, to_payload(it), study=study, run_id=it.run.run_id)
    for g in grids:
        store.put_result(KINDS["grid"], g.key, to_payload(g), study=study)
    store.put_result(KINDS["meta"], study, to_payload(meta), study=study)


# ---------------------------------------------------------------- a study with two models, two sizes

def _add(store: Store, *, model: str, init: str, seed: int, n_train: int | None, curve: list[float]) -> None:
    spec = spec_from_dict({"data": {"name": "d", "n_train": n_train}, "model": {"name": model},
                           "init": {"name": init}, "seed": seed, "study": "syn"})
    rid = store.start_run(spec)
    store.set_info(rid, data_info={"task": "multiclass", "name": "d"},
                   model_info={"name": model, "spatial_dims": 2})
    for s, v in zip(STEPS, curve):
        store.log_metrics(rid, s, "val", {"auc": v, "loss": 1 - v})
    store.finish_run(rid, step=STEPS[-1], test_metrics={"auc": curve[-1] - 0.05 + 0.01 * seed}, summary={})


@pytest.fixture(scope="module")
def res(tmp_path_factory):
    """cbr_tiny and cbr_small × random/meanvar × 2 seeds × two sizes; nobody reaches 0.95."""
    store = Store(tmp_path_factory.mktemp("figs"))
    curves = {"random": [0.5, 0.7, 0.8, 0.85, 0.9], "meanvar": [0.5, 0.85, 0.9, 0.92, 0.93]}
    for model, n_train, seed, init in itertools.product(("cbr_tiny", "cbr_small"), (32, None), (0, 1), curves):
        _add(store, model=model, init=init, seed=seed, n_train=n_train, curve=curves[init])
    out = load_results(store, "syn", thresholds=(0.8, 0.9, 0.95))
    assert all(c.steps_abs[0.95] is None for c in out.cells) and len(out.sizes) == 2
    return out


def _builders(res) -> dict:
    _, grids, _, weights, snaps = synthetic_analysis()
    measures = ["linear_cka", "svcca", "pwcca"]
    cols = [plots.FilterColumn("random", torch.randn(8, 1, 5, 5), torch.randn(8, 1, 5, 5))]
    return {
        "curves_figure": lambda: plots.curves_figure(res),
        "steps_figure": lambda: plots.steps_figure(res),
        "size_figure": lambda: plots.size_figure(res),
        "filters_figure": lambda: plots.filters_figure(columns=cols),
        "grid_figure": lambda: areport.grid_figure(grid=grids[1], baseline=grids[0], measures=measures),
        "diagonal_figure": lambda: areport.diagonal_figure(grids=grids, measures=measures),
        "stage_lines_figure": lambda: areport.stage_lines_figure(items=weights, values=lambda w: w.relative,
                                                                 ylabel="relative change", logy=True),
        "filter_snapshots_figure": lambda: areport.filter_snapshots_figure(snaps=snaps),
    }


def _data_axes(fig):
    bars = {m.colorbar.ax for ax in fig.axes for m in (*ax.images, *ax.collections)
            if getattr(m, "colorbar", None) is not None}
    return [ax for ax in fig.axes if ax not in bars
            and (ax.lines or ax.patches or ax.collections or ax.images)]


def test_every_figure_builder_is_covered(res):
    names = {n for mod in (plots, areport) for n in mod.__all__ if n.endswith("_figure")}
    assert names == set(_builders(res)), "add the new figure builder to _builders()"


@pytest.mark.parametrize("name", ["curves_figure", "steps_figure", "size_figure", "filters_figure",
                                  "grid_figure", "diagonal_figure", "stage_lines_figure",
                                  "filter_snapshots_figure"])
def test_every_data_panel_has_a_legend_or_colorbar(res, name):
    fig = _builders(res)[name]()
    labels = check_legends(fig)  # raises on a data panel without legend/colorbar/key
    assert labels and all(lb.strip() for lb in labels)
    data = _data_axes(fig)
    assert data
    if fig.legends:  # image grids: one key for the whole figure
        return
    for ax in data:  # otherwise each panel its own: a legend, or a colorbar for its images
        has_bar = any(getattr(m, "colorbar", None) is not None for m in (*ax.images, *ax.collections))
        assert ax.get_legend() is not None or has_bar, (name, ax.get_title())
    html = figure_img(fig, alt="x")
    assert re.search(r'<figure data-legend="[^"]+"><img alt="x" src="data:image/png;base64,', html)


def test_multi_panel_figures_have_one_legend_per_panel(res):
    for build in (plots.curves_figure, plots.steps_figure, plots.size_figure):
        fig = build(res)
        assert len(fig.axes) == 2 and all(ax.get_legend() is not None for ax in fig.axes), build.__name__
        for ax in fig.axes:
            texts = [t.get_text() for t in ax.get_legend().get_texts()]
            assert any(t.startswith("random") for t in texts) and any(t.startswith("meanvar") for t in texts)


def test_steps_figure_marks_not_reached_inside_the_axes(res):
    fig = plots.steps_figure(res)
    for ax in fig.axes:
        marks = [ln for ln in ax.lines if ln.get_gid() == plots.NOT_REACHED]
        assert len(marks) == 1
        xs, ys = marks[0].get_data()
        assert len(xs) == 2  # 0.95 reached by neither init (largest size)
        (y0, y1), (x0, x1) = ax.get_ylim(), ax.get_xlim()
        assert all(y0 < y < y1 for y in ys) and all(x0 < x < x1 for x in xs)
        assert all(y > 0.05 * (y1 - y0) for y in ys)  # not on the axis line
        assert "✗ not reached" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_heatmaps_name_stages_and_label_their_colorbars():
    _, grids, *_ = synthetic_analysis()
    fig = areport.grid_figure(grid=grids[1], baseline=grids[0], measures=["linear_cka", "svcca"])
    fig.tight_layout()  # as figure_img does before saving
    fig.canvas.draw()
    heat = [ax for ax in fig.axes if ax.images]
    assert len(heat) == 4
    for ax in heat:
        assert [t.get_text() for t in ax.get_xticklabels()] == STAGES
        assert [t.get_text() for t in ax.get_yticklabels()] == STAGES
        assert "run B" in ax.get_xlabel()
        cb = ax.images[0].colorbar
        assert cb is not None and "0" in cb.ax.get_ylabel() and "1" in cb.ax.get_ylabel()
        for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):  # readable: no two overlap
            boxes = [t.get_window_extent() for t in ticks]
            assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    assert "run A" in heat[0].get_ylabel()
    assert {ax.images[0].colorbar.ax.get_ylabel().split(" (")[0] for ax in heat} == {"linear CKA", "SVCCA"}


def test_analysis_tables_and_figures_use_stage_names(tmp_path):
    store = Store(tmp_path)
    store_analysis(store, "syn")
    sec = analysis_section(store, "syn")
    assert sec is not None
    assert not re.search(r"stage \d", sec.body)
    heads = re.findall(r"<thead><tr>(.*?)</tr></thead>", sec.body)
    assert len(heads) == 3 and all("<th>stem</th><th>block1</th>" in h and "<th>head</th>" in h for h in heads)
    assert sec.body.count('<div class="wide"><table') == 3
    assert all(re.fullmatch(r'[^"]+', lg) for lg in re.findall(r'<figure data-legend="([^"]*)"', sec.body))
    assert len(re.findall(r"<figure ", sec.body)) == len(re.findall(r'<figure data-legend="[^"]+"', sec.body))


# ---------------------------------------------------------------- the checker itself

def test_checker_rejects_a_panel_without_legend():
    fig, axes = new_figure(ncols=2)
    axes[0][0].plot([0, 1], [0, 1], label="a")
    axes[0][0].legend()
    axes[0][1].plot([0, 1], [1, 0], label="b")  # labelled, but no legend drawn
    axes[0][1].set_title("right")
    with pytest.raises(ValueError, match=r"figure panel 'right' draws data but has no legend"):
        figure_img(fig, alt="x")


def test_checker_rejects_an_unlabelled_colorbar_and_bare_images():
    fig, axes = new_figure()
    im = axes[0][0].imshow(np.eye(3))
    with pytest.raises(ValueError, match="no legend, colorbar or key"):
        check_legends(fig)
    fig.colorbar(im, ax=axes[0][0])
    with pytest.raises(ValueError, match="colorbar without a label"):
        check_legends(fig)


def test_checker_accepts_legends_colorbars_keys_and_escapes_labels():
    fig, axes = new_figure(ncols=3)
    axes[0][0].bar([0], [1], label="<b>bar</b>")
    axes[0][0].legend()
    im = axes[0][1].imshow(np.eye(3), vmin=0, vmax=1)
    axes[0][2].imshow(np.eye(3), vmin=0, vmax=1)  # same colour mapping: the colorbar reads for it
    fig.colorbar(im, ax=axes[0][1], label="CKA (0–1)")
    html = figure_img(fig, alt="a & b")
    assert 'data-legend="CKA (0–1) | &lt;b&gt;bar&lt;/b&gt;"' in html and 'alt="a &amp; b"' in html

    fig, axes = new_figure(ncols=2)
    axes[0][0].imshow(np.eye(3))
    axes[0][1].text(0, 0.5, "top: init, bottom: trained")
    axes[0][1].set_axis_off()
    mark_key(axes[0][1])
    assert check_legends(fig) == ["top: init, bottom: trained"]

    fig, axes = new_figure(ncols=2)  # a figure legend covers the panels whose labels it names
    axes[0][0].plot([0, 1], label="x")
    axes[0][1].plot([0, 1], label="y")
    fig.legend(*axes[0][0].get_legend_handles_labels())
    with pytest.raises(ValueError, match="axes 1|no legend"):
        check_legends(fig)
    axes[0][1].legend()
    assert check_legends(fig) == ["x", "y"]


def test_axes_without_data_need_no_legend():
    fig, axes = new_figure(ncols=2)
    axes[0][0].plot([0, 1], label="x")
    axes[0][0].legend()
    axes[0][1].set_axis_off()
    axes[0][1].text(0.5, 0.5, "no data yet")
    assert check_legends(fig) == ["x"]


# ---------------------------------------------------------------- segmentation and self-training

def _legends(html: str) -> list[str]:
    figs = re.findall(r"<figure[^>]*>", html)
    legends = re.findall(r'<figure data-legend="([^"]+)">', html)
    assert figs and len(legends) == len(figs), figs
    return legends


def test_segmentation_dice_figure_has_a_legend(tmp_path):
    from transfuse.report.segmentation import dice_section

    store = Store(tmp_path)
    for init, seed in itertools.product(("random", "meanvar"), (0, 1)):
        spec = spec_from_dict({"data": {"name": "seg"}, "model": {"name": "seg_unet_tiny"},
                               "init": {"name": init}, "seed": seed, "study": "seg"})
        rid = store.start_run(spec)
        store.set_info(rid, data_info={"task": "segmentation", "name": "seg"},
                       model_info={"name": "seg_unet_tiny", "spatial_dims": 3})
        for s, v in zip(STEPS, [0.1, 0.3, 0.5, 0.6, 0.7]):
            store.log_metrics(rid, s, "val", {"dice": v})
        store.finish_run(rid, step=STEPS[-1], summary={},
                         test_metrics={"dice": 0.6, "dice/csf": 0.5 + 0.01 * seed, "dice/wm": 0.7})
    sec = dice_section(store, "seg")
    assert sec is not None
    (legend,) = _legends(sec.body)
    assert "random" in legend and "meanvar" in legend


def test_selftrain_figure_has_a_legend():
    from transfuse.report.selftrain import ChainRow, _figure

    rows = [ChainRow("teacher (generation 0)", 0, {0: 0.7, 1: 0.72}, {}, {}),
            ChainRow("student generation 1", 1, {0: 0.74, 1: 0.73}, {0: 0.9, 1: 0.8}, {0: 10, 1: 12}),
            ChainRow("supervised, 100 % labelled", None, {0: 0.8, 1: 0.81}, {}, {})]
    (legend,) = _legends(_figure(rows))
    assert legend.split(" | ") == ["one seed", "chain (mean over seeds)", "supervised, 100 % labelled"]


def test_a_standalone_colorbar_explains_images_with_its_colour_mapping():
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    fig, axes = new_figure(ncols=2)
    axes[0][0].imshow(np.eye(3), vmin=0, vmax=1, cmap="viridis")
    axes[0][1].imshow(np.eye(3), vmin=0, vmax=2, cmap="viridis")  # other limits: not explained
    fig.colorbar(ScalarMappable(Normalize(0, 1), "viridis"), ax=axes[0][0], label="Dice (0–1)")
    with pytest.raises(ValueError, match="axes 1"):
        check_legends(fig)
    fig.colorbar(axes[0][1].images[0], ax=axes[0][1], label="ratio (0–2)")
    assert check_legends(fig) == ["Dice (0–1)", "ratio (0–2)"]
