"""Arm labels (issue 33): one function tells full fine-tuning, the linear probe and an ssl:
source apart in runs list, runs show, runs export and study status -v, as the report does."""

from __future__ import annotations

import csv
import io

from transfuse.arms import arm_label, arm_labels
from transfuse.cli import main
from transfuse.config import DataSpec, InitSpec, ModelSpec, RunSpec, TrainSpec
from transfuse.store import Store
from transfuse.decide.results import cell_keys

IMAGENET = "imagenet:efficientnet_lite0"
SSL = "ssl:/ws/ssl/simclr-abc/encoder.pt"
ARMS = {
    "full": RunSpec(data=DataSpec(name="medmnist:breastmnist"), model=ModelSpec(name="efficientnet_lite0"),
                    init=InitSpec(name="pretrained", source=IMAGENET), study="s"),
    "probe": RunSpec(data=DataSpec(name="medmnist:breastmnist"), model=ModelSpec(name="efficientnet_lite0"),
                     init=InitSpec(name="pretrained", source=IMAGENET),
                     train=TrainSpec(finetune="linear_probe"), study="s"),
    "ssl": RunSpec(data=DataSpec(name="medmnist:breastmnist"), model=ModelSpec(name="efficientnet_lite0"),
                   init=InitSpec(name="pretrained", source=SSL), study="s"),
    "balanced": RunSpec(data=DataSpec(name="medmnist:breastmnist"), model=ModelSpec(name="efficientnet_lite0"),
                        train=TrainSpec(sampler="balanced", early_stop=5), study="s"),
}
EXPECT = {"full": f"pretrained ({IMAGENET})", "probe": f"pretrained ({IMAGENET}) · linear_probe",
          "ssl": f"pretrained ({SSL})", "balanced": "random · sampler=balanced · early_stop=5"}


def test_one_label_function_for_report_and_cli():
    specs = [s.to_dict() for s in ARMS.values()]
    assert arm_labels(specs) == list(EXPECT.values())
    assert [k[1] for k in cell_keys(specs)] == list(EXPECT.values())  # the report's cells
    assert arm_label(specs[1]) == "pretrained · linear_probe"  # alone: no source needed


def test_runs_list_show_export_tell_the_arms_apart(tmp_path, capsys):
    store = Store(tmp_path)
    ids = {}
    for k, spec in ARMS.items():
        ids[k] = store.start_run(spec)
        store.finish_run(ids[k], step=1, test_metrics={"auc": 0.9}, summary={})
    assert main(["runs", "list", "-w", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = {ln.split()[0]: ln for ln in out.splitlines()[1:]}
    for k, rid in ids.items():
        assert EXPECT[k] in line[rid], line[rid]
    assert len({EXPECT[k] for k in ids}) == 4
    assert main(["runs", "show", ids["probe"], "-w", str(tmp_path)]) == 0
    assert f"arm    pretrained ({IMAGENET}) · linear_probe" in capsys.readouterr().out
    rows = list(csv.DictReader(io.StringIO(store.export(fmt="csv"))))
    assert {r["run_id"]: r["arm"] for r in rows} == {ids[k]: EXPECT[k] for k in ids}
