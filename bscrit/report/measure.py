"""Human output of ``bscrit measure``: the summary table of G, N and NSR, the per-checkpoint and
equilibrium tables, the per-tensor breakdown and how an adaptive run stopped (rich renderables;
printed by :func:`bscrit.report.console.show`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.text import Text

from bscrit.artifacts.jsonvalues import none_to_inf
from bscrit.optim import registry as optim
from bscrit.report.format import Fit, fmt, fmt_ci, make_table, plain_line

if TYPE_CHECKING:
    from bscrit.artifacts.measurement import Measurement
    from bscrit.artifacts.records import ParameterRow, ParamSetStats


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
    head = len(parts)  # the optimizer's lines go here, read last (below)
    if m.extra.get("selection"):
        parts.append(plain_line(f"checkpoints: {m.extra['selection']}"))
    title = f"G = ‖∇L‖², N = Tr Σ at B={m.batch_size}, NSR = N/G (jackknife over {m.groups} groups)"
    si = m.scale_invariant
    sets = {
        "all trainable": _set_cells(m.all, 1.0),
        "scale-invariant": _set_cells(si, m.scale_invariant_fraction if si else None),
    }
    wide = make_table(title, ("parameters", *_SET_COLUMNS), ([k, *v] for k, v in sets.items()))
    transposed = ([col, *(v[i] for v in sets.values())] for i, col in enumerate(_SET_COLUMNS))
    narrow = make_table(title, ("parameters", *sets), transposed)
    parts.append(Fit(wide, narrow))
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
    if opt := m.optimizer:
        parts[head:head] = [plain_line(f"{opt.name}: {x}") for x in optim.summary_lines(opt)]
    return Group(*parts)


def _checkpoint_table(m: Measurement) -> Fit:
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
    return Fit(make_table(title, cols, cells), make_table(title, cols2, narrow))


def _equilibrium_parts(m: Measurement) -> list[RenderableType]:
    """What the intervals cover; with several draws, the table over the equilibrium (§8)."""
    from bscrit.stats.equilibrium import (
        narrowing_advice,
        one_draw_advice,
        relaxation_steps,
        wide_interval,
    )

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
    wide = make_table(title, ("parameters", *cols), ([k, *v] for k, v in sets.items()))
    narrow = make_table(title, ("", *sets), ([c, *(v[i] for v in sets.values())]
                                         for i, c in enumerate(cols)))  # fmt: skip
    parts: list[RenderableType] = [Fit(wide, narrow), Text(f"  draws: {e.note}")]
    if any(wide_interval(v.nsr_ci95) for v in e.sets.values()):
        advice = narrowing_advice(e.scope, e.relaxation_steps, e.draws)
        parts.append(Text(f"  to narrow it: {advice}"))
    return parts


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
    wide = make_table(
        title, ("tensor", "shape", "G", "N", "R", "scale-inv.", "|⟨W,g⟩|/‖W‖‖g‖"), cells, 2
    )
    narrow = ((f"{c[0]}\n{c[1]}", *c[2:]) for c in cells)  # the shape under the name
    cols = ("tensor / shape", "G", "N", "R", "s.-inv.", "|cos(W,g)|")
    return Group(Fit(wide, make_table(title, cols, narrow)))


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
        ci_t = (ci[0], none_to_inf(ci[1]))
        parts.append(
            f"per-example trace T1 = {fmt(t1['value'])} ± {fmt(t1['se'])} {fmt_ci(ci_t)}; "
            "N at another batch size B' = T1 (n - B')/(B' (n - 1))"
        )
    return "\n".join(parts) or None
