"""``transfuse datasets|models|inits``: what can be named in a spec.

Read from the registries' snapshot (:mod:`transfuse.catalog`), so listing imports no torch."""

from __future__ import annotations

import argparse

from ._common import HelpFormatter

__all__ = ["add_parser"]


def _datasets(a: argparse.Namespace) -> int:
    from ..catalog import load

    cat = load()
    print("Dataset families and built-in datasets:")
    for name, meta in sorted(cat["datasets"].items()):
        print(f"  {name:<24} {meta.get('description', '')}")
    print("\nMedMNIST flags (medmnist:<flag>@<size>; files from --data-root / $TRANSFUSE_DATA):")
    for flag, task, k, c, dims, desc in cat["medmnist"]:
        print(f"  {flag:<16} {dims}D {task:<10} {k:>2} classes  {c} ch  {desc}")
    return 0


def _models(a: argparse.Namespace) -> int:
    from ..catalog import load

    cat = load()

    def dims(meta: dict) -> str:
        return "/".join(f"{d}D" + "*" * (d in meta.get("inflated_dims", ())) for d in meta["spatial_dims"])

    rows = sorted(cat["models"].items()) + [("timm:<name>", cat["timm"])]
    w = max(len(n) for n, _ in rows) + 1
    print(f"  {'name':<{w}} {'dims':<7} {'task':<5} {'min px':<7} description")
    for name, meta in rows:
        task = "seg" if meta.get("task") == "segmentation" else "clf"
        desc = meta["description"] + (", e.g. timm:efficientnet_lite0" if name.startswith("timm:") else "")
        print(f"  {name:<{w}} {dims(meta):<7} {task:<5} {meta['min_size']:<7} {desc}")
    print("  3D*: the 2D network inflated to 3D (inflate_model; kernels=1xkxk pseudo-3D by default); "
          "min px: the smallest input side")
    return 0


def _inits(a: argparse.Namespace) -> int:
    from ..catalog import load

    cat = load()
    print("Init strategies (combine with +, e.g. transfusion:block1+meanvar):")
    for iname, meta in sorted(cat["inits"].items()):
        name = f"{iname}:{meta['arg']}" if meta["arg"] else iname
        src = " [needs --source]" if meta["needs_source"] else ""
        print(f"  {name:<24} {meta['description']}{src}")
    print("\nPretrained source families (--source family:argument):")
    for sname, meta in sorted(cat["sources"].items()):
        net = "" if meta["offline"] else " [needs network]"
        print(f"  {sname:<12} {meta['description']}{net}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    for name, what, fn in (("datasets", "list dataset families, built-in datasets and MedMNIST flags", _datasets),
                           ("models", "list models", _models),
                           ("inits", "list init strategies and pretrained source families", _inits)):
        sub.add_parser(name, help=what, formatter_class=HelpFormatter).set_defaults(func=fn)
