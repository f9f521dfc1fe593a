"""Human output of ``bscrit schedule``: the points B*(t) and the warm-up stages (rich tables).

Printed by :func:`bscrit.report.console.show`; the number formats are :mod:`bscrit.report.format`.
"""

from __future__ import annotations

from rich.console import NewLine, RenderableType
from rich.table import Table

from bscrit.artifacts.schedule_io import switch_state_line
from bscrit.report.console import Report
from bscrit.report.format import fmt, fmt_batch, fmt_batch_ci, fmt_hp, plain_line
from bscrit.theory.schedule import Schedule

#: What a Megatron-LM user has to add at each switch (its schedule changes the batch size only).
SWITCH_TODO = "rescale Adam's second moment v by 1/κ at each switch yourself (see above)"


def format_schedule(s: Schedule, megatron: str | None = None) -> Report:
    """The points (step, examples seen, B* with its interval, the top of the range, ρ, whether
    heuristic) and the stages (start, batch size, scaled hyperparameters); warnings on stderr."""
    parts: list[RenderableType] = [
        plain_line(
            f"bscrit schedule: B*(t) from {len(s.points)} measurement(s), C² = {s.c2:g} "
            "([LMA21] Thm 5.6; 95% intervals)"
        )
    ]
    t = Table()
    for col in ("step", "examples", "B", "B*", "B* 95% CI", "range top", "ρ", "interval", ""):
        t.add_column(col, justify="left" if col in ("interval", "") else "right")
    for p in s.points:
        t.add_row(
            "—" if p.step is None else str(p.step),
            "—" if p.examples_seen is None else str(p.examples_seen),
            str(p.batch_size),
            fmt_batch(p.b_star),
            fmt_batch_ci(p.b_star_ci95),
            "empty" if p.top < p.batch_size else fmt_batch(p.top),
            fmt(p.equilibrium_residual, 2),
            "equilibrium" if p.interval_scope == "equilibrium" else "batch noise only",
            "heuristic" if p.heuristic else "",
        )
    parts += [t]
    if s.relaxation_steps is not None:
        parts.append(plain_line(f"  relaxation time τ = 1/(2ηλ) = {s.relaxation_steps:.0f} steps"))
    head = f"Batch-size warm-up ({s.rounding}, from B = {s.base_batch_size})"
    parts += [NewLine(), plain_line(head)]
    st = Table()
    for col in ("from step", "from examples", "batch size", "hyperparameters", ""):
        st.add_column(col, justify="left" if col in ("hyperparameters", "") else "right")
    for g in s.stages:
        hp = (
            "—"
            if g.hyperparameters is None
            else ", ".join(f"{k} {fmt_hp(v)}" for k, v in g.hyperparameters.items())
        )
        st.add_row(
            str(g.start_step),
            "—" if g.start_examples is None else str(g.start_examples),
            str(g.batch_size),
            hp,
            "heuristic" if g.heuristic else "",
        )
    parts += [st]
    if s.stages and s.stages[0].scaled is not None:
        parts.append(plain_line(f"  hyperparameters: {s.stages[0].scaled.reference}, from B = "
                           f"{s.base_batch_size}; switch stages by examples seen"))  # fmt: skip
    parts.append(plain_line(f"  optimizer state: {switch_state_line(s.optimizer)}"))
    if megatron is not None:
        parts += [NewLine(), plain_line(f'Megatron-LM: --step-batch-size-schedule "{megatron}"')]
        parts.append(plain_line(f"  Megatron-LM switches the batch size only: {SWITCH_TODO}"))
    return Report(*parts, warnings=s.warnings)
