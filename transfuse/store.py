"""The run store: one SQLite file per workspace (``<workspace>/transfuse.db``, WAL mode).

Tables:

- ``runs``: one row per run — ``run_id`` (hash of the canonical spec), the spec JSON, status
  (``running`` / ``finished`` / ``failed``), timings, environment, dataset and model info, the
  init report and the run folder (``<workspace>/runs/<run_id>/`` with the checkpoints).
- ``metrics``: ``(run_id, step, split, name, value)``.
- ``results``: derived results of later stages (representation analysis, self-training lineage,
  …) as ``(kind, key) → JSON payload``, tagged with a study and/or run. They are recomputable from
  the runs, so they may be replaced; runs and metrics never are.

Guarantees, enforced by the database itself (triggers), not only by this module:

- a finished run is never modified or deleted, and no metric is added to it;
- a run becomes ``finished`` in the same transaction that writes its test metrics, so a crash
  never leaves a finished run with missing results. A run left ``running`` by a crash is restarted
  from scratch (its partial metrics removed) the next time it is run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .atomic import write_bytes
from .config import RunSpec, run_id as compute_run_id
from .errors import StoreError, TransfuseError

__all__ = ["Store", "RunRecord", "RunBundle", "RunFinishedError", "RunBusyError", "StoreLockedError",
           "store_error", "RUN_FILES"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    study TEXT,
    spec TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    wall_seconds REAL,
    env TEXT,
    data_info TEXT,
    model_info TEXT,
    init_report TEXT,
    summary TEXT,
    error TEXT,
    run_dir TEXT,
    owner TEXT,
    heartbeat REAL
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    step INTEGER NOT NULL,
    split TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, step, split, name)
);
CREATE TABLE IF NOT EXISTS results (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    study TEXT,
    run_id TEXT,
    payload TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE TRIGGER IF NOT EXISTS finished_runs_are_final BEFORE UPDATE ON runs
    WHEN OLD.status = 'finished'
    BEGIN SELECT RAISE(ABORT, 'run is finished and cannot be modified'); END;
CREATE TRIGGER IF NOT EXISTS finished_runs_stay BEFORE DELETE ON runs
    WHEN OLD.status = 'finished'
    BEGIN SELECT RAISE(ABORT, 'run is finished and cannot be deleted'); END;
CREATE TRIGGER IF NOT EXISTS no_metrics_after_finish BEFORE INSERT ON metrics
    WHEN (SELECT status FROM runs WHERE run_id = NEW.run_id) = 'finished'
    BEGIN SELECT RAISE(ABORT, 'run is finished; metrics are final'); END;
CREATE TRIGGER IF NOT EXISTS finished_metrics_stay BEFORE DELETE ON metrics
    WHEN (SELECT status FROM runs WHERE run_id = OLD.run_id) = 'finished'
    BEGIN SELECT RAISE(ABORT, 'run is finished; metrics are final'); END;
CREATE TRIGGER IF NOT EXISTS finished_metrics_unchanged BEFORE UPDATE ON metrics
    WHEN (SELECT status FROM runs WHERE run_id = OLD.run_id) = 'finished'
      OR (SELECT status FROM runs WHERE run_id = NEW.run_id) = 'finished'
    BEGIN SELECT RAISE(ABORT, 'run is finished; metrics are final'); END;
"""


class RunFinishedError(TransfuseError):
    """The run already finished; its results are final."""


class RunBusyError(TransfuseError):
    """Another live process is running this run."""


class StoreLockedError(StoreError):
    """Another process held the store's write lock for longer than :data:`LOCK_TIMEOUT`."""


#: Seconds a write waits for another process's write lock before giving up (exit 2, naming it).
LOCK_TIMEOUT = 60.0


def _holders(path: Path) -> str:
    """``" (pid 123: python -m transfuse train ...)"``: the other processes that have the store
    file open (Linux ``/proc``; empty where unknown)."""
    found = []
    targets = {str(path), f"{path}-wal", f"{path}-shm"}
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
    except OSError:
        return ""
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if not any(os.readlink(f"/proc/{pid}/fd/{fd}") in targets for fd in fds):
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found.append(f"pid {pid}: {cmd[:80]}")
    return f" ({'; '.join(found[:3])})" if found else ""


STALE_SECONDS = 15 * 60  # a run on another host with no heartbeat for this long is abandoned
RUN_FILES = ("init.pt", "best.pt", "last.pt", "test_predictions.npz")  # a finished run's folder


def store_error(e: sqlite3.Error, path: Path) -> StoreError | None:
    """A one-line :class:`StoreError` for SQLite errors that mean the store file itself is
    unusable (not a database, corrupt, read-only, full disk, I/O); ``None`` for any other error
    (constraint and trigger violations stay what they are); a lock held past
    :data:`LOCK_TIMEOUT` is a :class:`StoreLockedError` naming the process that holds it."""
    name = getattr(e, "sqlite_errorname", "") or ""
    msg = str(e)
    ws = path.parent
    if name == "SQLITE_NOTADB" or "not a database" in msg:
        return StoreError(f"{path} is not a SQLite database, so it is not a transfuse run store; "
                          f"move it aside (mv {path} {path}.bad) to start a new store there, or "
                          "pass the right --workspace")
    if name == "SQLITE_CORRUPT" or "malformed" in msg:
        return StoreError(f"{path} is corrupt ({msg}); see `transfuse runs check -w {ws}`, then "
                          f"restore a backup or salvage it (sqlite3 {path} .recover | sqlite3 "
                          f"{ws / 'recovered.db'}) and put the result in place of transfuse.db")
    if name.startswith("SQLITE_BUSY") or "database is locked" in msg:
        return StoreLockedError(f"{path} is locked: another process{_holders(path)} held its write "
                                f"lock for over {LOCK_TIMEOUT:g} s; let it finish or stop it, then "
                                "run again")
    if name == "SQLITE_FULL" or "disk is full" in msg:
        return StoreError(f"cannot write {path}: the disk is full; free space on {ws} and run again")
    if (name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM"))
            or "readonly" in msg or "unable to open" in msg):
        return StoreError(f"cannot use {path} ({msg}): the workspace is read-only or not "
                          f"accessible; make {ws} writable or pass another --workspace")
    if name.startswith("SQLITE_IOERR") or "disk I/O error" in msg:
        return StoreError(f"cannot read or write {path} ({msg}); check the disk (full, removed, or a "
                          "network filesystem without file locking) and run again")
    return None


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(owner: str | None, heartbeat: float | None, now: float) -> bool:
    """Is the process that marked a run ``running`` still there?"""
    if not owner:
        return False
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname():
        try:
            os.kill(int(pid), 0)
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            return True
        return True
    return heartbeat is not None and now - heartbeat < STALE_SECONDS


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs`` with its JSON columns decoded."""

    run_id: str
    study: str | None
    spec: dict[str, Any]
    status: str
    created: float
    started: float | None
    finished: float | None
    wall_seconds: float | None
    env: dict[str, Any]
    data_info: dict[str, Any]
    model_info: dict[str, Any]
    init_report: dict[str, Any]
    summary: dict[str, Any]
    error: str | None
    run_dir: str | None
    owner: str | None = None
    heartbeat: float | None = None

    @property
    def state(self) -> str:
        """The status, with ``stale`` for a ``running`` run whose owner process is gone (killed
        or crashed): running it again (same command) restarts it from scratch."""
        if self.status == "running" and not pid_alive(self.owner, self.heartbeat, time.time()):
            return "stale"
        return self.status


@dataclass(frozen=True)
class RunBundle:
    """A run as plain data, to move it between workspaces (a Ray worker's scratch store and the
    driver's): its ``runs`` row (JSON columns decoded), its metric rows and files of its folder.

    Attributes:
        run_id: the run.
        row: ``runs`` columns except ``run_id``, ``run_dir``, ``owner`` and ``heartbeat``.
        metrics: ``(step, split, name, value)`` rows.
        files: path relative to the run folder → content (checkpoints of a few hundred MB too).
    """

    run_id: str
    row: dict[str, Any]
    metrics: list[tuple[int, str, str, float | None]]
    files: dict[str, bytes]


_BUNDLE_COLUMNS = ("study", "spec", "status", "created", "started", "finished", "wall_seconds",
                   "env", "data_info", "model_info", "init_report", "summary", "error")
_JSON_COLUMNS = ("spec", "env", "data_info", "model_info", "init_report", "summary")


def _finish(con: sqlite3.Connection, run_id: str, *, step: int, test_metrics: dict[str, Any],
            summary: dict[str, Any], finished: float, wall_seconds: float | None = None) -> None:
    """Write the test metrics and mark the run finished (inside the caller's transaction): the
    one place a run becomes final, whether trained here or shipped back by a Ray worker."""
    con.executemany(
        "INSERT OR REPLACE INTO metrics (run_id, step, split, name, value) VALUES (?,?,?,?,?)",
        [(run_id, step, "test", k, _value(v) if v is not None else None) for k, v in test_metrics.items()])
    wall = "? - started" if wall_seconds is None else "?"
    con.execute(f"UPDATE runs SET status='finished', finished=?, wall_seconds={wall}, summary=?, "
                "owner=NULL WHERE run_id=?",
                (finished, finished if wall_seconds is None else wall_seconds, _dumps(summary), run_id))


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def _value(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None  # SQLite has no NaN; NULL means "undefined"


class Store:
    """Run store of one workspace.

    Args:
        workspace: folder holding ``transfuse.db`` and ``runs/``; created if missing.
    """

    def __init__(self, workspace: str | Path) -> None:
        self.workspace = Path(workspace).expanduser()
        try:
            self.workspace.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create workspace {self.workspace} ({e.strerror}); pass a "
                             "writable --workspace") from None
        self.path = self.workspace / "transfuse.db"
        # Several processes (DDP ranks, study workers) may open a new store at once; switching
        # to WAL and creating the schema can then meet a lock, so retry briefly.
        for attempt in range(8):
            try:
                with self._connect() as con:
                    con.executescript(SCHEMA)
                break
            except StoreLockedError:
                if attempt == 7:
                    raise
                time.sleep(0.05 * 2**attempt)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # Every query runs in here, so an unusable store file (garbage, corrupt, read-only, full
        # disk) becomes one StoreError that says how to recover, whatever the command.
        try:
            con = sqlite3.connect(self.path, timeout=LOCK_TIMEOUT, isolation_level=None)
        except sqlite3.Error as e:
            raise (store_error(e, self.path) or e) from None
        try:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(f"PRAGMA busy_timeout={int(LOCK_TIMEOUT * 1000)}")
            con.execute("PRAGMA foreign_keys=ON")
            yield con
        except sqlite3.Error as e:
            err = store_error(e, self.path)
            if err is None:
                raise
            raise err from None
        finally:
            con.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                try:  # SQLite may have rolled back already (e.g. after a full disk)
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
            con.execute("COMMIT")

    def run_dir(self, run_id: str) -> Path:
        """``<workspace>/runs/<run_id>`` (the id is checked to be one safe folder name)."""
        from .errors import check_name

        return self.workspace / "runs" / check_name(run_id, field="run_id")

    # -- writing --------------------------------------------------------------------------------
    def start_run(self, spec: RunSpec, *, env: dict[str, Any] | None = None) -> str:
        """Create (or restart an unfinished) run for ``spec`` and mark it running by this process.

        Returns:
            The run id.

        Raises:
            RunFinishedError: the run already finished (results are never overwritten).
            RunBusyError: another live process is running it right now (no duplicates).
        """
        rid = compute_run_id(spec)
        now = time.time()
        me = _owner()
        with self._tx() as con:
            row = con.execute("SELECT status, owner, heartbeat FROM runs WHERE run_id = ?",
                              (rid,)).fetchone()
            if row and row[0] == "finished":
                raise RunFinishedError(f"run {rid} already finished; its results are final "
                                       f"(see `transfuse runs show {rid}`)")
            if row and row[0] == "running" and row[1] != me and pid_alive(row[1], row[2], now):
                raise RunBusyError(f"run {rid} is being run by {row[1]}")
            if row:  # a crashed or failed attempt: start over cleanly
                con.execute("DELETE FROM metrics WHERE run_id = ?", (rid,))
                con.execute("UPDATE runs SET status='running', started=?, finished=NULL, "
                            "wall_seconds=NULL, error=NULL, env=?, summary=NULL, owner=?, "
                            "heartbeat=? WHERE run_id=?", (now, _dumps(env or {}), me, now, rid))
            else:
                con.execute(
                    "INSERT INTO runs (run_id, study, spec, status, created, started, env, run_dir,"
                    " owner, heartbeat) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                    (rid, spec.study, spec.to_json(), now, now, _dumps(env or {}),
                     str(self.run_dir(rid)), me, now))
        return rid

    def set_info(self, run_id: str, **info: dict[str, Any]) -> None:
        """Store JSON columns (``data_info``, ``model_info``, ``init_report``) of a running run."""
        allowed = {"data_info", "model_info", "init_report"}
        bad = set(info) - allowed
        if bad:
            raise ValueError(f"unknown info column(s): {sorted(bad)}")
        with self._tx() as con:
            for k, v in info.items():
                con.execute(f"UPDATE runs SET {k} = ? WHERE run_id = ?", (_dumps(v), run_id))

    def log_metrics(self, run_id: str, step: int, split: str, metrics: dict[str, float]) -> None:
        """Append metrics of one evaluation (and refresh the run's heartbeat)."""
        with self._tx() as con:
            con.execute("UPDATE runs SET heartbeat=? WHERE run_id=? AND status='running'",
                        (time.time(), run_id))
            con.executemany(
                "INSERT OR REPLACE INTO metrics (run_id, step, split, name, value) VALUES (?,?,?,?,?)",
                [(run_id, step, split, k, _value(v)) for k, v in metrics.items()])

    def finish_run(self, run_id: str, *, step: int, test_metrics: dict[str, float],
                   summary: dict[str, Any]) -> None:
        """Write the test metrics and mark the run finished — one transaction."""
        with self._tx() as con:
            _finish(con, run_id, step=step, test_metrics=test_metrics, summary=summary,
                    finished=time.time())

    def export_run(self, run_id: str, *, files: tuple[str, ...] | None = None) -> RunBundle:
        """The run as a :class:`RunBundle`: its row, metrics and the files of its folder (all
        of them, or only ``files`` where present), without a mid-run ``resume.pt`` or ``*.tmp``
        unless named."""
        rec = self.get_run(run_id)
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            row = dict(con.execute("SELECT * FROM runs WHERE run_id = ?", (rec.run_id,)).fetchone())
        row = {k: json.loads(row[k]) if k in _JSON_COLUMNS and row[k] else row[k]
               for k in _BUNDLE_COLUMNS}
        folder = self.run_dir(rec.run_id)
        if files is None:
            paths = [p for p in sorted(folder.rglob("*")) if p.is_file()
                     and p.name not in ("resume.pt", "resume.next.pt")
                     and not p.name.endswith(".tmp")] if folder.is_dir() else []
        else:
            paths = [folder / f for f in files if (folder / f).is_file()]
        return RunBundle(rec.run_id, row, [tuple(m) for m in self.metrics(rec.run_id)],
                         {p.relative_to(folder).as_posix(): p.read_bytes() for p in paths})

    def import_run(self, bundle: RunBundle) -> bool:
        """Store a finished run trained elsewhere (see :class:`RunBundle`).

        The files are written first (each atomically), then the row, its metrics and the
        ``finished`` mark in one transaction, so a crash in between leaves a run that is simply
        not finished (it is trained again), never a finished run without its files. A run this
        store already holds finished is kept as it is.

        Returns:
            whether the run was stored (``False``: already finished here).

        Raises:
            ValueError: the bundle is not a finished run, or names a file outside its folder.
        """
        from .errors import check_name

        rid = check_name(bundle.run_id, field="run_id")
        if bundle.row.get("status") != "finished":
            raise ValueError(f"run {rid} is {bundle.row.get('status')}, not finished")
        if self.status(rid) == "finished":
            return False
        folder = self.run_dir(rid)
        for rel, data in bundle.files.items():
            parts = Path(rel).parts
            if Path(rel).is_absolute() or not parts or any(p in ("..", "") for p in parts):
                raise ValueError(f"run {rid}: file {rel!r} is outside its run folder")
            write_bytes(folder.joinpath(*parts), data, fsync=True)
        r = {k: _dumps(v) if k in _JSON_COLUMNS else v for k, v in bundle.row.items()}
        with self._tx() as con:
            old = con.execute("SELECT status FROM runs WHERE run_id = ?", (rid,)).fetchone()
            if old and old[0] == "finished":  # another driver stored it meanwhile
                return False
            if old:
                con.execute("DELETE FROM metrics WHERE run_id = ?", (rid,))
                con.execute("UPDATE runs SET study=?, spec=?, status='running', started=?, env=?, "
                            "data_info=?, model_info=?, init_report=?, error=NULL, run_dir=? "
                            "WHERE run_id=?", (r["study"], r["spec"], r["started"], r["env"],
                                               r["data_info"], r["model_info"], r["init_report"],
                                               str(folder), rid))
            else:
                con.execute("INSERT INTO runs (run_id, study, spec, status, created, started, env, "
                            "data_info, model_info, init_report, run_dir) VALUES "
                            "(?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                            (rid, r["study"], r["spec"], r["created"], r["started"], r["env"],
                             r["data_info"], r["model_info"], r["init_report"], str(folder)))
            rows = [m for m in bundle.metrics if m[1] != "test"]
            con.executemany("INSERT INTO metrics (run_id, step, split, name, value) VALUES "
                            "(?,?,?,?,?)", [(rid, *m) for m in rows])
            test = [m for m in bundle.metrics if m[1] == "test"]
            _finish(con, rid, step=max((m[0] for m in test), default=0),
                    test_metrics={m[2]: m[3] for m in test}, summary=bundle.row.get("summary") or {},
                    finished=bundle.row.get("finished") or time.time(),
                    wall_seconds=bundle.row.get("wall_seconds"))
        return True

    def fail_run(self, run_id: str, error: str) -> None:
        """Mark a running run failed with an error message (it will be retried next time)."""
        with self._tx() as con:
            con.execute("UPDATE runs SET status='failed', finished=?, error=? "
                        "WHERE run_id=? AND status != 'finished'", (time.time(), error, run_id))

    def stop_run(self, run_id: str, message: str) -> None:
        """Mark a running run stopped (SIGTERM, Ctrl-C): not failed — it stays ``running`` with no
        owner process, so it lists as ``stale`` and the next attempt resumes its checkpoint."""
        with self._tx() as con:
            con.execute("UPDATE runs SET owner=NULL, error=? WHERE run_id=? AND status='running'",
                        (message, run_id))

    def put_result(self, kind: str, key: str, payload: Any, *, study: str | None = None,
                   run_id: str | None = None) -> None:
        """Store (or replace) a derived result ``(kind, key)`` — one transaction."""
        with self._tx() as con:
            con.execute("INSERT OR REPLACE INTO results (kind, key, study, run_id, payload, created)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (kind, key, study, run_id, _dumps(payload), time.time()))

    def get_results(self, kind: str, *, study: str | None = None,
                    run_id: str | None = None) -> dict[str, Any]:
        """Derived results of one kind as ``{key: payload}``, optionally filtered, oldest first."""
        q, args = "SELECT key, payload FROM results WHERE kind = ?", [kind]
        if study is not None:
            q += " AND study = ?"
            args.append(study)
        if run_id is not None:
            q += " AND run_id = ?"
            args.append(run_id)
        with self._connect() as con:
            rows = con.execute(q + " ORDER BY created, key", args).fetchall()
        return {k: json.loads(p) for k, p in rows}

    # -- reading --------------------------------------------------------------------------------
    def _record(self, row: sqlite3.Row) -> RunRecord:
        d = dict(row)
        for k in ("spec", "env", "data_info", "model_info", "init_report", "summary"):
            d[k] = json.loads(d[k]) if d[k] else {}
        if d.get("run_dir"):  # a run's folder is where this store is now, not where it was written
            d["run_dir"] = str(self.run_dir(d["run_id"]))
        return RunRecord(**d)

    def get_run(self, run_id: str) -> RunRecord:
        """The run with id ``run_id`` (a unique prefix of hex digits is enough).

        Raises:
            TransfuseError: not hex digits, no such run, or a prefix of several (listed).
        """
        run_id = run_id.lower() if isinstance(run_id, str) else ""
        if not re.fullmatch(r"[0-9a-f]{1,64}", run_id):
            raise TransfuseError(f"run id {run_id!r} is not a run id: give its hex digits (all "
                                 "12, or a unique prefix); see `transfuse runs list`")
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            rows = con.execute("SELECT * FROM runs WHERE substr(run_id, 1, ?) = ? ORDER BY run_id",
                               (len(run_id), run_id)).fetchall()
        if not rows:
            raise TransfuseError(f"no run with id {run_id!r} in {self.path}; see `transfuse runs list`")
        if len(rows) > 1:
            ids = ", ".join(r["run_id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise TransfuseError(f"{len(rows)} runs with ids starting {run_id!r} in {self.path} "
                                 f"({ids}); give more digits")
        return self._record(rows[0])

    def status(self, run_id: str) -> str | None:
        """Status of ``run_id`` or ``None`` if unknown."""
        with self._connect() as con:
            row = con.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row[0] if row else None

    def list_runs(self, *, study: str | None = None, status: str | None = None) -> list[RunRecord]:
        """Runs, oldest first, optionally filtered by study and status."""
        q, args = "SELECT * FROM runs WHERE 1=1", []
        if study is not None:
            q += " AND study = ?"
            args.append(study)
        if status is not None:
            q += " AND status = ?"
            args.append(status)
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            return [self._record(r) for r in con.execute(q + " ORDER BY created", args)]

    def metrics(self, run_id: str, *, split: str | None = None) -> list[tuple[int, str, str, float | None]]:
        """``(step, split, name, value)`` rows of a run, by step."""
        q, args = "SELECT step, split, name, value FROM metrics WHERE run_id = ?", [run_id]
        if split is not None:
            q += " AND split = ?"
            args.append(split)
        with self._connect() as con:
            return con.execute(q + " ORDER BY step, split, name", args).fetchall()

    def final_metrics(self, run_id: str) -> dict[str, float | None]:
        """Test metrics of a finished run as ``{name: value}``."""
        return {name: v for _, _, name, v in self.metrics(run_id, split="test")}

    def export(self, *, fmt: str = "csv", study: str | None = None) -> str:
        """All metrics of the selected runs as long-format CSV or JSON (one record per value)."""
        from .arms import arm_labels

        rows = []
        runs = self.list_runs(study=study)
        for r, arm in zip(runs, arm_labels([r.spec for r in runs])):
            for step, split, name, value in self.metrics(r.run_id):
                rows.append({"run_id": r.run_id, "study": r.study, "status": r.status,
                             "dataset": r.spec["data"]["name"], "model": r.spec["model"]["name"],
                             "init": r.spec["init"]["name"], "arm": arm, "seed": r.spec["seed"],
                             "step": step, "split": split, "metric": name, "value": value})
        if fmt == "json":
            return json.dumps(rows, indent=1)
        buf = io.StringIO()
        cols = ["run_id", "study", "status", "dataset", "model", "init", "arm", "seed", "step", "split",
                "metric", "value"]
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
