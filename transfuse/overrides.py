"""``--set KEY=VALUE`` overrides: dotted keys, values typed against the spec's fields.

>>> spec = apply_overrides(spec, sets=["train.lr=0.05", "data.n_train=500"])

A value is read with ``yaml.safe_load`` and then checked against the annotation of the field it
sets (:class:`~transfuse.config.RunSpec` and its sections, the study's
:class:`~transfuse.decide.evaluation.Evaluation`, the chain's ``PseudoSpec``/``NoiseSpec``, the
pretraining file's fields) by :func:`transfuse.spec.fields.coerce`: the same field table that
validates the files, read leniently as typed text:

========================= =====================================================================
``int``                   ``500``; a float with no fraction (``5e2`` is not YAML's, ``500.0``)
``float``                 ``0.05``, ``1e-3``, ``2``
``bool``                  ``true``/``false``, ``yes``/``no``, ``1``/``0`` (any case)
``str``                   the text as given (``--set model.name=true`` is the string ``true``)
``X | None``              ``none``, ``null`` or ``~`` for ``None``
``tuple``/``list``        ``1,2,3`` or YAML flow ``[1, 2, 3]``; each item typed
``dict``                  YAML flow ``{WT: [1, 2, 3]}``
========================= =====================================================================

An unknown key (with a "did you mean" hint) or a value of the wrong type raises
:class:`~transfuse.errors.ConfigError` with one line, ``--set train.lr=abc: train.lr expects a
number (float), got 'abc'``; the CLI prints it as ``error: ...`` and exits 2. The dataclasses'
own checks (``train.lr must be > 0``) run too and are reported the same way.

Where each command applies them: :func:`override_run` (``transfuse train``, on top of the flags),
:func:`override_study` (``study run|status|plan|check``: the study's base spec, so every cell,
plus ``grid.<axis>``, ``evaluation.*``, ``pretrain.<name>.*``, ``name``, ``description``),
:func:`load_chain_overridden` (``selftrain``), :func:`load_pretrain_overridden`
(``pretrain med3d``) and :func:`load_ssl_overridden` (``pretrain ssl``). This module imports no
torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .spec.fields import coerce, describe_type, field_types, file_keys
from .spec.fields import split_items as _split_items

__all__ = ["parse_set", "coerce", "apply_overrides", "override_run", "override_study",
           "load_chain_overridden", "load_pretrain_overridden", "load_ssl_overridden",
           "load_study_overridden", "load_run", "load_run_overridden", "run_schema", "study_schema", "chain_schema", "pretrain_schema",
           "describe_type"]

_KEY = re.compile(r"[A-Za-z_][\w-]*(\[\d+\])*(\.[A-Za-z_][\w-]*(\[\d+\])*)*")


# -- values -------------------------------------------------------------------------------------
def parse_set(text: str) -> tuple[str, Any, str]:
    """Split one ``KEY=VALUE`` into ``(key, parsed value, raw value text)``.

    Raises:
        ConfigError: no ``=`` or a malformed key.
    """
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.fullmatch(key):
        raise ConfigError(f"--set {text}: expected KEY=VALUE with a dotted key, e.g. "
                          "--set train.lr=0.05 or --set data.n_train=500")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw.strip()  # not YAML (e.g. "a: b: c"): the text itself, for string fields
    return key, value, raw.strip()


# -- schemas: a dataclass, a mapping of key -> schema, [schema] for a list, or a leaf type -------
def _fields_of(schema: Any) -> dict[str, Any] | None:
    if isinstance(schema, Mapping):
        return dict(schema)
    if isinstance(schema, type) and dataclasses.is_dataclass(schema):
        return field_types(schema)
    return None


def _all_keys(schema: Any, prefix: str = "", depth: int = 0) -> list[str]:
    fields = _fields_of(schema)
    if fields is None or depth > 3:
        return []
    out = []
    for k, sub in fields.items():
        out.append(f"{prefix}{k}")
        out += _all_keys(sub, f"{prefix}{k}.", depth + 1)
    return out


def _tokens(key: str) -> list[str | int]:
    out: list[str | int] = []
    for seg in key.split("."):
        name, _, rest = seg.partition("[")
        out.append(name)
        out += [int(i) for i in re.findall(r"\d+", "[" + rest)] if rest else []
    return out


def _unknown(text: str, dotted: str, valid: list[str], root: Any, prefix: str) -> ConfigError:
    leaf = dotted.rsplit(".", 1)[-1]
    everything = _all_keys(root)
    close = difflib.get_close_matches(dotted, everything, n=1, cutoff=0.75)
    close = close or [k for k in everything if k.rsplit(".", 1)[-1] == leaf][:1]
    close = close or [prefix + c for c in difflib.get_close_matches(leaf, valid, n=1)]
    hint = f"; did you mean {close[0]}?" if close else ""
    where = f"{prefix.rstrip('.')} keys" if prefix else "keys"
    return ConfigError(f"--set {text}: unknown key {dotted}{hint} (valid {where}: {', '.join(valid)})")


def _plain(v: Any) -> Any:  # raw mappings hold what YAML holds: lists, not tuples
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def _check_section(schema: Any, d: dict[str, Any], field_name: str, text: str) -> None:
    """Build a dict section's dataclass (placeholders for its required names) so its own checks
    (``train.lr must be > 0``) name the ``--set`` now; errors about other keys are left to the
    full validation that follows, which names the file."""
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        return
    names = {f.name: f for f in dataclasses.fields(schema)}
    kwargs = {k: v for k, v in d.items() if k in names}
    for f in names.values():
        if f.name not in kwargs and f.default is dataclasses.MISSING \
                and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            kwargs[f.name] = "x"
    try:
        schema(**kwargs)
    except ConfigError as e:
        if re.search(rf"\b{re.escape(field_name)}\b", str(e)):
            raise ConfigError(f"--set {text}: {e}") from None
    except (TypeError, ValueError):
        pass


def _leaf(value: Any, tp: Any, key: str, raw: str, text: str) -> Any:
    try:
        return coerce(value, tp, key=key, raw=raw)
    except ConfigError as e:
        raise ConfigError(f"--set {text}: {e}") from None


def _apply(obj: Any, toks: list[str | int], value: Any, raw: str, schema: Any, *, text: str,
           done: str, root: Any) -> Any:
    head, rest = toks[0], toks[1:]
    dotted = f"{done}{head}" if isinstance(head, str) else f"{done.rstrip('.')}[{head}]"
    if isinstance(head, int):  # an index into a list
        if not isinstance(schema, list) or not isinstance(obj, list):
            raise ConfigError(f"--set {text}: {done.rstrip('.')} is not a list")
        if not 0 <= head < len(obj):
            raise ConfigError(f"--set {text}: {dotted} does not exist ({done.rstrip('.')} has "
                              f"{len(obj)} entries)")
        sub = schema[0]
        new = (_apply(obj[head], rest, value, raw, sub, text=text, done=dotted + ".", root=root)
               if rest else _leaf(value, sub, dotted, raw, text))
        return [*obj[:head], new, *obj[head + 1:]]
    fields = _fields_of(schema)
    if fields is None:
        raise ConfigError(f"--set {text}: {done.rstrip('.')} has no key {head!r} (it is a single value)")
    if head not in fields:
        raise _unknown(text, dotted, list(fields), root, done)
    sub = fields[head]
    if obj is None or isinstance(obj, Mapping):
        cur = (obj or {}).get(head)
    elif dataclasses.is_dataclass(obj):
        cur = getattr(obj, head)
    else:
        raise ConfigError(f"--set {text}: {done.rstrip('.')} is not a mapping in the file")
    section = isinstance(sub, list) or _fields_of(sub) is not None
    if not rest:
        if section:
            keys = ", ".join(f"{dotted}.{k}" for k in list(_fields_of(sub) or {})[:4])
            raise ConfigError(f"--set {text}: {dotted} is a section; set one of its keys"
                              + (f", e.g. {keys}" if keys else ""))
        new = _leaf(value, sub, dotted, raw, text)
    else:
        if isinstance(cur, str) and "name" in (_fields_of(sub) or {}):
            cur = {"name": cur}  # "init: meanvar" is short for {name: meanvar}
        if cur is None and isinstance(sub, list):
            raise ConfigError(f"--set {text}: {dotted} is not set in the file")
        new = _apply(cur if cur is not None else {}, rest, value, raw, sub, text=text,
                     done=dotted + ".", root=root)
    if obj is None or isinstance(obj, Mapping):
        out = dict(obj or {})
        out[head] = _plain(new)
        _check_section(schema, out, head, text)
        return out
    try:
        return dataclasses.replace(obj, **{head: new})
    except ConfigError as e:  # the dataclass's own check (e.g. "train.lr=-1.0 must be > 0")
        raise ConfigError(f"--set {text}: {e}") from None


def apply_overrides(target: Any, *, sets: Sequence[str], schema: Any = None) -> Any:
    """Apply ``KEY=VALUE`` strings to a (nested) dataclass or dict; returns the new one.

    Args:
        target: a frozen dataclass (e.g. a :class:`~transfuse.config.RunSpec`; sections are
            rebuilt with :func:`dataclasses.replace`, so their checks run) or a nested dict
            (e.g. parsed YAML; not modified).
        sets: ``["train.lr=0.05", "data.n_train=500", ...]``, applied in order.
        schema: the types to check against: a dataclass class, a mapping ``{key: schema}``,
            ``[schema]`` for a list (``datasets[0].weight``) or a leaf type; default: the
            class of ``target``.

    Returns:
        A new object of the same kind (``target`` is unchanged).

    Raises:
        ConfigError: malformed, unknown key (with close matches) or wrongly typed value, one
            line starting ``--set KEY=VALUE:``.
    """
    schema = type(target) if schema is None else schema
    out = target
    for text in sets:
        key, value, raw = parse_set(text)
        out = _apply(out, _tokens(key), value, raw, schema, text=text, done="", root=schema)
    return out


# -- what each command applies them to --------------------------------------------------------
def _run_sections() -> dict[str, Any]:
    from .config import DataSpec, InitSpec, ModelSpec, TrainSpec

    return {"data": DataSpec, "model": ModelSpec, "init": InitSpec, "train": TrainSpec}


def run_schema(parsed: Any = None) -> dict[str, Any]:
    """The ``--set`` keys of a run spec: :class:`~transfuse.config.RunSpec`'s fields."""
    from .config import RunSpec

    return field_types(RunSpec)


def override_run(spec: Any, *, sets: Sequence[str]) -> Any:
    """A :class:`~transfuse.config.RunSpec` with ``sets`` applied (``transfuse train``)."""
    return apply_overrides(spec, sets=sets)


def load_run(path: str | Path) -> Any:
    """Read and validate a run spec file (a :class:`~transfuse.config.RunSpec` as a mapping).

    Raises:
        ConfigError: the file is missing, not YAML, or has an invalid key (named with the file).
    """
    from .config import read_yaml_file, spec_from_dict, where

    raw = read_yaml_file(path, what="run spec")
    try:
        return spec_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(where(str(path), str(e))) from None


def load_run_overridden(path: str | Path, *, sets: Sequence[str]) -> Any:
    """:func:`load_run` with ``sets`` applied (:func:`override_run`)."""
    return override_run(load_run(path), sets=sets)


def _axis_fields(study: Any) -> list[tuple[str, str]]:
    """``(field, grid key that sets it)`` for every field a grid axis sets."""
    from .study.spec import is_linked

    out = []
    for k, vals in study.grid.items():
        if is_linked(k, vals):
            for i, item in enumerate(vals):
                out += [(str(kk), f"grid.{k}[{i}]") for kk in item]
        else:
            out.append((k, f"grid.{k}"))
    return out


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _field_type(field: str) -> Any:
    """The type of a dotted run key (``seed``, ``train.lr``), ``Any`` for ``init`` as a whole."""
    head, _, rest = field.partition(".")
    if field == "seed":
        return int
    sections = _run_sections()
    return _fields_of(sections[head]).get(rest, Any) if head in sections and rest else Any  # type: ignore[union-attr]


def _override_grid(study: Any, key: str, value: Any, raw: str, text: str) -> Any:
    """``grid.AXIS=[...]`` (a plain axis's values), ``grid.AXIS[i]=v`` (one value) or
    ``grid.NAMED[i].FIELD=v`` (one key of a named axis's entry, as ``study check`` names them)."""
    from .study.spec import check_axes_disjoint, check_axis_path, is_linked

    m = re.fullmatch(r"grid\.(.+?)(?:\[(\d+)\](?:\.(.+))?)?", key)
    axis, idx, field = m.group(1), m.group(2), m.group(3)  # type: ignore[union-attr]
    if axis not in study.grid:
        have = ", ".join(f"grid.{k}" for k in study.grid) or "none"
        raise ConfigError(f"--set {text}: grid.{axis} is not an axis of study {study.name} (axes: "
                          f"{have}); add new axes in the study file")
    vals = list(study.grid[axis])
    linked = is_linked(axis, vals)
    if idx is not None and not int(idx) < len(vals):
        raise ConfigError(f"--set {text}: grid.{axis} has {len(vals)} entries, no [{idx}]")
    if linked:
        if idx is None or field is None:
            raise ConfigError(f"--set {text}: grid.{axis} is a named axis of mappings; set one key "
                              f"of one entry, e.g. --set grid.{axis}[0].train.lr=0.01")
        try:
            check_axis_path(field, f"--set {text}")
        except ConfigError as e:
            raise ConfigError(str(e)) from None
        vals[int(idx)] = {**vals[int(idx)], field: _plain(_leaf(value, _field_type(field), key, raw, text))}
    elif field is not None and axis == "init" and isinstance(vals[int(idx)], (dict, str)):
        entry = vals[int(idx)]  # grid.init[1].source: one key of an init given as a mapping
        entry = {"name": entry} if isinstance(entry, str) else dict(entry)
        entry[field] = _plain(_leaf(value, _field_type(f"init.{field}"), key, raw, text))
        check_axis_path(f"init.{field}", f"--set {text}")
        vals[int(idx)] = entry
    elif field is not None:
        raise ConfigError(f"--set {text}: grid.{axis} is a list of values; set grid.{axis}[{idx}]")
    elif idx is not None:
        vals[int(idx)] = _plain(_leaf(value, _field_type(axis), key, raw, text))
    else:
        vals = [_plain(_leaf(v, _field_type(axis), f"{key}[{i}]", r, text))
                for i, (v, r) in enumerate(_split_items(value, raw))]
        if not vals:
            raise ConfigError(f"--set {text}: {key} must be a non-empty list, e.g. {key}=[0,1]")
    grid = {**study.grid, axis: vals}
    check_axes_disjoint(grid, f"--set {text}")
    return dataclasses.replace(study, grid=grid)


_THRESHOLDS = {"evaluation.auc_thresholds": "auc_thresholds",
               "evaluation.dice_thresholds": "auc_thresholds",
               "evaluation.relative_thresholds": "relative_thresholds"}


def override_study(study: Any, *, sets: Sequence[str]) -> Any:
    """A :class:`~transfuse.study.spec.StudySpec` with ``sets`` applied.

    Keys: run keys (``train.lr``, ``data.n_train``, ``seed``, or ``base.train.lr``) set the base
    spec, so every cell; a key that a grid axis sets is refused (the axis would win in every
    cell it covers), name the axis instead: ``grid.data.n_train=[250,500]`` replaces its values
    (plain axes; a named axis of mappings is edited in the file). ``evaluation.<key>`` (margin,
    alpha, reference, auc_thresholds...), ``pretrain.<name>.<run key>``, ``name`` and
    ``description`` set the study's own keys. Cells are validated when the study is expanded
    or checked (:func:`transfuse.study.check.check_study`).

    Raises:
        ConfigError: one line naming the ``--set``.
    """
    from .errors import check_name

    base_schema = {**_run_sections(), "seed": int}
    for text in sets:
        key, value, raw = parse_set(text)
        if key.startswith("grid."):
            study = _override_grid(study, key, value, raw, text)
            continue
        if key.startswith("smoke."):  # the study's own --smoke overrides (smoke.train.steps)
            field = key[len("smoke."):]
            from .study.spec import check_axis_path

            check_axis_path(field, f"--set {text}")
            val = _leaf(value, _field_type(field), key, raw, text)
            study = dataclasses.replace(study, smoke={**study.smoke, field: _plain(val)})
            continue
        axes = _axis_fields(study)
        head = key.split(".")[0].split("[")[0]
        if head in base_schema:
            key = f"base.{key}"
        if key.startswith("base."):
            field = key[len("base."):]
            for f, axis in axes:
                if _overlaps(field, f):
                    if "[" in axis:
                        why = f"the entry {axis} of a named axis sets it in its cells"
                        fix = f"edit the axis in {study.path or 'the study file'}"
                    else:
                        why = f"{axis} sets it in every cell"
                        fix = f"change the axis instead, e.g. --set {axis}=[...]"
                    raise ConfigError(f"--set {text}: {f} is a grid axis key ({why}, over the "
                                      f"base spec); {fix}")
        if key in _THRESHOLDS:
            vals = _leaf(value, tuple[float, ...], key, raw, text)
            if not vals or any(not 0 < x <= 1 for x in vals):
                raise ConfigError(f"--set {text}: {key} must be a list of numbers in (0, 1]")
            study = dataclasses.replace(study, **{_THRESHOLDS[key]: vals})
            continue
        schema = study_schema(study)
        study = _apply(study, _tokens(key), value, raw, schema, text=text, done="", root=schema)
        if key.startswith("evaluation."):
            study.evaluation.check(where=f"--set {text}")
        if key == "name":
            try:
                check_name(study.name, field="name")
            except ConfigError as e:
                raise ConfigError(f"--set {text}: {e}") from None
    return study


def study_schema(study: Any) -> dict[str, Any]:
    """The ``--set`` keys of a :class:`~transfuse.study.spec.StudySpec` besides ``grid.*``,
    ``smoke.*`` and the ``evaluation`` thresholds (:func:`override_study`)."""
    from .decide.evaluation import Evaluation

    base_schema = {**_run_sections(), "seed": int}
    pre = {n: _run_sections() | {"seed": int} for n, p in study.pretrain.items() if "med3d" not in p}
    return {"name": str, "description": str, "base": base_schema, "evaluation": Evaluation,
            "pretrain": pre}


def load_study_overridden(path: str | Path, *, sets: Sequence[str], validate: bool = True) -> Any:
    """Read a study file (``validate``: its cells checked, as :func:`~transfuse.study.spec.load_study`
    does) and apply ``sets`` (:func:`override_study`; the overridden cells are checked when the
    study is expanded)."""
    from .study.spec import load_study

    return override_study(load_study(path, validate=validate), sets=sets)


def chain_schema(parsed: Any = None) -> dict[str, Any]:
    """The ``--set`` keys of a self-training chain file (:func:`load_chain_overridden`): the
    file keys of :class:`~transfuse.selftrain.spec.ChainSpec`, its run-spec sections typed."""
    from .selftrain.noise import NoiseSpec
    from .selftrain.spec import ChainSpec

    sec, types_ = _run_sections(), field_types(ChainSpec)
    return {**{k: types_[k] for k in file_keys(ChainSpec) if k != "smoke"}, "base": sec,
            "student": {"model": sec["model"], "init": sec["init"], "train": sec["train"],
                        "noise": NoiseSpec, "finetune": sec["train"]}}


def pretrain_schema(parsed: Any = None) -> dict[str, Any]:
    """The ``--set`` keys of a Med3D pretraining file (:func:`load_pretrain_overridden`)."""
    from .pretrain.config import DatasetEntry, PretrainSpec

    top = {k: v for k, v in _fields_of(PretrainSpec).items() if k not in ("datasets", "smoke")}  # type: ignore[union-attr]
    return {**top, "datasets": [DatasetEntry]}


def load_chain_overridden(path: str | Path, *, sets: Sequence[str]) -> Any:
    """Read a self-training chain file, apply ``sets`` to its keys, validate it.

    Keys are the file's (``generations``, ``pseudo.threshold``, ``student.noise.dropout``,
    ``student.train.steps``, ``base.train.lr``); ``data.*``, ``model.*``, ``init.*`` and
    ``train.*`` alone set ``base`` (the teacher, and the students where ``student`` does not say
    otherwise).

    Returns:
        :class:`~transfuse.selftrain.spec.ChainSpec`.
    """
    from .config import read_yaml_file
    from .selftrain.spec import chain_from_dict

    raw = read_yaml_file(path, what="chain")
    sets = [f"base.{s}" if s.split(".")[0].strip() in _run_sections() else s for s in sets]
    if isinstance(raw, dict):
        raw = apply_overrides(raw, sets=sets, schema=chain_schema(raw))
    return chain_from_dict(raw, path=str(path))


def load_pretrain_overridden(path: str | Path, *, sets: Sequence[str]) -> Any:
    """Read a Med3D pretraining file, apply ``sets`` to its keys (``steps``, ``lr``,
    ``patch_size``, ``datasets[0].weight``, ``datasets[1].data.spacing``...), validate it.

    Returns:
        :class:`~transfuse.pretrain.config.PretrainSpec`.
    """
    from .config import read_yaml_file
    from .pretrain.config import pretrain_from_dict

    raw = read_yaml_file(path, what="pretraining")
    if isinstance(raw, dict):
        raw = apply_overrides(raw, sets=sets, schema=pretrain_schema(raw))
    return pretrain_from_dict(raw, path=str(Path(path)))


def load_ssl_overridden(path: str | Path, *, sets: Sequence[str]) -> Any:
    """Read an SSL pretraining file, apply ``sets`` to its keys (``steps``, ``lr``,
    ``data.image_size``, ``data.n_train``...), validate it.

    Returns:
        :class:`~transfuse.pretrain.ssl_config.SSLSpec`.
    """
    from .config import read_yaml_file
    from .pretrain.ssl_config import ssl_from_dict, ssl_schema

    raw = read_yaml_file(path, what="SSL pretraining")
    if isinstance(raw, dict):
        if isinstance(raw.get("data"), str):
            raw = {**raw, "data": {"name": raw["data"]}}
        raw = apply_overrides(raw, sets=sets, schema=ssl_schema(raw))
    return ssl_from_dict(raw, path=str(Path(path)))
