"""Live metrics (``metrics.csv``, ``--tensorboard``, ``runs show --follow``) and readable CLI
output (``analyze`` pairs, ``runs list``, ``study status -v``, the study progress bar)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from transfuse.cli import main
from transfuse.config import DataSpec, InitSpec, ModelSpec, RunSpec, TrainSpec, run_id
from transfuse.live import METRICS_CSV, MetricsCSV, read_metrics_csv, tensorboard_dir
from transfuse.store import Store
from transfuse.study import expand, load_study, run_study
from transfuse.study.runner import progress_total, run_steps

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRAIN = ["--dataset", "builtin:brain_tissue", "--model", "cbr_tiny", "--n-train", "64",
         "--batch-size", "16", "--no-progress"]


def evaluations(rows) -> dict[tuple[int, str], dict[str, float | None]]:
    """``{(step, split): {metric: value}}`` of store or CSV rows, test split left out."""
    out: dict[tuple[int, str], dict[str, float | None]] = {}
    for step, split, name, v in rows:
        if split != "test":
            out.setdefault((step, split), {})[name] = v
    return out


# -- a run watched while it trains (two processes: `transfuse train` and `runs show --follow`) ----

@dataclass
class Watched:
    ws: Path
    rid: str
    csv_while_running: list        # metrics.csv rows read while the store said `running`
    store_while_running: list      # the store's rows read right after
    status_after_read: str
    follow: subprocess.CompletedProcess
    train: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def watched(tmp_path_factory) -> Watched:
    ws = tmp_path_factory.mktemp("live") / "ws"
    cmd = [sys.executable, "-m", "transfuse", "train", *TRAIN, "--steps", "12", "--eval-every", "2",
           "-w", str(ws)]
    train = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    follow = None
    try:
        deadline = time.time() + 240
        rid = None
        while rid is None and time.time() < deadline and train.poll() is None:
            if (ws / "transfuse.db").is_file():
                rid = next((r.run_id for r in Store(ws).list_runs()), None)
            time.sleep(0.05)
        assert rid, f"the run was never registered: {train.communicate()}"
        follow = subprocess.Popen([sys.executable, "-m", "transfuse", "runs", "show", rid, "--follow",
                                   "--interval", "0.2", "-w", str(ws)], cwd=ROOT, env=ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        store, path = Store(ws), ws / "runs" / rid / METRICS_CSV
        snap = None
        while snap is None and time.time() < deadline and train.poll() is None:
            rows = read_metrics_csv(path) if path.is_file() else []
            if sum(sp == "val" for _, sp in evaluations(rows)) >= 2:
                snap = rows, store.metrics(rid), store.get_run(rid).status  # status read *after*
            time.sleep(0.02)
        assert snap, "metrics.csv never had 2 evaluations while the run was going"
        out, err = train.communicate(timeout=300)
        f_out, f_err = follow.communicate(timeout=60)
    finally:
        for p in (train, follow):
            if p is not None and p.poll() is None:
                p.kill()
    return Watched(ws, rid, snap[0], snap[1], snap[2],
                   subprocess.CompletedProcess(follow.args, follow.returncode, f_out, f_err),
                   subprocess.CompletedProcess(cmd, train.returncode, out, err))


def test_metrics_csv_is_readable_while_the_run_is_going(watched):
    assert watched.status_after_read == "running"
    live = evaluations(watched.csv_while_running)
    assert [k for k in live if k[1] == "val"][:2] == [(0, "val"), (2, "val")]
    stored = evaluations(watched.store_while_running)
    for key, metrics in live.items():  # every row in the CSV is already in SQLite, value for value
        assert metrics == stored[key], key
    assert set(live[(0, "val")]) >= {"loss", "auc", "acc", "auc/background", "auc/csf"}
    assert set(live.get((2, "train"), {"loss": 0, "lr": 0})) == {"loss", "lr"}


def test_metrics_csv_of_the_finished_run_equals_the_store(watched):
    assert watched.train.returncode == 0, watched.train.stderr[-2000:]
    path = watched.ws / "runs" / watched.rid / METRICS_CSV
    assert path.read_text().splitlines()[0] == "step,split,metric,value"
    csv_rows = read_metrics_csv(path)
    stored = [r for r in Store(watched.ws).metrics(watched.rid) if r[1] != "test"]
    assert sorted(csv_rows) == sorted(stored)
    steps = sorted({k for k in evaluations(csv_rows)})
    assert steps == [(0, "val")] + [(s, sp) for s in range(2, 13, 2) for sp in ("train", "val")]


def test_follow_prints_each_evaluation_then_the_test_line(watched):
    f = watched.follow
    assert f.returncode == 0, f.stderr
    lines = f.stdout.splitlines()
    assert lines[0].startswith(f"run {watched.rid}  [running]  cbr_tiny on builtin:brain_tissue "
                               "(init random, seed 0)")  # it started while the run was going
    store = Store(watched.ws)
    want = evaluations(store.metrics(watched.rid))
    shown = [re.match(r"  step +(\d+)  (\w+) +(.*)$", ln) for ln in lines[1:-1]]
    assert all(shown), lines
    assert [(int(m[1]), m[2]) for m in shown] == sorted(want)  # each evaluation once, in order
    for m in shown:
        vals = dict(re.findall(r"(\w+) (\S+)", m[3]))
        metrics = want[int(m[1]), m[2]]
        assert set(vals) == {k for k in metrics if "/" not in k}
        for k, v in vals.items():
            assert v == (f"{metrics[k]:.3g}" if k == "lr" else f"{metrics[k]:.4f}")
    test = store.final_metrics(watched.rid)
    best = store.get_run(watched.rid).summary["best_step"]
    assert re.match(rf"  step +{best}  test +", lines[-1])
    assert f"auc {test['auc']:.4f}" in lines[-1] and f"acc {test['acc']:.4f}" in lines[-1]


def test_follow_a_failed_run_and_ctrl_c(tmp_path, capsys, monkeypatch):
    store = Store(tmp_path)
    spec = RunSpec(data=DataSpec(name="builtin:brain_tissue"), model=ModelSpec(name="cbr_tiny"))
    rid = store.start_run(spec)
    store.log_metrics(rid, 0, "val", {"loss": 1.25, "auc": float("nan")})
    def ctrl_c(seconds: float) -> None:
        raise KeyboardInterrupt

    # Ctrl-C while the run is going (this process owns it): exit 0, no "interrupted", no traceback
    monkeypatch.setattr(time, "sleep", ctrl_c)
    assert main(["runs", "show", rid[:6], "--follow", "-w", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1] == "  step    0  val    auc undefined  loss 1.2500" and err == ""
    store.fail_run(rid, "boom")
    assert main(["runs", "show", rid, "--follow", "-w", str(tmp_path)]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == f"  run {rid} failed: boom"
    assert main(["runs", "show", rid, "--follow", "--interval", "0", "-w", str(tmp_path)]) == 2
    assert "--interval 0.0 must be a positive" in capsys.readouterr().err


def test_metrics_csv_writer_restarts_and_reads_only_whole_lines(tmp_path):
    path = tmp_path / "m.csv"
    w = MetricsCSV(path)
    w.write(0, "val", {"loss": 0.1 + 0.2, "auc/a,b": float("nan")})
    assert read_metrics_csv(path) == [(0, "val", "loss", 0.1 + 0.2), (0, "val", "auc/a,b", None)]
    with open(path, "a") as f:
        f.write("2,train,lo")  # an evaluation being written
    assert len(read_metrics_csv(path)) == 2
    MetricsCSV(path)  # a restarted run
    assert path.read_text() == "step,split,metric,value\n"


# -- a tiny study through run_study: TensorBoard, the progress bar, analyze ----------------------

STUDY = """
name: live
base:
  data: {name: "builtin:brain_tissue", n_train: 32}
  model: {name: cbr_tiny}
  train: {steps: 2, eval_every: 2, batch_size: 16}
grid:
  init: [random, gabor]
  seed: [0, 1]
"""


@pytest.fixture(scope="module")
def study_ws(tmp_path_factory, one_thread_module) -> tuple[Path, str]:
    """Study ``live`` run with ``tensorboard=True``: its runs random seeds 0 and 1 and gabor seed 0
    (2 steps each); returns the workspace and the progress bar's output. A stale metrics.csv and
    event file of an earlier attempt of one run are planted first."""
    pytest.importorskip("tensorboard")
    tmp = tmp_path_factory.mktemp("study")
    (tmp / "s.yaml").write_text(STUDY)
    ws = tmp / "ws"
    study = load_study(tmp / "s.yaml")
    specs = [s for s in expand(study) if (s.init.name, s.seed) != ("gabor", 1)]
    first = run_id(specs[0])
    (ws / "runs" / first).mkdir(parents=True)
    (ws / "runs" / first / METRICS_CSV).write_text("step,split,metric,value\n99,val,auc,0.5\n")
    tensorboard_dir(ws, first).mkdir(parents=True)
    (tensorboard_dir(ws, first) / "events.out.tfevents.0.old").write_bytes(b"")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        out = run_study(study, workspace=ws, progress=True, tensorboard=True, specs=specs)
    assert out.ok and len(out.finished) == 3
    return ws, err.getvalue()


def test_tensorboard_events_hold_the_stored_scalars(study_ws):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ws, _ = study_ws
    store = Store(ws)
    runs = store.list_runs(study="live")
    assert sorted(p.name for p in (ws / "tensorboard").iterdir()) == sorted(r.run_id for r in runs)
    for r in runs:
        files = list(tensorboard_dir(ws, r.run_id).iterdir())
        assert len(files) == 1 and not files[0].name.endswith(".old")  # the stale attempt is gone
        acc = EventAccumulator(str(tensorboard_dir(ws, r.run_id)))
        acc.Reload()
        want = evaluations(store.metrics(r.run_id))
        tags = {f"{sp}/{n}" for (_, sp), m in want.items() for n, v in m.items() if v is not None}
        assert tags == set(acc.Tags()["scalars"])
        for tag in ("val/auc", "val/loss", "train/loss", "train/lr", "val/auc/csf"):
            split, name = tag.split("/", 1)
            events = acc.Scalars(tag)
            assert [e.step for e in events] == sorted(s for s, sp in want if sp == split)
            for e in events:
                assert e.value == pytest.approx(want[e.step, split][name], rel=1e-6)


def test_restarted_run_starts_metrics_csv_fresh(study_ws):
    ws, _ = study_ws
    rid = next(r.run_id for r in Store(ws).list_runs(study="live") if r.spec["seed"] == 0
               and r.spec["init"]["name"] == "random")
    rows = read_metrics_csv(ws / "runs" / rid / METRICS_CSV)
    assert rows[0][:3] == (0, "val", "loss") and 99 not in {s for s, *_ in rows}


def test_study_progress_bar_counts_steps(study_ws):
    _, bar = study_ws
    last = bar.replace("\r", "\n").strip().splitlines()[-1]
    assert re.search(r"study live: +100%.* 6/6 \[", last), last  # 3 runs × 2 steps
    assert "step/s" in last or "s/step" in last
    assert "runs 3/3, failed 0" in last
    first = bar.replace("\r", "\n").strip().splitlines()[0]
    assert re.search(r"study live: +0%.* 0/6 \[.*runs 0/3, failed 0", first), first


def test_study_progress_bar_counts_finished_runs_at_once(study_ws, tmp_path, capsys):
    ws, _ = study_ws
    (tmp_path / "s.yaml").write_text(STUDY)
    study = load_study(tmp_path / "s.yaml")
    specs = [s for s in expand(study) if s.seed == 0]  # random 0 and gabor 0: finished already
    out = run_study(study, workspace=ws, progress=True, specs=specs)
    assert len(out.skipped) == 2 and not out.finished
    first = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[0]
    assert re.search(r"study live: +100%.* 4/4 \[.*runs 2/2, failed 0", first), first


def test_progress_total_sums_train_steps():
    def spec(**train) -> RunSpec:
        n = train.pop("n_train", None)
        return RunSpec(data=DataSpec(name="builtin:brain_tissue", n_train=n),
                       model=ModelSpec(name="cbr_tiny"), train=TrainSpec(**train))

    steps = [spec(steps=150), spec(steps=None, epochs=3, n_train=100, batch_size=32), spec(steps=7)]
    assert [run_steps(s) for s in steps] == [150, 9, 7]
    assert progress_total(steps) == ([150, 9, 7], "step")
    unknown = spec(steps=None, epochs=2)  # epochs over a training set of unknown size
    assert run_steps(unknown) is None
    assert progress_total([*steps, unknown]) == ([1, 1, 1, 1], "run")


def test_tensorboard_missing_fails_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
    ws = tmp_path / "ws"
    assert main(["train", *TRAIN, "--steps", "2", "--tensorboard", "-w", str(ws)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --tensorboard needs the tensorboard package: pip install 'transfuse[tensorboard]'"
    assert not (ws / "transfuse.db").exists()
    (tmp_path / "s.yaml").write_text(STUDY)
    assert main(["study", "run", str(tmp_path / "s.yaml"), "--tensorboard", "-w", str(ws)]) == 2
    assert "pip install 'transfuse[tensorboard]'" in capsys.readouterr().err
    assert not (ws / "transfuse.db").exists()


def test_analyze_names_model_init_seed(study_ws, capsys):
    ws, _ = study_ws
    assert main(["analyze", str(ws), "--study", "live", "--images", "32", "--measures",
                 "linear_cka", "--no-progress"]) == 0
    runs = {(r.spec["init"]["name"], r.spec["seed"]): r.run_id for r in Store(ws).list_runs(study="live")}
    lines = [ln for ln in capsys.readouterr().out.splitlines() if " vs " in ln]
    r0, r1, g0 = runs["random", 0], runs["random", 1], runs["gabor", 0]
    assert lines == [
        f"  baseline    cbr_tiny · random · seed 0  vs  cbr_tiny · random · seed 1  [{r0}:{r1}]",
        f"  comparison  cbr_tiny · random · seed 0  vs  cbr_tiny · gabor · seed 0   [{r0}:{g0}]"]


# -- tables --------------------------------------------------------------------------------------

def test_runs_list_shows_long_names_whole_and_aligned(tmp_path, capsys):
    store = Store(tmp_path)
    long_data = "csv:/data/a_rather_long_folder_name/chest_xray_labels_2024.csv"
    long_init = "transfusion:block2+meanvar:kaiming"
    rid = store.start_run(RunSpec(data=DataSpec(name=long_data), model=ModelSpec(name="cbr_tiny"),
                                  init=InitSpec(name=long_init), seed=12))
    short = store.start_run(RunSpec(data=DataSpec(name="builtin:brain_tissue"),
                                    model=ModelSpec(name="cbr_tiny")))
    store.finish_run(short, step=2, test_metrics={"auc": 0.81234}, summary={})
    assert main(["runs", "list", "-w", str(tmp_path)]) == 0
    head, *rows = capsys.readouterr().out.splitlines()
    assert head.split() == ["run_id", "status", "dataset", "model", "arm", "seed", "test", "score"]
    line = {r.split()[0]: r for r in rows}
    assert line[rid].split() == [rid, "running", long_data, "cbr_tiny", long_init, "12"]
    assert line[short].split() == [short, "finished", "builtin:brain_tissue", "cbr_tiny", "random",
                                   "0", "AUC", "0.8123"]
    # left-aligned columns start where their header does
    for col, cell in (("status", "running"), ("dataset", long_data), ("model", "cbr_tiny"),
                      ("arm", long_init)):
        assert line[rid].index(cell) == head.index(col)
    assert line[short].index("cbr_tiny") == head.index("model")
    assert line[rid].index(" 12") + 3 == head.index("seed") + 4  # seed aligns right
    assert line[short].rstrip().endswith("AUC 0.8123") and len(line[short]) == len(head)


def test_study_status_verbose_is_a_table(tmp_path, capsys):
    (tmp_path / "s.yaml").write_text(STUDY.replace("random, gabor", "random, \"transfusion:block1\""))
    assert main(["study", "status", str(tmp_path / "s.yaml"), "-v", "-w", str(tmp_path / "ws")]) == 0
    lines = capsys.readouterr().out.splitlines()
    head, rows = lines[0], lines[1:5]
    assert head.split() == ["run_id", "status", "dataset", "model", "arm", "n_train", "seed"]
    for r in rows:
        cells = r.split()
        assert cells[1:] == ["missing", "builtin:brain_tissue", "cbr_tiny", cells[4], "32", cells[6]]
        pos = len(cells[0])
        for col, cell in zip(("status", "dataset", "model", "arm", "n_train", "seed"), cells[1:]):
            pos = r.index(cell, pos)
            assert pos == head.index(col), (col, r)
    assert [r.split()[4] for r in rows] == ["random", "random", "transfusion:block1", "transfusion:block1"]
    assert lines[-1] == "study live: 4 runs — 4 missing"
