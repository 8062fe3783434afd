"""MLflow round trip (issue 33): a run logged with --mlflow reads back from a local store."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from transfuse.cli import main

mlflow = pytest.importorskip("mlflow")


def _train(tmp_path, *extra):
    return ["train", "--dataset", "builtin:brain_tissue", "--n-train", "32", "--model", "cbr_tiny",
            "--steps", "4", "--eval-every", "2", "--batch-size", "8", "-w", str(tmp_path / "ws"),
            "--no-progress", "--json", *extra]


def test_train_logs_params_metrics_test_and_checkpoint(tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    store = tmp_path / "mlruns"
    assert main(_train(tmp_path, "--mlflow", str(store), "--study", "mlf")) == 0
    res = json.loads(capsys.readouterr().out)
    client = MlflowClient(store.resolve().as_uri())
    exp = client.get_experiment_by_name("mlf")  # the study is the experiment
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["transfuse.run_id"] == res["run_id"]
    p = run.data.params
    assert p["model.name"] == "cbr_tiny" and p["train.steps"] == "4" and p["seed"] == "0"
    assert p["arm"] == "random" and p["data.n_train"] == "32"
    val = client.get_metric_history(run.info.run_id, "val/auc")
    assert [m.step for m in val] == [0, 2, 4]  # every evaluation, at its step
    assert run.data.metrics["test/auc"] == pytest.approx(res["test"]["auc"])
    assert run.data.metrics["test/ece"] == pytest.approx(res["test"]["ece"])
    assert {"best.pt", "metrics.csv"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    # the same run again: found by its tag, not logged twice
    assert main(_train(tmp_path, "--mlflow", str(store), "--study", "mlf")) == 0
    assert len(client.search_runs([exp.experiment_id])) == 1


def test_missing_mlflow_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    assert main(_train(tmp_path, "--mlflow")) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: --mlflow needs MLflow: pip install 'transfuse[mlflow]' (or "
                   "mlflow-skinny), or leave --mlflow out")
    assert not (tmp_path / "ws").exists()


def test_study_report_is_an_artifact_of_the_study_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from transfuse.tracking import log_study_report, tracking_uri

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    report = tmp_path / "report-s.html"
    report.write_text("<html>report</html>")
    uri = tracking_uri(None, tmp_path / "ws")
    assert uri == (tmp_path / "ws" / "mlruns").resolve().as_uri()  # offline default
    assert tracking_uri("http://mlflow.lab:5000", tmp_path) == "http://mlflow.lab:5000"
    assert tracking_uri("runs/ml", tmp_path) == (Path.cwd() / "runs/ml").resolve().as_uri()
    first = log_study_report(uri, study="s", report=report)
    assert log_study_report(uri, study="s", report=report) == first  # one run per study
    client = MlflowClient(uri)
    assert [a.path for a in client.list_artifacts(first)] == ["report-s.html"]
    assert client.get_run(first).data.tags["transfuse.kind"] == "study"
    assert client.get_experiment(client.get_run(first).info.experiment_id).name == "s"
