"""``transfuse report``: a study's report as self-contained HTML or as JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import check_name
from ._common import HelpFormatter, add_workspace, workspace_of

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    rep = sub.add_parser("report", help="write a study's report: self-contained HTML or JSON",
                         formatter_class=HelpFormatter)
    rep.set_defaults(func=_report)
    add_workspace(rep, positional=True, help="the workspace the study ran in")
    rep.add_argument("--study", required=True, help="study name (see `transfuse runs list`)")
    rep.add_argument("--format", default="html", choices=("html", "json"),
                     help="html: the report; json: every cell, comparison and verdict, schema "
                          "transfuse.study-results/2 (default html)")
    rep.add_argument("-o", "--output", default=None,
                     help="file to write (default WORKSPACE/report-STUDY.html or .json)")


def _report(a: argparse.Namespace) -> int:
    from ..report.study import build_report

    ws = workspace_of(a)
    ext = "json" if a.format == "json" else "html"
    out = a.output or str(Path(ws) / f"report-{check_name(a.study, field='--study')}.{ext}")
    path = build_report(workspace=ws, study=a.study, out=out, format=a.format)
    print(f"report: {path.resolve()}")
    return 0
