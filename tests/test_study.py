"""Study files and the resumable runner."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from transfuse.config import run_id
from transfuse.errors import ConfigError
from transfuse.store import Store
from transfuse.study import expand, load_study, run_study, study_status

ROOT = Path(__file__).resolve().parents[1]

TINY = """
name: tiny
base:
  data: {name: "builtin:brain_tissue", n_train: 48}
  model: {name: cbr_tiny}
  train: {steps: 3, eval_every: 3, batch_size: 16}
grid:
  init: [random, "random:kaiming"]
  seed: [0, 1]
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_expand_is_the_cartesian_product_in_order(tmp_path):
    study = load_study(write(tmp_path, TINY))
    specs = expand(study)
    assert [(s.init.name, s.seed) for s in specs] == [
        ("random", 0), ("random", 1), ("random:kaiming", 0), ("random:kaiming", 1)]
    assert {s.study for s in specs} == {"tiny"}
    assert len({run_id(s) for s in specs}) == 4


def test_smoke_shrinks_and_renames(tmp_path):
    text = TINY.replace("steps: 3", "steps: 500").replace("n_train: 48", "n_train: 4000")
    specs = expand(load_study(write(tmp_path, text)), smoke=True)
    assert [s.seed for s in specs] == [0, 0]  # first seed only
    assert all(s.study == "tiny-smoke" and s.train.steps == 4 and s.data.n_train == 64 for s in specs)


@pytest.mark.parametrize("text, needle", [
    ("name: x\nbase: {data: {name: a}, model: {name: b}}\ngrid: {train.lrr: [1]}\n", "train.lrr"),
    ("name: x\nbase: {data: {name: a}, model: {name: b}}\ngrid: {optim.lr: [1]}\n", "optim.lr"),
    ("name: x\nbase: {data: {name: a}, model: {name: b}}\ngrid: {seed: []}\n", "grid.seed"),
    ("name: x\nbase: {data: {name: a}, model: {name: b}}\nextra: 1\n", "'extra'"),
    ("name: x\nbase: {data: {name: a}, model: {name: b}, train: {optimizer: sgdd}}\n", "train.optimizer"),
    ("name: x\nbase: {data: {name: a}, model: {name: b}}\nevaluation: {auc_thresholds: [2]}\n",
     "evaluation.auc_thresholds"),
    ("base: {data: {name: a}}\n", "'name'"),
    ("name: x\nbase: [1, 2\n", "not valid YAML"),
    ("name: x\nbase: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
])
def test_bad_study_files_name_the_key(tmp_path, text, needle):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_study(p)
    msg = str(e.value)
    assert needle in msg and str(p) in msg and "\n" not in msg


def test_run_then_rerun_skips_everything(tmp_path):
    study = load_study(write(tmp_path, TINY))
    ws = tmp_path / "ws"
    first = run_study(study, workspace=ws, progress=False)
    assert first.ok and len(first.finished) == 4 and not first.skipped
    before = {r.run_id: Store(ws).final_metrics(r.run_id) for r in Store(ws).list_runs()}
    second = run_study(study, workspace=ws, progress=False)
    assert second.finished == [] and sorted(second.skipped) == sorted(before)
    assert {r.run_id: Store(ws).final_metrics(r.run_id) for r in Store(ws).list_runs()} == before
    assert {st for _, _, st in study_status(study, workspace=ws)} == {"finished"}


def test_sigkill_at_random_points_then_resume(tmp_path):
    """Kill the runner mid-study (twice, at different moments); rerunning completes the grid
    with no duplicate runs and without touching what had finished."""
    text = TINY.replace("seed: [0, 1]", "seed: [0, 1, 2]")
    path = write(tmp_path, text)
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "transfuse", "study", "run", str(path), "--workspace", str(ws),
           "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    snapshots = []
    for delay in (6.0, 9.0):
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (ws / "transfuse.db").exists():
            store = Store(ws)
            snapshots.append({r.run_id: store.final_metrics(r.run_id)
                              for r in store.list_runs(status="finished")})
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    store = Store(ws)
    runs = store.list_runs()
    assert len(runs) == 6 and all(r.status == "finished" for r in runs)
    with sqlite3.connect(ws / "transfuse.db") as con:
        assert con.execute("SELECT COUNT(*), COUNT(DISTINCT run_id) FROM runs").fetchone() == (6, 6)
        dup = con.execute("SELECT COUNT(*) FROM (SELECT run_id, step, split, name, COUNT(*) c FROM "
                          "metrics GROUP BY 1, 2, 3, 4 HAVING c > 1)").fetchone()[0]
        assert dup == 0
    for snap in snapshots:  # whatever had finished before a kill is unchanged
        for rid, metrics in snap.items():
            assert store.final_metrics(rid) == metrics


LINKED = """
name: linked
pretrain:
  mod: {data: {name: "builtin:modality", n_train: 48}, model: {name: cbr_tiny},
        train: {steps: 3, eval_every: 3, batch_size: 16}}
base:
  data: {name: "builtin:brain_tissue", n_train: 48}
  model: {name: cbr_tiny}
  train: {steps: 3, eval_every: 3, batch_size: 16}
grid:
  arch:
    - {model.name: cbr_tiny, init.source: "pretrain:mod"}
    - {model.name: cbr_small, init.source: "file:/nowhere.pt"}
  init.name: [random, pretrained, gabor]
exclude:
  - {model.name: cbr_small, init.name: pretrained}
"""


def test_linked_axes_exclude_and_pretrain_sources(tmp_path):
    from transfuse.study.spec import pretrain_specs

    study = load_study(write(tmp_path, LINKED))
    pre = pretrain_specs(study)
    assert list(pre) == ["mod"] and pre["mod"].study == "linked-pretrain"
    cells = [(s.model.name, s.init.name, s.init.source) for s in expand(study)]
    assert cells == [
        ("cbr_tiny", "random", None),  # no pretrained weights used: the source is dropped
        ("cbr_tiny", "pretrained", f"run:{run_id(pre['mod'])}"),
        ("cbr_tiny", "gabor", None),
        ("cbr_small", "random", None),  # cbr_small × pretrained excluded
        ("cbr_small", "gabor", None)]


def test_pretrain_runs_first_and_feeds_the_grid(tmp_path):
    text = LINKED.replace('    - {model.name: cbr_small, init.source: "file:/nowhere.pt"}\n', "")
    study = load_study(write(tmp_path, text))
    out = run_study(study, workspace=tmp_path / "ws", progress=False)
    assert out.ok and out.total == 4 and len(out.finished) == 4
    store = Store(tmp_path / "ws")
    assert [r.study for r in store.list_runs()][0] == "linked-pretrain"
    (pre,) = store.list_runs(study="linked-pretrain")
    (pt,) = [r for r in store.list_runs(study="linked") if r.spec["init"]["name"] == "pretrained"]
    assert pt.init_report["source_info"]["name"] == f"run:{pre.run_id}"
    assert store.get_results("study", study="linked")["linked"]["auc_thresholds"] == [0.8, 0.9]


def test_bad_pretrain_reference_names_the_cell(tmp_path):
    text = LINKED.replace('init.source: "pretrain:mod"', 'init.source: "pretrain:moo"')
    with pytest.raises(ConfigError, match=r"init.source 'pretrain:moo' names no entry of pretrain \(have: mod\)"):
        load_study(write(tmp_path, text))


def test_ray_executor_runs_the_study(tmp_path):
    pytest.importorskip("ray")
    study = load_study(write(tmp_path, TINY))
    out = run_study(study, workspace=tmp_path / "ws", workers=2, executor="ray", progress=False)
    assert out.ok and len(out.finished) == 4
    again = run_study(study, workspace=tmp_path / "ws", workers=2, executor="ray", progress=False)
    assert again.finished == [] and len(again.skipped) == 4  # nothing submitted to Ray twice
    assert all(r.status == "finished" for r in Store(tmp_path / "ws").list_runs())


def test_cells_wait_for_a_pretraining_run_another_process_holds(tmp_path):
    """A pretraining run busy in another (live) process: the cells that read it are not started
    (they would fail for want of their source); the other cells train; the next run does the rest."""
    from transfuse.store import Store
    from transfuse.study.spec import pretrain_specs

    text = LINKED.replace('    - {model.name: cbr_small, init.source: "file:/nowhere.pt"}\n', "")
    study = load_study(write(tmp_path, text))
    ws = tmp_path / "ws"
    pre = pretrain_specs(study)["mod"]
    import socket
    import sqlite3
    import subprocess
    import sys

    Store(ws).start_run(pre)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:  # the pretraining run now belongs to another live process
        with sqlite3.connect(ws / "transfuse.db") as con:
            con.execute("UPDATE runs SET owner = ?", (f"{socket.gethostname()}:{other.pid}",))
        out = run_study(study, workspace=ws, progress=False)
    finally:
        other.kill()
    pre_id = run_id(pre)
    waiting = [run_id(s) for s in expand(study) if s.init.source == f"run:{pre_id}"]
    assert len(waiting) == 1 and not out.failed
    assert sorted(out.busy) == sorted([pre_id, *waiting])
    assert len(out.finished) == 2  # random and gabor: no source needed
    assert Store(ws).status(waiting[0]) is None  # never started, nothing stored
