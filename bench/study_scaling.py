"""Study runner scaling: an 8-run study with --workers 2 vs --workers 1 (and on Ray).

    python bench/study_scaling.py [--steps 60] [--no-ray]

Prints the wall time of each configuration and the ratio to ``--workers 1`` measured in the same
run (target: ≤ 0.6 on 2 cores). Every configuration starts from an empty workspace; the built-in
data cache is warmed first so no configuration pays for building it. With ``--workers 1`` the run
gets every core as intra-op threads; with N workers each gets cores/N threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

STUDY = """
name: scaling
base:
  data: {{name: "builtin:brain_tissue", n_train: 512}}
  model: {{name: cbr_tiny}}
  train: {{steps: {steps}, batch_size: 32, eval_every: {steps}, lr: 0.02}}
grid:
  init: [random, "random:kaiming", gabor, "gabor:high"]
  seed: [0, 1]
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--no-ray", action="store_true")
    a = ap.parse_args()
    from transfuse.data import load_dataset
    from transfuse.config import DataSpec
    from transfuse.study import expand, load_study, run_study

    load_dataset(DataSpec(name="builtin:brain_tissue"))  # warm the on-disk cache
    tmp = Path(tempfile.mkdtemp(prefix="transfuse-scaling-"))
    path = tmp / "scaling.yaml"
    path.write_text(STUDY.format(steps=a.steps))
    study = load_study(path)
    n = len(expand(study))
    configs = [("local", 1), ("local", 2)]
    if not a.no_ray:
        try:
            import ray  # noqa: F401

            configs.append(("ray", 2))
        except ImportError:
            print("ray not installed: skipping the Ray executor (pip install 'transfuse[ray]')")
    times = {}
    for executor, workers in configs:
        ws = tmp / f"ws-{executor}-{workers}"
        t0 = time.perf_counter()
        out = run_study(study, workspace=ws, workers=workers, executor=executor, progress=False)
        times[(executor, workers)] = time.perf_counter() - t0
        assert out.ok and len(out.finished) == n, out.failed
    base = times[("local", 1)]
    print(f"study scaling: {n} runs of cbr_tiny, {a.steps} steps each, {os.cpu_count()} CPUs, "
          f"python {sys.version.split()[0]}")
    print(f"{'executor':<8} {'workers':>7} {'wall s':>8} {'ratio vs 1 worker':>18}")
    for (executor, workers), t in times.items():
        print(f"{executor:<8} {workers:>7} {t:8.1f} {t / base:18.2f}")


if __name__ == "__main__":
    main()
