"""Self-supervised pretraining as a study stage: ``pretrain: {name: {ssl: FILE}}`` runs first,
is skipped when finished, becomes the source ``ssl:<name>`` of its cells, and the report names
the arm and its cost."""

from __future__ import annotations

import json

import pytest

from tests.test_ssl import _raw, _yaml, pneumonia  # noqa: F401  (pneumonia: a fixture)
from transfuse.cli import main
from transfuse.errors import ConfigError
from transfuse.store import Store
from transfuse.study import load_study

pytestmark = pytest.mark.usefixtures("one_thread_module")

STUDY = """
name: sslstudy
pretrain:
  own: {ssl: own.yaml}
base:
  data: {name: "medmnist:pneumoniamnist@28", data_root: "ROOT", image_size: 16}
  model: {name: cbr_tiny}
  init: {source: "pretrain:own"}
  train: {steps: 4, eval_every: 2, batch_size: 8}
grid:
  init.name: [random, pretrained, "transfusion:block1"]
  data.fraction: [0.5, null]
"""


def _study(tmp_path, root, text: str = STUDY):
    _yaml(tmp_path / "own.yaml", _raw(root, name="own", steps=3))
    f = tmp_path / "study.yaml"
    f.write_text(text.replace("ROOT", str(root)))
    return f


def test_ssl_entry_runs_first_is_skipped_when_done_and_reported(pneumonia, tmp_path, capsys):  # noqa: F811
    root, _ = pneumonia
    f, ws = _study(tmp_path, root), tmp_path / "ws"
    assert main(["study", "run", str(f), "-w", str(ws), "--workers", "1", "--no-progress"]) == 0
    assert "6 trained now" in capsys.readouterr().out
    meta_path = ws / "pretrain" / "own" / "pretrain.json"
    meta = json.loads(meta_path.read_text())
    assert meta["kind"] == "ssl" and meta["cost"]["steps"] == 3
    runs = Store(ws).list_runs(study="sslstudy")
    sources = {r.spec["init"]["name"]: r.spec["init"].get("source") for r in runs}
    assert sources == {"random": None, "pretrained": "ssl:own", "transfusion:block1": "ssl:own"}
    loaded = [r.init_report["source_info"]["name"] for r in runs if r.spec["init"]["name"] != "random"]
    assert loaded == ["ssl:own"] * 4

    before = (meta_path.stat().st_mtime_ns, (meta_path.parent / "encoder.pt").stat().st_mtime_ns)
    assert main(["study", "run", str(f), "-w", str(ws), "--workers", "1", "--no-progress"]) == 0
    assert "0 trained now, 6 already finished" in capsys.readouterr().out
    assert (meta_path.stat().st_mtime_ns, (meta_path.parent / "encoder.pt").stat().st_mtime_ns) == before

    assert main(["report", str(ws), "--study", "sslstudy", "-o", str(tmp_path / "r.html")]) == 0
    html = (tmp_path / "r.html").read_text()
    assert 'id="ssl-pretraining"' in html and "pretrained (ssl:own)" not in html  # one source
    section = html[html.index('id="ssl-pretraining"'):]
    assert "<td>ssl:own</td><td>simclr</td><td>cbr_tiny</td>" in section
    assert main(["report", str(ws), "--study", "sslstudy", "--format", "json",
                 "-o", str(tmp_path / "r.json")]) == 0
    data = json.loads((tmp_path / "r.json").read_text())
    (cost,) = data["pretraining"]
    assert (cost["source"], cost["steps"], cost["images_seen"]) == ("ssl:own", 3, 24)
    import jsonschema

    from transfuse.report.export import schema

    jsonschema.validate(data, schema())


def test_ssl_entry_is_checked_like_a_med3d_entry(pneumonia, tmp_path, capsys):  # noqa: F811
    root, _ = pneumonia
    f = _study(tmp_path, root)
    from transfuse.study.check import check_study
    from transfuse.study.spec import expand, external_sources

    study = load_study(f)
    assert external_sources(study) == {"own": "ssl:own"}
    assert external_sources(study, smoke=True) == {"own": "ssl:own-smoke"}
    report = check_study(study, workspace=tmp_path / "ws")
    assert report.ok, report.lines()
    assert report.cells == len(expand(study)) == 6
    for text, needle in [
        (STUDY.replace("{ssl: own.yaml}", "{ssl: nowhere.yaml}"), "pretrain.own.ssl: "),
        (STUDY.replace("{ssl: own.yaml}", "{ssl: own.yaml, steps: 3}"),
         "pretrain.own: a self-supervised entry is only {ssl: path/to/file.yaml}"),
    ]:
        g = tmp_path / "bad.yaml"
        g.write_text(text.replace("ROOT", str(root)))
        with pytest.raises(ConfigError, match="bad.yaml: ") as e:
            load_study(g)
        assert needle in str(e.value) and "\n" not in str(e.value)
    _yaml(tmp_path / "own.yaml", {**_raw(root, name="own"), "method": "moco"})
    with pytest.raises(ConfigError, match="own.yaml"):  # the SSL file itself is validated too
        load_study(f)


def test_pretrain_records_read_each_source_once_and_never_outside_the_workspace(tmp_path):
    from types import SimpleNamespace

    from transfuse.report.pretrained import pretrain_records

    (tmp_path / "pretrain" / "ok").mkdir(parents=True)
    (tmp_path / "pretrain" / "ok" / "pretrain.json").write_text('{"kind": "ssl", "method": "byol"}')
    (tmp_path / "pretrain.json").write_text('{"kind": "outside"}')  # what "ssl:.." would reach
    runs = [SimpleNamespace(spec={"init": {"source": s}})
            for s in ("ssl:ok", "ssl:ok", "ssl:..", "ssl:gone", "med3d:ok", None)]
    store = SimpleNamespace(workspace=tmp_path, list_runs=lambda study: runs)
    records, notes = pretrain_records(store, "s", prefix="ssl")
    assert records == [("ssl:ok", {"kind": "ssl", "method": "byol"})]
    assert len(notes) == 2 and notes[0].startswith("ssl:..: ") and "not a valid name" in notes[0]
    assert notes[1].startswith("ssl:gone: ") and "missing or unreadable" in notes[1]
    assert [s for s, _ in pretrain_records(store, "s", prefix="med3d")[0]] == ["med3d:ok"]
