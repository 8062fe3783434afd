"""Live metrics of a running run: ``runs/<id>/metrics.csv`` and optional TensorBoard events.

The store (SQLite) stays the record; these are views another process can read while the run is
going. :func:`live_log` returns the ``log(step, split, metrics)`` callback ``fit`` calls after every
evaluation:

- ``metrics.csv`` — long format, header ``step,split,metric,value``, one row per metric of each
  evaluation (``train``: ``loss``, ``lr``; ``val``: ``loss``, ``auc``, ``acc``, ``auc/<class>`` …,
  or ``dice`` … for segmentation). Values are written with ``repr`` so they read back exactly as
  the store holds them; an undefined value (NaN, NULL in the store) is an empty field. Rows are
  appended and flushed at every evaluation; a (re)started run truncates the file. The test
  metrics are not in it (they are in the store when the run finishes).
- TensorBoard (``tensorboard=True``) — scalars tagged ``<split>/<metric>`` under
  ``WORKSPACE/tensorboard/<run_id>/``, flushed at every evaluation; a restarted run removes the
  event files of its earlier attempt.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["METRICS_CSV", "CSV_HEADER", "TENSORBOARD_HINT", "check_tensorboard", "MetricsCSV",
           "read_metrics_csv", "live_log", "tensorboard_dir"]

METRICS_CSV = "metrics.csv"
CSV_HEADER = ("step", "split", "metric", "value")
TENSORBOARD_HINT = "--tensorboard needs the tensorboard package: pip install 'transfuse[tensorboard]'"

LogFn = Callable[[int, str, dict[str, float]], None]


def check_tensorboard() -> None:
    """Raise a one-line :class:`ConfigError` unless ``torch.utils.tensorboard`` can be imported."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(TENSORBOARD_HINT) from None


def tensorboard_dir(workspace: str | Path, run_id: str) -> Path:
    """``WORKSPACE/tensorboard/<run_id>``: point ``tensorboard --logdir WORKSPACE/tensorboard`` at
    the parent to compare runs."""
    return Path(workspace).expanduser() / "tensorboard" / run_id


class MetricsCSV:
    """Appends evaluations to ``path`` (created fresh, with its header, on construction).

    Each :meth:`write` opens, appends and closes the file, so a reader never waits for a buffer
    and a crash loses at most the evaluation being written.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(",".join(CSV_HEADER) + "\n")

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Append one row per metric of the evaluation at ``step`` on ``split``."""
        lines = []
        for name, v in metrics.items():
            v = float(v)
            lines.append(f"{int(step)},{split},{_csv_field(name)},{repr(v) if math.isfinite(v) else ''}\n")
        with open(self.path, "a") as f:  # one write: a reader sees whole evaluations or none
            f.write("".join(lines))


def _csv_field(s: str) -> str:
    return f'"{s.replace(chr(34), chr(34) * 2)}"' if any(c in s for c in ',"\n') else s


def read_metrics_csv(path: str | Path) -> list[tuple[int, str, str, float | None]]:
    """``(step, split, metric, value)`` rows of a ``metrics.csv`` (possibly still being written:
    a last line without its newline is left out); ``value`` is ``None`` when undefined."""
    import csv
    import io

    text = Path(path).read_text()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = list(csv.reader(io.StringIO(text)))
    return [(int(s), sp, n, float(v) if v else None) for s, sp, n, v in rows[1:]]


class _TensorBoard:
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if log_dir.is_dir():  # a restarted run: drop the earlier attempt's curves
            for p in log_dir.glob("events.out.tfevents.*"):
                p.unlink(missing_ok=True)
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        for name, v in metrics.items():
            if math.isfinite(float(v)):
                self.writer.add_scalar(f"{split}/{name}", float(v), int(step))
        self.writer.flush()


class LiveLog:
    """The ``log`` callback of ``fit``: the store first (the record), then the live views."""

    def __init__(self, store: Any, run_id: str, *, run_dir: Path, tensorboard: Path | None) -> None:
        self.store, self.run_id = store, run_id
        self.csv = MetricsCSV(Path(run_dir) / METRICS_CSV)
        self.tb = _TensorBoard(tensorboard) if tensorboard is not None else None

    def __call__(self, step: int, split: str, metrics: dict[str, float]) -> None:
        self.store.log_metrics(self.run_id, step, split, metrics)
        self.csv.write(step, split, metrics)
        if self.tb is not None:
            self.tb.write(step, split, metrics)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.writer.close()


def live_log(store: Any, run_id: str, *, run_dir: Path, workspace: str | Path,
             tensorboard: bool = False) -> LiveLog:
    """The logging callback for one run (see the module docstring).

    Args:
        store: the :class:`~transfuse.store.Store` the run is registered in.
        run_id: the run; run_dir: its folder (``metrics.csv`` goes there).
        workspace: the workspace (TensorBoard events go to :func:`tensorboard_dir`).
        tensorboard: also write TensorBoard event files.
    """
    tb = tensorboard_dir(workspace, run_id) if tensorboard else None
    return LiveLog(store, run_id, run_dir=run_dir, tensorboard=tb)
