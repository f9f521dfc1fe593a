"""What the user can do, in plain words, from predict, svag and confirm together (pure).

``bscrit demo`` ends with these lines. The three tools answer different questions, so they can
disagree without any of them being wrong, and the lines say which one decides what:

- ``predict`` ([LMA21] Thm 5.6, docs/theory.md §4): from the measured noise, the batch sizes up to
  which the SDE approximation is *certified* (the lower 95% bound of B*). It is a bound, not a
  boundary: beyond it the theory stops vouching, training does not necessarily get worse.
- ``svag`` ([LMA21] §4, Def. 5.1; docs/svag.md): whether plain SGD at B' is C-close to its SDE at
  equilibrium. ``sde_fails`` says the *theory's model* no longer describes training at B'.
- ``confirm`` (docs/confirm.md, the branched-training protocol of Merrill et al. 2025): whether
  training at B' with the scaled hyperparameters reaches the same loss for the same examples:
  the *definition* of "the scaling rule holds". It decides what the user can do.

So: the recommended batch size is the largest B' that ``confirm`` says ``holds``; without one,
the top of predict's range, labelled as not confirmed. A disagreement is named and explained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bscrit.artifacts.jsonvalues import finite_or_none


@dataclass(frozen=True)
class Confirmation:
    """One ``bscrit confirm`` outcome at B' (from
    :class:`bscrit.runs.confirm.results.ConfirmResult`)."""

    target_batch_size: int
    code: str  # holds | fails | inconclusive
    mean: float  # relative loss difference d = (L_B' - L_B) / L_B
    ci95: tuple[float, float] | None
    tolerance: float
    seeds: int
    examples: int
    metric: str  # "eval_loss" | "train_loss"

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_batch_size": self.target_batch_size,
            "code": self.code,
            "relative_difference": finite_or_none(self.mean),
            "ci95": None if self.ci95 is None else [finite_or_none(x) for x in self.ci95],
            "tolerance": self.tolerance,
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


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%" if math.isfinite(x) else "n/a"


def _interval(c: Confirmation) -> str:
    if c.ci95 is None:
        return f"d = {_pct(c.mean)}"
    return f"d = {_pct(c.mean)} [95%: {_pct(c.ci95[0])}, {_pct(c.ci95[1])}]"


def _loss(metric: str) -> str:
    return "held-out loss" if metric == "eval_loss" else "training loss"


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
) -> Conclusion:
    """Reconcile the three answers into one recommendation.

    Args:
        base_batch_size: B of the measured run.
        recommended_max: the top of predict's recommended range (``inf`` when unlimited).
        b_star_lower: the lower 95% bound of B* behind it.
        rule: the scaling rule of the optimizer ("linear" or "square-root").
        svag: ``(B', verdict code)`` of the SVAG run, if one ran.
        confirmations: the confirm runs, any order.

    Returns:
        The recommended batch size (largest B' that held; else the top of predict's range,
        unconfirmed) and the plain-words lines, with every disagreement between the tools named.
    """
    runs = sorted(confirmations, key=lambda c: c.target_batch_size)
    held = [c for c in runs if c.code == "holds"]
    failed = [c for c in runs if c.code == "fails"]
    top = math.floor(recommended_max) if math.isfinite(recommended_max) else None
    size, headline = _recommendation(base_batch_size, top, b_star_lower, rule, held, failed)
    lines = [headline]
    notes: list[str] = []
    for c in failed:
        lines.append(
            f"At B' = {c.target_batch_size} the scaled run was worse ({_interval(c)}): the "
            f"{rule} rule fails there."
        )
        if top is not None and c.target_batch_size <= top:
            notes.append(
                f"predict recommended up to {top}, but the branched run fails at "
                f"{c.target_batch_size}: the prediction was optimistic for this run, and the "
                "measured failure wins."
            )
    for c in runs:
        if c.code == "inconclusive":
            lines.append(
                f"At B' = {c.target_batch_size} the branched run could not tell "
                f"({_interval(c)} straddles ±{100 * c.tolerance:g}%): more seeds or examples "
                "would decide."
            )
    if held and top is not None and held[-1].target_batch_size > top:
        notes.append(
            f"The run holds at {held[-1].target_batch_size}, above predict's range (up to "
            f"{top}): the bound is conservative here (it certifies the SDE approximation, a "
            "sufficient condition, not where training gets worse)."
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
) -> tuple[int | None, str]:
    """The batch size to use and the line that says why: the largest B' a branched run held at;
    else predict's top (below the first failure), unconfirmed; else none above the base."""
    if held:
        best = held[-1]
        size = best.target_batch_size
        return size, (
            f"You can train at B' = {size} (κ = {size / base_batch_size:g}× the base "
            f"{base_batch_size}) with the {rule}-scaled hyperparameters: a branched run from the "
            f"checkpoint reached the same {_loss(best.metric)} as the base run for the same "
            f"examples ({_interval(best)}, within ±{100 * best.tolerance:g}%, {best.seeds} "
            f"seeds, {best.examples} examples)."
        )
    if top is not None and (below := _below_failure(top, failed)) > base_batch_size:
        capped = f", below the failure at {failed[0].target_batch_size}" if below < top else ""
        return below, (
            f"bscrit predicts the {rule} rule holds up to B' = {top} (the lower 95% bound of "
            f"B*, {b_star_lower:.0f}); use at most {below}{capped}. No branched run confirmed "
            "it: treat it as an estimate, run `bscrit confirm` at the size you plan to use."
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
            f"SVAG says SGD at {s_target} is no longer C-close to its SDE, while the "
            "branched run holds there: the SDE is the theory's model, and a model that "
            "stops fitting does not by itself make training worse. The branched run "
            "answers the question you asked; the SVAG verdict says the theory no longer "
            "vouches for larger batches."
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
    )
