"""``transfuse`` command line: parse → spec → library call. No logic lives here.

One module per command group (``train``, ``catalog``: datasets/models/inits, ``study``,
``report``, ``runs``, ``selftrain``, ``analyze``, ``pretrain``, ...); each has ``add_parser(sub)``,
which registers its parsers with ``set_defaults(func=handler)``. Building the parser imports no
torch, MONAI or timm: handlers import the library when they run.

Every user error (:class:`~transfuse.errors.TransfuseError`) prints one line, ``error: ...``, and
exits with status 2; a run that diverged (NaN/inf, stored as ``failed``) exits with status 3;
SIGTERM stops after a checkpoint with status 75, Ctrl-C (SIGINT) with status 130.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ..errors import (EXIT_DIVERGED, EXIT_ERROR, EXIT_INTERRUPTED, EXIT_PREEMPTED, DivergedError,
                      PreemptedError, TransfuseError)

__all__ = ["main", "build_parser", "COMMAND_MODULES"]

#: Command-group modules of this package, in the order ``transfuse --help`` lists them.
COMMAND_MODULES = ("train", "catalog", "study", "selftrain", "analyze", "pretrain", "report", "runs", "predict", "export",
                   "rank")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="transfuse", description="Transfer learning for medical imaging.")
    parser.add_argument("--version", action="version", version=f"transfuse {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f".{name}", __name__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        a = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors already
        return int(e.code or 0)
    try:
        return a.func(a)
    except DivergedError as e:  # stored as a failed run; its own status so scripts can retry
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except PreemptedError as e:  # SIGTERM after a checkpoint: rerunning resumes (Slurm requeue)
        from .._signals import stop_signal

        print(f"error: {e}", file=sys.stderr)
        return EXIT_INTERRUPTED if stop_signal() == "Ctrl-C" else EXIT_PREEMPTED
    except TransfuseError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:  # output piped into `head` or similar: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:  # Ctrl-C outside a run, or twice: stored runs stay as they are
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
