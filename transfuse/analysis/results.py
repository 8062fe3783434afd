"""Typed results of the representation analyses, as stored in the run store (JSON payloads).

Kinds (``Store.put_result(kind, key, payload, study=...)``):

- ``analysis`` — key: the study; :class:`AnalysisMeta` (options, the pairs analysed).
- ``analysis.grid`` — key ``"<run_a>:<run_b>"``; :class:`LayerGrid` (layer × layer similarity of two
  trained runs, with a shuffled-rows chance level on the diagonal).
- ``analysis.change`` — key: run id; :class:`StageChange` (each stage at init vs after training).
- ``analysis.weights`` — key: run id; :class:`WeightChange` (‖W_final − W_init‖ / ‖W_init‖ per stage).
- ``analysis.filters`` — key: run id; :class:`FilterSnapshot` (first-conv filters at init and after).

Missing values (a pair not comparable under the ``positions`` policy) are ``None``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

__all__ = ["RunInfo", "LayerGrid", "StageChange", "WeightChange", "FilterSnapshot", "AnalysisMeta",
           "KINDS", "from_payload", "to_payload", "clean"]

KINDS = {"meta": "analysis", "grid": "analysis.grid", "change": "analysis.change",
         "weights": "analysis.weights", "filters": "analysis.filters"}

T = TypeVar("T")


def from_payload(cls: type[T], payload: dict[str, Any]) -> T:
    """Rebuild a result dataclass from its stored JSON payload (unknown keys ignored)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    d = {k: v for k, v in payload.items() if k in names}
    if "run" in d and isinstance(d["run"], dict):
        d["run"] = RunInfo(**d["run"])
    for k in ("run_a", "run_b"):
        if k in d and isinstance(d[k], dict):
            d[k] = RunInfo(**d[k])
    return cls(**d)


def clean(v: float) -> float | None:
    """A float for JSON: rounded to 6 decimals; NaN/inf → ``None``."""
    v = float(v)
    return round(v, 6) if math.isfinite(v) else None


@dataclass(frozen=True)
class RunInfo:
    """Which run a result belongs to, in words."""

    run_id: str
    model: str
    init: str
    seed: int
    size: str

    @property
    def label(self) -> str:
        size = "" if self.size == "all" else f", n_train={self.size}"
        return f"{self.model} · {self.init} · seed {self.seed}{size}"


@dataclass(frozen=True)
class LayerGrid:
    """Layer × layer similarity of two trained runs.

    Attributes:
        run_a, run_b: rows and columns.
        role: ``baseline`` (random vs random, other seed), ``comparison`` or ``explicit``.
        baseline: key of the random-vs-random grid to read beside this one (or ``None``).
        stages_a, stages_b: stage names.
        measures: measure → ``[len(stages_a)][len(stages_b)]`` similarities.
        chance: measure → per stage of ``run_a`` with the same name in ``run_b``: the similarity
            with ``run_b``'s rows shuffled (what unrelated datapoints give).
        n_points: datapoints compared; dims_a/dims_b: SVD directions kept per stage.
    """

    run_a: RunInfo
    run_b: RunInfo
    role: str
    baseline: str | None
    stages_a: list[str]
    stages_b: list[str]
    measures: dict[str, list[list[float | None]]]
    chance: dict[str, list[float | None]]
    n_points: int
    dims_a: dict[str, int]
    dims_b: dict[str, int]

    @property
    def key(self) -> str:
        return f"{self.run_a.run_id}:{self.run_b.run_id}"

    def diagonal(self, measure: str) -> list[float | None]:
        """Same-stage similarity, per stage of ``run_a`` (``None`` where ``run_b`` lacks it)."""
        m = self.measures[measure]
        return [m[i][self.stages_b.index(s)] if s in self.stages_b else None
                for i, s in enumerate(self.stages_a)]


@dataclass(frozen=True)
class StageChange:
    """Similarity of each stage's representation at initialisation and after training."""

    run: RunInfo
    stages: list[str]
    measures: dict[str, list[float | None]]
    n_points: int
    checkpoint: str


@dataclass(frozen=True)
class WeightChange:
    """Relative weight change per stage, ‖W_final − W_init‖_F / ‖W_init‖_F over its kernels.

    Attributes:
        relative: per stage (``None``: the stage has no weights or they start at zero).
        init_norm: ‖W_init‖_F per stage.
        tensors: weight tensors counted per stage (conv/linear kernels; norms, biases excluded).
    """

    run: RunInfo
    stages: list[str]
    relative: list[float | None]
    init_norm: list[float | None]
    tensors: list[int]
    checkpoint: str


@dataclass(frozen=True)
class FilterSnapshot:
    """The first convolution's filters at initialisation and after training.

    Attributes:
        key: state-dict key of the weight; shape: its full shape.
        init, trained: the first ≤ 32 filters as nested lists (rounded to 5 decimals).
        pretrained: the init loaded these filters from pretrained weights.
        relative: ‖W_final − W_init‖ / ‖W_init‖ of the whole first convolution.
    """

    run: RunInfo
    key: str
    shape: list[int]
    init: list[Any]
    trained: list[Any]
    pretrained: bool
    relative: float | None


@dataclass(frozen=True)
class AnalysisMeta:
    """What ``transfuse analyze`` ran: options and the pairs, in order.

    Attributes:
        pairs: ``[run_a, run_b, role, baseline_key]`` per grid.
        runs: run ids analysed for stage change, weight change and filters.
    """

    study: str
    options: dict[str, Any]
    pairs: list[list[Any]]
    runs: list[str]
    seconds: float


def to_payload(obj: Any) -> dict[str, Any]:
    """The JSON payload of a result dataclass."""
    return asdict(obj)
