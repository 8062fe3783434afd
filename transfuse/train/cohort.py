"""``fit_cohort()``: several runs that differ only in seed and init, trained as one vectorised model.

The members share the architecture, the data and every training setting; each keeps its own
weights, BatchNorm statistics, data order and augmentation stream (from its seed), optimiser
state, evaluations, best-on-validation checkpoint, test predictions and ``resume.pt``. The
member models are stacked into one *template* module whose parameters and buffers carry a
leading member dimension; a step is ``torch.func.vmap(functional_call)`` over them in train mode,
so each member's BatchNorm running statistics are updated from its own batch.

Why it is the per-run optimiser: SGD (momentum, Nesterov, weight decay), Adam and AdamW update
each element from that element's gradient, state and the group's learning rate only, so one
optimiser over the stacked tensors performs every member's update at once; its parameter groups
are :func:`~transfuse.train.finetune.plan_finetune`'s over the template (the same stages, learning
rates, frozen tensors and LP-FT switch as ``fit()``), and one ``LambdaLR`` gives every member
``fit()``'s schedule. The loss is the sum of the members' losses, whose gradient with respect
to one member's weights is that member's own loss gradient.

What is not vectorised is ``fit()``'s: :func:`transfuse.train.loop.fit` remains the reference,
and :func:`cohort_refusal` names every setting this path does not implement, so such a spec
trains alone instead of silently differently. Random layers (dropout) draw from one stream for
the whole cohort: members are then statistically, not bitwise, equivalent to their solo runs.

``resume.pt`` of a member is in ``fit()``'s format (its own slice of the stacked state), so a
cohort resumes as a whole, and a member can also resume alone. The members' files are written as
one commit (:func:`~transfuse.train.resume.save_cohort_resume`: all to ``resume.next.pt``, then
renamed), so a kill inside a checkpoint still leaves one step for every member once
:func:`~transfuse.train.resume.settle_cohort_resume` has run.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import TrainSpec
from ..data.base import PreparedData
from ..errors import ConfigError
from .augment import make_augment
from .device import autocast, resolve_device
from .finetune import plan_finetune
from .clinical import clinical_metrics
from .parts import preload as _preload
from .loop import (FitResult, LogFn, _diverged, resume_fingerprint,
                   _save_predictions, _save_state, _targets, checkpoint_or_stop, loss_fn,
                   lr_lambda, make_optimizer, primary_metric, score_predictions)
from .resume import (BatchStream, SigtermGuard, SkipRandomSampler, drop_resume, load_resume,
                     rng_state, save_cohort_resume, set_rng_state)

__all__ = ["Member", "fit_cohort", "cohort_refusal", "COHORT_TRAIN_KEYS"]

#: TrainSpec fields whose every value fit_cohort implements as fit() does. A field added to
#: TrainSpec later is not here: a spec that sets it away from its default trains alone.
COHORT_TRAIN_KEYS = frozenset({
    "steps", "epochs", "batch_size", "lr", "optimizer", "momentum", "weight_decay", "schedule",
    "warmup_steps", "eval_every", "amp", "num_workers", "finetune", "layer_decay",
    "head_lr_mult", "freeze_bn", "augment", "checkpoint_every", "compile", "preload",
    "cuda_graph"})  # a cohort's step is not captured: `on` is refused below, auto/off are honest


@dataclass
class Member:
    """One run of a cohort.

    Attributes:
        model: its model, initialised as for a solo run (moved to the device, not trained:
            its tensors are copied into the cohort).
        seed: its run seed (data order, augmentation).
        run_dir: where its ``init.pt``, ``best.pt``, ``last.pt``, ``test_predictions.npz`` and
            ``resume.pt`` go.
        log: called as ``log(step, split, metrics)`` after each of its evaluations.
        on_fail: called once with the error when this member diverges; the others go on.
    """

    model: nn.Module
    seed: int
    run_dir: Path | None = None
    log: LogFn | None = None
    on_fail: Callable[[BaseException], None] | None = None


def cohort_refusal(spec: TrainSpec, *, task: str | None = None, world_size: int = 1) -> str | None:
    """Why runs with these settings cannot train as a cohort, or ``None`` when they can."""
    if task == "segmentation":
        return "segmentation runs train alone (whole-volume evaluation is not vectorised)"
    if world_size > 1:
        return "distributed (torchrun) runs train alone"
    if spec.cuda_graph == "on":
        return "train.cuda_graph: on captures a run's own step; such runs train alone"
    for f in dataclasses.fields(TrainSpec):
        if f.name not in COHORT_TRAIN_KEYS:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            if getattr(spec, f.name) != default:
                return f"train.{f.name} is not implemented for cohorts"
    return None


def _set_tensor(root: nn.Module, name: str, value: torch.Tensor, parameter: bool) -> None:
    prefix, _, leaf = name.rpartition(".")
    mod = root.get_submodule(prefix) if prefix else root
    if parameter:
        mod._parameters[leaf] = nn.Parameter(value, requires_grad=True)
    else:
        mod._buffers[leaf] = value


def _stack_into(members: list[nn.Module]) -> nn.Module:
    """A copy of the first model whose parameters and buffers hold every member's, stacked."""
    template = copy.deepcopy(members[0])
    ref = members[0].state_dict()
    for m in members[1:]:
        sd = m.state_dict()
        if sd.keys() != ref.keys() or any(sd[k].shape != ref[k].shape or sd[k].dtype != ref[k].dtype
                                          for k in ref):
            raise ConfigError("cohort members differ in architecture (their state dicts differ); "
                              "train them alone (study run --cohort off)")
    with torch.no_grad():
        for name, _ in list(template.named_parameters()):
            _set_tensor(template, name, torch.stack(
                [m.get_parameter(name).detach() for m in members]).clone(), True)
        for name, _ in list(template.named_buffers()):
            _set_tensor(template, name, torch.stack([m.get_buffer(name) for m in members]).clone(), False)
    return template


class _Cohort:
    """The stacked state and its per-member views (solo-format state dicts)."""

    def __init__(self, template: nn.Module, opt: torch.optim.Optimizer, size: int) -> None:
        self.template, self.opt, self.size = template, opt, size

    def member_state(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i].detach().clone() for k, v in self.template.state_dict().items()}

    def load_members(self, states: list[dict[str, torch.Tensor]]) -> None:
        self.template.load_state_dict({k: torch.stack([s[k] for s in states]) for k in states[0]})

    def _stacked_ids(self) -> dict[int, torch.Size]:
        params = [p for g in self.opt.param_groups for p in g["params"]]
        return {i: p.shape for i, p in enumerate(params)}

    def member_opt_state(self, i: int) -> dict[str, Any]:
        sd = self.opt.state_dict()
        shapes = self._stacked_ids()
        state = {idx: {k: (v[i].clone() if torch.is_tensor(v) and k != "step" and v.shape == shapes[idx]
                           else v)
                       for k, v in st.items()} for idx, st in sd["state"].items()}
        return {"state": state, "param_groups": sd["param_groups"]}

    def load_opt_states(self, states: list[dict[str, Any]]) -> None:
        shapes = self._stacked_ids()
        first = states[0]
        merged = {}
        for idx, st in first["state"].items():
            merged[idx] = {k: (torch.stack([s["state"][idx][k] for s in states])
                               if torch.is_tensor(v) and k != "step"
                               and (self.size,) + tuple(v.shape) == tuple(shapes[idx])
                               else v) for k, v in st.items()}
        self.opt.load_state_dict({"state": merged, "param_groups": first["param_groups"]})


def _batched_predict(fwd: Callable, params: dict, buffers: dict, loader: DataLoader,
                     dev: torch.device, task: str, amp: bool, size: int
                     ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list[float]]:
    """Every member's probabilities ``(N, K)`` and mean loss over ``loader``; targets, masks."""
    probs: list[list[torch.Tensor]] = [[] for _ in range(size)]
    ys, ms = [], []
    loss_sum, n = torch.zeros(size, dtype=torch.float64), 0
    with torch.no_grad():
        for x, y, m in loader:
            x, y, m = x.to(dev, non_blocking=True), y.to(dev), m.to(dev)
            with autocast(dev, amp):
                logits = fwd(params, buffers, x)
            logits = logits.float()
            # one member at a time, as fit() reduces it: the same float32 loss to the last bit
            losses = torch.stack([loss_fn(logits[i], y, m, task) for i in range(size)])
            loss_sum += losses.double().cpu() * len(x)
            n += len(x)
            p = (logits.softmax(2) if task == "multiclass" else logits.sigmoid()).cpu()
            for i in range(size):
                probs[i].append(p[i])
            ys.append(y.cpu())
            ms.append(m.cpu())
    return ([torch.cat(p).numpy() for p in probs], torch.cat(ys).numpy(), torch.cat(ms).numpy(),
            (loss_sum / max(n, 1)).tolist())


def fit_cohort(members: list[Member], data: PreparedData, spec: TrainSpec, *,
               device: str | None = None, progress: bool = True) -> list[FitResult | BaseException]:
    """Train ``members`` together; each ends as :func:`~transfuse.train.loop.fit` would alone.

    Args:
        members: the runs (same architecture, initialised each as alone).
        data: prepared splits (shared by every member).
        spec: the shared optimisation settings.
        device: as ``fit()``.
        progress: one progress bar for the cohort.

    Returns:
        per member, its :class:`FitResult`, or the error it failed with (a divergence: a
        :class:`~transfuse.errors.DivergedError`; its ``on_fail`` was called when it happened).

    Raises:
        ConfigError: settings :func:`cohort_refusal` names, or members of different architectures.
        PreemptedError: SIGTERM; every member's ``resume.pt`` was written first.
    """
    task = data.info.task
    why = cohort_refusal(spec, task=task)
    if why:
        raise ConfigError(f"cannot train as a cohort: {why}")
    if not members:
        return []
    dev = resolve_device(device)
    size = len(members)
    for mb in members:
        mb.model.to(dev)
        if mb.run_dir is not None:
            Path(mb.run_dir).mkdir(parents=True, exist_ok=True)
    template = _stack_into([mb.model for mb in members])
    finetune = plan_finetune(template, spec)
    finetune.stacked = 1  # weight decay by each member's weight rank, as alone
    finetune.apply(template)
    opt = make_optimizer(template, spec, groups=finetune.param_groups())
    coh = _Cohort(template, opt, size)

    gens = [torch.Generator().manual_seed(mb.seed) for mb in members]
    bs = min(spec.batch_size, len(data.train))
    preloaded = _preload(data.train, dev, spec.preload)
    loaders = []
    for g in gens:
        sampler = SkipRandomSampler(data.train, generator=g)
        if preloaded is not None:
            loaders.append(DataLoader(range(len(data.train)), batch_size=bs, sampler=sampler,
                                      generator=g, drop_last=True))
        else:
            loaders.append(DataLoader(data.train, batch_size=bs, sampler=sampler, generator=g,
                                      drop_last=True, num_workers=spec.num_workers,
                                      pin_memory=dev.type == "cuda",
                                      persistent_workers=spec.num_workers > 0))
    streams = [BatchStream(ld, g) for ld, g in zip(loaders, gens)]
    eval_loader = lambda ds: DataLoader(ds, batch_size=max(bs, 256),  # noqa: E731
                                        num_workers=spec.num_workers, pin_memory=dev.type == "cuda")
    val_loader, test_loader = eval_loader(data.val), eval_loader(data.test)
    total = spec.steps or spec.epochs * len(loaders[0])
    augment = make_augment(spec.augment, spatial_dims=data.info.spatial_dims,
                           channels=data.info.in_channels, task=task,
                           norm_mean=tuple(data.info.norm_mean), norm_std=tuple(data.info.norm_std))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(spec, total))

    def one(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(template, (p, b), (x,))

    train_fwd = torch.func.vmap(one, in_dims=(0, 0, 0), randomness="different")
    eval_fwd = torch.func.vmap(one, in_dims=(0, 0, None), randomness="different")
    train_loss = torch.func.vmap(lambda lg, y, m: loss_fn(lg, y, m, task))

    def tensors() -> tuple[dict, dict]:
        return dict(template.named_parameters()), dict(template.named_buffers())

    results: list[FitResult | BaseException | None] = [None] * size
    active = [True] * size
    histories: list[list[tuple[int, str, dict[str, float]]]] = [[] for _ in range(size)]
    fingerprints = [resume_fingerprint(spec, mb.seed, 1) for mb in members]

    def record(i: int, step: int, split: str, metrics: dict[str, float]) -> None:
        histories[i].append((step, split, metrics))
        if members[i].log is not None:
            members[i].log(step, split, metrics)

    def fail(i: int, e: BaseException) -> None:
        active[i], results[i] = False, e
        if members[i].run_dir is not None:
            drop_resume(Path(members[i].run_dir))
        if members[i].on_fail is not None:
            members[i].on_fail(e)

    def evaluate_all(loader: DataLoader, step: int, steps: list[int] | None = None
                     ) -> list[tuple[dict[str, float], np.ndarray] | None]:
        was = template.training
        template.eval()
        try:
            p, b = tensors()
            probs, y, m, losses = _batched_predict(eval_fwd, p, b, loader, dev, task, spec.amp, size)
        finally:
            template.train(was)
        out: list[tuple[dict[str, float], np.ndarray] | None] = []
        for i in range(size):
            if not active[i]:
                out.append(None)
                continue
            try:
                out.append((score_predictions(probs[i], y, m, losses[i], data=data), probs[i]))
            except FloatingPointError:
                fail(i, _diverged("the model predicts NaN/inf", steps[i] if steps else step, spec))
                out.append(None)
        return out

    primary = primary_metric(task)
    best_score, best_step = [-math.inf] * size, [0] * size
    best_state: list[dict[str, torch.Tensor] | None] = [None] * size
    loss_acc = torch.zeros(size, device=dev)
    first_bad = torch.zeros(size, dtype=torch.long, device=dev)
    seen, start = 0, 1
    ckpts = [load_resume(Path(mb.run_dir) if mb.run_dir is not None else None, fp)
             for mb, fp in zip(members, fingerprints)]
    steps_found = {int(c["step"]) if c is not None else None for c in ckpts}
    if len(steps_found) > 1:  # the runner groups members by their checkpoint's step
        raise ConfigError("cohort members have checkpoints at different steps "
                          f"({sorted(map(str, steps_found))}); train them alone or in groups")
    resumed = ckpts[0] is not None
    if resumed:
        start = int(ckpts[0]["step"]) + 1
        if finetune.switch_step is not None and start > finetune.switch_step:
            finetune.on_step(finetune.switch_step, template, opt, sched)
        coh.load_members([c["model"] for c in ckpts])
        coh.load_opt_states([c["optimizer"] for c in ckpts])
        sched.load_state_dict(ckpts[0]["scheduler"])
        for i, (c, mb) in enumerate(zip(ckpts, members)):
            best_score[i], best_step[i] = float(c["best_score"]), int(c["best_step"])
            bp = Path(mb.run_dir) / "best.pt" if mb.run_dir is not None else None
            if best_step[i] and bp is not None and bp.is_file():
                best = torch.load(bp, map_location=dev, weights_only=True)
                best_state[i] = best["state_dict"] if int(best["step"]) == best_step[i] else None
            loss_acc[i], first_bad[i] = float(c["loss_acc"]), int(c["first_bad"])
            for step_, split_, metrics_ in c["history"]:
                record(i, int(step_), split_, dict(metrics_))
            streams[i].restore(c["stream"])
        seen = int(ckpts[0]["seen"])
        set_rng_state(ckpts[0]["rng"])
    else:
        for i, mb in enumerate(members):
            if mb.run_dir is not None:
                _save_state(coh.member_state(i), Path(mb.run_dir) / "init.pt", 0)
        for i, r in enumerate(evaluate_all(val_loader, 0)):
            if r is not None:
                record(i, 0, "val", r[0])
    every = spec.checkpoint_every or spec.eval_every

    def checkpoint(step: int) -> None:
        rng = rng_state()
        sched_state = sched.state_dict()
        save_cohort_resume(  # one commit: a kill leaves every member at the same step
            (Path(mb.run_dir), {
                "fingerprint": fingerprints[i], "step": step, "model": coh.member_state(i),
                "optimizer": coh.member_opt_state(i), "scheduler": sched_state,
                "best_score": best_score[i], "best_step": best_step[i],
                "loss_acc": float(loss_acc[i]), "first_bad": int(first_bad[i]), "seen": seen,
                "history": [[st, sp, dict(m)] for st, sp, m in histories[i]],
                "stream": streams[i].state(), "rng": rng})
            for i, mb in enumerate(members) if active[i] and mb.run_dir is not None)

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start - 1, disable=not progress, desc=f"cohort of {size}",
               unit="step", leave=False)
    t0, eval_seconds = time.perf_counter(), 0.0
    template.train()
    with SigtermGuard() as sigterm:
        for step in range(start, total + 1):
            finetune.on_step(step, template, opt, sched)
            batches = [next(st) for st in streams]
            if preloaded is not None and augment is None:  # one gather for the whole cohort
                idx = torch.stack(batches).to(preloaded[0].device)
                x, y, m = (t[idx] for t in preloaded)
            else:
                xs, ys, ms = [], [], []
                for mb, batch in zip(members, batches):
                    if preloaded is not None:
                        idx = batch.to(preloaded[0].device)
                        xi, yi, mi = (t[idx] for t in preloaded)
                    else:
                        xi, yi, mi = batch
                    if augment is not None:
                        xi, yi = augment(xi, yi, seed=mb.seed, step=step, rank=0)
                    xs.append(xi), ys.append(yi), ms.append(mi)
                x, y, m = (torch.stack(t) for t in (xs, ys, ms))
            x, y, m = (t.to(dev, non_blocking=True) for t in (x, y, m))
            p, b = tensors()
            with autocast(dev, spec.amp):
                logits = train_fwd(p, b, x)
            losses = train_loss(logits.float(), y, m)
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()
            sched.step()
            loss_acc += losses.detach()
            first_bad.masked_fill_((first_bad == 0) & ~torch.isfinite(losses.detach()), step)
            seen += x.shape[1]
            bar.update(1)

            if step % spec.eval_every == 0 or step == total:
                n_since = step - (step - 1) // spec.eval_every * spec.eval_every
                train_losses = (loss_acc / n_since).tolist()
                t_eval = time.perf_counter()
                lr = spec.lr * sched.lr_lambdas[0](step)
                for i in range(size):
                    if active[i] and not math.isfinite(train_losses[i]):
                        fail(i, _diverged(f"the training loss became {train_losses[i]}",
                                          int(first_bad[i]) or step, spec))
                    elif active[i]:
                        record(i, step, "train", {"loss": train_losses[i], "lr": lr})
                loss_acc.zero_()
                for i, r in enumerate(evaluate_all(val_loader, step)):
                    if r is None:
                        continue
                    val_metrics = r[0]
                    record(i, step, "val", val_metrics)
                    score = (val_metrics[primary] if math.isfinite(val_metrics[primary])
                             else -val_metrics["loss"])
                    if score > best_score[i]:
                        best_score[i], best_step[i] = score, step
                        best_state[i] = coh.member_state(i)
                        if members[i].run_dir is not None:
                            _save_state(best_state[i], Path(members[i].run_dir) / "best.pt", step)
                eval_seconds += time.perf_counter() - t_eval
            if not any(active):
                break
            eval_seconds += checkpoint_or_stop(step, total, every=every, guard=sigterm,
                                               checkpoint=checkpoint, bar=bar)
    bar.close()
    finetune.release()
    seconds = time.perf_counter() - t0 - eval_seconds
    if not any(active):
        return results  # type: ignore[return-value]
    for i, mb in enumerate(members):
        if active[i] and mb.run_dir is not None:
            _save_state(coh.member_state(i), Path(mb.run_dir) / "last.pt", total)
    coh.load_members([best_state[i] if best_state[i] is not None and active[i]
                      else coh.member_state(i) for i in range(size)])
    tests = evaluate_all(test_loader, 0, steps=best_step)
    vals = evaluate_all(val_loader, 0, steps=best_step) if task == "multiclass" else None
    for i, mb in enumerate(members):
        if not active[i] or tests[i] is None:
            continue
        metrics, probs = tests[i]
        if vals is not None and vals[i] is not None:  # as fit(): calibration, operating point
            metrics.update(clinical_metrics(vals[i][1], _targets(data.val), probs,
                                            _targets(data.test), rule=spec.operating_point))
        if mb.run_dir is not None:
            _save_predictions(Path(mb.run_dir) / "test_predictions.npz", data, probs)
            drop_resume(Path(mb.run_dir))
        results[i] = FitResult(test=metrics, best_step=best_step[i], steps=total,
                               history=histories[i], train_seconds=seconds,
                               examples_per_second=(seen / seconds) if seconds else 0.0,
                               resumed_from=start - 1 if resumed else None)
    return results  # type: ignore[return-value]

