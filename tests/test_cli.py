"""CLI round trips: train → runs list/show/export, and the listing commands cover every registry entry."""

from __future__ import annotations

import csv
import io
import json

import pytest

from transfuse.cli import main
from transfuse.data import DATASETS
from transfuse.inits import INITS
from transfuse.models import MODELS


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ws = tmp_path_factory.mktemp("cli_ws")
    args = ["train", "--dataset", "builtin:brain_tissue", "--n-train", "64", "--model", "cbr_tiny",
            "--steps", "4", "--eval-every", "2", "--batch-size", "16", "--seed", "3",
            "--workspace", str(ws), "--no-progress", "--json"]
    return ws, args


def test_train_json_then_skip(trained, capsys):
    ws, args = trained
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["skipped"] is False and 0 <= first["test"]["auc"] <= 1
    assert main(args) == 0  # the same spec again: stored result, no retraining
    second = json.loads(capsys.readouterr().out)
    assert second == {**first, "skipped": True}


def test_runs_list_show_export(trained, capsys):
    ws, args = trained
    main(args)
    res = json.loads(capsys.readouterr().out)
    rid = res["run_id"]
    assert main(["runs", "list", "--workspace", str(ws)]) == 0
    out = capsys.readouterr().out
    assert rid in out and "finished" in out and "cbr_tiny" in out
    assert f"AUC {res['test']['auc']:.4f}" in out  # the test score column

    assert main(["runs", "show", rid[:6], "--workspace", str(ws)]) == 0
    out = capsys.readouterr().out
    assert f"run {rid}" in out and "init report" in out and "stem" in out and "test   AUC" in out

    assert main(["runs", "show", rid, "--workspace", str(ws), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["spec"]["seed"] == 3 and rec["spec"]["data"]["n_train"] == 64
    assert rec["data"]["split_sizes"]["train"] == 64
    assert rec["init_report"]["strategy"] == "random"
    assert {s["name"] for s in rec["model"]["stages"]} == {"stem", "block1", "block2", "block3", "head"}

    out_csv = ws / "m.csv"
    assert main(["runs", "export", "--workspace", str(ws), "-o", str(out_csv)]) == 0
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    test_auc = [r for r in rows if r["split"] == "test" and r["metric"] == "auc"]
    assert len(test_auc) == 1 and abs(float(test_auc[0]["value"]) - rec["test"]["auc"]) < 1e-12
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    steps = sorted({int(r["step"]) for r in rows if r["split"] == "val"})
    assert steps == [0, 2, 4]


def test_listing_commands_cover_registries(capsys):
    """Every built-in entry (entries tests register at run time are not listed by the CLI)."""
    from transfuse.catalog import builtin

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(e.name in out for e in builtin(MODELS))
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert all(e.name in out for e in builtin(DATASETS)) and "retinamnist" in out and "adrenalmnist3d" in out
    assert main(["inits"]) == 0
    out = capsys.readouterr().out
    assert all(e.name in out for e in builtin(INITS))
    assert len(builtin(MODELS)) >= 25 and len(builtin(INITS)) >= 8


def test_runs_show_unknown_id_is_one_line_error(trained, capsys):
    ws, args = trained
    main(args)
    capsys.readouterr()
    assert main(["runs", "show", "zzzzzz", "--workspace", str(ws)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "zzzzzz" in err[0]
