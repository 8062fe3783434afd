"""``transfuse selftrain``: a teacher-student chain from a YAML file."""

from __future__ import annotations

import argparse

from pathlib import Path

from ._common import HelpFormatter, add_device, add_overrides, add_progress, add_workspace, workspace_of

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("selftrain", help="run a teacher-student self-training chain from a YAML file",
                       formatter_class=HelpFormatter)
    p.set_defaults(func=_selftrain)
    p.add_argument("file", help="chain YAML file (see examples/selftrain_*.yaml, docs/SELFTRAIN.md)")
    add_workspace(p)
    p.add_argument("--smoke", action="store_true", help="the shrunk, sub-minute version (default: the full chain)")
    p.add_argument("--status", action="store_true", help="show which runs are done; train nothing (default: run the chain)")
    add_device(p)
    add_progress(p)
    add_overrides(p, what="the chain file (train.*, data.* ... set base)",
                  example="--set generations=2 --set student.noise.dropout=0.3 --set train.lr=0.05")


def _selftrain(a: argparse.Namespace) -> int:
    from ..selftrain import chain_status, run_chain
    from ..spec.kinds import load_file
    from ..report.selftrain import chain_rows, chain_verdict, format_rows
    from ..store import Store

    chain = load_file("chain", a.file, sets=a.set or ())
    if a.status:
        for seed, role, gen, rid, status in chain_status(chain, workspace=workspace_of(a), smoke=a.smoke):
            what = f"generation {gen}" if gen is not None else f"baseline {role}"
            print(f"  seed {seed:<3} {what:<18} {rid}  {status}")
        return 0
    out = run_chain(chain, workspace=workspace_of(a), smoke=a.smoke, device=a.device,
                    progress=not a.no_progress)
    done = sum(not r.skipped for r in out.runs)
    print(f"chain {out.chain}: {len(out.runs)} runs — {done} trained now, "
          f"{len(out.runs) - done} already finished")
    headers, rows = format_rows(chain_rows(Store(workspace_of(a)), out.chain))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(line, widths)))
    print(chain_verdict(chain_rows(Store(workspace_of(a)), out.chain)))
    print(f"  results in {Path(workspace_of(a)) / 'transfuse.db'}; report: transfuse report "
          f"{workspace_of(a)} --study {out.chain}")
    return 0


