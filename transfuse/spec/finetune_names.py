"""``train.finetune`` values: parsed and formatted in one place (syntax only, no model needed).

Forms: ``full``, ``linear_probe``, ``freeze:<stage>``, ``surgical:<stage>``, ``lpft:<steps>``.
Stage names are checked against the model later, by :func:`transfuse.train.finetune.plan_finetune`.
"""

from __future__ import annotations

from ..errors import ConfigError

__all__ = ["FINETUNE_FORMS", "FINETUNE_KINDS", "STAGE_KINDS", "ARG_KINDS", "finetune_parts",
           "format_finetune"]

FINETUNE_FORMS = ("full", "linear_probe", "freeze:<stage>", "surgical:<stage>", "lpft:<steps>")
#: every kind, the part before the colon of a form
FINETUNE_KINDS = tuple(f.partition(":")[0] for f in FINETUNE_FORMS)
#: kinds that take a stage name as their argument
STAGE_KINDS = ("freeze", "surgical")
#: kinds written with an argument (``kind:arg``)
ARG_KINDS = tuple(f.partition(":")[0] for f in FINETUNE_FORMS if ":" in f)


def finetune_parts(value: str) -> tuple[str, str | int | None]:
    """``train.finetune`` split into its kind and argument.

    ``"full"`` → ``("full", None)``, ``"freeze:block2"`` → ``("freeze", "block2")``,
    ``"lpft:100"`` → ``("lpft", 100)``.

    Raises:
        ConfigError: ``"train.finetune='x' is not valid; choose one of full, linear_probe, ..."``.
    """
    kind, sep, arg = str(value).partition(":")
    bad = ConfigError(f"train.finetune={value!r} is not valid; choose one of "
                      f"{', '.join(FINETUNE_FORMS)}")
    if kind in ("full", "linear_probe"):
        if sep:
            raise bad
        return kind, None
    if kind in STAGE_KINDS:
        if not arg:
            raise bad
        return kind, arg
    if kind == "lpft":
        try:
            steps = int(arg)
        except ValueError:
            raise bad from None
        if steps < 1:
            raise ConfigError(f"train.finetune={value!r}: the linear-probe phase needs >= 1 step")
        return kind, steps
    raise bad


def format_finetune(kind: str, arg: str | int | None = None) -> str:
    """The ``train.finetune`` value of ``(kind, arg)``: ``("lpft", 100)`` → ``"lpft:100"``;
    ``finetune_parts(format_finetune(k, a)) == (k, a)``.

    Raises:
        ConfigError: an unknown kind, or an argument where the kind takes none (or none where it
            needs one).
    """
    text = kind if arg is None else f"{kind}:{arg}"
    if finetune_parts(text) != (kind, arg):
        raise ConfigError(f"train.finetune: ({kind!r}, {arg!r}) is no form of "
                          f"{', '.join(FINETUNE_FORMS)}")
    return text
