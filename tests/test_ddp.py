"""DDP: ``torchrun --nproc_per_node 2`` on CPU (gloo) trains one run, stored once, by rank 0."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from transfuse.store import Store

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import numpy as np
    import torch
    torch.set_num_threads(1)

    from transfuse.config import DataSpec, ModelSpec, RunSpec, TrainSpec
    from transfuse.data.base import SplitArrays
    from transfuse.data.registry import DATASETS, RawData, register_dataset
    from transfuse.run import train_run

    def loader(spec, arg):
        rng = np.random.default_rng(spec.split_seed)
        n = int(arg)
        x = rng.normal(0.3, 0.1, size=(n, 1, 16, 16)).astype(np.float32)
        y = np.arange(n) % 2
        rng.shuffle(y)
        x[y == 1, 0, :8, :8] += 0.5
        return RawData(task="multiclass", class_names=("neg", "pos"), spatial_dims=2,
                       splits={"all": SplitArrays(np.clip(x, 0, 1), y, "synthetic")})

    if "synth_ddp" not in DATASETS:
        register_dataset("synth_ddp")(loader)

    workspace, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    spec = RunSpec(data=DataSpec(name="synth_ddp:200"), model=ModelSpec("cbr_tiny"),
                   train=TrainSpec(steps=steps, batch_size=8, lr=0.05, eval_every=5), seed=0)
    res = train_run(spec, workspace=workspace, device="cpu", progress=False)
    rank = int(os.environ["RANK"])
    import torch.distributed as dist
    with open(f"{out}.{rank}.json", "w") as f:
        json.dump({"rank": rank, "world": int(os.environ["WORLD_SIZE"]), "test": res.test,
                   "skipped": res.skipped, "initialized": dist.is_initialized(),
                   "world_size": dist.get_world_size() if dist.is_initialized() else 1}, f)
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script, *args, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    tmp = tmp_path_factory.mktemp("ddp")
    script = tmp / "train_ddp.py"
    script.write_text(SCRIPT)
    ws = tmp / "ws"
    proc = torchrun(script, ws, 12, tmp / "result")
    return proc, ws, tmp


def test_torchrun_exits_cleanly(ddp_run):
    proc, ws, tmp = ddp_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((tmp / f"result.{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in results] == [2, 2]
    assert all(r["initialized"] and r["world_size"] == 2 for r in results)
    assert not any(r["skipped"] for r in results)
    # Every rank evaluated the same weights on the full test split: identical numbers.
    assert results[0]["test"] == results[1]["test"]


def test_run_stored_once_with_test_metrics(ddp_run):
    proc, ws, tmp = ddp_run
    assert proc.returncode == 0
    store = Store(ws)
    runs = store.list_runs()
    assert len(runs) == 1
    r = runs[0]
    assert r.status == "finished" and r.env["world_size"] == 2
    test = store.final_metrics(r.run_id)
    assert set(test) >= {"loss", "auc", "acc", "auc/neg", "auc/pos"}
    rank0 = json.loads((tmp / "result.0.json").read_text())["test"]
    assert test["auc"] == pytest.approx(rank0["auc"])
    rows = store.metrics(r.run_id)
    # each evaluation logged once (rank 0 only): val at 0, 5, 10, 12; train at 5, 10, 12
    keys = [(s, sp) for s, sp, n, _ in rows if n == "loss"]
    assert keys == [(0, "val"), (5, "train"), (5, "val"), (10, "train"), (10, "val"),
                    (12, "test"), (12, "train"), (12, "val")]
    assert r.summary["steps"] == 12


def test_checkpoints_written(ddp_run):
    proc, ws, tmp = ddp_run
    assert proc.returncode == 0
    store = Store(ws)
    (r,) = store.list_runs()
    d = store.run_dir(r.run_id)
    assert sorted(p.name for p in d.iterdir()) == ["best.pt", "init.pt", "last.pt", "metrics.csv",
                                                    "test_predictions.npz"]  # rank 0 writes, once
    init = torch.load(d / "init.pt", weights_only=True)["state_dict"]
    last = torch.load(d / "last.pt", weights_only=True)["state_dict"]
    assert not any(k.startswith("module.") for k in last)  # the unwrapped model's keys
    assert not torch.equal(init["stem.0.weight"], last["stem.0.weight"])
    # 12 steps of 8 per rank: each rank's BatchNorm saw 12 batches
    assert int(last["stem.1.num_batches_tracked"]) == 12


def test_rerun_is_skipped(ddp_run):
    proc, ws, tmp = ddp_run
    assert proc.returncode == 0
    again = torchrun(tmp / "train_ddp.py", ws, 12, tmp / "again")
    assert again.returncode == 0, again.stderr[-3000:]
    results = [json.loads((tmp / f"again.{r}.json").read_text()) for r in (0, 1)]
    assert all(r["skipped"] for r in results)
    assert len(Store(ws).list_runs()) == 1
