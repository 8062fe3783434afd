"""Init speed (issue #3): time to apply each init strategy vs. time to build the model.

The target model is ``create_model("resnet50", in_channels=3, num_classes=10)`` (2D); the
"pretrained" source is a ResNet-50-shaped state dict with random weights and a 1000-class head,
built once and held in memory (its ``SourceWeights`` loader returns it, so no disk I/O is timed).
For every registered strategy (with a default argument: ``transfusion:block2``, ``slim:block2``)
plus the combination ``transfusion:block1+meanvar``, the script times ``apply_init`` — aligning
the source, the strategy itself, loading the state into the model and the per-tensor report — and
divides it by the median time of ``create_model`` (torchvision's constructor with its weight
init, and the stage probe). Strategies that change the architecture (``slim``) get a model built
with ``init_model_kwargs(spec)``, outside the clock.

Each round builds the model once and applies every strategy once (after one warm-up round); the
table gives medians over ``--repeats`` rounds. Target: every ratio < 1.

    python bench/init_speed.py                 # resnet50, 5 repeats, torch's default threads
    python bench/init_speed.py --threads 1 --repeats 7
    python bench/init_speed.py --threads 1 --clock cpu   # CPU time: steadier on a shared machine

On a machine shared with other jobs, prefer ``--threads 1`` (or ``OMP_WAIT_POLICY=PASSIVE``):
with torch's default threads OpenMP spins for cores that other processes hold, and both the
model build and the strategies slow down erratically.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

from transfuse.inits import INITS, apply_init, init_model_kwargs, list_inits
from transfuse.models import create_model
from transfuse.weights import SourceWeights

KNOWN_ARGS = {"transfusion": "transfusion:block2", "slim": "slim:block2"}
EXTRA_SPECS = ["random:kaiming", "transfusion:block1+meanvar"]


def default_specs() -> list[str]:
    specs = []
    for name in list_inits():
        arg = INITS.get(name).meta.get("arg", "")
        if name in KNOWN_ARGS:
            specs.append(KNOWN_ARGS[name])
        elif not arg or arg.startswith("["):
            specs.append(name)
        elif "stage" in arg:
            specs.append(f"{name}:block2")
    return specs + [s for s in EXTRA_SPECS if s.split(":")[0].split("+")[0] in list_inits()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--source-classes", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--specs", nargs="*", default=None, help="init specs (default: every strategy)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: time.perf_counter; cpu: this process's CPU time (time.process_time), "
                        "which leaves out time spent descheduled by other processes — steadier "
                        "on a shared machine, but with more than one thread it adds up the threads")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    specs = args.specs or default_specs()

    def build(**kw) -> torch.nn.Module:
        return create_model(args.model, in_channels=3, num_classes=args.classes, **kw)

    torch.manual_seed(123)
    src_state = create_model(args.model, in_channels=3, num_classes=args.source_classes).state_dict()
    source = SourceWeights(name=f"bench:{args.model}", arch=args.model, loader=lambda: src_state)
    models = {s: build(**init_model_kwargs(s)) for s in specs}

    t_build: list[float] = []
    t_apply: dict[str, list[float]] = {s: [] for s in specs}
    for rnd in range(args.repeats + 1):  # round 0 warms up
        t0 = clock()
        m = build()
        dt = clock() - t0
        del m
        if rnd:
            t_build.append(dt)
        for s in specs:
            t0 = clock()
            apply_init(models[s], s, source=source, seed=rnd)
            dt = clock() - t0
            if rnd:
                t_apply[s].append(dt)

    base = statistics.median(t_build)
    print(f"# {args.model}, 3 → {args.classes} classes, source {args.source_classes} classes; "
          f"{args.repeats} repeats; {args.clock} clock; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"# create_model: median {base * 1000:.0f} ms "
          f"(min {min(t_build) * 1000:.0f}, max {max(t_build) * 1000:.0f})")
    print("| strategy | apply_init median (ms) | min–max (ms) | ratio to create_model |")
    print("|---|---|---|---|")
    worst = 0.0
    for s in specs:
        med = statistics.median(t_apply[s])
        worst = max(worst, med / base)
        print(f"| `{s}` | {med * 1000:.0f} | {min(t_apply[s]) * 1000:.0f}–{max(t_apply[s]) * 1000:.0f} "
              f"| **{med / base:.2f}** |")
    print(f"# worst ratio {worst:.2f} (target < 1)")
    return 0 if worst < 1 else 1


if __name__ == "__main__":
    sys.exit(main())
