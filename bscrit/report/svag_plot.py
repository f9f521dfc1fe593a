"""The PNG of a SVAG run, like [LMA21] Fig. 4 (matplotlib, imported only when a plot is asked for).

One panel per test function against effective steps, one line per l (docs/svag.md). Written
atomically; a failed write is an exit-3 error naming the file.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from bscrit.report.figure import save_figure
from bscrit.runs.common.result import METRIC_LABELS

if TYPE_CHECKING:
    from bscrit.runs.svag.results import SvagResult


def plot_svag(r: SvagResult, path: str | os.PathLike[str]) -> None:
    """A PNG like [LMA21] Fig. 4: one panel per test function against effective steps, one line
    per l. matplotlib (Agg backend) is imported here only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title = (f"SVAG at B' = {r.target_batch_size} ({r.target_optimizer.name}); verdict: "
             f"{r.verdict.code}")  # fmt: skip
    metrics = r.metrics()
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        for run in r.runs:
            label = f"l = {run.l}" + (" (SGD)" if run.l == 1 and r.target_optimizer.name == "sgd"
                                      else "")  # fmt: skip
            ax.plot(run.effective_steps, run.values[m], marker="." if len(run.effective_steps) < 30
                    else None, label=label)  # fmt: skip
        ax.set_title(METRIC_LABELS.get(m, m), fontsize=10)
        ax.set_xlabel("effective steps")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
