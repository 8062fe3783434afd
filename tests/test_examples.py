"""Every shipped study example runs with ``--smoke`` and yields a report (CI runs this)."""

import os
from pathlib import Path

import pytest

from transfuse.cli import main
from transfuse.study import load_study

from .conftest import MEDMNIST_DIR

EXAMPLES = sorted(p for p in (Path(__file__).resolve().parents[1] / "examples").glob("*.yaml")
                  if not p.name.startswith("selftrain"))  # self-training chains: tests/test_selftrain.py


def test_every_example_is_covered():
    assert {p.stem for p in EXAMPLES} >= {"quickstart", "transfusion", "medmnist_pneumonia"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_smoke_runs_and_reports(path, tmp_path, monkeypatch, capsys):
    text = path.read_text()
    if "medmnist:" in text:
        if not MEDMNIST_DIR.is_dir():
            pytest.skip(f"MedMNIST files not found in {MEDMNIST_DIR}")
        monkeypatch.setenv("TRANSFUSE_DATA", str(MEDMNIST_DIR))
    study = load_study(path)
    ws = tmp_path / "ws"
    rc = main(["study", "run", str(path), "--smoke", "--workspace", str(ws), "--workers", "1",
               "--no-progress", "--report", str(tmp_path / "r.html")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"study {study.name}-smoke:" in out.out and "0 failed" in out.out
    html = (tmp_path / "r.html").read_text()
    assert f"transfuse study report: {study.name}-smoke" in html
    assert html.count("data:image/png;base64,") >= 2
