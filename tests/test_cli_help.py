"""The CLI convention over every command: ``-w/--workspace`` everywhere, help text with the default
for every option, and commands that need no model start without importing torch."""

from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

import pytest

from transfuse.cli import build_parser, main
from transfuse.cli._common import HelpFormatter


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every command's parser, e.g. ``("study", "run")``, that has no subcommands of its own."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for action in subs:
        for name, p in action.choices.items():
            yield from _leaves(p, (*path, name))


LEAVES = dict(_leaves(build_parser()))
WITH_STORE = [k for k in LEAVES if k not in {("datasets",), ("models",), ("inits",)}]


def test_every_command_is_listed():
    assert {k[0] for k in LEAVES} >= {"train", "datasets", "models", "inits", "study", "selftrain",
                                       "analyze", "pretrain", "report", "runs"}
    assert ("study", "plan") in LEAVES and ("runs", "check") in LEAVES


@pytest.mark.parametrize("path", WITH_STORE, ids=" ".join)
def test_workspace_option_everywhere(path):
    opts = {s for a in LEAVES[path]._actions for s in a.option_strings}
    assert {"-w", "--workspace"} <= opts, f"transfuse {' '.join(path)} lacks -w/--workspace"


@pytest.mark.parametrize("path", list(LEAVES), ids=" ".join)
def test_every_option_has_help_and_default(path):
    parser = LEAVES[path]
    assert parser.formatter_class is HelpFormatter, f"transfuse {' '.join(path)}: use HelpFormatter"
    fmt = parser._get_formatter()
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._VersionAction)) or not a.option_strings:
            continue
        text = fmt._get_help_string(a) if a.help else ""
        assert a.help, f"transfuse {' '.join(path)} {a.option_strings[0]}: no help text"
        if a.required:
            continue
        assert "default" in text.lower(), (f"transfuse {' '.join(path)} {a.option_strings[0]}: "
                                            f"help does not state the default: {a.help!r}")


def test_positional_workspace_still_accepted(tmp_path, capsys):
    ws = tmp_path / "none"
    assert main(["report", str(ws), "--study", "x"]) == 2  # positional form: the same error as -w
    err_pos = capsys.readouterr().err
    assert main(["report", "-w", str(ws), "--study", "x"]) == 2
    assert capsys.readouterr().err == err_pos and str(ws) in err_pos


def test_help_formatter_states_defaults():
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--lr", type=float, default=0.01, help="learning rate")
    p.add_argument("--steps", type=int, default=200, help="steps (default 200 unless --epochs)")
    text = p.format_help()
    assert "learning rate (default: 0.01)" in text
    assert "(default 200 unless --epochs)" in text and "(default: 200)" not in text


_NO_TORCH = textwrap.dedent("""
    import contextlib, io, sys
    from transfuse.cli import main
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(sys.argv[1:])
        except SystemExit as e:
            rc = e.code
    heavy = sorted(m for m in ("torch", "monai", "timm", "torchvision", "numpy") if m in sys.modules)
    print(rc, ",".join(heavy))
""")


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    from transfuse import DataSpec, ModelSpec, RunSpec, TrainSpec, train_run

    ws = tmp_path_factory.mktemp("ws")
    spec = RunSpec(data=DataSpec(name="builtin:brain_tissue", n_train=32), model=ModelSpec(name="cbr_tiny"),
                   train=TrainSpec(steps=2, eval_every=2, batch_size=16))
    out = train_run(spec, workspace=ws, device="cpu", progress=False)
    return ws, out.record.run_id


@pytest.mark.parametrize("argv", [["--help"], ["runs", "list"], ["runs", "show", "RID"],
                                  ["runs", "show", "RID", "--json"], ["runs", "check"]],
                         ids=lambda a: " ".join(a))
def test_fast_commands_import_no_torch(small_store, argv):
    ws, rid = small_store
    argv = [rid if x == "RID" else x for x in argv] + ([] if argv == ["--help"] else ["-w", str(ws)])
    out = subprocess.run([sys.executable, "-c", _NO_TORCH, *argv], capture_output=True, text=True,
                         timeout=120)
    rc, heavy = out.stdout.strip().split(" ", 1) if " " in out.stdout.strip() else (out.stdout.strip(), "")
    assert rc == "0", out.stderr
    assert heavy == "", f"transfuse {' '.join(argv)} imported {heavy}"


def test_import_transfuse_is_lazy():
    code = ("import sys, transfuse; assert 'torch' not in sys.modules; "
            "transfuse.RunSpec; assert 'torch' not in sys.modules; "
            "transfuse.create_model; assert 'torch' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr


def test_import_models_and_analysis_skip_torchvision():
    code = ("import sys, transfuse.analysis, transfuse.models as m; "
            "assert 'torchvision' not in sys.modules and 'monai' not in sys.modules; "
            "assert 'unet_resnet18' in m.list_models(); assert 'torchvision' in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "ok", out.stderr
