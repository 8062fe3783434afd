"""The one spec validator (transfuse.spec.fields): every file kind's keys, types, choices, bounds."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from transfuse.config import DataSpec, RunSpec, TrainSpec, spec_from_dict
from transfuse.errors import ConfigError
from transfuse.spec.fields import check_fields, coerce, spec_field, validate


@dataclass(frozen=True)
class _Inner:
    lr: float = spec_field(0.01, gt=0, finite=True)
    optimizer: str = spec_field("sgd", choices=("sgd", "adam"))
    n: int | None = spec_field(None, ge=1, hint=" (or leave it out)")

    def __post_init__(self) -> None:
        check_fields(self, prefix="train.")


@dataclass(frozen=True)
class _Outer:
    name: str
    train: _Inner = spec_field(default_factory=_Inner)
    seed: int = spec_field(0, ge=0)
    path: str = spec_field("", file_key=False)


@pytest.mark.parametrize("mapping, message", [
    ([1], "base must be a mapping, got list"),
    ({"name": "a", "trian": {}}, "unknown key base.trian; did you mean base.train? (valid keys: "
                                 "name, train, seed)"),
    ({"name": "a", "train": {"lrr": 1}}, "unknown key base.train.lrr; did you mean base.train.lr?"),
    ({"name": "a", "path": "x"}, "unknown key base.path"),  # not a file key
    ({"train": {}}, "missing key base.name"),
    ({"name": None}, "missing key base.name"),
    ({"name": "a", "train": {"lr": "fast"}}, "base.train.lr='fast' must be a number"),
    ({"name": "a", "train": {"n": 1.5}}, "base.train.n=1.5 must be an integer (or leave it out)"),
    ({"name": "a", "seed": True}, "base.seed=True must be an integer"),
    ({"name": "a", "train": {"lr": 0}}, "train.lr=0 must be > 0"),
    ({"name": "a", "train": {"lr": "inf"}}, "train.lr=inf must be finite"),
    ({"name": "a", "train": {"optimizer": "lbfgs"}},
     "train.optimizer='lbfgs' is not valid; choose one of sgd, adam"),
    ({"name": "a", "train": {"n": 0}}, "train.n=0 must be >= 1 (or leave it out)"),
])
def test_one_line_errors_name_the_key_as_written(mapping, message):
    with pytest.raises(ConfigError) as e:
        validate(_Outer, mapping, where="base")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_top_level_keys_are_quoted_and_typed_files_say_the_kind():
    with pytest.raises(ConfigError, match=r"^unknown key 'sed'; did you mean seed\?"):
        validate(_Outer, {"name": "a", "sed": 1}, where="")
    with pytest.raises(ConfigError, match=r"^missing key 'name'$"):
        validate(_Outer, {}, where="")
    with pytest.raises(ConfigError, match=r"^seed=-1 must be an integer >= 0$"):
        validate(_Outer, {"name": "a", "seed": -1}, where="", partial=True, required=True,
                 typed=True)


def test_values_are_typed_and_partial_mappings_are_checked_not_built():
    out = validate(_Outer, {"name": "a", "train": {"lr": "1e-3", "n": 3}}, where="")
    assert out == _Outer(name="a", train=_Inner(lr=0.001, n=3))
    assert validate(_Outer, {"train": {"lr": 2}}, where="base", partial=True) == {"train": {"lr": 2}}
    with pytest.raises(ConfigError, match="train.lr=-2 must be > 0"):
        validate(_Outer, {"train": {"lr": -2}}, where="base", partial=True)


def test_constraints_hold_for_direct_builds_and_replace():
    with pytest.raises(ConfigError, match=r"^train.optimizer='x' is not valid"):
        TrainSpec(optimizer="x")
    with pytest.raises(ConfigError, match=r"^data.fraction=1.5 must be in \(0, 1\]$"):
        replace(DataSpec(name="x"), fraction=1.5)
    with pytest.raises(ConfigError, match=r"^data.channels=2 must be 1, 3 or unset$"):
        DataSpec(name="x", channels=2)


def test_run_spec_errors_as_before():
    base = {"data": {"name": "x"}, "model": {"name": "m"}}
    with pytest.raises(ConfigError, match=r"^missing key 'model' in run spec$"):
        spec_from_dict({"data": {"name": "x"}})
    with pytest.raises(ConfigError, match=r"^train.steps='lots' must be an integer \(or leave it out\)$"):
        spec_from_dict({**base, "train": {"steps": "lots"}})
    with pytest.raises(ConfigError, match=r"^unknown key data.colour"):
        spec_from_dict({**base, "data": {"name": "x", "colour": 1}})
    spec = spec_from_dict({**base, "init": None, "train": {"lr": "1e-3"},
                           "data": {"name": "x", "label_columns": ["a", "b"]}})
    assert isinstance(spec, RunSpec) and spec.train.lr == 0.001
    assert spec.data.label_columns == ("a", "b")


@pytest.mark.parametrize("tp, text, want", [
    (float, "1e-3", 0.001), (int, "5e2", 500), (bool, "no", False), (int | None, "null", None),
    (tuple[str, ...], "a,b", ("a", "b")), (str, "true", "true"),
])
def test_set_values_typed_through_the_same_annotations(tp, text, want):
    import yaml

    assert coerce(yaml.safe_load(text), tp, key="k", raw=text) == want


def test_a_study_base_is_partial_and_checked_through_the_run_table(tmp_path):
    """The grid may complete the base (here: the model), so the base is no RunSpec; its keys
    and values are still checked when the file is read, named where they are written."""
    from transfuse.study.spec import expand, load_study

    p = tmp_path / "s.yaml"
    p.write_text("name: s\nbase: {data: {name: 'builtin:brain_tissue'}, train: {steps: 3}}\n"
                 "grid: {model.name: [cbr_tiny, cbr_small]}\n")
    specs = expand(load_study(p))
    assert [s.model.name for s in specs] == ["cbr_tiny", "cbr_small"]
    p.write_text("name: s\nbase: {data: {name: x}, train: {steps: 0}}\n"
                 "grid: {model.name: [cbr_tiny]}\n")
    with pytest.raises(ConfigError, match=r"s.yaml: base.train.steps=0 must be >= 1$"):
        load_study(p, validate=False)
    p.write_text("name: s\nbase: {data: {name: x}, model: {name: m}}\nmax_cells: 0\n")
    with pytest.raises(ConfigError, match=r"s.yaml: max_cells=0 must be >= 1$"):
        load_study(p)
