"""Mid-run checkpoints: a killed or preempted run resumes where it stopped, bit-identically.

``fit()`` writes ``resume.pt`` into the run folder every ``train.checkpoint_every`` steps (default:
at every evaluation), atomically (write, then rename). It holds everything the rest of the run
depends on:

- model, optimiser and scheduler state, and LP-FT's switch (re-applied before the optimiser
  state is loaded, so the parameter groups match);
- the step, the evaluation history, the best score and its step (the weights are ``best.pt``),
  the training loss summed since the last evaluation;
- the random-number states (Python, NumPy, torch CPU and CUDA) and the data order's position:
  the sampler generator's state at the start of the current epoch and how many batches of the
  epoch were drawn. On resume the sampler skips those indices without loading their data.

A rerun of the same spec (``transfuse train`` again, ``study run`` again, the Ray driver
resubmitting) finds the file and continues from it; the run's summary says ``resumed_from``.
With ``num_workers: 0`` (the default) the result is bit-identical to an uninterrupted run on the
CPU; data-loader worker processes restart their own random streams, so datasets that draw
randomness inside workers (3D training patches) resume exactly only without workers.

SIGTERM (Slurm, spot preemption) makes the loop finish its step, write the checkpoint and raise
:class:`~transfuse.errors.PreemptedError`; the CLI exits with status 75 (``EX_TEMPFAIL``), and the
next attempt resumes. The first Ctrl-C (SIGINT) does the same, exiting with status 130. The run
is not stored ``failed``: it stays ``running`` without an owner process (listed ``stale``). A
run that fails for any other reason removes its checkpoint: rerunning a deterministic failure
from just before it would fail again.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from .._signals import SigtermGuard
from ..atomic import atomic_write, promote

__all__ = ["SkipRandomSampler", "SkipDistributedSampler", "BatchStream", "rng_state",
           "set_rng_state", "SigtermGuard", "load_resume", "RESUME_FILE", "Stateful", "resume_state",
           "save_resume", "restore_parts", "RESUME_NEXT", "save_cohort_resume", "settle_cohort_resume",
           "drop_resume"]

RESUME_FILE = "resume.pt"
RESUME_NEXT = "resume.next.pt"  #: a cohort member's checkpoint, written but not yet committed


class _Skip:
    """Mixin: the next ``__iter__`` drops its first ``skip`` indices (drawn, not loaded)."""

    skip = 0

    def __iter__(self) -> Iterator[int]:
        it = super().__iter__()  # type: ignore[misc]
        k, self.skip = self.skip, 0
        for _ in range(k):
            next(it)
        yield from it


class SkipRandomSampler(_Skip, RandomSampler):
    """``RandomSampler`` (same random draws, so the same order) that can skip ahead."""


class SkipDistributedSampler(_Skip, DistributedSampler):
    """``DistributedSampler`` that can skip ahead."""


class BatchStream:
    """An endless stream of training batches that knows its place (epoch, batch in epoch).

    Args:
        loader: the training loader (its sampler a ``Skip*Sampler``, its generator ``gen``).
        gen: the generator the loader and sampler draw from.
    """

    def __init__(self, loader: DataLoader, gen: torch.Generator) -> None:
        self.loader, self.gen = loader, gen
        self.epoch, self.in_epoch = 0, 0
        self._epoch_gen: torch.Tensor | None = None
        self._it: Iterator | None = None

    def _start_epoch(self) -> None:
        sampler = self.loader.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(self.epoch)
        self._epoch_gen = self.gen.get_state()
        self._it = iter(self.loader)

    def __next__(self) -> Any:
        if self._it is None:
            self._start_epoch()
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.in_epoch = self.epoch + 1, 0
            self._start_epoch()
            batch = next(self._it)
        self.in_epoch += 1
        return batch

    def state(self) -> dict[str, Any]:
        """Where the stream is: enough for :meth:`restore` to continue with the next batch."""
        return {"epoch": self.epoch, "in_epoch": self.in_epoch,
                "epoch_gen": self._epoch_gen if self._epoch_gen is not None else self.gen.get_state()}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state`: the epoch's generator state again, its drawn batches
        skipped at the sampler (indices only)."""
        self.epoch, self.in_epoch = int(state["epoch"]), int(state["in_epoch"])
        self.gen.set_state(state["epoch_gen"])
        sampler = self.loader.sampler
        sampler.skip = self.in_epoch * self.loader.batch_size
        self._start_epoch()

    # as a part of resume.pt (:func:`resume_state`, :func:`restore_parts`)
    state_dict, load_state_dict = state, restore


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) random states, as tensors and plain lists (so the
    checkpoint loads with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    out = {"python": [version, list(internal), gauss],
           "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
           "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_resume(run_dir: Path | None, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint in ``run_dir`` if it belongs to this run (same ``fingerprint``), else
    ``None`` (a foreign or unreadable file is removed, and the run starts over)."""
    if run_dir is None:
        return None
    p = run_dir / RESUME_FILE
    if not p.is_file():
        return None
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: start over rather than fail
        p.unlink(missing_ok=True)
        return None
    if ckpt.get("fingerprint") != fingerprint:
        p.unlink(missing_ok=True)
        return None
    return ckpt


class Stateful(Protocol):
    """A part of a loop's resume state: a model, an optimiser, a scheduler, a stream..."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any, /) -> Any: ...


def resume_state(*, fingerprint: str, step: int, parts: dict[str, Stateful],
                 **extra: Any) -> dict[str, Any]:
    """The content of a ``resume.pt``: the ``fingerprint`` it must match, the last ``step`` done,
    each part's ``state_dict()`` under its name, the ``extra`` keys and the random states
    (``"rng"``, :func:`rng_state`). Everything loads with ``weights_only=True``."""
    return {"fingerprint": fingerprint, "step": step,
            **{name: part.state_dict() for name, part in parts.items()}, **extra, "rng": rng_state()}


def save_resume(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (:func:`resume_state`) to ``path`` atomically: a kill mid-write leaves the
    previous checkpoint."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def save_cohort_resume(states: Iterable[tuple[Path, dict[str, Any]]]) -> None:
    """Write a cohort's checkpoints, one ``(run folder, state)`` per member, as one commit:
    every member's state goes to ``resume.next.pt`` first, then each is renamed onto
    ``resume.pt``. A kill while writing leaves every ``resume.pt`` at the previous step; a kill
    while renaming leaves a commit that :func:`settle_cohort_resume` completes. Either way the
    members resume together, from one step (members whose checkpoints disagree could only resume
    alone)."""
    written = []
    for run_dir, state in states:
        save_resume(run_dir / RESUME_NEXT, state)
        written.append(run_dir)
    for run_dir in written:
        promote(run_dir / RESUME_NEXT, run_dir / RESUME_FILE)


def _step_of(path: Path) -> int | None:
    """The ``step`` of a checkpoint file (memory-mapped: the tensors are not read), or ``None``."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:
        return None


def settle_cohort_resume(run_dirs: list[Path]) -> str | None:
    """Finish or undo a cohort checkpoint (:func:`save_cohort_resume`) that a kill interrupted,
    before the members resume: if any member's ``resume.pt`` already holds the step of the
    pending ``resume.next.pt`` files, the renaming had begun, so every pending file is renamed
    onto ``resume.pt``; otherwise the writing was cut short and the pending files are removed.

    Returns:
        ``"committed"``, ``"discarded"``, or ``None`` when nothing was pending.
    """
    pending = [d for d in run_dirs if (d / RESUME_NEXT).is_file()]
    if not pending:
        return None
    new = {_step_of(d / RESUME_NEXT) for d in pending}
    done = [d for d in run_dirs if d not in pending and (d / RESUME_FILE).is_file()]
    begun = len(new) == 1 and None not in new and any(_step_of(d / RESUME_FILE) in new for d in done)
    for d in pending:
        if begun:
            promote(d / RESUME_NEXT, d / RESUME_FILE)
        else:
            (d / RESUME_NEXT).unlink(missing_ok=True)
    return "committed" if begun else "discarded"


def drop_resume(run_dir: Path) -> None:
    """Remove a run's checkpoints (``resume.pt`` and a pending cohort ``resume.next.pt``): the
    run finished, or failed in a way a checkpoint would only repeat."""
    for name in (RESUME_FILE, RESUME_NEXT):
        (run_dir / name).unlink(missing_ok=True)


def restore_parts(ckpt: dict[str, Any], parts: dict[str, Stateful]) -> int:
    """Load each part from ``ckpt`` (as :func:`resume_state` wrote it, in ``parts``' order), then
    the random states; returns the step the checkpoint was taken after."""
    for name, part in parts.items():
        part.load_state_dict(ckpt.get(name))
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"])
