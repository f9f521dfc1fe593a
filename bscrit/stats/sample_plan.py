"""Sampling the equilibrium from one checkpoint: ``measure --sample-steps T --samples K``
(pure: no torch, no numpy).

docs/theory.md §8. Training continues from the checkpoint for T steps with the run's own optimizer
and G, N are measured at K evenly spread points; the points, blocked into draws at least one
relaxation time τ = 1/(2ηλ) apart (:mod:`bscrit.stats.equilibrium`), give an interval over the
equilibrium from a single checkpoint. This module plans the points and says what they cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bscrit.artifacts.jsonvalues import finite_or_none
from bscrit.errors import UsageError
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo

#: Default number of measured points K (docs/validation.md, "Equilibrium intervals").
DEFAULT_SAMPLES = 20
#: Default length T in relaxation times τ = 1/(2ηλ): T/τ blocks of at least τ, one draw each.
DEFAULT_RELAXATION_TIMES = 10
#: Each sampled point is measured with this fraction of a plain measurement's batches: the
#: spread between points, not the batch noise at each, sets the interval (docs/validation.md).
SAMPLE_BATCH_FRACTION = 0.25


def sample_batches(k: int, groups: int) -> int:
    """Batches per sampled point: ⌈k/4⌉ of a plain measurement's k, at least 2 per group."""
    return max(2 * groups, math.ceil(k * SAMPLE_BATCH_FRACTION))


@dataclass(frozen=True)
class SamplePlan:
    """Continue training for ``steps`` steps and measure at ``points`` (step 0 is the checkpoint).

    Attributes:
        steps: T, training steps after the checkpoint.
        points: the K steps at which G and N are measured, 0 to T, evenly spread.
        relaxation_steps: τ = 1/(2ηλ), or None when unknown (no weight decay).
        batches: k, batches of each measurement.
        one_measurement: batches of one plain measurement, the unit of :attr:`cost`.
        note: how T was chosen and τ computed (or why τ is unknown).
    """

    steps: int
    points: tuple[int, ...]
    relaxation_steps: float | None
    batches: int
    one_measurement: int
    note: str

    @property
    def samples(self) -> int:
        return len(self.points)

    @property
    def forward_backward(self) -> int:
        """T training steps plus K·k measured batches, one forward-backward pass each."""
        return self.steps + self.samples * self.batches

    @property
    def cost(self) -> float:
        """The forward-backward passes as a multiple of one plain measurement."""
        return self.forward_backward / self.one_measurement

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "points": list(self.points),
            "relaxation_steps": finite_or_none(self.relaxation_steps),
            "batches": self.batches,
            "forward_backward": self.forward_backward,
            "cost_in_measurements": self.cost,
            "note": self.note,
        }


def plan_samples(
    steps: int | None,
    samples: int | None,
    tau: float | None,
    tau_note: str,
    batches: int,
    one_measurement: int,
) -> SamplePlan:
    """The points of ``--sample-steps T --samples K`` (defaults: T = 10τ, K = 20).

    Raises:
        UsageError: K < 2; T < K − 1 (two points at one step); T not given while τ is unknown
            (no weight decay: no equilibrium, [LMA21] eq. 11, so no natural length).
    """
    k = DEFAULT_SAMPLES if samples is None else samples
    if k < 2:
        raise UsageError(f"{{samples}} must be at least 2, got {k}", samples="samples")
    if steps is None:
        if tau is None:
            raise UsageError(
                f"{tau_note}: there is no default for {{sample_steps}}; give it in steps (the "
                "interval then covers the average over those steps, not an equilibrium)",
                sample_steps="sample_steps",
            )
        steps = max(k - 1, round(DEFAULT_RELAXATION_TIMES * tau))
        note = f"the default, {DEFAULT_RELAXATION_TIMES} relaxation times τ = {tau_note}"
    else:
        note = f"τ = {tau_note}" if tau else tau_note
    if steps < k - 1:
        raise UsageError(
            f"{{sample_steps}} = {steps} is shorter than {{samples}} − 1 = {k - 1}: two points "
            "would be at the same step",
            sample_steps="sample_steps",
            samples="samples",
        )
    points = tuple(round(j * steps / (k - 1)) for j in range(k))
    return SamplePlan(steps, points, tau, batches, one_measurement, note)


def parse_sample_steps(value: str | None) -> int | str | None:
    """``--sample-steps``: 'auto' (10 relaxation times) or a positive number of steps."""
    if value is None or value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise UsageError(
            f"{{sample_steps}}: expected 'auto' or a number of steps, got {value!r}",
            sample_steps="sample_steps",
        )
    return int(value)


def sample_cost_lines(plan: SamplePlan, opt: OptimizerInfo, batch_size: int) -> list[str]:
    """What ``measure --sample-steps`` will do and cost, before it starts (stderr)."""
    tau, gap = plan.relaxation_steps, plan.points[1] - plan.points[0]
    span = f" = {plan.steps / tau:.3g} τ, τ = {tau:.0f} steps" if tau else ""
    length = f"{plan.steps} steps{span}"
    lines = [
        f"Sampling the equilibrium: continue training for {length} ({plan.note}) with "
        f"{opt.name} ({optim.describe(opt)}), B = {batch_size}, random reshuffling, and measure "
        f"at {plan.samples} points (step 0 is the checkpoint; every ~{gap} steps, "
        f"{plan.batches} batches each).",
        f"Cost: {plan.steps:,} training steps + {plan.samples} × {plan.batches} measured batches "
        f"= {plan.forward_backward:,} forward-backward passes of batch {batch_size}, about "
        f"{plan.cost:.3g}× one measurement ({plan.one_measurement} batches).",
    ]
    return lines
