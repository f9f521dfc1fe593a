"""The only module that imports rich: consoles, tables, progress bars.

stdout carries results (tables, JSON); stderr carries progress, warnings and errors, so
``bscrit measure ... --json > m.json`` stays clean.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from . import optim

# Outside a terminal (pipes, CI logs) rich falls back to 80 columns and truncates the tables;
# use 120 there unless COLUMNS says otherwise.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 120
out = Console(highlight=False, soft_wrap=False, width=_WIDTH)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 120)


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
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", markup=True, highlight=False)


def info(message: str) -> None:
    err.print(message, markup=False, highlight=False)


class _StepsPerSecond(TextColumn):
    def __init__(self, unit: str) -> None:
        super().__init__("")
        self.unit = unit

    def render(self, task):  # type: ignore[override]
        from rich.text import Text

        speed = task.finished_speed or task.speed
        return Text(
            "" if speed is None else f"{speed:.1f} {self.unit}/s", style="progress.data.speed"
        )


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
        + f"  {m.elapsed_s:.2f}s",
        markup=True,
    )
    t = Table(
        title=f"G = ‖∇L‖², N = Tr Σ at B={m.batch_size}, NSR = N/G "
        f"(jackknife over {m.groups} groups)"
    )
    for col in ("parameters", "count", "G ± s.e.", "N ± s.e.", "NSR", "NSR 95% CI", "R = ‖x‖²"):
        t.add_column(col, justify="right" if col != "parameters" else "left", no_wrap=True)
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
        + (
            f"; {len(shown)} of {len(rows)}, --per-tensor all for every row"
            if len(shown) < len(rows)
            else ""
        )
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


# ==============================================================================================
# predict / check / scale  (issue: predict, check and scale)
# ==============================================================================================


def _line(text: str) -> None:
    """One line of plain text on stdout, never wrapped (CI logs grep it)."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def _batch(x: float | None) -> str:
    """A batch size: an integer count, '∞' when unbounded."""
    if x is None:
        return "—"
    if math.isinf(x):
        return "∞"
    return f"{x:.0f}" if abs(x) >= 10 else f"{x:.3g}"


def _batch_ci(ci: tuple[float, float]) -> str:
    if math.isinf(ci[1]):
        return f"[{_batch(ci[0])}, ∞)"
    return f"[{_batch(ci[0])}, {_batch(ci[1])}]"


def _hp(x: float | int | None) -> str:
    """A hyperparameter: 6 significant digits (β₂ = 0.99975 must not print as 0.9998)."""
    if x is None:
        return "—"
    return f"{x:.6g}"


def _bounds_table(b) -> None:  # type: ignore[no-untyped-def]
    """One measurement's bounds ([LMA21] Thms 5.2, 5.5, 5.6; [McC18]; [SDBD21] eq. 22)."""
    from rich.table import Table

    ns = b.noise
    c2 = b.c2
    opt = b.optimizer
    opt_s = f"{opt.name}, lr {_hp(opt.lr)}" if opt is not None else "no optimizer recorded"
    _line(f"{b.source}: B = {b.batch_size}, n = {b.dataset_size}, {opt_s}")
    t = Table()
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_column("95% CI", justify="right")
    pset = "scale-invariant" if b.param_set == "scale_invariant" else "all"
    t.add_row("parameter set", pset, f"s.-inv. {100 * b.scale_invariant_fraction:.1f}% of params")
    t.add_row("G = ‖∇L‖²", fmt(ns.G.value), fmt_ci(ns.G.ci95))
    t.add_row("N^B = Tr Σ^B", fmt(ns.N.value), fmt_ci(ns.N.ci95))
    t.add_row("NSR = N^B/G", fmt(ns.nsr), fmt_ci(ns.nsr_ci95))
    if b.b_star_bounded:
        t.add_row("B* = C²(B + B·NSR)", _batch(b.b_star), _batch_ci(b.b_star_ci95))
        t.add_row("B* ≈ C²·B·NSR", _batch(b.b_star_approx), _batch_ci(b.b_star_approx_ci95))
    else:
        t.add_row("B* = C²(B + B·NSR)", f"> {_batch(b.b_star_ci95[0])}", "no upper bound")
        t.add_row("B* ≈ C²·B·NSR", f"> {_batch(b.b_star_approx_ci95[0])}", "no upper bound")
    t.add_row("B_simple = T₁/G [McC18]", _batch(b.b_simple), "")
    ir = b.implicit_regularisation
    if ir is not None:
        t.add_row("(η/4)·G  [SDBD21 eq. 22]", fmt(ir.signal_term), "")
        t.add_row("(η/4)·N^B [SDBD21 eq. 22]", fmt(ir.noise_term), "")
    if b.equilibrium_residual is not None:
        t.add_row("equilibrium residual ρ", f"{b.equilibrium_residual:+.3f}", "")
    out.print(t)
    thr = b.sde_nsr_threshold
    if b.sde_certified_invalid:
        _line(
            f"  Thm 5.2 (ii): NSR {fmt(ns.nsr)} < 1/(C² − 1) = {fmt(thr)}: the SDE "
            "approximation is certified to FAIL at this setting."
        )
    else:
        _line(
            f"  Thm 5.2 (ii): NSR {fmt(ns.nsr)} ≥ 1/(C² − 1) = {fmt(thr)}: not certified to fail."
        )
    if b.thm55_base_batch_below is not None:
        _line(
            f"  Thm 5.5: (C² − 1)·NSR = {fmt((c2 - 1) * ns.nsr)} < 1: B = {b.batch_size} is past "
            f"the critical batch of every base batch below {_batch(b.thm55_base_batch_below)} "
            f"(κ > {fmt(b.thm55_kappa_min)})."
        )
    else:
        _line(f"  Thm 5.5: (C² − 1)·NSR = {fmt((c2 - 1) * ns.nsr)} ≥ 1: certifies nothing here.")
    if ir is not None:
        _line(
            "  Implicit regularisation: the noise term is NSR × the signal term; the linear rule "
            "keeps the noise term fixed (η/B constant)."
        )
    _line(f"  Parameters: {b.param_set_reason}.")


def scaled_table(s, title: str | None = None) -> None:  # type: ignore[no-untyped-def]
    """Old -> new hyperparameters with the rule's name and reference ([LMA21], [MLPA22])."""
    from rich.table import Table

    head = title or (
        f"{s.reference}: {s.optimizer}, B = {s.batch_size} -> B' = {s.target_batch_size} "
        f"(κ = {s.kappa:.4g})"
    )
    _line(head)
    t = Table()
    t.add_column("hyperparameter")
    t.add_column("old -> new", justify="right")
    t.add_column("how")
    for key, new in s.new.items():
        t.add_row(key, f"{_hp(s.old.get(key))} -> {_hp(new)}", s.notes.get(key, ""))
    for label, (old, new) in (("steps", s.steps), ("warmup_steps", s.warmup_steps)):
        if old is not None:
            t.add_row(label, f"{old} -> {new}", "÷ κ (training length fixed in epochs)")
    if s.epochs is not None:
        t.add_row("epochs", f"{_hp(s.epochs)} -> {_hp(s.epochs)}", "unchanged")
    out.print(t)


def prediction_report(p) -> None:  # type: ignore[no-untyped-def]
    """Human output of ``bscrit predict``: bounds per measurement, range, recommendation."""
    from rich.table import Table

    _line(
        f"bscrit predict: C² = {p.c2:g} ([LMA21] Thms 5.2, 5.5, 5.6; 95% intervals from the "
        "jackknife)"
    )
    for b in p.measurements:
        out.print()
        _bounds_table(b)
    r = p.recommended
    out.print()
    _line("Recommendation")
    t = Table()
    t.add_column("")
    t.add_column("batch size", justify="right")
    if len(p.measurements) > 1:
        t.add_row("B* across baselines (min – max)", f"{_batch(p.range[0])} – {_batch(p.range[1])}")
    if r.empty:
        t.add_row("recommended range", "empty")
    else:
        t.add_row("recommended range", f"{r.min} – {_batch(r.max)}")
        t.add_row("  largest power of two in it", _batch(r.max_pow2))
        t.add_row("  largest multiple of 8 in it", _batch(r.max_mult8))
    out.print(t)
    _line(f"  {r.note}.")
    if p.scaled is not None:
        out.print()
        scaled_table(p.scaled)
    for b in p.measurements:
        for w in b.warnings:
            warn(f"{b.source}: {w}")
    for w in p.warnings:
        warn(w)
    if p.scaled is not None:
        for w in p.scaled.warnings:
            warn(w)


def check_report(r) -> None:  # type: ignore[no-untyped-def]
    """Human output of ``bscrit check``: one line on stdout that says why; warnings on stderr."""
    tag = {"ok": "OK", "warn": "WARN", "fail": "FAIL"}[r.verdict]
    _line(f"{tag}: {r.reason}")
    for b in r.prediction.measurements:
        for w in b.warnings:
            warn(f"{b.source}: {w}")


# ==============================================================================================
# svag  (issue: bscrit svag)
# ==============================================================================================


def _pct(x: float) -> str:
    """A relative difference as a percentage ('—' when not finite)."""
    if not math.isfinite(x):
        return "—"
    return f"{100 * x:.2g}%" if x < 0.1 else f"{100 * x:.0f}%"


def svag_cost(ls, effective_steps: int, passes: dict, target_batch_size: int, device: str) -> None:
    """Print (stderr) what the SVAG runs will cost before they start."""
    total = sum(passes.values())
    info(
        f"SVAG at B' = {target_batch_size} on {device}: {effective_steps} effective steps for "
        f"each l in {', '.join(str(x) for x in ls)}."
    )
    info("Cost: SVAG with l takes 2·l forward-backward passes per effective step (+ evaluation):")
    for lv in ls:
        info(f"  l = {lv}: {lv * effective_steps} steps, {passes[lv]:,} forward-backward passes of "
             f"batch {target_batch_size}")  # fmt: skip
    info(f"  total: {total:,} forward-backward passes, i.e. about {total / 2:,.0f} training steps "
         f"at batch size {target_batch_size}")  # fmt: skip


def svag_report(r) -> None:  # type: ignore[no-untyped-def]
    """Human output of ``bscrit svag`` (a :class:`~bscrit.svag_results.SvagResult`): the runs,
    the test functions at the end (tail means) with the comparisons behind the verdict, and the
    verdict."""
    from rich.table import Table

    from .svag_results import METRIC_LABELS, VERDICT_METRICS

    _line(
        f"SVAG (Stochastic Variance Amplified Gradient, [LMA21] §4) at B' = "
        f"{r.target_batch_size} from B = {r.batch_size} (κ = {r.kappa:.4g}; {r.rule_reference}), "
        f"{r.effective_steps} effective steps"
    )
    t = Table(title="runs", title_justify="left")
    t.add_column("l", justify="right")
    t.add_column("steps", justify="right")
    t.add_column(f"{r.target_optimizer.name} hyperparameters (SVAG rule, THEORY §6)")
    t.add_column("fwd-bwd passes", justify="right")
    t.add_column("time", justify="right")
    for run in r.runs:
        t.add_row(
            str(run.l),
            str(run.steps),
            optim.describe(run.optimizer),
            f"{r.forward_backward.get(run.l, 0):,}",
            f"{run.elapsed_s:.1f} s" + (" (diverged)" if run.diverged_at is not None else ""),
        )
    out.print(t)

    ls = [run.l for run in r.runs]
    pairs = list(dict.fromkeys((c.l_a, c.l_b) for c in r.comparisons))
    t = Table(
        title=f"test functions: mean ±sd over the last {r.tail:.0%} of the effective steps; "
        f"comparisons: |a − b| / threshold, both relative to max(|a|,|b|)",
        title_justify="left",
    )
    t.add_column("test function")
    for lv in ls:
        t.add_column(f"l = {lv}", justify="right")
    for la, lb in pairs:
        t.add_column(f"{lb} vs {la}", justify="right")
    for m in r.metrics():
        label = METRIC_LABELS.get(m, m) + (" *" if m in VERDICT_METRICS else "")
        row = [label]
        for lv in ls:
            s = r.summary(m, lv)
            row.append("—" if s is None else f"{fmt(s.mean)} ±{s.sd:.1g}")
        for la, lb in pairs:
            c = next((c for c in r.comparisons if c.metric == m and (c.l_a, c.l_b) == (la, lb)),
                     None)  # fmt: skip
            if c is None:
                row.append("—")
            else:
                mark = "[green]✓[/]" if c.agree else "[red]✗[/]"
                scale = max(abs(c.a), abs(c.b))
                rel_thr = c.threshold / scale if scale > 0 else math.nan
                row.append(f"{_pct(c.rel_diff)} / {_pct(rel_thr)} {mark}")
        t.add_row(*row)
    out.print(t)
    _line(
        f"  * decides the verdict. Agree iff |a − b| ≤ max(rtol·max(|a|,|b|), z·√(sd_a² + sd_b²)) "
        f"with rtol = {r.rtol:g}, z = {r.z:g}; accuracies compared as error rates 1 − acc."
    )
    v = r.verdict
    colour = {"sde_holds": "green", "sde_fails": "red", "not_converged": "yellow"}.get(v.code, "")
    out.print(f"[bold {colour}]verdict ({v.code}):[/] {v.text}", soft_wrap=True)
    if v.failing:
        _line(f"  disagreements: {'; '.join(v.failing)}")
    for n in r.notes:
        _line(f"  note: {n}")
    for w in r.warnings:
        warn(w)


def plot_svag(r, path) -> None:  # type: ignore[no-untyped-def]
    """A PNG like [LMA21] Fig. 4: one panel per test function against effective steps, one line
    per l. matplotlib (Agg backend) is imported here only."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .svag_results import METRIC_LABELS

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
    fig.suptitle(
        f"SVAG at B' = {r.target_batch_size} ({r.target_optimizer.name}); verdict: "
        f"{r.verdict.code}",
        fontsize=11,
    )
    fig.tight_layout()
    p = os.fspath(path)
    d = os.path.dirname(os.path.abspath(p))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(p)}.tmp.png")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, p)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
