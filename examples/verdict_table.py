"""Markdown tables of a study's verdicts, from its machine-readable report.

    transfuse report -w ws-transfusion --study transfusion --format json -o results.json
    python examples/verdict_table.py results.json            # one table per endpoint

The tables in docs/FINDINGS.md are this script's output. It reads only the JSON (schema
``transfuse.study-results/2``, see docs/STUDIES.md): one row per model × training-set size × arm,
one column per endpoint (final test score, area under the validation curve, speed-ups), each
cell ``verdict (n seeds, Δ [interval])``.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter, defaultdict


def _cell(c: dict) -> str:
    if c["mean"] is None:
        return f"{c.get('label', c['verdict'])} ({c['reason']})"
    speed = c["unit"].startswith("log(")  # speed-ups are judged on the log ratio: shown as ×
    show = (lambda v: f"{math.exp(v):.3g}×") if speed else (lambda v: f"{v:+.3f}")
    lo, hi = c["ci_low"], c["ci_high"]
    ci = "" if lo is None else f" [{show(lo)}, {show(hi)}]"
    return f"**{c.get('label', c['verdict'])}** ({c['n']} seeds, {show(c['mean'])}{ci})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", help="the JSON from `transfuse report --format json`")
    a = ap.parse_args()
    res = json.load(open(a.results))
    comps = res["comparisons"]
    ev = res["evaluation"]
    counts = Counter(c.get("label", c["verdict"]) for c in comps)
    print(f"study {res['study']}: {len(comps)} questions, {res['family_size']} in the family "
          f"({ev['multiplicity']}, α = {ev['alpha']}), margin ±{ev['margin']} {res['metric'].upper()}; "
          + ", ".join(f"{n} {v}" for v, n in sorted(counts.items())))
    if ev.get("sequential"):
        s = ev["sequential"]
        print(f"looks at {s['looks']} seeds, alpha per look "
              + ", ".join(f"{x:.4g}" for x in s["levels"]))
    rows: dict[tuple, dict[str, str]] = defaultdict(dict)
    endpoints: list[str] = []
    for c in comps:
        rows[(c["model"], c["size"], c["arm"])][c["endpoint"]] = _cell(c)
        if c["endpoint"] not in endpoints:
            endpoints.append(c["endpoint"])
    print()
    print("| model | n_train | arm vs " + ev["reference"] + " | " + " | ".join(endpoints) + " |")
    print("|---|---|---|" + "---|" * len(endpoints))
    for (model, size, arm), by in rows.items():
        print(f"| {model} | {size} | {arm} | " + " | ".join(by.get(e, "–") for e in endpoints) + " |")
    print()
    for r in res["recommendations"]:
        print(f"- {r['model']}, n_train {r['size']}: {r['text']}")


if __name__ == "__main__":
    main()
