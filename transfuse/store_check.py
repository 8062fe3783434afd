"""``transfuse runs check``: the store's integrity, finished runs' files, leftover temporaries.

Read-only: the store is opened read-only and nothing is changed.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import StoreError
from .store import RUN_FILES, pid_alive, store_error

__all__ = ["StoreCheck", "check_store"]


@dataclass(frozen=True)
class StoreCheck:
    """What :func:`check_store` found.

    Attributes:
        path: the store file.
        integrity: problems reported by SQLite's ``PRAGMA integrity_check`` (empty when ok).
        missing: finished run id → files of :data:`RUN_FILES` its folder lacks.
        temporary: leftover ``*.tmp`` files anywhere in the workspace (writes interrupted by a
            kill: checkpoints, exports, reports).
        stale: ids of ``running`` runs whose owner process is gone.
        runs_checked: the ``runs`` table could be read (else ``missing`` is unknown).
    """

    path: Path
    integrity: tuple[str, ...]
    missing: dict[str, tuple[str, ...]]
    temporary: tuple[str, ...]
    stale: tuple[str, ...]
    runs_checked: bool = True

    @property
    def ok(self) -> bool:
        return not (self.integrity or self.missing)


def check_store(workspace: str | Path) -> StoreCheck:
    """Check a workspace: SQLite's integrity check, then every finished run's folder.

    The store is opened read-only and nothing is changed.

    Raises:
        StoreError: there is no store, or the file is not a SQLite database at all.
    """
    ws = Path(workspace).expanduser()
    path = ws / "transfuse.db"
    if not path.is_file():
        raise StoreError(f"no run store in {ws} ({path} not found); pass the right --workspace")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    except sqlite3.Error as e:
        raise (store_error(e, path) or e) from None
    try:
        try:
            problems = tuple(r[0] for r in con.execute("PRAGMA integrity_check"))
        except sqlite3.DatabaseError as e:
            err = store_error(e, path)
            if err is None or "not a SQLite database" in str(err):
                raise (err or e) from None
            problems = (str(e),)
        problems = tuple(p for p in problems if p != "ok")
        try:
            con.row_factory = sqlite3.Row
            rows = [dict(r) for r in con.execute(
                "SELECT run_id, status, run_dir, owner, heartbeat FROM runs ORDER BY created")]
        except sqlite3.DatabaseError as e:
            return StoreCheck(path, problems or (str(e),), {}, (), (), runs_checked=False)
    finally:
        con.close()
    missing: dict[str, tuple[str, ...]] = {}
    stale = []
    now = time.time()
    for r in rows:
        if r["status"] == "running" and not pid_alive(r["owner"], r["heartbeat"], now):
            stale.append(r["run_id"])
        if r["status"] != "finished":
            continue
        folder = ws / "runs" / r["run_id"]  # not the recorded path: the store may have moved
        lacking = tuple(f for f in RUN_FILES if not (folder / f).is_file())
        if lacking:
            missing[r["run_id"]] = lacking
    temporary = tuple(sorted(str(p) for p in ws.rglob("*.tmp") if p.is_file()))
    return StoreCheck(path, problems, missing, temporary, tuple(stale))
