"""Study files: a base run plus grid axes, from one YAML file (safe-loaded, validated).

.. code-block:: yaml

    name: quickstart
    base:                          # a run spec (see transfuse.config.RunSpec)
      data: {name: builtin:brain_tissue}
      model: {name: cbr_small}
      train: {steps: 300, lr: 0.02, eval_every: 25}
    grid:                          # dotted keys → values; the study is their cartesian product
      model.name: [cbr_tiny, cbr_small]
      init: [random, {name: meanvar, source: imagenet:efficientnet_lite0}]
      data.n_train: [200, 1000]
      seed: [0, 1, 2]
      arch:                        # a named axis of mappings sets several keys together
        - {model.name: cbr_small, init.source: "pretrain:cbr"}
        - {model.name: "timm:efficientnet_lite0", init.source: "imagenet:efficientnet_lite0"}
    exclude:                       # drop cells matching every key of one entry
      - {model.name: "timm:efficientnet_lite0", init.name: slim}
    pretrain:                      # our own pretraining: runs done first, used as "pretrain:<name>"
      cbr: {data: {name: "medmnist:pneumoniamnist@28"}, model: {name: cbr_small}}
      m3d: {med3d: med3d_pretrain.yaml}  # a Med3D multi-dataset pretraining (transfuse pretrain med3d)
      own: {ssl: ssl_pretrain.yaml}      # self-supervised on unlabelled images (transfuse pretrain ssl)
    evaluation:
      auc_thresholds: [0.8, 0.9]   # steps to reach each AUC (absolute); dice_thresholds for
                                   # segmentation studies (the same setting, on Dice)
      relative_thresholds: [0.9, 0.95]  # … and each fraction of the run's final AUC
    smoke:                         # dotted overrides for --smoke (defaults shown in SMOKE)
      train.steps: 4
    max_cells: 10000               # refuse a larger grid (counted before any cell is built)

An init that uses no pretrained weights (``random``, ``gabor``…) drops ``init.source``, so a
source axis does not repeat identical random runs. Pretraining runs are stored under the study
name ``<name>-pretrain``.

Every error names the file and the dotted key. ``--smoke`` shrinks any study to a sub-minute CPU
run: the first seed and the smallest training set only, a few steps on at most 64 examples,
under the study name ``<name>-smoke`` so the numbers never mix with real ones.
"""

from __future__ import annotations

import copy
import itertools
import re
from dataclasses import dataclass, field, fields
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import DataSpec, InitSpec, ModelSpec, RunSpec, TrainSpec, read_yaml_file, spec_from_dict
from ..errors import ConfigError, check_name, did_you_mean
from ..spec.init_names import parse_init_name, source_ref
from ..decide.evaluation import Evaluation
from ..spec import fields as spec_fields
from ..spec.fields import spec_field

__all__ = ["StudySpec", "load_study", "expand", "pretrain_specs", "med3d_pretrains", "ssl_pretrains",
           "external_sources", "EXTERNAL_PRETRAINS", "SMOKE"]

#: Most grid cells a study may have (the product of its axes' lengths, before ``exclude``), unless
#: its file raises ``max_cells``: counted before any cell is built, so a mistyped axis cannot make
#: ``study check`` or ``study status`` build a million specs.
MAX_CELLS = 10_000
EVAL_KEYS = ("auc_thresholds", "relative_thresholds")
#: the decision settings of ``evaluation`` (the fields of Evaluation)
DECISION_KEYS = tuple(f.name for f in fields(Evaluation))
SECTIONS = {"data": DataSpec, "model": ModelSpec, "init": InitSpec, "train": TrainSpec}
RUN_KEYS = ("seed",)
#: top-level keys whose empty value (``grid:``) is their default
_OPTIONAL_SECTIONS = ("grid", "exclude", "pretrain", "evaluation", "smoke")
SMOKE: dict[str, Any] = {"train.steps": 4, "train.eval_every": 2, "train.batch_size": 16,
                         "train.warmup_steps": 0, "data.n_train": 64}


@dataclass(frozen=True)
class StudySpec:
    """A parsed study file.

    The fields a file sets are its top-level keys (the thresholds are read from
    ``evaluation``, ``path`` is where it was read from): :func:`load_study` checks the top level
    against them with :func:`transfuse.spec.fields.validate`.

    ``base`` stays a nested dict, not a :class:`~transfuse.config.RunSpec`: a study's base is
    legitimately partial, because its grid completes it. An axis may supply a required key
    (``model.name: [cbr_tiny, cbr_small]`` with no ``model`` in the base), and cross-field rules
    (``data.n_train`` or ``data.fraction``, ``train.ema`` or ``train.swa``) hold for a whole cell,
    not for the base alone. Its keys and values are checked through the RunSpec field table
    when the file is read (unknown keys named ``base.train.eval_evry``, types, choices, bounds);
    every cell is then built into a RunSpec by :func:`expand`.

    Attributes:
        name: study name (runs are stored under it).
        base: nested run dict every grid cell starts from (a partial run spec, see above).
        grid: dotted key → list of values (cartesian product, in file order).
        auc_thresholds: absolute AUC thresholds for steps-to-threshold.
        relative_thresholds: fractions of each run's final AUC for steps-to-threshold.
        smoke: dotted overrides applied by ``--smoke``.
        path: the file it was read from.
        evaluation: how verdicts are reached (margins, reference arm, multiplicity; see
            :class:`transfuse.decide.decisions.Evaluation`).
    """

    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]] = field(default_factory=dict)
    auc_thresholds: tuple[float, ...] = spec_field((0.8, 0.9), file_key=False)
    relative_thresholds: tuple[float, ...] = spec_field((0.9, 0.95), file_key=False)
    smoke: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    path: str = spec_field("", file_key=False)
    exclude: tuple[dict[str, Any], ...] = ()
    pretrain: dict[str, dict[str, Any]] = field(default_factory=dict)
    # its file form (dice_thresholds, the thresholds) is read by load_study
    evaluation: Evaluation = spec_field(default_factory=Evaluation, nested=False)
    max_cells: int = spec_field(MAX_CELLS, ge=1)


@dataclass(frozen=True)
class EvaluationSection(Evaluation):
    """The keys of a study file's ``evaluation`` section (checked by
    :func:`transfuse.spec.fields.validate` before :func:`load_study` reads them): the decision
    settings of :class:`~transfuse.decide.evaluation.Evaluation` (inherited; it checks their values)
    and the steps-to-threshold lists (``dice_thresholds`` is ``auc_thresholds`` of a segmentation
    study; they land on :class:`StudySpec`)."""

    auc_thresholds: tuple[float, ...] | None = None
    relative_thresholds: tuple[float, ...] | None = None
    dice_thresholds: tuple[float, ...] | None = None


def check_grid_size(grid: dict[str, Any], *, limit: int, where: str) -> int:
    """The number of cells of ``grid`` (the product of its axes' lengths), counted without
    building any.

    Raises:
        ConfigError: more than ``limit`` cells; names the axes and the ``max_cells`` key.
    """
    n = 1
    for v in grid.values():
        n *= max(1, len(v)) if isinstance(v, list) else 1
    if n > limit:
        sizes = " × ".join(f"{k} {len(v)}" for k, v in grid.items() if isinstance(v, list))
        raise ConfigError(f"{where}: the grid has {n} cells ({sizes}), more than max_cells={limit}; "
                          "shorten an axis, or set a larger max_cells at the top of the study file")
    return n


def check_axis_path(dotted: str, where: str) -> None:
    parts = dotted.split(".")
    if parts[0] in RUN_KEYS and len(parts) == 1:
        return
    if parts[0] == "init" and len(parts) == 1:
        return  # whole init: "meanvar" or {name, source, partial}
    if parts[0] not in SECTIONS or len(parts) != 2:
        every = [*RUN_KEYS, "init"] + [f"{s}.{f.name}" for s, c in SECTIONS.items() for f in fields(c)]
        raise ConfigError(f"{where}: unknown key {dotted!r}{did_you_mean(dotted, every)} (use seed, "
                          f"init, or section.field with a section of {', '.join(SECTIONS)}, e.g. "
                          "train.lr)")
    names = [f.name for f in fields(SECTIONS[parts[0]])]
    if parts[1] not in names:
        hint = did_you_mean(parts[1], names, prefix=parts[0] + ".")
        raise ConfigError(f"{where}: unknown key {dotted!r}{hint} (valid {parts[0]} keys: "
                          f"{', '.join(names)})")


def _set(d: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if parts == ["init"]:
        d["init"] = {"name": value} if isinstance(value, str) else dict(value)
        return
    cur = d
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value


def load_study(path: str | Path, *, validate: bool = True) -> StudySpec:
    """Read and validate a study YAML file (``yaml.safe_load``).

    ``validate=False`` skips building every cell (the first bad cell would raise);
    :func:`transfuse.study.check.check_study` then reports every cell's problems at once.

    Raises:
        ConfigError: unreadable file or a bad key/value; the message names the file and key.
    """
    path = Path(path)
    raw = read_yaml_file(path, what="study")
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if not (v is None and k in _OPTIONAL_SECTIONS)}
        description = raw.get("description", "")
        if not isinstance(description, str):
            raise ConfigError(f"{path}: description must be a string (text about the study), not "
                              f"a {type(description).__name__}")
    try:  # keys, types and bounds of the top level: StudySpec's field table
        raw = spec_fields.validate(StudySpec, raw, where="", partial=True, required=True)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    name = raw["name"]
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{path}: name must be a non-empty string")
    try:  # the name becomes file names (report-<name>.html): no folders, no "..", no spaces
        check_name(name.strip(), field="name")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    base = raw["base"]
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: base must be a mapping (a run spec)")
    try:  # once, named where it is written: not once per grid cell as "run.<key>"
        spec_fields.validate(RunSpec, base, where="base", partial=True)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    description = raw.get("description", "")
    max_cells = raw.get("max_cells", MAX_CELLS)
    grid = raw.get("grid") or {}
    check_grid_size(grid, limit=max_cells, where=str(path))
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{path}: grid.{k} must be a non-empty list")
        if is_linked(str(k), v):
            for item in v:
                for kk in item:
                    check_axis_path(str(kk), f"{path}: grid.{k}")
        else:
            check_axis_path(str(k), f"{path}: grid")
    check_axes_disjoint(grid, str(path))
    exclude = raw.get("exclude") or []
    if not isinstance(exclude, (list, tuple)) or not all(isinstance(e, dict) and e for e in exclude):
        raise ConfigError(f"{path}: exclude must be a list of mappings of dotted keys to values")
    for e in exclude:
        for kk in e:
            check_axis_path(str(kk), f"{path}: exclude")
    pretrain = raw.get("pretrain") or {}
    if not isinstance(pretrain, dict) or not all(isinstance(v, dict) for v in pretrain.values()):
        raise ConfigError(f"{path}: pretrain must map names to run specs (data, model, init, train)")
    for pname, pspec in pretrain.items():
        try:  # a Med3D entry's name is a folder; every entry's name goes into source names
            check_name(str(pname), field=f"pretrain.{pname}")
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        kind = next((k for k in EXTERNAL_PRETRAINS if k in pspec), None)
        if kind is not None:  # a pretraining file (Med3D, self-supervised), not a run spec
            what = EXTERNAL_PRETRAINS[kind]
            if set(pspec) != {kind} or not isinstance(pspec[kind], str):
                raise ConfigError(f"{path}: pretrain.{pname}: a {what} entry is only "
                                  f"{{{kind}: path/to/file.yaml}} (relative to this file)")
            file = (Path(path).parent / pspec[kind]).resolve()
            if not file.is_file():
                raise ConfigError(f"{path}: pretrain.{pname}.{kind}: {file} not found")
            _load_external(kind, file)  # validated now, errors name that file
            pspec[kind] = str(file)
            continue
        try:
            spec_from_dict({**copy.deepcopy(pspec), "study": "x"})
        except ConfigError as e:
            raise ConfigError(f"{path}: pretrain.{pname}: {e}") from None
    try:  # keys (with did-you-mean) and types of the section: EvaluationSection's field table
        ev = spec_fields.validate(EvaluationSection, raw.get("evaluation") or {}, where="evaluation",
                                  partial=True)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    if "dice_thresholds" in ev:  # segmentation studies: the same absolute thresholds, on Dice
        if "auc_thresholds" in ev:
            raise ConfigError(f"{path}: evaluation.dice_thresholds and evaluation.auc_thresholds "
                              "are the same setting (the study's metric); give one")
        ev["auc_thresholds"] = ev.pop("dice_thresholds")
    decision = Evaluation.from_dict({k: ev[k] for k in DECISION_KEYS if k in ev})
    decision.check(where=str(path))
    thr = {}
    for k in EVAL_KEYS:
        vals = ev.get(k)
        if vals is None:
            vals = StudySpec.__dataclass_fields__[k].default
        try:
            vals = tuple(float(x) for x in vals)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: evaluation.{k} must be a list of numbers") from None
        if any(not 0 < x <= 1 for x in vals):
            raise ConfigError(f"{path}: evaluation.{k} values must be in (0, 1]")
        thr[k] = vals
    smoke = raw.get("smoke") or {}
    for k in smoke:
        check_axis_path(str(k), f"{path}: smoke")
    study = StudySpec(name=name.strip(), base=base, grid={str(k): list(v) for k, v in grid.items()},
                      smoke=dict(smoke), description=description, max_cells=max_cells,
                      path=str(path), exclude=tuple(dict(e) for e in exclude),
                      pretrain={str(k): dict(v) for k, v in pretrain.items()}, evaluation=decision,
                      **thr)
    if validate:
        expand(study)  # validate every cell now, with the file named in errors
    return study


def _axis_fields(key: str, values: list[Any]) -> set[str]:
    """The dotted fields a grid axis sets: its key, or every key of a named axis's mappings."""
    if is_linked(key, values):
        return {str(kk) for item in values for kk in item}
    return {key}


def _overlap(a: str, b: str) -> bool:
    """Do two dotted fields set the same value? (``init`` sets all of ``init.*``.)"""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def check_axes_disjoint(grid: dict[str, Any], path: str) -> None:
    """Two axes may not set the same field: the later one would silently win and the product
    would collapse into fewer runs than it has cells.

    Raises:
        ConfigError: naming both axes and the field.
    """
    axes = [(str(k), _axis_fields(str(k), v)) for k, v in grid.items()]
    for i, (ka, fa) in enumerate(axes):
        for kb, fb in axes[i + 1:]:
            both = sorted(x for x in fa for y in fb if _overlap(x, y))
            if both:
                raise ConfigError(f"{path}: grid.{ka} and grid.{kb} both set {both[0]}; give each "
                                  "field in one axis only (one list of values, or inside the "
                                  "named axis)")


def is_linked(key: str, values: list[Any]) -> bool:
    """A linked axis: a name that is no run key, whose values are mappings of dotted keys."""
    head = key.split(".")[0]
    return head not in SECTIONS and head not in RUN_KEYS and all(isinstance(v, dict) for v in values)


def _get(d: dict[str, Any], dotted: str) -> Any:
    cur: Any = d
    for p in dotted.split("."):
        if not isinstance(cur, dict) or p not in cur:
            return None
        cur = cur[p]
    return cur


def _excluded(d: dict[str, Any], exclude: tuple[dict[str, Any], ...]) -> bool:
    for e in exclude:
        if all((_get(d, k)["name"] if k == "init" and isinstance(_get(d, k), dict) else _get(d, k)) == v
               for k, v in e.items()):
            return True
    return False


# pretrain entries that name a pretraining file (run by its own command), not a run spec
EXTERNAL_PRETRAINS = {"med3d": "Med3D", "ssl": "self-supervised"}


def _load_external(kind: str, file: str | Path) -> Any:
    from ..spec.kinds import load_file

    return load_file(kind, file)  # the file kinds med3d, ssl


def _is_external(pspec: dict[str, Any]) -> bool:
    return any(k in pspec for k in EXTERNAL_PRETRAINS)


def ssl_pretrains(study: StudySpec, *, smoke: bool = False) -> dict[str, Any]:
    """The study's self-supervised pretrainings by entry name: ``{name: SSLSpec}`` (shrunk if
    smoke). Their encoders are the sources ``ssl:<file's name>`` (``<workspace>/pretrain/<name>/``)."""
    out = {}
    for pname, pspec in study.pretrain.items():
        if "ssl" in pspec:
            spec = _load_external("ssl", pspec["ssl"])
            out[pname] = spec.shrink() if smoke else spec
    return out


def external_sources(study: StudySpec, *, smoke: bool = False) -> dict[str, str]:
    """``{entry name: source}`` of the study's Med3D and self-supervised pretrainings."""
    out = {k: f"med3d:{v.name}" for k, v in med3d_pretrains(study, smoke=smoke).items()}
    out.update({k: f"ssl:{v.name}" for k, v in ssl_pretrains(study, smoke=smoke).items()})
    return out


def med3d_pretrains(study: StudySpec, *, smoke: bool = False) -> dict[str, Any]:
    """The study's Med3D pretrainings by entry name: ``{name: PretrainSpec}`` (shrunk if smoke).

    Their encoders are the sources ``med3d:<file's name>`` (``<workspace>/pretrain/<name>/``)."""
    from ..pretrain import load_pretrain

    out = {}
    for pname, pspec in study.pretrain.items():
        if "med3d" in pspec:
            spec = load_pretrain(pspec["med3d"])
            out[pname] = spec.shrink() if smoke else spec
    return out


def pretrain_specs(study: StudySpec, *, smoke: bool = False) -> dict[str, RunSpec]:
    """The study's pretraining runs by name (stored under ``<name>-pretrain``); Med3D
    pretrainings are not runs (see :func:`med3d_pretrains`)."""
    out = {}
    for pname, pspec in study.pretrain.items():
        if _is_external(pspec):
            continue
        d = copy.deepcopy(pspec)
        if smoke:
            for k, v in {**SMOKE, **study.smoke}.items():
                _smoke_set(d, k, v)
        d["study"] = f"{study.name}-smoke-pretrain" if smoke else f"{study.name}-pretrain"
        try:
            out[pname] = spec_from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{study.path or study.name}: pretrain.{pname}: {e}") from None
    return out


def _resolve_source(d: dict[str, Any], pre: dict[str, str], where: str) -> None:
    from ..catalog import init_needs_source

    init = d.get("init") or {}
    src = init.get("source")
    if isinstance(src, str) and src.startswith("pretrain:"):
        name = source_ref(src).arg
        if name not in pre:
            raise ConfigError(f"{where}: init.source {src!r} names no entry of pretrain "
                              f"(have: {', '.join(pre) or 'none'})")
        init["source"] = pre[name]
    elif isinstance(src, str) and src.startswith("run:") and not re.fullmatch(r"run:[0-9a-f]{12}", src):
        # a prefix would make the cell's run id depend on what else the store holds
        raise ConfigError(f"{where}: init.source {src!r}: a study names a source run by its full "
                          "id, run:<12 hex digits> (see `transfuse runs list`)")
    try:
        parts = [p.name for p in parse_init_name(str(init.get("name", "random")))]
        needs = any(init_needs_source(n) for n in parts)
    except ConfigError:
        return  # an unknown init: spec validation reports it
    if not needs and src is not None:
        init["source"] = None  # random/gabor runs do not depend on the source axis


def grid_cells(study: StudySpec, *, smoke: bool = False
               ) -> Iterator[tuple[tuple[tuple[str, list[Any], int], ...], dict[str, Any]]]:
    """Each grid cell before validation, in grid order (later axes vary fastest).

    Yields ``(used, d)``: per axis ``(key, values, index)`` of the value this cell takes, and the
    cell's spec dict (excluded cells removed, smoke settings applied, the study named; sources
    not yet resolved). :func:`expand` and ``study check`` build their cells from it.
    """
    check_grid_size(study.grid, limit=study.max_cells, where=study.path or study.name)
    axes = list(study.grid.items())
    indexed = []
    for k, vals in axes:
        pairs = list(enumerate(vals))
        if smoke:
            keep = _smoke_axis(k, vals)
            pairs = [(i, v) for i, v in pairs if v in keep][:len(keep)]
        indexed.append(pairs)
    over = {**SMOKE, **study.smoke} if smoke else {}
    for combo in itertools.product(*indexed) if axes else [()]:
        d = copy.deepcopy(study.base)
        for (k, vals), (_, v) in zip(axes, combo):
            if is_linked(k, vals):
                for kk, vv in v.items():
                    _set(d, kk, vv)
            else:
                _set(d, k, v)
        if _excluded(d, study.exclude):
            continue
        for k, v in over.items():
            _smoke_set(d, k, v)
        d["study"] = f"{study.name}-smoke" if smoke else study.name
        yield tuple((k, vals, i) for (k, vals), (i, _) in zip(axes, combo)), d


def expand(study: StudySpec, *, smoke: bool = False) -> list[RunSpec]:
    """The study's runs, in grid order (later axes vary fastest); duplicates and excluded cells removed.

    Args:
        study: the parsed study.
        smoke: shrink for a quick check (see module docstring).

    Raises:
        ConfigError: a cell is not a valid run spec (names the file, cell and key).
    """
    from ..config import run_id

    pre = {k: f"run:{run_id(v)}" for k, v in pretrain_specs(study, smoke=smoke).items()}
    pre.update(external_sources(study, smoke=smoke))
    out, seen = [], set()
    for used, d in grid_cells(study, smoke=smoke):
        where = f"{study.path or study.name}: grid cell [" + (", ".join(
            f"{k}={vals[i]}" for k, vals, i in used) or "base") + "]"
        _resolve_source(d, pre, where)
        try:
            spec = spec_from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        key = spec.to_json()
        if key not in seen:
            seen.add(key)
            out.append(spec)
    if not out:
        raise ConfigError(f"{study.path or study.name}: exclude removes every cell of the grid")
    return out


def _smoke_axis(key: str, values: list[Any]) -> list[Any]:
    if key == "seed":
        return values[:1]
    if key in ("data.n_train", "data.fraction"):
        return [min(values, key=lambda v: float("inf") if v is None else v)]
    return values


def _smoke_set(d: dict[str, Any], dotted: str, value: Any) -> None:
    sect, _, fld = dotted.partition(".")
    cur = d.setdefault(sect, {}) if fld else d
    if not fld:
        d[sect] = value
        return
    if fld == "steps" and cur.get("epochs") is not None:
        cur["epochs"] = None
    if fld == "n_train" and value is not None:
        have = cur.get("n_train")
        if cur.get("fraction") is not None:
            return  # a fraction axis stays; n_train and fraction are exclusive
        cur[fld] = min(value, have) if have else value
        return
    if fld in ("steps", "batch_size", "eval_every") and cur.get(fld):
        cur[fld] = min(value, cur[fld])
        return
    cur[fld] = value
