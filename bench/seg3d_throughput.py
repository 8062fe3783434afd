"""3D segmentation training throughput (issue #6): ``transfuse.train.fit`` vs a bare MONAI loop.

Real data: ``builtin:brain_seg3d`` (MNI152 T1 volumes at 3 mm, 4 tissue classes), random
``--patch``³ training patches, half centred on foreground. Every loop trains the same network
(``seg_unet_tiny``, same seed) with the same loss (MONAI ``DiceCELoss``) and optimiser (SGD,
Nesterov momentum 0.9, weight decay 1e-4) for the same number of steps at the same batch size.
Throughput is training patches per second of the training steps only:

- ``fit``: ``FitResult.examples_per_second`` (its clock excludes evaluation and checkpoints;
  ``eval_every`` is larger than ``steps``, so it evaluates only before the first and after the
  last step);
- ``bare``: a plain loop over the **same** ``DataLoader(data.train)`` (transfuse's patch sampler),
  timed from creating the batch iterator to the end of the last step — the loop overhead that
  ``fit`` adds. Target: ``fit / bare >= 0.95``;
- ``monai``: the same plain loop, but the patches come from MONAI's own dictionary pipeline
  (``monai.data.Dataset`` over the same normalised volumes, ``RandCropByPosNegLabeld`` with
  precomputed foreground/background indices, ``monai.data.DataLoader``) — how transfuse's
  sampler compares with the usual MONAI recipe. Reported, no target.

Each loop is warmed up once; then they run interleaved (rotating the order) ``--repeats`` times
and the report gives median throughputs and ratios.

    python bench/seg3d_throughput.py                     # patch 32, batch 2, 30 steps, CPU
    python bench/seg3d_throughput.py --device cuda --batch 8 --steps 100 --workers 4
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_overhead import environment  # noqa: E402  (same machine description)

from transfuse.config import TrainSpec  # noqa: E402
from transfuse.data import PreparedData, load_dataset  # noqa: E402
from transfuse.models import create_model  # noqa: E402
from transfuse.train import fit  # noqa: E402
from transfuse.train.segment import segmentation_loss  # noqa: E402


def new_model(args, data: PreparedData) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("seg_unet_tiny", spatial_dims=3, in_channels=data.info.in_channels,
                        num_classes=data.info.num_classes)


def run_fit(args, data: PreparedData, steps: int) -> float:
    spec = TrainSpec(steps=steps, batch_size=args.batch, lr=0.01, optimizer="sgd", momentum=0.9,
                     weight_decay=1e-4, schedule="cosine", eval_every=steps + 1, amp=False,
                     num_workers=args.workers)
    res = fit(new_model(args, data), data, spec, seed=0, device=args.device, progress=False)
    return res.examples_per_second


def _bare(args, data: PreparedData, loader, steps: int) -> float:
    """A plain training loop over ``loader`` yielding ``(image, label)`` first."""
    dev = torch.device(args.device)
    model = new_model(args, data).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    model.train()
    seen, step = 0, 0
    t0 = time.perf_counter()
    while step < steps:
        for batch in loader:
            x, y = batch[0].to(dev, non_blocking=True), batch[1].to(dev, non_blocking=True)
            loss = segmentation_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(x)
            step += 1
            if step == steps:
                break
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def run_bare(args, data: PreparedData, steps: int) -> float:
    torch.manual_seed(0)
    loader = DataLoader(data.train, batch_size=args.batch, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0), num_workers=args.workers,
                        pin_memory=args.device.startswith("cuda"))
    return _bare(args, data, loader, steps)


def monai_loader(args, data: PreparedData):
    """MONAI's usual recipe over the same normalised training volumes."""
    import monai
    from monai.transforms import FgBgToIndicesd, RandCropByPosNegLabeld

    to_indices = FgBgToIndicesd(keys="label")  # computed once, as MONAI's tutorials do
    items = [to_indices({"image": v.image, "label": v.label[None].float()})
             for v in data.train.volumes]
    crop = RandCropByPosNegLabeld(keys=["image", "label"], label_key="label",
                                  spatial_size=data.info.image_shape, pos=1, neg=1, num_samples=1,
                                  fg_indices_key="label_fg_indices", bg_indices_key="label_bg_indices")
    # As many samples per epoch as transfuse's PatchDataset, so epochs line up.
    ds = monai.data.Dataset(items * (len(data.train) // len(items)), transform=crop)
    monai.utils.set_determinism(seed=0)

    def pairs(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
        b = monai.data.list_data_collate(batch)
        return b["image"].as_tensor(), b["label"].as_tensor()[:, 0].long()

    return monai.data.DataLoader(ds, batch_size=args.batch, shuffle=True, drop_last=True,
                                 num_workers=args.workers, collate_fn=pairs)


def run_monai(args, data: PreparedData, steps: int) -> float:
    return _bare(args, data, monai_loader(args, data), steps)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--patch", type=int, default=32)
    p.add_argument("--spacing", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--target", type=float, default=0.95)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_dataset("builtin:brain_seg3d", patch_size=args.patch, spacing=args.spacing)
    print("environment:", environment())
    print(f"config: seg_unet_tiny on builtin:brain_seg3d at {args.spacing} mm, patch {args.patch}^3, "
          f"batch {args.batch}, {args.steps} steps, SGD, DiceCE, {args.workers} loader workers, "
          f"{args.repeats} interleaved repeats (median), {args.device}")
    loops = {"bare": run_bare, "fit": run_fit, "monai": run_monai}
    for fn in loops.values():  # warm-up (allocator, oneDNN / cuDNN kernels)
        fn(args, data, max(3, args.steps // 5))
    eps: dict[str, list[float]] = {k: [] for k in loops}
    names = list(loops)
    for r in range(args.repeats):
        order = names[r % 3:] + names[:r % 3]
        for name in order:
            eps[name].append(loops[name](args, data, args.steps))
        print(f"  repeat {r + 1}: " + "   ".join(f"{k} {eps[k][-1]:7.1f}" for k in names)
              + f" patches/s   fit/bare {eps['fit'][-1] / eps['bare'][-1]:.3f}", flush=True)
    med = {k: statistics.median(v) for k, v in eps.items()}
    ratio = med["fit"] / med["bare"]
    pair = statistics.median(f / b for f, b in zip(eps["fit"], eps["bare"]))
    for k, label in (("bare", "bare loop, same loader"), ("fit", "fit()"),
                     ("monai", "bare loop, MONAI dict pipeline")):
        print(f"{label:<32} {med[k]:8.1f} patches/s (median)")
    print(f"ratio fit/bare: {ratio:.3f} (median of per-repeat ratios {pair:.3f}); target >= "
          f"{args.target}: {'PASS' if ratio >= args.target else 'BELOW TARGET'}")
    print(f"ratio fit/monai-pipeline: {med['fit'] / med['monai']:.3f}")
    print("environment after:", environment().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
