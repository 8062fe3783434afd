"""Bad input: one test per case, through the library and through the CLI.

Every case must raise a :class:`~transfuse.errors.TransfuseError` subclass of the expected type
with a one-line message naming the file or field, make ``transfuse train`` exit with status 2 and
print exactly one ``error: ...`` line, and never leave a run row in the workspace store.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from transfuse import DataSpec, ModelSpec, RunSpec, Store, TrainSpec, train_run
from transfuse.cli import main
from transfuse.errors import ConfigError, DataError, ModelError, TransfuseError


@dataclass
class Case:
    """A bad input: ``data`` are DataSpec fields; the message must contain every needle."""

    data: dict
    error: type
    needles: tuple[str, ...]
    model: str = "cbr_tiny"
    extra_cli: list[str] = field(default_factory=list)


Builder = Callable[[Path, Callable, Callable], Case]
CASES: dict[str, Builder] = {}


def case(fn: Builder) -> Builder:
    CASES[fn.__name__] = fn
    return fn


def _tiny_csv(make_csv, n: int = 20, **kw) -> Path:
    return make_csv([{"path": f"{i}.png", "label": "ab"[i % 2], "value": 10 * i} for i in range(n)], **kw)


def _csv_case(csv_path: Path, error: type, *needles: str, **data) -> Case:
    return Case({"name": f"csv:{csv_path}", "label_columns": ("label",), **data}, error,
                (str(csv_path), *needles))


# -- MedMNIST files -------------------------------------------------------------------------------

@case
def missing_npz(tmp_path, make_csv, make_npz):
    root = tmp_path / "empty"
    root.mkdir()
    return Case({"name": "medmnist:retinamnist@28", "data_root": str(root)}, DataError,
                (str(root / "retinamnist.npz"), f"put retinamnist.npz in {root}", "TRANSFUSE_DATA"))


@case
def truncated_npz(tmp_path, make_csv, make_npz):
    full = make_npz(tmp_path / "full" / "retinamnist.npz")
    bad = tmp_path / "data" / "retinamnist.npz"
    bad.parent.mkdir()
    data = full.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return Case({"name": "medmnist:retinamnist", "data_root": str(bad.parent)}, DataError,
                (str(bad), "truncated or corrupt"))


@case
def corrupt_npz(tmp_path, make_csv, make_npz):
    # Garbage inside the deflate stream raises zlib.error, not BadZipFile.
    path = make_npz(tmp_path / "data" / "retinamnist.npz")
    b = bytearray(path.read_bytes())
    b[1000:1032] = b"\xff" * 32
    path.write_bytes(bytes(b))
    return Case({"name": "medmnist:retinamnist", "data_root": str(path.parent)}, DataError,
                (str(path), "truncated or corrupt"))


@case
def npz_missing_array(tmp_path, make_csv, make_npz):
    path = make_npz(tmp_path / "data" / "retinamnist.npz", drop=("test_labels",))
    return Case({"name": "medmnist:retinamnist", "data_root": str(path.parent)}, DataError,
                (str(path), "'test_labels'"))


@case
def npz_label_out_of_range(tmp_path, make_csv, make_npz):
    labels = (np.arange(12) % 5).astype(np.uint8)[:, None]
    labels[4] = 7  # retinamnist has 5 classes
    path = make_npz(tmp_path / "data" / "retinamnist.npz", train_labels=labels)
    return Case({"name": "medmnist:retinamnist", "data_root": str(path.parent)}, DataError,
                (str(path), "[train]", "label 7", "example 4", "0..4"))


@case
def npz_nan_pixels(tmp_path, make_csv, make_npz):
    imgs = np.random.default_rng(0).random((4, 28, 28, 3)).astype(np.float32)
    imgs[3, 5, 5, 1] = np.nan
    path = make_npz(tmp_path / "data" / "retinamnist.npz", dtype=np.float32, val_images=imgs)
    return Case({"name": "medmnist:retinamnist", "data_root": str(path.parent)}, DataError,
                (str(path), "[val]", "image 3", "NaN"))


# -- CSV image folders ----------------------------------------------------------------------------

@case
def csv_not_found(tmp_path, make_csv, make_npz):
    missing = tmp_path / "nope.csv"
    return _csv_case(missing, DataError, "not found")


@case
def csv_missing_label_column(tmp_path, make_csv, make_npz):
    csv_path = _tiny_csv(make_csv)
    c = _csv_case(csv_path, DataError, "'grade'", "path, label")
    c.data["label_columns"] = ("grade",)
    return c


@case
def csv_missing_path_column(tmp_path, make_csv, make_npz):
    return _csv_case(_tiny_csv(make_csv), DataError, "'file'", path_column="file")


@case
def csv_no_label_columns(tmp_path, make_csv, make_npz):
    c = _csv_case(_tiny_csv(make_csv), DataError, "--label-columns")
    c.data["label_columns"] = ()
    return c


@case
def csv_path_escapes_root(tmp_path, make_csv, make_npz):
    rows = [{"path": f"{i}.png", "label": "ab"[i % 2], "value": 9 * i} for i in range(6)]
    rows.append({"path": "../x.png", "label": "a"})
    return _csv_case(make_csv(rows), DataError, "row 8", "'../x.png'", "escapes")


@case
def csv_absolute_path(tmp_path, make_csv, make_npz):
    outside = tmp_path / "outside.png"
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(outside)  # exists, but outside the root
    rows = [{"path": f"{i}.png", "label": "ab"[i % 2], "value": 9 * i} for i in range(6)]
    rows.insert(2, {"path": str(outside), "label": "b"})
    return _csv_case(make_csv(rows), DataError, "row 4", repr(str(outside)), "escapes")


@case
def csv_negative_label(tmp_path, make_csv, make_npz):
    rows = [{"path": f"{i}.png", "label": str(i % 3), "value": 9 * i} for i in range(6)]
    rows[3]["label"] = "-2"
    return _csv_case(make_csv(rows), DataError, "row 5", "label -2", "'label'")


@case
def csv_nan_pixels(tmp_path, make_csv, make_npz):
    rows = [{"path": f"{i}.npy", "label": "ab"[i % 2], "npy": np.full((6, 6), 0.1 * i, np.float32)}
            for i in range(8)]
    rows[5]["npy"] = rows[5]["npy"].copy()
    rows[5]["npy"][2, 3] = np.nan
    return _csv_case(make_csv(rows), DataError, "image 5", "NaN")


@case
def csv_header_only(tmp_path, make_csv, make_npz):
    return _csv_case(make_csv([], columns=("path", "label")), DataError, "no rows", "empty")


@case
def csv_missing_image(tmp_path, make_csv, make_npz):
    rows = [{"path": f"{i}.png", "label": "ab"[i % 2], "value": 9 * i} for i in range(6)]
    rows.append({"path": "gone.png", "label": "a"})  # no file written
    csv_path = make_csv(rows)
    return Case({"name": f"csv:{csv_path}", "label_columns": ("label",)}, DataError,
                (str(csv_path.parent / "gone.png"), "not found"))


@case
def csv_short_row(tmp_path, make_csv, make_npz):
    csv_path = _tiny_csv(make_csv)
    with open(csv_path, "a") as f:
        f.write("7.png\n")  # no label field at all (row 22)
    return _csv_case(csv_path, DataError, "row 22", "'label'")


@case
def csv_empty_label(tmp_path, make_csv, make_npz):
    rows = [{"path": f"{i}.png", "label": "ab"[i % 2], "value": 9 * i} for i in range(6)]
    rows[1]["label"] = ""
    return _csv_case(make_csv(rows), DataError, "row 3", "empty label", "'label'")


@case
def csv_bad_multilabel_value(tmp_path, make_csv, make_npz):
    rows = [{"path": f"{i}.png", "a": str(i % 2), "b": "1", "value": 9 * i} for i in range(6)]
    rows[2]["b"] = "2"
    csv_path = make_csv(rows)
    return Case({"name": f"csv:{csv_path}", "label_columns": ("a", "b")}, DataError,
                (str(csv_path), "row 4", "'b'", "'2'"))


@case
def csv_bad_split_value(tmp_path, make_csv, make_npz):
    rows = [{"path": f"{i}.png", "label": "ab"[i % 2], "split": "train", "value": 9 * i} for i in range(6)]
    rows[0]["split"] = "holdout"
    return _csv_case(make_csv(rows), DataError, "'split'", "'holdout'", split_column="split")


@case
def csv_empty_test_split(tmp_path, make_csv, make_npz):
    rows = [{"path": f"{i}.png", "label": "ab"[i % 2], "split": "train" if i < 4 else "val",
             "value": 9 * i} for i in range(6)]
    return _csv_case(make_csv(rows), DataError, "[test]", "test split is empty", split_column="split")


# -- names and options ----------------------------------------------------------------------------

@case
def unknown_dataset_family(tmp_path, make_csv, make_npz):
    return Case({"name": "nope:thing"}, ConfigError, ("unknown dataset 'nope'", "transfuse datasets"))


@case
def dataset_name_without_family(tmp_path, make_csv, make_npz):
    return Case({"name": "retinamnist"}, ConfigError, ("'retinamnist'", "family:argument"))


@case
def unknown_medmnist_flag(tmp_path, make_csv, make_npz):
    return Case({"name": "medmnist:retinamnst", "data_root": str(tmp_path)}, ConfigError,
                ("'retinamnst'", "did you mean retinamnist"))


@case
def bad_medmnist_size(tmp_path, make_csv, make_npz):
    return Case({"name": "medmnist:retinamnist@30", "data_root": str(tmp_path)}, ConfigError,
                ("retinamnist", "not 30"))


@case
def unknown_model(tmp_path, make_csv, make_npz):
    c = _csv_case(_tiny_csv(make_csv), ConfigError)
    return Case(c.data, ConfigError, ("unknown model 'resnet9000'", "transfuse models"), model="resnet9000")


@case
def model_2d_only_on_3d_data(tmp_path, make_csv, make_npz):
    path = make_npz(tmp_path / "data" / "adrenalmnist3d.npz", n=(4, 2, 2), shape=(28, 28, 28),
                    num_classes=2)
    return Case({"name": "medmnist:adrenalmnist3d", "data_root": str(path.parent)}, ModelError,
                ("'inception_v3'", "2D only"), model="inception_v3")


@case
def image_too_small_for_model(tmp_path, make_csv, make_npz):
    c = _csv_case(_tiny_csv(make_csv), ConfigError)
    return Case(c.data, ConfigError, ("'resnet18'", "16 px", "--image-size 16"), model="resnet18")


@case
def bad_uncertain_policy(tmp_path, make_csv, make_npz):
    c = _csv_case(_tiny_csv(make_csv), ConfigError, uncertain="maybe")
    return Case(c.data, ConfigError, ("data.uncertain='maybe'", "ignore, ones, zeros"))


# -- the checks -----------------------------------------------------------------------------------

TRAIN = TrainSpec(steps=1, batch_size=4, eval_every=1, amp=False)


def _assert_no_runs(ws: Path) -> None:
    if (ws / "transfuse.db").exists():
        assert Store(ws).list_runs() == []


def _check_message(msg: str, c: Case) -> None:
    assert "\n" not in msg and msg == msg.strip() and msg
    for needle in c.needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def _cli_args(c: Case, ws: Path) -> list[str]:
    flags = {"name": "--dataset", "data_root": "--data-root", "path_column": "--path-column",
             "split_column": "--split-column", "uncertain": "--uncertain"}
    args = ["train", "--model", c.model, "--workspace", str(ws), "--device", "cpu",
            "--no-progress", "--steps", "1", "--batch-size", "4", "--eval-every", "1", "--no-amp"]
    for k, v in c.data.items():
        if k == "label_columns":
            if v:
                args += ["--label-columns", ",".join(v)]
        else:
            args += [flags[k], str(v)]
    return args + c.extra_cli


@pytest.mark.parametrize("name", list(CASES))
def test_library_error(name, tmp_path, make_csv_dataset, make_npz):
    c = CASES[name](tmp_path, make_csv_dataset, make_npz)
    ws = tmp_path / "ws"
    with pytest.raises(TransfuseError) as ei:
        spec = RunSpec(data=DataSpec(**c.data), model=ModelSpec(name=c.model), train=TRAIN)
        train_run(spec, workspace=ws, device="cpu", progress=False)
    assert type(ei.value) is c.error, f"{type(ei.value).__name__}: {ei.value}"
    _check_message(str(ei.value), c)
    _assert_no_runs(ws)


@pytest.mark.parametrize("name", list(CASES))
def test_cli_error(name, tmp_path, make_csv_dataset, make_npz, capsys):
    c = CASES[name](tmp_path, make_csv_dataset, make_npz)
    ws = tmp_path / "ws"
    capsys.readouterr()
    rc = main(_cli_args(c, ws))
    out, err = capsys.readouterr()
    assert rc == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    _check_message(lines[0][len("error: "):], c)
    _assert_no_runs(ws)


def test_error_classes_and_one_line_messages():
    for cls in (ConfigError, DataError, ModelError):
        assert issubclass(cls, TransfuseError) and issubclass(cls, ValueError)
    assert str(DataError("a.csv:\n  bad   row\n")) == "a.csv: bad row"


def test_bad_input_after_a_finished_run_adds_no_row(tmp_path, make_csv_dataset):
    csv_path = _tiny_csv(make_csv_dataset, n=12, size=16)
    ws = tmp_path / "ws"
    good = RunSpec(data=DataSpec(name=f"csv:{csv_path}", label_columns=("label",),
                                 val_fraction=0.25, test_fraction=0.25),
                   model=ModelSpec(name="cbr_tiny"), train=TRAIN)
    out = train_run(good, workspace=ws, device="cpu", progress=False)
    assert out.record.status == "finished"
    bad = RunSpec(data=good.data, model=ModelSpec(name="resnet9000"), train=TRAIN)
    with pytest.raises(ConfigError):
        train_run(bad, workspace=ws, device="cpu", progress=False)
    assert [r.run_id for r in Store(ws).list_runs()] == [out.record.run_id]


def test_cli_runs_without_store_is_one_error_line(tmp_path, capsys):
    assert main(["runs", "list", "--workspace", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: no run store in")


def test_cli_usage_error_exits_2(capsys):
    assert main(["train", "--dataset", "medmnist:retinamnist"]) == 2  # --model missing
    assert "--model" in capsys.readouterr().err


def test_subprocess_unknown_dataset_exits_2(tmp_path):
    ws = tmp_path / "ws"
    proc = subprocess.run(
        [sys.executable, "-m", "transfuse", "train", "--dataset", "medmnist:nope", "--model", "cbr_tiny",
         "--workspace", str(ws)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "unknown MedMNIST flag 'nope'" in errors[0]
    _assert_no_runs(ws)
