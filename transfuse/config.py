"""Run specifications: frozen dataclasses, canonical JSON and the run id.

A run is fully described by a :class:`RunSpec` (data, model, init, training, seed). Its canonical
JSON — sorted keys, no whitespace, defaults written out — is hashed into ``run_id``, so the same
spec always maps to the same run in the store and finished runs are never repeated.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .spec.fields import check_fields, spec_field, validate
from .spec.finetune_names import FINETUNE_FORMS, finetune_parts  # noqa: F401 (re-exported)
from .yaml_files import MAX_YAML_VALUES, read_yaml_file, where  # noqa: F401 (re-exported)

__all__ = ["DataSpec", "ModelSpec", "InitSpec", "TrainSpec", "RunSpec", "run_id", "spec_from_dict",
           "where", "read_yaml_file", "finetune_parts", "AUGMENTS"]

UNCERTAIN_POLICIES = ("ignore", "ones", "zeros")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "linear")
AUGMENTS = ("none", "basic", "strong")
CLASS_WEIGHTS = ("none", "balanced")
SAMPLERS = ("random", "balanced")


# DataSpec fields added for segmentation are left out of the JSON while they hold their default,
# so the ids of runs stored before the fields existed do not change.
_SEGMENTATION_DEFAULTS: dict[str, Any] = {"patch_size": None, "spacing": None, "fg_ratio": 0.5,
                                          "regions": []}
# TrainSpec fields added for fine-tuning strategies, left out of the JSON the same way.
FINETUNE_DEFAULTS: dict[str, Any] = {"finetune": "full", "layer_decay": 1.0, "head_lr_mult": 1.0,
                                      "freeze_bn": False, "augment": "none",
                                      "checkpoint_every": None, "compile": False, "preload": "auto",
                                      "cuda_graph": "auto",
                                      # issue 33: early stopping, imbalance, operating point
                                      "early_stop": None, "min_delta": 0.0, "class_weights": "none",
                                      "sampler": "random", "operating_point": "youden",
                                      # issue 32: weight averaging
                                      "ema": None, "swa": None}
# How a run is computed, not what: left out of the run id (as data.data_root), so switching them
# on for speed finds the runs already stored.
_EXECUTION_KEYS = ("checkpoint_every", "compile", "preload", "cuda_graph")
PRELOADS = ("auto", "always", "never")
CUDA_GRAPHS = ("auto", "on", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  #: train.compile's torch.compile modes


def parse_operating_point(text: str) -> tuple[str, float | None]:
    """``"youden"`` → ``("youden", None)``; ``"sensitivity=0.9"`` → ``("sensitivity", 0.9)``.

    Raises:
        ConfigError: anything else, naming ``train.operating_point`` and the two forms.
    """
    name, eq, value = str(text).partition("=")
    if name == "youden" and not eq:
        return "youden", None
    if name == "sensitivity" and eq:
        try:
            v = float(value)
        except ValueError:
            v = math.nan
        if 0 < v <= 1:
            return "sensitivity", v
    raise ConfigError(f"train.operating_point={text!r} is not valid; give youden or "
                      "sensitivity=<target in (0, 1]>, e.g. sensitivity=0.9")


@dataclass(frozen=True)
class DataSpec:
    """Which data to train on and how to prepare it.

    Attributes:
        name: dataset name, e.g. ``"medmnist:retinamnist@28"``, ``"builtin:brain_tissue"`` or
            ``"csv:labels.csv"`` (see ``transfuse datasets``).
        data_root: folder holding dataset files (MedMNIST ``.npz``, the CSV's images); ``None``
            uses ``$TRANSFUSE_DATA`` or the dataset's default.
        n_train: keep this many training examples (stratified, seeded); ``None`` keeps all.
        fraction: keep this fraction of the training set instead of ``n_train``.
        channels: force 1 (grayscale) or 3 (RGB) input channels; ``None`` keeps the data's own.
        image_size: resize images to this side length; ``None`` keeps the native size.
        uncertain: CheXpert-style policy for ``-1`` labels: ``ignore`` (masked out of loss and
            AUC), ``ones`` or ``zeros``.
        label_columns: CSV datasets: the label column(s); one column = single-label classes,
            several 0/1(/-1) columns = multi-label.
        path_column: CSV datasets: the column with image paths relative to ``data_root``.
        split_column: CSV datasets: optional column with ``train``/``val``/``test``.
        split_seed: seed of the train/val/test split and of subsampling.
        val_fraction: fraction held out for validation when the data has no official split.
        test_fraction: fraction held out for testing when the data has no official split.
        normalize: ``data`` (per-channel mean/std of the training split) or ``source`` (the
            pretrained source's mean/std, when the run has a source that declares them).
        patch_size: segmentation: side of the training patches and of the sliding window used
            on whole val/test volumes; ``None`` uses the dataset's default.
        spacing: segmentation: resample every volume to this voxel spacing in mm (one number =
            isotropic, or one per axis); ``None`` uses the dataset's default (files: native).
        fg_ratio: segmentation: probability that a training patch is centred on a foreground
            voxel (MONAI ``RandCropByPosNegLabel`` with ``pos=fg_ratio, neg=1-fg_ratio``).
        regions: segmentation: extra Dice scores over unions of labels, e.g.
            ``{"WT": [1, 2, 3], "TC": [2, 3], "ET": [3]}`` for BraTS.
    """

    name: str
    data_root: str | None = None
    n_train: int | None = spec_field(None, ge=1)
    fraction: float | None = spec_field(None, gt=0, le=1)
    channels: int | None = spec_field(None, choices=(1, 3), words="1, 3 or unset")
    image_size: int | None = spec_field(None, ge=8)
    uncertain: str = spec_field("ignore", choices=UNCERTAIN_POLICIES)
    label_columns: tuple[str, ...] = ()
    path_column: str = "path"
    split_column: str | None = None
    split_seed: int = 0
    val_fraction: float = spec_field(0.1, ge=0, lt=1)
    test_fraction: float = spec_field(0.2, ge=0, lt=1)
    normalize: str = spec_field("data", choices=("data", "source"))
    patch_size: int | None = spec_field(None, ge=8)
    spacing: float | tuple[float, ...] | None = None
    fg_ratio: float = spec_field(0.5, ge=0, le=1)
    regions: tuple[tuple[str, tuple[int, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.n_train is not None and self.fraction is not None:
            raise ConfigError("give data.n_train or data.fraction, not both")
        check_fields(self, prefix="data.")  # choices and bounds: the field metadata above
        object.__setattr__(self, "label_columns", tuple(self.label_columns))
        self._check_segmentation()

    def _check_segmentation(self) -> None:
        sp = self.spacing
        if isinstance(sp, (list, tuple)):
            sp = tuple(float(v) for v in sp)
            object.__setattr__(self, "spacing", sp[0] if len(set(sp)) == 1 else sp)
        if sp is not None and not all(v > 0 for v in (sp if isinstance(sp, tuple) else (sp,))):
            raise ConfigError(f"data.spacing={self.spacing!r} must be > 0 (mm)")
        regions = self.regions.items() if isinstance(self.regions, dict) else self.regions
        try:
            regions = tuple((str(n), tuple(int(v) for v in labels)) for n, labels in regions)
        except (TypeError, ValueError):
            raise ConfigError(f"data.regions={self.regions!r} must map region names to label "
                              "lists, e.g. {WT: [1, 2, 3]}") from None
        for n, labels in regions:
            if not labels or min(labels) < 1:
                raise ConfigError(f"data.regions[{n!r}]={list(labels)} must list foreground "
                                  "labels (>= 1)")
        object.__setattr__(self, "regions", regions)


@dataclass(frozen=True)
class ModelSpec:
    """Which architecture to build (see ``transfuse models``).

    ``spatial_dims`` ``None`` means "as the data": it is filled in before the run id is computed.
    """

    name: str
    spatial_dims: int | None = spec_field(None, choices=(2, 3), words="2 or 3")

    def __post_init__(self) -> None:
        check_fields(self, prefix="model.")


@dataclass(frozen=True)
class InitSpec:
    """How to initialise the model before training.

    Attributes:
        name: init strategy; ``random`` is the framework default initialisation.
        source: pretrained source for strategies that need one, e.g.
            ``imagenet:efficientnet_lite0``, ``torchvision:resnet50.IMAGENET1K_V2``,
            ``file:ckpt.pt`` or ``run:<run_id>``.
        partial: tensors the source cannot provide stay at their default instead of raising.
    """

    name: str = "random"
    source: str | None = None
    partial: bool = False


@dataclass(frozen=True)
class TrainSpec:
    """Optimisation settings for :func:`transfuse.train.fit`.

    Attributes:
        steps: number of optimiser steps (takes precedence over ``epochs``).
        epochs: number of passes over the training set when ``steps`` is unset.
        batch_size: examples per step (per process under DDP).
        lr: peak learning rate.
        optimizer: ``sgd`` (Nesterov momentum), ``adam`` or ``adamw``.
        momentum: SGD momentum.
        weight_decay: L2 / decoupled weight decay.
        schedule: ``constant``, ``cosine``, ``step`` (×0.1 at 50 % and 75 %) or ``linear`` decay.
        warmup_steps: linear warm-up steps before the schedule.
        eval_every: evaluate on the validation set every this many steps (and at the end).
        amp: mixed precision on CUDA (ignored on CPU).
        num_workers: data-loader worker processes.
        finetune: which parameters train: ``full``, ``linear_probe`` (the head only),
            ``freeze:<stage>`` (stem … that stage frozen), ``surgical:<stage>`` (that stage and
            the head only) or ``lpft:<steps>`` (linear probe for that many steps, then full).
            Stages are the model's (``stem``, ``block1`` … ``head``; a U-Net's decoder is its head).
        layer_decay: layer-wise learning-rate decay (timm ``--layer-decay``): the stage ``k``
            below the head trains at ``lr × layer_decay**k``.
        head_lr_mult: the head trains at ``lr × head_lr_mult``.
        freeze_bn: BatchNorm layers of frozen stages stay in eval mode, so their running
            statistics do not move either.
        augment: training augmentation, ``none``, ``basic`` or ``strong`` (flips, small affine,
            colour/intensity; torchvision v2 in 2D, MONAI in 3D and segmentation; seeded by the
            run seed and the step; never at evaluation; see :mod:`transfuse.train.augment`).
        checkpoint_every: write the mid-run checkpoint ``resume.pt`` every this many steps
            (``None``: at every evaluation); a rerun of a killed run resumes from it, with the
            same result (see :mod:`transfuse.train.resume`). Not part of the run id.
        compile: ``torch.compile`` the model for training and evaluation (checkpoints keep the
            plain model's keys); ``true`` is its default mode, or name one: ``reduce-overhead``
            (on CUDA, inductor's own CUDA graphs of the compiled forward and backward: the
            alternative to ``cuda_graph``, which ``bench/train_overhead.py --reduce-overhead``
            compares), ``max-autotune``, ``default``. Not part of the run id.
        preload: ``auto`` puts an in-memory training set on the training device once, when it
            fits (on CUDA: a quarter of the free memory), and draws batches by index there —
            the same batches as the data loader, without its per-example collation; ``always``
            insists (an error when it does not fit or the data is not in memory), ``never``
            keeps the data loader. Not part of the run id.
        cuda_graph: capture the forward and backward pass of a training step in a CUDA graph,
            replayed every step (the optimiser step and schedule stay eager):
            ``auto`` where the step can be captured (CUDA, one process, the training set
            preloaded, no augmentation, ``compile``, LP-FT switch or weight averaging; the
            reason it was not is stored in the run's summary), ``on`` insists (a one-line
            error where it cannot), ``off`` never. See :mod:`transfuse.train.graph`. Not part
            of the run id.
        early_stop: stop after this many evaluations without the validation score (AUC, Dice)
            improving by more than ``min_delta`` over its best (``None``: train every step);
            the step it stopped at is the run's ``stopped_step``.
        min_delta: the improvement ``early_stop`` asks for.
        class_weights: ``balanced`` weighs each class's loss by ``n / (K × n_class)``
            (multi-label: positives by ``n_negative / n_positive``), as scikit-learn's
            ``class_weight="balanced"``; ``none`` weighs every example alike.
        sampler: ``balanced`` draws training examples with replacement, each class equally
            often (single-label data); ``random`` shuffles each epoch.
        operating_point: how the decision threshold of a two-class run is chosen on the
            validation split: ``youden`` (max sensitivity + specificity − 1) or
            ``sensitivity=0.9`` (the highest threshold reaching that sensitivity); test metrics
            at that threshold are stored with the run (see :mod:`transfuse.train.clinical`).
        ema: exponential moving average of the weights (parameters and BatchNorm buffers) with
            this decay, updated after every optimiser step as timm's ``ModelEmaV3`` (the first
            update copies the weights); evaluations, the best-on-validation checkpoint,
            ``best.pt``/``last.pt`` and the test predictions use the averaged weights. ``None``:
            off. A decay ``d`` averages over roughly the last ``1 / (1 - d)`` steps.
        swa: stochastic weight averaging from this step on (``torch.optim.swa_utils``): an
            equal-weight average of the weights after every step from it, whose BatchNorm
            statistics are recomputed on the training set (``update_bn``) before each
            evaluation; evaluations before it use the current weights. ``None``: off.
            ``ema`` and ``swa`` cannot be combined. See :mod:`transfuse.train.averaging`.
    """

    steps: int | None = spec_field(200, ge=1)
    epochs: int | None = spec_field(None, ge=1)
    batch_size: int = spec_field(64, ge=1)
    # a finite lr: an infinite one would only diverge, and its advice read "--lr inf"
    lr: float = spec_field(0.01, gt=0, finite=True)
    optimizer: str = spec_field("sgd", choices=OPTIMIZERS)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = spec_field("cosine", choices=SCHEDULES)
    warmup_steps: int = 0
    eval_every: int = spec_field(50, ge=1)
    amp: bool = True
    num_workers: int = 0
    finetune: str = "full"
    layer_decay: float = spec_field(1.0, gt=0, finite=True)
    head_lr_mult: float = spec_field(1.0, gt=0, finite=True)
    freeze_bn: bool = False
    augment: str = spec_field("none", choices=AUGMENTS)
    checkpoint_every: int | None = spec_field(None, ge=1,
                                              hint=" (or leave it out: at every evaluation)")
    compile: bool | str = spec_field(False, choices=(False, True, *COMPILE_MODES),
                                     words="true, false or a torch.compile mode: "
                                           "default, reduce-overhead, max-autotune")
    preload: str = spec_field("auto", choices=PRELOADS)
    # YAML 1.1 reads a bare on/off as a bool: normalised in __post_init__
    cuda_graph: str | bool = spec_field("auto", choices=CUDA_GRAPHS)
    early_stop: int | None = spec_field(None, ge=1, hint=" evaluations (or leave it out: no "
                                                         "early stopping)")
    min_delta: float = spec_field(0.0, ge=0)
    class_weights: str = spec_field("none", choices=CLASS_WEIGHTS)
    sampler: str = spec_field("random", choices=SAMPLERS)
    operating_point: str = "youden"
    ema: float | None = None
    swa: int | None = None

    def __post_init__(self) -> None:
        self._check_averaging()
        if isinstance(self.cuda_graph, bool):  # YAML 1.1 reads a bare on/off as true/false
            object.__setattr__(self, "cuda_graph", "on" if self.cuda_graph else "off")
        check_fields(self, prefix="train.")  # choices and bounds: the field metadata above
        parse_operating_point(self.operating_point)
        finetune_parts(self.finetune)
        if self.steps is None and self.epochs is None:
            raise ConfigError("give train.steps or train.epochs")
        for nm in ("momentum", "weight_decay"):
            if not math.isfinite(getattr(self, nm)):
                raise ConfigError(f"train.{nm}={getattr(self, nm)} must be a finite number")

    def _check_averaging(self) -> None:
        if self.ema is not None:
            if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)):
                raise ConfigError(f"train.ema must be a number in (0, 1), got {self.ema!r}")
            if not 0 < self.ema < 1:
                raise ConfigError(f"train.ema must be in (0, 1), got {self.ema} (e.g. 0.99 "
                                  "averages over about the last 100 steps; leave it out: off)")
            object.__setattr__(self, "ema", float(self.ema))
        if self.swa is not None:
            if isinstance(self.swa, bool) or not isinstance(self.swa, int):
                raise ConfigError(f"train.swa must be a step number (an integer >= 1), "
                                  f"got {self.swa!r}")
            if self.swa < 1:
                raise ConfigError(f"train.swa must be >= 1 (the step averaging starts at), "
                                  f"got {self.swa}")
            if self.steps is not None and self.swa > self.steps:
                raise ConfigError(f"train.swa={self.swa} starts after the last step "
                                  f"(train.steps={self.steps}); give a step <= {self.steps}")
        if self.ema is not None and self.swa is not None:
            raise ConfigError(f"give train.ema or train.swa, not both (got ema={self.ema}, "
                              f"swa={self.swa}); they are two ways of averaging the weights")


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's result. ``run_id(spec)`` hashes it."""

    data: DataSpec
    model: ModelSpec
    init: InitSpec = field(default_factory=InitSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    seed: int = 0
    study: str | None = None
    # Lineage of a derived run, e.g. a self-training student: {"teacher": run_id, "generation": n,
    # ...}. Left out of the JSON when None, so the ids of ordinary runs do not change.
    parent: dict[str, Any] | None = field(default=None, hash=False)

    def __post_init__(self) -> None:
        if self.study is not None:  # it becomes file names (report-<study>.html)
            from .errors import check_name

            check_name(self.study, field="study")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of the spec (tuples become lists; ``parent`` only when set)."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        if d.get("parent") is None:
            d.pop("parent", None)
        for k, default in _SEGMENTATION_DEFAULTS.items():
            if d["data"].get(k) == default:
                d["data"].pop(k)
        for k, default in FINETUNE_DEFAULTS.items():
            if d["train"].get(k) == default:
                d["train"].pop(k)
        return d

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace. Equal specs give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


def run_id(spec: RunSpec) -> str:
    """12-hex-digit id of a run: SHA-256 of the canonical spec JSON.

    ``data.data_root`` is left out: where the files sit on this machine does not change what the
    run is, so a study resumes after its data moves (or on another node of a cluster); so are
    ``train.checkpoint_every``, ``train.compile``, ``train.preload`` and ``train.cuda_graph``,
    which change how a run is computed, not what.
    """
    d = spec.to_dict()
    d["data"].pop("data_root", None)
    for k in _EXECUTION_KEYS:
        d["train"].pop(k, None)
    canon = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:12]


def spec_from_dict(d: dict[str, Any]) -> RunSpec:
    """Build a :class:`RunSpec` from a nested dict (e.g. parsed JSON/YAML).

    Raises:
        ConfigError: an unknown or missing key, named with its dotted path.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"a run spec must be a mapping, got {type(d).__name__}")
    d = {k: v for k, v in d.items() if not (k in ("init", "train") and v is None)}  # defaults
    for key in ("data", "model"):
        if d.get(key) is None:
            raise ConfigError(f"missing key {key!r} in run spec")
    return validate(RunSpec, d, where="")
