"""The bench scripts a GPU session runs in its one short device call still start: every
``bench/*.sh`` parses (``bash -n``), every ``bench/*.py`` with options answers ``--help``
(imports, arguments), and (slow) the cohort throughput bench and the training-overhead bench run
end to end on the CPU at a tiny size, printing their ratio lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
HELP = ["init_speed.py", "seg3d_throughput.py", "study_throughput.py", "train_overhead.py"]


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.sh")))
def test_shell_scripts_parse(script):
    out = subprocess.run(["bash", "-n", str(BENCH / script)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_python_benches_answer_help():
    """One interpreter for all of them: each script's ``--help`` exits 0 and names its options."""
    code = (
        "import runpy, sys, io, contextlib\n"
        f"for name in {HELP!r}:\n"
        f"    sys.argv = [name, '--help']\n"
        "    buf = io.StringIO()\n"
        "    try:\n"
        "        with contextlib.redirect_stdout(buf):\n"
        f"            runpy.run_path({str(BENCH)!r} + '/' + name, run_name='__main__')\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (name, e.code)\n"
        "    assert '--device' in buf.getvalue() or '--help' in buf.getvalue(), name\n"
        "    print(name, 'ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [w for n in HELP for w in (n, "ok")]


@pytest.mark.slow
def test_cohort_and_overhead_benches_run_on_the_cpu():
    env_cmd = [sys.executable, "bench/study_throughput.py", "--device", "cpu", "--data",
               "builtin:brain_tissue", "--seeds", "2", "--solo1-seeds", "1", "--steps", "3",
               "--batch", "16", "--cohort", "4", "--probe-steps", "2", "--timeout", "300"]
    out = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "cohort / solo-8:" in out.stdout and "probe" in out.stdout
    out = subprocess.run([sys.executable, "bench/train_overhead.py", "--device", "cpu", "--model",
                          "cbr_tiny", "--size", "16", "--batch", "16", "--steps", "6",
                          "--repeats", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ratio fit/on-device bare:" in out.stdout
