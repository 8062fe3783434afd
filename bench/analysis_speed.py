"""Representation-analysis speed (issue #5): a layer × layer grid vs NumPy pair by pair.

Workload: two "runs" of 8 stages each, every stage 5,000 datapoints × 512 features (float64),
compared in a full 8 × 8 grid (64 pairs) with mean CCA, SVCCA (99 % of the variance), PWCCA (full
data, Morcos et al.) and linear CKA. The activations are synthetic but shaped like trained layers:
a shared 64-dimensional latent mixed per stage, stage-specific noise with a decaying spectrum,
a ReLU and a positive offset, so CCA/CKA values are spread over (0, 1) rather than 0 or 1.

- **transfuse**: ``similarity_grid`` — each of the 16 layers is factored once (eigendecomposition
  of its Gram matrix), then every pair costs one ``n·r²`` product (one GEMM per row of the grid)
  and small ``r × r`` eigendecompositions.
- **baseline**: the plain float64 NumPy implementations written from the papers that the test
  suite checks against (``tests/test_analysis_reference.py``), called pair by pair, as a user of
  google/svcca + the CKA demo would.

Both run single-threaded (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``) in the same
process; wall and CPU seconds are both reported (on a shared machine the single-threaded CPU
time is the steadier). Every pair's four numbers must agree to 1e-6. The single-pair ratio is the time of one
pair with ``similarity_grid`` on a 1 × 1 grid (both layers factored inside the clock) vs the
NumPy pair. Then minibatch CKA: ``MinibatchCKA`` over 50,000 × 2,048 activations per side,
streamed in batches of 1,000 (never materialised), in a fresh subprocess whose peak RSS is
reported (target < 1 GB).

    python bench/analysis_speed.py                 # the full workload (several minutes)
    python bench/analysis_speed.py --quick         # 2,000 × 256, 4 stages: a sanity check
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_analysis_reference import np_cca, np_linear_cka, np_pwcca, np_svcca  # noqa: E402

from transfuse.analysis import MinibatchCKA, linear_cka, similarity_grid  # noqa: E402

MEASURES = ("cca", "svcca", "pwcca", "linear_cka")


def make_layers(n: int, p: int, stages: int, *, seed: int) -> list[np.ndarray]:
    """Stage activations of one synthetic run: shared latent + stage noise, ReLU, offset."""
    rng = np.random.default_rng(seed)
    latent = np.random.default_rng(1234).standard_normal((n, 64))  # the same inputs for every run
    out = []
    for s in range(stages):
        mix = rng.standard_normal((64, p)) / 8
        noise = rng.standard_normal((n, p)) * np.geomspace(1.0, 0.02, p) * (0.5 + s / stages)
        out.append(np.maximum(latent @ mix + noise, 0) + 0.1)
    return out


def reference_pair(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return {"cca": float(np_cca(x, y)[0].mean()), "svcca": np_svcca(x, y, 0.99),
            "pwcca": np_pwcca(x, y), "linear_cka": np_linear_cka(x, y)}


class Clock:
    """Wall and CPU (process) seconds. The machine may be shared: single-threaded CPU time is
    the steadier of the two, so both are reported and the ratio is given for both."""

    def __enter__(self) -> "Clock":
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


def bench_grid(xs: list[np.ndarray], ys: list[np.ndarray]) -> tuple[tuple[float, float], tuple[float, float], float]:
    """((wall, cpu) transfuse grid, (wall, cpu) NumPy pair by pair, max |difference|)."""
    tx = {f"a{i}": torch.from_numpy(x) for i, x in enumerate(xs)}
    ty = {f"b{i}": torch.from_numpy(y) for i, y in enumerate(ys)}
    with Clock() as ours:
        g = similarity_grid(tx, ty, measures=MEASURES, keep=0.99)
    wall = cpu = worst = 0.0
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            with Clock() as c:
                ref = reference_pair(x, y)
            wall, cpu = wall + c.wall, cpu + c.cpu
            for m in MEASURES:
                worst = max(worst, abs(float(g.values[m][i, j]) - ref[m]))
        print(f"  reference row {i + 1}/{len(xs)} done ({wall:.0f} s so far)", flush=True)
    return (ours.wall, ours.cpu), (wall, cpu), worst


def bench_single(x: np.ndarray, y: np.ndarray, repeats: int) -> tuple[float, float]:
    """Median CPU seconds of one pair: transfuse 1 × 1 grid vs NumPy (all four measures)."""
    ours, ref = [], []
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(repeats):
        with Clock() as c:
            similarity_grid({"a": tx}, {"b": ty}, measures=MEASURES, keep=0.99)
        ours.append(c.cpu)
        with Clock() as c:
            reference_pair(x, y)
        ref.append(c.cpu)
    return float(np.median(ours)), float(np.median(ref))


def _status(key: str) -> float:
    """A ``/proc/self/status`` memory field in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def minibatch_child(n: int, p: int, batch: int) -> None:
    """Stream n × p activations per side through MinibatchCKA; print CKA, seconds and memory.

    The peak-RSS mark is reset after the imports (``/proc/self/clear_refs``), so the peak printed
    is the peak *while streaming*; the RSS before streaming is mostly the torch libraries.
    """
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(p, p, generator=g) / p**0.5
    acc = MinibatchCKA()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before, anon0 = _status("VmRSS"), _status("RssAnon")
    anon = anon0
    t0 = time.perf_counter()
    for _ in range(n // batch):
        x = torch.randn(batch, p, generator=g)
        y = torch.relu(x @ mix + 0.5 * torch.randn(batch, p, generator=g))
        acc.update(x, y)
        anon = max(anon, _status("RssAnon"))  # allocated (not library) memory, sampled per batch
    value = acc.compute()
    secs = time.perf_counter() - t0
    print(f"RESULT {value:.6f} {secs:.2f} {_status('VmHWM'):.1f} {before:.1f} {acc.n} {anon:.1f} {anon0:.1f}")


def run_child(n: int, p: int) -> tuple[str, ...]:
    out = subprocess.run([sys.executable, __file__, "--child", str(n), str(p), "1000"], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return tuple(next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")).split()[1:])


def check_minibatch_exact() -> float:
    """|MinibatchCKA − linear_cka| on 5,000 × 256 in batches of 500 (biased and debiased)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5000, 256, generator=g, dtype=torch.float64) + 3
    y = torch.relu(x @ torch.randn(256, 128, generator=g, dtype=torch.float64))
    acc = MinibatchCKA()
    for i in range(0, 5000, 500):
        acc.update(x[i:i + 500], y[i:i + 500])
    return max(abs(acc.compute() - linear_cka(x, y)),
               abs(acc.compute(debiased=True) - linear_cka(x, y, debiased=True)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 × 256, 4 stages, 200,000-sample stream")
    ap.add_argument("--repeats", type=int, default=3, help="single-pair repeats (median)")
    ap.add_argument("--child", nargs=3, type=int, metavar=("N", "P", "BATCH"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.child:
        minibatch_child(*a.child)
        return
    n, p, stages = (2000, 256, 4) if a.quick else (5000, 512, 8)
    mb_n, mb_p = (200_000, 512) if a.quick else (50_000, 2048)
    print(f"# analysis speed — {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"numpy {np.__version__}, 1 thread, float64")
    print(f"grid: {stages} × {stages} stages, {n} × {p} each ({stages * stages} pairs; cca, svcca 0.99, "
          "pwcca, linear CKA)")
    xs, ys = make_layers(n, p, stages, seed=0), make_layers(n, p, stages, seed=1)
    (w_ours, c_ours), (w_ref, c_ref), worst = bench_grid(xs, ys)
    print(f"  {'':28}{'wall s':>9}{'CPU s':>9}")
    print(f"  {'transfuse similarity_grid':28}{w_ours:9.1f}{c_ours:9.1f}")
    print(f"  {'NumPy, pair by pair':28}{w_ref:9.1f}{c_ref:9.1f}")
    print(f"  {'speed ratio':28}{w_ref / w_ours:8.1f}×{c_ref / c_ours:8.1f}×   (target ≥ 10×)")
    print(f"  max |difference| over {stages * stages} pairs × 4 measures: {worst:.2e}   (must be ≤ 1e-6)")
    s_ours, s_ref = bench_single(xs[-1], ys[-1], a.repeats)
    print(f"single pair (CPU s, median of {a.repeats}): transfuse {s_ours:.2f} s, NumPy {s_ref:.2f} s, "
          f"ratio {s_ref / s_ours:.1f}×")
    print(f"minibatch CKA exactness (5,000 × 256 in 10 batches): max |Δ| = {check_minibatch_exact():.1e}")
    for n_mb in (mb_n // 10, mb_n):
        value, secs, peak, before, seen, anon, anon0 = run_child(n_mb, mb_p)
        print(f"minibatch CKA over {int(seen):,} × {mb_p:,} per side (batches of 1,000): CKA {value}, {secs} s\n"
              f"  peak RSS while streaming {peak} MB = {before} MB before streaming (torch + transfuse "
              f"imported) + {float(peak) - float(before):.0f} MB for the stream\n"
              f"  allocated (anonymous) memory: {anon0} MB after imports, at most {anon} MB while streaming "
              f"(+{float(anon) - float(anon0):.0f} MB)   (target < 1,024 MB)")


if __name__ == "__main__":
    main()
