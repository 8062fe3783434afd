"""``transfuse pretrain med3d|ssl``: pretrain an encoder ourselves."""

from __future__ import annotations

import argparse
import json

from ._common import (HelpFormatter, add_device, add_mlflow, add_overrides, add_progress,
                      add_workspace, workspace_of)

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder ourselves (Med3D multi-dataset, "
                       "self-supervised on unlabelled images)")
    ps = p.add_subparsers(dest="pretrain_cmd", required=True)
    q = ps.add_parser("med3d", help="one shared Med3D encoder, one segmentation head per dataset",
                      formatter_class=HelpFormatter)
    q.set_defaults(func=_pretrain)
    q.add_argument("file", help="pretraining YAML file (see examples/med3d_pretrain.yaml)")
    add_workspace(q, help="default output root: WORKSPACE/pretrain/NAME")
    q.add_argument("-o", "--out", help="output folder (default WORKSPACE/pretrain/NAME)")
    q.add_argument("--smoke", action="store_true",
                   help="a few steps on tiny patches, for CI (default: the full pretraining)")
    add_device(q)
    add_progress(q)
    add_mlflow(q)
    add_overrides(q, what="the pretraining file", example="--set steps=500 --set lr=0.02 "
                  "--set datasets[0].weight=2")
    q = ps.add_parser("ssl", help="self-supervised pretraining on unlabelled images (simclr, byol, "
                      "restoration); the encoder becomes the source ssl:NAME",
                      formatter_class=HelpFormatter)
    q.set_defaults(func=_ssl)
    q.add_argument("file", help="SSL pretraining YAML file (see docs/SSL.md)")
    add_workspace(q, help="default output root: WORKSPACE/pretrain/NAME")
    q.add_argument("-o", "--out", help="output folder (default WORKSPACE/pretrain/NAME)")
    q.add_argument("--smoke", action="store_true",
                   help="a few steps on 16 images, for CI (default: the full pretraining)")
    q.add_argument("--force", action="store_true",
                   help="train again even when the output folder holds a finished pretraining "
                        "(default: skip the same config, refuse another one)")
    add_device(q)
    add_progress(q)
    add_mlflow(q)
    add_overrides(q, what="the SSL file", example="--set steps=500 --set lr=0.0005 "
                  "--set data.image_size=64")


def _pretrain(a: argparse.Namespace) -> int:
    from ..pretrain import default_out_dir, pretrain_med3d
    from ..spec.kinds import load_file

    spec = load_file("med3d", a.file, sets=a.set or ())
    spec = spec.shrink() if a.smoke else spec
    _check_mlflow(a)
    out = pretrain_med3d(spec, out_dir=a.out or default_out_dir(spec, workspace_of(a)),
                         device=a.device, progress=not a.no_progress)
    s = out.summary
    _log_mlflow(a, spec, out)
    print(json.dumps({"name": s["name"], "out": str(out.out_dir), "steps": s["steps"],
                      "seconds": s["seconds"], "use": s["use"],
                      "val_dice": {d["name"]: d["final_dice"] for d in s["datasets"]}}))
    return 0


def _ssl(a: argparse.Namespace) -> int:
    from ..spec.kinds import load_file

    spec = load_file("ssl", a.file, sets=a.set or ())  # parsed and checked before torch loads
    spec = spec.shrink() if a.smoke else spec
    _check_mlflow(a)
    from ..pretrain.ssl import default_out_dir, pretrain_ssl

    out = pretrain_ssl(spec, out_dir=a.out or default_out_dir(spec, workspace_of(a)),
                       device=a.device, progress=not a.no_progress, force=a.force)
    s = out.summary
    _log_mlflow(a, spec, out)
    print(json.dumps({"name": s["name"], "out": str(out.out_dir), "skipped": out.skipped,
                      "method": s["method"], "model": s["model"], **s["cost"],
                      "loss_first10": s["loss_first10"], "loss_last10": s["loss_last10"],
                      "use": s["use"]}))
    return 0


def _check_mlflow(a: argparse.Namespace) -> None:
    if a.mlflow is not None:
        from ..tracking import check_mlflow

        check_mlflow()


def _log_mlflow(a: argparse.Namespace, spec, out) -> None:
    """``--mlflow``: the pretraining's config, summary numbers and encoder, to MLflow."""
    if a.mlflow is None:
        return
    from ..tracking import log_pretraining, tracking_uri

    s = out.summary
    log_pretraining(tracking_uri(a.mlflow, workspace_of(a)), name=str(s["name"]),
                    config=spec.to_dict(), summary=s, out_dir=out.out_dir)
