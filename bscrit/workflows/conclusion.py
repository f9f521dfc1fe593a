"""What the user can do, in plain words, from predict, svag and confirm together (pure).

``bscrit demo`` ends with these lines. The three tools answer different questions, so they can
disagree without any of them being wrong, and the lines say which one decides what:

- ``predict`` ([LMA21] Thm 5.6, docs/theory.md §4): from the measured noise, the critical batch
  B* beyond which (C, κ)-linear scaling invariance (Def. 5.4: the equilibrium ratios of R, G, N)
  *fails*; its range ends at the lower 95% bound of B*. Thm 5.6 certifies failure beyond B* and
  nothing below it: below the bound the measurement gives no evidence that the rule fails, which
  is not a guarantee that it holds. It is not a statement about the SDE approximation (that is
  Thm 5.2), and [LMA21] links it to test error only empirically (its Fig. 3). For any optimizer
  but plain SGD (Adam's square-root rule, momentum SGD) it is a heuristic reading: [LMA21] §5
  proves it for plain SGD.
- ``svag`` ([LMA21] §4; docs/svag.md): whether plain SGD at B' and its SDE agree on the decision
  ratios SGD/SDE (by default the losses). ``sde_fails`` says the *theory's model* no longer
  describes training at B'; ``inconclusive`` says nothing either way.
- ``confirm`` (docs/confirm.md, the branched-training protocol of Merrill et al. 2025): whether
  training at B' with the scaled hyperparameters ends with a loss less than δ above the base
  run's for the same examples (one-sided: the 95% interval of d lies below δ): bscrit's
  *definition* of "the scaling rule holds". It decides what the user can do.

So: the recommended batch size is the largest B' that ``confirm`` says ``holds`` below every B'
where it ``fails`` (a hold above a failure is named, never recommended); without one, the top of
predict's range, labelled as not confirmed. A disagreement is named and explained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bscrit.artifacts.jsonvalues import finite_or_none
from bscrit.runs.confirm.verdict import RELATIVE, describe_tolerance


@dataclass(frozen=True)
class Confirmation:
    """One ``bscrit confirm`` outcome at B' (from
    :class:`bscrit.runs.confirm.results.ConfirmResult`)."""

    target_batch_size: int
    code: str  # holds | fails | inconclusive
    mean: float  # loss difference d: (L_B' - L_B) / L_B (relative) or L_B' - L_B (absolute)
    ci95: tuple[float, float] | None
    tolerance: float
    seeds: int
    examples: int
    metric: str  # "eval_loss" | "train_loss"
    unit: str = RELATIVE  # of d and δ: "relative" | "absolute" (the loss's units)

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_batch_size": self.target_batch_size,
            "code": self.code,
            f"{self.unit}_difference": finite_or_none(self.mean),
            "ci95": None if self.ci95 is None else [finite_or_none(x) for x in self.ci95],
            "tolerance": self.tolerance,
            "tolerance_unit": self.unit,
            "seeds": self.seeds,
            "examples": self.examples,
            "metric": self.metric,
        }


@dataclass(frozen=True)
class Conclusion:
    """The batch size bscrit recommends after every check, and the lines that justify it."""

    batch_size: int | None  # what the user can use; None: nothing beyond the base batch
    confirmed: bool  # a branched run at ``batch_size`` said "holds"
    lines: tuple[str, ...]
    disagreements: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "confirmed": self.confirmed,
            "lines": list(self.lines),
            "disagreements": list(self.disagreements),
        }


def _pct(x: float, unit: str = RELATIVE) -> str:
    """d as the lines print it: ``+1.2%`` (relative) or ``+0.0123`` (absolute, the loss's
    units)."""
    if not math.isfinite(x):
        return "n/a"
    return f"{100 * x:+.1f}%" if unit == RELATIVE else f"{x:+.3g}"


def _interval(c: Confirmation) -> str:
    if c.ci95 is None:
        return f"d = {_pct(c.mean, c.unit)}"
    lo, hi = (_pct(x, c.unit) for x in c.ci95)
    return f"d = {_pct(c.mean, c.unit)} [95%: {lo}, {hi}]"


def _delta(c: Confirmation, short: bool = False) -> str:
    """δ with its unit: ``δ = 5% of the base run's loss (relative)``, ``δ = 0.01 (absolute, in
    the loss's units, e.g. nats)``; ``short``, before "above the base run's": ``δ = 5%``."""
    if short and c.unit == RELATIVE:
        return f"δ = {100 * c.tolerance:g}%"
    return describe_tolerance(c.tolerance, c.unit)


def _loss(metric: str) -> str:
    return "held-out loss" if metric == "eval_loss" else "training loss"


def _heuristic(rule: str, momentum: float) -> str:
    """ " (a heuristic reading ...)" when [LMA21]'s bounds are not proved for the run's optimizer:
    anything but plain SGD (docs/theory.md §4)."""
    if rule != "linear":
        return (f" (a heuristic reading for the {rule} rule: [LMA21] proves its bounds for "
                "plain SGD)")  # fmt: skip
    if momentum > 0:
        return " (a heuristic reading for momentum SGD: [LMA21] §5 proves it for plain SGD)"
    return ""


def _below_failure(top: int, failed: Sequence[Confirmation]) -> int:
    """The top of the range, capped below the smallest batch size where a branched run failed:
    the largest power of two under it (a failure at B' speaks against B' itself, not B'/2)."""
    if not failed:
        return top
    cap = failed[0].target_batch_size - 1
    return min(top, 1 << (cap.bit_length() - 1)) if cap >= 1 else 0


def conclude(
    *,
    base_batch_size: int,
    recommended_max: float,
    b_star_lower: float,
    rule: str,
    svag: tuple[int, str] | None,
    confirmations: Sequence[Confirmation],
    momentum: float = 0.0,
) -> Conclusion:
    """Reconcile the three answers into one recommendation.

    Args:
        base_batch_size: B of the measured run.
        recommended_max: the top of predict's recommended range (``inf`` when unlimited).
        b_star_lower: the lower 95% bound of B* behind it.
        rule: the scaling rule of the optimizer ("linear" or "square-root").
        svag: ``(B', verdict code)`` of the SVAG run, if one ran.
        confirmations: the confirm runs, any order.
        momentum: the run's SGD momentum (> 0: predict's reading is labelled heuristic).

    Returns:
        The recommended batch size (largest B' that held below every failure; else the top of
        predict's range, unconfirmed) and the plain-words lines, with every disagreement
        between the tools named.
    """
    runs = sorted(confirmations, key=lambda c: c.target_batch_size)
    failed = [c for c in runs if c.code == "fails"]
    first_fail = failed[0].target_batch_size if failed else math.inf
    held = [c for c in runs if c.code == "holds" and c.target_batch_size < first_fail]
    top = math.floor(recommended_max) if math.isfinite(recommended_max) else None
    label = _heuristic(rule, momentum)
    size, headline = _recommendation(base_batch_size, top, b_star_lower, rule, held, failed,
                                     label)  # fmt: skip
    lines = [headline]
    notes: list[str] = []
    for c in failed:
        lines.append(
            f"At B' = {c.target_batch_size} the scaled run was worse ({_interval(c)}, above "
            f"{_delta(c)}): the {rule} rule fails there."
        )
        if top is not None and c.target_batch_size <= top:
            notes.append(
                f"predict recommended up to {top}, but the branched run fails at "
                f"{c.target_batch_size}: the prediction was optimistic for this run, and the "
                "measured failure wins."
            )
    for c in runs:
        if c.code == "inconclusive":
            why = (f"the interval contains {_delta(c)}" if c.ci95 is not None
                   else "one seed, no interval")  # fmt: skip
            lines.append(
                f"At B' = {c.target_batch_size} the branched run could not tell "
                f"({_interval(c)}: {why}): more seeds or examples would decide."
            )
        if c.code == "holds" and c.target_batch_size > first_fail:
            notes.append(
                f"At B' = {c.target_batch_size} the branched run held although it failed at the "
                f"smaller {failed[0].target_batch_size}: outcomes that do not get worse with the "
                f"batch size point to noise rather than a threshold, so bscrit does not "
                f"recommend {c.target_batch_size}; more seeds or examples at both would tell."
            )
    if held and top is not None and held[-1].target_batch_size > top:
        notes.append(
            f"The run holds at {held[-1].target_batch_size}, above predict's range (up to "
            f"{top}): no contradiction. The range ends at the lower 95% bound of B*; [LMA21] "
            "Thm 5.6 says only that (C, κ)-linear scaling invariance (the equilibrium ratios of "
            "R, G, N) fails beyond B*, nothing below B*, and links it to the loss only "
            "empirically."
        )
    svag_note = _svag_note(svag, runs)
    if svag_note is not None:
        notes.append(svag_note)
    sure = (
        "How sure: the batch size above was checked directly by training."
        if held
        else "How sure: only the noise measurement supports this; no branched run held."
    )
    return Conclusion(size, bool(held), tuple(lines + notes + [sure]), tuple(notes))


def _recommendation(
    base_batch_size: int,
    top: int | None,
    b_star_lower: float,
    rule: str,
    held: Sequence[Confirmation],
    failed: Sequence[Confirmation],
    label: str = "",
) -> tuple[int | None, str]:
    """The batch size to use and the line that says why: the largest B' a branched run held at
    (below every failure); else predict's top (below the first failure), unconfirmed; else none
    above the base."""
    if held:
        best = held[-1]
        size = best.target_batch_size
        return size, (
            f"You can train at B' = {size} (κ = {size / base_batch_size:g}× the base "
            f"{base_batch_size}) with the {rule}-scaled hyperparameters: a branched run from the "
            f"checkpoint ended with a {_loss(best.metric)} less than {_delta(best, short=True)} "
            f"above the base run's for the same examples ({_interval(best)}, upper end below δ; "
            f"{best.seeds} seeds, {best.examples} examples)."
        )
    if top is not None and (below := _below_failure(top, failed)) > base_batch_size:
        capped = f", below the failure at {failed[0].target_batch_size}" if below < top else ""
        return below, (
            f"predict's range ends at B' = {top} (the lower 95% bound of B*, "
            f"{b_star_lower:.0f}){label}: below it the measurement gives no evidence that the "
            f"{rule} rule fails, which is not a guarantee that it holds; stay at or below "
            f"{below}{capped}. No branched run confirmed it: run `bscrit confirm` at the size "
            "you plan to use."
        )
    return None, (
        f"bscrit found no batch size above the base {base_batch_size} that it can "
        "recommend: keep the base batch size, or confirm a larger one directly."
    )


def _svag_note(svag: tuple[int, str] | None, runs: Sequence[Confirmation]) -> str | None:
    """Where SVAG's verdict and the branched run at the same B' disagree (or SVAG did not
    settle): which one decides, and why."""
    if svag is None:
        return None
    s_target, s_code = svag
    at = next((c for c in runs if c.target_batch_size == s_target), None)
    if s_code == "sde_fails" and at is not None and at.code == "holds":
        return (
            f"SVAG says SGD at {s_target} has left its SDE (a decision ratio SGD/SDE lies "
            "outside [1/C, C]), while the branched run holds there: the SDE is the theory's "
            "model, and a model that stops fitting does not by itself make training worse. "
            "The branched run answers the question you asked; the SVAG verdict says the SDE "
            "no longer describes training at this batch size."
        )
    if s_code == "sde_holds" and at is not None and at.code == "fails":
        return (
            f"SVAG says SGD at {s_target} still tracks its SDE, yet the branched run is "
            "worse there: SVAG's short runs missed a difference that a longer training "
            "run shows. The branched run decides."
        )
    if s_code == "not_converged":
        return (
            f"SVAG at {s_target} did not settle (its runs with different l disagree): it "
            "gives no evidence either way."
        )
    if s_code == "inconclusive":
        return (
            f"SVAG at {s_target} was inconclusive (a ratio SGD/SDE whose 95% interval reaches "
            "across a boundary of [1/C, C]): it gives no evidence either way."
        )
    return None


def confirmation_of(result: Any) -> Confirmation:
    """The :class:`Confirmation` of a :class:`bscrit.runs.confirm.results.ConfirmResult`."""
    v = result.verdict
    return Confirmation(
        target_batch_size=int(result.target_batch_size),
        code=str(v.code),
        mean=float(v.mean),
        ci95=v.ci95,
        tolerance=float(v.tolerance),
        seeds=len(result.seeds),
        examples=int(result.examples),
        metric=str(v.metric),
        unit=str(getattr(v, "unit", RELATIVE)),
    )
