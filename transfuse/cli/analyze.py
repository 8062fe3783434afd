"""``transfuse analyze``: SVCCA/PWCCA/CKA between layers and runs."""

from __future__ import annotations

import argparse

from pathlib import Path

from ._common import HelpFormatter, add_device, add_progress, add_workspace, workspace_of

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    an = sub.add_parser("analyze", help="SVCCA/PWCCA/CKA between layers and runs, weight change, filters",
                        formatter_class=HelpFormatter)
    an.set_defaults(func=_analyze)
    add_workspace(an, positional=True, help="the workspace the study ran in")
    an.add_argument("--study", required=True, help="study name (see `transfuse runs list`)")
    an.add_argument("--pairs", nargs="+", metavar="RUNID:RUNID", help="runs to compare layer by layer "
                    "(default: random seed A vs B, and random vs each other init, per model)")
    an.add_argument("--images", type=int, default=256, help="images per run (default 256)")
    an.add_argument("--split", default="test", help="split the images come from (default test)")
    an.add_argument("--policy", default="pool", help="conv maps: pool (global average) or positions")
    an.add_argument("--per-image", type=int, default=16, help="positions per image (--policy positions)")
    an.add_argument("--measures", default="linear_cka,svcca,pwcca",
                    help="comma list of cca, svcca, pwcca, linear_cka")
    an.add_argument("--keep", type=float, default=0.99, help="SVD variance fraction for svcca/pwcca")
    an.add_argument("--max-dims", type=int, help="cap on SVD directions (default datapoints/5)")
    an.add_argument("--checkpoint", default="best", help="trained checkpoint: best or last")
    an.add_argument("--seed", type=int, default=0, help="image subset, positions and chance shuffle")
    an.add_argument("--forgetting", action="store_true",
                    help="instead: how much of the source task each run forgot — the source's head "
                         "re-attached to the fine-tuned stem..stage k, scored on the source's test "
                         "split, per arm over seeds, each strategy vs full fine-tuning (runs with a "
                         "run: source; default: off)")
    an.add_argument("--change", action="store_true",
                    help="instead: why do large models change less — per model and stage, "
                         "CKA(init, final) on the probe images, relative weight change, "
                         "per-parameter update size and effective learning rate over seeds with "
                         "intervals, and verdicts between successive model sizes (default: off)")
    an.add_argument("--margin", type=float, default=None,
                    help="verdict margin: source-task AUC for --forgetting (default 0.01), CKA "
                         "for --change (default 0.05)")
    an.add_argument("--json", default=None, metavar="FILE",
                    help="--forgetting/--change: also write the results as JSON (default: print "
                         "only)")
    add_device(an, default="cpu")
    add_progress(an)


def _forgetting(a: argparse.Namespace) -> int:
    import json

    from ..analysis.forgetting import study_forgetting
    from ..analysis.forgetting_imagenet import study_imagenet_forgetting
    from ..errors import TransfuseError
    from ..store import Store

    store = Store(workspace_of(a))
    runs, curves = study_forgetting(store, a.study, device=a.device,
                                    margin=0.01 if a.margin is None else a.margin)
    inet = study_imagenet_forgetting(store, a.study, device=a.device)
    if not runs and inet is None:
        raise TransfuseError(f"study {a.study!r} has no finished run initialised from a run: source "
                             "or with ImageNet weights (a source with its own task head); nothing "
                             "to measure")
    if runs:
        print(f"study {a.study}: source-task macro AUC after keeping the fine-tuned stem..stage k "
              f"under the source's head ({len(runs)} runs; mean [95 % CI] over seeds)")
    _print_curves(curves)
    if inet is not None:
        print(f"study {a.study}: {inet.caption()} ({len(inet.runs)} runs; mean [95 % CI] over seeds)")
        _print_curves(inet.curves)
    if a.json:
        data = {"study": a.study, "curves": [c.to_dict() for c in curves],
                "runs": [r.__dict__ for r in runs]}
        if inet is not None:
            data["imagenet"] = inet.to_dict()
        Path(a.json).write_text(json.dumps(data, indent=2) + "\n")
    return 0


def _print_curves(curves: list) -> None:
    for c in curves:
        pts = "  ".join(f"{s} {m:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")
                        for s, m, lo, hi in zip(c.stages, c.mean, c.ci_low, c.ci_high))
        print(f"  {c.model} · n_train={c.size} · {c.arm} ({len(c.seeds)} seeds): {pts}")
        if not c.monotone:
            print("    not monotone within its intervals: a later stage's interval lies wholly "
                  "above an earlier one's")
        if c.verdict:
            v = c.verdict
            print(f"    vs {v['versus']} on the whole encoder: {v['verdict']} {v['mean']:+.3f} "
                  f"[{v['ci_low']:+.3f}, {v['ci_high']:+.3f}] ({v['n']} seeds, margin ±{v['margin']:g})")


def _analyze(a: argparse.Namespace) -> int:
    from ..analysis.runs import AnalysisOptions, analyze_study

    if a.forgetting and a.change:
        from ..errors import ConfigError

        raise ConfigError("--forgetting and --change are separate analyses; give one of them")
    if a.forgetting:
        return _forgetting(a)
    if a.change:
        from .analyze_change import change_command

        return change_command(a)

    measures = tuple(m.strip() for m in a.measures.split(",") if m.strip())
    opts = AnalysisOptions(images=a.images, split=a.split, policy=a.policy, per_image=a.per_image,
                           measures=measures, keep=a.keep, max_dims=a.max_dims,
                           checkpoint=a.checkpoint, seed=a.seed)
    out = analyze_study(workspace=workspace_of(a), study=a.study, pairs=a.pairs, options=opts,
                        device=a.device, progress=not a.no_progress)
    print(f"study {out.study}: analysed {len(out.runs)} runs and {len(out.pairs)} pairs in "
          f"{out.seconds:.1f} s — " + ", ".join(f"{n} {k}" for k, n in out.results.items()))
    for line in _pair_lines(out.pairs, workspace_of(a)):
        print(line)
    print(f"  results in {Path(workspace_of(a)) / 'transfuse.db'}; "
          f"show them with `transfuse report {workspace_of(a)} --study {out.study}`")
    return 0


def _pair_lines(pairs, workspace: str) -> list[str]:
    """``  baseline   cbr_tiny · random · seed 0  vs  cbr_tiny · random · seed 1  [id:id]``, aligned;
    the dataset and training-set size are added when the pairs span more than one of them."""
    from ..analysis.runs import run_info
    from ..store import Store

    store = Store(workspace)
    recs = {rid: store.get_run(rid) for p in pairs for rid in (p.a, p.b)}
    data = {rid: (r.spec["data"]["name"], run_info(r).size) for rid, r in recs.items()}
    several = len(set(data.values())) > 1

    def label(rid: str) -> str:
        sp = recs[rid].spec
        text = f"{sp['model']['name']} · {sp['init']['name']} · seed {sp['seed']}"
        return text + (f" · {data[rid][0]} n_train={data[rid][1]}" if several else "")

    rows = [(p.role, label(p.a), label(p.b), f"[{p.a}:{p.b}]") for p in pairs]
    w = [max([0, *(len(r[i]) for r in rows)]) for i in range(3)]
    return [f"  {r:<{w[0]}}  {la:<{w[1]}}  vs  {lb:<{w[2]}}  {ids}" for r, la, lb, ids in rows]


