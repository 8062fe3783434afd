"""Faults: bad inputs, an unusable store, a full or read-only disk, diverged and stale runs.

The table covers each bad input: the command (run in-process) exits 2, prints exactly one
``error: ...`` line that names the file or field, and the store is left as it was. The tests
below the table cover what is not a single error line: the divergence exit status, stale runs,
``runs check``, study progress, printed vs stored time, and — on a small tmpfs, where mounting is
permitted — a full disk and a read-only workspace.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from transfuse import DataSpec, ModelSpec, RunSpec, Store
from transfuse.cli import main
from transfuse.errors import EXIT_DIVERGED, ConfigError, TransfuseError, check_name


@dataclass
class Fault:
    """A command that must fail with one error line containing every needle."""

    args: list[str]
    needles: tuple[str, ...]
    ws: Path


CASES: dict[str, Callable[[Path], Fault]] = {}


def case(fn: Callable[[Path], Fault]) -> Callable[[Path], Fault]:
    CASES[fn.__name__] = fn
    return fn


def _csv(tmp: Path, n: int = 20) -> Path:
    from tests.conftest import write_image_csv

    return write_image_csv(tmp / "images", [{"path": f"{i}.png", "label": "ab"[i % 2],
                                              "value": 10 * i} for i in range(n)], size=16)


def _train_args(ws: Path, dataset: str, *extra: str) -> list[str]:
    return ["train", "--dataset", dataset, "--model", "cbr_tiny", "--workspace", str(ws),
            "--device", "cpu", "--no-progress", "--steps", "2", "--batch-size", "4",
            "--eval-every", "1", "--no-amp", *extra]


def _study_file(tmp: Path, text: str) -> Path:
    p = tmp / "study.yaml"
    p.write_text(text)
    return p


BASE = "base: {data: {name: 'csv:x.csv'}, model: {name: cbr_tiny}}\n"


def _stored_run(ws: Path, *, seed: int = 0, study: str = "s") -> str:
    """A finished run written through the store API (no training): fast fixtures."""
    spec = RunSpec(data=DataSpec(name="csv:x.csv"), model=ModelSpec(name="cbr_tiny"), seed=seed,
                   study=study)
    store = Store(ws)
    rid = store.start_run(spec)
    store.finish_run(rid, step=1, test_metrics={"auc": 0.5}, summary={"steps": 1})
    return rid


def _garbage_db(ws: Path) -> None:
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "transfuse.db").write_bytes(b"this is not a database\n" * 200)


def _corrupt_db(ws: Path) -> None:
    _stored_run(ws)
    db = ws / "transfuse.db"
    b = bytearray(db.read_bytes())
    b[100:200] = b"\xff" * 100  # the schema page: "database disk image is malformed"
    db.write_bytes(bytes(b))


# -- the store file: garbage or corrupt, on every command that opens it -----------------------------

def _store_commands(tmp: Path, ws: Path) -> dict[str, list[str]]:
    study = _study_file(tmp, "name: s\n" + BASE)
    return {"runs_list": ["runs", "list", "-w", str(ws)],
            "runs_show": ["runs", "show", "abc", "-w", str(ws)],
            "train": _train_args(ws, "csv:x.csv", "--label-columns", "label"),
            "report": ["report", str(ws), "--study", "s"],
            "study_status": ["study", "status", str(study), "--workspace", str(ws)]}


for _cmd in ("runs_list", "runs_show", "train", "report", "study_status"):
    def _garbage(tmp: Path, cmd: str = _cmd) -> Fault:
        ws = tmp / "ws"
        _garbage_db(ws)
        return Fault(_store_commands(tmp, ws)[cmd], (str(ws / "transfuse.db"),
                                                     "not a SQLite database", "move it aside"), ws)

    def _corrupt(tmp: Path, cmd: str = _cmd) -> Fault:
        ws = tmp / "ws"
        _corrupt_db(ws)
        return Fault(_store_commands(tmp, ws)[cmd], (str(ws / "transfuse.db"), "is corrupt",
                                                     "transfuse runs check"), ws)

    CASES[f"garbage_store_{_cmd}"] = _garbage
    CASES[f"corrupt_store_{_cmd}"] = _corrupt


@case
def runs_check_on_garbage(tmp: Path) -> Fault:
    ws = tmp / "ws"
    _garbage_db(ws)
    return Fault(["runs", "check", "-w", str(ws)], ("not a SQLite database",), ws)


# -- data files ---------------------------------------------------------------------------------

@case
def medmnist_flat_images(tmp: Path) -> Fault:
    from tests.conftest import write_medmnist_npz

    path = write_medmnist_npz(tmp / "data" / "retinamnist.npz",
                              train_images=np.zeros((12, 2352), np.uint8))
    return Fault(_train_args(tmp / "ws", "medmnist:retinamnist", "--data-root", str(path.parent)),
                 (str(path), "'train_images'", "(12, 2352)", "(N, 28, 28, 3)"), tmp / "ws")


@case
def dicom_series_with_a_corrupt_slice(tmp: Path) -> Fault:
    from tests.test_seg_data import sphere_case, write_dicom_series, write_nifti

    root = tmp / "ds"
    for i in range(3):
        img, lab = sphere_case(i)
        write_dicom_series(root / "images" / f"c{i}", np.rint(img).transpose(2, 1, 0))
        write_nifti(root / "labels" / f"c{i}.nii.gz", lab)
    bad = root / "images" / "c1" / "slice004.dcm"
    bad.write_bytes(b"\x00garbage" * 300)  # no DICOM preamble: MONAI alone would skip it
    args = _train_args(tmp / "ws", f"nifti:{root}", "--patch-size", "8")
    args[args.index("cbr_tiny")] = "unet_cbr_small"
    return Fault(args, (str(bad), "not a readable DICOM slice"), tmp / "ws")


# -- study files: YAML, grid, names, types ------------------------------------------------------

@case
def yaml_duplicate_grid_key(tmp: Path) -> Fault:
    p = _study_file(tmp, "name: s\n" + BASE + "grid:\n  seed: [0, 1]\n  seed: [2, 3]\n")
    return Fault(["study", "status", str(p), "--workspace", str(tmp / "ws")],
                 (str(p), "duplicate key 'seed'", "line 5"), tmp / "ws")


@case
def grid_named_axis_sets_an_axis_field(tmp: Path) -> Fault:
    p = _study_file(tmp, "name: s\n" + BASE + "grid:\n  seed: [0, 1]\n  arm:\n"
                    "    - {model.name: cbr_tiny, seed: 5}\n    - {model.name: cbr_small}\n")
    return Fault(["study", "status", str(p), "--workspace", str(tmp / "ws")],
                 (str(p), "grid.seed and grid.arm both set seed", "one axis"), tmp / "ws")


@case
def grid_whole_init_and_init_field(tmp: Path) -> Fault:
    p = _study_file(tmp, "name: s\n" + BASE + "grid:\n  init: [random, meanvar]\n"
                    "  init.source: ['imagenet:efficientnet_lite0']\n")
    return Fault(["study", "status", str(p), "--workspace", str(tmp / "ws")],
                 (str(p), "grid.init and grid.init.source both set init"), tmp / "ws")


@case
def yaml_wrong_type(tmp: Path) -> Fault:
    p = _study_file(tmp, "name: s\nbase: {data: {name: 'csv:x.csv'}, model: {name: cbr_tiny}, "
                    "train: {steps: lots}}\n")
    return Fault(["study", "status", str(p), "--workspace", str(tmp / "ws")],
                 (str(p), "train.steps='lots'", "must be an integer"), tmp / "ws")


@case
def study_name_with_slash(tmp: Path) -> Fault:
    p = _study_file(tmp, "name: a/b\n" + BASE)
    return Fault(["study", "run", str(p), "--workspace", str(tmp / "ws"), "--report"],
                 (str(p), "name='a/b'", "letters, digits"), tmp / "ws")


@case
def study_name_dotdot(tmp: Path) -> Fault:
    p = _study_file(tmp, "name: '..'\n" + BASE)
    return Fault(["study", "status", str(p), "--workspace", str(tmp / "ws")],
                 (str(p), "name='..'"), tmp / "ws")


@case
def pretrain_entry_name(tmp: Path) -> Fault:
    p = _study_file(tmp, "name: s\n" + BASE + "pretrain:\n  ../up: {data: {name: 'csv:x.csv'}, "
                    "model: {name: cbr_tiny}}\n")
    return Fault(["study", "status", str(p), "--workspace", str(tmp / "ws")],
                 (str(p), "pretrain.../up='../up'"), tmp / "ws")


@case
def report_file_name(tmp: Path) -> Fault:
    ws = tmp / "ws"
    _stored_run(ws)
    return Fault(["report", str(ws), "--study", "../../evil"], ("--study='../../evil'",), ws)


@case
def train_study_name(tmp: Path) -> Fault:
    return Fault(_train_args(tmp / "ws", "csv:x.csv", "--study", "a/../../b"),
                 ("study='a/../../b'",), tmp / "ws")


# -- sizes ----------------------------------------------------------------------------------------

@case
def n_train_larger_than_data(tmp: Path) -> Fault:
    csv = _csv(tmp)
    return Fault(_train_args(tmp / "ws", f"csv:{csv}", "--label-columns", "label",
                             "--n-train", "500"), ("data.n_train=500", "--n-train 14"), tmp / "ws")


@case
def batch_larger_than_n_train(tmp: Path) -> Fault:
    csv = _csv(tmp)
    args = _train_args(tmp / "ws", f"csv:{csv}", "--label-columns", "label", "--n-train", "4")
    args[args.index("--batch-size") + 1] = "8"
    return Fault(args, ("train.batch_size=8", "--batch-size 4"), tmp / "ws")


# -- the checks -----------------------------------------------------------------------------------

def _state(ws: Path) -> object:
    """What "the store is unchanged" compares: the runs, or the bytes of an unreadable file."""
    db = ws / "transfuse.db"
    if not db.exists():
        return []
    try:
        return [(r.run_id, r.status, r.finished) for r in Store(ws).list_runs()]
    except TransfuseError:
        return hashlib.sha256(db.read_bytes()).hexdigest()


def _one_error_line(capsys) -> str:
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    return lines[0][len("error: "):]


@pytest.mark.parametrize("name", list(CASES))
def test_fault_is_one_error_line_exit_2_store_unchanged(name, tmp_path, capsys):
    fault = CASES[name](tmp_path)
    before = _state(fault.ws)
    capsys.readouterr()
    rc = main(fault.args)
    msg = _one_error_line(capsys)
    assert rc == 2, msg
    for needle in fault.needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert _state(fault.ws) == before


@pytest.mark.parametrize("bad", ["a/b", "..", ".", "", "a b", "x\\y", "é", "a\nb", 5, None])
def test_check_name_refuses_path_like_names(bad):
    with pytest.raises(ConfigError, match="letters, digits"):
        check_name(bad, field="study")


@pytest.mark.parametrize("good", ["quickstart", "seg3d_brain", "m3d-study.v2", "A1", "x-smoke"])
def test_check_name_keeps_good_names(good):
    assert check_name(good, field="study") == good


def test_store_run_dir_refuses_a_path_like_id(tmp_path):
    with pytest.raises(ConfigError):
        Store(tmp_path).run_dir("../outside")


# -- divergence -----------------------------------------------------------------------------------

def test_diverged_run_is_stored_failed_and_exits_3(tmp_path, capsys):
    csv, ws = _csv(tmp_path), tmp_path / "ws"
    args = _train_args(ws, f"csv:{csv}", "--label-columns", "label", "--lr", "1e30",
                       "--schedule", "constant")
    args[args.index("--steps") + 1] = "4"
    capsys.readouterr()
    rc = main(args)
    msg = _one_error_line(capsys)
    assert rc == EXIT_DIVERGED == 3
    assert re.search(r"diverged: .* at step \d+ \(train\.lr=1e\+30\); lower train\.lr", msg), msg
    assert "stored as failed" in msg
    (r,) = Store(ws).list_runs()
    assert r.status == "failed" and "diverged" in r.error and "at step" in r.error
    assert not list(ws.rglob("*.tmp"))


# -- stale runs, runs check, study progress, printed time ------------------------------------------

def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _orphan(ws: Path, rid: str) -> None:
    """Make ``rid`` look like the run of a killed process on this host."""
    with sqlite3.connect(ws / "transfuse.db") as con:
        con.execute("UPDATE runs SET status='running', owner=? WHERE run_id=?",
                    (f"{socket.gethostname()}:{_dead_pid()}", rid))


def test_run_of_a_dead_process_is_listed_stale_with_how_to_resume(tmp_path, capsys):
    ws = tmp_path / "ws"
    store = Store(ws)
    live = store.start_run(RunSpec(data=DataSpec(name="csv:x.csv"), model=ModelSpec(name="cbr_tiny"),
                                   seed=1))
    dead = store.start_run(RunSpec(data=DataSpec(name="csv:x.csv"), model=ModelSpec(name="cbr_tiny"),
                                   seed=2))
    _orphan(ws, dead)
    assert store.get_run(live).state == "running" and store.get_run(dead).state == "stale"
    capsys.readouterr()
    assert main(["runs", "list", "-w", str(ws)]) == 0
    out = capsys.readouterr().out
    rows = {ln.split()[0]: ln.split()[1] for ln in out.splitlines()[1:] if ln.startswith(live[:4])
            or ln.startswith(dead[:4])}
    assert rows == {live: "running", dead: "stale"}
    assert "1 run(s) stale: its process is gone" in out and "again to restart it" in out
    assert main(["runs", "show", dead, "-w", str(ws)]) == 0
    shown = capsys.readouterr().out
    assert f"run {dead}  [stale]" in shown and "again to restart it" in shown


def test_runs_check_reports_missing_files_leftovers_and_corruption(tmp_path, capsys):
    from transfuse.store import RUN_FILES

    ws = tmp_path / "ws"
    rid = _stored_run(ws)
    capsys.readouterr()
    assert main(["runs", "check", "-w", str(ws)]) == 1
    out = capsys.readouterr().out
    assert "integrity ok" in out and f"{rid}  missing {', '.join(RUN_FILES)}" in out
    folder = Store(ws).run_dir(rid)
    folder.mkdir(parents=True)
    for f in RUN_FILES:
        (folder / f).write_bytes(b"x")
    (folder / "best.tmp").write_bytes(b"half")
    assert main(["runs", "check", "-w", str(ws)]) == 0
    out = capsys.readouterr().out
    assert "every finished run has its files" in out and f"leftover temporary file {folder / 'best.tmp'}" in out
    (folder / "last.pt").unlink()
    assert main(["runs", "check", "-w", str(ws)]) == 1
    assert f"{rid}  missing last.pt" in capsys.readouterr().out
    bad = tmp_path / "bad"
    _corrupt_db(bad)
    assert main(["runs", "check", "-w", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "integrity FAILED" in out and "malformed" in out and ".recover" in out


def test_study_progress_counts_running_stale_failed_and_missing(tmp_path):
    from transfuse.study.runner import study_progress

    ws = tmp_path / "ws"
    store = Store(ws)
    specs = [RunSpec(data=DataSpec(name="csv:x.csv"), model=ModelSpec(name="cbr_tiny"), seed=s,
                     study="s") for s in range(5)]
    from transfuse.config import run_id

    store.put_result("study", "s", {"name": "s", "run_ids": [run_id(s) for s in specs]}, study="s")
    ids = [store.start_run(s) for s in specs[:4]]
    store.finish_run(ids[0], step=1, test_metrics={"auc": 0.5}, summary={})
    store.fail_run(ids[1], "boom")
    _orphan(ws, ids[2])  # ids[3] stays running in this (live) process; specs[4] never started
    assert study_progress(store=store, study="s") == {"finished": 1, "running": 1, "stale": 1,
                                                      "failed": 1, "missing": 1}


def test_printed_time_is_the_stored_time(tmp_path, capsys):
    csv, ws = _csv(tmp_path), tmp_path / "ws"
    capsys.readouterr()
    assert main(_train_args(ws, f"csv:{csv}", "--label-columns", "label")) == 0
    out = capsys.readouterr().out
    (r,) = Store(ws).list_runs()
    m = re.search(r"train ([\d.]+) s, wall ([\d.]+) s", out)
    assert m, out
    assert float(m.group(1)) == r.summary["train_seconds"]
    assert float(m.group(2)) == round(r.wall_seconds, 3)
    assert r.wall_seconds >= r.summary["train_seconds"]


# -- the disk: full, read-only (a small tmpfs; needs permission to mount) ---------------------------

@contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a tmpfs ({e}); the full-disk test needs root or CAP_SYS_ADMIN")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); the "
                    "full-disk test needs root or CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_full_disk_marks_the_run_failed_and_leaves_no_tmp(tmp_path, capsys):
    csv = _csv(tmp_path)
    with _tmpfs(tmp_path / "disk", "40m") as disk:
        ws = disk / "ws"
        assert main(_train_args(ws, f"csv:{csv}", "--label-columns", "label")) == 0
        (first,) = Store(ws).list_runs()
        files, metrics = _digest(Path(first.run_dir)), Store(ws).metrics(first.run_id)
        # Fill the disk but for ~1 MiB: the store can still write, a checkpoint (~4 MiB) cannot.
        st = os.statvfs(disk)
        (disk / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - (1 << 20)))
        capsys.readouterr()
        rc = main(_train_args(ws, f"csv:{csv}", "--label-columns", "label", "--seed", "1"))
        msg = _one_error_line(capsys)
        assert rc == 2
        assert "No space left on device" in msg and "free disk space" in msg, msg
        assert "stored as failed" in msg
        runs = {r.run_id: r for r in Store(ws).list_runs()}
        second = next(r for rid, r in runs.items() if rid != first.run_id)
        assert second.status == "failed" and "No space left on device" in second.error
        assert not list(ws.rglob("*.tmp"))
        assert runs[first.run_id].status == "finished"
        assert _digest(Path(first.run_dir)) == files and Store(ws).metrics(first.run_id) == metrics
        # Space back: the same command now trains the failed run from scratch.
        (disk / "filler").unlink()
        assert main(_train_args(ws, f"csv:{csv}", "--label-columns", "label", "--seed", "1")) == 0
        assert Store(ws).get_run(second.run_id).status == "finished"


def test_read_only_workspace_is_one_error_line(tmp_path, capsys):
    csv = _csv(tmp_path)
    with _tmpfs(tmp_path / "disk", "4m") as disk:
        ws = disk / "ws"
        rid = _stored_run(ws)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, timeout=30)
        capsys.readouterr()
        rc = main(_train_args(ws, f"csv:{csv}", "--label-columns", "label"))
        msg = _one_error_line(capsys)
        assert rc == 2 and str(ws / "transfuse.db") in msg and "read-only" in msg, msg
        subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True, timeout=30)
        assert [(r.run_id, r.status) for r in Store(ws).list_runs()] == [(rid, "finished")]


def test_yaml_merge_keys_still_load_and_may_override(tmp_path):
    from transfuse.config import read_yaml_file

    p = tmp_path / "m.yaml"
    p.write_text("a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  p: 3\n")
    assert read_yaml_file(p, what="study") == {"a": {"p": 1, "q": 2}, "b": {"p": 3, "q": 2}}
