"""Report section: operating points and calibration per arm, and paired questions about them.

Every finished classification run of the study stores its test calibration (``ece``, ``brier``)
and, for two classes, the operating point chosen on validation (``sensitivity``,
``specificity``, ``balanced_acc``; :mod:`transfuse.train.clinical`). Per cell (model × arm ×
size) this section gives each metric's mean and 95 % t-interval over seeds; per arm against the
study's reference arm, the paired difference over shared seeds with its interval and p-value,
and a verdict read from the interval: ``higher``/``lower`` where it excludes 0, else
``undecided`` (these extra questions are not multiplicity-adjusted with the AUC questions).
"""

from __future__ import annotations

import math
from collections import defaultdict

from ..arms import arm_labels
from ..store import Store
from ..decide.stats import paired_test, summarize
from .html import Section, register_section, table

__all__ = ["clinical_section", "clinical_questions", "METRICS"]

# metric -> (label, higher is better)
METRICS = {"sensitivity": ("sensitivity", True), "specificity": ("specificity", True),
           "balanced_acc": ("balanced accuracy", True), "ece": ("ECE", False),
           "brier": ("Brier score", False)}


def _fmt(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _cells(store: Store, study: str) -> tuple[dict[tuple[str, str, str], dict[int, dict]], str]:
    runs = [r for r in store.list_runs(study=study) if r.status == "finished"
            and not r.spec.get("parent")]
    cells: dict[tuple[str, str, str], dict[int, dict]] = defaultdict(dict)
    for r, arm in zip(runs, arm_labels([r.spec for r in runs])):
        d = r.spec["data"]
        size = str(d.get("n_train") or (f"fraction={d['fraction']}" if d.get("fraction") else "full"))
        cells[(r.spec["model"]["name"], arm, size)][int(r.spec["seed"])] = store.final_metrics(r.run_id)
    info = store.get_results("study", study=study).get(study, {})
    return cells, (info.get("evaluation") or {}).get("reference", "random")


def clinical_questions(store: Store, study: str) -> list[dict[str, object]]:
    """One row per (model, size, arm ≠ reference, metric): the paired difference arm − reference
    over shared seeds, its 95 % interval, p-value and verdict (``higher``/``lower``/``undecided``)."""
    cells, ref = _cells(store, study)
    out: list[dict[str, object]] = []
    for (model, arm, size), seeds in cells.items():
        base = cells.get((model, ref, size))
        if arm == ref or base is None:
            continue
        shared = sorted(set(seeds) & set(base))
        for m, (label, _) in METRICS.items():
            a = [seeds[s].get(m) for s in shared]
            b = [base[s].get(m) for s in shared]
            keep = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
            t = paired_test([x for x, _ in keep], [y for _, y in keep]) if len(keep) >= 2 else None
            if t is None:
                continue
            verdict = ("higher" if t.ci_low is not None and t.ci_low > 0 else
                       "lower" if t.ci_high is not None and t.ci_high < 0 else "undecided")
            out.append({"model": model, "size": size, "arm": arm, "reference": ref, "metric": m,
                        "question": f"{label}: {arm} vs {ref}", "n": t.n, "diff": t.mean_diff,
                        "ci_low": t.ci_low, "ci_high": t.ci_high, "p": t.p, "verdict": verdict})
    return out


@register_section("clinical", order=26)
def clinical_section(store: Store, study: str) -> Section | None:
    """Operating points and calibration of the study's classification runs."""
    cells, _ = _cells(store, study)
    rows = []
    for (model, arm, size), seeds in sorted(cells.items()):
        row = [model, arm, size, str(len(seeds))]
        for m in METRICS:
            s = summarize([v.get(m) for v in seeds.values()])
            row.append("–" if s is None else f"{_fmt(s.mean)} [{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]")
        rows.append(row)
    if not any(any(c != "–" for c in r[4:]) for r in rows):
        return None  # segmentation, or runs stored before these metrics existed
    q = clinical_questions(store, study)
    body = ("<p>On the test split of each run: the operating point is the threshold chosen on "
            "validation (class 1 positive; train.operating_point), calibration is the expected "
            "calibration error (15 bins) and the Brier score — lower is better for both. Mean "
            "[95 % t-interval] over seeds.</p>"
            + table(["model", "arm", "n_train", "seeds", *(lbl for lbl, _ in METRICS.values())], rows))
    if q:
        body += ("<p>Paired questions (arm − reference over shared seeds); the verdict reads the "
                 "interval: higher or lower where it excludes 0. Not adjusted for multiplicity "
                 "together with the AUC verdicts above.</p>"
                 + table(["model", "n_train", "question", "seeds", "difference [95 % CI]", "p",
                          "verdict"],
                         [[r["model"], r["size"], r["question"], str(r["n"]),
                           f"{_fmt(r['diff'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]",
                           _fmt(r["p"]), r["verdict"]] for r in q]))
    return Section("Operating points and calibration", body, anchor="clinical")
