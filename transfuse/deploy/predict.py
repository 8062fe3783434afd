"""``predict``: a finished run's model on new images, with the run's own stored preprocessing.

What ``--input`` may be (:func:`parse_input`):

- ``train``, ``val`` or ``test``: that split of the run's own dataset, rebuilt from its spec (same
  split seed and data options). Write ``./test`` for a folder that happens to be named ``test``.
- ``DATASET:SPLIT``, e.g. ``medmnist:retinamnist@28:test`` or ``builtin:brain_tissue:val``: a
  split of any registered dataset, prepared with the run's data options (channels, image size,
  data root, spacing, patch).
- a folder: every input file under it, sorted by path — images (PNG, JPEG, TIFF, BMP, ``.npy``)
  for classification runs; NIfTI files (``.nii``, ``.nii.gz``), else DICOM series folders, for
  segmentation runs;
- a ``.csv`` file whose path column (``path``) lists files, absolute or relative to the CSV;
- one image or volume file.

Every input is normalised with the mean/std stored with the run (never recomputed), so a split
of the run's own data gives back its stored test predictions.

**Classification** (``task`` multi-class or multi-label): images are read as CSV datasets read
them (:func:`~transfuse.data.csvfolder.read_image`; uint8 → 0–1, float ``.npy`` taken as 0–1),
converted to the run's channels only where its spec asked for a conversion (``data.channels``;
otherwise a channel mismatch is an error), resized to the run's image size and normalised. The
output is a CSV: ``input`` and one probability column per class name (softmax for multi-class,
sigmoid for multi-label).

**Segmentation**: each volume is read by MONAI (NIfTI through nibabel, a DICOM series through
pydicom), reoriented to RAS, resampled to the run's voxel spacing and intensity-scaled as the
training volumes were (:mod:`transfuse.data.segmentation`), normalised, and predicted by
sliding-window inference with the training patch as the window, 25 % overlap and Gaussian
blending — as in evaluation (:mod:`transfuse.train.segment`). The class probabilities are
resampled back onto the input's own voxel grid and the argmax is written as a uint8 NIfTI label
map with the input's affine, plus ``predictions.csv`` (one row per volume: voxels per class, and
Dice per class where the input has labels, i.e. a dataset split).
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import ConfigError, DataError
from ._run import DeployedRun, load_run
from .images import IMAGE_SUFFIXES, fit_shape, image_batches, normalise

__all__ = ["PredictInput", "Prediction", "parse_input", "predict_run", "classify",
           "segment_volume", "IMAGE_SUFFIXES", "VOLUME_SUFFIXES", "SPLITS"]

SPLITS = ("train", "val", "test")
VOLUME_SUFFIXES = (".nii", ".nii.gz")
_FORMS = ("an image/volume file, a folder, a .csv of paths, a split of the run's data (train, val, "
          "test) or DATASET:SPLIT (e.g. medmnist:retinamnist@28:test)")


@dataclass(frozen=True)
class PredictInput:
    """A parsed ``--input``.

    Attributes:
        kind: ``split`` (the run's own data), ``dataset`` (another dataset's split), ``folder``,
            ``csv`` or ``file``.
        text: the input as given.
        split: ``train``/``val``/``test`` for ``split`` and ``dataset``.
        dataset: the dataset name for ``dataset``.
        path: the file or folder for ``folder``, ``csv`` and ``file``.
    """

    kind: str
    text: str
    split: str | None = None
    dataset: str | None = None
    path: Path | None = None


@dataclass(frozen=True)
class Prediction:
    """What :func:`predict_run` wrote.

    Attributes:
        run_id: the run whose model predicted.
        task: ``multiclass``, ``multilabel`` or ``segmentation``.
        output: the CSV (classification) or the folder of label maps (segmentation).
        inputs: one name per image / volume, as in the CSV's ``input`` column.
        probs: classification: ``(N, K)`` probabilities, rows in ``inputs`` order; else ``None``.
        label_maps: segmentation: the NIfTI files written, in ``inputs`` order.
        table: the CSV written (for segmentation ``output / "predictions.csv"``).
    """

    run_id: str
    task: str
    output: Path
    inputs: tuple[str, ...]
    probs: np.ndarray | None
    label_maps: tuple[Path, ...]
    table: Path


def parse_input(text: str) -> PredictInput:
    """Read ``--input`` (see the module docstring for the forms).

    Raises:
        ConfigError: empty, or a dataset name without a split.
        DataError: a path that does not exist.
    """
    text = str(text).strip()
    if not text:
        raise ConfigError(f"--input is empty; give {_FORMS}")
    if text in SPLITS:
        return PredictInput("split", text, split=text)
    path = Path(text).expanduser()
    head, sep, tail = text.rpartition(":")
    if not path.exists() and sep and ":" in head and tail in SPLITS:
        return PredictInput("dataset", text, split=tail, dataset=head)
    if not path.exists():
        from ..data import DATASETS

        family = text.partition(":")[0]
        if ":" in text and (family in DATASETS or text in DATASETS):
            raise ConfigError(f"--input {text!r} names a dataset but no split; add one, e.g. "
                              f"{text}:test (train, val or test)")
        raise DataError(f"{path}: --input not found; give {_FORMS}")
    if path.is_dir():
        return PredictInput("folder", text, path=path)
    if path.suffix.lower() == ".csv":
        return PredictInput("csv", text, path=path)
    return PredictInput("file", text, path=path)


def predict_run(run_id: str, *, input: str | PredictInput, workspace: str | Path,
                output: str | Path | None = None, checkpoint: str = "best",
                device: str | None = None, batch_size: int = 256, path_column: str = "path",
                data_root: str | None = None, progress: bool = True,
                threshold: str | float | None = None) -> Prediction:
    """Predict with a finished run's model and write the results.

    Args:
        run_id: run id or unique prefix.
        input: ``--input`` text or a parsed :class:`PredictInput`.
        workspace: the run store's folder.
        output: classification: the CSV to write (default ``predictions-RUNID.csv``; a folder
            gets that name inside it). Segmentation: the folder for the label maps and
            ``predictions.csv`` (default ``predictions-RUNID/``).
        checkpoint: ``best`` (the weights of the stored test metrics) or ``last``.
        device: ``None``/``"auto"``, ``"cpu"`` or ``"cuda[:i]"``.
        batch_size: images per forward pass (classification).
        path_column: CSV input: the column with the file paths.
        data_root: dataset-split inputs: folder of the dataset files instead of the run's.
        progress: show a progress bar.
        threshold: two-class runs: add a ``predicted`` column, class 1 where its probability
            is at least this — ``"val"`` (the threshold chosen on validation) or a number.

    Returns:
        :class:`Prediction`.

    Raises:
        TransfuseError: unknown or unfinished run, bad input (missing file, wrong channels, 2D
            images for a 3D segmentation run, unreadable file), each as one line naming the file
            or option and the fix.
    """
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} must be >= 1")
    inp = input if isinstance(input, PredictInput) else parse_input(input)
    run = load_run(run_id, workspace=workspace, checkpoint=checkpoint)
    from ..train.clinical import decision_threshold

    thr = None if threshold is None else decision_threshold(  # checked before any image is read
        threshold, stored=run.test_metrics.get("threshold"),
        num_classes=len(run.class_names) if run.task == "multiclass" else 0)
    from ..train.device import resolve_device

    dev = resolve_device(device)
    run.model.to(dev)
    if run.task == "segmentation":
        return _predict_segmentation(run, inp, output=output, device=dev, path_column=path_column,
                                     data_root=data_root, progress=progress)
    return _predict_classification(run, inp, output=output, device=dev, batch_size=batch_size,
                                   path_column=path_column, data_root=data_root, progress=progress,
                                   threshold=thr)


# -- shared ---------------------------------------------------------------------------------------

def _listed(inp: PredictInput, *, column: str) -> list[tuple[str, Path]]:
    """``(name, path)`` of every row of a CSV input; relative paths are relative to the CSV."""
    assert inp.path is not None
    try:
        with open(inp.path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{inp.path}: cannot read CSV ({e})") from None
    if column not in header:
        raise DataError(f"{inp.path}: no column {column!r} with file paths (columns: "
                        f"{', '.join(header) or 'none'}); name it with --path-column")
    out = []
    for i, r in enumerate(rows):
        value = (r.get(column) or "").strip()
        if not value:
            raise DataError(f"{inp.path}: row {i + 2} has an empty {column!r}; every row needs a path")
        p = Path(value).expanduser()
        out.append((value, p if p.is_absolute() else inp.path.parent / p))
    if not out:
        raise DataError(f"{inp.path}: the CSV has no rows; list one file per row in {column!r}")
    return out


def _is_volume(p: Path) -> bool:
    return p.name.lower().endswith(VOLUME_SUFFIXES)


def _folder_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted((p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.name.lower().endswith(suffixes)), key=lambda p: p.relative_to(folder).as_posix())


def _atomic_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    """Write the CSV to ``path.tmp`` then rename: no half-written file on a crash."""
    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rows)

    try:
        atomic_write(path, write)
    except OSError as e:
        raise DataError(f"{path}: cannot write the predictions ({e.strerror or e}); pass a writable "
                        "-o/--output") from None


def _num(v: float) -> str:
    """9 significant digits: every float32 value reads back exactly."""
    return "" if not np.isfinite(v) else f"{float(v):.9g}"


def _dataset(run: DeployedRun, inp: PredictInput, data_root: str | None):
    """The prepared dataset of a ``split``/``dataset`` input, normalised with the run's stats."""
    from ..data import load_dataset

    over: dict[str, Any] = {}
    if inp.kind == "dataset":
        over["name"] = inp.dataset
    if data_root is not None:
        over["data_root"] = data_root
    spec = replace(run.spec.data, **over)
    data = load_dataset(spec, norm=run.norm)
    info = data.info
    if (info.task == "segmentation") != (run.task == "segmentation"):
        kind = "segmentation" if run.task == "segmentation" else "classification"
        raise DataError(f"--input {inp.text}: {info.name!r} is {info.task} data but run "
                        f"{run.run_id} is a {kind} run; give {kind} data")
    if info.spatial_dims != run.spatial_dims or info.in_channels != run.in_channels:
        raise DataError(f"--input {inp.text}: {info.name!r} has {info.in_channels}-channel "
                        f"{info.spatial_dims}D images but run {run.run_id} takes "
                        f"{run.in_channels}-channel {run.spatial_dims}D images; pick matching data")
    return data


# -- classification -------------------------------------------------------------------------------

@torch.no_grad()
def classify(model: nn.Module, images: torch.Tensor, *, task: str, device: torch.device | str,
             batch_size: int = 256) -> np.ndarray:
    """Class probabilities of normalised images.

    Args:
        model: maps ``(N, C, *spatial)`` to logits ``(N, K)``.
        images: ``(N, C, *spatial)`` float32, normalised as the model's training data.
        task: ``multiclass`` (softmax) or ``multilabel`` (sigmoid).
        device: where to run (the model must already be there).
        batch_size: images per forward pass.

    Returns:
        ``(N, K)`` float32 probabilities.
    """
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        logits = model(images[i:i + batch_size].to(device)).float()
        out.append((logits.softmax(1) if task == "multiclass" else logits.sigmoid()).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def _predict_classification(run: DeployedRun, inp: PredictInput, *, output: str | Path | None,
                            device: torch.device, batch_size: int, path_column: str,
                            data_root: str | None, progress: bool,
                            threshold: float | None = None) -> Prediction:
    model = run.model
    if inp.kind in ("split", "dataset"):
        ds = _dataset(run, inp, data_root).split(inp.split)
        prefix = f"{inp.split}" if inp.kind == "split" else f"{inp.dataset}:{inp.split}"
        names = [f"{prefix}:{i}" for i in range(len(ds))]
        from torch.utils.data import DataLoader

        batches = (fit_shape(x, run.image_shape) for x, _, _ in DataLoader(ds, batch_size=batch_size))
    else:
        if inp.kind == "folder":
            assert inp.path is not None
            found = _folder_files(inp.path, IMAGE_SUFFIXES)
            if not found:
                vols = _folder_files(inp.path, VOLUME_SUFFIXES)
                what = "NIfTI volumes, which classification runs do not read" if vols else "no image files"
                raise DataError(f"{inp.path}: the folder holds {what}; give a folder of "
                                f"{', '.join(IMAGE_SUFFIXES)} files")
            files = [(p.relative_to(inp.path).as_posix(), p) for p in found]
        elif inp.kind == "csv":
            files = _listed(inp, column=path_column)
        else:
            assert inp.path is not None
            files = [(inp.text, inp.path)]
        names = [n for n, _ in files]
        batches = image_batches(run, files, batch_size, progress)
    probs = np.concatenate([classify(model, x, task=run.task, device=device, batch_size=batch_size)
                            for x in batches]) if names else np.zeros((0, len(run.class_names)))
    out = Path(output) if output is not None else Path(f"predictions-{run.run_id}.csv")
    if out.is_dir():
        out = out / f"predictions-{run.run_id}.csv"
    header = ["input", *run.class_names]
    rows = [[n, *map(_num, row)] for n, row in zip(names, probs)]
    if threshold is not None:  # two classes: the label at the decision threshold
        header.append("predicted")
        rows = [[*r, run.class_names[int(p[1] >= threshold)]] for r, p in zip(rows, probs)]
    _atomic_csv(out, header, rows)
    return Prediction(run.run_id, run.task, out, tuple(names), probs.astype(np.float32), (), out)


# -- segmentation ---------------------------------------------------------------------------------

def _volume_inputs(run: DeployedRun, inp: PredictInput, column: str) -> list[tuple[str, Path]]:
    """``(name, path)`` of every volume of a file / folder / CSV input of a segmentation run."""
    assert inp.path is not None
    if inp.kind == "csv":
        return _listed(inp, column=column)
    if inp.kind == "file":
        return [(inp.text, inp.path)]
    found = _folder_files(inp.path, VOLUME_SUFFIXES)
    if found:
        return [(p.relative_to(inp.path).as_posix(), p) for p in found]
    if _folder_files(inp.path, IMAGE_SUFFIXES):
        raise DataError(f"{inp.path}: the folder holds 2D image files but run {run.run_id} segments "
                        f"{run.spatial_dims}D volumes; give NIfTI files (.nii, .nii.gz) or DICOM "
                        "series folders")
    files = [p for p in inp.path.iterdir() if p.is_file() and not p.name.startswith(".")]
    if files:  # the folder itself is one DICOM series
        return [(inp.text, inp.path)]
    series = sorted(d for d in inp.path.iterdir() if d.is_dir() and any(
        f.is_file() and not f.name.startswith(".") for f in d.iterdir()))
    if not series:
        raise DataError(f"{inp.path}: no NIfTI files or DICOM series found; give .nii/.nii.gz "
                        "files or one folder of DICOM slices per volume")
    return [(d.relative_to(inp.path).as_posix(), d) for d in series]


def _target_spacing(run: DeployedRun) -> tuple[float, ...] | None:
    """The spacing training volumes were resampled to: ``data.spacing`` if set; else the native
    grid for file datasets (``msd:``, ``nifti:``), and the recorded spacing for built-in data."""
    from ..data.segmentation import per_axis

    data = run.spec.data
    if data.spacing is not None:
        return per_axis(data.spacing, run.spatial_dims, where=f"run {run.run_id}")
    if data.name.partition(":")[0] in ("msd", "nifti"):
        return None
    sp = run.info.get("spacing") or ()
    return tuple(float(v) for v in sp) or None


def _window(run: DeployedRun, model: nn.Module, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Sliding-window logits ``(1, K, *S)`` of a normalised ``(1, C, *S)`` volume."""
    from monai.inferers import sliding_window_inference

    from ..train.segment import SW_BATCH, SW_OVERLAP

    def predictor(t: torch.Tensor) -> torch.Tensor:
        return model(t).float()

    logits = sliding_window_inference(x.to(device), roi_size=run.image_shape, sw_batch_size=SW_BATCH,
                                      predictor=predictor, overlap=SW_OVERLAP, mode="gaussian")
    if not torch.isfinite(logits).all():
        raise DataError("the model predicts NaN/inf on this volume; check it for extreme intensities")
    return logits


@torch.no_grad()
def segment_volume(run: DeployedRun, image: Any, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Label map of one volume on its own voxel grid.

    Args:
        run: a loaded segmentation run (model already on ``device``).
        image: MONAI ``MetaTensor`` ``(C, *spatial)`` as read from the file, with its affine.
        device: where to run the model.

    Returns:
        ``(*spatial)`` uint8 class indices on ``image``'s grid (same shape, same affine).
    """
    from monai.transforms import (Orientation, ResampleToMatch, ScaleIntensityRangePercentiles,
                                  Spacing)

    from ..data.base import convert_channels

    dims = run.spatial_dims
    spacing = _target_spacing(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI deprecation notes; divide-by-zero on flat images
        # The training pipeline (data.segmentation.finish_volume): RAS, spacing, percentiles.
        x = Orientation(axcodes="RAS"[:dims], labels=(("L", "R"), ("P", "A"), ("I", "S"))[:dims])(image)
        if spacing is not None:
            x = Spacing(pixdim=spacing, mode="bilinear")(x)
        x = ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True,
                                           channel_wise=True)(x)
        t = x.as_tensor().float()[None]
        if run.spec.data.channels is not None:
            t = convert_channels(t, run.spec.data.channels)
        probs = _window(run, run.model, normalise(t, run), torch.device(device)).softmax(1)[0].cpu()
        # Back onto the input's grid: the probabilities (not the labels) are interpolated.
        from monai.data import MetaTensor

        back = ResampleToMatch(mode="bilinear")(MetaTensor(probs, affine=x.affine.clone()),
                                                img_dst=image)
    return back.as_tensor().argmax(0).to(torch.uint8)


def _read_input_volume(run: DeployedRun, path: Path) -> Any:
    """Read a volume file / DICOM folder and check it fits the run (dims, channels, values)."""
    from ..data.segmentation import load_volume  # the training reader: same errors, same DICOM checks

    if path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES):
        raise DataError(f"{path}: a 2D image file, but run {run.run_id} segments "
                        f"{run.spatial_dims}D volumes; give a NIfTI file or a DICOM series folder")
    x = load_volume(path, "image", "")
    if x.ndim - 1 != run.spatial_dims:
        raise DataError(f"{path}: the image is {x.ndim - 1}D {tuple(x.shape[1:])} but run "
                        f"{run.run_id} segments {run.spatial_dims}D volumes; give a "
                        f"{run.spatial_dims}D volume")
    c = int(x.shape[0])
    if run.spec.data.channels is None and c != run.in_channels:
        raise DataError(f"{path}: the volume has {c} channel(s) but run {run.run_id} was trained on "
                        f"{run.in_channels}-channel volumes; give {run.in_channels} channel(s)")
    if not torch.isfinite(x.as_tensor()).all():
        raise DataError(f"{path}: the image contains NaN or inf voxels; fix them first")
    return x


def _out_name(name: str, used: set[str]) -> str:
    base = Path(name).name
    for suf in VOLUME_SUFFIXES[::-1]:  # .nii.gz before .nii
        if base.lower().endswith(suf):
            base = base[: -len(suf)]
            break
    base = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in base) or "volume"
    out, k = f"{base}_seg.nii.gz", 1
    while out in used:
        out, k = f"{base}-{k}_seg.nii.gz", k + 1
    used.add(out)
    return out


def _save_nifti(path: Path, labels: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(labels.astype(np.uint8), np.asarray(affine, dtype=np.float64))
    try:
        atomic_write(path, lambda tmp: nib.save(image, tmp), suffix=".tmp.nii.gz")
    except OSError as e:
        raise DataError(f"{path}: cannot write the label map ({e.strerror or e}); pass a writable "
                        "-o/--output folder") from None


def _affine_of(path: Path, image: Any) -> np.ndarray:
    """The input's affine: NIfTI's own header affine (exact), else the reader's (DICOM, RAS)."""
    if path.is_file() and _is_volume(path):
        import nibabel as nib

        return np.asarray(nib.load(str(path)).affine, dtype=np.float64)
    return image.affine.double().numpy()


def _predict_segmentation(run: DeployedRun, inp: PredictInput, *, output: str | Path | None,
                          device: torch.device, path_column: str, data_root: str | None,
                          progress: bool) -> Prediction:
    from tqdm.auto import tqdm

    out = Path(output) if output is not None else Path(f"predictions-{run.run_id}")
    if out.suffix.lower() == ".csv" or out.is_file():
        raise ConfigError(f"-o {out}: segmentation runs write one NIfTI label map per volume, so "
                          "-o must be a folder (it is created)")
    k = len(run.class_names)  # the folder is made with the first label map: none on bad input
    header = ["input", "output", *(f"voxels/{c}" for c in run.class_names)]
    names, maps, rows, used = [], [], [], set()
    if inp.kind in ("split", "dataset"):
        from ..train.segment import case_dice

        data = _dataset(run, inp, data_root)
        ds, info = data.split(inp.split), data.info
        header += [f"dice/{c}" for c in (*info.class_names[1:], *info.regions)]
        prefix = f"{inp.split}" if inp.kind == "split" else f"{inp.dataset}:{inp.split}"
        affine = np.diag([*(info.spacing or (1.0,) * run.spatial_dims), 1.0])
        for i in tqdm(range(len(ds)), disable=not progress or len(ds) < 2, desc="predict",
                      unit="volume", leave=False):
            x, y, _ = ds[i]
            with torch.no_grad():
                lab = _window(run, run.model, x[None], device).argmax(1)[0].cpu()
            dice = case_dice(lab, y, num_classes=info.num_classes, regions=info.regions)
            name = f"{prefix}:{i}"
            f = out / _out_name(f"{inp.split}-{i:03d}", used)
            _save_nifti(f, lab.numpy(), affine)
            counts = torch.bincount(lab.flatten().long(), minlength=k)[:k].tolist()
            names.append(name)
            maps.append(f)
            rows.append([name, f.name, *counts, *map(_num, dice)])
    else:
        listed = _volume_inputs(run, inp, path_column)
        for name, path in tqdm(listed, disable=not progress or len(listed) < 2, desc="predict",
                               unit="volume", leave=False):
            image = _read_input_volume(run, path)
            lab = segment_volume(run, image, device=device)
            f = out / _out_name(name if path.is_file() else path.name, used)
            _save_nifti(f, lab.numpy(), _affine_of(path, image))
            counts = torch.bincount(lab.flatten().long(), minlength=k)[:k].tolist()
            names.append(name)
            maps.append(f)
            rows.append([name, f.name, *counts])
    table = out / "predictions.csv"
    _atomic_csv(table, header, rows)
    return Prediction(run.run_id, run.task, out, tuple(names), None, tuple(maps), table)
