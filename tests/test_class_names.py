"""MedMNIST class names (issue 33): every flag carries its labels, and runs print them."""

from __future__ import annotations

import re

import pytest

from transfuse.cli import main
from transfuse.data.medmnist import CLASS_NAMES, MEDMNIST_INFO


@pytest.mark.parametrize("flag", list(MEDMNIST_INFO))
def test_every_flag_has_its_class_names(flag):
    names = CLASS_NAMES[flag]
    assert len(names) == MEDMNIST_INFO[flag][1] == len(set(names))
    if flag != "retinamnist":  # grades are numbers, named grade0..grade4
        assert not any(n.isdigit() for n in names)
    assert all(re.fullmatch(r"[0-9a-z_]+", n) for n in names)  # safe as metric keys / CSV columns


def test_the_table_is_medmnists_info():
    info = pytest.importorskip("medmnist.info").INFO
    from tools.medmnist_classes import slug

    for flag, names in CLASS_NAMES.items():
        if flag in ("retinamnist", "breastmnist"):  # names transfuse gave before the table
            continue
        assert names == tuple(slug(info[flag]["label"][str(i)]) for i in range(len(names)))


def _train_then_show(ws, root, flag, capsys):
    assert main(["train", "--dataset", f"medmnist:{flag}", "--data-root", str(root), "--n-train", "8",
                 "--model", "cbr_tiny", "--steps", "1", "--eval-every", "1", "--batch-size", "4",
                 "--workspace", str(ws), "--no-progress", "--json"]) == 0
    import json
    rid = json.loads(capsys.readouterr().out)["run_id"]
    assert main(["runs", "show", rid, "--workspace", str(ws)]) == 0
    return capsys.readouterr().out


def test_3d_runs_print_class_names(tmp_path, adrenalmnist3d_npz, make_npz, capsys):
    make_npz(tmp_path / "vesselmnist3d.npz", n=(8, 6, 6), shape=(28, 28, 28), num_classes=2)
    out = _train_then_show(tmp_path / "ws", tmp_path, "vesselmnist3d", capsys)
    assert re.search(r"\(vessel \d\.\d{3}, aneurysm \d\.\d{3}\)", out), out  # in class order
    out = _train_then_show(tmp_path / "ws", adrenalmnist3d_npz.parent, "adrenalmnist3d", capsys)
    assert re.search(r"\(normal \d\.\d{3}, hyperplasia \d\.\d{3}\)", out), out
    # the train command's own lines too (the run is stored: its results are printed again)
    assert main(["train", "--dataset", "medmnist:adrenalmnist3d", "--data-root",
                 str(adrenalmnist3d_npz.parent), "--n-train", "8", "--model", "cbr_tiny", "--steps",
                 "1", "--eval-every", "1", "--batch-size", "4", "--workspace", str(tmp_path / "ws"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"test AUC \d\.\d{4} \(normal \d\.\d{3}, hyperplasia \d\.\d{3}\)", out), out
    assert "clinical  threshold " in out and "sensitivity" in out and "ECE" in out
