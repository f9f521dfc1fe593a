"""The figure of ``bscrit schedule --plot``: B*(t) with its 95% band, the top of the recommended
range and the warm-up as a step line, log y (matplotlib, imported only when asked for)."""

from __future__ import annotations

import math
import os

from bscrit.report.figure import save_figure
from bscrit.theory.schedule import Schedule


def plot_schedule(s: Schedule, path: str | os.PathLike[str]) -> None:
    """Write the PNG: x = examples seen in the measured run (steps when unknown; symmetric-log
    when the points span more than two decades), y log.

    Heuristic points (off equilibrium, earlier than τ) are hollow markers.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_ex = all(p.examples_seen is not None for p in s.points)

    def x_of(p_ex: int | None, p_step: int | None) -> float:
        v = p_ex if use_ex else p_step
        return float(v or 0)

    xs = [x_of(p.examples_seen, p.step) for p in s.points]
    big = max([p.b_star for p in s.points if math.isfinite(p.b_star)] + [s.base_batch_size])
    cap = 10 * big  # where an unbounded upper end is drawn

    def finite(v: float) -> float:
        return v if math.isfinite(v) else cap

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    lo = [max(p.b_star_ci95[0], 1e-9) for p in s.points]
    hi = [finite(p.b_star_ci95[1]) for p in s.points]
    ax.fill_between(xs, lo, hi, alpha=0.2, color="C0", label="B* 95% interval")
    ax.plot(xs, [finite(p.b_star) for p in s.points], color="C0", label="B* (Thm 5.6)")
    for x, p in zip(xs, s.points, strict=True):
        ax.plot([x], [finite(p.b_star)], "o", color="C0",
                mfc="none" if p.heuristic else "C0")  # fmt: skip
    tops = [p.top if p.top >= p.batch_size else float("nan") for p in s.points]
    ax.plot(xs, [finite(t) for t in tops], "--", color="C2", label="recommended top")
    end = max(xs + [0.0]) * 1.05 or 1.0
    sx = [x_of(g.start_examples, g.start_step) for g in s.stages] + [end]
    sy = [g.batch_size for g in s.stages]
    ax.step(sx, sy + sy[-1:], where="post", color="C3", lw=2, label="schedule")
    ax.set_yscale("log")
    positive = [x for x in xs if x > 0]
    if positive and max(positive) > 100 * min(positive):  # B*(t) moves fastest early: symlog
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xlim(0, end)
    ax.set_xlabel("examples seen (measured run)" if use_ex else "step (measured run)")
    ax.set_ylabel("batch size")
    ax.set_title(f"B*(t) and the batch-size warm-up (C² = {s.c2:g}; hollow: heuristic)",
                 fontsize=10)  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
