"""The only module that imports rich: consoles, tables, progress bars.

stdout carries results (tables, JSON); stderr carries progress, warnings and errors, so
``bscrit measure ... --json > m.json`` stays clean.

The ``format_*`` functions build rich renderables (:class:`~rich.table.Table`,
:class:`~rich.text.Text`, :class:`~rich.console.Group`) and print nothing; :func:`show` prints
them (stdout by default), and :func:`error`, :func:`warn` and :func:`info` print messages on
stderr. A :class:`Report` is a Group that also carries the warnings that belong with it;
:func:`show` prints those on stderr after the Group.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console, ConsoleOptions, Group, NewLine, RenderableType, RenderResult
from rich.markup import escape
from rich.measure import Measurement as Width
from rich.progress import (  # fmt: skip
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from bscrit.optim import registry as optim

if TYPE_CHECKING:
    from rich.progress import Task

    from bscrit.artifacts.measurement import Measurement, ParameterRow, ParamSetStats
    from bscrit.runs.svag.results import SvagResult
    from bscrit.runs.svag.verdict import TailStat
    from bscrit.theory.bounds import MeasurementBounds
    from bscrit.theory.prediction import CheckResult, Prediction
    from bscrit.theory.scaling import ScaledHyperparameters

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
    """A 95% interval as '[lo, hi]' ('—' when there is none)."""
    if ci is None:
        return "—"
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


# ----------------------------------------------------------------------------------------------
# printing: the one place that writes to the consoles
# ----------------------------------------------------------------------------------------------


class Report(Group):
    """A :class:`~rich.console.Group` for stdout plus the warnings that go with it.

    :func:`show` prints the Group and then each warning with :func:`warn` (stderr); printed
    directly (``console.print(report)``) only the Group appears.
    """

    def __init__(self, *renderables: RenderableType, warnings: Iterable[str] = ()) -> None:
        super().__init__(*renderables)
        self.warnings: tuple[str, ...] = tuple(warnings)


def show(
    *renderables: RenderableType, stderr: bool = False, console: Console | None = None
) -> None:
    """Print renderables on stdout (``stderr=True``: on stderr; ``console``: on that console).

    A ``str`` is printed literally (no markup). The warnings of a :class:`Report` follow on
    stderr. The plain lines of the reports are neither wrapped nor cropped at the console width
    (CI logs grep them); tables and other text are laid out to the width as usual.
    """
    c = console if console is not None else (err if stderr else out)
    for r in renderables:
        _print(c, Text(r) if isinstance(r, str) else r)
        if isinstance(r, Report):
            for w in r.warnings:
                warn(w)


class _Fit:
    """The first layout whose natural width fits the console, else the last: a table too wide
    is laid out with fewer columns instead of having its cells cut with '…' by rich."""

    def __init__(self, *layouts: RenderableType) -> None:
        self.layouts = layouts

    def choose(self, console: Console, options: ConsoleOptions) -> RenderableType:
        natural = options.update(max_width=1 << 16)  # Width.get clamps to max_width
        for x in self.layouts[:-1]:
            if Width.get(console, natural, x).maximum <= options.max_width:
                return x
        return self.layouts[-1]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.choose(console, options)


def _table(title: str, cols: Sequence[str], rows: Iterable[Sequence[str]], left: int = 1) -> Table:
    """``left`` label columns (folded when too long), then figures (right-aligned, never cut)."""
    t = Table(title=title)
    for i, col in enumerate(cols):
        if i < left:
            t.add_column(col, overflow="fold")
        else:
            t.add_column(col, justify="right", no_wrap=True)
    for row in rows:
        t.add_row(*row)
    return t


def _print(console: Console, r: RenderableType) -> None:
    """Print a Group part by part (the same output as the Group): tables and wrapped text are
    cropped at the console width as usual, the unwrapped plain lines (:func:`_line`) are not."""
    if isinstance(r, Group):
        for part in r.renderables:
            _print(console, part)
    else:
        console.print(r, soft_wrap=isinstance(r, Text) and bool(r.no_wrap))


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

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(
            "" if speed is None else f"{speed:.1f} {self.unit}/s", style="progress.data.speed"
        )


@contextmanager
def progress(
    description: str, total: int, unit: str = "batch", enabled: bool = True
) -> Iterator[Callable[..., None]]:
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


def _line(text: str) -> Text:
    """One line of plain text, never wrapped (CI logs grep it); :func:`show` does not crop it."""
    return Text(text, no_wrap=True, overflow="ignore")


# ----------------------------------------------------------------------------------------------
# measure
# ----------------------------------------------------------------------------------------------


_SET_COLUMNS = ("count", "G ± s.e.", "N ± s.e.", "NSR", "NSR 95% CI", "R = ‖x‖²")


def _set_cells(s: ParamSetStats | None, frac: float | None) -> list[str]:
    """The figures of one parameter set, in the order of ``_SET_COLUMNS``."""
    if s is None:
        return ["none", "—", "—", "—", "—", "—"]
    lo, hi = s.nsr_ci95
    return [f"{s.num_params:,}" + (f" ({frac:.0%})" if frac is not None else ""),
            f"{fmt(s.G)} ± {fmt(s.G_se)}", f"{fmt(s.N)} ± {fmt(s.N_se)}", fmt(s.nsr),
            f"[{fmt(lo)}, {fmt(hi) if math.isfinite(hi) else '∞'}]", fmt(s.R)]  # fmt: skip


def format_measurement(m: Measurement) -> Group:
    """Summary of a measurement: a header line, the table of G, N and NSR with intervals, the
    equilibrium line and (several checkpoints) the per-checkpoint table; too wide, transposed."""
    parts: list[RenderableType] = [
        Text.assemble(
            ("bscrit measure", "bold"),
            f"  B={m.batch_size}"
            + (f" (micro-batches of {m.micro_batch_size})" if m.micro_batch_size else "")
            + f"  n={m.dataset_size}  k={m.num_batches} batches in {m.groups} groups"
            + f"  device={m.device}  mode={m.mode}"
            + (f"  amp={m.amp}" if m.amp else "")
            + f"  {m.elapsed_s:.2f}s",
        )  # fmt: skip
    ]
    if opt := m.optimizer:
        parts += [_line(f"{opt.name}: {x}") for x in optim.summary_lines(opt)]
    if m.extra.get("selection"):
        parts.append(_line(f"checkpoints: {m.extra['selection']}"))
    title = f"G = ‖∇L‖², N = Tr Σ at B={m.batch_size}, NSR = N/G (jackknife over {m.groups} groups)"
    si = m.scale_invariant
    sets = {
        "all trainable": _set_cells(m.all, 1.0),
        "scale-invariant": _set_cells(si, m.scale_invariant_fraction if si else None),
    }
    wide = _table(title, ("parameters", *_SET_COLUMNS), ([k, *v] for k, v in sets.items()))
    transposed = ([col, *(v[i] for v in sets.values())] for i, col in enumerate(_SET_COLUMNS))
    narrow = _table(title, ("parameters", *sets), transposed)
    parts.append(_Fit(wide, narrow))
    if m.equilibrium is not None:
        e = m.equilibrium
        parts.append(
            Text(
                f"equilibrium: (2−ηλ)λR = {fmt(e.lhs)} vs η(G+N) = {fmt(e.rhs)}  "
                f"ρ = {e.residual:+.3f}  ({m.equilibrium_note})"
            )
        )
    else:
        parts.append(Text(f"equilibrium: not checked ({m.equilibrium_note})"))
    if len(m.checkpoints) > 1:
        parts.append(_checkpoint_table(m))
    parts += _equilibrium_parts(m)
    return Group(*parts)


def _checkpoint_table(m: Measurement) -> _Fit:
    """The checkpoints' scatter: step, G, N, NSR with its batch-noise interval, ρ; too wide for
    the console, the step goes under the path and the interval under the NSR."""
    title = "Per checkpoint (pooled above: mean of G and N)"
    cells = [(c.path, "—" if c.step is None else str(c.step), fmt(c.all.G), fmt(c.all.N),
              fmt(c.all.nsr), fmt_ci(c.all.nsr_ci95),
              fmt(c.scale_invariant.nsr) if c.scale_invariant else "—",
              f"{c.equilibrium.residual:+.3f}" if c.equilibrium else "—")
             for c in m.checkpoints]  # fmt: skip
    cols = ("checkpoint", "step", "G (all)", "N (all)", "NSR (all)", "batch-noise 95% CI",
            "NSR (scale-inv.)", "ρ")  # fmt: skip
    narrow = ((f"{c[0]}\nstep {c[1]}", *c[2:4], f"{c[4]}\n{c[5]}", *c[6:]) for c in cells)
    cols2 = ("checkpoint / step", "G (all)", "N (all)", "NSR (all) / 95% CI", "NSR (s.-inv.)", "ρ")
    return _Fit(_table(title, cols, cells), _table(title, cols2, narrow))


def _equilibrium_parts(m: Measurement) -> list[RenderableType]:
    """What the intervals cover; with several draws, the table over the equilibrium (§8)."""
    from bscrit.stats.equilibrium import one_draw_advice, relaxation_steps

    e = m.equilibrium_interval
    advice = one_draw_advice(e.relaxation_steps if e else relaxation_steps(m.optimizer)[0])
    if (e.scope if e else "checkpoint") == "checkpoint" and len(m.checkpoints) <= 1:
        return [Text(f"intervals: the batch noise at this checkpoint only; {advice}")]
    if e is None:  # several checkpoints measured before bscrit formed equilibrium intervals
        return []
    spread = {k: f"{fmt(v.spread, 2)}×" for k, v in e.sets.items() if v.spread is not None}
    if not e.covers_equilibrium:
        return [Text(f"intervals: the batch noise of these {e.checkpoints} checkpoints only "
                     f"({e.note})")]  # fmt: skip
    sets = {k.replace("_", "-"): [fmt(v.G.value), fmt_ci(v.G.ci95), fmt(v.N.value),
            fmt_ci(v.N.ci95), fmt(v.nsr), fmt_ci(v.nsr_ci95), spread.get(k, "—")]
            for k, v in e.sets.items()}  # fmt: skip
    title = (f"Over the equilibrium: {e.draws} draws from {e.checkpoints} checkpoints "
             "(delete-one-draw jackknife, 95%)")  # fmt: skip
    cols = ("G", "G 95% CI", "N", "N 95% CI", "NSR", "NSR 95% CI", "spread/noise")
    wide = _table(title, ("parameters", *cols), ([k, *v] for k, v in sets.items()))
    narrow = _table(title, ("", *sets), ([c, *(v[i] for v in sets.values())]
                                         for i, c in enumerate(cols)))  # fmt: skip
    return [_Fit(wide, narrow), Text(f"  draws: {e.note}")]


def format_per_tensor(rows: Sequence[ParameterRow], limit: int | None = 20) -> Group:
    """Per-tensor breakdown, largest N first (the first ``limit`` rows; None: all). Too wide for
    the console, the shape goes under the tensor's name and two headers are shortened."""
    ordered = sorted(rows, key=lambda r: r.N, reverse=True)
    shown = ordered if limit is None else ordered[:limit]
    cut = f"; {len(shown)} of {len(rows)}, --per-tensor all for every row"
    title = f"Per tensor (largest N first{cut if len(shown) < len(rows) else ''})"
    cells = [(r.name, "×".join(str(s) for s in r.shape), fmt(r.G), fmt(r.N), fmt(r.R),
              "yes" if r.scale_invariant else "no", fmt(r.invariance_ratio, 2))
             for r in shown]  # fmt: skip
    wide = _table(
        title, ("tensor", "shape", "G", "N", "R", "scale-inv.", "|⟨W,g⟩|/‖W‖‖g‖"), cells, 2
    )
    narrow = ((f"{c[0]}\n{c[1]}", *c[2:]) for c in cells)  # the shape under the name
    cols = ("tensor / shape", "G", "N", "R", "s.-inv.", "|cos(W,g)|")
    return Group(_Fit(wide, _table(title, cols, narrow)))


# ==============================================================================================
# predict / check / scale  (issue: predict, check and scale)
# ==============================================================================================


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


def format_bounds(b: MeasurementBounds) -> Group:
    """One measurement's bounds ([LMA21] Thms 5.2, 5.5, 5.6; [McC18]; [SDBD21] eq. 22): a head
    line, the table of quantities with 95% intervals and the lines that read the theorems."""
    ns = b.noise
    c2 = b.c2
    opt = b.optimizer
    opt_s = f"{opt.name}, lr {_hp(opt.lr)}" if opt is not None else "no optimizer recorded"
    parts: list[RenderableType] = [
        _line(f"{b.source}: B = {b.batch_size}, n = {b.dataset_size}, {opt_s}")
    ]
    t = Table()
    t.add_column("quantity")
    t.add_column("value", justify="right")
    t.add_column("95% CI", justify="right")
    pset = b.param_set.replace("_", "-")
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
    for o in b.other_readings:  # the readings the recommendation does not use, for comparison
        name = o.name.replace("_", "-")
        t.add_row(f"NSR, {name} (not used)", fmt(o.nsr), fmt_ci(o.nsr_ci95))
        t.add_row(f"B*, {name} (not used)", _batch(o.b_star), _batch_ci(o.b_star_ci95))
    parts.append(t)
    thr = b.sde_nsr_threshold
    if b.sde_certified_invalid:
        parts.append(
            _line(
                f"  Thm 5.2 (ii): NSR {fmt(ns.nsr)} < 1/(C² − 1) = {fmt(thr)}: the SDE "
                "approximation is certified to FAIL at this setting."
            )
        )
    else:
        parts.append(
            _line(
                f"  Thm 5.2 (ii): NSR {fmt(ns.nsr)} ≥ 1/(C² − 1) = {fmt(thr)}: not certified to "
                "fail."
            )
        )
    if b.thm55_base_batch_below is not None:
        parts.append(
            _line(
                f"  Thm 5.5: (C² − 1)·NSR = {fmt((c2 - 1) * ns.nsr)} < 1: B = {b.batch_size} is "
                f"past the critical batch of every base batch below "
                f"{_batch(b.thm55_base_batch_below)} (κ > {fmt(b.thm55_kappa_min)})."
            )
        )
    else:
        parts.append(
            _line(
                f"  Thm 5.5: (C² − 1)·NSR = {fmt((c2 - 1) * ns.nsr)} ≥ 1: certifies nothing here."
            )
        )
    if ir is not None:
        parts.append(
            _line(
                "  Implicit regularisation: the noise term is NSR × the signal term; the linear "
                "rule keeps the noise term fixed (η/B constant)."
            )
        )
    parts.append(_line(f"  Parameters: {b.param_set_reason}."))
    parts.append(_line(f"  Intervals: {b.interval_note}."))
    return Group(*parts)


def format_scaled(s: ScaledHyperparameters, title: str | None = None) -> Group:
    """Old -> new hyperparameters with the rule's name and reference ([LMA21], [MLPA22]): a head
    line (``title`` replaces it) and the table. ``s.warnings`` are left to the caller."""
    head = title or (
        f"{s.reference}: {s.optimizer}, B = {s.batch_size} -> B' = {s.target_batch_size} "
        f"(κ = {s.kappa:.4g})"
    )
    t = Table()
    t.add_column("hyperparameter")
    t.add_column("old -> new", justify="right")
    t.add_column("how")
    for key, new in s.new.items():
        t.add_row(key, f"{_hp(s.old.get(key))} -> {_hp(new)}", s.notes.get(key, ""))
    for g in s.groups:  # param groups whose values differ (weight decay, LR): each scaled alike
        keys = [k for k in g.new if k in ("lr", "weight_decay") or g.old[k] != s.old.get(k)]
        hp = ", ".join(f"{k} {_hp(g.old[k])} -> {_hp(g.new[k])}" for k in keys)
        t.add_row(f"group {g.index}", hp, f"param group of {g.tensors} tensors, same rule")
    for label, (old, new_steps) in (("steps", s.steps), ("warmup_steps", s.warmup_steps)):
        if old is not None:
            t.add_row(label, f"{old} -> {new_steps}", "÷ κ (training length fixed in epochs)")
    if s.epochs is not None:
        t.add_row("epochs", f"{_hp(s.epochs)} -> {_hp(s.epochs)}", "unchanged")
    return Group(_line(head), t)


def format_prediction(p: Prediction) -> Report:
    """Human output of ``bscrit predict``: bounds per measurement, range, recommendation and (when
    the base run has an optimizer) the scaled hyperparameters; with every warning."""
    parts: list[RenderableType] = [
        _line(
            f"bscrit predict: C² = {p.c2:g} ([LMA21] Thms 5.2, 5.5, 5.6; 95% intervals from the "
            "jackknife)"
        )
    ]
    for b in p.measurements:
        parts += [NewLine(), format_bounds(b)]
    r = p.recommended
    parts += [NewLine(), _line("Recommendation")]
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
        limit = {"b_star": "B* (lower 95% bound)", "scaling_rule": "the scaling rule's reach",
                 "dataset_size": "the dataset size n"}  # fmt: skip
        t.add_row("  limited by", limit.get(r.limited_by or "", r.limited_by or "nothing detected"))
    parts += [t, _line(f"  {r.note}.")]
    if p.nsr_at_target is not None:
        parts.append(_line(
            f"  noise dominance at B' = {r.target}: NSR = {fmt(p.nsr_at_target)} "
            f"({p.base.param_set}; the square-root rule's SDE needs it ≫ 1, threshold 1 heuristic)"
        ))  # fmt: skip
    if p.scaled is not None:
        parts += [NewLine(), format_scaled(p.scaled)]
    warnings = [f"{b.source}: {w}" for b in p.measurements for w in b.warnings]
    warnings += list(p.warnings)
    if p.scaled is not None:
        warnings += list(p.scaled.warnings)
    return Report(*parts, warnings=warnings)


def format_check(r: CheckResult) -> Report:
    """Human output of ``bscrit check``: one line that says why; the measurements' warnings."""
    tag = {"ok": "OK", "warn": "WARN", "fail": "FAIL"}[r.verdict]
    warnings = [f"{b.source}: {w}" for b in r.prediction.measurements for w in b.warnings]
    return Report(_line(f"{tag}: {r.reason}"), warnings=warnings)


# ==============================================================================================
# svag  (issue: bscrit svag)
# ==============================================================================================


def _pct(x: float) -> str:
    """A relative difference as a percentage ('—' when not finite)."""
    if not math.isfinite(x):
        return "—"
    return f"{100 * x:.2g}%" if x < 0.1 else f"{100 * x:.0f}%"


def format_svag_cost(
    ls: Sequence[int],
    effective_steps: int,
    passes: Mapping[int, int],
    target_batch_size: int,
    device: str,
    sizing: str = "",
) -> Group:
    """What the SVAG runs will cost, before they start (``show(..., stderr=True)``)."""
    total = sum(passes.values())
    lines = [
        f"SVAG at B' = {target_batch_size} on {device}: {effective_steps} effective steps for "
        f"each l in {', '.join(str(x) for x in ls)}.",
        *([f"Run length: {sizing}."] if sizing else []),
        "Cost: SVAG with l takes 2·l forward-backward passes per effective step (+ evaluation):",
    ]
    for lv in ls:
        lines.append(f"  l = {lv}: {lv * effective_steps} steps, {passes[lv]:,} forward-backward "
                     f"passes of batch {target_batch_size}")  # fmt: skip
    lines.append(f"  total: {total:,} forward-backward passes, i.e. about {total / 2:,.0f} "
                 f"training steps at batch size {target_batch_size}")  # fmt: skip
    return Group(*(Text(x) for x in lines))


def format_svag(r: SvagResult) -> Report:
    """Human output of ``bscrit svag`` (a :class:`~bscrit.runs.svag.results.SvagResult`): the runs,
    the tail means per l, the ratios SGD/SDE with their intervals against [1/C, C], and the
    verdict; with the result's warnings."""
    from bscrit.runs.svag.verdict import RATIO_LABELS

    v = r.verdict
    C = v.config.C
    parts: list[RenderableType] = [
        _line(
            f"SVAG (Stochastic Variance Amplified Gradient, [LMA21] §4) at B' = "
            f"{r.target_batch_size} from B = {r.batch_size} (κ = {r.kappa:.4g}; "
            f"{r.rule_reference}), {r.effective_steps} effective steps"
            + (f" ({r.sizing})" if r.sizing else "")
        )
    ]
    t = Table(title="runs", title_justify="left")
    t.add_column("l", justify="right")
    t.add_column("steps", justify="right")
    t.add_column(f"{r.target_optimizer.name} hyperparameters (SVAG rule, docs/theory.md §6)")
    t.add_column("fwd-bwd passes", justify="right")
    t.add_column("time", justify="right")
    for run in r.runs:
        t.add_row(
            str(run.l),
            str(run.steps),
            optim.describe(run.optimizer),
            f"{r.forward_backward.get(run.l, 0):,}",
            f"{run.elapsed_s:.1f} s",
        )
    parts.append(t)

    ls = [run.l for run in r.runs]
    t = Table(
        title=f"tail window (effective steps {v.tail_start:.4g}–{v.tail_end:.4g}: "
        f"{v.tail_note}): mean ±95% half-width (batch means); SGD/SDE with its 95% interval, "
        f"C = √{v.config.c2:g} = {C:.3g}",
        title_justify="left",
    )
    t.add_column("test function")
    for lv in ls:
        t.add_column(f"l = {lv}", justify="right")
    t.add_column("SDE", justify="right")
    t.add_column("SGD/SDE [95%]", justify="right")
    for ratio in v.ratios:
        m = ratio.metric
        label = RATIO_LABELS.get(m, m) + (" *" if ratio.decides else "")
        row = [label]
        for lv in ls:
            s_ = v.stat(m, lv)
            row.append("—" if s_ is None else f"{fmt(s_.mean)} ±{_half(s_)}")
        sde = next((e for e in v.sde if e.metric == m), None)
        row.append("—" if sde is None else fmt(sde.value) + (" (1/l→0)" if
                   sde.source == "extrapolated" else f" (l={sde.ls[-1]})"))  # fmt: skip
        mark = {"inside": "[green]✓[/]", "outside": "[red]✗[/]"}.get(ratio.status, "[yellow]?[/]")
        if not ratio.decides:
            mark = "(G < N/k: unresolved)" if ratio.status == "unresolved" else ""
        row.append(f"{fmt(ratio.ratio, 3)} [{fmt(ratio.lo, 3)}, {fmt(ratio.hi, 3)}] {mark}")
        t.add_row(*row)
    parts.append(t)
    parts.append(
        _line(
            f"  * decides the verdict: sde_fails when a 95% interval lies wholly outside "
            f"[1/C, C] = [{1 / C:.3g}, {C:.3g}] (✗), ? = it reaches across a boundary "
            f"(rule: {v.config.fail_rule}). ηN/N̄ compares Tr Σ at B' (not SVAG's l·Σ); G decides "
            "only where the k evaluation batches resolve it (G ≥ N/k). SDE: "
            "extrapolated linearly in 1/l only where the runs show the trend, else the largest l."
        )
    )
    colour = {"sde_holds": "green", "sde_fails": "red", "not_converged": "yellow"}.get(v.code, "")
    verdict = Text.assemble((f"verdict ({v.code}):", f"bold {colour}".strip()), f" {v.text}")
    verdict.no_wrap, verdict.overflow = True, "ignore"
    parts.append(verdict)
    parts += [_line(f"  note: {n}") for n in r.notes]
    return Report(*parts, warnings=r.warnings)


def _half(s: TailStat) -> str:
    """95% half-width of a tail mean (t at its degrees of freedom), 1 significant digit."""
    from bscrit.stats.estimators import t_quantile

    if not (math.isfinite(s.se) and math.isfinite(s.df) and s.df > 0):
        return "?"
    return f"{t_quantile(0.975, s.df) * s.se:.1g}"


def format_stopping(m: Measurement) -> str | None:
    """One line on how an adaptive run stopped, and T1 of a per-example run."""
    parts = []
    st = m.extra.get("stopping")
    if st:
        err = st.get("achieved_rel_error")
        parts.append(
            f"stopping: {st['reason']} after {st['batches']} batches ({st['groups']} groups); "
            f"NSR relative 95% half-width {fmt(err) if err is not None else '∞'} "
            f"(target {st['target_rel_error']:g}, budget {st['max_batches']} batches)"
        )
    t1 = m.extra.get("T1")
    if t1:
        ci = t1["ci95"]
        ci_t = (ci[0], ci[1] if ci[1] is not None else float("inf"))
        parts.append(
            f"per-example trace T1 = {fmt(t1['value'])} ± {fmt(t1['se'])} {fmt_ci(ci_t)}; "
            "N at another batch size B' = T1 (n - B')/(B' (n - 1))"
        )
    return "\n".join(parts) or None
