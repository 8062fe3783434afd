"""Training-loop overhead (issue #2): ``transfuse.train.fit`` vs a bare PyTorch loop.

Both loops train the same model (same seed), on the same in-memory ``ArrayDataset`` through a
``DataLoader`` with the same batch size, with the same optimiser (SGD, Nesterov momentum 0.9,
weight decay 1e-4) for the same number of steps. Throughput is training examples per second of
the training steps only:

- ``fit``: ``FitResult.examples_per_second`` (its clock excludes evaluation and checkpoints;
  ``eval_every`` is larger than ``steps`` so it evaluates only before the first and after the
  last step anyway, on a 16-example validation split);
- bare loop: wall time from creating the batch iterator to the end of the last step.

Each configuration is warmed up once, then the two loops run interleaved (alternating which goes
first) ``--repeats`` times; the report gives the median throughputs and the ratio
``fit / bare`` (target >= 0.95). A third loop, the *on-device* bare loop (the training set already
on the device, batches by index: no DataLoader), is the baseline of ``fit()``'s preloaded path;
its ratio is printed last (issue 27: target >= 0.95 on a GPU). With ``--cuda-graph`` (CUDA
only) ``fit`` runs twice per repeat, ``train.cuda_graph: off`` and ``on`` (the step's forward and
backward captured in a CUDA graph, see transfuse/train/graph.py), and both are compared with the
on-device bare loop; without it ``fit`` runs with the default ``auto``. ``--reduce-overhead``
(CUDA only) adds ``fit()`` with ``train.compile: reduce-overhead`` (inductor's CUDA graphs), and
with both flags the report says which of the two measures better (the issue asks for that one).

    python bench/train_overhead.py                      # cbr_small, 32 px, batch 32, 40 steps
    python bench/train_overhead.py --model resnet18 --size 64
    python bench/train_overhead.py --device cuda --model resnet50 --size 224 --batch 128 --amp
    python bench/train_overhead.py --device cuda --model cbr_small --size 28 --batch 64 \
        --steps 200 --cuda-graph                        # fit with and without the CUDA graph

On CUDA, ``fit`` uses its fast path (training set preloaded on the GPU, channels_last for 2D,
bf16 autocast with ``--amp``, ``torch.compile`` with ``--compile``); the bare loop is the plain
idiom on the same GPU (DataLoader over the CPU tensors, pinned memory, ``.to(device)`` per batch,
the same autocast). Both report examples/s and the achieved TFLOP/s (the model's forward+backward
FLOPs per example, counted once with ``torch.utils.flop_counter``, × examples/s).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from transfuse.config import TrainSpec
from transfuse.data.base import ArrayDataset, DatasetInfo, PreparedData
from transfuse.models import create_model
from transfuse.train import fit


def make_data(n_train: int, size: int, channels: int, classes: int) -> PreparedData:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> ArrayDataset:
        x = torch.randn(n, channels, size, size, generator=g)
        y = torch.randint(0, classes, (n,), generator=g)
        x[y == 1, :, : size // 2, : size // 2] += 1.0  # learnable, not that it matters here
        return ArrayDataset(x, y, torch.ones(n))

    info = DatasetInfo(name="bench", task="multiclass", class_names=tuple(f"c{i}" for i in range(classes)),
                       spatial_dims=2, in_channels=channels, image_shape=(size, size))
    return PreparedData(info, split(n_train), split(16), split(16))


def new_model(args) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(args.model, in_channels=args.channels, num_classes=args.classes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


GRAPH_NOTES: dict[str, str | None] = {}  # train.cuda_graph → what fit() recorded about it


def run_fit(args, data: PreparedData, steps: int, graph: str = "auto",
            compile: bool | str | None = None) -> float:
    spec = TrainSpec(steps=steps, batch_size=args.batch, lr=0.01, optimizer="sgd", momentum=0.9,
                     weight_decay=1e-4, schedule="cosine", eval_every=steps + 1, amp=args.amp,
                     num_workers=0, compile=args.compile if compile is None else compile,
                     cuda_graph=graph)
    res = fit(new_model(args), data, spec, seed=0, device=args.device, progress=args.progress)
    GRAPH_NOTES[graph] = res.cuda_graph
    return res.examples_per_second


def run_fit_graph(args, data: PreparedData, steps: int) -> float:
    """``fit()`` with ``train.cuda_graph: on``."""
    return run_fit(args, data, steps, graph="on")


def run_fit_reduce(args, data: PreparedData, steps: int) -> float:
    """``fit()`` with ``train.compile: reduce-overhead`` (inductor's own CUDA graphs of the compiled
    forward and backward; ``train.cuda_graph: off``): the issue's other candidate."""
    return run_fit(args, data, steps, graph="off", compile="reduce-overhead")


def run_fit_eager(args, data: PreparedData, steps: int) -> float:
    """``fit()`` with ``train.cuda_graph: off`` (the ``--cuda-graph`` comparison's baseline)."""
    return run_fit(args, data, steps, graph="off")


def run_bare(args, data: PreparedData, steps: int) -> float:
    from transfuse.train.device import autocast

    dev = torch.device(args.device)
    model = new_model(args).to(dev)
    fwd = torch.compile(model) if args.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    loader = DataLoader(data.train, batch_size=args.batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0), pin_memory=dev.type == "cuda")
    model.train()
    seen, step = 0, 0
    _sync(dev)
    t0 = time.perf_counter()
    while step < steps:
        for x, y, _ in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            with autocast(dev, args.amp):
                loss = F.cross_entropy(fwd(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(x)
            step += 1
            if step == steps:
                break
    _sync(dev)
    return seen / (time.perf_counter() - t0)


def run_bare_device(args, data: PreparedData, steps: int) -> float:
    """The bare loop with the training set already on the device: each step indexes a
    device-resident tensor with a shuffled batch of indices (no DataLoader, no copies) — the
    honest baseline for ``fit()``'s preloaded path (issue 27)."""
    from transfuse.train.device import autocast

    dev = torch.device(args.device)
    model = new_model(args).to(dev)
    fwd = torch.compile(model) if args.compile else model
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    xs, ys = data.train.images.to(dev), data.train.targets.to(dev)
    g = torch.Generator().manual_seed(0)
    n = len(xs) // args.batch * args.batch
    model.train()
    seen, step = 0, 0
    _sync(dev)
    t0 = time.perf_counter()
    while step < steps:
        perm = torch.randperm(len(xs), generator=g)[:n].view(-1, args.batch).to(dev)
        for idx in perm:
            x, y = xs[idx], ys[idx]
            with autocast(dev, args.amp):
                loss = F.cross_entropy(fwd(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(x)
            step += 1
            if step == steps:
                break
    _sync(dev)
    return seen / (time.perf_counter() - t0)


def flops_per_example(args) -> float:
    """Forward + backward FLOPs of one example (counted on the CPU, batch of 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = new_model(args)
    x = torch.randn(2, args.channels, args.size, args.size)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


def environment() -> str:
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"python {platform.python_version()}, torch {torch.__version__}, {platform.platform()}\n"
            f"cpu: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
            f"load average {' '.join(f'{v:.2f}' for v in load)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="cbr_small")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--progress", action="store_true", help="show fit's progress bar (as the CLI does)")
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA, in both loops")
    p.add_argument("--compile", action="store_true", help="torch.compile, in both loops")
    p.add_argument("--cuda-graph", action="store_true",
                   help="CUDA: also time fit() with train.cuda_graph on (fit: off)")
    p.add_argument("--reduce-overhead", action="store_true",
                   help="CUDA: also time fit() with train.compile: reduce-overhead (cuda_graph off)")
    args = p.parse_args(argv)
    if (args.cuda_graph or args.reduce_overhead) and not args.device.startswith("cuda"):
        p.error("--cuda-graph and --reduce-overhead need --device cuda (CUDA graphs exist on "
                "CUDA only)")
    if args.threads:
        torch.set_num_threads(args.threads)

    data = make_data(args.n_train, args.size, args.channels, args.classes)
    print("environment:", environment())
    print(f"config: {args.model} {args.size}x{args.size}x{args.channels}, batch {args.batch}, "
          f"{args.steps} steps, SGD, {args.repeats} interleaved repeats (median), {args.device}"
          f"{', amp' if args.amp else ''}{', compile' if args.compile else ''}")
    if args.device.startswith("cuda"):
        print("gpu:", torch.cuda.get_device_name(torch.device(args.device)))
    flops = flops_per_example(args)

    run_bare(args, data, max(3, args.steps // 4))  # warm-up (allocator, oneDNN kernels)
    run_fit(args, data, max(3, args.steps // 4))
    run_bare_device(args, data, max(3, args.steps // 4))
    if args.cuda_graph:
        run_fit_graph(args, data, max(3, args.steps // 4) + 3)  # + the graph's warm-up steps
    if args.reduce_overhead:
        run_fit_reduce(args, data, max(3, args.steps // 4) + 3)  # compiles (once)
    fit_eps, bare_eps, dev_eps, graph_eps, red_eps = [], [], [], [], []
    for r in range(args.repeats):
        order = [("bare", run_bare), ("fit", run_fit_eager if args.cuda_graph else run_fit),
                 ("device", run_bare_device)]
        if args.cuda_graph:
            order.insert(2, ("graph", run_fit_graph))
        if args.reduce_overhead:
            order.insert(2, ("reduce", run_fit_reduce))
        if r % 2:
            order.reverse()
        for name, fn in order:
            eps = fn(args, data, args.steps)
            {"fit": fit_eps, "bare": bare_eps, "device": dev_eps, "graph": graph_eps,
             "reduce": red_eps}[name].append(eps)
        if args.reduce_overhead:
            print(f"  repeat {r + 1}: fit with compile reduce-overhead {red_eps[-1]:8.1f} ex/s   "
                  f"ratio to on-device bare {red_eps[-1] / dev_eps[-1]:.3f}", flush=True)
        if args.cuda_graph:
            print(f"  repeat {r + 1}: fit with the CUDA graph {graph_eps[-1]:8.1f} ex/s   ratio to "
                  f"on-device bare {graph_eps[-1] / dev_eps[-1]:.3f}", flush=True)
        print(f"  repeat {r + 1}: bare {bare_eps[-1]:8.1f} ex/s   on-device bare {dev_eps[-1]:8.1f} "
              f"ex/s   fit {fit_eps[-1]:8.1f} ex/s   ratio {fit_eps[-1] / bare_eps[-1]:.3f} / "
              f"{fit_eps[-1] / dev_eps[-1]:.3f}", flush=True)
    bare_med, fit_med = statistics.median(bare_eps), statistics.median(fit_eps)
    ratio = fit_med / bare_med
    pair = statistics.median(f / b for f, b in zip(fit_eps, bare_eps))
    print(f"bare loop: {bare_med:.1f} examples/s (median), {bare_med * flops / 1e12:.3f} TFLOP/s")
    print(f"fit():     {fit_med:.1f} examples/s (median), {fit_med * flops / 1e12:.3f} TFLOP/s "
          f"({flops / 1e9:.3f} GFLOP per example, forward + backward)")
    print(f"ratio fit/bare: {ratio:.3f} (median of per-repeat ratios {pair:.3f}); target >= {args.target}: "
          f"{'PASS' if ratio >= args.target else 'BELOW TARGET'}")
    dev_med = statistics.median(dev_eps)
    print(f"on-device bare loop (batch already on {args.device}): {dev_med:.1f} examples/s (median); "
          f"ratio fit/on-device bare: {fit_med / dev_med:.3f}; target >= {args.target}: "
          f"{'PASS' if fit_med / dev_med >= args.target else 'BELOW TARGET'}")
    if args.cuda_graph:
        g_med = statistics.median(graph_eps)
        print(f"fit() train.cuda_graph off: {fit_med:.1f} examples/s ({GRAPH_NOTES.get('off')}); "
              f"on: {g_med:.1f} examples/s ({GRAPH_NOTES.get('on')}); graph/eager {g_med / fit_med:.3f}")
        print(f"ratio fit(cuda_graph on)/on-device bare: {g_med / dev_med:.3f}; target >= "
              f"{args.target}: {'PASS' if g_med / dev_med >= args.target else 'BELOW TARGET'}")
    else:
        print(f"fit() train.cuda_graph auto: {GRAPH_NOTES.get('auto')}")
    if args.reduce_overhead:
        r_med = statistics.median(red_eps)
        print(f"ratio fit(compile reduce-overhead)/on-device bare: {r_med / dev_med:.3f}; target >= "
              f"{args.target}: {'PASS' if r_med / dev_med >= args.target else 'BELOW TARGET'}")
        if args.cuda_graph:
            g_med = statistics.median(graph_eps)
            best = "train.cuda_graph" if g_med >= r_med else "train.compile: reduce-overhead"
            print(f"measures better: {best} ({max(g_med, r_med):.1f} vs {min(g_med, r_med):.1f} "
                  "examples/s)")
    print("environment after:", environment().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
