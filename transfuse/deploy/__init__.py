"""Deploying a finished run: predictions on new images, and model files for other runtimes.

Both stages read only the run store (spec, ``data_info``, ``model_info``, test metrics) and the
run's checkpoint, never the training code path::

    from transfuse.deploy import predict_run, export_run
    predict_run("3f2a9c", input="test", workspace="workspace", output="test.csv")
    export_run("3f2a9c", workspace="workspace", format="onnx", out_dir="exported")

See ``docs/DEPLOY.md`` for the input forms, outputs and the ``model.json`` fields.
"""

from ._run import CHECKPOINTS, DeployedRun, load_run
from .export import FORMATS, ONNX_TOL, ExportResult, export_run, model_metadata
from .predict import PredictInput, Prediction, classify, parse_input, predict_run, segment_volume

__all__ = [
    "CHECKPOINTS", "DeployedRun", "load_run", "FORMATS", "ONNX_TOL", "ExportResult", "export_run",
    "model_metadata", "PredictInput", "Prediction", "classify", "parse_input", "predict_run",
    "segment_volume",
]
