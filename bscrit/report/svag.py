"""Human output of ``bscrit svag``: the cost before the runs, then the runs, the tail means per
l, the ratios SGD/SDE against [1/C, C] and the verdict (rich renderables; printed by
:func:`bscrit.report.console.show`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from bscrit.optim import registry as optim
from bscrit.report.console import Report
from bscrit.report.format import fmt, plain_line

if TYPE_CHECKING:
    from bscrit.runs.svag.results import SvagResult
    from bscrit.runs.svag.tail import TailStat


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
        plain_line(
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
        plain_line(
            f"  * decides the verdict: sde_fails when a 95% interval lies wholly outside "
            f"[1/C, C] = [{1 / C:.3g}, {C:.3g}] (✗), else inconclusive when one reaches across a "
            f"boundary (?), sde_holds only when all lie inside (✓) (rule: {v.config.fail_rule})."
            " ηN/N̄ compares Tr Σ at B' (not SVAG's l·Σ); G decides "
            "only where the k evaluation batches resolve it (G ≥ N/k). SDE: "
            "extrapolated linearly in 1/l only where the runs show the trend, else the largest l."
        )
    )
    colour = {"sde_holds": "green", "sde_fails": "red", "not_converged": "yellow",
              "inconclusive": "yellow"}.get(v.code, "")  # fmt: skip
    verdict = Text.assemble((f"verdict ({v.code}):", f"bold {colour}".strip()), f" {v.text}")
    verdict.no_wrap, verdict.overflow = True, "ignore"
    parts.append(verdict)
    parts += [plain_line(f"  note: {n}") for n in r.notes]
    return Report(*parts, warnings=r.warnings)


def _half(s: TailStat) -> str:
    """95% half-width of a tail mean (t at its degrees of freedom), 1 significant digit."""
    from bscrit.stats.estimators import t_quantile

    if not (math.isfinite(s.se) and math.isfinite(s.df) and s.df > 0):
        return "?"
    return f"{t_quantile(0.975, s.df) * s.se:.1g}"
