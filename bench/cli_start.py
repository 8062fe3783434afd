"""CLI start-up cost (issue #14): wall time and peak RSS of everyday commands, beside baselines.

Each command runs in a fresh interpreter, ``--repeat`` times (median wall time, largest peak RSS;
RSS from ``resource.getrusage(RUSAGE_CHILDREN)`` of a wrapper process, so only that command
counts). Baselines measured in the same run: ``python -c pass`` (the interpreter) and
``python -c "import torch"`` (what every command paid before the CLI became lazy). Targets on a
2-core CPU machine: ``transfuse --help`` and ``transfuse runs list`` ≤ 0.5 s and ≤ 100 MB.

    python bench/cli_start.py                 # 5 repeats; a tiny workspace with 3 stored runs
    python bench/cli_start.py --repeat 9 --workspace WS   # list a workspace of your own
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

_WRAP = textwrap.dedent("""
    import json, resource, subprocess, sys, time
    t = time.perf_counter()
    rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
    wall = time.perf_counter() - t
    kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"wall": wall, "rss_mb": kb / 1024, "rc": rc}))
""")


def measure(cmd: list[str], *, repeat: int) -> dict[str, float]:
    """Median wall seconds and the largest peak RSS (MB) of ``cmd`` over ``repeat`` fresh runs."""
    out = []
    for _ in range(repeat):
        res = subprocess.run([sys.executable, "-c", _WRAP, *cmd], capture_output=True, text=True, check=True)
        out.append(json.loads(res.stdout))
    if any(o["rc"] != 0 for o in out):
        raise SystemExit(f"{' '.join(cmd)} exited {out[0]['rc']}")
    return {"wall": statistics.median(o["wall"] for o in out), "rss_mb": max(o["rss_mb"] for o in out)}


EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml"


def tiny_workspace(root: Path) -> Path:
    """A workspace with three finished 2-step runs (cbr_tiny on builtin:brain_tissue)."""
    code = textwrap.dedent(f"""
        from transfuse import DataSpec, ModelSpec, RunSpec, TrainSpec, train_run
        for seed in range(3):
            spec = RunSpec(data=DataSpec(name="builtin:brain_tissue", n_train=32),
                           model=ModelSpec(name="cbr_tiny"),
                           train=TrainSpec(steps=2, eval_every=2, batch_size=16), seed=seed)
            train_run(spec, workspace={str(root)!r}, device="cpu", progress=False)
    """)
    subprocess.run([sys.executable, "-c", code], check=True)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="fresh runs per command (default 5)")
    ap.add_argument("--workspace", help="workspace for `runs list` (default: a tiny one made here)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = a.workspace or str(tiny_workspace(Path(tmp) / "ws"))
        py = [sys.executable]
        cli = [sys.executable, "-m", "transfuse"]
        rows = {
            "python -c pass": measure([*py, "-c", "pass"], repeat=a.repeat),
            "python -c 'import torch'": measure([*py, "-c", "import torch"], repeat=a.repeat),
            "transfuse --help": measure([*cli, "--help"], repeat=a.repeat),
            "transfuse runs list": measure([*cli, "runs", "list", "-w", ws], repeat=a.repeat),
            "transfuse runs show": measure([*cli, "runs", "show", _first_run(ws), "-w", ws],
                                           repeat=a.repeat),
            "transfuse models": measure([*cli, "models"], repeat=a.repeat),
            "transfuse datasets": measure([*cli, "datasets"], repeat=a.repeat),
            "transfuse study status": measure([*cli, "study", "status", str(EXAMPLE), "-w", ws],
                                              repeat=a.repeat),
        }
    torch = rows["python -c 'import torch'"]
    print(f"{'command':<28} {'wall s':>7} {'peak MB':>8} {'wall / import torch':>20} {'target':>14}")
    for name, r in rows.items():
        target = "≤ 0.5 s, 100 MB" if name in ("transfuse --help", "transfuse runs list") else ""
        ok = "" if not target else ("  ok" if r["wall"] <= 0.5 and r["rss_mb"] <= 100 else "  MISSED")
        print(f"{name:<28} {r['wall']:>7.3f} {r['rss_mb']:>8.1f} {r['wall'] / torch['wall']:>19.2f}x "
              f"{target:>14}{ok}")


def _first_run(ws: str) -> str:
    import sqlite3

    con = sqlite3.connect(Path(ws) / "transfuse.db")
    try:
        return con.execute("SELECT run_id FROM runs ORDER BY created LIMIT 1").fetchone()[0]
    finally:
        con.close()


if __name__ == "__main__":
    main()
