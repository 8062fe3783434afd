"""``transfuse runs list|show|export|check``: read the run store of a workspace. Nothing is changed.

``list`` and ``show`` print a run whose owner process is gone (killed, crashed) as ``stale``;
``check`` runs SQLite's integrity check and lists finished runs whose folders lack their files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import StoreError
from ._common import HelpFormatter, add_workspace, workspace_of

__all__ = ["add_parser", "RESUME_HINT"]

RESUME_HINT = ("stale: its process is gone (killed or crashed); run the same `transfuse train ...` "
               "or `transfuse study run FILE` again to restart it from scratch")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``runs`` command and its subcommands."""
    runs = sub.add_parser("runs", help="inspect stored runs")
    rs = runs.add_subparsers(dest="runs_cmd", required=True)
    helps = {"list": "one line per run: id, status, data, model, init, seed, test score",
             "show": "one run: spec, result, init report per stage",
             "export": "every stored metric as CSV or JSON",
             "check": "check the store's integrity and the run folders"}
    for name, what in helps.items():
        q = rs.add_parser(name, help=what, formatter_class=HelpFormatter)
        q.set_defaults(func=_runs)
        add_workspace(q)
        if name == "show":
            q.add_argument("run_id", help="run id or a unique prefix")
            q.add_argument("--json", action="store_true",
                           help="the full record as JSON (default: a readable summary)")
        elif name != "check":
            q.add_argument("--study", help="only this study's runs (default: every run)")
        if name == "export":
            q.add_argument("--format", choices=("csv", "json"), default="csv", help="output format")
            q.add_argument("-o", "--output", help="file to write (default: standard output)")


def _show_run(r, test: dict) -> None:
    """Human-readable view of one run: spec, result, and the init report per stage."""
    sp = r.spec
    print(f"run {r.run_id}  [{r.state}]  study={r.study or '-'}")
    print(f"  data   {sp['data']['name']}  n_train={sp['data'].get('n_train')}  "
          f"split sizes {r.data_info.get('split_sizes', {})}")
    print(f"  model  {sp['model']['name']} ({r.model_info.get('spatial_dims')}D, "
          f"{r.model_info.get('parameters', '?')} parameters)")
    print(f"  init   {sp['init']['name']}" + (f"  source {sp['init']['source']}" if sp['init'].get('source') else ""))
    t = sp["train"]
    print(f"  train  {t['steps'] or str(t['epochs']) + ' epochs'} steps  lr {t['lr']}  {t['optimizer']}/"
          f"{t['schedule']}  batch {t['batch_size']}  seed {sp['seed']}")
    if test:
        per = ", ".join(f"{k[4:]} {v:.3f}" for k, v in test.items() if k.startswith("auc/") and v is not None)
        auc, acc = test.get("auc"), test.get("acc")
        print(f"  test   AUC {auc if auc is None else f'{auc:.4f}'}  acc {acc if acc is None else f'{acc:.4f}'}  ({per})")
    if r.summary:
        print(f"  best step {r.summary.get('best_step')}  train {r.summary.get('train_seconds')} s  "
              f"wall {_seconds(r.wall_seconds)} s  {r.summary.get('examples_per_second')} ex/s")
    if r.error:
        print(f"  error  {r.error}")
    if r.state == "stale":
        print(f"  {RESUME_HINT}")
    rep = r.init_report or {}
    if rep.get("tensors"):
        print(f"  init report: {rep.get('counts')}")
        for note in rep.get("notes", []):
            print(f"    note: {note}")
        stages: dict[str, dict[str, int]] = {}
        for rec in rep["tensors"]:
            stages.setdefault(rec["stage"], {}).setdefault(rec["action"], 0)
            stages[rec["stage"]][rec["action"]] += 1
        for stage, acts in stages.items():
            print(f"    {stage:<10} " + ", ".join(f"{n} {k}" for k, n in sorted(acts.items())))
    print(f"  checkpoints {r.run_dir}  (full record: transfuse runs show {r.run_id} --json)")


def _seconds(v: float | None) -> str:
    """A stored duration as printed everywhere (3 decimals), so printed and stored agree."""
    return "-" if v is None else f"{round(v, 3)}"


def _list(store, study: str | None) -> None:
    runs = store.list_runs(study=study)
    mw = max([14] + [len(r.spec["model"]["name"]) for r in runs])
    print(f"{'run_id':<13} {'status':<9} {'dataset':<28} {'model':<{mw}} {'init':<20} {'seed':>4} "
          f"{'test score':>16}")
    stale = 0
    for r in runs:
        score = ""
        if r.status == "finished":  # AUC, or mean foreground Dice for segmentation runs
            final = store.final_metrics(r.run_id)
            name = "dice" if r.data_info.get("task") == "segmentation" else "auc"
            if final.get(name) is not None:
                score = f"{name.upper() if name == 'auc' else 'Dice'} {final[name]:.4f}"
        state = r.state
        stale += state == "stale"
        print(f"{r.run_id:<13} {state:<9} {r.spec['data']['name'][:28]:<28} "
              f"{r.spec['model']['name']:<{mw}} {r.spec['init']['name'][:20]:<20} {r.spec['seed']:>4} "
              f"{score:>16}")
    if stale:
        print(f"{stale} run(s) {RESUME_HINT}")


def _check(workspace: str) -> int:
    from ..store import RUN_FILES, check_store

    res = check_store(workspace)
    print(f"store {res.path}: integrity " + ("ok" if not res.integrity else
                                             f"FAILED ({len(res.integrity)} problem(s))"))
    for p in res.integrity[:20]:
        print(f"  {p}")
    if res.integrity:
        print(f"  recover: restore a backup, or `sqlite3 {res.path} .recover | sqlite3 "
              f"{Path(workspace) / 'recovered.db'}` and put recovered.db in place of transfuse.db")
    if res.missing:
        print(f"{len(res.missing)} finished run(s) lack files of their folder ({', '.join(RUN_FILES)}):")
        for rid, files in res.missing.items():
            print(f"  {rid}  missing {', '.join(files)}")
    elif not res.runs_checked:
        print("run folders: not checked (the runs table cannot be read)")
    else:
        print("run folders: every finished run has its files")
    for rid in res.stale:
        print(f"  {rid}  {RESUME_HINT}")
    for t in res.temporary:
        print(f"  leftover temporary file {t} (an interrupted write; safe to delete)")
    return 0 if res.ok else 1


def _runs(a: argparse.Namespace) -> int:
    """Handler of ``transfuse runs ...``; returns the exit status (``check``: 1 when a problem
    is found)."""
    from ..store import Store

    ws = workspace_of(a)
    if not (Path(ws) / "transfuse.db").is_file():
        raise StoreError(f"no run store in {ws}; pass -w/--workspace or train a run first")
    if a.runs_cmd == "check":
        return _check(ws)
    store = Store(ws)
    if a.runs_cmd == "list":
        _list(store, a.study)
        return 0
    if a.runs_cmd == "show":
        r = store.get_run(a.run_id)
        test = store.final_metrics(r.run_id)
        if a.json:
            print(json.dumps({"run_id": r.run_id, "status": r.status, "state": r.state,
                              "study": r.study, "spec": r.spec, "summary": r.summary, "test": test,
                              "init_report": r.init_report, "data": r.data_info,
                              "model": r.model_info, "env": r.env, "error": r.error,
                              "run_dir": r.run_dir, "started": r.started, "finished": r.finished,
                              "wall_seconds": r.wall_seconds}, indent=2))
        else:
            _show_run(r, test)
        return 0
    text = store.export(fmt=a.format, study=a.study)
    if a.output:
        Path(a.output).write_text(text)
        print(f"wrote {a.output}")
    else:
        sys.stdout.write(text)
    return 0
