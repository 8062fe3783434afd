"""Ray without a shared filesystem: workers train in scratch folders and the driver stores what
they return (transfuse.study.remote); a run moved as a RunBundle round-trips exactly."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from transfuse.config import spec_from_dict
from transfuse.store import RunBundle, Store

SPEC = {"data": {"name": "builtin:brain_tissue", "n_train": 48}, "model": {"name": "cbr_tiny"},
        "train": {"steps": 3, "eval_every": 3, "batch_size": 16}}


def _finished_run(ws: Path, *, seed: int = 0) -> str:
    """A finished run written through the store's own API, with two files in its folder."""
    store = Store(ws)
    spec = spec_from_dict({**SPEC, "seed": seed})
    rid = store.start_run(spec, env={"host": "worker-7"})
    store.set_info(rid, data_info={"name": "builtin:brain_tissue"}, model_info={"stages": []},
                   init_report={"strategy": "random"})
    store.log_metrics(rid, 3, "val", {"auc": 0.75, "loss": 0.5})
    store.run_dir(rid).mkdir(parents=True, exist_ok=True)
    (store.run_dir(rid) / "best.pt").write_bytes(os.urandom(1000))
    (store.run_dir(rid) / "sub").mkdir()
    (store.run_dir(rid) / "sub" / "x.json").write_text("{}")
    (store.run_dir(rid) / "resume.pt").write_bytes(b"mid-run")
    store.finish_run(rid, step=3, test_metrics={"auc": 0.7, "nan_metric": float("nan")},
                     summary={"steps": 3})
    return rid


def test_bundle_round_trip_is_exact_and_final(tmp_path):
    rid = _finished_run(tmp_path / "worker")
    src = Store(tmp_path / "worker")
    bundle = src.export_run(rid)
    assert set(bundle.files) == {"best.pt", "sub/x.json"}  # no resume.pt of a finished run
    dst = Store(tmp_path / "driver")
    assert dst.import_run(bundle) is True
    a, b = src.get_run(rid), dst.get_run(rid)
    for field in ("spec", "status", "started", "finished", "wall_seconds", "env", "data_info",
                  "model_info", "init_report", "summary", "study"):
        assert getattr(a, field) == getattr(b, field), field
    assert b.run_dir == str(dst.run_dir(rid)) and b.state == "finished"
    assert src.metrics(rid) == dst.metrics(rid)
    assert dst.final_metrics(rid) == {"auc": 0.7, "nan_metric": None}
    for rel in bundle.files:
        assert (dst.run_dir(rid) / rel).read_bytes() == (src.run_dir(rid) / rel).read_bytes()
    assert dst.import_run(bundle) is False  # results are final: a second copy is not stored
    only = src.export_run(rid, files=("best.pt", "missing.pt"))
    assert set(only.files) == {"best.pt"}


def test_import_replaces_a_stale_attempt_and_refuses_bad_bundles(tmp_path):
    rid = _finished_run(tmp_path / "worker")
    bundle = Store(tmp_path / "worker").export_run(rid)
    dst = Store(tmp_path / "driver")
    dst.start_run(spec_from_dict({**SPEC, "seed": 0}), env={"executor": "ray"})  # the claim
    dst.log_metrics(rid, 1, "val", {"auc": 0.1})  # a partial earlier attempt
    assert dst.import_run(bundle)
    assert dst.metrics(rid) == Store(tmp_path / "worker").metrics(rid)  # its rows are gone
    for bad in ("../escape.pt", "/abs.pt"):
        evil = RunBundle("0" * 12, {**bundle.row}, [], {bad: b"x"})
        with pytest.raises(ValueError, match="outside its run folder"):
            Store(tmp_path / "d2").import_run(evil)
    assert not (tmp_path / "d2" / "runs" / "escape.pt").exists() and not Path("/abs.pt").exists()
    unfinished = RunBundle(rid, {**bundle.row, "status": "running"}, [], {})
    with pytest.raises(ValueError, match="not finished"):
        Store(tmp_path / "d3").import_run(unfinished)


def test_run_in_scratch_never_opens_the_workspace(tmp_path, monkeypatch):
    """The Ray task body, called directly: it trains in $TRANSFUSE_SCRATCH and returns the run."""
    from transfuse.study.remote import run_in_scratch
    from transfuse.study.task import RunTask

    monkeypatch.setenv("TRANSFUSE_SCRATCH", str(tmp_path / "scratch"))
    ws = tmp_path / "driver-ws"  # never created: the task must not touch it
    task = RunTask({**SPEC, "seed": 1}, str(ws), "cpu", 1)
    rid, what, msg, bundle = run_in_scratch(task, None, {})
    assert (what, msg) == ("finished", "") and not ws.exists()
    assert {"best.pt", "test_predictions.npz"} <= set(bundle.files)
    assert not (tmp_path / "scratch" / "transfuse-scratch" / rid).exists()  # cleaned up
    Store(tmp_path / "d").import_run(bundle)
    assert Store(tmp_path / "d").final_metrics(rid)["auc"] == pytest.approx(
        {m[2]: m[3] for m in bundle.metrics if m[1] == "test"}["auc"])


def _big_bundle(scratch: str) -> tuple[RunBundle, str]:
    """(On a Ray worker) a finished run whose ``best.pt`` is 300 MB, and that file's SHA-256."""
    rid = _finished_run(Path(scratch) / "big", seed=99)
    store = Store(Path(scratch) / "big")
    data = os.urandom(300 * 2**20)
    (store.run_dir(rid) / "best.pt").write_bytes(data)
    return store.export_run(rid), hashlib.sha256(data).hexdigest()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _unshare_ok() -> str | None:
    if not shutil.which("unshare"):
        return "no unshare command"
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs none /mnt"],
                           capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare --mount refused: {probe.stderr.strip()}"


NETWORKED = """
name: nfs
pretrain:
  mod: {data: {name: "builtin:modality", n_train: 48}, model: {name: cbr_tiny},
        train: {steps: 3, eval_every: 3, batch_size: 16}}
base:
  data: {name: "builtin:brain_tissue", n_train: 48}
  model: {name: cbr_tiny}
  train: {steps: 3, eval_every: 3, batch_size: 16}
  init: {source: "pretrain:mod"}
grid:
  init.name: [random, pretrained, "transfusion:block1"]
  seed: [0, 1]
"""


@pytest.mark.slow
def test_ray_second_node_without_the_workspace(tmp_path, monkeypatch):
    """A head with no CPUs and a worker node in a private mount namespace whose tmpfs hides the
    workspace's parent folder: every run executes where the workspace is invisible, and the
    study ends with every run, metric row and checkpoint in the driver's workspace."""
    ray = pytest.importorskip("ray")
    if (why := _unshare_ok()) is not None:
        pytest.skip(why)
    from transfuse.study import load_study, run_study

    root = tmp_path / "hidden"  # the tmpfs goes over this folder on the worker node
    ws = root / "ws"
    (root).mkdir()
    f = tmp_path / "nfs.yaml"
    f.write_text(NETWORKED)
    port = _free_port()
    bin_ = Path(sys.executable).parent
    # a private test cluster on this machine: no usage reports, no token shared with other clusters
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    # its own temp folder: the default one's "current cluster" file would make every later
    # ray.init() in this session try to join this (then stopped) cluster
    temp = tempfile.mkdtemp(prefix="tfray-", dir="/tmp")
    common = ["--block", "--disable-usage-stats"]
    head = subprocess.Popen([str(bin_ / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1",
                             "--port", str(port), "--num-cpus", "0", "--include-dashboard", "false",
                             "--temp-dir", temp,
                             *common], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        time.sleep(8)
        scratch = root / "scratch"
        script = (f"mount -t tmpfs none {root} && mkdir -p {scratch} && "
                  f"test ! -e {ws} && exec env TRANSFUSE_SCRATCH={scratch} {bin_ / 'ray'} start "
                  f"--address 127.0.0.1:{port} --node-ip-address 127.0.0.1 --num-cpus 2 "
                  + " ".join(common))
        worker = subprocess.Popen(["unshare", "--mount", "sh", "-c", script], env=env,
                                  start_new_session=True, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
        for _ in range(60):  # the worker node joins
            if ray.cluster_resources().get("CPU", 0) >= 2:
                break
            time.sleep(1)
        nodes = {n["NodeID"]: n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]}
        assert sorted(nodes.values()) == [0, 2]
        worker_node = next(k for k, v in nodes.items() if v == 2)
        out = run_study(load_study(f), workspace=ws, executor="ray", address=f"127.0.0.1:{port}",
                        progress=False)
        # the head has no CPUs: these tasks run on the worker node too, which cannot see the
        # workspace, and a 300 MB checkpoint comes back through Ray's object store intact
        assert ray.get(ray.remote(os.path.exists).remote(str(ws / "transfuse.db"))) is False
        big, digest = ray.get(ray.remote(_big_bundle).remote(str(scratch)))
        assert Store(ws).import_run(big)
        got = Store(ws).run_dir(big.run_id) / "best.pt"
        assert got.stat().st_size == 300 * 2**20
        assert hashlib.sha256(got.read_bytes()).hexdigest() == digest
    finally:
        ray.shutdown()
        for p in (worker, head):
            if p is not None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in (worker, head):
            if p is not None:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)
    assert out.ok, out.failed
    store = Store(ws)
    runs = store.list_runs()
    runs = [r for r in runs if r.run_id != big.run_id]
    assert len(runs) == 7 and all(r.status == "finished" for r in runs)  # 1 pretraining + 6
    assert {r.env["ray_node"] for r in runs} == {worker_node}  # all ran on the hidden node
    for r in runs:
        assert {"best.pt", "init.pt", "test_predictions.npz"} <= {
            p.name for p in store.run_dir(r.run_id).iterdir()}
        assert any(m[1] == "val" for m in store.metrics(r.run_id))
        assert "auc" in store.final_metrics(r.run_id)
    # the pretrained cells were initialised from the shipped pretraining checkpoint
    pre = next(r for r in runs if r.spec["init"]["name"] == "random" and "modality" in r.spec["data"]["name"])
    used = {r.init_report.get("source_info", {}).get("name") for r in runs
            if r.spec["init"]["name"] == "pretrained"}
    assert used == {f"run:{pre.run_id}"}


class _Resolved:
    """Stands in for the ``ray`` module where a task's return value is already at hand."""

    @staticmethod
    def get(value):
        return value


def test_a_preempted_ray_run_resumes_on_another_node_bit_identical(tmp_path, monkeypatch):
    """Attempt 1 is SIGTERMed on node A; the driver keeps the returned resume.pt; attempt 2 runs
    on node B (another scratch folder) from that checkpoint and ends as an uninterrupted run."""
    import torch

    from tests.test_resume import ARGS, _checkpoint_step, _start, _wait_for_step
    from transfuse.cli import main
    from transfuse.study.remote import RESUME, _store_result, run_in_scratch
    from transfuse.study.task import RunTask

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess (OMP_NUM_THREADS=1) and the task (threads=1)
    try:
        assert main([*ARGS, "-w", str(tmp_path / "ref")]) == 0
    finally:
        torch.set_num_threads(threads)
    (ref,) = Store(tmp_path / "ref").list_runs()
    node_a = tmp_path / "nodeA" / "transfuse-scratch" / ref.run_id  # as run_in_scratch lays it out
    proc = _start(node_a)
    kept = _wait_for_step(proc, node_a / "runs" / ref.run_id, 20)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    kept = _checkpoint_step(node_a / "runs" / ref.run_id)
    assert kept >= 20
    resume = (node_a / "runs" / ref.run_id / RESUME).read_bytes()

    driver = Store(tmp_path / "driver")
    spec = spec_from_dict(ref.spec)
    driver.start_run(spec, env={"executor": "ray"})
    back = (ref.run_id, "preempted", f"stopped by SIGTERM after step {kept}",
            RunBundle(ref.run_id, {}, [], {RESUME: resume}))
    assert _store_result(driver, ref.run_id, back, _Resolved)[1] == "preempted"
    assert driver.get_run(ref.run_id).status == "failed"
    assert (driver.run_dir(ref.run_id) / RESUME).read_bytes() == resume  # kept for the retry

    monkeypatch.setenv("TRANSFUSE_SCRATCH", str(tmp_path / "nodeB"))
    shipped = (driver.run_dir(ref.run_id) / RESUME).read_bytes()  # what run_on_ray ships
    done = run_in_scratch(RunTask(ref.spec, str(tmp_path / "driver"), "cpu", 1), shipped, {})
    assert done[1] == "finished" and done[3].row["summary"]["resumed_from"] == kept
    assert _store_result(driver, ref.run_id, done, _Resolved) == (ref.run_id, "finished", "")
    assert not (driver.run_dir(ref.run_id) / RESUME).exists()
    assert driver.final_metrics(ref.run_id) == Store(tmp_path / "ref").final_metrics(ref.run_id)
    assert driver.metrics(ref.run_id) == Store(tmp_path / "ref").metrics(ref.run_id)
    last = [torch.load(s.run_dir(ref.run_id) / "last.pt", weights_only=True)["state_dict"]
            for s in (driver, Store(tmp_path / "ref"))]
    assert all(torch.equal(last[0][k], last[1][k]) for k in last[1])


def test_a_task_that_dies_on_the_cluster_is_stored_failed(tmp_path):
    from transfuse.study.remote import _store_result

    class _Lost:
        @staticmethod
        def get(ref):
            raise RuntimeError("The worker died unexpectedly while executing this task.\nnode lost")

    driver = Store(tmp_path / "driver")
    spec = spec_from_dict({**SPEC, "seed": 3})
    rid = driver.start_run(spec, env={})
    (driver.run_dir(rid)).mkdir(parents=True)
    (driver.run_dir(rid) / "resume.pt").write_bytes(b"old")
    rid2, what, msg = _store_result(driver, rid, object(), _Lost)
    assert (rid2, what) == (rid, "failed") and "failed on the cluster: RuntimeError: node lost" in msg
    rec = driver.get_run(rid)
    assert rec.status == "failed" and rec.error == msg
    assert not (driver.run_dir(rid) / "resume.pt").exists()  # a failure restarts from step 0
