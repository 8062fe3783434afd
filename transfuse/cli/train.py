"""``transfuse train``: one run from flags, stored in the workspace."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ._common import (HelpFormatter, add_device, add_mlflow, add_overrides, add_progress,
                      add_tensorboard, add_workspace, workspace_of)

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one run and store it in the workspace",
                       formatter_class=HelpFormatter)
    p.set_defaults(func=_train)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", required=True, help="e.g. builtin:brain_tissue, medmnist:retinamnist@28, csv:labels.csv")
    d.add_argument("--data-root", help="folder with dataset files (default: $TRANSFUSE_DATA)")
    d.add_argument("--n-train", type=int, help="stratified subsample of the training set (default: all)")
    d.add_argument("--fraction", type=float, help="keep this fraction of the training set (default: all)")
    d.add_argument("--channels", type=int, choices=(1, 3), help="force grayscale (1) or RGB (3) (default: as the data)")
    d.add_argument("--image-size", type=int, help="resize images to this side length (default: as the data)")
    d.add_argument("--label-columns", help="CSV: comma-separated label column(s) (default: every non-path column)")
    d.add_argument("--path-column", default="path", help="CSV: image path column")
    d.add_argument("--split-column", help="CSV: column with train/val/test (default: a stratified split)")
    d.add_argument("--uncertain", default="ignore", help="-1 labels: ignore, ones or zeros")
    d.add_argument("--split-seed", type=int, default=0, help="seed of the train/val/test split")
    d.add_argument("--patch-size", type=int, help="segmentation: training patch / sliding-window side (default: the model's)")
    d.add_argument("--spacing", help="segmentation: resample to this spacing in mm, e.g. 3 or 1.5,1.5,3 (default: as stored)")
    d.add_argument("--fg-ratio", type=float, default=0.5,
                   help="segmentation: fraction of patches centred on foreground (default 0.5)")
    d.add_argument("--region", action="append", default=[], metavar="NAME=L1,L2",
                   help="segmentation: also score the union of labels as a region, e.g. WT=1,2,3")
    m = p.add_argument_group("model and init")
    m.add_argument("--model", required=True, help="see `transfuse models`")
    m.add_argument("--spatial-dims", type=int, choices=(2, 3), help="default: as the data")
    m.add_argument("--init", default="random",
                   help="init strategy, e.g. random, pretrained, meanvar, transfusion:block1+meanvar "
                   "(see `transfuse inits`)")
    m.add_argument("--source", help="pretrained weights: imagenet:efficientnet_lite0, "
                   "torchvision:resnet50.IMAGENET1K_V2, timm:<name>, file:ckpt.pt, run:<run_id> (default: none)")
    m.add_argument("--init-partial", action="store_true",
                   help="tensors the source cannot provide stay default instead of an error")
    d.add_argument("--normalize", default="data", choices=("data", "source"),
                   help="normalise with the training split's statistics or the source's")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, help="optimiser steps (default 200 unless --epochs)")
    t.add_argument("--epochs", type=int, help="train for this many epochs instead of --steps (default: off)")
    t.add_argument("--batch-size", type=int, default=64, help="training batch size")
    t.add_argument("--lr", type=float, default=0.01, help="peak learning rate")
    t.add_argument("--optimizer", default="sgd", help="sgd, adam or adamw")
    t.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay")
    t.add_argument("--schedule", default="cosine", help="constant, cosine, step or linear")
    t.add_argument("--warmup-steps", type=int, default=0, help="linear warm-up steps")
    t.add_argument("--eval-every", type=int, default=50, help="evaluate on the validation split every N steps")
    t.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes")
    t.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA (default: on with CUDA)")
    t.add_argument("--finetune", default="full",
                   help="which stages train: full, linear_probe, freeze:<stage>, surgical:<stage> "
                   "or lpft:<steps> (layer_decay, head_lr_mult, freeze_bn: --set train.<key>=...)")
    t.add_argument("--augment", default="none", choices=("none", "basic", "strong"),
                   help="training augmentation (seeded; never at evaluation)")
    p.add_argument("--seed", type=int, default=0, help="seed of init, sampling and augmentation")
    p.add_argument("--study", help="group the run under a study name (default: none)")
    add_workspace(p)
    add_device(p)
    add_progress(p)
    add_tensorboard(p)
    add_mlflow(p)
    add_overrides(p, what="the run spec, applied on top of the flags above")
    p.add_argument("--json", action="store_true", help="print the result as JSON (default: readable lines)")


def _segmentation_options(a: argparse.Namespace) -> dict:
    """``--spacing`` and ``--region`` parsed into DataSpec values (errors name the flag)."""
    from ..errors import ConfigError

    try:
        sp = tuple(float(v) for v in a.spacing.split(",")) if a.spacing else None
    except ValueError:
        raise ConfigError(f"--spacing {a.spacing!r} must be a number or comma-separated numbers "
                          "(mm), e.g. 3 or 1.5,1.5,3") from None
    regions = {}
    for r in a.region:
        name, _, labels = r.partition("=")
        try:
            regions[name.strip()] = [int(v) for v in labels.split(",")]
        except ValueError:
            raise ConfigError(f"--region {r!r} must look like NAME=1,2,3") from None
        if not name.strip():
            raise ConfigError(f"--region {r!r} must look like NAME=1,2,3")
    return {"patch_size": a.patch_size, "spacing": sp, "fg_ratio": a.fg_ratio, "regions": regions}


def _train(a: argparse.Namespace) -> int:
    from ..config import DataSpec, InitSpec, ModelSpec, RunSpec, TrainSpec
    from ..run import train_run

    cols = tuple(c.strip() for c in a.label_columns.split(",") if c.strip()) if a.label_columns else ()
    steps = a.steps if a.steps is not None or a.epochs is not None else 200
    spec = RunSpec(
        data=DataSpec(name=a.dataset, data_root=a.data_root, n_train=a.n_train, fraction=a.fraction,
                      channels=a.channels, image_size=a.image_size, uncertain=a.uncertain,
                      label_columns=cols, path_column=a.path_column, split_column=a.split_column,
                      split_seed=a.split_seed, normalize=a.normalize, **_segmentation_options(a)),
        model=ModelSpec(name=a.model, spatial_dims=a.spatial_dims),
        init=InitSpec(name=a.init, source=a.source, partial=a.init_partial),
        train=TrainSpec(steps=steps, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr,
                        optimizer=a.optimizer, weight_decay=a.weight_decay, schedule=a.schedule,
                        warmup_steps=a.warmup_steps, eval_every=a.eval_every, amp=not a.no_amp,
                        num_workers=a.num_workers, finetune=a.finetune,
                        augment=a.augment),
        seed=a.seed, study=a.study,
    )
    if a.set:
        from ..overrides import override_run

        spec = override_run(spec, sets=a.set)
    if a.mlflow is not None:
        from ..tracking import check_mlflow

        check_mlflow()  # before training: a missing package is bad input
    out = train_run(spec, workspace=workspace_of(a), device=a.device, progress=not a.no_progress,
                    tensorboard=a.tensorboard)
    if out.record is None:  # a non-zero DDP rank: rank 0 reports
        return 0
    if a.mlflow is not None:
        from ..store import Store
        from ..tracking import log_run, tracking_uri

        log_run(Store(workspace_of(a)), out.record.run_id,
                uri=tracking_uri(a.mlflow, workspace_of(a)))
    if a.json:
        print(json.dumps({"run_id": out.record.run_id, "skipped": out.skipped, "test": out.test}))
        return 0
    r = out.record
    what = "already finished; stored results" if out.skipped else "finished"
    auc = out.test.get("auc")
    print(f"run {r.run_id} {what}: {r.spec['model']['name']} on {r.spec['data']['name']} "
          f"(init {r.spec['init']['name']}, seed {r.spec['seed']})")
    if "dice" in out.test:  # segmentation
        fmt = lambda v: "undefined" if v is None else f"{v:.4f}"  # noqa: E731  (NaN is stored as None)
        per = ", ".join(f"{k[5:]} {fmt(v)}" for k, v in out.test.items() if k.startswith("dice/"))
        print(f"  test Dice {fmt(out.test['dice'])} ({per})  best step {r.summary.get('best_step')}/"
              f"{r.summary.get('steps')}  {_times(r)}")
    else:
        from .runs import _clinical_line

        names = r.data_info.get("class_names") or []
        per = ", ".join(f"{n} {out.test[f'auc/{n}']:.3f}" for n in names
                        if out.test.get(f"auc/{n}") is not None)
        print(f"  test AUC {auc:.4f} ({per})  acc {out.test.get('acc', float('nan')):.4f}  "
              f"best step {r.summary.get('best_step')}/{r.summary.get('steps')}  "
              f"{_times(r)}" if auc is not None else "  test AUC undefined")
        if out.test.get("ece") is not None:
            print(f"  {_clinical_line(out.test)}")
    print(f"  stored in {Path(workspace_of(a)) / 'transfuse.db'}; checkpoints in {r.run_dir}")
    return 0


def _times(r) -> str:
    """Training and wall time exactly as the store records them (``runs show`` prints the same)."""
    wall = "-" if r.wall_seconds is None else round(r.wall_seconds, 3)
    return f"train {r.summary.get('train_seconds')} s, wall {wall} s"


