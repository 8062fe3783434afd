"""One GPU per run: which CUDA_VISIBLE_DEVICES each local worker starts with, what each Ray task
requests, and what every run records. CUDA is stubbed (no test touches a real GPU): the driver's
GPU count is faked, the workers train on the CPU and record the visibility they were given."""

from __future__ import annotations

from pathlib import Path

import pytest

from transfuse.cli import main
from transfuse.errors import ConfigError
from transfuse.store import Store
from transfuse.study import placement as pl
from transfuse.study.placement import Placement, local_slots, ray_resources

TINY = """
name: tiny
base:
  data: {name: "builtin:brain_tissue", n_train: 48}
  model: {name: cbr_tiny}
  train: {steps: 3, eval_every: 3, batch_size: 16}
grid:
  init: [random, "random:kaiming"]
  seed: [0, 1]
evaluation:
  auc_thresholds: [0.99]
"""


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this process sees ``n`` GPUs (``CUDA_VISIBLE_DEVICES`` as given, or unset)."""
    def set_(n: int, visible: str | None = None) -> None:
        monkeypatch.setattr(pl, "_cuda_count", lambda: n)
        if visible is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    return set_


@pytest.mark.parametrize("n, visible, placement, workers, want", [
    (2, None, Placement(), None, ["0", "1"]),                         # auto: one worker per GPU
    (2, None, Placement(runs_per_device=2), None, ["0", "1", "0", "1"]),
    (4, None, Placement(devices="3,1"), None, ["3", "1"]),
    (4, None, Placement(), 6, ["0", "1", "2", "3", "0", "1"]),         # --workers: round robin
    (2, "4,5", Placement(devices="1"), None, ["5"]),                   # physical id under a mask
    (2, "4,5", Placement(), None, ["4", "5"]),
    (2, None, Placement(devices="cpu"), 3, ["", "", ""]),              # GPUs hidden
    (0, None, Placement(), 2, [None, None]),                           # no GPU: CPU as before
    (0, None, Placement(), None, [None]),
])
def test_local_slots(gpus, n, visible, placement, workers, want):
    gpus(n, visible)
    assert local_slots(placement, workers=workers) == (len(want), want)


def test_bad_devices_name_the_flag_and_the_fix(gpus):
    gpus(2)
    with pytest.raises(ConfigError, match=r"--devices 0,2: GPU 2 is not visible here \(this "
                                          r"process sees 2: 0-1\)"):
        local_slots(Placement(devices="0,2"), workers=None)
    for bad in ("gpu0", "1,1", "-1", ""):
        with pytest.raises(ConfigError, match="give auto, cpu or distinct GPU numbers"):
            Placement(devices=bad)
    gpus(0)
    with pytest.raises(ConfigError, match="--devices 0: no GPU is visible here; use --devices cpu"):
        local_slots(Placement(devices="0"), workers=None)
    with pytest.raises(ConfigError, match="--runs-per-device 0 must be >= 1"):
        Placement(runs_per_device=0)


def test_ray_task_resources():
    assert ray_resources(Placement(), 2) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert ray_resources(Placement(), 0) == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert ray_resources(Placement(devices="cpu"), 2)["num_gpus"] == 0.0
    assert ray_resources(Placement(gpus_per_run=0.5, cpus_per_run=4), 2) == {"num_cpus": 4,
                                                                           "num_gpus": 0.5}
    with pytest.raises(ConfigError, match="--gpus-per-run 2: the Ray cluster has 1 GPUs"):
        ray_resources(Placement(gpus_per_run=2), 1)


def _visibility(ws: Path) -> dict[str, str | None]:
    return {r.run_id: r.env.get("cuda_visible_devices") for r in Store(ws).list_runs()}


def test_study_run_devices_gives_each_worker_its_gpu(gpus, tmp_path, capsys):
    gpus(2)  # the driver sees two GPUs; the spawned workers have no CUDA and train on the CPU
    f = tmp_path / "tiny.yaml"
    f.write_text(TINY)
    ws = tmp_path / "ws"
    assert main(["study", "run", str(f), "-w", str(ws), "--devices", "0,1", "--no-progress"]) == 0
    seen = _visibility(ws)
    assert len(seen) == 4 and set(seen.values()) == {"0", "1"}  # two workers, one GPU each
    assert all(r.env["device"] == "cpu" for r in Store(ws).list_runs())
    ws2 = tmp_path / "ws2"
    assert main(["study", "run", str(f), "-w", str(ws2), "--devices", "cpu", "--workers", "2",
                 "--no-progress"]) == 0
    assert set(_visibility(ws2).values()) == {""}
    assert main(["study", "run", str(f), "-w", str(ws2), "--devices", "0", "--device", "cpu"]) == 2
    assert "give --device cpu (one device for every run) or --devices 0" in capsys.readouterr().err


def test_ray_runs_get_distinct_fake_gpus_and_at_most_two_at_once(tmp_path):
    ray = pytest.importorskip("ray")
    from transfuse.study import load_study, run_study

    f = tmp_path / "tiny.yaml"
    f.write_text(TINY.replace("seed: [0, 1]", "seed: [0, 1, 2]"))
    ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = run_study(load_study(f), workspace=tmp_path / "ws", executor="ray", progress=False,
                        placement=Placement(gpus_per_run=1), cohort="off")  # runs, not cohorts
    finally:
        ray.shutdown()
    assert out.ok and len(out.finished) == 6
    runs = Store(tmp_path / "ws").list_runs()
    assert {r.env["cuda_visible_devices"] for r in runs} <= {"0", "1"}
    # in flight together: never more than the two GPUs, and never two on one GPU
    for a in runs:
        overlapping = [b for b in runs if b.started < a.finished and a.started < b.finished]
        assert len(overlapping) <= 2
        assert len({b.env["cuda_visible_devices"] for b in overlapping}) == len(overlapping)
