"""An edited study file never pools the old version's runs into the new statistics (issue 29).

Run a 2-seed study, edit its file (``train.steps`` 4 → 5, seeds [0, 1] → [0, 1, 2]) and run it
again: every cell has n = 3 (the current seeds), the 4 old runs are listed as left out with the
reason, and ``study status`` and the report agree. A run folder that lost its files is named in
the report with the figures it is missing from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from transfuse.cli import main
from transfuse.store import Store
from transfuse.decide.evaluation import Sequential

STUDY = """
name: edited
base:
  data: {{name: "builtin:brain_tissue", n_train: 48}}
  model: {{name: cbr_tiny}}
  train: {{steps: {steps}, eval_every: 2, batch_size: 16}}
grid:
  init: [random, "random:kaiming"]
  seed: {seeds}
"""


def _json(ws: Path, capsys, *extra: str) -> dict:
    out = ws / "r.json"
    assert main(["report", str(ws), "--format", "json", "-o", str(out), *extra]) == 0
    capsys.readouterr()
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """A workspace holding both versions of the study, and the two study files."""
    tmp = tmp_path_factory.mktemp("edited")
    ws = tmp / "ws"
    old = tmp / "old.yaml"
    old.write_text(STUDY.format(steps=4, seeds="[0, 1]"))
    assert main(["study", "run", str(old), "-w", str(ws), "--no-progress"]) == 0
    new = tmp / "new.yaml"
    new.write_text(STUDY.format(steps=5, seeds="[0, 1, 2]"))
    assert main(["study", "run", str(new), "-w", str(ws), "--no-progress",
                 "--report", str(tmp / "r.html")]) == 0
    return ws, old, new, tmp


def test_the_report_counts_only_the_current_cells_and_lists_the_old_runs(edited, capsys):
    ws, old, new, tmp = edited
    assert len(Store(ws).list_runs(study="edited")) == 10  # 4 old + 6 new, all stored
    data = _json(ws, capsys, "--study", "edited")
    assert {c["arm"]: (c["n"], c["seeds"]) for c in data["cells"]} == {
        "random": (3, [0, 1, 2]), "random:kaiming": (3, [0, 1, 2])}
    assert data["runs"]["finished"] == 6
    paired = [q["n"] for q in data["comparisons"] if not q["endpoint"].startswith("speed")]
    assert paired == [3] * len(paired) and paired  # (speed questions count seeds that reached it)
    left = data["runs"]["left_out"]
    assert len(left) == 4 and sorted(x["seed"] for x in left) == [0, 0, 1, 1]
    assert all("train.steps 4 → 5" in x["reason"] for x in left)
    assert data["runs"]["progress"] == {"finished": 6, "running": 0, "stale": 0, "failed": 0,
                                        "missing": 0}
    html = (tmp / "r.html").read_text()
    assert "4 finished run(s) stored under this study's name are left out" in html
    assert "train.steps 4 → 5" in html


def test_study_status_agrees_with_the_report(edited, capsys):
    ws, old, new, _ = edited
    assert main(["study", "status", str(new), "-w", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "study edited: 6 runs — 6 finished" in out
    assert "4 finished run(s) stored under 'edited' are not cells of this file" in out


def test_study_file_judges_the_older_version(edited, capsys):
    ws, old, _, _ = edited
    data = _json(ws, capsys, "--study-file", str(old))
    assert {c["arm"]: c["n"] for c in data["cells"]} == {"random": 2, "random:kaiming": 2}
    assert len(data["runs"]["left_out"]) == 6
    assert {x["reason"] for x in data["runs"]["left_out"]} == {
        "another version of the study file: train.steps 5 → 4"}
    assert data["runs"]["progress"]["finished"] == 4


def test_a_name_that_differs_from_the_study_file_is_refused(edited, capsys):
    ws, old, _, _ = edited
    assert main(["report", str(ws), "--study", "other", "--study-file", str(old)]) == 2
    assert "differs from the name 'edited'" in capsys.readouterr().err


def test_adaptive_seeds_of_a_current_cell_stay_in(edited, tmp_path, capsys):
    """Seeds --until-decided added beyond grid.seed are kept after a plain rerun of the file."""
    ws0, _, new, _ = edited
    ws = tmp_path / "ws"
    shutil.copytree(ws0, ws)
    store = Store(ws)
    info = store.get_results("study", study="edited")["edited"]
    seq = Sequential.plan(initial=2, max_seeds=4, batch=2).to_dict()  # as --until-decided records
    store.put_result("study", "edited", {**info, "sequential": seq}, study="edited")
    three = new.parent / "two_seeds.yaml"
    three.write_text(STUDY.format(steps=5, seeds="[0, 1]"))
    assert main(["study", "run", str(three), "-w", str(ws), "--no-progress"]) == 0
    data = _json(ws, capsys, "--study", "edited")
    assert {c["arm"]: c["n"] for c in data["cells"]} == {"random": 3, "random:kaiming": 3}
    assert len(data["runs"]["left_out"]) == 4


def test_a_run_folder_without_files_is_named_with_the_figures_it_misses(edited, tmp_path, capsys):
    ws0, _, _, _ = edited
    ws = tmp_path / "ws"
    shutil.copytree(ws0, ws)
    store = Store(ws)
    data = _json(ws, capsys, "--study", "edited")
    left = {x["run_id"] for x in data["runs"]["left_out"]}
    rid = next(r.run_id for r in store.list_runs(study="edited") if r.run_id not in left)
    shutil.rmtree(store.run_dir(rid))
    after = _json(ws, capsys, "--study", "edited")
    assert after["runs"]["missing_files"] == {
        rid: ["init.pt", "best.pt", "last.pt", "test_predictions.npz"]}
    assert after["runs"]["finished"] == 6  # its scores still count: they are in the store
    out = ws / "r.html"
    assert main(["report", str(ws), "--study", "edited", "-o", str(out)]) == 0
    html = out.read_text()
    assert "1 finished run(s) lack files" in html
    assert "per-seed DeLong tests" in html and rid in html
