"""``transfuse study run|status|plan|check``: parse → library call → print."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, check_name
from ._common import (HelpFormatter, add_device, add_mlflow, add_overrides, add_progress,
                      add_tensorboard, add_workspace, workspace_of)

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    study = sub.add_parser("study", help="run a grid of runs from a YAML study file")
    ss = study.add_subparsers(dest="study_cmd", required=True)
    for name, what in (("run", "run every missing run of the study (rerun resumes)"),
                       ("status", "which runs are finished, running, stale, failed or missing"),
                       ("plan", "per comparison: paired SD, verdict, seeds needed; before the first run from "
                                "earlier studies, --pilot N or --sd X, with cost and design advice"),
                       ("check", "build every cell, resolve every source, check every size; "
                                 "train nothing (exit 2 listing every problem)")):
        q = ss.add_parser(name, help=what, formatter_class=HelpFormatter)
        q.set_defaults(func=_study)
        q.add_argument("file", help="study YAML file (see examples/)")
        add_workspace(q)
        q.add_argument("--smoke", action="store_true",
                       help="the shrunk, sub-minute version, a pilot (default: the full study)")
        add_overrides(q, what="the study: run keys (train.lr, data.n_train, seed) set the base "
                      "spec, so every cell; also grid.AXIS=[...], evaluation.KEY, "
                      "pretrain.NAME.KEY", example="--set train.lr=0.05 --set grid.seed=[0,1]")
        if name == "run":
            q.add_argument("--workers", type=int, default=None,
                           help="parallel local processes / Ray CPUs (default: one per GPU slot, "
                                "GPUs x --runs-per-device; 1 on the CPU)")
            q.add_argument("--devices", default="auto",
                           help="local workers' GPUs: auto (every visible GPU, else CPU), cpu, or "
                                "numbers such as 0,1,3; each worker sees only its GPU (default auto)")
            q.add_argument("--runs-per-device", type=int, default=1,
                           help="concurrent runs per GPU (default 1)")
            q.add_argument("--gpus-per-run", type=float, default=None,
                           help="Ray: GPUs each run requests, fractions allowed (default: 1 where "
                                "the cluster has GPUs, else 0)")
            q.add_argument("--cpus-per-run", type=float, default=1.0,
                           help="Ray: CPUs each run requests and the torch threads it uses (default 1)")
            q.add_argument("--executor", default="local", choices=("local", "ray"),
                           help="where runs execute (default local)")
            q.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
            q.add_argument("--cohort", default="auto", metavar="auto|off|N",
                           help="train runs that differ only in seed and init together as one "
                                "vectorised model, each stored as its own run: auto (on CUDA, "
                                "cohorts that fit the GPU's memory; off on the CPU; on Ray up to 8 "
                                "where tasks get GPUs, each cohort one Ray task), off, or the "
                                "largest cohort size (default auto)")
            add_device(q)
            add_progress(q)
            add_tensorboard(q)
            add_mlflow(q)
            q.add_argument("--report", nargs="?", const="", default=None, metavar="HTML",
                           help="then write the study report to HTML (without a value: WORKSPACE/report-STUDY.html; "
                                 "default: no report)")
            q.add_argument("--until-decided", action="store_true",
                           help="add seeds, in batches, to cells with an undecided comparison until "
                                "all are decided or --max-seeds is reached (O'Brien-Fleming alpha "
                                "spending over the looks; default: the grid's seeds only)")
            q.add_argument("--max-seeds", type=int, default=10,
                           help="--until-decided: most seeds per cell (default 10)")
            q.add_argument("--seed-batch", type=int, default=2,
                           help="--until-decided: seeds added per look (default 2)")
        elif name == "plan":
            q.add_argument("--pilot", type=int, default=None, metavar="N",
                           help="first run N seeds of every cell (real runs of the study, as "
                                "`study run` with the same --smoke/--set would run them), then "
                                "plan from their paired SDs (default: plan from the study's runs, "
                                "else from finished studies on the same data and model)")
            q.add_argument("--sd", type=float, default=None, metavar="X",
                           help="plan the final-score questions from this paired SD of the "
                                "difference (default: from runs, as above)")
            q.add_argument("--max-seeds", type=int, default=10,
                           help="the seeds per cell you can afford: the plan gives the margin "
                                "they decide (default 10)")
            add_device(q)
            add_progress(q)
        elif name == "status":
            q.add_argument("-v", "--verbose", action="store_true",
                           help="one line per run (default: counts only)")


def _placement(a: argparse.Namespace) -> Any:
    from ..study.placement import Placement

    if a.device is not None and a.devices != "auto":
        raise ConfigError(f"give --device {a.device} (one device for every run) or --devices "
                          f"{a.devices} (one per worker), not both")
    return Placement(devices=a.devices, runs_per_device=a.runs_per_device,
                     gpus_per_run=a.gpus_per_run, cpus_per_run=a.cpus_per_run)


def _print_outcome(out, a: argparse.Namespace) -> None:
    print(f"study {out.study}: {out.total} runs — {len(out.finished)} trained now, "
          f"{len(out.skipped)} already finished, {len(out.busy)} running elsewhere (or waiting for a pretraining run that is), "
          f"{len(out.failed)} failed")
    for rid, msg in out.failed.items():
        print(f"  run {rid} failed: {msg}", file=sys.stderr)


def _plan(a: argparse.Namespace, study) -> int:
    from ..store import Store
    from ..study.plan import plan_lines, plan_study, verdict_plan
    from ..study.plan_advice import advice_lines, cost_lines

    name = f"{study.name}-smoke" if a.smoke else study.name
    ws = Path(workspace_of(a))
    store = Store(ws) if (ws / "transfuse.db").is_file() else None
    own = store is not None and any(store.list_runs(study=name, status="finished"))
    if own and a.pilot is None and a.sd is None:  # the study's own runs: its verdicts
        for line in verdict_plan(store, name, evaluation=study.evaluation, max_seeds=a.max_seeds):
            print(line)
        return 0
    plan, ran, ok = plan_study(study, workspace=ws, file=a.file, smoke=a.smoke, pilot=a.pilot,
                               sd=a.sd, max_seeds=a.max_seeds, sets=a.set or (), device=a.device,
                               progress=not a.no_progress)
    store = Store(ws) if (ws / "transfuse.db").is_file() else None
    for line in [*ran, *plan_lines(plan), *(f"  {x}" for x in cost_lines(plan, store)),
                 *(f"  {x}" for x in advice_lines(plan, store))]:
        print(line)
    return 0 if ok else 1


def _train_size(spec) -> str:
    d = spec.data
    return str(d.n_train) if d.n_train is not None else (f"{d.fraction:.0%}" if d.fraction else "all")


def _print_left_out(workspace: str, name: str, ids: set[str]) -> None:
    """One line when finished runs of an earlier version of the study are stored (not counted)."""
    if not (Path(workspace) / "transfuse.db").is_file():
        return
    from ..store import Store
    from ..decide.selection import select_runs

    records = [r for r in Store(workspace).list_runs(study=name) if not r.spec.get("parent")]
    _, left = select_runs(records, current=ids)
    if left:
        print(f"  {len(left)} finished run(s) stored under {name!r} are not cells of this file "
              "(an earlier version); reports leave them out (`transfuse report --study-file OLD.yaml` "
              "judges that version)")


def _study(a: argparse.Namespace) -> int:
    from ..spec.kinds import load_file
    from ..study import expand, study_status

    # run/check report every cell's problems at once (study.check), not the first bad cell
    study = load_file("study", a.file, sets=a.set or (),
                      validate=a.study_cmd not in ("run", "check"))
    if a.set:
        if a.study_cmd == "plan":
            expand(study, smoke=a.smoke)  # the overridden cells are valid run specs
    if a.study_cmd == "check":  # (run: run_study checks first, the same way)
        from ..study.check import check_study

        report = check_study(study, workspace=workspace_of(a), smoke=a.smoke)
        report.raise_if_invalid()  # exit 2, one line per problem
        print(report.summary())
        return 0
    if a.study_cmd == "status":
        rows = study_status(study, workspace=workspace_of(a), smoke=a.smoke)
        counts: dict[str, int] = {}
        lines = []
        from ..arms import arm_labels

        arms = arm_labels([spec.to_dict() for spec, _, _ in rows])  # as the report labels them
        for (spec, rid, status), arm in zip(rows, arms):
            counts[status] = counts.get(status, 0) + 1
            lines.append([rid, status, spec.data.name, spec.model.name, arm,
                          _train_size(spec), str(spec.seed)])
        if a.verbose and lines:
            lines.insert(0, ["run_id", "status", "dataset", "model", "arm", "n_train", "seed"])
            widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
            for r in lines:
                print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        name = rows[-1][0].study if rows else study.name
        print(f"study {name}: {len(rows)} runs — " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
        _print_left_out(workspace_of(a), name, {rid for _, rid, _ in rows})
        return 0
    if a.study_cmd == "plan":
        return _plan(a, study)
    if a.mlflow is not None:
        from ..tracking import check_mlflow

        check_mlflow()  # before any run: a missing package is bad input
    if a.until_decided:
        if a.smoke:
            raise ConfigError("--until-decided needs the real study: a --smoke study is a pilot "
                              "and decides nothing")
        from ..study.adaptive import describe, run_until_decided

        ad = run_until_decided(study, workspace=workspace_of(a), max_seeds=a.max_seeds,
                               batch=a.seed_batch, workers=a.workers, executor=a.executor,
                               address=a.address, device=a.device, progress=not a.no_progress,
                               tensorboard=a.tensorboard, placement=_placement(a),
                               cohort=a.cohort)
        _print_outcome(_whole_call(ad.outcomes), a)  # what this call trained, over every look
        for line in describe(ad):
            print(line)
        name, ok = ad.study, ad.ok
    else:
        from ..study import run_study

        out = run_study(study, workspace=workspace_of(a), workers=a.workers, executor=a.executor,
                        address=a.address, smoke=a.smoke, device=a.device,
                        progress=not a.no_progress, tensorboard=a.tensorboard,
                        placement=_placement(a), cohort=a.cohort)
        _print_outcome(out, a)
        name, ok = out.study, out.ok
    print(f"  results in {Path(workspace_of(a)) / 'transfuse.db'}")
    if a.report is not None:
        from ..report.study import build_report

        dest = a.report or str(Path(workspace_of(a)) / f"report-{check_name(name, field='study')}.html")
        report = build_report(workspace=workspace_of(a), study=name, out=dest).resolve()
        print(f"report: {report}")
    if a.mlflow is not None:
        _log_mlflow(a, name, report if a.report is not None else None)
    return 0 if ok else 1


def _whole_call(outcomes: list) -> Any:
    """The looks of an adaptive call as one outcome: runs trained by any look, runs already
    finished before the call (a later look's "skipped" holds the earlier looks' runs)."""
    from ..study.runner import StudyOutcome

    last = outcomes[-1]
    out = StudyOutcome(study=last.study, total=last.total, busy=list(last.busy),
                       preempted=list(last.preempted))
    for o in outcomes:
        out.finished += o.finished
        out.failed.update(o.failed)
    out.skipped = [r for r in outcomes[0].skipped]
    return out


def _log_mlflow(a: argparse.Namespace, study: str, report: Path | None) -> None:
    """``--mlflow``: every finished run of the study (those not logged yet) and its report."""
    from ..store import Store
    from ..tracking import log_run, log_study_report, tracking_uri

    uri = tracking_uri(a.mlflow, workspace_of(a))
    store = Store(workspace_of(a))
    runs = [r for r in store.list_runs(study=study) if r.status == "finished"]
    for r in runs:
        log_run(store, r.run_id, uri=uri)
    if report is not None:
        log_study_report(uri, study=study, report=report)
    print(f"mlflow: {len(runs)} runs of study {study} in {uri}")
