"""The field table of every spec file kind, and the one validator that reads it.

A spec is a frozen dataclass. Each field's type annotation says what a value may be, and its
metadata (:func:`spec_field`) what it must satisfy: a list of choices, bounds, finiteness.

.. code-block:: python

    @dataclass(frozen=True)
    class Optim:
        lr: float = spec_field(0.01, gt=0, finite=True)
        optimizer: str = spec_field("sgd", choices=("sgd", "adam"))

        def __post_init__(self) -> None:
            check_fields(self, prefix="train.")

    validate(Optim, {"lr": "1e-3"}, where="train")   # Optim(lr=0.001, optimizer='sgd')

:func:`validate` checks, in this order, each error one line naming the key as written
(``base.train.eval_evry``) and the fix, raised as :class:`~transfuse.errors.ConfigError`:

1. the value is a mapping;
2. no unknown key (with the closest valid one: ``did you mean base.train.eval_every?``);
3. no missing required key;
4. each value fits its field's type, by the rules of a YAML file: a ``float`` field takes an
   integer or a numeric string (YAML reads ``1e-3`` as a string), an ``int`` field takes no
   float and no bool, a ``bool`` field only ``true``/``false``; a nested dataclass section is
   validated the same way, its keys named ``section.key``;
5. the dataclass is built, and its ``__post_init__`` calls :func:`check_fields` (choices and
   bounds from the metadata, so a directly built or ``dataclasses.replace``-d spec is checked
   too) and then its own cross-field checks.

``--set KEY=VALUE`` values are typed through the same table by :func:`coerce`, which reads the
text a user typed more leniently (``--set train.amp=no``, ``--set data.label_columns=a,b``).
This module imports nothing of transfuse but its errors.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError, did_you_mean

__all__ = ["spec_field", "validate", "check_fields", "field_types", "file_keys", "check_type", "coerce",
           "describe_type", "split_items"]

_META = "transfuse.spec"


@dataclasses.dataclass(frozen=True)
class Constraint:
    """What a field's value must satisfy beyond its type (``None`` values are never checked).

    Attributes:
        choices: the allowed values.
        words: how the choices are said in the error (``"1, 3 or unset"``); default
            ``"is not valid; choose one of a, b, c"``.
        ge, gt, le, lt: bounds (numbers only).
        finite: refuse ``inf``/``nan``.
        hint: text after a bound's error, e.g. ``" (or leave it out: off)"``.
        file_key: ``False`` for a field that no file sets (derived, e.g. ``smoke``, ``path``).
        nested: ``False`` for a dataclass-typed field whose file form its loader reads itself
            (the validator then leaves the value to it).
    """

    choices: tuple[Any, ...] | None = None
    words: str = ""
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    finite: bool = False
    hint: str = ""
    file_key: bool = True
    nested: bool = True


def spec_field(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
               choices: tuple[Any, ...] | None = None, words: str = "", ge: float | None = None,
               gt: float | None = None, le: float | None = None, lt: float | None = None,
               finite: bool = False, hint: str = "", file_key: bool = True, nested: bool = True,
               hash: bool | None = None) -> Any:
    """A dataclass field carrying its constraints (see :class:`Constraint`)."""
    meta = {_META: Constraint(choices=tuple(choices) if choices is not None else None, words=words,
                              ge=ge, gt=gt, le=le, lt=lt, finite=finite, hint=hint,
                              file_key=file_key, nested=nested)}
    return dataclasses.field(default=default, default_factory=default_factory, hash=hash,
                             metadata=meta)


def _constraint(f: dataclasses.Field) -> Constraint:  # type: ignore[type-arg]
    return f.metadata.get(_META) or Constraint()


def field_types(cls: type) -> dict[str, Any]:
    """``{field name: type}`` of a spec dataclass, its annotations resolved (``int | None``)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def file_keys(cls: type) -> list[str]:
    """The keys a file may set for ``cls``: its fields but those marked ``file_key=False``."""
    return [f.name for f in dataclasses.fields(cls) if _constraint(f).file_key]


def _g(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _range_words(c: Constraint, typed: str) -> str:
    """``">= 1"``, ``"in (0, 1]"`` (or, for ``typed`` files, ``"a number >= 0 and <= 1"``)."""
    lo = (">=", c.ge) if c.ge is not None else (">", c.gt) if c.gt is not None else None
    hi = ("<=", c.le) if c.le is not None else ("<", c.lt) if c.lt is not None else None
    if typed:
        parts = [f"{b[0]} {_g(b[1])}" for b in (lo, hi) if b is not None]
        return f"{typed} {' and '.join(parts)}"
    if lo and hi:
        return (f"in {'[' if lo[0] == '>=' else '('}{_g(lo[1])}, "
                f"{_g(hi[1])}{']' if hi[0] == '<=' else ')'}")
    op, v = lo or hi  # type: ignore[misc]
    return f"{op} {_g(v)}"


def _out_of_range(v: float, c: Constraint) -> bool:
    return ((c.ge is not None and not v >= c.ge) or (c.gt is not None and not v > c.gt)
            or (c.le is not None and not v <= c.le) or (c.lt is not None and not v < c.lt))


def check_fields(obj: Any, *, prefix: str = "", typed: bool = False) -> None:
    """Check every field of the dataclass instance ``obj`` against its metadata, in field order.

    Args:
        prefix: how the section is written before a key (``"train."``).
        typed: say the kind in range errors (``"steps=0 must be an integer >= 1"``), the wording
            of the pretraining files.

    Raises:
        ConfigError: ``"train.optimizer='x' is not valid; choose one of sgd, adam, adamw"``,
            ``"data.n_train=0 must be >= 1"``, ``"train.lr=inf must be finite"``.
    """
    hints = field_types(type(obj)) if typed else {}
    for f in dataclasses.fields(obj):
        _check_value(getattr(obj, f.name), _constraint(f), key=f"{prefix}{f.name}",
                     tp=hints.get(f.name) if typed else None)


def _check_value(v: Any, c: Constraint, *, key: str, tp: Any = None) -> None:
    """One value against its field's constraint; ``tp`` given: say its kind in range errors."""
    if v is None:
        return
    if c.choices is not None and v not in c.choices:
        if c.words:
            raise ConfigError(f"{key}={v!r} must be {c.words}")
        raise ConfigError(f"{key}={v!r} is not valid; choose one of "
                          f"{', '.join(str(x) for x in c.choices)}")
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return  # a type the validator refuses; a direct build is the caller's concern
    bounded = any(b is not None for b in (c.ge, c.gt, c.le, c.lt))
    if bounded and _out_of_range(v, c):
        kind = ""
        if tp is not None:
            kind = "an integer" if _has(tp, int) and not _has(tp, float) else "a number"
        raise ConfigError(f"{key}={v!r} must be {_range_words(c, kind)}{c.hint}")
    if c.finite and not math.isfinite(v):
        raise ConfigError(f"{key}={v!r} must be finite")


# -- types ------------------------------------------------------------------------------------
def _union_args(tp: Any) -> tuple[Any, ...] | None:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return None


def _members(tp: Any) -> tuple[Any, ...]:
    return _union_args(tp) or (tp,)


def _origin(t: Any) -> Any:
    return typing.get_origin(t) or t


def _has(tp: Any, kind: type) -> bool:
    return tp is not None and any(_origin(t) is kind for t in _members(tp))


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
_CONTAINERS = (tuple, list, dict)


def check_type(value: Any, tp: Any, *, key: str) -> Any:
    """``value`` (as YAML read it) checked against the field type ``tp``; returns it, a numeric
    string for a ``float`` field as a float and a list for a ``tuple`` field as a tuple.

    Raises:
        ConfigError: ``"train.steps='lots' must be an integer"``,
            ``"data.n_train='many' must be an integer (or leave it out)"``.
    """
    kinds = [_origin(t) for t in _members(tp)]
    if value is None:
        if type(None) in kinds:
            return None
    elif isinstance(value, bool):
        if bool in kinds:
            return value
    elif isinstance(value, int) and (int in kinds or float in kinds):
        return value
    elif isinstance(value, float) and float in kinds:
        return value
    elif isinstance(value, str) and str in kinds:
        return value
    elif isinstance(value, str) and float in kinds:
        try:
            return float(value)
        except ValueError:
            pass
    elif isinstance(value, (list, tuple, dict)) and any(k in _CONTAINERS for k in kinds):
        return tuple(value) if isinstance(value, list) and tuple in kinds else value
    if not any(k in _KINDS or k in _CONTAINERS for k in kinds):
        return value  # a type this check does not know (a union of sections): the caller's
    want = " or ".join(_KINDS.get(k, "a mapping" if k is dict else "a list")
                       for k in kinds if k is not type(None))
    unset = " (or leave it out)" if type(None) in kinds else ""
    raise ConfigError(f"{key}={value!r} must be {want}{unset}")


# -- the validator ------------------------------------------------------------------------------
def _unknown_key(bad: str, valid: list[str], prefix: str) -> ConfigError:
    if not prefix:  # a file's top level: the key quoted, as the file has it
        return ConfigError(f"unknown key {bad!r}{did_you_mean(bad, valid)} "
                           f"(valid keys: {', '.join(valid)})")
    return ConfigError(f"unknown key {prefix}{bad}{did_you_mean(bad, valid, prefix=prefix)} "
                       f"(valid keys: {', '.join(valid)})")


def validate(cls: type, mapping: Any, *, where: str, partial: bool = False,
             required: bool | None = None, typed: bool = False) -> Any:
    """A mapping (parsed YAML) checked against the spec dataclass ``cls`` and built into one.

    Args:
        cls: a spec dataclass (its fields' types and :func:`spec_field` metadata).
        mapping: the parsed value.
        where: the dotted key the mapping sits at (``"base"``, ``"train"``, ``"base.train"``);
            ``""`` for a file's top level.
        partial: check the keys and values present (types, choices, bounds; sections
            included) but build nothing; returns the mapping with its values typed. A study's
            ``base`` (grid axes complete it) and a file's top level whose sections its loader
            builds (pretraining datasets, a chain's student) are checked this way.
        required: refuse a missing required key (default: unless ``partial``). A required key
            given as ``null`` counts as missing.
        typed: range errors say the kind (``"steps=0 must be an integer >= 1"``).

    Returns:
        The ``cls`` instance (with ``partial``, a plain dict).

    Raises:
        ConfigError: one line, naming the key as written (see the module docstring).
    """
    prefix = f"{where}." if where else ""
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{where or 'the file'} must be a mapping, got {type(mapping).__name__}")
    types_ = field_types(cls)
    valid = file_keys(cls)
    for k in mapping:
        if k not in valid:
            raise _unknown_key(str(k), valid, prefix)
    out: dict[str, Any] = {}
    if (not partial) if required is None else required:
        for f in dataclasses.fields(cls):
            if (f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
                    and (mapping.get(f.name) is None and type(None) not in _members(types_[f.name]))):
                raise ConfigError(f"missing key {prefix}{f.name}" if prefix
                                  else f"missing key {f.name!r}")
    meta = {f.name: _constraint(f) for f in dataclasses.fields(cls)}
    for k, v in mapping.items():
        tp, key = types_[k], f"{prefix}{k}"
        if _is_section(tp) and meta[k].nested and not isinstance(v, tp):
            out[k] = validate(tp, v, where=key, partial=partial)
        else:
            out[k] = check_type(v, tp, key=key)
            if partial:
                _check_value(out[k], meta[k], key=key, tp=tp if typed else None)
    return out if partial else cls(**out)


# -- --set: the text a user typed, read against the same types ----------------------------------
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")
_NONE = ("none", "null", "~")


class _Mismatch(Exception):
    """A value that does not fit a type (turned into a ConfigError naming the key)."""


def describe_type(tp: Any) -> str:
    """Words for a field type: ``float`` → ``a number (float)``, ``int | None`` → ``an integer
    or none (int | None)``."""
    def words(t: Any) -> str:
        args = _union_args(t)
        if args is not None:
            return " or ".join(words(a) for a in args if a is not type(None))
        origin = _origin(t)
        fixed = origin is tuple and typing.get_args(t)[1:2] not in ((), (Ellipsis,))
        if origin in (tuple, list) and not fixed:
            inner = words(typing.get_args(t)[0]) if typing.get_args(t) else "a value"
            if inner.startswith("a list") or " or " in inner or inner == "a value":
                return "a list"
            return f"a comma-separated list of {inner.removeprefix('an ').removeprefix('a ')}s"
        return {**_KINDS, dict: "a mapping", tuple: "a list", list: "a list"}.get(origin, "a value")

    args = _union_args(tp)
    none = " or none" if args is not None and type(None) in args else ""
    name = getattr(tp, "__name__", None) if typing.get_origin(tp) is None and args is None else None
    return f"{words(tp)}{none} ({name or str(tp).replace('typing.', '')})"


def _rank(t: Any) -> int:  # which member of a union to try first (str last: it takes anything)
    return {bool: 0, int: 1, float: 2, tuple: 3, list: 3, dict: 4, str: 9}.get(_origin(t), 5)


def split_items(value: Any, raw: str) -> list[tuple[Any, str]]:
    """Items of a list value with their own text: YAML lists, ``a,b,c`` or one scalar."""
    import yaml

    if isinstance(value, (list, tuple)):
        return [(v, str(v)) for v in value]
    if isinstance(value, str) and "," in value:
        out = []
        for part in (p.strip() for p in value.split(",")):
            try:
                out.append((yaml.safe_load(part) if part else None, part))
            except yaml.YAMLError:
                out.append((part, part))
        return out
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    return [(value, raw)]


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _Mismatch from None
    if kind is float and isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _Mismatch


def _coerce(value: Any, tp: Any, raw: str) -> Any:
    if tp is Any or tp is object:
        return value
    args = _union_args(tp)
    if args is not None:
        if type(None) in args and (value is None or (isinstance(value, str)
                                                     and value.strip().lower() in _NONE)):
            return None
        for t in sorted((a for a in args if a is not type(None)), key=_rank):
            try:
                return _coerce(value, t, raw)
            except _Mismatch:
                continue
        raise _Mismatch
    origin = _origin(tp)
    if origin is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, (str, int)) else ""
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise _Mismatch
    if origin in (int, float):
        return _number(value, origin)
    if origin is str:
        if isinstance(value, str):
            return value
        if value is None or isinstance(value, (list, tuple, dict)) or not raw:
            raise _Mismatch
        return raw  # "--set model.name=true" (or a number, a date): the text the user typed
    if origin in (tuple, list):
        items = typing.get_args(tp)
        if isinstance(value, dict) and items and typing.get_origin(items[0]) is tuple:
            value = [[k, v] for k, v in value.items()]  # {WT: [1, 2, 3]} for pairs (name, labels)
        got = split_items(value, raw)
        if items and not (len(items) == 2 and items[1] is Ellipsis) and origin is tuple:
            if len(got) != len(items):  # a fixed-length tuple
                raise _Mismatch
            out = [_coerce(v, t, r) for (v, r), t in zip(got, items)]
        else:
            elem = items[0] if items else Any
            out = [_coerce(v, elem, r) for v, r in got]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch
    return value  # a type this check does not know: the spec's own validation sees it


def coerce(value: Any, tp: Any, *, key: str, raw: str | None = None) -> Any:
    """A ``--set`` value (YAML-parsed) checked and converted against a field's type.

    Args:
        value: the YAML-parsed value.
        tp: the field's type (``int``, ``float | None``, ``tuple[str, ...]``...).
        key: the dotted key, for the error message.
        raw: the value's text as given (used for string fields); default ``str(value)``.

    Raises:
        ConfigError: ``"train.lr expects a number (float), got 'abc'"``.
    """
    raw = str(value) if raw is None else raw
    try:
        return _coerce(value, tp, raw)
    except _Mismatch:
        raise ConfigError(f"{key} expects {describe_type(tp)}, got {raw!r}") from None
