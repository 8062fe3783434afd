"""Study throughput with cohorts (issue 27): the same study with fused cohorts and with one run per
process, plus the fused limit of the step alone.

The study: CBR-Small × {random, gabor} × ``--seeds`` seeds on ``--data`` (default RetinaMNIST at
28 px), ``--steps`` steps of batch ``--batch`` each (or any study file with ``--study``). Each
mode is one ``transfuse study run`` process on a fresh workspace, timed by wall clock from start to
exit (imports, data, evaluation and the store included):

- ``cohort``: ``--cohort auto`` (on CUDA: cohorts that fit the GPU) with one worker;
- ``solo-1`` / ``solo-8``: ``--cohort off`` with 1 / 8 runs per device (``--runs-per-device``);

then ``probe``: the cohort's training step alone (stacked models, vmap forward + backward + SGD,
the batch already on the device; no data loading, evaluation or store) for the same number of
members — how close the study gets to the limit.

Prints per mode: runs, wall seconds, aggregate training examples/s (runs × steps × batch / wall)
and the ratio to ``solo-8`` (target for the 64-run study on a GPU: >= 10).

    python bench/study_throughput.py --device cuda                    # 64 runs, 200 steps
    python bench/study_throughput.py --device cpu --seeds 2 --steps 10 --data builtin:brain_tissue
    python bench/study_throughput.py --device cuda --study examples/transfusion.yaml \\
        --set grid.seed=[0,1,2,3,4,5,6,7]                             # that study's cells
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STUDY = """name: throughput
base:
  data: {{name: "{data}"}}
  model: {{name: {model}}}
  train: {{steps: {steps}, lr: 0.02, batch_size: {batch}, eval_every: {eval_every}, schedule: cosine,
          warmup_steps: 10, amp: false}}
grid:
  init.name: [random, gabor]
  seed: [{seeds}]
"""


def study_file(tmp: Path, args: argparse.Namespace, seeds: int) -> Path:
    p = tmp / f"study-{seeds}.yaml"
    p.write_text(STUDY.format(data=args.data, model=args.model, steps=args.steps, batch=args.batch,
                              eval_every=max(1, args.steps // 10),
                              seeds=", ".join(str(s) for s in range(seeds))))
    return p


def run_mode(name: str, path: Path, ws: Path, args: argparse.Namespace, extra: list[str]) -> float:
    devices = "cpu" if args.device == "cpu" else args.device.split(":")[-1] if ":" in args.device else "0"
    cmd = [sys.executable, "-m", "transfuse", "study", "run", str(path), "-w", str(ws),
           "--no-progress", "--devices", devices, *extra]
    for s in args.set or []:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        print(f"  {name}: exit {done.returncode}\n{done.stderr[-1500:]}", flush=True)
    return wall


def probe(args: argparse.Namespace, members: int) -> float:
    """Aggregate training examples/s of the cohort step alone (``members`` CBR models)."""
    import torch
    import torch.nn.functional as F

    from transfuse.models import create_model
    from transfuse.train.cohort import _stack_into

    dev = torch.device(args.device)
    models = []
    for i in range(members):
        torch.manual_seed(i)
        models.append(create_model(args.model, spatial_dims=2, in_channels=3, num_classes=5).to(dev))
    template = _stack_into(models)
    params = dict(template.named_parameters())
    opt = torch.optim.SGD(params.values(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)

    def one(p, b, x):
        return torch.func.functional_call(template, (p, b), (x,))

    fwd = torch.func.vmap(one, in_dims=(0, 0, 0), randomness="different")
    x = torch.randn(members, args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, 5, (members, args.batch), device=dev)
    buffers = dict(template.named_buffers())

    def step():
        logits = fwd(params, buffers, x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / args.batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    n = args.probe_steps
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return members * args.batch * n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--data", default="medmnist:retinamnist@28", help="default medmnist:retinamnist@28")
    p.add_argument("--model", default="cbr_small", help="default cbr_small")
    p.add_argument("--size", type=int, default=28, help="image side of the probe (default 28)")
    p.add_argument("--seeds", type=int, default=32, help="seeds per init: 2 × this runs (default 32)")
    p.add_argument("--solo1-seeds", type=int, default=8,
                   help="seeds per init of the solo-1 mode, slowest (default 8)")
    p.add_argument("--steps", type=int, default=200, help="default 200")
    p.add_argument("--batch", type=int, default=64, help="default 64")
    p.add_argument("--cohort", default="auto", help="--cohort of the cohort mode (default auto)")
    p.add_argument("--modes", default="cohort,solo-8,solo-1,probe",
                   help="comma-separated (default cohort,solo-8,solo-1,probe)")
    p.add_argument("--probe-steps", type=int, default=20, help="default 20")
    p.add_argument("--study", default=None, help="a study file instead of the generated one")
    p.add_argument("--set", action="append", help="--set passed to `study run` (repeatable)")
    p.add_argument("--timeout", type=float, default=540, help="seconds per mode (default 540)")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    import torch

    gpu = torch.cuda.get_device_name(0) if args.device != "cpu" and torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, device {args.device}, gpu {gpu}; {args.model}, batch {args.batch}, "
          f"{args.steps} steps per run", flush=True)
    rows: dict[str, tuple[int, float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        for mode in modes:
            if mode == "probe":
                continue
            seeds = args.solo1_seeds if mode == "solo-1" else args.seeds
            path = Path(args.study) if args.study else study_file(tmp, args, seeds)
            if args.study:
                from transfuse.study import expand, load_study

                n = len(expand(load_study(path)))
            else:
                n = 2 * seeds
            extra = (["--cohort", args.cohort] if mode == "cohort" else
                     ["--cohort", "off", "--runs-per-device", mode.split("-")[1]])
            wall = run_mode(mode, path, tmp / f"ws-{mode}", args, extra)
            eps = n * args.steps * args.batch / wall
            rows[mode] = (n, wall, eps)
            print(f"  {mode:8s} {n:4d} runs  {wall:8.1f} s wall  {eps:10.0f} examples/s", flush=True)
    base = rows.get("solo-8")
    print("mode      runs   wall s   examples/s   ratio to solo-8")
    for mode, (n, wall, eps) in rows.items():
        ratio = f"{eps / base[2]:.2f}" if base else "-"
        print(f"{mode:8s} {n:5d} {wall:8.1f} {eps:12.0f}   {ratio}")
    if "probe" in modes:
        members = 2 * args.seeds if args.cohort in ("auto", "off") else int(args.cohort)
        eps = probe(args, members)
        frac = f"; the cohort study reaches {rows['cohort'][2] / eps:.2f} of it" if "cohort" in rows else ""
        print(f"probe    {members:5d} members, the step alone: {eps:12.0f} examples/s{frac}")
    if base and "cohort" in rows:
        r = rows["cohort"][2] / base[2]
        print(f"cohort / solo-8: {r:.2f} (target >= 10 for the 64-run study on a GPU): "
              f"{'PASS' if r >= 10 else 'BELOW TARGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
