"""The registries' metadata snapshot (transfuse/catalog.json) matches the live registries, and the
commands that read it list every entry without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys

from transfuse import catalog


def test_snapshot_matches_the_registries():
    live = json.loads(json.dumps(catalog.snapshot(), sort_keys=True))
    stored = json.loads(catalog.PATH.read_text())
    for kind in live:
        assert stored.get(kind) == live[kind], (
            f"transfuse/catalog.json is out of date for {kind}: run `python -m transfuse.catalog --write`")
    assert set(stored) == set(live)


def test_needs_source_agrees_with_registry():
    from transfuse.inits import INITS

    for e in INITS:
        assert catalog.init_needs_source(e.name) is bool(e.meta["needs_source"])


def test_unknown_init_falls_back_to_registry_error():
    import pytest

    from transfuse.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown init 'meanvarr'.*meanvar"):
        catalog.init_needs_source("meanvarr")


def test_listing_and_status_import_no_torch(tmp_path):
    code = ("import contextlib, io, sys\n"
            "from transfuse.cli import main\n"
            "out = {}\n"
            "for cmd in ('datasets', 'models', 'inits'):\n"
            "    buf = io.StringIO()\n"
            "    with contextlib.redirect_stdout(buf):\n"
            "        assert main([cmd]) == 0\n"
            "    out[cmd] = buf.getvalue()\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            f"    assert main(['study', 'status', 'examples/quickstart.yaml', '-w', {str(tmp_path)!r}]) == 0\n"
            "out['status'] = buf.getvalue()\n"
            "out['heavy'] = [m for m in ('torch', 'numpy', 'monai', 'timm', 'torchvision') if m in sys.modules]\n"
            "import json; print(json.dumps(out))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["heavy"] == []
    cat = catalog.load()
    for name in cat["models"]:
        assert f"  {name} " in out["models"]
    for name in cat["datasets"]:
        assert f"  {name} " in out["datasets"]
    for name, meta in cat["inits"].items():
        assert (f"  {name}:{meta['arg']}" if meta["arg"] else f"  {name} ") in out["inits"]
    assert "missing" in out["status"] and "runs" in out["status"]


def test_runtime_registrations_stay_out_of_the_snapshot():
    from transfuse.data.registry import DATASETS, register_dataset

    if "catalogtoy" not in DATASETS:
        register_dataset("catalogtoy", description="test-only")(lambda *a, **k: None)
    assert "catalogtoy" in DATASETS
    assert "catalogtoy" not in catalog.snapshot()["datasets"]
    assert "catalogtoy" not in {e.name for e in catalog.builtin(DATASETS)}
    test_snapshot_matches_the_registries()
