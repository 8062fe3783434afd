"""What every command shares: the workspace option, device/progress flags and a help formatter
that states each option's default."""

from __future__ import annotations

import argparse

__all__ = ["HelpFormatter", "add_workspace", "workspace_of", "add_device", "add_progress",
           "add_tensorboard", "add_overrides", "DEFAULT_WORKSPACE"]

DEFAULT_WORKSPACE = "workspace"


class HelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to an option's help unless the help already names its default.

    Flags (``store_true``) and options whose default is ``None`` state their default in words in
    their help text (``tests/test_cli_help.py`` checks that every option does).
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS):
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text  # a required positional has no default
        return f"{text} (default: %(default)s)"


def add_workspace(p: argparse.ArgumentParser, *, positional: bool = False,
                  help: str = "run store folder") -> None:
    """``-w/--workspace`` on every command; ``positional=True`` also accepts the older
    ``transfuse CMD WORKSPACE`` form (resolve with :func:`workspace_of`)."""
    if positional:
        p.add_argument("workspace_pos", nargs="?", metavar="WORKSPACE",
                       help=f"{help}, as a positional (same as -w; default ./{DEFAULT_WORKSPACE})")
    p.add_argument("-w", "--workspace", default=None,
                   help=f"{help} (default ./{DEFAULT_WORKSPACE})")


def workspace_of(a: argparse.Namespace) -> str:
    """The workspace a command was given (``-w`` wins over the positional form)."""
    return a.workspace or getattr(a, "workspace_pos", None) or DEFAULT_WORKSPACE


def add_device(p: argparse.ArgumentParser, *, default: str = "auto") -> None:
    p.add_argument("--device", help=f"cpu, cuda or cuda:N (default: {default})")


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")


def add_mlflow(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlflow", nargs="?", const="", default=None, metavar="URI",
                   help="also log to MLflow when done: parameters, metrics at every evaluation, "
                        "test metrics, checkpoint (needs pip install 'transfuse[mlflow]'); without "
                        "URI the local file store WORKSPACE/mlruns (default: off)")


def add_tensorboard(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard events to WORKSPACE/tensorboard/RUN_ID/ (needs "
                        "pip install 'transfuse[tensorboard]'; default: off, metrics.csv only)")


def add_overrides(p: argparse.ArgumentParser, *, what: str = "the run spec",
                  example: str = "--set train.lr=0.05 --set data.n_train=500") -> None:
    """``--set KEY=VALUE`` (repeatable), typed against the spec's fields (:mod:`transfuse.overrides`)."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set",
                   help=f"override a key of {what}, typed against its field (int, float, bool, "
                        f"none, lists as a,b or [a, b]); repeatable, e.g. {example} "
                        "(default: none)")
