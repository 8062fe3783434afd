"""Report sections of segmentation studies: test Dice per class and region, and the Med3D
pretrainings the study's runs were initialised from.

Both read only the store (and, for Med3D, the ``pretrain.json`` beside each encoder); both return
``None`` for studies they do not concern, so classification reports are unchanged.
"""

from __future__ import annotations

import math
from collections import defaultdict

from ..store import Store
from ..decide.results import RunRow, load_results
from ..decide.stats import summarize
from .html import Section, figure_img, new_figure, register_section, table

__all__ = ["class_dice", "dice_section"]


def class_dice(store: Store, rows: list[RunRow]) -> tuple[list[str], dict[tuple[str, str, str], dict[str, list[float]]]]:
    """Test Dice per class/region of every run, grouped by ``(model, init, size)``.

    Returns:
        ``(names, groups)``: the class/region names (in the order the runs store them) and
        ``{(model, init, size): {name: [dice of each seed that has it]}}``.
    """
    names: list[str] = []
    groups: dict[tuple[str, str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for _, split, name, value in store.metrics(r.run_id):
            if split != "test" or not name.startswith("dice/"):
                continue
            n = name[5:]
            if n not in names:
                names.append(n)
            if value is not None and math.isfinite(value):
                groups[(r.model, r.init, r.size)][n].append(value)
    return names, groups


def _fmt(values: list[float]) -> str:
    s = summarize(values)
    if s is None:
        return "—"
    return f"{s.mean:.3f}" + (f" ± {s.sd:.3f}" if s.sd is not None else "") + f" (n={s.n})"


@register_section("segmentation_dice", order=25)
def dice_section(store: Store, study: str) -> Section | None:
    """Mean ± sd test Dice of every class and region, per model × init × size, and a bar chart."""
    try:
        res = load_results(store, study)
    except Exception:  # noqa: BLE001  (no runs: the core sections say so)
        return None
    if res.task != "segmentation" or not res.rows:
        return None
    names, groups = class_dice(store, list(res.rows))
    if not names:
        return None
    keys = [(c.model, c.init, c.size) for c in res.cells]
    rows = [[m, i, s] + [_fmt(groups[(m, i, s)].get(n, [])) for n in names] for m, i, s in keys]
    fig, axes = new_figure(width=max(6.0, 1.2 * len(names) + 3), height=3.8)
    ax = axes[0][0]
    width = 0.8 / max(len(keys), 1)
    for j, k in enumerate(keys):
        means = [summarize(groups[k].get(n, [])) for n in names]
        ax.bar([x + j * width for x in range(len(names))],
               [m.mean if m else 0.0 for m in means], width,
               yerr=[(m.sd or 0.0) if m else 0.0 for m in means], capsize=2,
               label=f"{k[0]} · {k[1]}" + (f" · n={k[2]}" if k[2] != "full" else ""))
    ax.set_xticks([x + width * (len(keys) - 1) / 2 for x in range(len(names))], names)
    ax.set_ylabel("test Dice")
    ax.set_ylim(0, 1)
    if keys:
        ax.legend(fontsize=7, loc="lower right", ncols=2 if len(keys) > 6 else 1)
    body = ("<p>Test Dice of each foreground class (and each region, a union of labels) on the "
            "held-out volumes: mean ± sd over seeds (n seeds with that class present). The study "
            "score above is the mean over foreground classes.</p>"
            + table(["model", "init", "n_train"] + names, rows)
            + figure_img(fig, alt="Test Dice per class, mean and sd over seeds"))
    return Section("Dice per class", body, anchor="dice-per-class")
