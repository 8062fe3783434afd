"""Step-level study progress (issue 33): the bar moves while runs train, not only when they end."""

from __future__ import annotations

import pytest

from transfuse import _progress
from transfuse.study.runner import run_study
from transfuse.study.spec import load_study

STUDY = """name: prog
base:
  data: {name: "builtin:brain_tissue", n_train: 32}
  model: {name: cbr_tiny}
  train: {steps: 6, eval_every: 3, batch_size: 8}
grid:
  seed: [0, 1]
"""


@pytest.fixture
def bar_values(monkeypatch):
    import tqdm.auto

    seen: list[int] = []

    class Recording(tqdm.auto.tqdm):
        def update(self, n=1):
            out = super().update(n)
            if n and str(getattr(self, "desc", "")).startswith("study"):  # not the runs' own bars
                seen.append(self.n)
            return out

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    monkeypatch.setattr(_progress, "_interval", 0.0)  # every step (default: once a second)
    return seen


def test_a_two_run_study_shows_intermediate_step_counts(tmp_path, bar_values):
    f = tmp_path / "s.yaml"
    f.write_text(STUDY)
    out = run_study(load_study(f), workspace=tmp_path / "ws", workers=1, progress=True)
    assert len(out.finished) == 2
    assert bar_values == list(range(1, 13))  # 12 optimiser steps, each reported as it happened
    assert _progress._reporter is None  # the study stopped listening


@pytest.mark.slow
def test_worker_processes_report_steps_through_a_queue(tmp_path, bar_values):
    f = tmp_path / "s.yaml"
    f.write_text(STUDY.replace("steps: 6,", "steps: 40,").replace("eval_every: 3", "eval_every: 20"))
    out = run_study(load_study(f), workspace=tmp_path / "ws", workers=2, progress=True)
    assert len(out.finished) == 2 and bar_values[-1] == 80
    assert any(v % 40 for v in bar_values), bar_values  # steps arrived while the runs trained
