"""``transfuse rank-sources``: transferability estimators before training, and how well they
predicted a finished study."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import HelpFormatter, add_device, add_workspace, workspace_of

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rank-sources", formatter_class=HelpFormatter,
                       help="score candidate sources on a dataset before training (LogME, LEEP, "
                            "NCE, H-score, probe), or check those scores against a study's outcomes")
    p.set_defaults(func=_rank)
    p.add_argument("dataset", nargs="?", default=None,
                   help="target dataset, e.g. medmnist:retinamnist@28 (default: none; not used "
                        "with --check-against)")
    p.add_argument("--model", default=None, help="model to build for every source (default: none; "
                   "required with DATASET)")
    p.add_argument("--source", action="append", default=[],
                   help="a candidate: a source (imagenet:efficientnet_lite0, run:ID, ssl:NAME, "
                        "loaded with the pretrained init) or an init without one (random); "
                        "repeat (default: none)")
    p.add_argument("--data-root", default=None, help="folder of the dataset files (default: "
                   "$TRANSFUSE_DATA or the family's default)")
    p.add_argument("--n-train", type=int, default=None, help="training examples to keep (default all)")
    p.add_argument("--image-size", type=int, default=None, help="resize images (default: native)")
    p.add_argument("--estimators", default=None,
                   help="comma-separated: logme,leep,nce,hscore,probe (default: all)")
    p.add_argument("--max-examples", type=int, default=2000,
                   help="score at most this many training examples (default 2000)")
    p.add_argument("--check-against", default=None, metavar="PATH",
                   help="a study's workspace or results JSON: Kendall tau between each estimator's "
                        "ranking of the arms and their real test scores, per model x size, with a "
                        "bootstrap interval over seeds (default: no check)")
    p.add_argument("--study", default=None, help="--check-against a workspace: the study's name "
                   "(default: the --study-file's name)")
    p.add_argument("--study-file", default=None,
                   help="the study file (needed with a results JSON) (default: none)")
    p.add_argument("--bootstrap", type=int, default=2000,
                   help="bootstrap resamples of the seeds (default 2000)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON "
                   "(default: print only)")
    add_workspace(p)
    add_device(p)


def _fmt(x: float | None, nd: int = 3) -> str:
    return "–" if x is None else f"{x:.{nd}f}"


def _rank(a: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..transferability.rank import check_against, rank_sources

    est = [e.strip() for e in a.estimators.split(",")] if a.estimators else None
    device = None if a.device in (None, "auto") else a.device
    if a.check_against is not None:
        if a.dataset or a.source:
            raise ConfigError("--check-against takes the study's own data and arms: drop DATASET "
                              "and --source")
        ws = a.workspace  # -w: where run:/ssl: sources live (default: the study's own place)
        agree, skipped = check_against(a.check_against, study=a.study, study_file=a.study_file,
                                       workspace=ws, estimators=est, device=device,
                                       max_examples=a.max_examples, n_boot=a.bootstrap,
                                       data_root=a.data_root)
        print("Kendall tau between each estimator's ranking of the arms and their mean test score "
              "[95 % bootstrap interval over seeds]")
        for g in agree:
            print(f"  {g.model} · n_train={g.size} · {g.estimator:7s} tau {_fmt(g.tau, 2)} "
                  f"[{_fmt(g.ci_low, 2)}, {_fmt(g.ci_high, 2)}]  ({len(g.arms)} arms, "
                  f"{g.n_seeds} seeds: {', '.join(g.arms)})")
        for cell, why in skipped.items():
            print(f"  not scored: {cell}: {why}")
        if a.json:
            Path(a.json).write_text(json.dumps({"agreements": [g.to_dict() for g in agree],
                                                "skipped": skipped}, indent=2) + "\n")
        return 0
    if not a.dataset or not a.model:
        raise ConfigError("give DATASET and --model with one or more --source, or --check-against "
                          "PATH")
    rows = rank_sources(dataset=a.dataset, model=a.model, sources=a.source,
                        workspace=workspace_of(a), data_root=a.data_root, n_train=a.n_train,
                        image_size=a.image_size, estimators=est, device=device,
                        max_examples=a.max_examples)
    names = list(rows[0].scores)
    print(f"{a.dataset} · {a.model}: {rows[0].n} training examples, features of the stage below "
          "the head (higher is better; seconds in brackets)")
    for r in rows:
        cells = "  ".join(f"{n} {_fmt(r.scores[n])} [{r.seconds.get(n, 0):.2f}s]" for n in names)
        print(f"  {r.label:32s} {cells}  (features {r.feature_seconds:.1f}s, dim {r.dim})")
        for n, why in r.errors.items():
            print(f"    {n}: not scored ({why})")
    if a.json:
        Path(a.json).write_text(json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
    return 0
