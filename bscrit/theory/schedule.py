"""``bscrit schedule``: B*(t) over training and a batch-size warm-up that follows it (pure).

Merrill et al. 2025 ("Critical Batch Size Revisited") find the critical batch size near 0 at
initialisation, rising fast, then plateauing, and a batch-size warm-up that follows it trains
OLMo 1B to slightly better loss in fewer steps. Here each *point* is one measurement (one
checkpoint, or several pooled) of a run at batch size B, read exactly as ``bscrit predict`` reads
it (:func:`bscrit.theory.prediction.predict`): B* = C²(B + B·N^B/G) [LMA21 Thm 5.6] with its 95%
interval, and the recommended range [B, top], top = min(lower 95% bound of B*, the scaling rule's
reach, n).

The warm-up (:func:`build_stages`) is a list of stages of non-decreasing batch sizes, each a power
of two (or a multiple of K), starting at the point where it was measured. Stage i's batch size is
the largest such value within *every* later point's range: the running minimum from the end of
the per-point choices, so the schedule never rises and never leaves a range measured at or after
its start. Before the first point the run keeps its base batch size B. Each stage carries the
base run's optimizer scaled from B by its rule (:func:`bscrit.theory.scaled.scale_hyperparameters`,
the function behind ``bscrit scale``).

Thm 5.6 assumes the SGD equilibrium of [LMA21] eq. (11). Each point carries its equilibrium
residual ρ; points with |ρ| > 0.5, before one relaxation time τ = 1/(2ηλ) steps, or without a
residual are labelled *heuristic* (most early points are: the theorem does not cover them). One
checkpoint is one draw of the weights: its interval covers the batch noise at that point only
(``interval_scope`` "checkpoint"), not the spread of the equilibrium (docs/theory.md §8).

Traps: stage starts are in the measured run's steps *and* examples seen (``start_examples``):
a run that follows the schedule takes fewer steps per example, so it must switch by examples
seen (or tokens), not by its own step count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bscrit import boundary
from bscrit.artifacts.jsonvalues import finite_or_none
from bscrit.artifacts.measurement import Measurement
from bscrit.errors import BscritError, UsageError
from bscrit.optim import lr_schedule
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.stats.equilibrium import relaxation_steps
from bscrit.theory.bounds import EQUILIBRIUM_RESIDUAL_MAX
from bscrit.theory.formulas import (
    DEFAULT_C2,
    check_c2,
    largest_multiple,
    largest_power_of_two,
    nsr_at_batch,
)
from bscrit.theory.prediction import predict
from bscrit.theory.scaled import ScaledHyperparameters, scale_hyperparameters, warnings_once

KIND_SCHEDULE = "bscrit.schedule"
SCHEMA = 1
#: What a point's interval covers, in words (``points[i].interval``).
SCOPE_WORDS = {
    "checkpoint": "batch noise only (one checkpoint is one draw of the weights)",
    "checkpoints": "batch noise of these checkpoints only",
    "equilibrium": "over the equilibrium (several independent draws)",
}


@dataclass(frozen=True)
class SchedulePoint:
    """B* at one point of training, read from one measurement as ``bscrit predict`` reads it."""

    source: str
    step: int | None
    examples_seen: int | None
    tokens_seen: int | None
    batch_size: int  # B the run was measured at
    dataset_size: int
    nsr: float
    nsr_ci95: tuple[float, float]
    b_star: float  # inf when Ĝ ≤ 0
    b_star_ci95: tuple[float, float]
    top: float  # top of the recommended range (inf: no limit detected; < B: empty)
    limited_by: str | None
    interval_scope: str  # "checkpoint" | "checkpoints" | "equilibrium"
    equilibrium_residual: float | None
    heuristic: bool
    heuristic_reasons: tuple[str, ...]
    optimizer: OptimizerInfo | None = None
    lr_decaying: bool = False  # measured where the scheduler had decayed the LR (left out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "step": self.step,
            "examples_seen": self.examples_seen,
            "tokens_seen": self.tokens_seen,
            "batch_size": self.batch_size,
            "nsr": finite_or_none(self.nsr),
            "nsr_ci95": [finite_or_none(x) for x in self.nsr_ci95],
            "b_star": finite_or_none(self.b_star),
            "b_star_ci95": [finite_or_none(x) for x in self.b_star_ci95],
            "recommended_max": finite_or_none(self.top),
            "limited_by": self.limited_by,
            "interval_scope": self.interval_scope,
            "interval": SCOPE_WORDS.get(self.interval_scope, self.interval_scope),
            "equilibrium_residual": finite_or_none(self.equilibrium_residual),
            "heuristic": self.heuristic,
            "heuristic_reasons": list(self.heuristic_reasons),
        } | ({"lr_decaying": True} if self.lr_decaying else {})


@dataclass(frozen=True)
class Stage:
    """One stage of the warm-up: from ``start_step`` of the measured run on, use ``batch_size``."""

    start_step: int
    start_examples: int | None
    start_tokens: int | None
    batch_size: int
    point: int | None  # index of the point it starts at (None: the base stage before any point)
    hyperparameters: dict[str, float] | None  # the base optimizer scaled to batch_size
    scaled: ScaledHyperparameters | None = None
    heuristic: bool = False  # starts at a heuristic point

    def to_dict(self) -> dict[str, Any]:
        s = self.scaled
        return {
            "start_step": self.start_step,
            "start_examples": self.start_examples,
            "start_tokens": self.start_tokens,
            "batch_size": self.batch_size,
            "hyperparameters": None if self.hyperparameters is None else dict(self.hyperparameters),
            "kappa": None if s is None else s.kappa,
            "rule": None if s is None else s.reference,
            "point": self.point,
            "heuristic": self.heuristic,
        }


@dataclass(frozen=True)
class Schedule:
    """The answer of ``bscrit schedule``: the points B*(t) and the warm-up stages."""

    c2: float
    base_batch_size: int
    rounding: str  # "powers of two" | "multiples of K"
    points: tuple[SchedulePoint, ...]
    stages: tuple[Stage, ...]
    optimizer: OptimizerInfo | None
    relaxation_steps: float | None
    tokens_per_example: float | None = None
    warnings: tuple[str, ...] = field(default=())
    cap: str = "later"  # one of CAPS

    def to_dict(self) -> dict[str, Any]:
        """The ``schedule --json`` object: ``stages`` and ``points`` keys are a fixed contract."""
        return {
            "schema": SCHEMA,
            "kind": KIND_SCHEDULE,
            "c2": self.c2,
            "base_batch_size": self.base_batch_size,
            "rounding": self.rounding,
            "cap": self.cap,
            "optimizer": self.optimizer.name if self.optimizer is not None else None,
            "relaxation_steps": finite_or_none(self.relaxation_steps),
            "tokens_per_example": self.tokens_per_example,
            "stages": [s.to_dict() for s in self.stages],
            "points": [p.to_dict() for p in self.points],
            "warnings": list(self.warnings),
        }

    def stage_at(self, examples_seen: float) -> Stage:
        """The stage in force once ``examples_seen`` training examples have been consumed."""
        return stage_at(self.stages, examples_seen)


def stage_at(stages: Sequence[Stage], examples_seen: float) -> Stage:
    """The last stage whose ``start_examples`` is ≤ ``examples_seen`` (the first stage before)."""
    current = stages[0]
    for s in stages[1:]:
        if s.start_examples is not None and s.start_examples <= examples_seen:
            current = s
    return current


# ----------------------------------------------------------------------------------------------
# Points
# ----------------------------------------------------------------------------------------------


def _mean_int(values: Sequence[int | None]) -> int | None:
    """The rounded mean of the values, None when any is unknown (a pooled window's centre)."""
    if not values or any(v is None for v in values):
        return None
    return round(sum(values) / len(values))  # type: ignore[arg-type]


def heuristic_reasons(step: int | None, rho: float | None, tau: float | None) -> tuple[str, ...]:
    """Why a point is outside Thm 5.6's assumption of equilibrium (empty: none found)."""
    out = []
    if rho is None or not math.isfinite(rho):
        out.append("no equilibrium residual (defined for SGD with weight decay, [LMA21] eq. 11)")
    elif abs(rho) > EQUILIBRIUM_RESIDUAL_MAX:
        out.append(f"equilibrium residual |ρ| = {abs(rho):.2f} > {EQUILIBRIUM_RESIDUAL_MAX:g}")
    if tau is not None and step is not None and step < tau:
        out.append(f"step {step} < one relaxation time τ = 1/(2ηλ) = {tau:.0f}")
    return tuple(out)


def point_from_measurement(source: str, m: Measurement, c2: float = DEFAULT_C2) -> SchedulePoint:
    """One point: :func:`bscrit.theory.prediction.predict` on this one measurement (the same
    numbers as ``bscrit predict FILE``), placed at its checkpoints' mean step and examples seen.

    Raises:
        ArtifactError: the measurement cannot be bounded (no noise, a damaged jackknife).
        UsageError: a ``--sample-steps`` measurement (its steps count from the checkpoint it
            continued, not along the run).
    """
    if m.extra.get("sampling"):
        raise UsageError(
            f"{source}: measured with --sample-steps, whose steps count from the checkpoint it "
            "continued, not along the run: give measurements of checkpoints saved along the run "
            "(several pooled with -c A -c B give an interval over the equilibrium)"
        )
    p = predict([(source, m)], c2)
    b = p.base
    cks = m.checkpoints
    step = _mean_int([c.step for c in cks])
    examples = _mean_int([c.examples_seen for c in cks])
    tokens = _mean_int([c.tokens_seen for c in cks])
    if examples is None and step is not None:  # an older artifact: the run's B from step 0
        examples = step * m.batch_size
    if step is None and examples is not None:
        step = examples // m.batch_size
    tau = relaxation_steps(m.optimizer)[0]
    reasons = heuristic_reasons(step, b.equilibrium_residual, tau)
    opt = m.optimizer
    decaying = opt is not None and lr_schedule.decaying(opt.lr, opt.lr_current)
    if decaying and opt is not None and opt.lr_current is not None:
        reasons += (f"measured at LR {opt.lr_current:.3g}, {opt.lr_current / opt.lr:.0%} of the "
                    f"base LR {opt.lr:.3g}: the scheduler is decaying it",)  # fmt: skip
    return SchedulePoint(
        source=source,
        step=step,
        examples_seen=examples,
        tokens_seen=tokens,
        batch_size=m.batch_size,
        dataset_size=m.dataset_size,
        nsr=b.nsr,
        nsr_ci95=b.nsr_ci95,
        b_star=b.b_star,
        b_star_ci95=b.b_star_ci95,
        top=p.recommended.max,
        limited_by=p.recommended.limited_by,
        interval_scope=b.interval_scope,
        equilibrium_residual=b.equilibrium_residual,
        heuristic=bool(reasons),
        heuristic_reasons=reasons,
        optimizer=m.optimizer,
        lr_decaying=decaying,
    )


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------


def admissible(lo: int, hi: float, multiple_of: int | None) -> int | None:
    """The largest power of two (or multiple of ``multiple_of``) in [lo, hi]; None when none."""
    if math.isinf(hi):
        return None
    if multiple_of is None:
        return largest_power_of_two(lo, hi)
    return largest_multiple(lo, hi, multiple_of)


#: ``cap``: which ranges a stage must stay within ("later": every point from its start on;
#: "start": the point where it starts).
CAPS = ("later", "start")


def own_choices(base: int, tops: Sequence[float], multiple_of: int | None = None) -> list[int]:
    """Each point's own choice c_i: the largest admissible size in [base, top_i] (``base`` when
    there is none, or the range is empty); an unbounded top (no limit detected) keeps the
    previous choice."""
    own: list[int] = []
    prev = base
    for top in tops:
        if math.isinf(top) and top > 0:
            c = prev
        else:
            c = admissible(base, top, multiple_of) or base
        own.append(c)
        prev = c
    return own


def choose_batch_sizes(
    base: int, tops: Sequence[float], multiple_of: int | None = None, cap: str = "later"
) -> list[int]:
    """Per point (in training order): the batch size of the stage in force from there.

    ``cap="later"`` (default): the running minimum from the end of the own choices
    (:func:`own_choices`), b_i = min_{j ≥ i} c_j: non-decreasing, and within the range of every
    point at or after i (one low point caps every stage before it). ``cap="start"``: the
    running maximum, b_i = max_{j ≤ i} c_j: non-decreasing, a stage within the range of the
    point where it starts only (a later point with a lower range does not lower it).
    """
    if cap not in CAPS:
        raise UsageError(f"{{cap}}: expected one of {', '.join(CAPS)}, got {cap!r}", cap="cap")
    out = own_choices(base, tops, multiple_of)
    if cap == "start":
        for i in range(1, len(out)):
            out[i] = max(out[i], out[i - 1])
        return out
    for i in range(len(out) - 2, -1, -1):
        out[i] = min(out[i], out[i + 1])
    return out


def capping_warnings(
    points: Sequence[SchedulePoint], own: Sequence[int], sizes: Sequence[int]
) -> list[str]:
    """Name each later point whose range lowered the stages before it (``cap="later"``)."""
    first: dict[int, int] = {}  # capping point → the first point it lowered
    for i in range(len(sizes)):
        if sizes[i] < own[i]:
            j = next(k for k in range(i, len(own)) if own[k] == sizes[i])
            first.setdefault(j, i)
    return [
        f"{points[j].source} (step {points[j].step}, top of the range {points[j].top:.0f}) caps "
        f"the stages from step {points[i].step} on at {own[j]}: one checkpoint is one draw of "
        "the weights, so pool checkpoints around it (`bscrit measure -c A -c B ...`) for an "
        "interval over the equilibrium, or `--cap start`"
        for j, i in first.items()
    ]


def build_stages(
    points: Sequence[SchedulePoint],
    base: int,
    optimizer: OptimizerInfo | None,
    multiple_of: int | None = None,
    cap: str = "later",
) -> tuple[list[Stage], list[str]]:
    """The warm-up stages from ordered points, with the base optimizer scaled at each.

    Returns:
        ``(stages, warnings)``: the first stage starts at step 0 with ``base`` (or with the size
        chosen at a point measured at step 0); a new stage starts at each point where the batch
        size rises.
    """
    tops = [p.top for p in points]
    sizes = choose_batch_sizes(base, tops, multiple_of, cap)
    warnings = capping_warnings(points, own_choices(base, tops, multiple_of), sizes)
    cache: dict[int, tuple[dict[str, float] | None, ScaledHyperparameters | None]] = {}

    def hyper(b: int, nsr: float | None) -> tuple[dict[str, float] | None, Any]:
        if b in cache:
            return cache[b]
        if optimizer is None:
            cache[b] = (None, None)
            return cache[b]
        try:
            s = scale_hyperparameters(optimizer, base, b, nsr_target=nsr)
        except BscritError as e:
            warnings.append(f"no scaled hyperparameters for B = {b}: {e.message}")
            cache[b] = (None, None)
            return cache[b]
        cache[b] = (dict(s.new), s)
        return cache[b]

    hp, sc = hyper(base, None)
    stages = [Stage(0, 0, 0 if points and points[0].tokens_seen is not None else None, base,
                    None, hp, sc)]  # fmt: skip
    for i, (p, b) in enumerate(zip(points, sizes, strict=True)):
        if b <= stages[-1].batch_size:
            continue
        nsr = None
        if optimizer is not None and p.dataset_size > p.batch_size:
            nsr = nsr_at_batch(p.nsr, p.batch_size, b, p.dataset_size)
        hp, sc = hyper(b, nsr)
        if not p.step and not p.examples_seen:  # a point at step 0 replaces the base stage
            stages.pop()
        stages.append(Stage(p.step or 0, p.examples_seen, p.tokens_seen, b, i, hp, sc,
                            p.heuristic))  # fmt: skip
    warnings += warnings_once({b: sc for b, (_, sc) in cache.items()})  # not once per stage
    for p, b in zip(points, sizes, strict=True):
        if b == base and p.top < base:
            warnings.append(
                f"{p.source}: the recommended range is empty (the lower 95% bound of B* is "
                f"{p.top:.0f} < B = {base}): the schedule stays at B there"
            )
    return stages, warnings


def _leave_out_decayed(pts: Sequence[SchedulePoint]) -> tuple[list[SchedulePoint], list[str]]:
    """The points measured before the LR decayed, and a warning naming the others (a
    :class:`UsageError` when none is left)."""
    decayed = [p for p in pts if p.lr_decaying]
    if not decayed:
        return list(pts), []
    below = f"below {lr_schedule.DECAYED_FRACTION:.0%} of its base"
    if len(decayed) == len(pts):
        raise UsageError(
            f"every point was measured while the scheduler had decayed the LR {below} "
            f"({decayed[0].source}, ...): NSR and B* are equilibrium statistics of a constant-LR "
            "phase, and a decaying LR reads B* too high; measure checkpoints from before the decay"
        )
    names = ", ".join(p.source for p in decayed[:3]) + (", ..." if len(decayed) > 3 else "")
    return [p for p in pts if not p.lr_decaying], [
        f"{len(decayed)} point(s) left out of the stages ({names}): measured while the scheduler "
        f"had decayed the LR {below}; NSR is an equilibrium statistic of a constant-LR phase, "
        "and a decaying LR reads B* too high"
    ]


def make_schedule(
    points: Sequence[SchedulePoint],
    *,
    c2: float = DEFAULT_C2,
    multiple_of: int | None = None,
    tokens_per_example: float | None = None,
    cap: str = "later",
) -> Schedule:
    """Order the points by training position and build the warm-up.

    The base run is the earliest point's: its B starts every stage's range and its optimizer is
    the one scaled.

    Raises:
        UsageError: no points, a point with neither step nor examples seen (naming its file), a
            ``multiple_of`` < 1.
    """
    c2 = check_c2(c2)
    if not points:
        raise UsageError("schedule needs at least one measurement")
    why = None if multiple_of is None else boundary.integer_problem(multiple_of, minimum=1)
    if why:
        raise UsageError(f"{{multiple_of}}: {why}", multiple_of="multiple_of")
    for p in points:
        if p.step is None and p.examples_seen is None:
            raise UsageError(
                f"{p.source}: its checkpoint records no training step: measure it again with "
                "{step} N (or save the step in the checkpoint)",
                step="step",
            )
    pts = sorted(points, key=lambda p: (p.examples_seen or 0, p.step or 0))
    base = pts[0]
    warnings: list[str] = []
    others = sorted({p.batch_size for p in pts if p.batch_size != base.batch_size})
    if others:
        warnings.append(
            f"the points were measured at different batch sizes ({base.batch_size} and "
            f"{', '.join(map(str, others))}): the stages scale from the earliest's B = "
            f"{base.batch_size}"
        )
    opt = base.optimizer
    if opt is None:
        warnings.append(
            f"{base.source} records no optimizer: stages without hyperparameters (scale them "
            "with `bscrit scale`)"
        )
    elif optim.get(opt.name).adaptive:
        warnings.append(
            f"the run used {opt.name}: B* is a heuristic reading of [LMA21 Thm 5.6] (proved for "
            "SGD), and each stage's hyperparameters follow the square-root rule [MLPA22]"
        )
    heur = [p for p in pts if p.heuristic]
    if heur:
        warnings.append(
            f"{len(heur)} of {len(pts)} points are heuristic (off equilibrium or earlier than "
            "one relaxation time): [LMA21 Thm 5.6] assumes equilibrium, so their B* is a "
            "heuristic reading there"
        )
    if len(pts) == 1 or all(p.interval_scope != "equilibrium" for p in pts):
        warnings.append(
            "each point's interval covers its batch noise only (one checkpoint is one draw of "
            "the weights); the schedule moves with that draw (docs/theory.md §8)"
        )
    staged, left_out = _leave_out_decayed(pts)
    warnings += left_out
    stages, more = build_stages(staged, base.batch_size, opt, multiple_of, cap)
    tau = relaxation_steps(opt)[0]
    if tokens_per_example is None:
        ratios = [p.tokens_seen / p.examples_seen for p in pts
                  if p.tokens_seen and p.examples_seen]  # fmt: skip
        tokens_per_example = ratios[-1] if ratios else None
    return Schedule(
        c2=c2,
        base_batch_size=base.batch_size,
        rounding="powers of two" if multiple_of is None else f"multiples of {multiple_of}",
        points=tuple(pts),
        stages=tuple(stages),
        optimizer=opt,
        relaxation_steps=tau,
        tokens_per_example=tokens_per_example,
        warnings=tuple(warnings + more),
        cap=cap,
    )
