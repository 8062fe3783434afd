"""Run a teacher–student chain: teacher → pseudo-labels → noisy student → next teacher → …

Every generation is an ordinary run in the store. Generation 0 (the teacher) and the supervised
baselines go through :func:`transfuse.run.train_run`; a student goes through
:func:`train_student`, a thin twin of ``train_run`` that builds its training set from the
labelled subset plus the teacher's pseudo-labels and trains it with ``fit()`` unchanged.

Linkage: a student's spec carries ``parent = {"teacher": run_id, "generation": n, ...}``, so its
run id depends on its teacher's. Each run's lineage, test metrics and pseudo-label quality are
stored as a ``selftrain`` result (``Store.get_results("selftrain", study=chain)``) and, for
students, in the run's summary too (written in the same transaction that finishes the run).

Resumable: run ids are known before anything runs, finished runs are skipped, and a student's
teacher is re-loaded from its stored ``best.pt``; a killed chain continues after its last
finished generation.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset

from ..atomic import atomic_write
from ..config import RunSpec, TrainSpec, run_id, spec_from_dict
from ..data import PreparedData, load_dataset
from ..errors import ConfigError, DataError, TransfuseError
from ..inits import apply_init, init_model_kwargs
from ..live import live_log
from ..models import create_model, get_stages
from ..run import run_source, check_compatible, environment, train_run
from ..store import Store
from ..train.device import resolve_device, seed_everything
from ..train.loop import FitResult, fit
from .noise import ChainDataset, NoiseSpec, apply_stochastic_depth, make_augment
from .pseudo import PseudoLabels, PseudoSpec, pseudo_label_quality, select_pseudo_labels
from .spec import ChainSpec, baseline_specs, student_spec, teacher_spec

__all__ = ["run_chain", "chain_status", "train_student", "teacher_logits", "load_run_model",
           "labelled_indices", "ChainRun", "ChainOutcome", "RESULT_KIND"]

RESULT_KIND = "selftrain"


@dataclass(frozen=True)
class ChainRun:
    """One run of a chain: ``role`` is ``teacher`` (generation 0), ``student``, ``labelled`` or
    ``full`` (the supervised baselines)."""

    seed: int
    role: str
    generation: int | None
    run_id: str
    teacher: str | None
    test_auc: float | None
    skipped: bool
    pseudo: dict[str, Any] | None = None


@dataclass
class ChainOutcome:
    """What :func:`run_chain` did, in order (per seed: teacher, students, baselines)."""

    chain: str
    runs: list[ChainRun] = field(default_factory=list)


def load_run_model(store: Store, rid: str, *, device: str | torch.device | None = None) -> nn.Module:
    """Rebuild a finished run's model from its spec and load its ``best.pt`` (eval mode).

    Raises:
        TransfuseError: the run is not finished or its checkpoint is missing.
    """
    rec = store.get_run(rid)
    ckpt = store.run_dir(rec.run_id) / "best.pt"
    if rec.status != "finished" or not ckpt.is_file():
        raise TransfuseError(f"run {rec.run_id} is {rec.status} or has no {ckpt}; a teacher must be "
                             "a finished run (rerun the chain to train it)")
    spec = spec_from_dict(rec.spec)
    kwargs = init_model_kwargs(spec.init.name)
    dropout = ((spec.parent or {}).get("noise") or {}).get("dropout", 0.0)
    if dropout:  # same modules as in training (a ResNet's head becomes Sequential(Dropout, fc))
        kwargs["drop_rate"] = dropout
    model = create_model(rec.model_info["name"], spatial_dims=rec.model_info["spatial_dims"],
                         in_channels=rec.data_info["in_channels"],
                         num_classes=len(rec.data_info["class_names"]), **kwargs)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])
    return model.to(resolve_device(device)).eval()


@torch.no_grad()
def teacher_logits(model: nn.Module, dataset: Dataset, *, device: str | torch.device | None = None,
                   batch_size: int = 256) -> np.ndarray:
    """Logits ``(N, K)`` of the **un-noised** teacher on the images of ``dataset``.

    The model is put in eval mode (no dropout, no drop-path, BatchNorm running statistics) and
    sees the dataset's images as they are (no augmentation); targets in the dataset are ignored.
    """
    dev = resolve_device(device)
    model.eval()  # the teacher is never noised when it labels
    out = []
    for batch in DataLoader(dataset, batch_size=batch_size):
        out.append(model(batch[0].to(dev)).float().cpu())
    k = getattr(model, "num_classes", None)
    return torch.cat(out).numpy() if out else np.zeros((0, k or 0), dtype=np.float32)


def _labels(ds: Dataset, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """True targets and masks of ``ds`` at ``idx`` (stacked)."""
    if hasattr(ds, "targets") and hasattr(ds, "mask"):
        t = torch.as_tensor(idx, dtype=torch.long)
        return ds.targets[t], ds.mask[t]
    items = [ds[int(i)] for i in idx]
    return torch.stack([torch.as_tensor(it[1]) for it in items]), torch.stack(
        [torch.as_tensor(it[2]) for it in items])


def _digest(item: tuple) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for t in item[:2]:
        h.update(torch.as_tensor(t).contiguous().numpy().tobytes())
    return h.digest()


def labelled_indices(full_train: Dataset, labelled_train: Dataset) -> np.ndarray:
    """Positions in ``full_train`` of the examples of ``labelled_train`` (image + label match).

    Both must be normalised identically. Matching contents rather than re-deriving the
    subsampling keeps this right for every dataset family.

    Raises:
        DataError: an example of the labelled set is not in the full training set.
    """
    where: dict[bytes, list[int]] = {}
    for i in range(len(full_train)):
        where.setdefault(_digest(full_train[i]), []).append(i)
    out = []
    for j in range(len(labelled_train)):
        hits = where.get(_digest(labelled_train[j]))
        if not hits:
            raise DataError(f"labelled example {j} is not in the full training set; self-training "
                            "needs a dataset whose loader is deterministic")
        out.append(hits.pop(0))
    return np.array(sorted(out), dtype=np.int64)


@dataclass
class _StudentData:
    full: PreparedData
    labelled: np.ndarray
    pool: np.ndarray


def _student_data(spec: RunSpec, norm: tuple[tuple[float, ...], tuple[float, ...]],
                  limit: int | None) -> _StudentData:
    """The full training split (teacher's normalisation), the labelled subset and the pool."""
    lab = load_dataset(spec.data, norm=norm)
    full = load_dataset(replace(spec.data, fraction=None, n_train=None), norm=norm)
    idx = labelled_indices(full.train, lab.train)
    pool = np.setdiff1d(np.arange(len(full.train)), idx)
    if limit is not None and limit < len(pool):  # the same pool in every generation
        pool = np.sort(np.random.default_rng(spec.seed).choice(pool, size=limit, replace=False))
    return _StudentData(full, idx, pool)


def _trainset(sd: _StudentData, pseudo: PseudoLabels, augment: Any) -> Dataset:
    """Labelled examples (true labels) + pseudo-labelled ones, all noised by ``augment``."""
    task, k = sd.full.info.task, sd.full.info.num_classes
    lt, lm = _labels(sd.full.train, sd.labelled)
    if task == "multiclass" and pseudo.targets.ndim == 2:  # soft targets: labels as one-hot
        lt = F.one_hot(lt, k).float()
    parts = [ChainDataset(sd.full.train, sd.labelled, lt, lm, augment)]
    if len(pseudo):
        parts.append(ChainDataset(sd.full.train, sd.pool[pseudo.indices],
                                  torch.as_tensor(pseudo.targets), torch.as_tensor(pseudo.masks),
                                  augment))
    return ConcatDataset(parts) if len(parts) > 1 else parts[0]


def _build_student(spec: RunSpec, noise: NoiseSpec, data: PreparedData, workspace: str | Path
                   ) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    source = run_source(spec, workspace)  # validates the init spec as train_run does
    dims = check_compatible(spec, data)
    seed_everything(spec.seed)
    kwargs = init_model_kwargs(spec.init.name)
    if noise.dropout:
        kwargs["drop_rate"] = noise.dropout
    model = create_model(spec.model.name, spatial_dims=dims, in_channels=data.info.in_channels,
                         num_classes=data.info.num_classes, **kwargs)
    report = apply_init(model, spec.init, source=source, seed=spec.seed, workspace=workspace)
    blocks = apply_stochastic_depth(model, noise.drop_path)
    applied = {"augment": (f"{'RandAugment' if dims == 2 else 'MONAI'}(ops={noise.ops}, "
                           f"magnitude={noise.magnitude})") if noise.augment else None,
               "dropout": noise.dropout, "drop_path": noise.drop_path if blocks else 0.0,
               "drop_path_blocks": blocks}
    model_info = {"name": spec.model.name, "spatial_dims": dims,
                  "parameters": sum(p.numel() for p in model.parameters()),
                  "stages": [s.to_dict() for s in get_stages(model)]}
    init_report = {**report.to_dict(), "source_info": source.to_dict() if source else None}
    return model, applied, {"model_info": model_info, "init_report": init_report}


def _best_val(res: FitResult) -> float:
    """The validation score ``fit`` selects on (AUC, or -loss where AUC is undefined)."""
    return max((m["auc"] if math.isfinite(m["auc"]) else -m["loss"]
                for step, split, m in res.history if split == "val" and step > 0), default=-math.inf)


def _fit_phases(model: nn.Module, data: PreparedData, tune: PreparedData, spec: RunSpec,
                ft: TrainSpec | None, store: Store, rid: str, device: str | None,
                progress: bool) -> tuple[FitResult, FitResult | None, bool]:
    """Noisy training, then optional fine-tuning on labelled data; both logged to one run.

    Returns ``(noisy result, fine-tuning result, fine-tuned model kept)``. Like ``fit``'s own
    checkpoint choice, the fine-tuned model replaces the noisy one only if it scores at least as
    well on validation (with very few labels, fine-tuning can overfit them).
    """
    run_dir = store.run_dir(rid)
    log = live_log(store, rid, run_dir=run_dir, workspace=store.workspace)  # store + metrics.csv
    res = fit(model, data, spec.train, seed=spec.seed, device=device, run_dir=run_dir,
              progress=progress, log=log)
    if ft is None:
        return res, None, False
    off = res.steps  # fine-tuning steps continue the run's step axis (its step 0 is not re-logged)
    ft_res = fit(model, tune, ft, seed=spec.seed, device=device, run_dir=run_dir / "finetune",
                 progress=progress,
                 log=lambda s, split, m: log(off + s, split, m) if s else None)
    if _best_val(ft_res) < _best_val(res):
        return res, ft_res, False
    # The fine-tuned model is the generation's: put it where teachers and analysis look.
    shutil.copy2(run_dir / "best.pt", run_dir / "student_best.pt")
    for name in ("best.pt", "test_predictions.npz"):
        atomic_write(run_dir / name, lambda tmp, n=name: shutil.copy2(run_dir / "finetune" / n, tmp))
    return res, ft_res, True


def train_student(spec: RunSpec, *, workspace: str | Path, device: str | None = None,
                  progress: bool = True) -> tuple[str, dict[str, Any], bool]:
    """Train and store one noisy student; a finished one is returned as is, not repeated.

    Args:
        spec: a student spec from :func:`~transfuse.selftrain.spec.student_spec` (its
            ``parent`` names the teacher run and holds the pseudo-label, noise and fine-tuning
            settings).
        workspace: run store folder holding the finished teacher.
        device: ``None`` (auto), ``"cpu"`` or ``"cuda[:i]"``.
        progress: progress bars.

    Returns:
        ``(run_id, selftrain summary, skipped)``.

    Raises:
        TransfuseError: no parent, unfinished teacher, bad data or options.
    """
    parent = spec.parent or {}
    if "teacher" not in parent:
        raise ConfigError("a student spec needs parent.teacher (build it with student_spec)")
    store, rid = Store(workspace), run_id(spec)
    if store.status(rid) == "finished":
        return rid, store.get_run(rid).summary.get("selftrain", {}), True
    teacher = store.get_run(parent["teacher"])
    norm = (tuple(teacher.data_info["norm_mean"]), tuple(teacher.data_info["norm_std"]))
    sd = _student_data(spec, norm, parent.get("unlabelled_limit"))
    info = sd.full.info
    logits = teacher_logits(load_run_model(store, teacher.run_id, device=device),
                            Subset(sd.full.train, sd.pool.tolist()), device=device)
    pseudo = select_pseudo_labels(logits, task=info.task, spec=PseudoSpec(**parent["pseudo"]),
                                  seed=spec.seed)
    pt, pm = _labels(sd.full.train, sd.pool)  # evaluation only: never reaches the student
    quality = pseudo_label_quality(pseudo, logits, true_targets=pt.numpy(), true_masks=pm.numpy(),
                                   task=info.task, class_names=info.class_names)
    noise = NoiseSpec(**parent["noise"])
    augment = make_augment(spatial_dims=info.spatial_dims, mean=info.norm_mean, std=info.norm_std,
                           ops=noise.ops, magnitude=noise.magnitude, seed=spec.seed) if noise.augment else None
    train = _trainset(sd, pseudo, augment)
    data = PreparedData(replace(info, split_sizes={
        **info.split_sizes, "train": len(train), "labelled": len(sd.labelled),
        "pseudo": len(pseudo), "pool": len(sd.pool)}), train, sd.full.val, sd.full.test)
    lt, lm = _labels(sd.full.train, sd.labelled)
    tune = PreparedData(data.info, ChainDataset(sd.full.train, sd.labelled, lt, lm), data.val, data.test)
    model, applied, infos = _build_student(spec, noise, data, workspace)
    ft = TrainSpec(**parent["finetune"]) if parent.get("finetune") else None
    store.start_run(spec, env=environment(resolve_device(device)))
    store.set_info(rid, data_info=data.info.to_dict(), **infos)
    run_dir = store.run_dir(rid)
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez(run_dir / "pseudo_labels.npz", pool=sd.pool, indices=pseudo.indices,
             targets=pseudo.targets, masks=pseudo.masks, labelled=sd.labelled, logits=logits)
    try:
        res, ft_res, kept = _fit_phases(model, data, tune, spec, ft, store, rid, device, progress)
    except BaseException as e:
        store.fail_run(rid, f"{type(e).__name__}: {e}")
        raise
    last = ft_res if kept else res
    steps = res.steps + (ft_res.steps if ft_res else 0)
    summary = {"teacher": teacher.run_id, "generation": parent.get("generation"), "pseudo": quality,
               "noise_applied": applied, "n_labelled": len(sd.labelled), "n_train": len(train),
               "finetuned": ft_res is not None, "finetune_kept": kept,
               "noisy_test": res.test if ft_res else None,
               "finetune_test": ft_res.test if ft_res else None}
    store.finish_run(rid, step=steps, test_metrics=last.test, summary={
        "best_step": (res.steps if kept else 0) + last.best_step, "steps": steps,
        "train_seconds": round(res.train_seconds + (ft_res.train_seconds if ft_res else 0), 3),
        "examples_per_second": round(res.examples_per_second, 1), "selftrain": summary})
    return rid, summary, False


def _record(store: Store, chain: str, seed: int, role: str, gen: int | None, rid: str,
            teacher: str | None, skipped: bool, extra: dict[str, Any] | None = None) -> ChainRun:
    """Store the run's place in the chain as a ``selftrain`` result and return it."""
    test = store.final_metrics(rid)
    payload = {"chain": chain, "seed": seed, "role": role, "generation": gen, "run_id": rid,
               "teacher": teacher, "test_auc": test.get("auc"), "test_acc": test.get("acc"),
               **(extra or {})}
    key = f"{chain}/seed{seed}/" + (f"gen{gen}" if gen is not None else role)
    store.put_result(RESULT_KIND, key, payload, study=chain, run_id=rid)
    return ChainRun(seed, role, gen, rid, teacher, test.get("auc"), skipped,
                    (extra or {}).get("pseudo"))


def _chain_specs(chain: ChainSpec, seed: int) -> list[tuple[str, int | None, RunSpec]]:
    """``(role, generation, spec)`` of one seed's runs, in training order."""
    t = teacher_spec(chain, seed=seed)
    out: list[tuple[str, int | None, RunSpec]] = [("teacher", 0, t)]
    tid = run_id(t)
    for g in range(1, chain.generations + 1):
        s = student_spec(chain, seed=seed, generation=g, teacher=tid)
        out.append(("student", g, s))
        tid = run_id(s)
    out += [(name, None, b) for name, b in baseline_specs(chain, seed=seed).items()]
    return out


def run_chain(chain: ChainSpec, *, workspace: str | Path, smoke: bool = False,
              device: str | None = None, progress: bool = True) -> ChainOutcome:
    """Run every missing run of a chain (all seeds): teacher, N students, baselines.

    Args:
        chain: the parsed chain file.
        workspace: run store folder.
        smoke: run the shrunk chain (:meth:`ChainSpec.shrink`) under ``<name>-smoke``.
        device: ``None`` (auto), ``"cpu"`` or ``"cuda[:i]"``.
        progress: a bar over the chain's runs (and each run's own bar).

    Returns:
        :class:`ChainOutcome`, one :class:`ChainRun` per run.
    """
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise ConfigError("selftrain runs in one process; launch it without torchrun")
    if smoke:
        chain = chain.shrink()
    store = Store(workspace)
    store.put_result(RESULT_KIND + "_chain", chain.name, {
        "name": chain.name, "description": chain.description, "path": chain.path,
        "labelled_fraction": chain.labelled_fraction, "generations": chain.generations,
        "seeds": list(chain.seeds), "pseudo": chain.pseudo.to_dict(), "noise": chain.noise.to_dict(),
        "finetune": chain.finetune, "smoke": smoke}, study=chain.name)
    plan = [(seed, *r) for seed in chain.seeds for r in _chain_specs(chain, seed)]
    from tqdm.auto import tqdm

    out = ChainOutcome(chain.name)
    teacher: str | None = None
    for seed, role, gen, spec in tqdm(plan, desc=f"chain {chain.name}", unit="run",
                                      disable=not progress, leave=False):
        if role == "student":
            rid, summary, skipped = train_student(spec, workspace=workspace, device=device,
                                                  progress=progress)
            out.runs.append(_record(store, chain.name, seed, role, gen, rid, teacher, skipped,
                                    {"pseudo": summary.get("pseudo"),
                                     "noise_applied": summary.get("noise_applied")}))
        else:
            res = train_run(spec, workspace=workspace, device=device, progress=progress)
            rid = res.record.run_id
            out.runs.append(_record(store, chain.name, seed, role, gen, rid, None, res.skipped))
        if role in ("teacher", "student"):
            teacher = rid
    return out


def chain_status(chain: ChainSpec, *, workspace: str | Path,
                 smoke: bool = False) -> list[tuple[int, str, int | None, str, str]]:
    """``(seed, role, generation, run_id, status)`` of every run (``missing`` if never started)."""
    if smoke:
        chain = chain.shrink()
    ws = Path(workspace)
    st = {r.run_id: r.status for r in Store(ws).list_runs()} if (ws / "transfuse.db").is_file() else {}
    return [(seed, role, gen, run_id(s), st.get(run_id(s), "missing"))
            for seed in chain.seeds for role, gen, s in _chain_specs(chain, seed)]
