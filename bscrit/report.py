"""The only module that imports rich: consoles, tables, progress bars.

stdout carries results (tables, JSON); stderr carries progress, warnings and errors, so
``bscrit measure ... --json > m.json`` stays clean.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)


def fmt(x: float | None, digits: int = 4) -> str:
    """Compact number: 4 significant digits, scientific for very small/large, '∞' for inf."""
    if x is None:
        return "—"
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, float) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    if x == 0:
        return "0"
    a = abs(x)
    if 1e-3 <= a < 1e5:
        return f"{x:.{digits}g}"
    return f"{x:.{digits - 1}e}"


def fmt_ci(ci: tuple[float, float] | None) -> str:
    if ci is None:
        return "—"
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def error(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}", markup=True, highlight=False)


def info(message: str) -> None:
    err.print(message, markup=False, highlight=False)


class _StepsPerSecond(TextColumn):
    def __init__(self, unit: str) -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task):  # type: ignore[override]
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:.1f} {self.unit}/s", style="progress.data.speed")


@contextmanager
def progress(description: str, total: int, unit: str = "batch", enabled: bool = True) -> Iterator:
    """A progress bar on stderr; yields ``advance(n=1)``. Disabled → a no-op callable."""
    if not enabled:
        yield lambda n=1: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _StepsPerSecond(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


# ----------------------------------------------------------------------------------------------
# measure
# ----------------------------------------------------------------------------------------------


def _set_row(table, label: str, s, frac: float | None) -> None:  # type: ignore[no-untyped-def]
    nsr_hi = s.nsr_ci95[1]
    table.add_row(
        label,
        f"{s.num_params:,}" + (f" ({frac:.0%})" if frac is not None else ""),
        f"{fmt(s.G)} ± {fmt(s.G_se)}",
        f"{fmt(s.N)} ± {fmt(s.N_se)}",
        fmt(s.nsr),
        f"[{fmt(s.nsr_ci95[0])}, {fmt(nsr_hi) if math.isfinite(nsr_hi) else '∞'}]",
        fmt(s.R),
    )


def measurement_table(m) -> None:  # type: ignore[no-untyped-def]
    """Summary of a measurement on stdout: G, N, NSR with intervals, equilibrium, per-tensor."""
    from rich.table import Table

    out.print(
        f"[bold]bscrit measure[/]  B={m.batch_size}  n={m.dataset_size}  "
        f"k={m.num_batches} batches in {m.groups} groups  device={m.device}  mode={m.mode}"
        + (f"  amp={m.amp}" if m.amp else "")
        + f"  {m.elapsed_s:.1f}s",
        markup=True,
    )
    t = Table(title="Gradient noise at the checkpoint (± jackknife s.e.; NSR 95% interval)")
    for col in ("parameters", "count", "G = ‖∇L‖²", f"N = Tr Σ (B={m.batch_size})", "NSR = N/G",
                "NSR 95%", "R = ‖x‖²"):
        t.add_column(col, justify="right" if col != "parameters" else "left")
    _set_row(t, "all trainable", m.all, 1.0)
    if m.scale_invariant is not None:
        _set_row(t, "scale-invariant", m.scale_invariant, m.scale_invariant_fraction)
    else:
        t.add_row("scale-invariant", "none", "—", "—", "—", "—", "—")
    out.print(t)
    if m.equilibrium is not None:
        e = m.equilibrium
        out.print(
            f"equilibrium: (2−ηλ)λR = {fmt(e.lhs)} vs η(G+N) = {fmt(e.rhs)}  "
            f"ρ = {e.residual:+.3f}  ({m.equilibrium_note})"
        )
    else:
        out.print(f"equilibrium: not checked ({m.equilibrium_note})")
    if len(m.checkpoints) > 1:
        ct = Table(title="Per checkpoint (pooled above: mean of G and N)")
        for col in ("checkpoint", "G (all)", "N (all)", "NSR (all)", "NSR (scale-inv.)", "ρ"):
            ct.add_column(col, justify="left" if col == "checkpoint" else "right")
        for c in m.checkpoints:
            ct.add_row(
                c.path,
                fmt(c.all.G),
                fmt(c.all.N),
                fmt(c.all.nsr),
                fmt(c.scale_invariant.nsr) if c.scale_invariant else "—",
                f"{c.equilibrium.residual:+.3f}" if c.equilibrium else "—",
            )
        out.print(ct)


def per_tensor_table(rows, limit: int | None = 20) -> None:  # type: ignore[no-untyped-def]
    """Per-tensor breakdown, largest N first."""
    from rich.table import Table

    ordered = sorted(rows, key=lambda r: r.N, reverse=True)
    shown = ordered if limit is None else ordered[:limit]
    t = Table(
        title="Per tensor (largest N first"
        + (f"; {len(shown)} of {len(rows)}, --per-tensor all for every row" if len(shown) < len(rows) else "")
        + ")"
    )
    for col in ("tensor", "shape", "G", "N", "R", "scale-inv.", "|⟨W,g⟩|/‖W‖‖g‖"):
        t.add_column(col, justify="left" if col in ("tensor", "shape") else "right")
    for r in shown:
        t.add_row(
            r.name,
            "×".join(str(s) for s in r.shape),
            fmt(r.G),
            fmt(r.N),
            fmt(r.R),
            "yes" if r.scale_invariant else "no",
            fmt(r.invariance_ratio, 2),
        )
    out.print(t)
