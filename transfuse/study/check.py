"""Check a study before training anything: every cell built, every source resolved, every size fits.

:func:`check_study` walks the cells exactly as :func:`~transfuse.study.spec.expand` does, but
keeps, for each field, the YAML key that set it (``base.data.image_size``,
``grid.arch[2].init.source``, ``pretrain.modality.train.steps``), and collects every problem
instead of stopping at the first:

- the cell is a valid run spec (types, ranges, unknown keys);
- its init strategy exists, gets a source when it reads one (``needs_source``), and its stage
  argument (``transfusion:block1``) names a stage of the model;
- its source resolves: ``pretrain:<entry>`` names an entry of the study (a source the study
  produces counts as resolvable), ``imagenet:``/``file:``/``run:``/``med3d:``/``ssl:`` sources exist, and
  an existing source fits the model (the init applied once, on CPU, per model × init × source);
- its data loads (metadata only where the family allows: MedMNIST reads the ``.npz`` header)
  and fits the model: spatial dims, task, minimum input size (e.g. 32 px for timm models),
  ``data.n_train``/``train.batch_size`` against the training set (:func:`transfuse.run.check_compatible`,
  :func:`transfuse.run.check_sizes`);
- the model builds on the data's channels and classes and runs a forward pass at the cell's
  input size, on the ``meta`` device (no memory, no arithmetic).

Data, models and sources are cached per distinct (data), (model, dims, channels, classes, size)
and source, so a 100-cell study checks in seconds. :func:`~transfuse.study.runner.run_study`
calls it first and refuses to train or store anything while a problem remains
(:class:`StudyCheckError`, one line per problem).
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import DataSpec, RunSpec, run_id, spec_from_dict
from ..data.meta import DatasetMeta, dataset_meta
from ..errors import ConfigError, TransfuseError
from ..spec.init_names import source_ref
from .spec import (EXTERNAL_PRETRAINS, SMOKE, StudySpec, is_linked, _overlap, _smoke_set,
                   external_sources, grid_cells)

__all__ = ["check_study", "CheckReport", "Problem", "StudyCheckError"]

# CLI flags that run-time messages suggest, and the study key each one is.
_FLAGS = {"--image-size": "data.image_size", "--patch-size": "data.patch_size",
          "--n-train": "data.n_train", "--batch-size": "train.batch_size",
          "--spatial-dims": "model.spatial_dims", "--source": "init.source", "--model": "model.name"}
# Which field a model/data mismatch is fixed in, by a phrase of its message.
_PHRASES = (("needs inputs of at least", "data.image_size"),
            ("needs patches of at least", "data.patch_size"),
            ("model.spatial_dims=", "model.spatial_dims"),
            (" only but dataset", "model.name"), (" model but dataset", "model.name"))
_FIELD = re.compile(r"\b(?:data|model|init|train)\.[a-z_]+\b|\bseed\b")


class StudyCheckError(ConfigError):
    """A study has cells that cannot run; the message is a summary line, then one indented line
    per problem (the one error whose message has several lines: each line is one problem).

    Attributes:
        report: the :class:`CheckReport`.
    """

    def __init__(self, report: CheckReport) -> None:
        lines = [" ".join(x.split()) for x in (report.summary(), *report.lines())]
        Exception.__init__(self, "\n  ".join(lines))  # not TransfuseError's: it joins lines
        self.report = report


@dataclass(frozen=True)
class Problem:
    """One problem, and the cells that have it.

    Attributes:
        key: the YAML key to change, e.g. ``grid.arch[2].init.source`` or ``base.data.image_size``.
        message: what is wrong (one line).
        cells: the cells, as ``model · init · n_train · seed`` (or ``pretrain.<name>``).
    """

    key: str
    message: str
    cells: tuple[str, ...]

    def line(self) -> str:
        if not self.cells:  # a problem of the whole study (evaluation.reference)
            return f"{self.key}: {self.message}"
        shown = "; ".join(self.cells[:3]) + (f"; +{len(self.cells) - 3} more" if len(self.cells) > 3 else "")
        n = len(self.cells)
        return f"{self.key}: {self.message} [{n} cell{'s' if n != 1 else ''}: {shown}]"


@dataclass(frozen=True)
class CheckReport:
    """What :func:`check_study` found.

    Attributes:
        study: the study name checked (``<name>-smoke`` for the smoke version).
        path: the study file.
        cells: distinct grid runs checked (as many as ``expand`` gives when there is no problem).
        pretrain: the study's own pretraining runs checked.
        problems: every problem, grouped by (key, message), in cell order.
        builds: distinct model builds (model, dims, channels, classes, init kwargs).
        datasets: distinct datasets read.
        sources: distinct sources resolved (not counting those the study produces).
        seconds: time the check took.
    """

    study: str
    path: str
    cells: int
    pretrain: int
    problems: tuple[Problem, ...]
    builds: int = 0
    datasets: int = 0
    sources: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def bad_cells(self) -> int:
        return len({c for p in self.problems for c in p.cells})

    def summary(self) -> str:
        """One line: clean, or how many problems in how many cells."""
        def n(k: int, word: str) -> str:
            return f"{k} {word}" + ("" if k == 1 else "s")

        what = n(self.cells, "cell") + (f" and {n(self.pretrain, 'pretraining run')}" if self.pretrain else "")
        if self.ok:
            return (f"study {self.study}: {what} check clean ({n(self.builds, 'model build')}, "
                    f"{n(self.datasets, 'dataset')}, {n(self.sources, 'source')}) in {self.seconds:.1f} s")
        where = f"{self.path}: " if self.path else ""
        n = len(self.problems)
        return (f"{where}study {self.study} cannot run: {n} problem{'s' if n != 1 else ''} in "
                f"{self.bad_cells()} of {self.cells + self.pretrain} cells; nothing was trained or stored")

    def lines(self) -> list[str]:
        return [p.line() for p in self.problems]

    def raise_if_invalid(self) -> None:
        """Raises:
            StudyCheckError: the summary, then one indented line per problem."""
        if not self.ok:
            raise StudyCheckError(self)


@dataclass
class _Cell:
    label: str
    d: dict[str, Any]
    origin: Callable[[str], str]


@dataclass
class _Probe:
    """Stands in for :class:`~transfuse.data.PreparedData` in ``check_compatible``/``check_sizes``."""

    info: Any
    train: range


# -- cells ---------------------------------------------------------------------------------------
def _label(d: dict[str, Any], tags: list[str]) -> str:
    """``arch[2] cbr_tiny · meanvar · n_train=250 · seed=0`` (named-axis entries first)."""
    data, init = d.get("data") or {}, d.get("init") or {}
    size = data.get("n_train") if data.get("n_train") is not None else (
        f"{data['fraction']:g} of train" if data.get("fraction") is not None else "all")
    init_name = init.get("name", "random") if isinstance(init, dict) else init
    return " ".join([*tags, f"{(d.get('model') or {}).get('name', '?')} · {init_name} · "
                            f"n_train={size} · seed={d.get('seed', 0)}"])


def _grid_origin(axes: list[tuple[str, list[Any]]], combo: tuple[tuple[int, Any], ...],
                 smoke_keys: set[str]) -> Callable[[str], str]:
    def origin(f: str) -> str:
        for (k, vals), (i, v) in zip(axes, combo):
            if is_linked(k, vals):
                for kk in v:
                    if _overlap(f, str(kk)):
                        return f"grid.{k}[{i}].{kk}"
            elif _overlap(f, k):
                if k == "init" and f != "init" and isinstance(v, dict):
                    return f"grid.init[{i}].{f.split('.', 1)[1]}"
                return f"grid.{k}[{i}]"
        return f"smoke.{f}" if f in smoke_keys else f"base.{f}"
    return origin


def _cells(study: StudySpec, *, smoke: bool) -> list[_Cell]:
    """Every grid cell (pretraining entries first), as ``expand`` builds them, unresolved."""
    over = {**SMOKE, **study.smoke} if smoke else {}
    out = []
    for pname, pspec in study.pretrain.items():
        if any(k in pspec for k in EXTERNAL_PRETRAINS):
            continue
        d = copy.deepcopy(pspec)
        for k, v in over.items():
            _smoke_set(d, k, v)
        d["study"] = f"{study.name}-smoke-pretrain" if smoke else f"{study.name}-pretrain"
        out.append(_Cell(f"pretrain.{pname}", d, lambda f, p=pname: f"smoke.{f}" if smoke and f in study.smoke
                         else f"pretrain.{p}.{f}"))
    smoke_keys = set(study.smoke) if smoke else set()
    for used, d in grid_cells(study, smoke=smoke):
        axes = [(k, vals) for k, vals, _ in used]
        combo = tuple((i, vals[i]) for _, vals, i in used)
        tags = [f"{k}[{i}]" for k, vals, i in used if is_linked(k, vals)]
        out.append(_Cell(_label(d, tags), d, _grid_origin(axes, combo, smoke_keys)))
    return out


# -- the checker -------------------------------------------------------------------------------
class _Checker:
    def __init__(self, study: StudySpec, workspace: str | Path | None, smoke: bool) -> None:
        self.study, self.workspace, self.smoke = study, workspace, smoke
        self.found: dict[tuple[str, str], list[str]] = {}
        self.data: dict[DataSpec, DatasetMeta | str] = {}
        self.models: dict[tuple[Any, ...], Any] = {}
        self.forwards: dict[tuple[Any, ...], str | None] = {}
        self.sources: dict[str, Any] = {}
        self.fits: dict[tuple[Any, ...], str | None] = {}
        self.cpu: dict[tuple[Any, ...], Any] = {}  # real models, one per build, for the fits
        self.produced: dict[str, str] = {}  # pretrain entry -> source it becomes

    def add(self, cell: _Cell, f: str, message: str) -> None:
        for flag, key in _FLAGS.items():
            message = message.replace(f"pass {flag}", f"set {key} to").replace(flag, key)
        cells = self.found.setdefault((cell.origin(f) if f else "base", message), [])
        if cell.label not in cells:
            cells.append(cell.label)

    # data: one read per distinct dataset (n_train/fraction/normalize do not change what it is)
    def meta(self, spec: DataSpec) -> DatasetMeta | str:
        key = replace(spec, n_train=None, fraction=None, normalize="data")
        if key not in self.data:
            try:
                self.data[key] = dataset_meta(key)
            except TransfuseError as e:
                self.data[key] = str(e)
            except Exception as e:  # noqa: BLE001  (a loader bug: reported, the check goes on)
                self.data[key] = f"{type(e).__name__}: {e}".splitlines()[0]
        return self.data[key]

    def source(self, name: str) -> Any:
        if name not in self.sources:
            from ..weights import resolve_source

            try:
                self.sources[name] = resolve_source(name, workspace=self.workspace)
            except TransfuseError as e:
                self.sources[name] = str(e)
            except Exception as e:  # noqa: BLE001  (e.g. a missing optional package)
                self.sources[name] = f"{type(e).__name__}: {e}".splitlines()[0]
        return self.sources[name]

    def model(self, name: str, dims: int, c: int, k: int, kwargs: dict[str, Any]) -> Any:
        key = (name, dims, c, k, repr(sorted(kwargs.items())))
        if key not in self.models:
            self.models[key] = _build(name, dims, c, k, kwargs)
        return self.models[key]

    def forward(self, key: tuple[Any, ...], model: Any, c: int, shape: tuple[int, ...], k: int,
                seg: bool) -> str | None:
        fkey = (*key, shape)
        if fkey not in self.forwards:
            self.forwards[fkey] = _forward(model, c, shape, k, seg)
        return self.forwards[fkey]

    def resolve(self, cell: _Cell) -> bool:
        """Resolve ``pretrain:`` sources and drop sources of inits that read none (as ``expand``)."""
        from ..inits import INITS, parse_init

        init = cell.d.get("init") or {}
        if not isinstance(init, dict):
            return True  # spec validation reports it
        src = init.get("source")
        if isinstance(src, str) and src.startswith("pretrain:"):
            name = source_ref(src).arg
            if name in self.produced:
                init["source"] = self.produced[name]
            else:
                self.add(cell, "init.source", f"init.source {src!r} names no entry of pretrain "
                         f"(have: {', '.join(self.study.pretrain) or 'none'})")
                init["source"] = None
                return False
        try:
            needs = any(INITS.get(n).meta["needs_source"] for n, _ in parse_init(str(init.get("name", "random"))))
        except ConfigError as e:
            self.add(cell, "init.name", str(e))
            return False
        if not needs and src is not None:
            init["source"] = None
        return True

    def check(self, cell: _Cell, spec: RunSpec) -> None:
        from ..inits import INITS, init_model_kwargs, parse_init
        from ..run import check_compatible, check_sizes

        parts = parse_init(spec.init.name)
        src = spec.init.source
        if any(INITS.get(n).meta["needs_source"] for n, _ in parts) and not src:
            self.add(cell, "init.source", f"init {spec.init.name!r} reads pretrained weights but the "
                     "cell has no init.source; set one (e.g. imagenet:efficientnet_lite0, "
                     "pretrain:<entry>, file:ckpt.pt)")
        source = None
        if src and src not in self.produced.values():
            source = self.source(src)
            if isinstance(source, str):
                self.add(cell, "init.source", source)
                source = None
        if spec.data.normalize == "source" and (not src or (source is not None and (
                source.mean is None or source.std is None))):
            self.add(cell, "data.normalize", "data.normalize=source needs a source that declares "
                     f"its mean/std (init.source: {src}); use data.normalize: data")
        meta = self.meta(spec.data)
        if isinstance(meta, str):
            self.add(cell, _field_of(meta, "data.name"), meta)
            return
        probe = _probe(spec.data, meta)
        size_ok = True
        try:
            dims = check_compatible(spec, probe)
        except TransfuseError as e:
            f = _field_of(str(e), "model.name")
            self.add(cell, f, str(e))
            if f not in ("data.image_size", "data.patch_size"):
                return  # wrong dims or task: there is no model to build for this data
            dims, size_ok = spec.model.spatial_dims or meta.spatial_dims, False
        try:
            check_sizes(spec, probe)
        except TransfuseError as e:
            self.add(cell, _field_of(str(e), "data.n_train"), str(e))
        try:
            kwargs = init_model_kwargs(spec.init.name)
        except TransfuseError as e:
            self.add(cell, "init.name", str(e))
            return
        c, k = probe.info.in_channels, probe.info.num_classes
        model = self.model(spec.model.name, dims, c, k, kwargs)
        if isinstance(model, str):
            plain = self.model(spec.model.name, dims, c, k, {}) if kwargs else model
            self.add(cell, "model.name" if isinstance(plain, str) else "init.name", model)
            return
        self._stages(cell, spec, parts, model)
        mkey = (spec.model.name, dims, c, k, repr(sorted(kwargs.items())))
        if source is not None and any(INITS.get(n).meta["needs_source"] for n, _ in parts):
            fkey = (*mkey, spec.init)  # does the source fit this model? (its weights, once)
            if fkey not in self.fits:
                self.fits[fkey] = _fits(spec, source, self.cpu, mkey, kwargs, self.workspace)
            if self.fits[fkey]:
                self.add(cell, "init.source", self.fits[fkey])
        if not size_ok:
            return  # reported above; the forward pass would only say it again
        seg = meta.task == "segmentation"
        err = self.forward(mkey, model, c, probe.info.image_shape, k, seg)
        if err:
            self.add(cell, "data.patch_size" if seg else "data.image_size", err)

    def _stages(self, cell: _Cell, spec: RunSpec, parts: list[tuple[str, str | None]], model: Any) -> None:
        from ..inits import INITS
        from ..models import stage_names

        names = stage_names(model)
        for n, arg in parts:
            if not str(INITS.get(n).meta.get("arg", "")).startswith("stage"):
                continue
            stage = (arg or "").split(",")[0]
            if not stage:
                self.add(cell, "init.name", f"init {n} needs a stage: {n}:<stage>, one of "
                         f"{', '.join(names)}")
            elif stage not in names:
                self.add(cell, "init.name", f"init {n}:{arg}: {stage!r} is not a stage of "
                         f"{spec.model.name}; stages are {', '.join(names)}")


def _field_of(message: str, default: str) -> str:
    """The field a message is about: a known phrase, else the first dotted key it names."""
    for phrase, f in _PHRASES:
        if phrase in message:
            return f
    m = _FIELD.search(message)
    return m.group(0) if m else default


def _probe(spec: DataSpec, meta: DatasetMeta) -> _Probe:
    """The prepared data's info at this cell's channels, size and training-set size."""
    from ..data.base import DatasetInfo

    seg = meta.task == "segmentation"
    shape = (spec.image_size,) * meta.spatial_dims if spec.image_size and not seg else meta.shape
    have = meta.available
    n = spec.n_train
    if spec.fraction is not None and have is not None:
        n = max(1, int(round(spec.fraction * have)))
    kept = n if have is None else min(n or have, have)
    info = DatasetInfo(name=spec.name, task=meta.task, class_names=meta.class_names,
                       spatial_dims=meta.spatial_dims, in_channels=spec.channels or meta.channels,
                       image_shape=tuple(shape), train_available=have)
    return _Probe(info, range(kept or 0))


def _build(name: str, dims: int, c: int, k: int, kwargs: dict[str, Any]) -> Any:
    """The model on the ``meta`` device (no memory), or its error message."""
    import torch

    from ..models import create_model

    try:
        with torch.device("meta"):
            return create_model(name, spatial_dims=dims, in_channels=c, num_classes=k, **kwargs)
    except TransfuseError as e:
        return str(e)
    except Exception:  # noqa: BLE001  (an op without a meta kernel: build it for real)
        pass
    try:
        return create_model(name, spatial_dims=dims, in_channels=c, num_classes=k, **kwargs)
    except TransfuseError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001
        return f"model {name!r} cannot be built: {type(e).__name__}: {e}".splitlines()[0]


def _fits(spec: RunSpec, source: Any, cpu: dict[tuple[Any, ...], Any], mkey: tuple[Any, ...],
          kwargs: dict[str, Any], workspace: str | Path | None) -> str | None:
    """``None`` if the init takes ``source`` on this model (built for real, once per build in
    ``cpu``: the init reads values), else the init's error, cut to its first few tensors."""
    from ..inits import apply_init
    from ..models import create_model

    try:
        if mkey not in cpu:
            cpu[mkey] = create_model(spec.model.name, spatial_dims=mkey[1], in_channels=mkey[2],
                                     num_classes=mkey[3], **kwargs)
        apply_init(cpu[mkey], spec.init, source=source, seed=0, workspace=workspace)
    except TransfuseError as e:
        msg = str(e)
    except Exception as e:  # noqa: BLE001
        msg = f"{type(e).__name__}: {e}".splitlines()[0]
    else:
        return None
    parts = msg.split("; ")  # "...the model — k1: ...; k2: ...; ...; use a source built for..."
    return "; ".join(parts[:2] + ["…"] + parts[-1:]) if len(parts) > 4 else msg


def _forward(model: Any, c: int, shape: tuple[int, ...], k: int, seg: bool) -> str | None:
    """``None`` if a batch of 2 at ``shape`` gives logits of the right shape, else why not."""
    import torch

    dev = next(iter(model.parameters()), torch.empty(0)).device
    try:
        model.eval()
        with torch.no_grad():
            y = model(torch.zeros((2, c, *shape), device=dev))
    except TransfuseError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001
        first = (str(e).strip().splitlines() or [""])[0][:160]
        return (f"model {model.model_name!r} fails on {'x'.join(map(str, shape))} inputs "
                f"({type(e).__name__}: {first}); use a larger input size")
    want = (2, k, *shape) if seg else (2, k)
    if isinstance(y, torch.Tensor) and tuple(y.shape) != want:
        return (f"model {model.model_name!r} gives outputs {tuple(y.shape)} on "
                f"{'x'.join(map(str, shape))} inputs, not {want}; use another input size")
    return None


def check_study(study: StudySpec, *, workspace: str | Path | None, smoke: bool = False) -> CheckReport:
    """Check every cell of ``study`` without training (see the module docstring).

    Args:
        study: the parsed study (``load_study(path, validate=False)`` lets this report every
            cell's spec errors too, instead of the first).
        workspace: the run store folder, where ``run:``, ``med3d:`` and ``ssl:`` sources are looked up
            (read only; nothing is written).
        smoke: check the ``--smoke`` version.

    Returns:
        :class:`CheckReport`; ``report.raise_if_invalid()`` raises :class:`StudyCheckError`.
    """
    t0 = time.perf_counter()
    ch = _Checker(study, workspace, smoke)
    cells = _cells(study, smoke=smoke)
    n_pre = 0
    for cell in cells:  # pretraining entries come first: their run ids are the grid's sources
        if not cell.label.startswith("pretrain."):
            continue
        name = cell.label.split(".", 1)[1]
        try:
            ch.produced[name] = f"run:{run_id(spec_from_dict(copy.deepcopy(cell.d)))}"
        except ConfigError:
            ch.produced[name] = f"pretrain:{name}"  # reported below, with the entry's key
    try:
        ch.produced.update(external_sources(study, smoke=smoke))
    except TransfuseError as e:
        ch.found[("pretrain", str(e))] = ["pretrain"]
    seen: set[str] = set()
    n_cells = 0
    grid_specs: list[dict[str, Any]] = []
    for cell in cells:
        ok = ch.resolve(cell)
        spec = _try_spec(ch, cell)
        key = spec.to_json() if spec is not None else f"invalid {len(seen)}"
        if key in seen:
            continue  # the same run as an earlier cell (e.g. a random init on two sources)
        seen.add(key)
        if cell.label.startswith("pretrain."):
            n_pre += 1
        else:
            n_cells += 1
            if spec is not None:
                grid_specs.append(spec.to_dict())
        if ok and spec is not None:
            ch.check(cell, spec)
    _check_reference(ch, study, grid_specs)
    problems = tuple(Problem(k, m, tuple(c)) for (k, m), c in ch.found.items())
    name = f"{study.name}-smoke" if smoke else study.name
    return CheckReport(study=name, path=study.path, cells=n_cells, pretrain=n_pre, problems=problems,
                       builds=len(ch.models), datasets=len(ch.data),
                       sources=sum(not isinstance(v, str) for v in ch.sources.values()),
                       seconds=round(time.perf_counter() - t0, 3))


def _check_reference(ch: _Checker, study: StudySpec, specs: list[dict[str, Any]]) -> None:
    """Every verdict compares an arm with ``evaluation.reference``: a study of several arms
    without that one would train everything and decide nothing (one arm alone is a study of
    seeds, not of arms, and passes)."""
    from ..decide.results import cell_keys

    ref = study.evaluation.reference
    arms = list(dict.fromkeys(arm for _, arm, _ in cell_keys(specs)))
    if len(arms) > 1 and ref not in arms:
        shown = ", ".join(repr(a) for a in arms[:6]) + (", ..." if len(arms) > 6 else "")
        ch.found[("evaluation.reference",
                  f"{ref!r} is not an arm of this study, so nothing could be compared with it; "
                  f"set evaluation.reference to one of {shown}")] = []


def _try_spec(ch: _Checker, cell: _Cell) -> RunSpec | None:
    try:
        return spec_from_dict(cell.d)
    except ConfigError as e:
        ch.add(cell, _field_of(str(e), ""), str(e))
        return None
