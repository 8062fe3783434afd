"""A study's stored runs as analysable rows, grouped into cells and compared with ``random``.

This is the "store → numbers" stage between running a study and reporting it: nothing here
trains or draws. Rows come from finished runs of one study; a *cell* is (model, init, data size);
seeds are its repeats. The primary score is the test AUC for classification and the test Dice
for segmentation.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..arms import arm_label, arm_labels
from ..errors import TransfuseError
from ..store import RunRecord, Store
from .convergence import Convergence, convergence
from .selection import LeftOut, missing_files, select_runs
from .stats import DeLong, PairedTest, Summary, delong, paired_test, summarize

__all__ = ["RunRow", "Cell", "Comparison", "StudyResults", "load_results", "cell_keys", "arm_label",
           "BASELINE"]

BASELINE = "random"


@dataclass(frozen=True)
class RunRow:
    """One finished run, flattened for analysis."""

    run_id: str
    model: str
    init: str
    size: str
    seed: int
    dataset: str
    task: str
    metric: str
    test: float | None
    curve_steps: tuple[int, ...]
    curve: tuple[float | None, ...]
    conv: Convergence
    run_dir: str | None

    @property
    def cell(self) -> tuple[str, str, str]:
        return (self.model, self.init, self.size)


@dataclass(frozen=True)
class Cell:
    """All seeds of one (model, init, size): final-score summary and convergence summaries."""

    model: str
    init: str
    size: str
    runs: tuple[RunRow, ...]
    final: Summary | None
    area: Summary | None
    steps_abs: dict[float, Summary | None]
    reached_abs: dict[float, int]  # runs that reached each absolute threshold


@dataclass(frozen=True)
class Comparison:
    """An init vs the reference arm (default ``random``) on the same model and size, by seed.

    Attributes:
        final: paired test of the test scores (``init - random``).
        area: paired test of the areas under the validation curves.
        speedup: ``{threshold: Summary of log(steps_random / steps_init)}`` over seeds where both
            reached it (``exp`` of mean and CI bounds is the geometric-mean speed-up).
        delong: DeLong's test on the shared test set, one per seed (seed → result).
    """

    model: str
    init: str
    size: str
    seeds: tuple[int, ...]
    final: PairedTest | None
    area: PairedTest | None
    speedup: dict[float, Summary | None]
    delong: dict[int, DeLong | None] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyResults:
    """Everything the report needs about one study."""

    study: str
    metric: str
    task: str
    rows: tuple[RunRow, ...]
    cells: tuple[Cell, ...]
    comparisons: tuple[Comparison, ...]
    thresholds: tuple[float, ...]
    relative: tuple[float, ...]
    unfinished: dict[str, int]
    reference: str = BASELINE
    #: finished runs stored under the study's name but not in its current cells (not counted)
    left_out: tuple[LeftOut, ...] = ()
    #: finished runs (counted) whose folder lacks files: ``{run_id: file names}``
    missing: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def cell(self, model: str, init: str, size: str) -> Cell | None:
        return next((c for c in self.cells if (c.model, c.init, c.size) == (model, init, size)), None)

    def comparison(self, model: str, init: str, size: str) -> Comparison | None:
        """The arm's comparison with the reference (its DeLong tests), if there is one."""
        return next((c for c in self.comparisons if (c.model, c.init, c.size) == (model, init, size)),
                    None)

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.rows))

    @property
    def inits(self) -> list[str]:
        names = list(dict.fromkeys(r.init for r in self.rows))
        return sorted(names, key=lambda n: (n != self.reference, names.index(n)))

    @property
    def sizes(self) -> list[str]:
        return sorted(dict.fromkeys(r.size for r in self.rows), key=_size_key)


def _size_key(s: str) -> tuple[int, float]:
    if s == "full":
        return (1, math.inf)
    try:
        return (0, float(s.split("=")[-1]))
    except ValueError:
        return (0, math.inf)


def _size(spec: dict[str, Any]) -> str:
    d = spec["data"]
    if d.get("n_train") is not None:
        return str(d["n_train"])
    if d.get("fraction") is not None:
        return f"fraction={d['fraction']}"
    return "full"


def cell_keys(specs: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``(model, arm, size)`` of each run spec (as a dict), labelled as the report labels cells.

    The arm is :func:`arm_label`: the init name (with its source in brackets where one model
    runs the same init from several sources), then the fine-tuning strategy, layer decay, head
    learning-rate multiplier, frozen BatchNorm and augmentation where they are not the default.
    """
    return [(sp["model"]["name"], arm, _size(sp)) for sp, arm in zip(specs, arm_labels(specs))]


def _row(store: Store, r: RunRecord, label: str, thresholds: tuple[float, ...],
         relative: tuple[float, ...]) -> RunRow:
    task = r.data_info.get("task", "multiclass")
    metric = "dice" if task == "segmentation" else "auc"
    curve: dict[int, float | None] = {}
    test = None
    for step, split, name, value in store.metrics(r.run_id):
        if name != metric:
            continue
        if split == "val":
            curve[step] = value
        elif split == "test":
            test = value
    steps = tuple(sorted(curve))
    vals = tuple(curve[s] for s in steps)
    return RunRow(r.run_id, r.spec["model"]["name"], label, _size(r.spec), int(r.spec["seed"]),
                  r.spec["data"]["name"], task, metric, test, steps, vals,
                  convergence(steps, vals, absolute=thresholds, relative=relative), r.run_dir)


def _cell(rows: list[RunRow], thresholds: tuple[float, ...]) -> Cell:
    r0 = rows[0]
    return Cell(r0.model, r0.init, r0.size, tuple(sorted(rows, key=lambda r: r.seed)),
                summarize([r.test for r in rows]), summarize([r.conv.area for r in rows]),
                {t: summarize([r.conv.absolute[t] for r in rows if r.conv.absolute[t] is not None])
                 for t in thresholds},
                {t: sum(r.conv.absolute[t] is not None for r in rows) for t in thresholds})


def _load_predictions(row: RunRow) -> dict[str, np.ndarray] | None:
    if not row.run_dir:
        return None
    p = Path(row.run_dir) / "test_predictions.npz"
    if not p.is_file():
        return None
    with np.load(p, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _delong(a: RunRow, b: RunRow) -> DeLong | None:
    if a.task == "segmentation":
        return None
    pa, pb = _load_predictions(a), _load_predictions(b)
    if pa is None or pb is None or pa["probs"].shape != pb["probs"].shape:
        return None
    mask = pa.get("masks") if a.task == "multilabel" else None
    return delong(pa["probs"], pb["probs"], pa["targets"], task=a.task, mask=mask)


def _compare(cell: Cell, base: Cell, thresholds: tuple[float, ...]) -> Comparison:
    by_seed = {r.seed: r for r in cell.runs}
    base_seed = {r.seed: r for r in base.runs}
    seeds = tuple(sorted(set(by_seed) & set(base_seed)))
    a = [by_seed[s] for s in seeds]
    b = [base_seed[s] for s in seeds]
    speed: dict[float, Summary | None] = {}
    for t in thresholds:
        logs = [math.log(y.conv.absolute[t] / x.conv.absolute[t]) for x, y in zip(a, b)
                if x.conv.absolute[t] and y.conv.absolute[t]]
        speed[t] = summarize(logs)
    return Comparison(cell.model, cell.init, cell.size, seeds,
                      paired_test([x.test for x in a], [y.test for y in b]),
                      paired_test([x.conv.area for x in a], [y.conv.area for y in b]),
                      speed, {s: _delong(x, y) for s, x, y in zip(seeds, a, b)})


def load_results(store: Store, study: str, *, thresholds: tuple[float, ...] = (0.8, 0.9),
                 relative: tuple[float, ...] = (0.9, 0.95), reference: str = BASELINE,
                 run_ids: Collection[str] | None = None,
                 current_specs: Mapping[str, Mapping[str, Any]] | None = None,
                 adaptive: bool | None = None) -> StudyResults:
    """Rows, cells and comparisons (each arm vs ``reference``) of the finished runs of ``study``'s
    current cells (:mod:`transfuse.decide.selection`).

    Args:
        run_ids: the current cells' run ids; default: those the study's last ``study run``
            recorded (a study file given explicitly passes its own, with ``current_specs``).
        adaptive: keep extra seeds of current cells; default: whether the study recorded a
            sequential (``--until-decided``) plan.

    Raises:
        TransfuseError: the study has no runs in this store (the message lists the studies).
    """
    records = store.list_runs(study=study)
    if not records:
        studies = sorted({r.study for r in store.list_runs() if r.study})
        raise TransfuseError(f"no runs of study {study!r} in {store.path}; studies here: "
                             f"{', '.join(studies) or 'none'} (run `transfuse study run FILE` first)")
    # Derived runs (self-training students) have their own report section, not study cells.
    records = [r for r in records if not r.spec.get("parent")]
    info = store.get_results("study", study=study).get(study, {})
    if run_ids is None:
        run_ids = info.get("run_ids")
    if adaptive is None:
        adaptive = bool(info.get("sequential"))
    records, left_out = select_runs(records, current=run_ids, current_specs=current_specs,
                                    adaptive=adaptive)
    finished = [r for r in records if r.status == "finished"]
    unfinished: dict[str, int] = defaultdict(int)
    for r in records:
        if r.status != "finished":
            unfinished[r.status] += 1
    keys = cell_keys([r.spec for r in finished])
    rows = [_row(store, r, k[1], thresholds, relative) for r, k in zip(finished, keys)]
    groups: dict[tuple[str, str, str], list[RunRow]] = defaultdict(list)
    for row in rows:
        groups[row.cell].append(row)
    cells = [_cell(g, thresholds) for g in groups.values()]
    index = {(c.model, c.init, c.size): c for c in cells}
    comps = [_compare(c, index[(c.model, reference, c.size)], thresholds) for c in cells
             if c.init != reference and (c.model, reference, c.size) in index]
    task = rows[0].task if rows else "multiclass"
    return StudyResults(study, rows[0].metric if rows else "auc", task, tuple(rows), tuple(cells),
                        tuple(comps), thresholds, relative, dict(unfinished), reference,
                        tuple(left_out), missing_files(store, finished))
