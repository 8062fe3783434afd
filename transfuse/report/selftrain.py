"""The self-training report section: test AUC per generation beside the supervised baselines.

Reads only the store (``selftrain`` results written by :func:`transfuse.selftrain.run_chain`);
registered as a section of ``transfuse report`` and also used by ``transfuse selftrain`` to
print its table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .html import Section, esc, figure_img, new_figure, register_section, table
from ..store import Store

__all__ = ["ChainRow", "chain_rows", "chain_verdict", "format_rows", "selftrain_section"]

BASELINE_LABELS = {"labelled": "supervised, labelled subset only", "full": "supervised, 100 % labelled"}


@dataclass(frozen=True)
class ChainRow:
    """One line of the table: a generation (or a baseline) over seeds."""

    label: str
    generation: int | None
    aucs: dict[int, float | None]  # seed -> test AUC
    pseudo_acc: dict[int, float | None]  # seed -> accuracy of the pseudo-labels it trained on
    n_pseudo: dict[int, int]

    def mean(self) -> float | None:
        v = [a for a in self.aucs.values() if a is not None]
        return float(np.mean(v)) if v else None

    def sd(self) -> float | None:
        v = [a for a in self.aucs.values() if a is not None]
        return float(np.std(v, ddof=1)) if len(v) > 1 else None


def chain_rows(store: Store, study: str) -> list[ChainRow]:
    """Generations 0…N then the baselines, from the stored ``selftrain`` results of ``study``."""
    res = store.get_results("selftrain", study=study)
    gens: dict[int, dict] = {}
    base: dict[str, dict] = {}
    for p in res.values():
        if p.get("generation") is not None:
            gens.setdefault(int(p["generation"]), {})[int(p["seed"])] = p
        else:
            base.setdefault(p["role"], {})[int(p["seed"])] = p
    rows = []
    for g in sorted(gens):
        by = gens[g]
        rows.append(ChainRow(
            "teacher (generation 0)" if g == 0 else f"student generation {g}", g,
            {s: p.get("test_auc") for s, p in sorted(by.items())},
            {s: (p.get("pseudo") or {}).get("pseudo_acc") for s, p in sorted(by.items()) if g},
            {s: (p.get("pseudo") or {}).get("n_selected", 0) for s, p in sorted(by.items()) if g}))
    for role in ("labelled", "full"):
        if role in base:
            rows.append(ChainRow(BASELINE_LABELS[role], None,
                                 {s: p.get("test_auc") for s, p in sorted(base[role].items())}, {}, {}))
    return rows


def _f(x: float | None, nd: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def chain_verdict(rows: list[ChainRow]) -> str:
    """One plain sentence: did the chain beat its first teacher?"""
    gens = [r for r in rows if r.generation is not None]
    if len(gens) < 2 or gens[0].mean() is None:
        return "No student has finished yet."
    t = gens[0]
    best = max(gens[1:], key=lambda r: -math.inf if r.mean() is None else r.mean())
    last = gens[-1]
    seeds = [s for s in t.aucs if t.aucs[s] is not None and last.aucs.get(s) is not None]
    above = sum(last.aucs[s] > t.aucs[s] for s in seeds)
    d_last = (last.mean() or 0) - t.mean()
    d_best = (best.mean() or 0) - t.mean()
    word = "beat" if d_last > 0 and above == len(seeds) else ("did not beat" if d_last <= 0 else
                                                               "beat on average only")
    return (f"The chain {word} its first teacher: final generation {last.generation} mean test AUC "
            f"{_f(last.mean())} vs teacher {_f(t.mean())} (Δ {d_last:+.3f}; above the teacher in "
            f"{above} of {len(seeds)} seeds); best generation {best.generation}: {_f(best.mean())} "
            f"(Δ {d_best:+.3f}).")


def format_rows(rows: list[ChainRow]) -> tuple[list[str], list[list[str]]]:
    """Headers and text cells of the table (shared by the HTML section and the CLI)."""
    seeds = sorted({s for r in rows for s in r.aucs})
    headers = ["run", "mean AUC", "sd", *[f"seed {s}" for s in seeds], "pseudo-label acc", "pseudo-labels"]
    body = []
    for r in rows:
        pa = [v for v in r.pseudo_acc.values() if v is not None]
        body.append([r.label, _f(r.mean()), _f(r.sd()), *[_f(r.aucs.get(s)) for s in seeds],
                     _f(float(np.mean(pa))) if pa else "", 
                     str(round(float(np.mean(list(r.n_pseudo.values()))))) if r.n_pseudo else ""])
    return headers, body


def _figure(rows: list[ChainRow]) -> str:
    fig, axes = new_figure(width=6.0, height=3.6)
    ax = axes[0][0]
    gens = [r for r in rows if r.generation is not None]
    seeds = sorted({s for r in gens for s in r.aucs})
    for s in seeds:
        pts = [(r.generation, r.aucs.get(s)) for r in gens if r.aucs.get(s) is not None]
        if pts:
            first = not any(line.get_label() == "one seed" for line in ax.lines)
            ax.plot(*zip(*pts), color="0.7", lw=1, marker=".", label="one seed" if first else None)
    pts = [(r.generation, r.mean()) for r in gens if r.mean() is not None]
    if pts:
        ax.plot(*zip(*pts), color="C0", lw=2.5, marker="o", label="chain (mean over seeds)")
    for r, c in zip([r for r in rows if r.generation is None], ("C1", "C2")):
        if r.mean() is not None:
            ax.axhline(r.mean(), color=c, ls="--", label=r.label)
    ax.set_xlabel("generation (0 = teacher)")
    ax.set_ylabel("test AUC")
    ax.set_xticks([r.generation for r in gens])
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return figure_img(fig, alt="Test AUC per generation (grey: seeds) beside the supervised baselines")


@register_section("selftrain", order=70)
def selftrain_section(store: Store, study: str) -> Section | None:
    """Table and plot of test AUC per generation, baselines and pseudo-label quality."""
    rows = chain_rows(store, study)
    if not rows:
        return None
    headers, body = format_rows(rows)
    info = store.get_results("selftrain_chain", study=study).get(study, {})
    method = (f"Teacher trained on {info.get('labelled_fraction', '?')} of the training labels; each "
              f"student learns from the labelled subset plus the previous generation's pseudo-labels "
              f"({(info.get('pseudo') or {}).get('mode', '?')}, threshold "
              f"{(info.get('pseudo') or {}).get('threshold', '?')}) under noise, then becomes the "
              "next teacher. Pseudo-label accuracy is measured against the true labels, which the "
              "method never sees.")
    body_html = (f"<p><b>{esc(chain_verdict(rows))}</b></p><p class=\"method\">{esc(method)}</p>"
                 + table(headers, body, caption="Test AUC per generation") + _figure(rows))
    return Section("Self-training chain", body_html, "selftrain")
