"""docs/FINDINGS.md says exactly what the committed verdicts say (issue 28).

- Every generated block is the rendering of its study's committed results.json
  (docs/findings/render.py); a hand edit or a stale JSON fails.
- The lint: outside generated blocks, a sentence with a result word cites a decided verdict's code
  or is marked Caveat:/Definition:/Question:.
- docs/findings/ holds no store, checkpoint or prediction file, and stays under 2 MB.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FINDINGS = ROOT / "docs" / "FINDINGS.md"


def _render_module():
    spec = importlib.util.spec_from_file_location("findings_render", ROOT / "docs/findings/render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


render = _render_module()


def test_every_generated_block_equals_its_rendering_from_the_committed_json():
    text = FINDINGS.read_text()
    studies = [m["study"] for m in render.BEGIN.finditer(text) if not m["analysis"]]
    # every study with a committed JSON has its block, every block its JSON
    assert sorted(studies) == sorted(render.STUDIES)
    for s in studies:
        assert (ROOT / "docs/findings" / s / "results.json").is_file(), s
    assert render.render(text) == text, "run: python docs/findings/render.py"


def test_a_hand_edit_inside_a_block_is_caught():
    text = FINDINGS.read_text()
    m = next(render.BEGIN.finditer(text))
    edited = text[:m.end()] + "\nhand-written claim" + text[m.end():]
    assert render.render(edited) == text


def test_lint_passes_on_findings():
    assert render.lint(FINDINGS.read_text()) == []


@pytest.mark.parametrize("sentence", [
    "At this data size random is as good for the final score.",
    "Transfer barely changes final accuracy.",
    "Reusing the stem never helped.",
    "Random-init CBRs beat EfficientNet-Lite0 in every init.",
    "Mean-Var was 1.65× faster than random.",
    "The pretraining hurt the learning curve on CBRs.",
    "SimCLR matched ImageNet-1k.",
    "Lite0 from ImageNet is better than random [transfusion D0000].",  # no such code
])
def test_lint_flags_a_result_without_a_decided_verdict(sentence):
    text = FINDINGS.read_text() + "\n\n" + sentence + "\n"
    bad = render.lint(text)
    assert len(bad) == 1 and sentence[:40] in bad[0]


def test_lint_accepts_a_cited_decided_verdict_markers_and_generated_text():
    res = render.load("transfusion")
    decided = render.decided_codes(res)
    k, c = next((k, c) for k, c in decided.items() if c["endpoint"] == "final")
    ok = [f"Lite0 from ImageNet is better than random [transfusion {k}].",
          "Caveat: a quicker climb on validation need not carry to the test subject.",
          "Definition: `better` means the whole interval lies above zero.",
          "Question: does SimCLR beat random at 10 % of the labels?",
          "<!-- BEGIN generated: x -->\nrandom is as good, it beat everything\n<!-- END generated -->",
          "```bash\n# faster, better\n```"]
    for s in ok:
        assert render.lint(FINDINGS.read_text() + "\n\n" + s + "\n") == [], s
    # an undecided question's code is no citation
    und = next(c for c in res["comparisons"] if not render.is_decided(c))
    bad = f"It is better [transfusion {render.code(und)}]."
    assert render.lint(FINDINGS.read_text() + "\n\n" + bad + "\n") != []


def _comparison(endpoint, verdict, mean, lo, hi, *, unit="test Dice", need=None, reason="r"):
    return {"id": f"m · n_train=full · restore vs random · {endpoint}", "model": "m", "size": "full",
            "arm": "restore", "reference": "random", "endpoint": endpoint, "unit": unit, "n": 4,
            "mean": mean, "ci_low": lo, "ci_high": hi, "level": 0.98, "verdict": verdict,
            "reason": reason, "seeds_needed": need}


def _v1() -> dict:
    """A schema-1 results dict: one decided question, one undecided, one with no mean."""
    return {
        "schema": "transfuse.study-results/1", "study": "s", "metric": "dice", "family_size": 3,
        "evaluation": {"margin": 0.02, "area_margin": 0.02, "speed_margin": 1.2, "reference": "random",
                       "multiplicity": "holm", "alpha": 0.05, "power": 0.8, "sequential": None},
        "runs": {"finished": 8},
        "cells": [{"model": "m", "arm": a, "size": "full", "n": 4, "mean": x, "sd": 0.02}
                  for a, x in (("random", 0.41), ("restore", 0.247))],
        "comparisons": [
            _comparison("final", "worse", -0.163, -0.239, -0.087, reason="98.33 % interval excludes 0"),
            _comparison("area", "undecided", -0.038, -0.102, 0.026, need=15),
            _comparison("speed@0.4", "undecided", None, None, None, unit="log(steps_reference / steps_arm)",
                        reason="Dice 0.4 not reached"),
        ],
        "recommendations": [{"model": "m", "size": "full", "arm": "random", "verdict": "better",
                             "text": "random: no other arm is better at this size (4 seeds)."}],
    }


def test_verdict_sentences_from_schema_1_and_a_later_schema():
    res = _v1()
    final = res["comparisons"][0]
    assert render.verdict_of(final) == ("worse", "worse", None)
    assert render.sentence(final) == ("restore vs random, test Dice: **worse**, -0.163 [-0.239, -0.087], "
                                      "4 seeds (98.33 % interval excludes 0).")
    block = render.render_block("s", res)
    k = render.code(final)
    assert list(render.decided_codes(res)) == [k]
    assert f"- **[s {k}]** m, n_train full: restore vs random, test Dice: **worse**" in block
    assert "Verdicts: 2 undecided, 1 worse." in block
    assert "| m | full | random (reference) | 0.410 ± 0.020 (4) |" in block
    assert f"**worse** [s {k}]: -0.163 [-0.239, -0.087]" in block
    assert "- m, n_train full: random: no other arm is better at this size (4 seeds)." in block
    # schema 2 (issue 28's five answers): the verdict a code, its label and sentence beside it
    v2 = copy.deepcopy(res)
    v2["schema"] = "transfuse.study-results/2"
    for x in v2["comparisons"]:
        if x["verdict"] == "worse":
            x["verdict"], x["label"] = "worse_beyond_margin", "worse by more than the margin"
        else:
            x["label"] = x["verdict"]
        x["sentence"] = f"SENTENCE {x['endpoint']}."
    assert render.decided_codes(v2).keys() == render.decided_codes(res).keys()
    block = render.render_block("s", v2)
    assert f"- **[s {k}]** m, n_train full: SENTENCE final." in block  # model and size said once
    assert f"**worse by more than the margin** [s {k}]: -0.163" in block
    assert "Verdicts: 2 undecided, 1 worse by more than the margin." in block
    # a verdict given as an object also works
    obj = copy.deepcopy(res)
    obj["comparisons"][0]["verdict"] = {"code": "worse_within_margin", "label": "worse by less",
                                        "sentence": "OBJ."}
    assert render.verdict_of(obj["comparisons"][0]) == ("worse_within_margin", "worse by less", "OBJ.")
    assert f"- **[s {k}]** m, n_train full: OBJ." in render.render_block("s", obj)


def test_undecided_rows_give_the_seeds_they_would_need():
    block = render.render_block("s", _v1())
    assert "Undecided: 2 of 3 questions; the seeds each would need at this margin and 80% power: 15 " \
           "(1 without an estimate" in block
    assert "undecided -0.038 [-0.102, +0.026]; ≈ 15 seeds" in block
    assert "undecided: Dice 0.4 not reached" in block  # no mean: the reason instead
    res = _v1()
    res["comparisons"][1]["seeds_needed"] = None
    assert "undecided -0.038 [-0.102, +0.026]; no seed count in reach" in render.render_block("s", res)


def test_codes_are_stable_and_unique():
    for s in render.STUDIES:
        res = render.load(s)
        codes = [render.code(c) for c in res["comparisons"]]
        assert len(set(codes)) == len(codes), s
        # the code ignores the numbers: a re-export with other results keeps it
        c = copy.deepcopy(res["comparisons"][0])
        c["mean"], c["verdict"] = 0.5, "better"
        assert render.code(c) == codes[0]


def test_findings_folder_holds_no_store_and_stays_small():
    files = subprocess.run(["git", "ls-files", "docs/findings"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    assert files, "git ls-files found nothing"
    bad = [f for f in files if f.endswith((".db", ".npz", ".pt", ".pth", ".ckpt", ".db-wal"))]
    assert bad == []
    total = sum((ROOT / f).stat().st_size for f in files if (ROOT / f).is_file())
    assert total <= 2 * 1024 * 1024, total
    for s in render.STUDIES:
        for name in ("results.json", "study.yaml", "README.md"):
            assert f"docs/findings/{s}/{name}" in files
        assert json.loads((ROOT / "docs/findings" / s / "results.json").read_text())["study"] == s


def _tiny_store(ws: Path, study: str) -> None:
    """A store with one model, random vs meanvar over 3 seeds, meanvar ahead by 0.100, 0.102, 0.104 AUC."""
    from transfuse.config import spec_from_dict
    from transfuse.store import Store

    store = Store(ws)
    for seed in range(3):
        for init, auc, curve in (("random", 0.70 + 0.01 * seed, [0.5, 0.6, 0.7]),
                                 ("meanvar", 0.80 + 0.012 * seed, [0.5, 0.75, 0.8])):
            spec = spec_from_dict({"data": {"name": "synthetic"}, "model": {"name": "cbr_tiny"},
                                   "init": {"name": init}, "seed": seed, "study": study})
            rid = store.start_run(spec)
            store.set_info(rid, data_info={"task": "multiclass", "name": "synthetic"},
                           model_info={"name": "cbr_tiny", "spatial_dims": 2})
            for step, v in zip((0, 10, 20), curve):
                store.log_metrics(rid, step, "val", {"auc": v, "loss": 1 - v})
            store.finish_run(rid, step=20, test_metrics={"auc": auc}, summary={})


def test_from_store_reexports_the_json_and_renders_it(tmp_path):
    stores, root = tmp_path / "stores", tmp_path / "findings"
    _tiny_store(stores / "ssl-seg3d-store", "ssl_seg3d_brain")  # a store under its old folder name
    doc = tmp_path / "FINDINGS.md"
    doc.write_text("# x\n\n<!-- BEGIN generated: ssl_seg3d_brain -->\nstale\n<!-- END generated -->\n")
    assert render.main(["--from-store", str(stores), "--root", str(root), "--findings", str(doc)]) == 0
    res = json.loads((root / "ssl_seg3d_brain/results.json").read_text())
    assert res["study"] == "ssl_seg3d_brain" and res["runs"]["finished"] == 6
    final = next(c for c in res["comparisons"] if c["endpoint"] == "final")
    assert final["arm"] == "meanvar" and final["mean"] == pytest.approx(0.102, abs=1e-9)  # (0.100 + 0.102 + 0.104) / 3
    text = doc.read_text()
    assert "stale" not in text and text == render.render(text, root)
    assert render.main(["--check", "--root", str(root), "--findings", str(doc)]) == 0
    doc.write_text(text.replace("meanvar", "MEANVAR", 1))
    assert render.main(["--check", "--root", str(root), "--findings", str(doc)]) == 1
    assert render.main(["--from-store", str(tmp_path / "nowhere"), "--root", str(root),
                        "--findings", str(doc)]) == 2


def _snapshot_module():
    spec = importlib.util.spec_from_file_location("snapshot_store", ROOT / "docs/findings/snapshot_store.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_snapshot_store_copies_a_study_outside_the_repo_and_refuses_a_tracked_destination(tmp_path):
    snap = _snapshot_module()
    _tiny_store(tmp_path / "ws", "finetune")
    snap.main(str(tmp_path / "ws"), "finetune", str(tmp_path / "snap"))
    root = tmp_path / "json"
    assert [p.parent.name for p in render.export(tmp_path / "snap", root)] == ["finetune"]
    assert json.loads((root / "finetune/results.json").read_text())["runs"]["finished"] == 6
    inside = ROOT / "docs" / "test-snapshot-not-ignored"
    with pytest.raises(SystemExit, match="inside a git work tree and not ignored"):
        snap.main(str(tmp_path / "ws"), "finetune", str(inside))
    assert not inside.exists()  # refused before writing anything


def _change_json():
    q = {"dataset": "d", "size": "all", "arm": "pretrained", "smaller": "cbr_tiny",
         "larger": "cbr_small", "stage": "block3", "verdict": "better_beyond_margin", "mean": 0.2,
         "ci_low": 0.1, "ci_high": 0.3, "predicted": {"width": 0, "parameters": 1, "update_rms": None}}
    und = {**q, "stage": "head", "verdict": "undecided", "ci_low": None, "ci_high": None}
    stage = {"stage": "block3", "width": 256, **{m: {"n": 3, "mean": 0.9, "ci_low": 0.8, "ci_high": 1.0}
                                                for m in ("cka", "relative_change", "update_rms",
                                                          "lr", "effective_lr")}}
    return {"study": "transfusion", "options": {"margin": 0.05}, "comparisons": [q, und],
            "cells": [{"model": "cbr_tiny", "size": "all", "arm": "pretrained", "stages": [stage]}],
            "tracks": {"sentence": "Changing less tracks the parameter count best here."}}, q, und


def test_analysis_blocks_render_from_their_json_and_their_codes_can_be_cited(tmp_path):
    import shutil

    root = tmp_path / "findings"
    (root / "transfusion").mkdir(parents=True)
    shutil.copy(ROOT / "docs/findings/transfusion/results.json", root / "transfusion")
    d, q, und = _change_json()
    (root / "transfusion" / "change.json").write_text(json.dumps(d))
    (root / "transfusion" / "transferability.json").write_text(json.dumps({"agreements": [
        {"model": "m", "size": "all", "estimator": "logme", "arms": ["a", "b", "c"], "tau": 1 / 3,
         "ci_low": -1 / 3, "ci_high": 1.0, "n_seeds": 3},
        {"model": "m", "size": "all", "estimator": "leep", "arms": ["a", "b", "c"], "tau": 1.0,
         "ci_low": 1 / 3, "ci_high": 1.0, "n_seeds": 3}], "skipped": {}}))
    text = ("# F\n\n<!-- BEGIN generated: transfusion/change -->\n<!-- END generated -->\n\n"
            "<!-- BEGIN generated: transfusion/transferability -->\n<!-- END generated -->\n")
    out = render.render(text, root)
    assert render.render(out, root) == out  # stable
    code = render.change_code(q)
    assert code.startswith("C") and f"| {code} | all | pretrained | block3 |" in out
    assert "| 0.900 [0.800, 1.000] |" in out and "+0.200 [+0.100, +0.300]" in out
    assert "Changing less tracks the parameter count best here." in out
    assert "| leep | 1 of 1 | +1.00 | 1 | 0 | 0 |" in out and "Highest mean τ: `leep` (+1.00)." in out
    tie = {"agreements": [{"model": "m", "size": "all", "estimator": e, "arms": ["a", "b", "c"],
                           "tau": 1 / 3, "ci_low": -1 / 3, "ci_high": 1.0, "n_seeds": 3}
                          for e in ("probe", "logme")], "skipped": {}}
    assert "Highest mean τ: `logme` and `probe` (+0.33, tied)." in \
        render.render_transferability("transfusion", tie)
    ok = out + f"\nThe larger CBR changed less at block3, which helped [transfusion {code}].\n"
    assert render.lint(ok, root) == []
    bad = out + f"\nThe head barely changes [transfusion {render.change_code(und)}].\n"
    assert len(render.lint(bad, root)) == 1
    with pytest.raises(SystemExit, match="needs .*forgetting.json"):
        render.render("<!-- BEGIN generated: transfusion/forgetting -->\n<!-- END generated -->\n", root)


def test_decided_forgetting_verdicts_get_a_citable_code(tmp_path):
    # issue 31: a decided strategy-vs-full forgetting verdict is cited like a change verdict
    import shutil

    root = tmp_path / "findings"
    (root / "transfusion").mkdir(parents=True)
    shutil.copy(ROOT / "docs/findings/transfusion/results.json", root / "transfusion")

    def curve(arm, verdict):
        v = {"versus": "pretrained", "verdict": verdict, "mean": -0.2, "ci_low": -0.3,
             "ci_high": -0.1, "n": 2, "margin": 0.1} if verdict else {}
        return {"model": "m", "size": "all", "arm": arm, "stages": ["none", "stem"], "seeds": [0, 1],
                "mean": [-1.0, -1.2], "ci_low": [-1.1, -1.3], "ci_high": [-0.9, -1.1],
                "monotone": True, "verdict": v}
    decided, und = curve("pretrained · layer_decay=0.7", "worse_beyond_margin"), \
        curve("pretrained · linear_probe", "undecided")
    (root / "transfusion" / "forgetting.json").write_text(json.dumps({
        "curves": [], "imagenet": {"n_photos": 6, "curves": [curve("pretrained", None), decided, und]}}))
    out = render.render("# F\n\n<!-- BEGIN generated: transfusion/forgetting -->\n"
                        "<!-- END generated -->\n", root)
    code = render.forgetting_code("imagenet", decided)
    assert code.startswith("F") and code != render.forgetting_code("source", decided)
    assert f"**[transfusion {code}]** worse_beyond_margin -0.200 [-0.300, -0.100]" in out
    assert out.count("**[transfusion F") == 1  # the undecided verdict has no code
    assert render.lint(out + f"\nLayer decay hurt ImageNet [transfusion {code}].\n", root) == []
    und_code = render.forgetting_code("imagenet", und)
    assert len(render.lint(out + f"\nLinear probing helped [transfusion {und_code}].\n", root)) == 1
