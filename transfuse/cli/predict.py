"""``transfuse predict``: a finished run's model on new images → CSV of class probabilities, or
NIfTI label maps for a segmentation run (library: :mod:`transfuse.deploy.predict`)."""

from __future__ import annotations

import argparse

from ._common import HelpFormatter, add_device, add_progress, add_workspace, workspace_of

__all__ = ["add_parser"]

INPUT_HELP = ("what to predict: train, val or test (that split of the run's own dataset); "
              "DATASET:SPLIT, e.g. medmnist:retinamnist@28:test (a split of any dataset, prepared "
              "with the run's options); a folder (images: png/jpg/tif/bmp/npy; segmentation runs: "
              ".nii/.nii.gz files or DICOM series folders); a .csv with a path column; or one file. "
              "Write ./test for a folder named test")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", formatter_class=HelpFormatter,
        help="predict with a finished run: class probabilities (CSV) or label maps (NIfTI)",
        description="Predict with a finished run's model, using the run's stored preprocessing "
                    "(channels, image size, normalisation mean/std; segmentation: RAS, spacing, "
                    "intensity scaling, sliding window). Classification writes a CSV with an "
                    "`input` column and one probability column per class; segmentation writes one "
                    "uint8 NIfTI label map per volume, on the input's grid with its affine, and "
                    "predictions.csv.")
    p.set_defaults(func=_predict)
    p.add_argument("run_id", help="run id or a unique prefix (see `transfuse runs list`)")
    p.add_argument("-i", "--input", required=True, help=INPUT_HELP)
    p.add_argument("-o", "--output", default=None,
                   help="classification: CSV file to write (default ./predictions-RUN_ID.csv); "
                        "segmentation: folder for the label maps and predictions.csv (default "
                        "./predictions-RUN_ID/)")
    p.add_argument("--checkpoint", default="best",
                   help="best (best on validation: the weights of the stored test metrics) or "
                        "last (the final step)")
    p.add_argument("--path-column", default="path",
                   help="CSV input: the column holding file paths, absolute or relative to the CSV")
    p.add_argument("--data-root", default=None,
                   help="DATASET:SPLIT / split input: folder with the dataset files (default: the "
                        "run's data root, else $TRANSFUSE_DATA)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--threshold", default=None, metavar="val|P",
                   help="two-class runs: add a predicted column, class 1 where its probability is "
                        ">= the threshold chosen on validation (val) or P (default: probabilities only)")
    add_workspace(p, help="the workspace the run was trained in")
    add_device(p)
    add_progress(p)


def _predict(a: argparse.Namespace) -> int:
    from ..deploy.predict import predict_run

    res = predict_run(a.run_id, input=a.input, workspace=workspace_of(a), output=a.output,
                      checkpoint=a.checkpoint, device=a.device, batch_size=a.batch_size,
                      path_column=a.path_column, data_root=a.data_root, progress=not a.no_progress,
                      threshold=a.threshold)
    n = len(res.inputs)
    if res.task == "segmentation":
        print(f"label maps: {n} volume(s) -> {res.output.resolve()} (table: {res.table.name})")
    else:
        print(f"predictions: {n} image(s) -> {res.output.resolve()}")
    return 0
