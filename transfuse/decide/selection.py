"""Which stored runs belong to a study's statistics: the runs of its *current* cells, nothing else.

A study's name is not enough to find its runs: a study file that is edited and run again
(``train.steps`` 4 → 5, ``grid.seed`` [0, 1] → [0, 1, 2]) stores new runs under the same name,
and pooling them with the old ones gives numbers that belong to no version of the study. A run is
identified by its spec (the run id is a hash of it), so the current cells are the run ids the
study's last ``study run`` recorded — or those of a study file given explicitly
(``transfuse report --study-file``). Seeds that ``--until-decided`` added to a cell that is still in
the grid stay in. Every other finished run stored under the name is *left out*, and the report says
which and why (:class:`LeftOut`).

Finished runs whose folder lost files (``runs check`` lists them) still count in every statistic
read from the store, but the figures read from their files cannot show them:
:func:`missing_files` names the runs and :data:`FILE_USES` the figures.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from ..store import RUN_FILES, RunRecord, Store

__all__ = ["LeftOut", "select_runs", "missing_files", "FILE_USES", "cell_id", "spec_changes", "study_progress"]

#: What the study report draws from each file of a finished run's folder.
FILE_USES: dict[str, str] = {
    "test_predictions.npz": "per-seed DeLong tests (the verdict table's DeLong column)",
    "init.pt": "first-layer filters and representation analysis",
    "best.pt": "first-layer filters, representation analysis, `run:` sources and predict",
    "last.pt": "resuming and predict (no figure of the report)",
}


@dataclass(frozen=True)
class LeftOut:
    """A finished run stored under the study's name but not in its current cells."""

    run_id: str
    seed: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "seed": self.seed, "reason": self.reason}


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def cell_id(spec: Mapping[str, Any]) -> str | None:
    """The run id the spec would have at seed 0: equal for every seed of one cell.

    ``None`` for a spec this version cannot read (it then matches no cell).
    """
    from ..config import run_id, spec_from_dict

    try:
        return run_id(spec_from_dict({**spec, "seed": 0}))
    except Exception:  # noqa: BLE001 - an old or foreign spec simply matches nothing
        return None


def spec_changes(old: Mapping[str, Any], new: Mapping[str, Any], *, limit: int = 3) -> list[str]:
    """``["train.steps 4 → 5", ...]``: the keys whose values differ, at most ``limit``."""
    a, b = _flat(old), _flat(new)
    keys = [k for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k) and k not in ("seed", "data.data_root")]
    out = [f"{k} {a.get(k, '–')} → {b.get(k, '–')}" for k in keys[:limit]]
    if len(keys) > limit:
        out.append(f"{len(keys) - limit} more")
    return out


def _reason(rec: RunRecord, current: list[Mapping[str, Any]], cells: set[str | None]) -> str:
    if cell_id(rec.spec) in cells:
        return f"seed {rec.spec.get('seed')} is not in the study's current grid.seed"
    same_seed = [c for c in current if c.get("seed") == rec.spec.get("seed")] or current
    if same_seed:  # the nearest current spec: the fewest differing keys
        changes = min((spec_changes(rec.spec, c) for c in same_seed), key=len)
        if changes:
            return "another version of the study file: " + ", ".join(changes)
    return "not a cell of this version of the study"


def select_runs(records: list[RunRecord], *, current: Collection[str] | None,
                current_specs: Mapping[str, Mapping[str, Any]] | None = None,
                adaptive: bool = False) -> tuple[list[RunRecord], list[LeftOut]]:
    """Split a study's stored runs into those of its current cells and the finished ones left out.

    Args:
        records: every run stored under the study's name (self-training students excluded).
        current: run ids of the study's current cells (``None``: an old store that recorded none;
            every run is kept, as before).
        current_specs: specs by run id of current cells that are not stored yet (a study file
            given explicitly), so a left-out run's reason can name what changed.
        adaptive: the study adds seeds to undecided cells (``--until-decided``): runs of a current
            cell with another seed are kept.

    Returns:
        ``(kept, left_out)``: kept runs in store order (any status); finished runs left out.
    """
    if current is None:
        return list(records), []
    ids = set(current)
    by_id = {r.run_id: r for r in records}
    specs = [by_id[i].spec for i in ids if i in by_id] + list((current_specs or {}).values())
    all_cells = {cell_id(s) for s in specs} - {None}
    cells = all_cells if adaptive else set()
    kept, left = [], []
    for r in records:
        if r.run_id in ids or (cells and cell_id(r.spec) in cells):
            kept.append(r)
        elif r.status == "finished":
            left.append(LeftOut(r.run_id, int(r.spec.get("seed", -1)), _reason(r, specs, all_cells)))
    return kept, left


def missing_files(store: Store, records: list[RunRecord]) -> dict[str, tuple[str, ...]]:
    """``{run_id: files}`` for finished runs whose folder lacks any of :data:`~transfuse.store.RUN_FILES`."""
    out = {}
    for r in records:
        if r.status != "finished":
            continue
        folder = store.run_dir(r.run_id)
        lacking = tuple(f for f in RUN_FILES if not (folder / f).is_file())
        if lacking:
            out[r.run_id] = lacking
    return out


def study_progress(*, store: Store, study: str, run_ids: list[str] | None = None) -> dict[str, int]:
    """How complete a study is in this store: run counts by state.

    The grid's run ids are recorded by the last :func:`~transfuse.study.runner.run_study` of ``study`` (the ``study``
    result's ``run_ids``), so runs no process has started yet count as ``missing``; runs
    stored under the study's name but not in its current cells are not counted, as in the report
    (:func:`select_runs`).

    Returns:
        ``{"finished": n, "running": n, "stale": n, "failed": n, "missing": n}`` (every key
        present); ``running + stale + failed + missing > 0`` means the study is incomplete.
    """
    info = store.get_results("study", study=study).get(study, {})
    if run_ids is None:
        run_ids = info.get("run_ids")
    records = [r for r in store.list_runs(study=study) if not r.spec.get("parent")]
    kept, _ = select_runs(records, current=run_ids,
                          adaptive=bool(info.get("sequential")))  # the report's cells
    states = {r.run_id: r.state for r in kept}
    counts = dict.fromkeys(("finished", "running", "stale", "failed", "missing"), 0)
    for rid in dict.fromkeys([*(run_ids or []), *states]):
        counts[states.get(rid, "missing")] += 1
    return counts
