"""Optional analyses in a study's report: ``transfuse report --sections forgetting,change,transferability``.

Each name computes its analysis on the finished study's store (nothing is retrained) and gives an
HTML :class:`~transfuse.report.html.Section` and a JSON block (the report JSON's ``analyses``):

- ``forgetting``: :func:`transfuse.analysis.forgetting.study_forgetting` (runs with a ``run:``
  source) and, for runs fine-tuned from ImageNet weights, the ImageNet head re-attached and scored
  on scikit-image's labelled photos (:mod:`transfuse.analysis.forgetting_imagenet`);
- ``change``: :func:`transfuse.analysis.change.study_change` (why do large models change less);
- ``transferability``: :func:`transfuse.transferability.rank.check_against` (how well LogME, LEEP,
  NCE, H-score and the probe ranked the study's arms before training).

An analysis that does not apply to the study (e.g. forgetting without a source head) gives a
section that says why, and ``{"error": ...}`` in the JSON, never a failed report. They are
computed only when asked for: each runs forward passes over the study's runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, TransfuseError
from .html import Section, esc, table

__all__ = ["ANALYSIS_SECTIONS", "parse_sections", "analysis_sections"]

ANALYSIS_SECTIONS = ("forgetting", "change", "transferability")


def parse_sections(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"forgetting,change"`` → ``("forgetting", "change")``, in the given order, no repeats.

    Raises:
        ConfigError: an unknown name.
    """
    if not text:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [s.strip() for s in items if s.strip()]
    bad = [n for n in names if n not in ANALYSIS_SECTIONS]
    if bad:
        raise ConfigError(f"--sections {','.join(bad)!r}: choose from {', '.join(ANALYSIS_SECTIONS)}")
    return tuple(dict.fromkeys(names))


def _f(x: float | None, nd: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def _ci(s: dict[str, Any], nd: int = 3) -> str:
    if s.get("mean") is None:
        return "–"
    if s.get("ci_low") is None:
        return f"{s['mean']:.{nd}f}"
    return f"{s['mean']:.{nd}f} [{s['ci_low']:.{nd}f}, {s['ci_high']:.{nd}f}]"


def _iv(m: float | None, lo: float | None, hi: float | None) -> str:
    if m is None:
        return "–"
    return f"{m:+.3f}" + (f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None else "")


# ---- change ---------------------------------------------------------------------------------------

def _change(workspace: Path, study: str, device: str | None) -> tuple[str, dict[str, Any]]:
    from ..analysis.change import DEFINITIONS, study_change

    data = study_change(workspace=workspace, study=study, device=device).to_dict()
    html = (f"<p>{esc(data['tracks']['sentence'])}</p>"
            "<p class=\"method\">Per stage, mean [95 % t-interval] over seeds. "
            + " ".join(f"<b>{esc(k)}</b>: {esc(v)}." for k, v in DEFINITIONS.items()) + "</p>")
    rows = [[c["model"], c["size"], c["arm"], s["stage"], s["width"], _ci(s["cka"]),
             _ci(s["relative_change"]), _ci(s["update_rms"], 4), _ci(s["effective_lr"], 4)]
            for c in data["cells"] for s in c["stages"]]
    html += table(["model", "n_train", "arm", "stage", "width", "CKA(init, final)",
                   "relative weight change", "update RMS", "effective lr"], rows,
                  caption="How far each stage moved from its initialisation")
    comps = [[q["arm"], q["size"], q["stage"], f"{q['smaller']} → {q['larger']}", q["verdict"],
              _iv(q["mean"], q["ci_low"], q["ci_high"]), q["n"]] for q in data["comparisons"]]
    if comps:
        html += table(["arm", "n_train", "stage", "smaller → larger", "verdict",
                       "CKA difference [interval]", "seeds"], comps,
                      caption=f"Size effect: CKA(init, final) of the larger minus the smaller model, "
                              f"paired by seed (Holm; margin ±{data['options']['margin']:g}; better = "
                              "the larger model changed less)")
    return html, data


# ---- forgetting -----------------------------------------------------------------------------------

def _curve_rows(curves: Sequence[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for c in curves:
        pts = "; ".join(f"{s} {_f(m)}" + (f" [{_f(lo)}, {_f(hi)}]" if lo is not None else "")
                        for s, m, lo, hi in zip(c["stages"], c["mean"], c["ci_low"], c["ci_high"]))
        v = c.get("verdict") or {}
        verdict = (f"vs {v['versus']}: {v['verdict']} {_iv(v['mean'], v['ci_low'], v['ci_high'])}"
                   if v else "–")
        rows.append([c["model"], c["size"], c["arm"], len(c["seeds"]), pts,
                     "yes" if c["monotone"] else "no", verdict])
    return rows


def _forgetting(workspace: Path, study: str, device: str | None) -> tuple[str, dict[str, Any]]:
    from ..analysis.forgetting import study_forgetting
    from ..store import Store

    store = Store(workspace)
    html, data = "", {}
    runs, curves = study_forgetting(store, study, device=device)
    heads = ["model", "n_train", "arm", "seeds", "source score after keeping stem..stage k "
             "[95 % CI]", "monotone within intervals", "vs full fine-tuning"]
    if runs:
        data["source_task"] = {"curves": [c.to_dict() for c in curves],
                               "runs": [r.__dict__ for r in runs]}
        html += table(heads, _curve_rows(data["source_task"]["curves"]),
                      caption="Source-task macro AUC (the source run's own test split) with the "
                              "source's head on the fine-tuned stem..stage k")
    from ..analysis.forgetting_imagenet import study_imagenet_forgetting

    inet = study_imagenet_forgetting(store, study, device=device)
    if inet is not None:
        data["imagenet"] = inet.to_dict()
        html += table(heads, _curve_rows(data["imagenet"]["curves"]),
                      caption=inet.caption())
    if not data:
        raise TransfuseError("no run of this study was fine-tuned from a source with a task head "
                             "(a run: source or ImageNet weights with their classifier)")
    return html, data


# ---- transferability ------------------------------------------------------------------------------

def _transferability(workspace: Path, study: str, device: str | None) -> tuple[str, dict[str, Any]]:
    from ..transferability.rank import check_against

    agree, skipped = check_against(workspace, study=study, device=device)
    data = {"agreements": [g.to_dict() for g in agree], "skipped": skipped}
    rows = [[g.model, g.size, g.estimator, _f(g.tau, 2),
             f"[{_f(g.ci_low, 2)}, {_f(g.ci_high, 2)}]", len(g.arms), g.n_seeds] for g in agree]
    html = table(["model", "n_train", "estimator", "Kendall τ", "95 % bootstrap interval", "arms",
                  "seeds"], rows, caption="Each estimator's ranking of the arms (computed before "
                                          "training, on the training split) vs their mean test score")
    if skipped:
        html += "<ul>" + "".join(f"<li>not scored: {esc(k)}: {esc(v)}</li>"
                                 for k, v in skipped.items()) + "</ul>"
    return html, data


_TITLES = {"forgetting": "Forgetting of the source task", "change": "Why do large models change less?",
           "transferability": "Transferability estimators vs real outcomes"}
_FNS: dict[str, Callable[[Path, str, str | None], tuple[str, dict[str, Any]]]] = {
    "forgetting": _forgetting, "change": _change, "transferability": _transferability}


def analysis_sections(*, workspace: str | Path, study: str, names: Sequence[str],
                      device: str | None = None) -> tuple[list[Section], dict[str, Any]]:
    """The requested analyses as report sections and as the JSON's ``analyses`` block.

    Args:
        names: a subset of :data:`ANALYSIS_SECTIONS` (see :func:`parse_sections`).

    Returns:
        ``(sections, {name: data or {"error": why}})`` in the order asked.
    """
    sections, data = [], {}
    for name in parse_sections(list(names)):
        try:
            body, data[name] = _FNS[name](Path(workspace), study, device)
        except TransfuseError as e:
            data[name] = {"error": str(e)}
            body = f'<p class="warn">Not available for this study: {esc(e)}</p>'
        sections.append(Section(_TITLES[name], body, f"analysis-{name}"))
    return sections, data
