"""Render docs/FINDINGS.md's verdict tables and one-line answers from the committed study JSON.

    python docs/findings/render.py                     # rewrite the generated blocks in place
    python docs/findings/render.py --check             # exit 1 if a block or the lint disagrees
    python docs/findings/render.py --from-store DIR    # first re-export every results.json from
                                                       # the stores in DIR, then render

Each study whose evidence FINDINGS reports has a folder ``docs/findings/<study>/`` holding
``results.json`` (``transfuse report -w STORE --study <study> --format json``), the study file
and ``README.md`` with the exact commands that made the store. FINDINGS marks one block per
study::

    <!-- BEGIN generated: <study> -->
    ...                                   (written by this script; never edited by hand)
    <!-- END generated -->

The block holds the study's counts, the report's decision card when the JSON has one (issue 32:
``cards``), every decided verdict as its own sentence with a code
(``[<study> Dxxxx]``, a hash of what it compares: :func:`code`), one table row per arm with each
endpoint's verdict, difference and interval (an undecided one with the seeds it would need), and
the report's recommendations. Prose outside the blocks refers to a decided verdict by its code.

Analysis blocks (issue 31), ``<!-- BEGIN generated: <study>/<analysis> -->``, render the JSON the
analysis commands write into ``docs/findings/<study>/`` (:data:`ANALYSES`): ``change.json``
(``transfuse analyze --change --json``), ``transferability.json`` (``transfuse rank-sources
--check-against ... --json``) and ``forgetting.json`` (``transfuse analyze --forgetting --json``).
A decided size verdict of ``change.json`` has a code ``[<study> Cxxxx]`` (:func:`change_code`),
a decided strategy-vs-full verdict of ``forgetting.json`` one ``[<study> Fxxxx]``
(:func:`forgetting_code`); prose may cite either like a study verdict's.

The lint (:func:`lint`) holds prose outside the blocks to that: every sentence with a result word
(:data:`RESULT_WORDS`: better, worse, helped, hurt, matched, as good as, faster, beat, ...) must
either cite a decided verdict's code, ``[<study> Dxxxx]``, that the study's JSON has, or begin with
``Caveat:``, ``Definition:`` or ``Question:`` (an explanation, a term, or the question a study
asks — never a finding). Code blocks, headings and HTML comments are not prose.

The JSON may be schema ``transfuse.study-results/1`` (``verdict`` one of better / worse /
equivalent / undecided, no sentence) or a later one whose comparisons carry a verdict code and a
sentence; :func:`verdict_of` reads either, and anything whose code does not begin with
``undecided`` counts as decided.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FINDINGS = HERE.parent / "FINDINGS.md"

# study name -> folder under docs/findings/ and the store folder names --from-store looks for
# (the snapshots that used to be committed were docs/findings/<store>/).
STUDIES: dict[str, str] = {
    "transfusion": "transfusion-store",
    "ssl_pneumonia": "ssl-pneumonia-store",
    "ssl_retina": "ssl-retina-store",
    "ssl_seg3d_brain": "ssl-seg3d-store",
    "finetune": "finetune-store",
    "finetune-pneumonia": "finetune-pneumonia-store",
    "heldout_pneumonia": "heldout-pneumonia-store",
    "ema_retina": "ema-retina-store",
}

BEGIN = re.compile(r"^<!-- BEGIN generated: (?P<study>[\w.-]+)(?:/(?P<analysis>[\w-]+))? -->$", re.M)
END = "<!-- END generated -->"
RESULT_WORDS = re.compile(
    r"\b(better|worse|help|helps|helped|hurt|hurts|matched|as good|faster|slower|beat|beats|"
    r"barely changes?|cost nothing|sped up|initiali[sz]e at random)\b", re.I)
CITE = re.compile(r"\[(?P<study>[\w.-]+) (?P<code>[DCF][0-9a-f]+)\]")
# analysis blocks, ``<!-- BEGIN generated: <study>/<analysis> -->``: the JSON file each renders
ANALYSES = {"change": "change.json", "transferability": "transferability.json",
            "forgetting": "forgetting.json"}
MARKERS = ("Caveat:", "Definition:", "Question:")


# ---------------------------------------------------------------- reading the JSON

def load(study: str, root: Path = HERE) -> dict:
    """The committed results of ``study`` (``docs/findings/<study>/results.json``)."""
    return json.loads((root / study / "results.json").read_text())


def verdict_of(c: dict) -> tuple[str, str, str | None]:
    """(code, label, sentence) of a comparison, from schema 1 or a later one.

    Schema 1 has only ``verdict`` (the code; no sentence). A later schema may give the verdict as
    an object (``{"code", "label", "sentence"}``) or beside it ``verdict_code`` / ``label`` /
    ``sentence``; whichever is present is used, the code also being the label if none is given.
    """
    v = c.get("verdict")
    if isinstance(v, dict):
        code = v.get("code") or v.get("verdict") or "undecided"
        return code, v.get("label") or code.replace("_", " "), v.get("sentence") or v.get("text")
    code = c.get("verdict_code") or c.get("code") or v or "undecided"
    label = c.get("verdict_label") or c.get("label") or str(v or code).replace("_", " ")
    return code, label, c.get("sentence") or c.get("verdict_sentence")


def is_decided(c: dict) -> bool:
    return not verdict_of(c)[0].startswith("undecided")


def code(c: dict) -> str:
    """A comparison's code, ``D`` and 4 hex digits of a hash of what it compares.

    It depends only on model, training-set size, arm, reference and endpoint, so a re-exported
    JSON (more seeds, a later schema) keeps each question's code and prose citing it stays
    pointed at the same question; a question that is no longer decided fails the lint.
    """
    key = "|".join(str(c[k]) for k in ("model", "size", "arm", "reference", "endpoint"))
    return "D" + hashlib.sha1(key.encode()).hexdigest()[:4]


def decided_codes(res: dict) -> dict[str, dict]:
    """``{code: comparison}`` of the decided comparisons, in the JSON's order."""
    out: dict[str, dict] = {}
    for c in res["comparisons"]:
        if is_decided(c):
            k = code(c)
            if k in out:
                raise SystemExit(f"{res['study']}: two decided questions share the code {k}; "
                                 "lengthen the hash in render.code")
            out[k] = c
    return out


def _is_speed(c: dict) -> bool:
    return str(c.get("unit", "")).startswith("log(")


def _show(c: dict, x: float | None) -> str:
    return "–" if x is None else f"{math.exp(x):.2f}×" if _is_speed(c) else f"{x:+.3f}"


def _endpoint(c: dict) -> str:
    e = c["endpoint"]
    if e.startswith("speed@"):
        return f"speed-up to validation {e.split('@', 1)[1]}"
    return {"final": c.get("unit") or "final score", "area": "area under the validation curve"}.get(e, e)


def _interval(c: dict) -> str:
    return "" if c.get("ci_low") is None else f" [{_show(c, c['ci_low'])}, {_show(c, c['ci_high'])}]"


def sentence(c: dict) -> str:
    """The verdict's own sentence: the JSON's where it has one, else built from its fields."""
    code, label, given = verdict_of(c)
    if given:
        return given
    who = f"{c['arm']} vs {c['reference']}, {_endpoint(c)}"
    if c.get("mean") is None:
        return f"{who}: {label} — {c['reason']}."
    what = f"{_show(c, c['mean'])}{_interval(c)}, {c['n']} seeds"
    if not code.startswith("undecided"):
        return f"{who}: **{label}**, {what} ({c['reason']})."
    need = c.get("seeds_needed")
    more = f"; about {need} seeds would decide it" if need else "; no seed count decides it at this margin"
    return f"{who}: {label}, {what} ({c['reason']}){more}."


# ---------------------------------------------------------------- rendering a block

def _cell_text(c: dict | None) -> str:
    return "–" if not c or c.get("mean") is None else f"{c['mean']:.3f} ± {c['sd'] or 0:.3f} ({c['n']})"


def _verdict_text(c: dict | None, code_of: dict[str, str]) -> str:
    if c is None:
        return ""
    code, label, _ = verdict_of(c)
    if c.get("mean") is None:
        return f"{label}: {c['reason']}"
    ci = _interval(c)
    if not code.startswith("undecided"):
        return f"**{label}** {code_of[c['id']]}: {_show(c, c['mean'])}{ci}"
    if not ci:  # a mean without an interval: the verdict's reason says why (a gate, too few seeds)
        return f"{label} {_show(c, c['mean'])}: {c['reason']}"
    need = c.get("seeds_needed")
    return f"{label} {_show(c, c['mean'])}{ci}; " + (f"≈ {need} seeds" if need else "no seed count in reach")


def _card_lines(res: dict, code_of: dict[str, str]) -> list[str]:
    """The report's decision cards (JSON from issue 32 on; none in older JSON): per arm the decided
    answer (with its code) or the plausible range, the margin the seeds decide and the seeds a
    decision needs; then the context lines (better cells elsewhere in the workspace)."""
    cards = res.get("cards") or []
    if not cards:
        return []
    out = ["The report's decision card (per model and size; per arm the decided answer, or the "
           "plausible range, the margin the seeds decide and the seeds a decision needs):"]
    for card in cards:
        where = f"{card['model']}, n_train {card['size']}"
        for cid, x in zip(card["comparisons"], card["lines"]):
            code = f"{code_of[cid]} " if cid in code_of else ""
            out.append(f"- {where}: {code}{x['text']}")
        out += [f"- {where}, context: {x['text']}" for x in card["context"]]
    return out + [""]


def render_block(study: str, res: dict) -> str:
    """The text between a study's BEGIN and END markers (without them)."""
    ev, comps = res["evaluation"], res["comparisons"]
    codes = decided_codes(res)
    code_of = {c["id"]: f"[{study} {k}]" for k, c in codes.items()}
    counts: dict[str, int] = {}
    for c in comps:
        label = verdict_of(c)[1]
        counts[label] = counts.get(label, 0) + 1
    metric = str(res["metric"]).upper() if res["metric"] in ("auc",) else res["metric"].capitalize()
    seq = ev.get("sequential")
    looks = ""
    if seq:
        looks = (f"; looks at {', '.join(str(x) for x in seq['looks'])} seeds, alpha per look "
                 + ", ".join(f"{x:.3g}" for x in seq["levels"]))
    lines = [
        f"*Generated by `python docs/findings/render.py` from "
        f"[findings/{study}/results.json](findings/{study}/results.json) "
        f"(schema `{res['schema']}`); do not edit by hand.*",
        "",
        f"Study `{res['study']}`: {res['runs']['finished']} finished runs; {len(comps)} questions, "
        f"{res['family_size']} in the {ev['multiplicity']} family at α = {ev['alpha']}; margin "
        f"±{ev['margin']:g} {metric} (area ±{ev['area_margin']:g}, speed "
        f"{ev['speed_margin']:g}×), reference arm `{ev['reference']}`{looks}. Verdicts: "
        + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ".",
        "",
    ]
    lines += _card_lines(res, code_of)
    if codes:
        lines.append("Decided verdicts:")
        # the sentence (the JSON's own from schema 2 on) need not name the model and size: say them
        lines += [f"- **[{study} {k}]** {c['model']}, n_train {c['size']}: {sentence(c)}"
                  for k, c in codes.items()]
    else:
        lines.append("Decided verdicts: none.")
    und = [c for c in comps if not is_decided(c)]
    if und:
        need = sorted(c["seeds_needed"] for c in und if c.get("seeds_needed"))
        span = "–" if not need else str(need[0]) if need[0] == need[-1] else f"{need[0]}–{need[-1]}"
        lines += ["", f"Undecided: {len(und)} of {len(comps)} questions; the seeds each would need "
                      f"at this margin and {ev['power']:.0%} power: {span} "
                      f"({len(und) - len(need)} without an estimate; per question in the table)."]
    endpoints: list[str] = []
    groups: dict[tuple, dict[str, dict[str, dict]]] = {}  # (model, size) -> arm -> endpoint -> c
    for c in comps:
        if c["endpoint"] not in endpoints:
            endpoints.append(c["endpoint"])
        groups.setdefault((c["model"], c["size"]), {}).setdefault(c["arm"], {})[c["endpoint"]] = c
    order = {m: i for i, m in enumerate(dict.fromkeys(c["model"] for c in res["cells"]))}
    sizes = {s: i for i, s in enumerate(dict.fromkeys(c["size"] for c in res["cells"]))}
    cells = {(c["model"], c["size"], c["arm"]): c for c in res["cells"]}
    lines += ["", "Per arm: the final test score, mean ± SD (seeds), and each endpoint's verdict "
                  "with Δ arm − reference [the verdict's interval] (speed-ups as the reference's "
                  "steps ÷ the arm's):", "",
              "| model | n_train | arm | test " + metric + " | " + " | ".join(endpoints) + " |",
              "|---|---|---|---|" + "---|" * len(endpoints)]
    for model, size in sorted(groups, key=lambda k: (order.get(k[0], 99), sizes.get(k[1], 99))):
        ref = (model, size, ev["reference"])
        if ref in cells:
            lines.append(f"| {model} | {size} | {ev['reference']} (reference) | "
                         f"{_cell_text(cells[ref])} |" + " |" * len(endpoints))
        for arm, by in groups[(model, size)].items():
            lines.append(f"| {model} | {size} | {arm} | {_cell_text(cells.get((model, size, arm)))} | "
                         + " | ".join(_verdict_text(by.get(e), code_of) for e in endpoints) + " |")
    if res.get("recommendations"):
        lines += ["", "The report's recommendations:"]
        lines += [f"- {r['model']}, n_train {r['size']}: {r['text']}" for r in res["recommendations"]]
    lines += averaging_lines(res, metric)
    return "\n".join(lines)


def averaging_lines(res: dict, metric: str) -> list[str]:
    """The JSON's ``averaging`` (issue 32) as a table: per comparison, the paired SD of the
    final-score difference without and with weight averaging over the same seeds, and their
    ratio; no lines when the study varied no averaging."""
    rows = res.get("averaging") or []
    if not rows:
        return []

    def f(x: float | None, fmt: str) -> str:
        return "–" if x is None else format(x, fmt)
    out = ["", f"Weight averaging: the paired SD of the final-{metric} difference (arm − "
               "reference) over the same seeds, without and with averaging; ratio = with ÷ "
               "without (the seeds a decision needs scale by ratio²):", "",
           "| model | n_train | arm vs reference | averaging | seeds | Δ without | Δ with "
           "| paired SD without | paired SD with | ratio | seeds × |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    out += [f"| {r['model']} | {r['size']} | {r['arm']} vs {r['reference']} | {r['averaging']} "
            f"| {r['n']} | {f(r.get('mean_plain'), '+.3f')} | {f(r.get('mean_averaged'), '+.3f')} "
            f"| {f(r['sd_plain'], '.4f')} | {f(r['sd_averaged'], '.4f')} | {f(r['ratio'], '.2f')} "
            f"| {f(r.get('seed_factor'), '.2f')} |" for r in rows]
    return out


def render(text: str, root: Path = HERE) -> str:
    """``text`` with every generated block replaced by its rendering from ``root``'s JSON."""
    out, pos = [], 0
    for m in BEGIN.finditer(text):
        end = text.find(END, m.end())
        if end < 0:
            raise SystemExit(f"FINDINGS: no '{END}' after '{m.group(0)}'")
        study, analysis = m.group("study"), m.group("analysis")
        block = (render_analysis(study, analysis, root) if analysis
                 else render_block(study, load(study, root)))
        out += [text[pos:m.end()], "\n", block, "\n"]
        pos = end
    out.append(text[pos:])
    return "".join(out)


# ---------------------------------------------------------------- analysis blocks (issue 31)

def _load_analysis(study: str, analysis: str, root: Path) -> dict:
    if analysis not in ANALYSES:
        raise SystemExit(f"FINDINGS: unknown analysis block {study}/{analysis}; one of {', '.join(ANALYSES)}")
    p = root / study / ANALYSES[analysis]
    if not p.is_file():
        raise SystemExit(f"FINDINGS: block {study}/{analysis} needs {p}")
    return json.loads(p.read_text())


def change_code(q: dict) -> str:
    """A size comparison's code, ``C`` and 4 hex digits of a hash of what it compares."""
    key = "|".join(str(q[k]) for k in ("dataset", "size", "arm", "stage", "smaller", "larger"))
    return "C" + hashlib.sha1(key.encode()).hexdigest()[:4]


def forgetting_code(kind: str, c: dict) -> str:
    """A strategy-vs-full forgetting verdict's code, ``F`` + 4 hex; ``kind``: ``source`` or ``imagenet``."""
    key = "|".join([kind, *(str(c[k]) for k in ("model", "size", "arm")), str(c["verdict"]["versus"])])
    return "F" + hashlib.sha1(key.encode()).hexdigest()[:4]


def _decided_curves(d: dict) -> list[tuple[str, dict]]:
    kinds = (("source", d.get("curves") or []), ("imagenet", (d.get("imagenet") or {}).get("curves") or []))
    return [(k, c) for k, cs in kinds for c in cs
            if c.get("verdict") and not str(c["verdict"]["verdict"]).startswith("undecided")]


def change_codes(study: str, root: Path = HERE) -> dict[str, dict]:
    """``{code: comparison}`` of the decided size comparisons of ``study``'s change.json and the
    decided strategy-vs-full verdicts of its forgetting.json (if any)."""
    out, p, f = {}, root / study / ANALYSES["change"], root / study / ANALYSES["forgetting"]
    if p.is_file():
        out = {change_code(q): q for q in json.loads(p.read_text())["comparisons"]
               if not str(q["verdict"]).startswith("undecided")}
    if f.is_file():
        out.update({forgetting_code(k, c): c for k, c in _decided_curves(json.loads(f.read_text()))})
    return out


def _ci(s: dict, nd: int = 3) -> str:
    if s.get("mean") is None:
        return "–"
    if s.get("ci_low") is None:
        return f"{s['mean']:.{nd}f}"
    return f"{s['mean']:.{nd}f} [{s['ci_low']:.{nd}f}, {s['ci_high']:.{nd}f}]"


def _signed_iv(m: float | None, lo: float | None, hi: float | None) -> str:
    return "–" if m is None else f"{m:+.3f}" + (f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None else "")


def _head(study: str, analysis: str) -> list[str]:
    return [f"*Generated by `python docs/findings/render.py` from "
            f"[findings/{study}/{ANALYSES[analysis]}](findings/{study}/{ANALYSES[analysis]}); "
            "do not edit by hand.*", ""]


def render_change(study: str, d: dict) -> str:
    """``transfuse analyze --change --json`` as a per-stage table and the size verdicts."""
    lines = _head(study, "change")
    lines += [f"{d['tracks']['sentence']}", "",
              "Per model, arm and stage: mean [95 % t-interval] over seeds of CKA(init, final), the "
              "relative weight change, the per-parameter update RMS and the effective learning rate "
              "(definitions in docs/ANALYSIS.md).", "",
              "| model | n_train | arm | stage | width | CKA(init, final) | ‖ΔW‖/‖W‖ | update RMS | effective lr |",
              "|---|---|---|---|---|---|---|---|---|"]
    for c in d["cells"]:
        for s in c["stages"]:
            lines.append(f"| {c['model']} | {c['size']} | {c['arm']} | {s['stage']} | {s['width']} | "
                         f"{_ci(s['cka'])} | {_ci(s['relative_change'])} | {_ci(s['update_rms'], 4)} | "
                         f"{_ci(s['effective_lr'], 4)} |")
    comps = d["comparisons"]
    if comps:
        lines += ["", f"Size effect, CKA(init, final) of the larger minus the smaller model paired by "
                      f"seed (Holm, margin ±{d['options']['margin']:g}; `better` = the larger model's "
                      "stage changed less):", "",
                  "| code | n_train | arm | stage | smaller → larger | verdict | Δ CKA [interval] | "
                  "predicted by width / parameters / update |", "|---|---|---|---|---|---|---|---|"]
        for q in comps:
            decided = not str(q["verdict"]).startswith("undecided")
            p = q["predicted"]
            pred = " / ".join("–" if p.get(k) is None else f"{p[k]:+d}" if p[k] else "0"
                              for k in ("width", "parameters", "update_rms"))
            lines.append(f"| {change_code(q) if decided else ''} | {q['size']} | {q['arm']} | "
                         f"{q['stage']} | {q['smaller']} → {q['larger']} | {q['verdict']} | "
                         f"{_signed_iv(q['mean'], q['ci_low'], q['ci_high'])} | {pred} |")
    return "\n".join(lines)


def render_transferability(study: str, d: dict) -> str:
    """``rank-sources --check-against --json``: τ per estimator and group, and a summary per estimator."""
    lines = _head(study, "transferability")
    ag = d["agreements"]
    by: dict[str, list[dict]] = {}
    for g in ag:
        by.setdefault(g["estimator"], []).append(g)
    lines += ["Per estimator over the model × n_train groups: mean Kendall τ, and the groups whose "
              "95 % bootstrap interval lies above 0 / below 0 / contains 0:", "",
              "| estimator | groups scored | mean τ | interval above 0 | below 0 | contains 0 |",
              "|---|---|---|---|---|---|"]
    summary = []
    for est, gs in by.items():
        taus = [g["tau"] for g in gs if g["tau"] is not None]
        above = sum(1 for g in gs if g["ci_low"] is not None and g["ci_low"] > 0)
        below = sum(1 for g in gs if g["ci_high"] is not None and g["ci_high"] < 0)
        mean = sum(taus) / len(taus) if taus else None
        summary.append((mean if mean is not None else -9, est))
        lines.append(f"| {est} | {len(taus)} of {len(gs)} | {'–' if mean is None else f'{mean:+.2f}'} | "
                     f"{above} | {below} | {len(taus) - above - below} |")
    if summary:  # every estimator within 1e-9 of the highest mean is named: a tie is a tie
        top = max(m for m, _ in summary)
        best = sorted(e for m, e in summary if abs(m - top) < 1e-9)
        lines += ["", "Highest mean τ: " + " and ".join(f"`{e}`" for e in best)
                  + ("." if top == -9 else f" ({top:+.2f}{', tied' if len(best) > 1 else ''}).")]
    lines += ["", "| model | n_train | estimator | τ | 95 % interval | arms | seeds |",
              "|---|---|---|---|---|---|---|"]
    for g in ag:
        t = "–" if g["tau"] is None else f"{g['tau']:+.2f}"
        iv = "–" if g["ci_low"] is None else f"[{g['ci_low']:+.2f}, {g['ci_high']:+.2f}]"
        lines.append(f"| {g['model']} | {g['size']} | {g['estimator']} | {t} | {iv} | "
                     f"{len(g['arms'])} | {g['n_seeds']} |")
    for cell, why in (d.get("skipped") or {}).items():
        lines.append(f"\nNot scored: {cell}: {why}")
    return "\n".join(lines)


def _curve_lines(curves: list[dict], study: str, kind: str) -> list[str]:
    out = ["| model | n_train | arm | seeds | score after keeping stem..stage k [95 % CI] | monotone | vs full |",
           "|---|---|---|---|---|---|---|"]
    for c in curves:
        pts = "; ".join(f"{s} {m:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")
                        for s, m, lo, hi in zip(c["stages"], c["mean"], c["ci_low"], c["ci_high"]))
        v = c.get("verdict") or {}
        vs = f"{v['verdict']} {_signed_iv(v['mean'], v['ci_low'], v['ci_high'])}" if v else "–"
        if v and not str(v["verdict"]).startswith("undecided"):
            vs = f"**[{study} {forgetting_code(kind, c)}]** {vs}"
        out.append(f"| {c['model']} | {c['size']} | {c['arm']} | {len(c['seeds'])} | {pts} | "
                   f"{'yes' if c['monotone'] else 'no'} | {vs} |")
    return out


def render_forgetting(study: str, d: dict) -> str:
    """``analyze --forgetting --json``: the source-task curves and the ImageNet ones."""
    lines = _head(study, "forgetting")
    if d.get("curves"):
        lines += ["Source-task macro AUC with the source's head on the fine-tuned stem..stage k "
                  "(`none`: the source itself):", "", *_curve_lines(d["curves"], study, "source")]
    if d.get("imagenet"):
        im = d["imagenet"]
        lines += [""] * bool(d.get("curves")) + [  # no blank line twice when there is no source curve
            f"ImageNet: mean log-probability of the hand-labelled classes of {im['n_photos']} "
            "scikit-image photos (a tiny set; 0 is certainty):", "", *_curve_lines(im["curves"], study, "imagenet")]
    return "\n".join(lines)


def render_analysis(study: str, analysis: str, root: Path = HERE) -> str:
    """The text of a ``<study>/<analysis>`` block from its committed JSON."""
    d = _load_analysis(study, analysis, root)
    return {"change": render_change, "transferability": render_transferability,
            "forgetting": render_forgetting}[analysis](study, d)


# ---------------------------------------------------------------- the lint

def prose(text: str) -> str:
    """``text`` without generated blocks, fenced code, HTML comments and headings."""
    text = re.sub(r"<!-- BEGIN generated:.*?<!-- END generated -->", "", text, flags=re.S)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))


def sentences(text: str) -> list[str]:
    """Prose sentences: paragraphs, bullets and table rows split at sentence ends."""
    units, cur = [], []
    for ln in text.splitlines():
        s = ln.strip()
        if not s or s.startswith(("- ", "|")) or re.match(r"\d+\. ", s):
            if cur:
                units.append(" ".join(cur))
            cur = [s] if s else []
        else:
            cur.append(s)
    if cur:
        units.append(" ".join(cur))
    out = []
    for u in units:
        u = re.sub(r"^(- |\d+\. )", "", u)
        out += [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z*\[(`])", u) if s]
    return out


def lint(text: str, root: Path = HERE) -> list[str]:
    """Sentences outside the generated blocks that state a result without a decided verdict."""
    decided = {s: set(decided_codes(load(s, root))) | set(change_codes(s, root))
               for s in STUDIES if (root / s).is_dir()}
    bad = []
    for s in sentences(prose(text)):
        if not RESULT_WORDS.search(s):
            continue
        bare = s.lstrip("*_ ")
        if bare.startswith(MARKERS):
            continue
        cites = [(m["study"], m["code"]) for m in CITE.finditer(s)]
        if cites and all(code in decided.get(st, ()) for st, code in cites):
            continue
        why = "cites no decided verdict" if not cites else f"cites {cites}, not all decided"
        bad.append(f"{why}: {s[:160]}")
    return bad


# ---------------------------------------------------------------- re-exporting from stores

def export(store_dir: Path, root: Path = HERE) -> list[Path]:
    """Rewrite ``root/<study>/results.json`` from each study's store found in ``store_dir``.

    A study's store is ``store_dir/<store folder>`` (:data:`STUDIES`, e.g. transfusion-store) or
    ``store_dir`` itself when it holds a ``transfuse.db`` with that study. Opening a store writes
    to it: export from a copy, never from a store under version control.
    """
    from transfuse.report.study import build_report

    written = []
    for study, folder in STUDIES.items():
        for ws in (store_dir / folder, store_dir / study, store_dir):
            if (ws / "transfuse.db").is_file() and _has_study(ws, study):
                out = root / study / "results.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                build_report(workspace=ws, study=study, out=out, format="json")
                written.append(out)
                break
    return written


def _has_study(ws: Path, study: str) -> bool:
    import sqlite3

    con = sqlite3.connect(f"file:{ws / 'transfuse.db'}?mode=ro", uri=True)
    try:
        return con.execute("SELECT 1 FROM runs WHERE study = ? LIMIT 1", (study,)).fetchone() is not None
    finally:
        con.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 if FINDINGS differs from its rendering or fails the lint "
                         "(default: rewrite FINDINGS)")
    ap.add_argument("--from-store", metavar="DIR", type=Path, default=None,
                    help="first re-export each study's results.json from its store in DIR (default: none)")
    ap.add_argument("--findings", type=Path, default=FINDINGS, help=f"the file to render (default {FINDINGS})")
    ap.add_argument("--root", type=Path, default=HERE,
                    help=f"the folder of the <study>/results.json files (default {HERE})")
    a = ap.parse_args(argv)
    if not a.findings.is_file():
        print(f"error: --findings {a.findings}: no such file", file=sys.stderr)
        return 2
    if a.from_store is not None:
        if not a.from_store.is_dir():
            print(f"error: --from-store {a.from_store}: no such folder", file=sys.stderr)
            return 2
        for p in export(a.from_store, a.root):
            print(f"exported {p}")
    text = a.findings.read_text()
    new = render(text, a.root)
    problems = lint(new, a.root)
    if a.check:
        if new != text:
            print(f"{a.findings}: generated blocks differ from the JSON; run python docs/findings/render.py")
        for p in problems:
            print(f"lint: {p}")
        return int(new != text or bool(problems))
    if new != text:
        a.findings.write_text(new)
        print(f"rendered {a.findings}")
    for p in problems:
        print(f"lint: {p}")
    return int(bool(problems))


if __name__ == "__main__":
    sys.exit(main())
