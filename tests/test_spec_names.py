"""The init and fine-tuning names: parse/format round trips and one-line errors, over every
registered init, source family and fine-tuning form."""

from __future__ import annotations

import pytest

from transfuse.config import FINETUNE_FORMS as CONFIG_FORMS, finetune_parts as config_parts
from transfuse.errors import ConfigError
from transfuse.inits import INITS, parse_init
from transfuse.spec.finetune_names import (ARG_KINDS, FINETUNE_FORMS, FINETUNE_KINDS, STAGE_KINDS,
                                           finetune_parts, format_finetune)
from transfuse.spec.init_names import (InitPart, SourceRef, format_init_name, format_source,
                                       parse_init_name, parse_source, source_ref)
from transfuse.weights import list_sources


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize("name", INITS.list())
def test_every_init_round_trips(name: str) -> None:
    arg = "block1" if INITS.get(name).meta.get("arg") else None
    text = name if arg is None else f"{name}:{arg}"
    assert parse_init_name(text) == (InitPart(name, arg),)
    assert format_init_name(parse_init_name(text)) == text
    combined = f"{text}+{name}"
    assert parse_init_name(combined) == (InitPart(name, arg), InitPart(name))
    assert format_init_name(parse_init_name(combined)) == combined
    assert parse_init(combined) == [(name, arg), (name, None)]


def test_init_name_parts() -> None:
    assert parse_init_name("transfusion:block1+meanvar") == (InitPart("transfusion", "block1"),
                                                             InitPart("meanvar"))
    assert parse_init_name(" transfusion:block1 + meanvar ") == parse_init_name("transfusion:block1+meanvar")
    assert parse_init_name("slim:") == (InitPart("slim"),)
    assert str(InitPart("a", "b")) == "a:b" and str(InitPart("a")) == "a"


@pytest.mark.parametrize("bad", ["", "a++b", ":x", "+meanvar", "meanvar+"])
def test_init_name_empty_part(bad: str) -> None:
    with pytest.raises(ConfigError, match="empty part") as e:
        parse_init_name(bad)
    _one_line(e)
    with pytest.raises(ConfigError, match="empty part"):
        parse_init(bad)


def test_unknown_init_is_the_registrys_error() -> None:
    parse_init_name("no_such_init")  # syntax only
    with pytest.raises(ConfigError) as e:
        parse_init("no_such_init")
    _one_line(e)


@pytest.mark.parametrize("family", list_sources())
def test_every_source_family_round_trips(family: str) -> None:
    text = f"{family}:some_arg:with:colons"
    ref = parse_source(text)
    assert ref == SourceRef(family, "some_arg:with:colons")
    assert format_source(ref) == text == str(ref)
    assert source_ref(text) == ref


def test_source_shortcuts_and_lenient_split() -> None:
    assert parse_source("weights/ckpt.pth") == SourceRef("file", "weights/ckpt.pth")
    assert parse_source("run:abc") == SourceRef("run", "abc")
    assert source_ref("random") is None
    assert source_ref("run:") == SourceRef("run", "")


@pytest.mark.parametrize("bad", ["imagenet", "imagenet:", "", "ckpt.npz"])
def test_source_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="family:argument") as e:
        parse_source(bad)
    _one_line(e)


_EXAMPLES = {"full": ("full", None), "linear_probe": ("linear_probe", None),
             "freeze:<stage>": ("freeze", "block2"), "surgical:<stage>": ("surgical", "block1"),
             "lpft:<steps>": ("lpft", 100)}


@pytest.mark.parametrize("form", FINETUNE_FORMS)
def test_every_finetune_form_round_trips(form: str) -> None:
    kind, arg = _EXAMPLES[form]
    text = format_finetune(kind, arg)
    assert finetune_parts(text) == (kind, arg)
    assert format_finetune(*finetune_parts(text)) == text
    assert kind in FINETUNE_KINDS


def test_finetune_reexported_from_config() -> None:
    assert CONFIG_FORMS is FINETUNE_FORMS and config_parts is finetune_parts
    assert set(_EXAMPLES) == set(FINETUNE_FORMS)
    assert FINETUNE_KINDS == ("full", "linear_probe", "freeze", "surgical", "lpft")
    assert ARG_KINDS == ("freeze", "surgical", "lpft") and set(STAGE_KINDS) < set(ARG_KINDS)


@pytest.mark.parametrize("bad", ["", "partial", "full:x", "linear_probe:1", "freeze", "freeze:",
                                 "surgical:", "lpft", "lpft:x", "lpft:1.5"])
def test_finetune_errors(bad: str) -> None:
    with pytest.raises(ConfigError, match="is not valid; choose one of full, linear_probe") as e:
        finetune_parts(bad)
    _one_line(e)


def test_finetune_lpft_needs_a_step() -> None:
    with pytest.raises(ConfigError, match=">= 1 step") as e:
        finetune_parts("lpft:0")
    _one_line(e)


@pytest.mark.parametrize("kind, arg", [("full", "x"), ("freeze", None), ("nope", None), ("lpft", "100")])
def test_format_finetune_errors(kind: str, arg: object) -> None:
    with pytest.raises(ConfigError) as e:
        format_finetune(kind, arg)  # type: ignore[arg-type]
    _one_line(e)
