"""The PNG of ``bscrit confirm --plot``: loss against training examples for both branches, one
line per seed (matplotlib, imported only when a plot is asked for). Written atomically; a failed
write is an exit-3 error naming the file."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from bscrit.report.figure import save_figure
from bscrit.runs.common.result import METRIC_LABELS

if TYPE_CHECKING:
    from bscrit.runs.confirm.results import ConfirmResult

#: Panels, when recorded: the verdict's loss first.
PANELS = ("eval_loss", "train_loss", "eval_acc", "norm_sq")


def plot_confirm(r: ConfirmResult, path: str | os.PathLike[str]) -> None:
    """One panel per loss (and held-out accuracy, ‖x‖²) against examples: base branch (B) in
    blue, target branch (B') in orange, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter, MaxNLocator

    title = (f"confirm B = {r.batch_size} → B' = {r.target_batch_size} ({r.rule}, "
             f"{len(r.seeds)} seeds): {r.verdict.code}")  # fmt: skip
    present = r.metrics()
    metrics = [m for m in PANELS if m in present]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.4), squeeze=False)
    colours = {"base": "tab:blue", "target": "tab:orange"}
    for ax, m in zip(axes.flat, metrics, strict=False):
        for b in r.branches:
            first = b.seed == r.seeds[0]
            label = (f"B = {b.batch_size} (base)" if b.name == "base"
                     else f"B' = {b.batch_size} (scaled)") if first else None  # fmt: skip
            ax.plot(b.examples, b.values[m], color=colours[b.name], alpha=0.8, lw=1.2,
                    label=label)  # fmt: skip
        title = METRIC_LABELS.get(m, m) + (" (verdict)" if m == r.verdict.metric else "")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("training examples")
        ax.xaxis.set_major_formatter(EngFormatter())
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
