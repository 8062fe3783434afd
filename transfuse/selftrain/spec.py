"""Chain files: a teacher run spec plus the self-training settings, from one YAML file.

.. code-block:: yaml

    name: selftrain-pneumonia
    base:                          # the teacher's run spec (data, model, init, train)
      data: {name: "medmnist:pneumoniamnist@28", data_root: ../shared/data/medmnist}
      model: {name: cbr_tiny}
      init: {name: random}         # any init strategy (pretrained, meanvar, ...)
      train: {steps: 300, lr: 0.02, batch_size: 64, eval_every: 25}
    labelled_fraction: 0.01        # stratified labelled subset of the training split
    labelled_subset: per_seed      # per_seed: a different subset per seed; fixed: one subset
    generations: 3                 # students trained; each becomes the next teacher
    seeds: [0, 1, 2]               # independent chains
    unlabelled_limit: null         # cap the unlabelled pool (seeded sample); null = all of it
    pseudo: {mode: soft, temperature: 1.0, threshold: 0.5, per_class: null, balance: true}
    student:
      model: {name: cbr_small}     # equal or larger; default: the teacher's
      init: {name: random}         # default: the teacher's
      train: {steps: 600}          # overrides of base.train
      noise: {augment: true, ops: 2, magnitude: 9, dropout: 0.5, drop_path: 0.2}
      finetune: {steps: 100, lr: 0.005}   # base.train overrides; on labelled data only; or null
    baselines: [labelled, full]    # supervised student-architecture runs: labelled subset
                                   # (base.train), 100 % of the labels (student.train)
    smoke: {train.steps: 4}        # dotted overrides for --smoke (defaults in SMOKE)

Every error names the file and the key. Run specs come out deterministic, so a chain's run ids
are known before anything runs: generation 0 (the teacher) is a plain supervised run on the
labelled subset; generation ``n`` carries ``parent = {"teacher": <run id of generation n-1>,
"generation": n, ...settings}`` and therefore a different id for every teacher.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, make_dataclass, replace
from pathlib import Path
from typing import Any

from ..config import RunSpec, TrainSpec, read_yaml_file, run_id, spec_from_dict
from ..config import where as _where
from ..errors import ConfigError, check_name
from ..spec.fields import spec_field, validate
from .noise import NoiseSpec
from .pseudo import PseudoSpec

__all__ = ["ChainSpec", "load_chain", "chain_from_dict", "teacher_spec", "student_spec",
           "baseline_specs", "finetune_spec", "SMOKE"]

BASELINES = ("labelled", "full")
SMOKE: dict[str, Any] = {"train.steps": 4, "train.eval_every": 2, "train.batch_size": 16,
                         "train.warmup_steps": 0, "finetune.steps": 2, "generations": 2,
                         "unlabelled_limit": 256, "full.n_train": 64}


@dataclass(frozen=True)
class StudentSection:
    """The keys of a chain file's ``student`` section (values read by :func:`student_spec`:
    run sections of the student, its noise, its fine-tuning)."""

    model: dict[str, Any] | None = None
    init: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    noise: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None


def _dotted_table(name: str, keys: list[str]) -> type:
    """A dataclass whose (nested) fields are the dotted ``keys`` (``train.steps`` → a ``train``
    section with a ``steps`` field), values any: the key table of a dotted-overrides section."""
    heads = dict.fromkeys(k.split(".", 1)[0] for k in keys)
    fields_: list[tuple[str, Any, Any]] = []
    for h in heads:
        sub = [k.split(".", 1)[1] for k in keys if k.startswith(h + ".")]
        if sub:
            tp = _dotted_table(f"{name}_{h}", sub)
            fields_.append((h, tp, field(default_factory=tp)))
        else:
            fields_.append((h, Any, None))
    return make_dataclass(name, fields_, frozen=True, namespace={"__module__": __name__})


def _nest(d: dict[str, Any]) -> dict[str, Any]:
    """``{"train.steps": 4}`` → ``{"train": {"steps": 4}}`` (a key with no dot kept as is)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        head, _, rest = str(k).partition(".")
        if rest and isinstance(out.setdefault(head, {}), dict):
            out[head] = {**out[head], **_nest({rest: v})}
        elif not rest:
            out[head] = v
    return out


#: The keys of a chain file's ``smoke`` section: those of :data:`SMOKE` (values any).
SmokeSection = _dotted_table("SmokeSection", list(SMOKE))


@dataclass(frozen=True)
class ChainSpec:
    """A parsed chain file (see the module docstring for the keys).

    The fields a file sets are its top-level keys (``noise`` and ``finetune`` are read from
    ``student``; ``path`` and ``full_n_train`` are set by the loader and ``shrink``):
    :func:`chain_from_dict` checks the top level against them with
    :func:`transfuse.spec.fields.validate`.
    """

    name: str
    base: dict[str, Any]
    labelled_fraction: float
    generations: int = spec_field(3, ge=1)
    seeds: tuple[int, ...] = (0,)
    labelled_subset: str = spec_field("per_seed", choices=("per_seed", "fixed"),
                                      words="per_seed or fixed")
    unlabelled_limit: int | None = spec_field(None, ge=1, hint=" or null")
    pseudo: PseudoSpec = field(default_factory=PseudoSpec)
    noise: NoiseSpec = spec_field(default_factory=NoiseSpec, file_key=False)
    student: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] | None = spec_field(None, file_key=False)
    baselines: tuple[str, ...] = BASELINES
    smoke: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    path: str = spec_field("", file_key=False)
    # set by ``shrink``: the smoke's "100 %" baseline is small
    full_n_train: int | None = spec_field(None, file_key=False)

    def shrink(self) -> ChainSpec:
        """The ``--smoke`` chain: first seed, ≤ 2 generations, a few steps, a small pool."""
        o = {**SMOKE, **self.smoke}
        train = {k.split(".", 1)[1]: v for k, v in o.items() if k.startswith("train.")}

        def small(t: dict[str, Any]) -> dict[str, Any]:
            t = dict(t)
            for k, v in train.items():
                t[k] = min(v, t[k]) if k in ("steps", "batch_size", "eval_every") and t.get(k) else v
            if "steps" in train:
                t["epochs"] = None
            return t

        base = copy.deepcopy(self.base)
        base["train"] = small(base.get("train") or {})
        student = {**copy.deepcopy(self.student), "train": small(self.student.get("train") or {})}
        ft = None
        if self.finetune is not None:
            ft = {**small(self.finetune), "steps": o["finetune.steps"], "epochs": None}
        limit = min(o["unlabelled_limit"], self.unlabelled_limit or o["unlabelled_limit"])
        return replace(self, name=f"{self.name}-smoke", base=base, student=student, finetune=ft,
                       seeds=self.seeds[:1], generations=min(o["generations"], self.generations),
                       unlabelled_limit=limit, full_n_train=o["full.n_train"])


def _mapping(v: Any, where: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(v).__name__}")
    return dict(v)


def _dataclass(cls: type, d: Any, path: str, key: str) -> Any:
    try:  # keys, types and the dataclass's own checks; an empty section is the default
        return validate(cls, {} if d is None else d, where=key)
    except ConfigError as e:
        raise ConfigError(_where(path, str(e))) from None


def _section(cls: type, d: Any, path: str, key: str, *, dotted: bool = False) -> dict[str, Any]:
    """A mapping section's keys (did-you-mean) checked against ``cls``'s fields (``dotted``:
    its keys are dotted paths, ``train.steps``); returned as given (its values are read by
    :func:`student_spec` and :meth:`ChainSpec.shrink`)."""
    d = _mapping(d, _where(path, key))
    try:
        validate(cls, _nest(d) if dotted else d, where=key, partial=True)
    except ConfigError as e:
        raise ConfigError(_where(path, str(e))) from None
    return d


def chain_from_dict(raw: Any, *, path: str = "") -> ChainSpec:
    """Validate a chain mapping (parsed YAML) into a :class:`ChainSpec`.

    Raises:
        ConfigError: an unknown, missing or invalid key; the message names ``path`` and the key.
    """
    if isinstance(raw, dict):  # an empty section ("student:") is the default
        raw = {k: v for k, v in raw.items() if not (v is None and k in ("pseudo", "student", "smoke"))}
    try:  # keys, types, choices and bounds of the top level: ChainSpec's field table
        raw = validate(ChainSpec, raw, where="", partial=True, required=True, typed=True)
    except ConfigError as e:
        raise ConfigError(_where(path, str(e))) from None
    name = raw["name"]
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(_where(path, "name must be a non-empty string"))
    try:  # the chain is stored and reported under this name (report-<name>.html)
        check_name(name.strip(), field="name")
    except ConfigError as e:
        raise ConfigError(_where(path, str(e))) from None
    base = _mapping(raw["base"], _where(path, "base"))
    data = _mapping(base.get("data"), _where(path, "base.data"))
    for k in ("fraction", "n_train"):
        if data.get(k) is not None:
            raise ConfigError(_where(path, f"base.data.{k} is set by the chain; use labelled_fraction"))
    frac = raw["labelled_fraction"]
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
        raise ConfigError(_where(path, f"labelled_fraction={frac!r} must be a number in (0, 1)"))
    gens = raw.get("generations", 3)
    seeds = raw.get("seeds", [0])
    if not isinstance(seeds, (list, tuple)) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(_where(path, "seeds must be a non-empty list of integers"))
    subset = raw.get("labelled_subset", "per_seed")
    limit = raw.get("unlabelled_limit")
    student = _section(StudentSection, raw.get("student"), path, "student")
    baselines = raw.get("baselines", list(BASELINES)) or []
    if not isinstance(baselines, (list, tuple)) or any(b not in BASELINES for b in baselines):
        raise ConfigError(_where(path, f"baselines must be a list of {', '.join(BASELINES)}"))
    smoke = _section(SmokeSection, raw.get("smoke"), path, "smoke", dotted=True)
    finetune = student.pop("finetune", None)
    chain = ChainSpec(
        name=name.strip(), base=base, labelled_fraction=float(frac), generations=gens,
        seeds=tuple(seeds), labelled_subset=subset, unlabelled_limit=limit,
        pseudo=_dataclass(PseudoSpec, raw.get("pseudo"), path, "pseudo"),
        noise=_dataclass(NoiseSpec, student.pop("noise", None), path, "student.noise"),
        student=student, finetune=None if finetune is None else _mapping(finetune, _where(path, "student.finetune")),
        baselines=tuple(baselines), smoke=smoke, description=str(raw.get("description", "")),
        path=path)
    _validate_specs(chain)
    return chain


def _validate_specs(chain: ChainSpec) -> None:
    """Build every kind of spec once so a bad key fails now, with the file named."""
    try:
        t = teacher_spec(chain, seed=chain.seeds[0])
    except ConfigError as e:
        raise ConfigError(_where(chain.path, f"base: {e}")) from None
    try:
        student_spec(chain, seed=chain.seeds[0], generation=1, teacher=run_id(t))
    except ConfigError as e:
        raise ConfigError(_where(chain.path, f"student: {e}")) from None
    try:
        finetune_spec(chain)
    except ConfigError as e:
        raise ConfigError(_where(chain.path, f"student.finetune: {e}")) from None


def load_chain(path: str | Path) -> ChainSpec:
    """Read and validate a chain YAML file (``yaml.safe_load``).

    Raises:
        ConfigError: unreadable file or a bad key/value; the message names the file and key.
    """
    return chain_from_dict(read_yaml_file(path, what="chain"), path=str(path))


def _data(chain: ChainSpec, seed: int) -> dict[str, Any]:
    data = dict(chain.base.get("data") or {})
    if chain.labelled_subset == "per_seed":  # a different labelled subset for every seed
        data["split_seed"] = int(data.get("split_seed", 0)) + seed
    data["fraction"] = chain.labelled_fraction
    return data


def teacher_spec(chain: ChainSpec, *, seed: int) -> RunSpec:
    """Generation 0: the base run, supervised on the labelled subset (a plain run, no parent)."""
    d = copy.deepcopy(chain.base)
    d.update(data=_data(chain, seed), seed=seed, study=chain.name)
    return spec_from_dict(d)


def _student_dict(chain: ChainSpec, seed: int) -> dict[str, Any]:
    d = copy.deepcopy(chain.base)
    d.update(data=_data(chain, seed), seed=seed, study=chain.name)
    if "model" in chain.student:
        d["model"] = _mapping(chain.student["model"], "student.model")
    if "init" in chain.student:
        d["init"] = _mapping(chain.student["init"], "student.init")
    d["train"] = {**(d.get("train") or {}), **_mapping(chain.student.get("train"), "student.train")}
    return d


def student_spec(chain: ChainSpec, *, seed: int, generation: int, teacher: str) -> RunSpec:
    """Generation ``n >= 1``: the noisy student of run ``teacher`` (its id decides the child's)."""
    ft = finetune_spec(chain)
    d = _student_dict(chain, seed)
    d["parent"] = {"teacher": teacher, "generation": generation, "method": "noisy_student",
                   "pseudo": chain.pseudo.to_dict(), "noise": chain.noise.to_dict(),
                   "unlabelled_limit": chain.unlabelled_limit,
                   "finetune": None if ft is None else asdict(ft)}
    return spec_from_dict(d)


def baseline_specs(chain: ChainSpec, *, seed: int) -> dict[str, RunSpec]:
    """Supervised runs (no noise) of the student's architecture: ``labelled`` subset, ``full`` (100 %).

    Each gets the training budget of the chain member that sees the same images: ``labelled``
    uses ``base.train`` like the teacher — so when the student is the teacher's architecture it
    *is* generation 0 (same spec, same run id, trained once) — and ``full`` uses the students'
    settings (they see the whole training split too, with pseudo-labels instead of labels).
    """
    out = {}
    for b in chain.baselines:
        d = _student_dict(chain, seed)
        if b == "labelled":
            d["train"] = copy.deepcopy(chain.base.get("train") or {})
        else:
            d["data"] = {**d["data"], "fraction": None, "n_train": chain.full_n_train}
        out[b] = spec_from_dict(d)
    return out


def finetune_spec(chain: ChainSpec) -> TrainSpec | None:
    """Training settings of the fine-tuning on labelled data (``base.train`` + overrides)."""
    if chain.finetune is None:
        return None
    d = {**(chain.base.get("train") or {}), **chain.finetune}
    return spec_from_dict({"data": {"name": "x"}, "model": {"name": "x"}, "train": d}).train
