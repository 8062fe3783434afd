"""``transfuse`` command line: parse → spec → library call. No logic lives here.

Every user error (:class:`~transfuse.errors.TransfuseError`) prints one line, ``error: ...``, and
exits with status 2; a run that diverged (NaN/inf, stored as ``failed``) exits with status 3.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import EXIT_DIVERGED, EXIT_ERROR, DivergedError, TransfuseError

__all__ = ["main"]


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one run and store it in the workspace")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", required=True, help="e.g. builtin:brain_tissue, medmnist:retinamnist@28, csv:labels.csv")
    d.add_argument("--data-root", help="folder with dataset files (default: $TRANSFUSE_DATA)")
    d.add_argument("--n-train", type=int, help="stratified subsample of the training set")
    d.add_argument("--fraction", type=float, help="keep this fraction of the training set")
    d.add_argument("--channels", type=int, choices=(1, 3), help="force grayscale (1) or RGB (3)")
    d.add_argument("--image-size", type=int, help="resize images to this side length")
    d.add_argument("--label-columns", help="CSV: comma-separated label column(s)")
    d.add_argument("--path-column", default="path", help="CSV: image path column")
    d.add_argument("--split-column", help="CSV: column with train/val/test")
    d.add_argument("--uncertain", default="ignore", help="-1 labels: ignore, ones or zeros")
    d.add_argument("--split-seed", type=int, default=0)
    d.add_argument("--patch-size", type=int, help="segmentation: training patch / sliding-window side")
    d.add_argument("--spacing", help="segmentation: resample to this spacing in mm, e.g. 3 or 1.5,1.5,3")
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
                   "torchvision:resnet50.IMAGENET1K_V2, timm:<name>, file:ckpt.pt, run:<run_id>")
    m.add_argument("--init-partial", action="store_true",
                   help="tensors the source cannot provide stay default instead of an error")
    d.add_argument("--normalize", default="data", choices=("data", "source"),
                   help="normalise with the training split's statistics or the source's")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, help="optimiser steps (default 200 unless --epochs)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--lr", type=float, default=0.01)
    t.add_argument("--optimizer", default="sgd", help="sgd, adam or adamw")
    t.add_argument("--weight-decay", type=float, default=1e-4)
    t.add_argument("--schedule", default="cosine", help="constant, cosine, step or linear")
    t.add_argument("--warmup-steps", type=int, default=0)
    t.add_argument("--eval-every", type=int, default=50)
    t.add_argument("--num-workers", type=int, default=0)
    t.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--study", help="group the run under a study name")
    p.add_argument("--workspace", default="workspace", help="run store folder (default ./workspace)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _segmentation_options(a: argparse.Namespace) -> dict:
    """``--spacing`` and ``--region`` parsed into DataSpec values (errors name the flag)."""
    from .errors import ConfigError

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
    from .config import DataSpec, InitSpec, ModelSpec, RunSpec, TrainSpec
    from .run import train_run

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
                        num_workers=a.num_workers),
        seed=a.seed, study=a.study,
    )
    out = train_run(spec, workspace=a.workspace, device=a.device, progress=not a.no_progress)
    if out.record is None:  # a non-zero DDP rank: rank 0 reports
        return 0
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
        print(f"  test AUC {auc:.4f}  acc {out.test.get('acc', float('nan')):.4f}  "
              f"best step {r.summary.get('best_step')}/{r.summary.get('steps')}  "
              f"{_times(r)}" if auc is not None else "  test AUC undefined")
    print(f"  stored in {Path(a.workspace) / 'transfuse.db'}; checkpoints in {r.run_dir}")
    return 0


def _times(r) -> str:
    """Training and wall time exactly as the store records them (``runs show`` prints the same)."""
    wall = "-" if r.wall_seconds is None else round(r.wall_seconds, 3)
    return f"train {r.summary.get('train_seconds')} s, wall {wall} s"


def _datasets(a: argparse.Namespace) -> int:
    from .data import DATASETS
    from .data.medmnist import MEDMNIST_INFO

    print("Dataset families and built-in datasets:")
    for e in DATASETS:
        print(f"  {e.name:<24} {e.meta.get('description', '')}")
    print("\nMedMNIST flags (medmnist:<flag>@<size>; files from --data-root / $TRANSFUSE_DATA):")
    for flag, (task, k, c, dims, desc) in MEDMNIST_INFO.items():
        print(f"  {flag:<16} {dims}D {task:<10} {k:>2} classes  {c} ch  {desc}")
    return 0


def _models(a: argparse.Namespace) -> int:
    from .models import MODELS

    from .models.registry import TIMM_INFO

    def dims(meta: dict) -> str:
        return "/".join(f"{d}D" + "*" * (d in meta.get("inflated_dims", ())) for d in meta["spatial_dims"])

    rows = [(e.name, e.meta) for e in MODELS] + [("timm:<name>", TIMM_INFO)]
    w = max(len(n) for n, _ in rows) + 1
    print(f"  {'name':<{w}} {'dims':<7} {'task':<5} {'min px':<7} description")
    for name, meta in rows:
        task = "seg" if meta.get("task") == "segmentation" else "clf"
        desc = meta["description"] + (", e.g. timm:efficientnet_lite0" if name.startswith("timm:") else "")
        print(f"  {name:<{w}} {dims(meta):<7} {task:<5} {meta['min_size']:<7} {desc}")
    print("  3D*: the 2D network inflated to 3D (inflate_model; kernels=1xkxk pseudo-3D by default); "
          "min px: the smallest input side")
    return 0


def _inits(a: argparse.Namespace) -> int:
    from .inits import INITS
    from .weights import SOURCES

    print("Init strategies (combine with +, e.g. transfusion:block1+meanvar):")
    for e in INITS:
        name = f"{e.name}:{e.meta['arg']}" if e.meta["arg"] else e.name
        src = " [needs --source]" if e.meta["needs_source"] else ""
        print(f"  {name:<24} {e.meta['description']}{src}")
    print("\nPretrained source families (--source family:argument):")
    for e in SOURCES:
        net = "" if e.meta["offline"] else " [needs network]"
        print(f"  {e.name:<12} {e.meta['description']}{net}")
    return 0


def _study(a: argparse.Namespace) -> int:
    from .cli_study import study_command

    return study_command(a)


def _add_selftrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("selftrain", help="run a teacher-student self-training chain from a YAML file")
    p.add_argument("file", help="chain YAML file (see examples/selftrain_*.yaml, docs/SELFTRAIN.md)")
    p.add_argument("--workspace", default="workspace", help="run store folder (default ./workspace)")
    p.add_argument("--smoke", action="store_true", help="the shrunk, sub-minute version")
    p.add_argument("--status", action="store_true", help="show which runs are done; train nothing")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--no-progress", action="store_true")


def _selftrain(a: argparse.Namespace) -> int:
    from .selftrain import chain_status, load_chain, run_chain
    from .selftrain.report import chain_rows, chain_verdict, format_rows
    from .store import Store

    chain = load_chain(a.file)
    if a.status:
        for seed, role, gen, rid, status in chain_status(chain, workspace=a.workspace, smoke=a.smoke):
            what = f"generation {gen}" if gen is not None else f"baseline {role}"
            print(f"  seed {seed:<3} {what:<18} {rid}  {status}")
        return 0
    out = run_chain(chain, workspace=a.workspace, smoke=a.smoke, device=a.device,
                    progress=not a.no_progress)
    done = sum(not r.skipped for r in out.runs)
    print(f"chain {out.chain}: {len(out.runs)} runs — {done} trained now, "
          f"{len(out.runs) - done} already finished")
    headers, rows = format_rows(chain_rows(Store(a.workspace), out.chain))
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(line, widths)))
    print(chain_verdict(chain_rows(Store(a.workspace), out.chain)))
    print(f"  results in {Path(a.workspace) / 'transfuse.db'}; report: transfuse report "
          f"{a.workspace} --study {out.chain}")
    return 0


def _report(a: argparse.Namespace) -> int:
    from .cli_study import report_command

    return report_command(a)


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    an = sub.add_parser("analyze", help="SVCCA/PWCCA/CKA between layers and runs, weight change, filters")
    an.add_argument("workspace", help="the workspace the study ran in")
    an.add_argument("--study", required=True, help="study name (see `transfuse runs list`)")
    an.add_argument("--pairs", nargs="+", metavar="RUNID:RUNID", help="runs to compare layer by layer "
                    "(default: random seed A vs B, and random vs each other init, per model)")
    an.add_argument("--images", type=int, default=256, help="images per run (default 256)")
    an.add_argument("--split", default="test", help="split the images come from (default test)")
    an.add_argument("--policy", default="pool", help="conv maps: pool (global average) or positions")
    an.add_argument("--per-image", type=int, default=16, help="positions per image (--policy positions)")
    an.add_argument("--measures", default="linear_cka,svcca,pwcca",
                    help="comma list of cca, svcca, pwcca, linear_cka")
    an.add_argument("--keep", type=float, default=0.99, help="SVD variance fraction for svcca/pwcca")
    an.add_argument("--max-dims", type=int, help="cap on SVD directions (default datapoints/5)")
    an.add_argument("--checkpoint", default="best", help="trained checkpoint: best or last")
    an.add_argument("--seed", type=int, default=0, help="image subset, positions and chance shuffle")
    an.add_argument("--device", help="cpu, cuda or cuda:N (default: cpu)")
    an.add_argument("--no-progress", action="store_true")


def _analyze(a: argparse.Namespace) -> int:
    from .analysis.runs import AnalysisOptions, analyze_study

    measures = tuple(m.strip() for m in a.measures.split(",") if m.strip())
    opts = AnalysisOptions(images=a.images, split=a.split, policy=a.policy, per_image=a.per_image,
                           measures=measures, keep=a.keep, max_dims=a.max_dims,
                           checkpoint=a.checkpoint, seed=a.seed)
    out = analyze_study(workspace=a.workspace, study=a.study, pairs=a.pairs, options=opts,
                        device=a.device, progress=not a.no_progress)
    print(f"study {out.study}: analysed {len(out.runs)} runs and {len(out.pairs)} pairs in "
          f"{out.seconds:.1f} s — " + ", ".join(f"{n} {k}" for k, n in out.results.items()))
    for p in out.pairs:
        print(f"  {p.role:<10} {p.a} vs {p.b}")
    print(f"  results in {Path(a.workspace) / 'transfuse.db'}; "
          f"show them with `transfuse report {a.workspace} --study {out.study}`")
    return 0


def _runs(a: argparse.Namespace) -> int:
    from .cli_runs import runs_command

    return runs_command(a)


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pretrain an encoder ourselves (Med3D multi-dataset)")
    ps = p.add_subparsers(dest="pretrain_cmd", required=True)
    q = ps.add_parser("med3d", help="one shared Med3D encoder, one segmentation head per dataset")
    q.add_argument("file", help="pretraining YAML file (see examples/med3d_pretrain.yaml)")
    q.add_argument("-w", "--workspace", default="workspace",
                   help="default output root: WORKSPACE/pretrain/NAME (default ./workspace)")
    q.add_argument("-o", "--out", help="output folder (default WORKSPACE/pretrain/NAME)")
    q.add_argument("--smoke", action="store_true", help="a few steps on tiny patches (CI)")
    q.add_argument("--device", help="cpu, cuda or cuda:N (default: auto)")
    q.add_argument("--no-progress", action="store_true")


def _pretrain(a: argparse.Namespace) -> int:
    from .pretrain import default_out_dir, load_pretrain, pretrain_med3d

    spec = load_pretrain(a.file)
    spec = spec.shrink() if a.smoke else spec
    out = pretrain_med3d(spec, out_dir=a.out or default_out_dir(spec, a.workspace),
                         device=a.device, progress=not a.no_progress)
    s = out.summary
    print(json.dumps({"name": s["name"], "out": str(out.out_dir), "steps": s["steps"],
                      "seconds": s["seconds"], "use": s["use"],
                      "val_dice": {d["name"]: d["final_dice"] for d in s["datasets"]}}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="transfuse", description="Transfer learning for medical imaging.")
    from . import __version__

    parser.add_argument("--version", action="version", version=f"transfuse {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    _add_train(sub)
    sub.add_parser("datasets", help="list dataset families, built-in datasets and MedMNIST flags")
    sub.add_parser("models", help="list models")
    sub.add_parser("inits", help="list init strategies and pretrained source families")
    from .cli_study import add_report_parser, add_study_parser

    add_study_parser(sub)
    _add_selftrain(sub)
    _add_analyze(sub)
    _add_pretrain(sub)
    add_report_parser(sub)
    from .cli_runs import add_runs_parser

    add_runs_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors already
        return int(e.code or 0)
    handlers = {"train": _train, "datasets": _datasets, "models": _models, "inits": _inits,
                "study": _study, "runs": _runs, "report": _report, "selftrain": _selftrain,
                "analyze": _analyze, "pretrain": _pretrain}
    try:
        return handlers[a.cmd](a)
    except DivergedError as e:  # stored as a failed run; its own status so scripts can retry
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except TransfuseError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # output piped into `head` or similar: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
