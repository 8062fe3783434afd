"""`study run --cohort`: cohorts formed from a study's cells that can fuse; `auto` is off on the
CPU (the study runs exactly as before); SIGKILL mid-cohort then rerun loses and duplicates nothing
(slow); cohort members match their solo runs statistically in fp32 (slow)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from transfuse.cli import main
from transfuse.config import run_id
from transfuse.store import Store
from transfuse.study import expand, load_study, run_study
from transfuse.study.cohorts import group_cohorts, parse_cohort, resolve_cohort
from transfuse.study.task import CohortTask, RunTask

ROOT = Path(__file__).resolve().parents[1]

TINY = """
name: tiny
base:
  data: {name: "builtin:brain_tissue", n_train: 48, image_size: 8}
  model: {name: cbr_tiny}
  train: {steps: 3, eval_every: 3, batch_size: 16}
grid:
  model.name: [cbr_tiny, cbr_small]
  init: [random, "random:kaiming"]
  seed: [0, 1]
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


def test_cohorts_group_cells_that_differ_only_in_seed_and_init(tmp_path):
    specs = expand(load_study(_write(tmp_path, TINY)))
    tasks = [RunTask(s.to_dict(), "ws", "cpu", 1) for s in specs]
    assert group_cohorts(tasks, 1) == tasks
    grouped = group_cohorts(tasks, 3)
    sizes = [len(t.specs) if isinstance(t, CohortTask) else 1 for t in grouped]
    assert sizes == [3, 1, 3, 1]  # per architecture: 4 runs → a cohort of 3 and one run alone
    for t in grouped:
        if isinstance(t, CohortTask):
            assert len({s["model"]["name"] for s in t.specs}) == 1
    assert resolve_cohort("auto", device="cpu", executor="local", specs=specs) == 1
    assert resolve_cohort(4, device="cpu", executor="local", specs=specs) == 4
    assert resolve_cohort(4, device="cpu", executor="ray", specs=specs) == 4  # one Ray task each
    assert resolve_cohort("auto", device=None, executor="ray", specs=specs) == 1  # no GPU tasks
    assert parse_cohort("off") == "off" and parse_cohort("8") == 8


def test_auto_cohort_size_from_the_saved_tensors_of_a_batch(monkeypatch):
    """`auto` on CUDA sizes cohorts by free memory over one member's need, the need counted on
    the meta device (what autograd saves for a batch: the same bytes as on real tensors), the
    largest architecture of the study setting the size."""
    import torch

    from transfuse.config import spec_from_dict
    from transfuse.models import create_model
    from transfuse.study.cohorts import AUTO_MAX, _member_bytes, _saved_bytes

    model = create_model("cbr_tiny", spatial_dims=2, in_channels=3, num_classes=10).train()
    params = {id(p) for p in model.parameters()}
    real: dict[int, int] = {}

    def pack(t):
        if id(t) not in params:
            real[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(torch.randn(16, 3, 28, 28))
    assert _saved_bytes(model, (16, 3, 28, 28)) == sum(real.values()) + out.numel() * 4

    def spec(name, side):
        return spec_from_dict({"data": {"name": "builtin:brain_tissue", "image_size": side},
                               "model": {"name": name}, "train": {"batch_size": 64}})

    small, lite0 = spec("cbr_small", 28), spec("timm:efficientnet_lite0", 64)
    assert 50 * 2**20 < _member_bytes(small) < _member_bytes(lite0) < 2 * 2**30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (80 * 10**9, 80 * 10**9))
    auto = lambda specs: resolve_cohort("auto", device=None, executor="local", specs=specs)  # noqa: E731
    assert auto([small]) == AUTO_MAX
    assert 16 <= auto([lite0]) < AUTO_MAX  # ~0.85 GB a member: ~56 (the old bound gave 3)
    assert auto([small, lite0]) == auto([lite0]) == int(0.6 * 80 * 10**9 // _member_bytes(lite0))
    shared = resolve_cohort("auto", device=None, executor="local", specs=[lite0], sharing=8)
    assert shared == int(0.6 * 80 * 10**9 / 8 // _member_bytes(lite0))  # 8 workers on one GPU
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (2 * 10**9, 80 * 10**9))
    assert auto([lite0]) == 1  # a nearly full GPU: runs alone


@pytest.mark.parametrize("slots,want", [(["0"] * 8, 8), (["0", "1"] * 4, 4), ([""] * 2, 1)])
def test_cohorts_of_workers_that_share_a_gpu_share_its_memory(tmp_path, monkeypatch, slots, want):
    """`study run --runs-per-device K` puts K workers on a GPU: auto cohorts split its memory."""
    import transfuse.study.runner as runner

    class Seen(Exception):
        pass

    def spy(*a, **k):
        raise Seen(k["sharing"])

    monkeypatch.setattr(runner, "local_slots", lambda placement, workers: (len(slots), slots))
    monkeypatch.setattr(runner, "resolve_cohort", spy)
    with pytest.raises(Seen) as e:
        run_study(load_study(_write(tmp_path, TINY)), workspace=tmp_path / "ws", workers=None,
                  progress=False)
    assert e.value.args == (want,)


def test_bad_cohort_value_exits_2(tmp_path, capsys):
    rc = main(["study", "run", str(_write(tmp_path, TINY)), "-w", str(tmp_path / "ws"),
               "--cohort", "zero", "--no-progress"])
    assert rc == 2
    assert "--cohort 'zero' is not valid; use auto, off or a size >= 1" in capsys.readouterr().err
    assert not (tmp_path / "ws" / "transfuse.db").exists()


def test_study_with_cohorts_stores_every_run_once_and_auto_is_off_on_cpu(tmp_path):
    study = load_study(_write(tmp_path, TINY.replace("[cbr_tiny, cbr_small]", "[cbr_tiny]")))
    ws = tmp_path / "ws"
    out = run_study(study, workspace=ws, progress=False, device="cpu", cohort=4)
    assert out.ok and len(out.finished) == 4
    store = Store(ws)
    runs = store.list_runs()
    assert sorted(r.run_id for r in runs) == sorted(run_id(s) for s in expand(study))
    assert all(r.status == "finished" and r.env["cohort"] == 4 for r in runs)
    again = run_study(study, workspace=ws, progress=False, device="cpu", cohort=4)
    assert again.finished == [] and len(again.skipped) == 4
    # auto on the CPU: every run alone, as before (no cohort in its environment)
    ws2 = tmp_path / "ws2"
    plain = run_study(study, workspace=ws2, progress=False, device="cpu")
    assert plain.ok and all("cohort" not in r.env for r in Store(ws2).list_runs())
    a = {r.run_id: Store(ws).final_metrics(r.run_id)["auc"] for r in runs}
    b = {r.run_id: Store(ws2).final_metrics(r.run_id)["auc"] for r in Store(ws2).list_runs()}
    assert a.keys() == b.keys()
    assert max(abs(a[k] - b[k]) for k in a) < 0.02  # fp32 rounding only


@pytest.mark.slow
def test_sigkill_during_a_cohort_study_then_rerun(tmp_path):
    """Kill `study run --cohort 3` twice, each time just after a cohort checkpoint; the rerun
    completes the grid: 0 lost, 0 duplicated, what had finished is unchanged, and members resumed
    from their cohort's checkpoint as a cohort."""
    text = TINY.replace("[cbr_tiny, cbr_small]", "[cbr_tiny]").replace(
        "seed: [0, 1]", "seed: [0, 1, 2]").replace("steps: 3, eval_every: 3", "steps: 40, eval_every: 5")
    path = _write(tmp_path, text)
    ws = tmp_path / "ws"
    cmd = [sys.executable, "-m", "transfuse", "study", "run", str(path), "--workspace", str(ws),
           "--no-progress", "--cohort", "3", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    snapshots = []
    for _ in range(2):
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        while time.time() < t0 + 240 and proc.poll() is None:  # kill after a cohort checkpoint
            if any(p.stat().st_mtime > t0 for p in ws.glob("runs/*/resume.pt")):
                break
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if (ws / "transfuse.db").exists():
            store = Store(ws)
            snapshots.append({r.run_id: store.final_metrics(r.run_id)
                              for r in store.list_runs(status="finished")})
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    store = Store(ws)
    runs = store.list_runs()
    assert len(runs) == 6 and all(r.status == "finished" for r in runs)
    with sqlite3.connect(ws / "transfuse.db") as con:
        assert con.execute("SELECT COUNT(*), COUNT(DISTINCT run_id) FROM runs").fetchone() == (6, 6)
        dup = con.execute("SELECT COUNT(*) FROM (SELECT run_id, step, split, name, COUNT(*) c FROM "
                          "metrics GROUP BY 1, 2, 3, 4 HAVING c > 1)").fetchone()[0]
        assert dup == 0
    for snap in snapshots:
        for rid, metrics in snap.items():
            assert store.final_metrics(rid) == metrics
    resumed = [r for r in runs if r.summary.get("resumed_from")]
    assert resumed, "no member resumed from its cohort checkpoint"
    assert all(r.env["cohort"] >= 2 for r in resumed)  # resumed as a cohort, not alone


@pytest.mark.slow
def test_cohort_members_match_solo_runs_statistically_in_fp32(tmp_path):
    """10 seeds of one cell on builtin:brain_tissue, as a cohort and alone (fp32): the mean
    |Δ test AUC| member vs its solo run is at most a quarter of the solo seed-to-seed SD."""
    text = """
name: stats
base:
  data: {name: "builtin:brain_tissue", n_train: 200, image_size: 16}
  model: {name: cbr_tiny}
  train: {steps: 60, eval_every: 20, batch_size: 32, lr: 0.05}
grid:
  init: [random]
  seed: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
"""
    study = load_study(_write(tmp_path, text))
    fused = run_study(study, workspace=tmp_path / "c", progress=False, device="cpu", cohort=10)
    solo = run_study(study, workspace=tmp_path / "s", progress=False, device="cpu", cohort="off")
    assert fused.ok and solo.ok
    ids = [run_id(s) for s in expand(study)]
    a = np.array([Store(tmp_path / "c").final_metrics(i)["auc"] for i in ids])
    b = np.array([Store(tmp_path / "s").final_metrics(i)["auc"] for i in ids])
    delta, sd = float(np.abs(a - b).mean()), float(b.std(ddof=1))
    print(f"mean |delta AUC| {delta:.5f}, solo seed SD {sd:.5f}, ratio {delta / sd:.3f}")
    assert delta <= 0.25 * sd, (delta, sd)


def test_until_decided_passes_the_cohort_on_to_every_look(tmp_path, monkeypatch):
    import transfuse.study.adaptive as adaptive

    seen = []

    def fake_run_study(study, **kw):
        seen.append((kw["cohort"], len(kw["specs"])))
        raise RuntimeError("stop after the first look")

    monkeypatch.setattr(adaptive, "run_study", fake_run_study)
    study = load_study(_write(tmp_path, TINY.replace("[cbr_tiny, cbr_small]", "[cbr_tiny]")))
    with pytest.raises(RuntimeError, match="first look"):
        adaptive.run_until_decided(study, workspace=tmp_path / "ws", max_seeds=4, cohort=4)
    assert seen == [(4, 4)]
