"""MLflow tracking: ``--mlflow [URI]`` on ``train``, ``study run`` and ``pretrain``.

What the store holds for a run is logged once it finishes: the flattened spec and the arm label
as parameters, every evaluation's metrics at their step (``val/auc``, ``train/loss``, …), the
test metrics (``test/auc``, ``test/sensitivity``, per class ``test/auc.<class>``), the transfuse run id as the tag
``transfuse.run_id``, and ``best.pt`` and ``metrics.csv`` as artifacts. The study is the
experiment (a plain run's is ``transfuse``); a study's report goes to a run named after the study.
A run already logged to the experiment (same tag) is not logged again.

Offline by default: without a URI the tracking store is the folder ``WORKSPACE/mlruns`` (MLflow's
file store; ``mlflow ui --backend-store-uri WORKSPACE/mlruns`` shows it); any tracking URI
(``http://host:5000``, ``sqlite:///mlflow.db``, ``databricks``) works. MLflow is an optional
extra (``pip install 'transfuse[mlflow]'``), imported only here and only when asked for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .arms import arm_label
from .errors import ConfigError

__all__ = ["check_mlflow", "tracking_uri", "log_run", "log_pretraining", "log_study_report",
           "flatten"]

RUN_TAG = "transfuse.run_id"


def check_mlflow() -> None:
    """Raise a one-line ConfigError when MLflow is not installed."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError("--mlflow needs MLflow: pip install 'transfuse[mlflow]' (or "
                          "mlflow-skinny), or leave --mlflow out") from None


def tracking_uri(arg: str | None, workspace: str | Path) -> str:
    """The tracking URI of ``--mlflow [URI]``: ``arg``, or the local file store
    ``WORKSPACE/mlruns`` when it is empty; a plain folder becomes a ``file://`` URI."""
    if arg and ("://" in arg or arg.startswith(("databricks", "sqlite:", "file:"))):
        return arg
    path = Path(arg) if arg else Path(workspace) / "mlruns"
    return path.expanduser().resolve().as_uri()


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.01}}`` → ``{"train.lr": "0.01"}`` (lists as their JSON text)."""
    import json

    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v)
    return out


def _client(uri: str) -> Any:
    check_mlflow()
    # Offline and quiet: no usage telemetry; MLflow 3 keeps its file store behind an opt-in.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment(client: Any, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else client.create_experiment(name)


def _find(client: Any, exp_id: str, key: str, value: str) -> str | None:
    runs = client.search_runs([exp_id], filter_string=f"tags.`{key}` = '{value}'", max_results=1)
    return runs[0].info.run_id if runs else None


def log_run(store: Any, run_id: str, *, uri: str) -> str | None:
    """Log one finished run of ``store`` to MLflow (see the module docstring).

    Returns:
        the MLflow run id, or ``None`` when the run is not finished.
    """
    from mlflow.entities import Metric, Param, RunTag

    rec = store.get_run(run_id)
    if rec.status != "finished":
        return None
    client = _client(uri)
    exp_id = _experiment(client, rec.study or "transfuse")
    found = _find(client, exp_id, RUN_TAG, rec.run_id)
    if found:
        return found
    spec = rec.spec
    run = client.create_run(exp_id, run_name=f"{spec['model']['name']} {arm_label(spec)} "
                            f"seed {spec['seed']}", tags={RUN_TAG: rec.run_id})
    mid = run.info.run_id
    params = {**flatten(spec), "arm": arm_label(spec, {spec["init"]["name"]})}
    items = list(params.items())
    for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
        client.log_batch(mid, params=[Param(k, v[:6000]) for k, v in items[i:i + 100]])
    ts = int((rec.finished or 0) * 1000)
    # per-class names ("auc/<class>") become "auc.<class>": the file store makes "val/auc" a
    # file, so it cannot also be the folder of "val/auc/<class>"
    metrics = [Metric(f"{split}/{name.replace('/', '.')}", float(v), ts, int(step))
               for step, split, name, v in store.metrics(rec.run_id) if v is not None]
    for i in range(0, len(metrics), 1000):
        client.log_batch(mid, metrics=metrics[i:i + 1000])
    summary = {k: v for k, v in (rec.summary or {}).items() if isinstance(v, (int, float))}
    client.log_batch(mid, metrics=[Metric(f"summary/{k}", float(v), ts, 0) for k, v in summary.items()],
                     tags=[RunTag("transfuse.study", rec.study or "")])
    folder = Path(rec.run_dir) if rec.run_dir else None
    for name in ("best.pt", "metrics.csv"):
        if folder is not None and (folder / name).is_file():
            client.log_artifact(mid, str(folder / name))
    client.set_terminated(mid)
    return mid


def log_study_report(uri: str, *, study: str, report: str | Path) -> str:
    """The study's report as an artifact of the run ``study <name>`` in the study's experiment."""
    client = _client(uri)
    exp_id = _experiment(client, study)
    mid = _find(client, exp_id, "transfuse.kind", "study")
    if mid is None:
        mid = client.create_run(exp_id, run_name=f"study {study}",
                                tags={"transfuse.kind": "study"}).info.run_id
    client.log_artifact(mid, str(report))
    client.set_terminated(mid)
    return mid


def log_pretraining(uri: str, *, name: str, config: dict[str, Any], summary: dict[str, Any],
                    out_dir: str | Path) -> str:
    """A pretraining (Med3D, self-supervised): its config as parameters, its summary's numbers
    as metrics, ``pretrain.json`` and the encoder as artifacts; experiment ``pretrain``."""
    from mlflow.entities import Metric, Param

    client = _client(uri)
    mid = client.create_run(_experiment(client, "pretrain"), run_name=name,
                            tags={"transfuse.pretrain": name}).info.run_id
    items = list(flatten(config).items())
    for i in range(0, len(items), 100):
        client.log_batch(mid, params=[Param(k, v[:6000]) for k, v in items[i:i + 100]])
    nums = [(k, v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    client.log_batch(mid, metrics=[Metric(k, float(v), 0, 0) for k, v in nums])
    for f in ("pretrain.json", "encoder.pt"):
        if (Path(out_dir) / f).is_file():
            client.log_artifact(mid, str(Path(out_dir) / f))
    client.set_terminated(mid)
    return mid
