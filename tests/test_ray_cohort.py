"""Ray tasks carry a cohort (issue 27): one Ray task trains all members of a cohort in the
worker's scratch folder and returns each finished member as a bundle; the driver stores every
member under its own run id — finished, failed or preempted with its ``resume.pt`` kept — as for
runs trained alone, and a preempted cohort resumes (on another node) as a cohort."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transfuse.config import run_id, spec_from_dict
from transfuse.store import Store
from transfuse.study import expand, load_study, run_study
from transfuse.study.placement import Placement
from transfuse.study.cohorts import RAY_AUTO, resolve_cohort
from transfuse.study.remote import RESUME, _store_results, cohort_in_scratch, run_folder_files
from transfuse.study.task import CohortTask

STUDY = """
name: raycohort
base:
  data: {{name: "builtin:brain_tissue", n_train: 48, image_size: 8}}
  model: {{name: cbr_tiny}}
  train: {{steps: {steps}, eval_every: 3, batch_size: 16, amp: false}}
grid:
  init: [random, {{name: pretrained, source: "file:{blowup}"}}, gabor]
  seed: [0, 1]
"""


class _Resolved:
    """Stands in for the ``ray`` module where a task's return value is already at hand."""

    @staticmethod
    def get(value):
        return value


def _blowup(path: Path) -> Path:
    """A CBR-Tiny checkpoint for builtin:brain_tissue with every weight ×1e30: a member
    initialised from it diverges (in any process, unlike an init registered by a test)."""
    from transfuse.models import create_model

    m = create_model("cbr_tiny", spatial_dims=2, in_channels=1, num_classes=4)
    torch.save({k: v * 1e30 if v.is_floating_point() and v.ndim > 1 else v
                for k, v in m.state_dict().items()}, path)
    return path


def _study(tmp_path: Path, *, steps: int = 3, fail: bool = False):
    text = STUDY.format(steps=steps, blowup=_blowup(tmp_path / "blowup.pt"))
    if not fail:  # two inits × two seeds, all finish
        text = text.replace(f', {{name: pretrained, source: "file:{tmp_path / "blowup.pt"}"}}', "")
    f = tmp_path / "s.yaml"
    f.write_text(text)
    return load_study(f)


def _final(ws: Path) -> dict[str, dict[str, float]]:
    store = Store(ws)
    return {r.run_id: store.final_metrics(r.run_id) for r in store.list_runs(status="finished")}


def test_ray_auto_fuses_only_where_tasks_get_gpus():
    assert resolve_cohort("auto", device=None, executor="ray", specs=[], task_gpus=1.0) == RAY_AUTO
    assert resolve_cohort("auto", device=None, executor="ray", specs=[], task_gpus=0.0) == 1
    assert resolve_cohort("auto", device="cpu", executor="ray", specs=[], task_gpus=1.0) == 1
    assert resolve_cohort(4, device="cpu", executor="ray", specs=[], task_gpus=0.0) == 4
    assert resolve_cohort("off", device=None, executor="ray", specs=[], task_gpus=1.0) == 1


def test_a_ray_cohort_study_stores_what_a_local_cohort_study_stores(tmp_path):
    """4 members (CBR-Tiny, random and gabor × 2 seeds): `--executor ray --cohort 4` stores the
    same run ids and the same metrics as `--executor local --cohort 4`, each member recorded as
    trained in a cohort of 4 on a Ray node; a rerun submits nothing."""
    ray = pytest.importorskip("ray")
    study = _study(tmp_path)
    local = run_study(study, workspace=tmp_path / "local", progress=False, device="cpu", cohort=4,
                      workers=1)
    assert local.ok and len(local.finished) == 4
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        # 2 CPUs per task: the 2 torch threads of the local run (fp32 sums depend on them)
        kw = dict(executor="ray", progress=False, device="cpu", cohort=4,
                  placement=Placement(cpus_per_run=2))
        remote = run_study(study, workspace=tmp_path / "ray", **kw)
        again = run_study(study, workspace=tmp_path / "ray", **kw)
    finally:
        ray.shutdown()
    assert remote.ok and sorted(remote.finished) == sorted(local.finished)
    assert again.finished == [] and len(again.skipped) == 4
    a, b = _final(tmp_path / "local"), _final(tmp_path / "ray")
    assert sorted(a) == sorted(b) == sorted(run_id(s) for s in expand(study))
    for rid in a:
        assert a[rid].keys() == b[rid].keys()
        for k, v in a[rid].items():
            assert v == pytest.approx(b[rid][k], abs=1e-6, nan_ok=True), (rid, k)
    runs = Store(tmp_path / "ray").list_runs()
    assert all(r.env["cohort"] == 4 and r.env.get("ray_node") for r in runs)
    for r in runs:  # every member's files came back into the driver's workspace
        names = {p.name for p in Store(tmp_path / "ray").run_dir(r.run_id).iterdir()}
        assert {"best.pt", "init.pt", "metrics.csv", "test_predictions.npz"} <= names
        assert RESUME not in names


def test_a_diverging_member_of_a_ray_cohort_is_stored_failed(tmp_path):
    """One Ray task trains 6 members; the two initialised ×1e30 diverge and are stored failed
    with their error, the other four finish, trained together as a cohort of 6."""
    ray = pytest.importorskip("ray")
    study = _study(tmp_path, fail=True)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        out = run_study(study, workspace=tmp_path / "ws", executor="ray", progress=False,
                        device="cpu", cohort=6)
    finally:
        ray.shutdown()
    store = Store(tmp_path / "ws")
    specs = expand(study)
    bad = {run_id(s) for s in specs if s.init.name == "pretrained"}
    assert set(out.failed) == bad and len(out.finished) == 4
    for rid in bad:
        rec = store.get_run(rid)
        assert rec.status == "failed" and "diverged" in rec.error and "diverged" in out.failed[rid]
    for rid in out.finished:
        assert store.get_run(rid).env["cohort"] == 6


def test_a_preempted_ray_cohort_resumes_on_another_node(tmp_path, monkeypatch):
    """The Ray task body (called here, as a worker runs it) is stopped after step 3 of 6 as by
    SIGTERM: every member comes back preempted with its resume.pt, which the driver keeps; the
    next attempt, in another node's scratch folder, resumes the cohort and ends with the metrics
    of an uninterrupted cohort."""
    import transfuse.train.cohort as cohort_mod

    study = _study(tmp_path, steps=6)
    specs = expand(study)
    task = CohortTask(tuple(s.to_dict() for s in specs), str(tmp_path / "driver"), "cpu", 1)
    rids = [run_id(s) for s in specs]

    monkeypatch.setenv("TRANSFUSE_SCRATCH", str(tmp_path / "ref-node"))
    ref = cohort_in_scratch(task, {})
    assert [r[1] for r in ref] == ["finished"] * 4

    real = cohort_mod.checkpoint_or_stop

    def stop_at_3(step, total, *, guard, **kw):
        if step == 3:
            guard.requested = True  # what SIGTERM sets
        return real(step, total, guard=guard, **kw)

    monkeypatch.setattr(cohort_mod, "checkpoint_or_stop", stop_at_3)
    monkeypatch.setenv("TRANSFUSE_SCRATCH", str(tmp_path / "node-a"))
    driver = Store(tmp_path / "driver")
    for s in specs:
        driver.start_run(s, env={"executor": "ray"})
    first = cohort_in_scratch(task, {})
    assert [r[1] for r in first] == ["preempted"] * 4
    for r in first:  # resume.pt, and the best.pt of step 3's evaluation that it refers to
        assert {RESUME, "best.pt", "init.pt", "metrics.csv"} <= set(r[3].files)
    assert [r[1] for r in _store_results(driver, rids, first, _Resolved)] == ["preempted"] * 4
    for rid in rids:
        assert driver.get_run(rid).status == "failed"
        assert (driver.run_dir(rid) / RESUME).is_file()  # kept for the next attempt
        assert (driver.run_dir(rid) / "best.pt").is_file()

    monkeypatch.setattr(cohort_mod, "checkpoint_or_stop", real)
    monkeypatch.setenv("TRANSFUSE_SCRATCH", str(tmp_path / "node-b"))
    shipped = {rid: run_folder_files(driver.run_dir(rid)) for rid in rids}  # as run_on_ray
    for s in specs:
        driver.start_run(s, env={"executor": "ray"})
    second = cohort_in_scratch(task, shipped)
    assert [r[1] for r in second] == ["finished"] * 4
    assert all(r[3].row["summary"]["resumed_from"] == 3 and r[3].row["env"]["cohort"] == 4
               for r in second)
    assert _store_results(driver, rids, second, _Resolved) == [(rid, "finished", "") for rid in rids]
    assert not list((tmp_path / "node-b").glob("transfuse-scratch/*"))  # scratch cleaned up
    for rid, (_, _, _, bundle) in zip(rids, ref):
        assert not (driver.run_dir(rid) / RESUME).exists()
        want = {m[2]: m[3] for m in bundle.metrics if m[1] == "test"}
        assert driver.final_metrics(rid) == pytest.approx(want, abs=1e-6, nan_ok=True)


def test_a_cohort_task_lost_on_the_cluster_fails_every_member(tmp_path):
    class _Lost:
        @staticmethod
        def get(ref):
            raise RuntimeError("The worker died unexpectedly while executing this task.\nnode lost")

    driver = Store(tmp_path / "driver")
    specs = [spec_from_dict({"data": {"name": "builtin:brain_tissue", "n_train": 48},
                             "model": {"name": "cbr_tiny"}, "train": {"steps": 3}, "seed": s})
             for s in (0, 1)]
    rids = [driver.start_run(s, env={}) for s in specs]
    out = _store_results(driver, rids, object(), _Lost)
    assert [o[:2] for o in out] == [(rid, "failed") for rid in rids]
    assert all("failed on the cluster: RuntimeError: node lost" in o[2] for o in out)
    assert all(driver.get_run(rid).status == "failed" for rid in rids)


def test_an_auto_cohort_that_lands_off_cuda_trains_its_members_alone(tmp_path):
    """`--cohort auto` on a Ray cluster with GPUs forms cohorts; one that lands where there is no
    CUDA (fake GPUs, `--device cpu`) runs its members one after another, as `auto` does on a CPU."""
    from transfuse.study.task import execute_any

    specs = expand(_study(tmp_path))
    ws = tmp_path / "ws"
    out = execute_any(CohortTask(tuple(s.to_dict() for s in specs), str(ws), "cpu", 1, auto=True))
    assert [o[:2] for o in out] == [(run_id(s), "finished") for s in specs]
    assert all("cohort" not in r.env for r in Store(ws).list_runs())
