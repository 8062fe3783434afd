"""``transfuse runs list|show|export|check``: read the run store of a workspace. Nothing is changed.

``list`` and ``show`` print a run whose owner process is gone (killed, crashed) as ``stale``;
``check`` runs SQLite's integrity check and lists finished runs whose folders lack their files;
``show --follow`` polls the store and prints each evaluation of a running run as it is stored.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..atomic import write_text
from ..errors import ConfigError, StoreError
from ._common import HelpFormatter, add_workspace, workspace_of

__all__ = ["add_parser", "RESUME_HINT"]

RESUME_HINT = ("stale: its process is gone (killed, crashed, or stopped by SIGTERM or Ctrl-C); run "
               "the same `transfuse train ...` or `transfuse study run FILE` again to restart it "
               "(from its last checkpoint, if it wrote one)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``runs`` command and its subcommands."""
    runs = sub.add_parser("runs", help="inspect stored runs")
    rs = runs.add_subparsers(dest="runs_cmd", required=True)
    helps = {"list": "one line per run: id, status, data, model, init, seed, test score",
             "show": "one run: spec, result, init report per stage (--follow: tail it live)",
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
            q.add_argument("-f", "--follow", action="store_true",
                           help="tail a running run: print each evaluation as it is stored, then "
                                "the test line when the run ends (default: show once)")
            q.add_argument("--interval", type=float, default=1.0,
                           help="--follow: seconds between polls of the store")
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
    from ..arms import arm_label

    print(f"  arm    {arm_label(sp, {sp['init']['name']})}")
    t = sp["train"]
    print(f"  train  {t['steps'] or str(t['epochs']) + ' epochs'} steps  lr {t['lr']}  {t['optimizer']}/"
          f"{t['schedule']}  batch {t['batch_size']}  seed {sp['seed']}")
    how = [f"{k} {t[k]}" for k in ("finetune", "layer_decay", "head_lr_mult", "augment") if k in t]
    how += ["freeze_bn"] if t.get("freeze_bn") else []
    ft = r.model_info.get("finetune") or {}
    if how or ft.get("trainable_parameters") not in (None, r.model_info.get("parameters")):
        print(f"  tune   {'  '.join(how) or 'full'}  ({ft.get('trainable_parameters', '?')} trainable "
              f"parameters)")
    if test:
        order = {n: i for i, n in enumerate(r.data_info.get("class_names") or [])}  # class order
        per = ", ".join(f"{k[4:]} {v:.3f}" for k, v in sorted(test.items(), key=lambda kv: (
            order.get(kv[0][4:], len(order)), kv[0])) if k.startswith("auc/") and v is not None)
        auc, acc = test.get("auc"), test.get("acc")
        print(f"  test   AUC {auc if auc is None else f'{auc:.4f}'}  acc {acc if acc is None else f'{acc:.4f}'}  ({per})")
    if test and test.get("ece") is not None:
        print("  " + _clinical_line(test))
    if r.summary:
        print(f"  best step {r.summary.get('best_step')}  train {r.summary.get('train_seconds')} s  "
              f"wall {_seconds(r.wall_seconds)} s  {r.summary.get('examples_per_second')} ex/s"
              + (f"  resumed from step {r.summary['resumed_from']}"
                 if r.summary.get("resumed_from") is not None else ""))
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


def _clinical_line(test: dict[str, float | None]) -> str:
    """``clinical  threshold 0.41 (chosen on val)  sensitivity 0.905  specificity 0.781 …``."""
    f = lambda v: "undefined" if v is None else f"{v:.3f}"  # noqa: E731  (NaN is stored as None)
    parts = []
    if "threshold" in test:
        parts.append(f"threshold {f(test['threshold'])} (chosen on val)")
        parts += [f"{k.replace('_', ' ')} {f(test.get(k))}" for k in
                  ("sensitivity", "specificity", "balanced_acc", "ppv", "npv")]
    parts += [f"ECE {f(test.get('ece'))}", f"Brier {f(test.get('brier'))}"]
    return "clinical  " + "  ".join(parts)


def _num(name: str, v: float | None) -> str:
    if v is None:
        return "undefined"  # NaN is stored as NULL
    return f"{v:.3g}" if name == "lr" else f"{v:.4f}"


def _eval_line(label: str, split: str, metrics: dict[str, float | None]) -> str:
    """``  step   50  val    acc 0.7000  auc 0.8123  loss 0.6931``: the summary metrics of one
    evaluation, by name (per-class ``name/class`` values are in ``metrics.csv`` and ``runs export``)."""
    vals = "  ".join(f"{n} {_num(n, v)}" for n, v in metrics.items() if "/" not in n)
    return f"  {label}  {split:<5}  {vals}"


def _follow(store, run_id: str, *, interval: float) -> int:
    """``runs show RUN --follow``: print each new evaluation of the run as the store gets it, until
    the run is finished (then its test line; exit 0), failed or stale (exit 1). Ctrl-C: exit 0."""
    import time

    r = store.get_run(run_id)
    rid, sp, started = r.run_id, r.spec, r.started
    print(f"run {rid}  [{r.state}]  {sp['model']['name']} on {sp['data']['name']} "
          f"(init {sp['init']['name']}, seed {sp['seed']})", flush=True)
    width = max(4, len(str(sp["train"].get("steps") or "")))
    seen: set[tuple[int, str]] = set()
    try:
        while True:
            r = store.get_run(rid)  # state before metrics: once it is final, the metrics are too
            if r.started != started:  # restarted from scratch: its evaluations start over
                started, seen = r.started, set()
                print("  (the run restarted from scratch)", flush=True)
            evals: dict[tuple[int, str], dict[str, float | None]] = {}
            for step, split, name, v in store.metrics(rid):
                if split != "test":
                    evals.setdefault((step, split), {})[name] = v
            for key in sorted(set(evals) - seen):
                print(_eval_line(f"step {key[0]:>{width}}", key[1], evals[key]), flush=True)
                seen.add(key)
            if r.state in ("finished", "failed", "stale"):
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    if r.state == "finished":
        best = r.summary.get("best_step")
        print(_eval_line(f"step {best:>{width}}", "test", store.final_metrics(rid))
              + "  (the best-on-validation checkpoint)", flush=True)
        return 0
    print(f"  run {rid} failed: {r.error}" if r.state == "failed" else f"  {RESUME_HINT}", flush=True)
    return 1


def _seconds(v: float | None) -> str:
    """A stored duration as printed everywhere (3 decimals), so printed and stored agree."""
    return "-" if v is None else f"{round(v, 3)}"


def _list(store, study: str | None) -> None:
    runs = store.list_runs(study=study)
    from ..arms import arm_labels

    header = ["run_id", "status", "dataset", "model", "arm", "seed", "test score"]
    rows = []
    stale = 0
    arms = arm_labels([r.spec for r in runs])  # init · source · fine-tuning …, as the report
    for r, arm in zip(runs, arms):
        score = ""
        if r.status == "finished":  # AUC, or mean foreground Dice for segmentation runs
            final = store.final_metrics(r.run_id)
            name = "dice" if r.data_info.get("task") == "segmentation" else "auc"
            if final.get(name) is not None:
                score = f"{name.upper() if name == 'auc' else 'Dice'} {final[name]:.4f}"
        state = r.state
        stale += state == "stale"
        rows.append([r.run_id, state, r.spec["data"]["name"], r.spec["model"]["name"],
                     arm, str(r.spec["seed"]), score])
    # every column as wide as its longest entry: nothing is cut; seed and score align right
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for line in [header, *rows]:
        cells = [c.rjust(w) if i >= 5 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))]
        print(" ".join(cells).rstrip())
    if stale:
        print(f"{stale} run(s) {RESUME_HINT}")


def _check(workspace: str) -> int:
    from ..store import RUN_FILES
    from ..store_check import check_store

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
    if a.runs_cmd == "show" and a.follow:
        if not a.interval > 0:
            raise ConfigError(f"--interval {a.interval} must be a positive number of seconds")
        return _follow(store, a.run_id, interval=a.interval)
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
    if a.output and Path(a.output).is_dir():
        raise ConfigError(f"-o {a.output}: is a folder; give a file name, e.g. "
                          f"{Path(a.output) / ('metrics.' + a.format)}")
    text = store.export(fmt=a.format, study=a.study)
    if a.output:  # through a temporary file and a rename: a kill never leaves half a file
        out = Path(a.output)
        try:
            write_text(out, text)
        except OSError as e:
            raise ConfigError(f"-o {out}: cannot write ({e.strerror or e}); pass a writable "
                              "path") from None
        print(f"wrote {a.output}")
    else:
        sys.stdout.write(text)
    return 0
