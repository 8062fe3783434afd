"""A workspace copied to another path (another machine, a backup) still serves its runs as
``run:<id>`` sources: the checkpoint is found in the workspace's own ``runs/<id>`` folder."""

from __future__ import annotations

import shutil

import pytest
import torch

from transfuse import DataSpec, ModelSpec, RunSpec, TrainSpec, train_run
from transfuse.weights import resolve_source
from transfuse.weights.io import WeightsError


def test_run_source_from_a_moved_workspace(tmp_path):
    spec = RunSpec(data=DataSpec(name="builtin:brain_tissue", n_train=32), model=ModelSpec(name="cbr_tiny"),
                   train=TrainSpec(steps=2, eval_every=2, batch_size=16))
    first = tmp_path / "a"
    rid = train_run(spec, workspace=first, device="cpu", progress=False).record.run_id
    best = torch.load(first / "runs" / rid / "best.pt", weights_only=True)
    moved = tmp_path / "b"
    shutil.copytree(first, moved)
    shutil.rmtree(first)
    src = resolve_source(f"run:{rid}", workspace=moved)
    state = src.loader()
    assert set(state) == set(best["state_dict"])
    assert all(torch.equal(state[k], v) for k, v in best["state_dict"].items())
    (moved / "runs" / rid / "best.pt").unlink()
    with pytest.raises(WeightsError, match=f"run {rid} is finished but its checkpoint .* is missing"):
        resolve_source(f"run:{rid}", workspace=moved).loader()
