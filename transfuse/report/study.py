"""The study report: verdicts, tables and figures computed from the run store, as one HTML file.

``build_report(workspace=..., study=..., out=...)`` reads the finished runs of a study
(:func:`transfuse.study.results.load_results`), writes the core sections (verdicts, final scores
with confidence intervals, comparisons with ``random``, learning curves, steps to threshold,
score vs training-set size, first-layer filters) and then every registered extra section
(representation analysis, 3D, self-training) that has results for the study.
"""

from __future__ import annotations

import importlib
import math
import time
from pathlib import Path

import numpy as np

from ..errors import TransfuseError
from ..store import Store
from ..study.results import BASELINE, Comparison, StudyResults, load_results
from ..study.stats import Summary
from .html import SECTIONS, Section, esc, figure_img, new_figure, table
from .plots import conv1_section, curves_figure, size_figure, steps_figure

__all__ = ["build_report", "verdicts", "recommendations", "EXTRA_SECTION_MODULES"]

# Modules of later stages that register report sections; missing ones are simply not there yet.
EXTRA_SECTION_MODULES = ("transfuse.analysis.report", "transfuse.report.segmentation",
                         "transfuse.selftrain.report", "transfuse.pretrain.report")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table.data{border-collapse:collapse;margin:.8em 0;font-size:.92em}
table.data td,table.data th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
table.data th{background:#f3f3f3}caption{text-align:left;font-weight:600;padding:.3em 0}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}ul.verdicts li{margin:.35em 0}.method{font-size:.9em;color:#444}
nav a{margin-right:1em}
"""


def _fmt(x: float | None, nd: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def _ci(s: Summary | None, nd: int = 3) -> str:
    if s is None:
        return "–"
    if s.ci_low is None:
        return f"{s.mean:.{nd}f} (n=1)"
    return f"{s.mean:.{nd}f} ± {s.sd:.{nd}f} [{s.ci_low:.{nd}f}, {s.ci_high:.{nd}f}]"


def _p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _speed_sentence(c: Comparison, res: StudyResults) -> str | None:
    """The highest threshold both reached in every paired seed, as a speed-up sentence."""
    name = res.metric.upper() if res.metric == "auc" else "Dice"
    base = res.cell(c.model, BASELINE, c.size)
    cell = res.cell(c.model, c.init, c.size)
    for t in sorted(c.speedup, reverse=True):
        s = c.speedup[t]
        if s is None or s.n < len(c.seeds):
            continue
        ratio = math.exp(s.mean)
        lo, hi = (math.exp(s.ci_low), math.exp(s.ci_high)) if s.ci_low is not None else (None, None)
        if ratio < 1 and lo is not None:
            lo, hi = 1 / hi, 1 / lo  # "× more steps": the interval of the inverse ratio
        ci = f", 95% CI {lo:.2f}×–{hi:.2f}×" if lo is not None else " (one seed, no CI)"
        mean_i = cell.steps_abs[t].mean if cell and cell.steps_abs[t] else float("nan")
        mean_r = base.steps_abs[t].mean if base and base.steps_abs[t] else float("nan")
        if abs(ratio - 1) < 0.005:
            how = "in as many steps as random"
        elif ratio >= 1:
            how = f"in {ratio:.2f}× fewer steps than random"
        else:
            how = f"in {1 / ratio:.2f}× more steps than random"
        return (f"{c.init} reached {name} {t:g} {how} (geometric mean over {s.n} seeds{ci}; "
                f"mean {mean_i:.0f} vs {mean_r:.0f} steps).")
    reached = [t for t in sorted(c.speedup) if cell and cell.reached_abs.get(t)]
    if not reached:
        return f"{c.init} reached none of the {name} thresholds ({', '.join(f'{t:g}' for t in res.thresholds)})."
    return None


def verdicts(res: StudyResults, *, alpha: float = 0.05) -> list[str]:
    """Plain-language sentences computed from the numbers, one group per comparison."""
    out = []
    name = "AUC" if res.metric == "auc" else "Dice"
    for c in res.comparisons:
        where = f"{c.model}, n_train={c.size}"
        f = c.final
        if f is None:
            continue
        if f.p is None:
            sig = "one seed, no test" if f.n < 2 else "identical on every seed"
        else:
            sig = "significant" if f.p < alpha else "not significant"
        ci = f" (95% CI {f.ci_low:+.3f} to {f.ci_high:+.3f})" if f.ci_low is not None else ""
        verb = "beat" if f.mean_diff > 0 else "trailed"
        text = (f"[{where}] {c.init} {verb} random by {abs(f.mean_diff):.3f} {name} on the test set"
                f"{ci}; paired t-test over {f.n} seeds p = {_p(f.p)}: {sig} at {alpha:g}.")
        dl = [d for d in c.delong.values() if d is not None]
        if dl:
            n_sig = sum(d.p < alpha for d in dl)
            text += f" DeLong's test on the shared test set: p < {alpha:g} in {n_sig} of {len(dl)} seeds."
        speed = _speed_sentence(c, res)
        out.append(text + (" " + speed if speed else ""))
    return out


def recommendations(res: StudyResults, *, alpha: float = 0.05) -> list[str]:
    """One sentence per (model, size): which init to use, judged on the numbers only."""
    name = "AUC" if res.metric == "auc" else "Dice"
    out = []
    for model in res.models:
        for size in res.sizes:
            cells = [c for c in res.cells if c.model == model and c.size == size and c.final]
            if not cells:
                continue
            best = max(cells, key=lambda c: c.final.mean)
            comps = {c.init: c for c in res.comparisons if c.model == model and c.size == size}
            better = [i for i, c in comps.items() if c.final and c.final.p is not None
                      and c.final.p < alpha and c.final.mean_diff > 0]
            where = f"{model}, n_train={size}"
            if better:
                top = max(better, key=lambda i: comps[i].final.mean_diff)
                out.append(f"[{where}] Use {top}: it beat random by {comps[top].final.mean_diff:.3f} "
                           f"test {name} (paired t-test p = {_p(comps[top].final.p)}).")
            elif comps:
                fast = [i for i, c in comps.items() if c.area and c.area.p is not None
                        and c.area.p < alpha and c.area.mean_diff > 0]
                speed = (f" {', '.join(fast)} converged significantly faster (area under the "
                         f"validation curve), so it saves training time." if fast else "")
                out.append(f"[{where}] No init beat random significantly on the final test {name} "
                           f"(highest mean: {best.init}, {best.final.mean:.3f}); random is as good "
                           f"for the final score at this data size.{speed}")
    return out


def _summary_section(res: StudyResults, info: dict) -> Section:
    datasets = sorted({r.dataset for r in res.rows})
    counts = f"{len(res.rows)} finished runs"
    if res.unfinished:
        counts += " (" + ", ".join(f"{n} {k}" for k, n in sorted(res.unfinished.items())) + " not finished)"
    items = "".join(f"<li>{esc(v)}</li>" for v in verdicts(res)) or "<li>No init was compared with random yet (the study needs random-init runs of the same model and size).</li>"
    body = (f"<p>Study <b>{esc(res.study)}</b> on {esc(', '.join(datasets))}: {esc(counts)}; "
            f"models {esc(', '.join(res.models))}; inits {esc(', '.join(res.inits))}; "
            f"training-set sizes {esc(', '.join(res.sizes))}.</p>")
    if info.get("description"):
        body += f"<p>{esc(info['description'])}</p>"
    recs = "".join(f"<li>{esc(v)}</li>" for v in recommendations(res))
    if recs:
        body += f'<h3>How to initialise</h3><ul class="verdicts">{recs}</ul>'
    body += f'<h3>Verdicts</h3><ul class="verdicts">{items}</ul>'
    return Section("Summary", body, "summary")


def _tables_section(res: StudyResults) -> Section:
    name = "AUC" if res.metric == "auc" else "Dice"
    body = ""
    for size in res.sizes:
        rows = []
        for model in res.models:
            row = [model]
            for init in res.inits:
                c = res.cell(model, init, size)
                row.append(_ci(c.final) if c else "–")
            rows.append(row)
        body += table(["model \\ init", *res.inits], rows,
                      caption=f"Test {name}, n_train={size}: mean ± sd over seeds [95% CI]")
    comp_rows = []
    for c in res.comparisons:
        dl = "; ".join(f"seed {s}: {_fmt(d.diff, 3)} (p {_p(d.p)})" for s, d in c.delong.items() if d)
        sp = []
        for t, s in c.speedup.items():
            if s is not None:
                sp.append(f"{t:g}: {math.exp(s.mean):.2f}×")
        comp_rows.append([c.model, c.size, c.init, len(c.seeds),
                          "–" if c.final is None else f"{c.final.mean_diff:+.3f}",
                          "–" if c.final is None or c.final.ci_low is None else
                          f"[{c.final.ci_low:+.3f}, {c.final.ci_high:+.3f}]",
                          _p(c.final.p if c.final else None), dl or "–",
                          "–" if c.area is None else f"{c.area.mean_diff:+.3f} (p {_p(c.area.p)})",
                          ", ".join(sp) or "–"])
    if not comp_rows:
        body += ("<p>No comparison with random: the study has no random-init runs of the same "
                 "model and size to pair with.</p>")
        return Section("Final scores and comparisons", body, "tables")
    body += table(["model", "n_train", "init", "seeds", f"Δ test {name}", "95% CI", "paired t p",
                   "DeLong Δ (p) per seed", "Δ area under val curve (p)", "speed-up vs random"],
                  comp_rows, caption="Each init vs random on the same model, size and seed")
    return Section("Final scores and comparisons", body, "tables")


def _methods_section(res: StudyResults) -> Section:
    name = "AUC" if res.metric == "auc" else "Dice"
    body = f"""<div class="method"><p>Final score: test {name} of the checkpoint with the best
validation {name}. Cells (model × init × training-set size) are summarised by the mean and sample
standard deviation over seeds and a 95% confidence interval from Student's t distribution with
n − 1 degrees of freedom. Each init is compared with random on the same model, size and seed:
the mean paired difference with its t-interval and a two-sided paired t-test
(scipy.stats.ttest_rel). DeLong's test (DeLong et al. 1988, fast midrank form of Sun &amp; Xu
2014; one-vs-rest macro AUC with per-example influence for several classes) compares the two
runs' predictions on the shared test set, separately for each seed. Convergence: the first
evaluated step whose validation {name} reaches each absolute threshold
({esc(', '.join(f'{t:g}' for t in res.thresholds))}) and each fraction of the run's last validation
{name} ({esc(', '.join(f'{t:g}' for t in res.relative))}); the area under the validation curve is the
trapezoidal area divided by the number of steps (the curve's time-averaged {name}). Speed-ups are
geometric means over seeds of steps(random) / steps(init), with a t-interval on the log ratio;
seeds where either run never reached the threshold are left out and counted in the table.</p></div>"""
    return Section("Methods", body, "methods")


def _relative_table(res: StudyResults) -> str:
    rows = []
    for r in sorted(res.rows, key=lambda r: (r.model, r.size, r.init, r.seed)):
        rows.append([r.model, r.size, r.init, r.seed, _fmt(r.test),
                     *[("–" if r.conv.absolute[t] is None else r.conv.absolute[t]) for t in res.thresholds],
                     *[("–" if r.conv.relative[f] is None else r.conv.relative[f]) for f in res.relative],
                     _fmt(r.conv.area)])
    name = "AUC" if res.metric == "auc" else "Dice"
    return table(["model", "n_train", "init", "seed", f"test {name}",
                  *[f"steps to {t:g}" for t in res.thresholds],
                  *[f"steps to {f:.0%} of final" for f in res.relative], "area"],
                 rows, caption="Every run: convergence metrics")


def _figures(res: StudyResults, store: Store) -> list[Section]:
    out = [Section("Learning curves", figure_img(curves_figure(res), alt=f"Validation {res.metric} vs step at each model's largest training-set size, mean over seeds (band: min to max)"), "curves"),
           Section("Steps to threshold", figure_img(steps_figure(res), alt="Steps to reach each absolute threshold, mean ± sd over the seeds that reached it")
                   + _relative_table(res), "steps")]
    if len(res.sizes) > 1:
        out.append(Section("Score vs training-set size", figure_img(size_figure(res), alt=f"Test {res.metric} vs n_train, mean with 95% CI"), "sizes"))
    conv = conv1_section(res)
    if conv:
        out.append(Section("First-layer filters", conv, "filters"))
    return out


def _extra_sections(store: Store, study: str) -> list[Section]:
    for mod in EXTRA_SECTION_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name and mod.startswith(e.name):
                continue  # that stage is not part of this installation / not built yet
            raise
    out = []
    for entry in sorted(SECTIONS, key=lambda e: e.meta.get("order", 100)):
        sec = entry.fn(store, study)
        if sec is not None:
            out.append(sec)
    return out


def render(title: str, sections: list[Section], *, footer: str = "") -> str:
    """The whole page: escaped title, a table of contents and the sections."""
    nav = "".join(f'<a href="#{esc(s.anchor or i)}">{esc(s.title)}</a>' for i, s in enumerate(sections))
    body = "".join(f'<section id="{esc(s.anchor or i)}"><h2>{esc(s.title)}</h2>{s.body}</section>'
                   for i, s in enumerate(sections))
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1><nav>{nav}</nav>{body}"
            f"<footer><p class=\"method\">{esc(footer)}</p></footer></body></html>")


def build_report(*, workspace: str | Path, study: str, out: str | Path) -> Path:
    """Write the study's HTML report to ``out`` and return its path.

    Raises:
        TransfuseError: no run store in ``workspace`` or no runs of ``study`` in it.
    """
    ws = Path(workspace)
    if not (ws / "transfuse.db").is_file():
        raise TransfuseError(f"no run store in {ws}; pass the workspace a study ran in")
    store = Store(ws)
    info = store.get_results("study", study=study).get(study, {})
    res = load_results(store, study, thresholds=tuple(info.get("auc_thresholds", (0.8, 0.9))),
                       relative=tuple(info.get("relative_thresholds", (0.9, 0.95))))
    if not res.rows:
        raise TransfuseError(f"study {study!r} has no finished runs yet in {ws}; "
                             f"run `transfuse study run FILE --workspace {ws}` first")
    sections = [_summary_section(res, info), _tables_section(res), *_figures(res, store),
                *_extra_sections(store, study), _methods_section(res)]
    from .. import __version__

    html = render(f"transfuse study report: {study}", sections,
                  footer=f"transfuse {__version__}, generated {time.strftime('%Y-%m-%d %H:%M:%S')} "
                         f"from {ws.resolve() / 'transfuse.db'}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out
