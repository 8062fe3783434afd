"""Every shipped study example runs with ``--smoke`` and yields a report (CI runs this)."""

from pathlib import Path

import pytest

from transfuse.cli import main
from transfuse.study import load_study

from .conftest import MEDMNIST_DIR

ALL = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))
CHAINS = [p for p in ALL if p.name.startswith("selftrain")]  # `transfuse selftrain` files
# `transfuse pretrain med3d` files: smoke-tested in tests/test_pretrain_med3d.py
PRETRAIN = [p for p in ALL if p.name.startswith("med3d_pretrain")]
EXAMPLES = [p for p in ALL if p not in CHAINS and p not in PRETRAIN]
# Smoke runs too long for the default suite (measured on 2 shared CPU cores): finetune.yaml is 24
# EfficientNet cells, ~7 min. Its cells are checked by tests/test_study_check.py (no training),
# and its arms (finetune × augment) run on small data in tests/test_finetune_arms.py.
# ssl_retina.yaml is ssl_pneumonia.yaml's design on RGB data (~2 min; the default suite runs the
# pneumonia one). heldout_pneumonia.yaml: 4 EfficientNet-Lite0 cells evaluated on PneumoniaMNIST's
# full validation and test splits (its cells are checked by tests/test_study_check.py; its report
# by tests/test_heldout_card.py, from the committed JSON).
SLOW = {"finetune", "ssl_retina", "heldout_pneumonia"}


def test_every_example_is_covered():
    assert {p.stem for p in EXAMPLES} >= {"quickstart", "transfusion", "medmnist_pneumonia",
                                          "seg3d_brain"}
    assert CHAINS and PRETRAIN and set(EXAMPLES) | set(CHAINS) | set(PRETRAIN) == set(ALL)


def _data_env(path, monkeypatch):
    if "medmnist:" in path.read_text():
        if not MEDMNIST_DIR.is_dir():
            pytest.skip(f"MedMNIST files not found in {MEDMNIST_DIR}")
        monkeypatch.setenv("TRANSFUSE_DATA", str(MEDMNIST_DIR))


@pytest.mark.parametrize("path", CHAINS, ids=lambda p: p.stem)
def test_selftrain_example_smoke_runs_and_reports(path, tmp_path, monkeypatch, capsys):
    _data_env(path, monkeypatch)
    ws = tmp_path / "ws"
    rc = main(["selftrain", str(path), "--smoke", "--workspace", str(ws), "--no-progress"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "teacher" in out.out and "supervised, 100 % labelled" in out.out
    from transfuse.store import Store

    (study,) = {r.study for r in Store(ws).list_runs()}
    assert study.endswith("-smoke")
    assert main(["report", str(ws), "--study", study, "-o", str(tmp_path / "r.html")]) == 0
    assert "Self-training chain" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW else p
                                  for p in EXAMPLES], ids=lambda p: p.stem)
def test_example_smoke_runs_and_reports(path, tmp_path, monkeypatch, capsys):
    _data_env(path, monkeypatch)
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
