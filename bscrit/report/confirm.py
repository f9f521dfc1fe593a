"""Human output of ``bscrit confirm``: the cost before the run, the table and verdict after it
(rich renderables; printed by :func:`bscrit.report.console.show`)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from bscrit.optim import registry as optim
from bscrit.report.console import Report
from bscrit.report.format import fmt, plain_line

if TYPE_CHECKING:
    from bscrit.runs.confirm.plan import ConfirmPlan
    from bscrit.runs.confirm.results import ConfirmResult


def format_confirm_cost(plan: ConfirmPlan) -> Group:
    """What both branches will cost, before they start (``show(..., stderr=True)``)."""
    k = len(plan.seeds)
    n = plan.dataset_size
    passes = plan.forward_backward()
    total = sum(passes.values())
    ex = plan.training_examples()
    lines = [
        f"confirm B = {plan.batch_size} → B' = {plan.target_batch_size} (κ = {plan.kappa:.4g}, "
        f"{plan.rule_reference}) on {plan.device}: {plan.examples_target:,} examples per branch "
        f"({plan.examples_target / n:.3g} epochs of n = {n:,}; {plan.examples_why}), "
        f"{k} seed{'s' if k != 1 else ''}.",
        f"  base:   {plan.steps_base:,} steps at B = {plan.batch_size} per seed, "
        f"{optim.describe(plan.base_optimizer)}",
        f"  target: {plan.steps_target:,} steps at B' = {plan.target_batch_size} per seed, "
        f"{optim.describe(plan.target_optimizer)}",
        f"Cost: {total:,} forward-backward passes ({passes['base']:,} at B, {passes['target']:,} "
        f"at B', evaluations on {len(plan.grid_base)} grid points included); {ex:,} training "
        f"examples = {ex / n:.3g} epochs of the training set.",
    ]
    return Group(*(Text(x) for x in lines))


def format_confirm(r: ConfirmResult) -> Report:
    """The branches per seed (final losses, d), the interval and the verdict, with the notes."""
    from bscrit.runs.common.result import METRIC_LABELS
    from bscrit.runs.confirm.verdict import (
        ABSOLUTE,
        describe_tolerance,
        difference,
        format_difference,
    )

    v = r.verdict

    def _pct(x: float) -> str:  # d in the verdict's unit: +1.23% or +0.0123
        return format_difference(x, v.unit)

    parts: list[RenderableType] = [
        plain_line(
            f"confirm: branched training from {r.checkpoint} at B = {r.batch_size} and B' = "
            f"{r.target_batch_size} (κ = {r.kappa:.4g}; {r.rule_reference}), {r.examples:,} "
            f"examples each ({r.epochs():.3g} epochs), {len(r.seeds)} seeds"
        ),
        plain_line(f"  base:   {optim.describe(r.base_optimizer)}"),
        plain_line(f"  target: {optim.describe(r.target_optimizer)}"),
    ]
    metric = v.metric
    label = METRIC_LABELS.get(metric, metric)
    other = "train_loss" if metric == "eval_loss" else None
    d_is = "L_B' − L_B (in the loss's units)" if v.unit == ABSOLUTE else "(L_B' − L_B)/L_B"
    t = Table(
        title=f"final {label} (mean of the last {r.tail_points} grid points) per seed; d = {d_is}",
        title_justify="left",
    )
    t.add_column("seed", justify="right")
    t.add_column(f"B = {r.batch_size}", justify="right")
    t.add_column(f"B' = {r.target_batch_size}", justify="right")
    t.add_column("d", justify="right")
    if other:
        t.add_column("d (train loss)", justify="right")
    t.add_column("time", justify="right")
    base, target = r.finals("base"), r.finals("target")
    ob = r.finals("base", other) if other else []
    ot = r.finals("target", other) if other else []
    for i, s in enumerate(r.seeds):
        row = [str(s), fmt(base[i]), fmt(target[i]), _pct(v.per_seed[i])]
        if other:
            row.append(_pct(difference(ob[i], ot[i], v.unit)))
        secs = sum(b.elapsed_s for b in r.branches if b.seed == s)
        tb = r.branch("target", s)
        row.append(f"{secs:.1f} s" + (" (B' diverged)" if tb and tb.diverged_at else ""))
        t.add_row(*row)
    parts.append(t)
    ci = "—" if v.ci95 is None else f"[{_pct(v.ci95[0])}, {_pct(v.ci95[1])}]"
    finite = [x for x in base if math.isfinite(x)]
    l_b = sum(finite) / len(finite) if finite else math.nan
    size = ""
    if math.isfinite(l_b) and v.unit == ABSOLUTE and l_b != 0:
        size = f", i.e. {100 * v.tolerance / abs(l_b):.3g}% of L_B = {fmt(l_b)}"
    elif math.isfinite(l_b) and v.unit != ABSOLUTE:
        size = f", i.e. {fmt(v.tolerance * l_b)} at L_B = {fmt(l_b)}"
    parts.append(plain_line(f"  mean d = {_pct(v.mean)}, 95% t-interval {ci}, tolerance "
                            f"{describe_tolerance(v.tolerance, v.unit)}{size}"))  # fmt: skip
    colour = {"holds": "green", "fails": "red", "inconclusive": "yellow"}.get(v.code, "")
    verdict = Text.assemble((f"verdict ({v.code}):", f"bold {colour}".strip()), f" {v.text}")
    verdict.no_wrap, verdict.overflow = True, "ignore"
    parts.append(verdict)
    parts.append(plain_line(f"  optimizer state: {r.optimizer_state}"))
    parts += [plain_line(f"  note: {n}") for n in r.notes]
    return Report(*parts, warnings=r.warnings)
