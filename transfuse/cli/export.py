"""``transfuse export``: a finished run's model as TorchScript, ONNX or safetensors, plus
``model.json`` (library: :mod:`transfuse.deploy.export`)."""

from __future__ import annotations

import argparse
import sys

from ._common import HelpFormatter, add_workspace, workspace_of

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", formatter_class=HelpFormatter,
        help="export a finished run's model: torchscript, onnx or safetensors, plus model.json",
        description="Write a finished run's model to a folder with model.json (model, task, class "
                    "names, input shape and channels, normalisation mean/std, init and source, "
                    "test metrics, versions). Each file is checked after writing (onnx: "
                    "onnxruntime vs torch, tolerance 1e-4) and the check is stored in model.json.")
    p.set_defaults(func=_export)
    p.add_argument("run_id", help="run id or a unique prefix (see `transfuse runs list`)")
    p.add_argument("--format", required=True,
                   help="torchscript (model.pt), onnx (model.onnx; needs onnx and onnxruntime: "
                        "pip install 'transfuse[export]') or safetensors (model.safetensors)")
    p.add_argument("-o", "--output", required=True, help="folder to write (created)")
    p.add_argument("--checkpoint", default="best",
                   help="best (best on validation: the weights of the stored test metrics) or "
                        "last (the final step)")
    add_workspace(p, help="the workspace the run was trained in")


def _export(a: argparse.Namespace) -> int:
    from ..deploy.export import export_run

    res = export_run(a.run_id, workspace=workspace_of(a), format=a.format, out_dir=a.output,
                     checkpoint=a.checkpoint)
    for t in res.removed:
        print(f"removed {t}: left by an interrupted export")
    chk = res.metadata["check"]
    diff = f", max |diff| {chk['max_abs_diff']:.2e} <= {chk['tolerance']:g}" if "max_abs_diff" in chk else ""
    print(f"model: {res.model_file.resolve()}")
    print(f"metadata: {res.metadata_file.resolve()}")
    if not res.passed:
        floor = chk.get("torch_float32_vs_float64")
        why = (f" (torch's own float32 rounding on this model is {floor:.2e}: the model is "
               "numerically sensitive)" if floor is not None and floor > chk["tolerance"] / 10 else "")
        print(f"check FAILED: {chk['method']}{diff.replace('<=', '>')}{why}; compare the file's "
              "outputs with the run's before using it", file=sys.stderr)
        return 1
    print(f"check passed: {chk['method']}{diff}")
    return 0
