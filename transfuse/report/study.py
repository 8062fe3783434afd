"""The study report: decisions first, then the numbers and figures behind them, as one HTML file.

``build_report(workspace=..., study=..., out=...)`` reads the finished runs of a study
(:func:`transfuse.decide.decisions.load_decisions`) and writes: a decision card per model ×
training-set size, picture first (:mod:`transfuse.report.card`: the forest plot of every arm vs the
reference, one sentence per arm — the decided answer, or the plausible range, the margin the seeds
decide and the seeds a decision needs — and better cells elsewhere in the workspace), a summary
that opens with one line per model × training-set size (what to use, with its verdict or what is
missing), the verdict of every question with its interval, adjusted p-value and (short, full on
expand) reason, a forest plot and test scores per model,
the cell table, learning curves, steps to threshold, score vs training-set size, first-layer
filters, every registered extra section (representation analysis, 3D, self-training) and Methods.
``format="json"`` writes the same decisions as data (:mod:`transfuse.report.export`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

from ..atomic import write_text
from ..errors import TransfuseError
from ..store import Store
from ..decide.decisions import Decisions, Verdict, load_decisions
from ..decide.results import StudyResults
from ..decide.selection import study_progress
from ..decide.stats import Summary
from .analyses import analysis_sections
from .export import results_dict
from ..decide.headline import workspace_cells
from .card import card_section
from .sections import extra_sections
from .html import Html, Section, esc, figure_img, table
from .methods import methods_section
from .plots import conv1_section, curves_figure, size_figure, steps_figure
from .verdict_plots import forest_figure, scores_figure

__all__ = ["build_report", "verdict_rows", "short_reason", "VERDICT_HEADERS", "FORMATS"]

FORMATS = ("html", "json")
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
table.data{border-collapse:collapse;margin:.8em 0;font-size:.92em}
table.data td,table.data th{border:1px solid #ccc;padding:.25em .45em;text-align:left}
table.data th{background:#f3f3f3}caption{text-align:left;font-weight:600;padding:.3em 0}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
.wide{max-width:100%;overflow-x:auto}
table.data td,table.data th{overflow-wrap:break-word}body{overflow-wrap:break-word}
figcaption{font-size:.85em;color:#555}ul.verdicts li{margin:.35em 0}.method{font-size:.9em;color:#444}
nav a{margin-right:1em}
.warn{background:#fff4e5;border-left:4px solid #e69500;padding:.4em .8em}
.pilot{background:#eef2ff;border-left:4px solid #4575b4;padding:.4em .8em}
.v-better_beyond_margin{color:#1a7a3e;font-weight:600}.v-worse_beyond_margin{color:#b2182b;font-weight:600}
.v-better_within_margin{color:#4d9a5f}.v-worse_within_margin{color:#c0555f}
.v-equivalent{color:#2c5aa0;font-weight:600}.v-undecided{color:#666}
.card{border:1px solid #ddd;border-radius:6px;padding:.2em 1em .6em;margin:1em 0}
.card h3{margin:.5em 0 .2em}ul.context{color:#444;font-size:.92em}

table.verdicts summary{cursor:pointer}
table.verdicts details[open] summary{color:#777}
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
    if p is None or not math.isfinite(p):
        return "–"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}"


def _signed(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:+.4f}"


VERDICT_HEADERS = ("model", "n_train", "arm", "question", "seeds", "Δ mean", "interval", "level",
                   "adjusted p", "verdict", "reason", "seeds needed", "DeLong (per seed)")



def _delong_cell(v: Verdict, res: StudyResults, alpha: float) -> str:
    if v.question.endpoint != "final":
        return ""
    q = v.question
    comp = res.comparison(q.model, q.arm, q.size)
    dl = [d for d in (comp.delong.values() if comp else []) if d is not None]
    if not dl:
        return "–"
    return f"p < {alpha:g} in {sum(d.p < alpha for d in dl)} of {len(dl)}"


def verdict_rows(res: StudyResults, dec: Decisions) -> list[list[str]]:
    """The verdict table's rows (:data:`VERDICT_HEADERS`), one per question, as the HTML shows them."""
    rows = []
    for v in dec.verdicts:
        q, d = v.question, v.decision
        if d is not None and q.endpoint.startswith("speed"):
            mean = f"{math.exp(d.mean):.3f}×"
            ci = f"[{math.exp(d.ci_low):.3f}×, {math.exp(d.ci_high):.3f}×]"
        elif d is not None:
            mean, ci = _signed(d.mean), f"[{_signed(d.ci_low)}, {_signed(d.ci_high)}]"
        else:
            vals = [x for x in q.diffs if x is not None and math.isfinite(x)]
            m = sum(vals) / len(vals) if vals else None
            mean = ("–" if m is None else f"{math.exp(m):.3f}×") if q.endpoint.startswith("speed") \
                else _signed(m)
            ci = "–"
        rows.append([q.model, q.size, q.arm, q.endpoint, str(v.n), mean, ci,
                     "–" if d is None else f"{100 * d.level:.2f} %",
                     _p(d.p_adjusted) if d else "–", v.label, v.reason,
                     "" if v.seeds_needed is None else str(v.seeds_needed),
                     _delong_cell(v, res, dec.evaluation.alpha)])
    return rows


def _runs_notes(res: StudyResults) -> str:
    """Warnings about runs not counted (an earlier version of the study) or lacking files."""
    from ..decide.selection import FILE_USES

    html = ""
    if res.left_out:
        items = "".join(f"<li><code>{esc(x.run_id)}</code> (seed {x.seed}): {esc(x.reason)}</li>"
                        for x in res.left_out[:20])
        more = f"<li>… and {len(res.left_out) - 20} more</li>" if len(res.left_out) > 20 else ""
        html += (f'<div class="warn"><p><b>{len(res.left_out)} finished run(s) stored under this '
                 f"study's name are left out</b>: they are not cells of this version of the study, so "
                 "no number here includes them (report an older version with "
                 f"<code>transfuse report --study-file FILE</code>).</p><ul>{items}{more}</ul></div>")
    if res.missing:
        uses: dict[str, list[str]] = {}
        for rid, files in sorted(res.missing.items()):
            for f in files:
                uses.setdefault(f, []).append(rid)
        items = "".join(f"<li><code>{esc(f)}</code> missing in {len(r)} run(s) "
                        f"({esc(', '.join(r[:8]))}{' …' if len(r) > 8 else ''}): left out of "
                        f"{esc(FILE_USES.get(f, 'no figure'))}</li>" for f, r in sorted(uses.items()))
        html += (f'<div class="warn"><p><b>{len(res.missing)} finished run(s) lack files in their '
                 "folder</b> (see <code>transfuse runs check</code>): their scores count in every "
                 f"verdict, but these figures omit them:</p><ul>{items}</ul></div>")
    return html


def _incomplete(res: StudyResults, progress: dict[str, int]) -> str:
    waiting = {k: n for k, n in progress.items() if k != "finished" and n}
    if not waiting:
        return ""
    return (f'<p class="warn"><b>Incomplete study:</b> '
            f"{esc(', '.join(f'{n} {k}' for k, n in sorted(waiting.items())))} run(s) besides "
            f"{progress.get('finished', len(res.rows))} finished — these verdicts will change; "
            "write the report again when the study has finished.</p>")


def _summary_section(res: StudyResults, dec: Decisions, info: dict, progress: dict[str, int]) -> Section:
    datasets = sorted({r.dataset for r in res.rows})
    unit = "AUC" if res.metric == "auc" else "Dice"
    body = _incomplete(res, progress)
    body += _runs_notes(res)
    if dec.pilot:
        body += f'<p class="pilot"><b>{esc(dec.pilot)}.</b></p>'
    recs = "".join(f'<li><b>[{esc(r.model)}, n_train={esc(r.size)}]</b> '
                   f'<span class="v-{esc(r.verdict)}">{esc(r.text)}</span></li>'
                   for r in dec.recommendations)
    none = ("<li>No arm was compared with the reference yet (the study needs reference-arm runs "
            "of the same model and size).</li>")
    body += f'<h3>How to initialise</h3><ul class="verdicts">{recs or none}</ul>'
    counts: dict[str, int] = {}
    for v in dec.verdicts:
        counts[v.label] = counts.get(v.label, 0) + 1
    ev = dec.evaluation
    m = ev.margins(res.metric)[0]
    body += (f"<p>{len(dec.verdicts)} questions ({esc(', '.join(f'{n} {k}' for k, n in sorted(counts.items())) or 'none')}); "
             f"{dec.family_size} with data in one family, {esc(ev.multiplicity)}-adjusted at α = {ev.alpha:g}; "
             f"reference arm <b>{esc(ev.reference)}</b>; margin ±{m:g} {unit}. "
             f"Study <b>{esc(res.study)}</b> on {esc(', '.join(datasets))}: {len(res.rows)} finished runs; "
             f"models {esc(', '.join(res.models))}; arms {esc(', '.join(res.inits))}; "
             f"training-set sizes {esc(', '.join(res.sizes))}.</p>")
    if info.get("description"):
        body += f"<p>{esc(info['description'])}</p>"
    return Section("Summary", body, "summary")


SHORT_REASON = 60  # characters of a reason the verdict table shows before "…" (full on expand)


def short_reason(reason: str, limit: int = SHORT_REASON) -> str:
    """``reason`` cut at a word boundary to at most ``limit`` characters, with "…" when cut."""
    if len(reason) <= limit:
        return reason
    cut = reason[:limit - 1]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:—–(") + "…"


def breakable(text: str) -> str:
    """``text`` escaped, with line-break opportunities (``<wbr>``) after ``:``, ``·``, ``_``, ``=``
    and ``/`` and before ``[``: a long model or arm name (``timm:efficientnet_lite0``,
    ``pretrained[imagenet:…]·linear_probe``) wraps inside its column instead of widening the table."""
    out = esc(text)
    for ch in (":", "·", "_", "=", "/"):
        out = out.replace(ch, ch + "<wbr>")
    return out.replace("[", "<wbr>[")


def _reason_cell(reason: str) -> str:
    short = short_reason(reason)
    if short == reason:
        return Html(breakable(reason))
    return Html(f"<details><summary>{breakable(short)}</summary>{breakable(reason)}</details>")


def _verdicts_section(res: StudyResults, dec: Decisions) -> Section:
    rows = verdict_rows(res, dec)
    col = VERDICT_HEADERS.index("reason")
    names = {VERDICT_HEADERS.index("model"), VERDICT_HEADERS.index("arm")}
    rows = [[Html(breakable(x)) if i in names else _reason_cell(x) if i == col else x
             for i, x in enumerate(r)] for r in rows]
    if not rows:
        return Section("Verdicts", f"<p>No comparison with the reference arm {esc(dec.evaluation.reference)}: "
                       "the study has no reference runs of the same model and size to pair with.</p>",
                       "verdicts")
    body = table(VERDICT_HEADERS, rows, cls="data verdicts",
                 caption="Every question: arm vs reference, paired by seed; Δ is arm − reference "
                         "(speed-ups: steps(reference) / steps(arm)); a long reason opens on a click")
    return Section("Verdicts", body, "verdicts")


def _forest_section(res: StudyResults, dec: Decisions) -> Section | None:
    if not dec.verdicts:
        return None
    unit = "AUC" if res.metric == "auc" else "Dice"
    html = ""
    for model in res.models:
        if not any(v.question.model == model for v in dec.verdicts):
            continue
        html += figure_img(forest_figure(res, dec, model=model),
                           alt=f"Forest plot, {model}: each arm's difference from "
                               f"{dec.evaluation.reference} with the interval its verdict was read "
                               f"from; shaded: ±margin; colour: verdict")
    for model in res.models:
        html += figure_img(scores_figure(res, model=model),
                           alt=f"{model}: test {unit} per arm, mean and 95 % t-interval over seeds")
    return Section("Forest plots and scores", html, "forest")


def _cells_section(res: StudyResults) -> Section:
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
        body += table(["model \\ arm", *res.inits], rows,
                      caption=f"Test {name}, n_train={size}: mean ± sd over seeds [95 % CI]")
    return Section("Final scores", body, "tables")


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


def _figures(res: StudyResults) -> list[Section]:
    out = [Section("Learning curves", figure_img(curves_figure(res), alt=f"Validation {res.metric} vs step at each model's largest training-set size, mean over seeds (band: min to max)"), "curves"),
           Section("Steps to threshold", figure_img(steps_figure(res), alt="Steps to reach each absolute threshold, mean ± sd over the seeds that reached it")
                   + _relative_table(res), "steps")]
    if len(res.sizes) > 1:
        out.append(Section("Score vs training-set size", figure_img(size_figure(res), alt=f"Test {res.metric} vs n_train, mean with 95% CI"), "sizes"))
    conv = conv1_section(res)
    if conv:
        out.append(Section("First-layer filters", conv, "filters"))
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


def _write(out: Path, text: str) -> Path:
    try:
        write_text(out, text)
    except OSError as e:
        raise TransfuseError(f"cannot write the report {out}: {e.strerror or e}; free space or "
                             "choose another -o") from None
    return out


def build_report(*, workspace: str | Path, study: str, out: str | Path, format: str = "html",
                 study_spec: object = None, analyses: Sequence[str] = (),
                 device: str | None = None) -> Path:
    """Write the study's report to ``out`` and return its path.

    Args:
        workspace: the run store folder the study ran in.
        study: the study's name.
        out: the file to write (replaced atomically).
        format: ``html`` (the self-contained report) or ``json`` (the decisions as data, schema
            ``transfuse.study-results/2``; see :mod:`transfuse.report.export`).
        study_spec: judge this version of the study (its cells, thresholds and evaluation)
            instead of the one its last ``study run`` recorded.
        analyses: optional analyses to compute and add as sections (``forgetting``, ``change``,
            ``transferability``; :mod:`transfuse.report.analyses`), in the JSON as ``analyses``.
        device: where those analyses run their forward passes (default CPU).

    Raises:
        TransfuseError: no run store in ``workspace``, no runs of ``study`` in it, or a bad format.
    """
    if format not in FORMATS:
        raise TransfuseError(f"--format {format!r} is not valid; choose one of {', '.join(FORMATS)}")
    ws = Path(workspace)
    if not (ws / "transfuse.db").is_file():
        raise TransfuseError(f"no run store in {ws}; pass the workspace a study ran in")
    store = Store(ws)
    current = None
    if study_spec is not None:
        from ..config import run_id
        from ..study.spec import expand

        current = {run_id(s): s.to_dict() for s in expand(study_spec)}  # type: ignore[arg-type]
    res, dec, info = load_decisions(store, study, study_spec=study_spec, current_specs=current)
    if not res.rows:
        raise TransfuseError(f"study {study!r} has no finished runs yet in {ws}; "
                             f"run `transfuse study run FILE --workspace {ws}` first")
    progress = study_progress(store=store, study=study, run_ids=None if current is None else list(current))
    data = results_dict(res, dec, others=workspace_cells(store, exclude=study, metric=res.metric))
    extra, analysis_data = analysis_sections(workspace=ws, study=study, names=analyses, device=device)
    if format == "json":
        data["runs"]["progress"] = progress
        from .ssl import ssl_costs

        costs, _ = ssl_costs(store, study)
        if costs:  # what each ssl: source of the study cost to pretrain
            data["pretraining"] = costs
        from ..decide.averaging import averaging_dicts

        if averaging := averaging_dicts(res):  # paired SD without / with weight averaging
            data["averaging"] = averaging
        if analyses:
            data["analyses"] = analysis_data
        return _write(Path(out), json.dumps(data, indent=2, allow_nan=False) + "\n")
    note = _incomplete(res, progress)
    if dec.pilot:
        note += f'<p class="pilot"><b>{esc(dec.pilot)}.</b></p>'
    sections = [card_section(data, note=note), _summary_section(res, dec, info, progress),
                _verdicts_section(res, dec)]
    forest = _forest_section(res, dec)
    sections += [forest] if forest else []
    sections += [_cells_section(res), *_figures(res), *extra_sections(store, study), *extra,
                 methods_section(res, dec)]
    from .. import __version__

    html = render(f"transfuse study report: {study}", sections,
                  footer=f"transfuse {__version__}, generated {time.strftime('%Y-%m-%d %H:%M:%S')} "
                         f"from {ws.resolve() / 'transfuse.db'}")
    return _write(Path(out), html)
