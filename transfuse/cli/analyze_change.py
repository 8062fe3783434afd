"""``transfuse analyze WS --study S --change``: why do large models change less (text and JSON)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import workspace_of

__all__ = ["change_command", "change_lines"]


def _f(x: float | None, nd: int = 3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _ci(s: dict, nd: int = 3) -> str:
    if s["mean"] is None:
        return "–"
    if s["ci_low"] is None:
        return f"{s['mean']:.{nd}f}"
    return f"{s['mean']:.{nd}f} [{s['ci_low']:.{nd}f}, {s['ci_high']:.{nd}f}]"


def change_lines(data: dict) -> list[str]:
    """The printed summary of a :class:`~transfuse.analysis.change.ChangeResult`'s JSON."""
    out = [f"study {data['study']}: per stage, mean [95 % CI] over seeds of CKA(init, final), "
           "relative weight change, per-parameter update size (RMS) and effective learning rate"]
    for c in data["cells"]:
        out.append(f"  {c['model']} · n_train={c['size']} · {c['arm']} ({len(c['seeds'])} seeds, "
                   f"{c['parameters']:,} parameters)")
        for s in c["stages"]:
            out.append(f"    {s['stage']:8s} width {s['width']:5d}  CKA {_ci(s['cka'])}  "
                       f"Δ/‖W‖ {_ci(s['relative_change'])}  update {_ci(s['update_rms'], 4)}  "
                       f"eff. lr {_ci(s['effective_lr'], 4)}")
    if data["comparisons"]:
        out.append("size effect: CKA(init, final) larger − smaller model, paired by seed "
                   "(better = the larger model changed less)")
    for q in data["comparisons"]:
        iv = (f" [{q['ci_low']:+.3f}, {q['ci_high']:+.3f}]" if q["ci_low"] is not None else "")
        out.append(f"  {q['arm']} · n_train={q['size']} · {q['stage']}: {q['smaller']} → "
                   f"{q['larger']}: {q['verdict']} {_f(q['mean'])}{iv} ({q['n']} seeds, margin "
                   f"±{q['margin']:g})")
    out.append(data["tracks"]["sentence"])
    return out


def change_command(a: argparse.Namespace) -> int:
    from ..analysis.change import ChangeOptions, study_change

    opts = ChangeOptions(images=a.images, split=a.split, checkpoint=a.checkpoint, seed=a.seed,
                         margin=0.05 if a.margin is None else a.margin)
    res = study_change(workspace=workspace_of(a), study=a.study, options=opts, device=a.device,
                       progress=not a.no_progress)
    data = res.to_dict()
    for line in change_lines(data):
        print(line)
    if a.json:
        Path(a.json).write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    return 0
