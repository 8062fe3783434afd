"""The registry of YAML file kinds (transfuse.spec.kinds): every kind loads a minimal file,
names an unknown top-level key with a suggestion, and takes a ``--set`` through its schema."""

from __future__ import annotations

import pytest
import yaml

from transfuse.errors import ConfigError
from transfuse.spec.kinds import FILE_KINDS, file_spec, load_file, set_schema

# kind → (a minimal valid file, a --set, (attribute path, value it reads back))
MINIMAL = {
    "run": ("""
data: {name: "builtin:brain_tissue", n_train: 48}
model: {name: cbr_tiny}
""", "train.lr=0.05", ("train.lr", 0.05)),
    "study": ("""
name: kinds
base:
  data: {name: "builtin:brain_tissue", n_train: 48}
  model: {name: cbr_tiny}
  train: {steps: 3, eval_every: 3, batch_size: 16, lr: 0.02}
grid:
  seed: [0, 1]
""", "train.lr=0.05", ("base.train.lr", 0.05)),
    "chain": ("""
name: kinds
base:
  data: {name: "builtin:brain_tissue"}
  model: {name: cbr_tiny}
  train: {steps: 3, eval_every: 3, batch_size: 16}
labelled_fraction: 0.1
""", "student.noise.dropout=0.3", ("noise.dropout", 0.3)),
    "med3d": ("""
name: kinds
encoder: med3d_resnet10
datasets:
  - data: {name: "builtin:spm_tissue6"}
""", "steps=12", ("steps", 12)),
    "ssl": ("""
name: kinds
method: simclr
model: cbr_tiny
data: {name: "builtin:brain_tissue"}
""", "lr=0.002", ("lr", 0.002)),
}


def _get(obj, dotted):
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def test_every_kind_has_a_minimal_file_here():
    assert sorted(FILE_KINDS.list()) == sorted(MINIMAL)


@pytest.mark.parametrize("kind", sorted(MINIMAL))
def test_each_kind_loads_refuses_a_typo_and_takes_a_set(tmp_path, kind):
    text, setting, (attr, want) = MINIMAL[kind]
    f = tmp_path / f"{kind}.yaml"
    f.write_text(text)
    spec = load_file(kind, f)
    cls = file_spec(kind)
    assert isinstance(spec, cls)

    raw = yaml.safe_load(text)  # an unknown top-level key: one line, the file, a suggestion
    key = sorted(raw)[0]
    bad = tmp_path / f"bad-{kind}.yaml"
    bad.write_text(yaml.safe_dump({**raw, f"{key}x": 1}))
    with pytest.raises(ConfigError) as e:
        load_file(kind, bad)
    msg = str(e.value)
    assert "\n" not in msg and str(bad) in msg, msg
    assert f"unknown key '{key}x'; did you mean {key}?" in msg, msg

    out = load_file(kind, f, sets=[setting])  # --set round trip
    assert isinstance(out, cls) and _get(out, attr) == want
    assert _get(spec, attr) != want
    schema = set_schema(kind, spec if kind == "study" else raw)
    head = setting.split("=")[0].split(".")[0]
    assert head in schema or head in schema["base"], (head, schema)  # (study: base.train)


def test_unknown_kind_suggests():
    with pytest.raises(ConfigError, match="unknown file kind 'studdy'; did you mean study"):
        load_file("studdy", "x.yaml")


def test_import_loads_no_loader():
    import subprocess
    import sys

    code = ("import sys, transfuse.spec.kinds as k; k.FILE_KINDS.list(); "
            "print(any(m in sys.modules for m in ('torch', 'transfuse.study.spec', "
            "'transfuse.selftrain.spec', 'transfuse.pretrain.config')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_section_tables_cover_what_their_loaders_read():
    from dataclasses import fields

    from transfuse.selftrain.spec import SMOKE, SmokeSection, StudentSection
    from transfuse.study.spec import DECISION_KEYS, EVAL_KEYS, EvaluationSection

    assert {f.name for f in fields(EvaluationSection)} == {*EVAL_KEYS, "dice_thresholds", *DECISION_KEYS}
    assert {f.name for f in fields(StudentSection)} == {"model", "init", "train", "noise", "finetune"}

    def dotted(cls, prefix=""):
        for f in fields(cls):
            sub = f.default_factory if f.default_factory is not MISSING else None
            yield from dotted(sub, f"{prefix}{f.name}.") if sub else [f"{prefix}{f.name}"]

    from dataclasses import MISSING

    assert set(dotted(SmokeSection)) == set(SMOKE)


@pytest.mark.parametrize("kind, edit, message", [
    ("chain", {"smoke": {"train.stepz": 2}},
     "unknown key smoke.train.stepz; did you mean smoke.train.steps?"),
    ("chain", {"student": {"modle": {"name": "cbr_tiny"}}},
     "unknown key student.modle; did you mean student.model?"),
    ("study", {"evaluation": {"marign": 0.1}}, "unknown key evaluation.marign; did you mean evaluation.margin?"),
    ("study", {"evaluation": {"auc_thresholds": 0.9}}, "evaluation.auc_thresholds=0.9 must be a list"),
])
def test_sections_name_the_key_and_the_file(tmp_path, kind, edit, message):
    f = tmp_path / f"{kind}.yaml"
    f.write_text(yaml.safe_dump({**yaml.safe_load(MINIMAL[kind][0]), **edit}))
    with pytest.raises(ConfigError) as e:
        load_file(kind, f)
    assert str(e.value).startswith(f"{f}: {message}"), str(e.value)
