"""``transfuse report``: a study's report as self-contained HTML or as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import TransfuseError, check_name
from ._common import HelpFormatter, add_workspace, workspace_of

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    rep = sub.add_parser("report", help="write a study's report: self-contained HTML or JSON",
                         formatter_class=HelpFormatter)
    rep.set_defaults(func=_report)
    add_workspace(rep, positional=True, help="the workspace the study ran in")
    rep.add_argument("--study", default=None,
                     help="study name (see `transfuse runs list`; default: the --study-file's name)")
    rep.add_argument("--study-file", default=None, metavar="FILE",
                     help="judge this version of the study file: its cells, thresholds and "
                          "evaluation, not those its last `study run` recorded (default: the "
                          "recorded ones)")
    rep.add_argument("--format", default="html", choices=("html", "json"),
                     help="html: the report; json: every cell, comparison and verdict, schema "
                          "transfuse.study-results/2 (default html)")
    rep.add_argument("--sections", default=None, metavar="NAMES",
                     help="also compute these analyses on the study's store and add them to the "
                          "report (HTML sections; the JSON's 'analyses'): a comma list of "
                          "forgetting, change, transferability (default: none; each runs forward "
                          "passes over the study's runs)")
    rep.add_argument("--device", default=None, help="--sections: cpu, cuda or cuda:N for their "
                     "forward passes (default: cpu)")
    rep.add_argument("-o", "--output", default=None,
                     help="file to write (default WORKSPACE/report-STUDY.html or .json)")


def _report(a: argparse.Namespace) -> int:
    from ..report.analyses import parse_sections
    from ..report.study import build_report

    names = parse_sections(a.sections)  # a typo fails before anything is computed

    ws = workspace_of(a)
    spec = None
    if a.study_file is not None:
        from ..study import load_study

        spec = load_study(a.study_file)
        if a.study is not None and a.study != spec.name:
            raise TransfuseError(f"--study {a.study!r} differs from the name {spec.name!r} in "
                                 f"{a.study_file}; give one of them")
        a.study = spec.name
    if a.study is None:
        raise TransfuseError("give --study NAME (see `transfuse runs list`) or --study-file FILE")
    ext = "json" if a.format == "json" else "html"
    out = a.output or str(Path(ws) / f"report-{check_name(a.study, field='--study')}.{ext}")
    path = build_report(workspace=ws, study=a.study, out=out, format=a.format, study_spec=spec,
                        analyses=names, device=a.device)
    print(f"report: {path.resolve()}")
    return 0
