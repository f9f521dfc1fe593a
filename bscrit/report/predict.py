"""Human output of ``bscrit predict``, ``check`` and ``scale``: the bounds of each measurement,
the recommended range and the scaled hyperparameters (rich renderables; printed by
:func:`bscrit.report.console.show`, with the warnings of a :class:`~bscrit.report.console.Report`
on stderr)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group, NewLine, RenderableType
from rich.table import Table

from bscrit.report.console import Report
from bscrit.report.format import (
    fmt,
    fmt_batch,
    fmt_batch_ci,
    fmt_batch_range,
    fmt_ci,
    fmt_hp,
    plain_line,
)

if TYPE_CHECKING:
    from bscrit.theory.bounds import MeasurementBounds
    from bscrit.theory.prediction import CheckResult, Prediction
    from bscrit.theory.scaled import ScaledHyperparameters


def format_bounds(b: MeasurementBounds) -> Group:
    """One measurement's bounds ([LMA21] Thms 5.2, 5.5, 5.6; [McC18]; [SDBD21] eq. 22): a head
    line, the table of quantities with 95% intervals and the lines that read the theorems."""
    ns = b.noise
    opt = b.optimizer
    opt_s = f"{opt.name}, lr {fmt_hp(opt.lr)}" if opt is not None else "no optimizer recorded"
    parts: list[RenderableType] = [
        plain_line(f"{b.source}: B = {b.batch_size}, n = {b.dataset_size}, {opt_s}")
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
        t.add_row("B* = C²(B + B·NSR)", fmt_batch(b.b_star), fmt_batch_ci(b.b_star_ci95))
        t.add_row("B* ≈ C²·B·NSR", fmt_batch(b.b_star_approx), fmt_batch_ci(b.b_star_approx_ci95))
    else:
        t.add_row("B* = C²(B + B·NSR)", f"> {fmt_batch(b.b_star_ci95[0])}", "no upper bound")
        t.add_row("B* ≈ C²·B·NSR", f"> {fmt_batch(b.b_star_approx_ci95[0])}", "no upper bound")
    t.add_row("B_simple = T₁/G [McC18]", fmt_batch(b.b_simple), "")
    ir = b.implicit_regularisation
    if ir is not None:
        t.add_row("(η/4)·G  [SDBD21 eq. 22]", fmt(ir.signal_term), "")
        t.add_row("(η/4)·N^B [SDBD21 eq. 22]", fmt(ir.noise_term), "")
    if b.equilibrium_residual is not None:
        t.add_row("equilibrium residual ρ", f"{b.equilibrium_residual:+.3f}", "")
    for o in b.other_readings:  # the readings the recommendation does not use, for comparison
        name = o.name.replace("_", "-")
        t.add_row(f"NSR, {name} (not used)", fmt(o.nsr), fmt_ci(o.nsr_ci95))
        t.add_row(f"B*, {name} (not used)", fmt_batch(o.b_star), fmt_batch_ci(o.b_star_ci95))
    parts.append(t)
    parts += [plain_line(line) for line in theorem_lines(b)]
    if ir is not None:
        parts.append(
            plain_line(
                "  Implicit regularisation: the noise term is NSR × the signal term; the linear "
                "rule keeps the noise term fixed (η/B constant)."
            )
        )
    parts.append(plain_line(f"  Parameters: {b.param_set_reason}."))
    parts.append(plain_line(f"  Intervals: {b.interval_note}."))
    return Group(*parts)


#: How a theorem flag is qualified in words (THEOREM_STATUSES of :mod:`bscrit.theory.bounds`).
_HOW_SURE = {
    "certified": "certified (95% interval over the equilibrium)",
    "provisional": "provisional (the 95% interval covers the measured checkpoint(s) only; the "
    "theorem speaks of the equilibrium)",
}


def theorem_lines(b: MeasurementBounds) -> list[str]:
    """The Thm 5.2 (ii) and Thm 5.5 lines of ``predict``, read from the ends of the NSR interval
    and its scope (:func:`bscrit.theory.bounds.theorem_status`), labelled heuristic where the
    theorems are not proved (any optimizer but plain SGD; no scale-invariant subset)."""
    lo, hi = b.nsr_ci95
    c2, thr = b.c2, b.sde_nsr_threshold
    nsr = f"NSR {fmt(b.nsr)} [95%: {fmt(lo)}, {fmt(hi)}]"
    if b.sde_thm52 in _HOW_SURE:
        t52 = (f"the whole interval < 1/(C² − 1) = {fmt(thr)}: the equilibria of SGD and its SDE "
               f"are not C-close here, {_HOW_SURE[b.sde_thm52]}.")  # fmt: skip
    elif b.sde_thm52 == "undecided":
        t52 = f"the interval reaches across 1/(C² − 1) = {fmt(thr)}: undecided."
    else:
        t52 = f"the whole interval ≥ 1/(C² − 1) = {fmt(thr)}: the theorem says nothing here."
    if b.thm55 in _HOW_SURE:
        t55 = (f"(C² − 1)·NSR < 1 over the whole interval: B = {b.batch_size} is past the critical "
               f"batch of every base batch below {fmt_batch(b.thm55_base_batch_below)} (κ > "
               f"{fmt(b.thm55_kappa_min)}, from the upper end), {_HOW_SURE[b.thm55]}.")  # fmt: skip
    elif b.thm55 == "undecided":
        t55 = f"(C² − 1)·NSR reaches across 1 (C² = {c2:g}) within the interval: undecided."
    else:
        t55 = f"(C² − 1)·NSR ≥ 1 over the whole interval (C² = {c2:g}): certifies nothing here."
    lines = [f"  Thm 5.2 (ii): {nsr}; {t52}", f"  Thm 5.5: {t55}"]
    return lines + ([f"  Both a heuristic reading here: {b.heuristic}."] if b.heuristic else [])


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
        t.add_row(key, f"{fmt_hp(s.old.get(key))} -> {fmt_hp(new)}", s.notes.get(key, ""))
    for g in s.groups:  # param groups whose values differ (weight decay, LR): each scaled alike
        keys = [k for k in g.new if k in ("lr", "weight_decay") or g.old[k] != s.old.get(k)]
        hp = ", ".join(f"{k} {fmt_hp(g.old[k])} -> {fmt_hp(g.new[k])}" for k in keys)
        t.add_row(f"group {g.index}", hp, f"param group of {g.tensors} tensors, same rule")
    for label, (old, new_steps) in (("steps", s.steps), ("warmup_steps", s.warmup_steps)):
        if old is not None:
            t.add_row(label, f"{old} -> {new_steps}", "÷ κ (training length fixed in epochs)")
    if s.epochs is not None:
        t.add_row("epochs", f"{fmt_hp(s.epochs)} -> {fmt_hp(s.epochs)}", "unchanged")
    return Group(plain_line(head), t)


def format_prediction(p: Prediction) -> Report:
    """Human output of ``bscrit predict``: bounds per measurement, range, recommendation and (when
    the base run has an optimizer) the scaled hyperparameters; with every warning."""
    parts: list[RenderableType] = [
        plain_line(
            f"bscrit predict: C² = {p.c2:g} ([LMA21] Thms 5.2, 5.5, 5.6; 95% intervals from the "
            "jackknife)"
        )
    ]
    for b in p.measurements:
        parts += [NewLine(), format_bounds(b)]
    r = p.recommended
    parts += [NewLine(), plain_line("Recommendation")]
    t = Table()
    t.add_column("")
    t.add_column("batch size", justify="right")
    if len(p.measurements) > 1:
        t.add_row("B* across baselines (min, max)", fmt_batch_range(p.range[0], p.range[1]))
    if r.empty:
        t.add_row("recommended range", "empty")
    else:
        t.add_row("recommended range", fmt_batch_range(r.min, r.max))
        t.add_row("  largest power of two in it", fmt_batch(r.max_pow2))
        t.add_row("  largest multiple of 8 in it", fmt_batch(r.max_mult8))
        limit = {"b_star": "B* (lower 95% bound)", "scaling_rule": "the scaling rule's reach",
                 "dataset_size": "the dataset size n"}  # fmt: skip
        t.add_row("  limited by", limit.get(r.limited_by or "", r.limited_by or "nothing detected"))
    parts += [t, plain_line(f"  {r.note}.")]
    if len(p.rule_reaches) > 1:  # the adaptive optimizers: every variant of the rule
        for name, lim in p.rule_reaches.items():
            used = " (used)" if name == p.adam_rule else ""
            reach = "no limit" if lim.batch_max is None else f"B' <= {lim.batch_max}"
            parts.append(plain_line(f"  --adam-rule {name}{used}: reaches {reach}; {lim.reason}"))
    if p.nsr_at_target is not None:
        parts.append(plain_line(
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
    warnings = [f"{b.source}: {w}" for b in r.prediction.measurements for w in b.warnings]
    return Report(plain_line(f"{check_tag(r)}: {r.reason}"), warnings=warnings)


def check_tag(r: CheckResult) -> str:
    """The first word of ``check``'s line: OK, PROVISIONAL (exit 6), OK (provisional) (allowed),
    UNDECIDED (exit 5), WARN (``--gate point``) or FAIL."""
    if r.verdict == "fail":
        return "FAIL"
    if r.verdict == "warn":
        if int(r.exit_code) == 5:
            return "UNDECIDED"
        return "WARN (provisional)" if r.provisional else "WARN"
    if r.provisional:
        return "PROVISIONAL" if int(r.exit_code) == 6 else "OK (provisional)"
    return "OK"
