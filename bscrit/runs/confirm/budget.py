"""How much each branch of ``bscrit confirm`` trains, and where it is evaluated (pure: no torch).

The budget E, in training examples per branch and seed (:func:`default_examples`: a number of
relaxation times of ‖x‖² at B), and the shared grid of example counts both branches are
evaluated on (:func:`example_grid`); the LR decay that ends both branches (``--decay``).
"""

from __future__ import annotations

import math

from bscrit.boundary import INT64_MAX
from bscrit.errors import UsageError
from bscrit.optim.registry import OptimizerInfo
from bscrit.stats.equilibrium import relaxation_steps

__all__ = ["DECAY_FRACTION", "DEFAULT_POINTS", "DEFAULT_RELAXATION_TIMES", "FALLBACK_EPOCHS",
           "default_examples", "example_grid"]  # fmt: skip

#: Evaluation intervals on the grid of example counts (grid points = this + 1, from 0).
DEFAULT_POINTS = 20
#: Default budget: this many relaxation times 1/(2ηλ) of ‖x‖² at B ([LMA21] eq. 10), in examples.
DEFAULT_RELAXATION_TIMES = 2.0
#: Default budget when the relaxation time is unknown (no weight decay, Adam's coupled decay).
FALLBACK_EPOCHS = 5.0
#: ``--decay``: the LR falls linearly to 0 over this last fraction of each branch's steps.
DECAY_FRACTION = 0.2


def default_examples(
    opt: OptimizerInfo | None,
    batch_size: int,
    dataset_size: int,
    relaxation_times: float = DEFAULT_RELAXATION_TIMES,
) -> tuple[int, str]:
    """The default example budget E and how it was chosen.

    ``relaxation_times`` × τ × B, with τ = 1/(2ηλ) steps at B, the relaxation time of ‖x‖²
    ([LMA21] eq. 10; :func:`bscrit.stats.equilibrium.relaxation_steps`); ``FALLBACK_EPOCHS``
    epochs of the training set when τ is unknown (no weight decay, coupled decay of Adam/RMSprop).
    """
    tau, why = relaxation_steps(opt)
    if tau is None:
        e = math.ceil(FALLBACK_EPOCHS * dataset_size)
        return e, f"{FALLBACK_EPOCHS:g} epochs ({why})"
    if not relaxation_times * tau * batch_size <= INT64_MAX:  # a tiny ηλ (inf included)
        raise UsageError(
            f"{relaxation_times:g} relaxation times τ = {tau:.4g} steps at B = {batch_size} are "
            "more examples than int64 counts: give {examples}",
            examples="examples",
        )
    e = math.ceil(relaxation_times * tau * batch_size)
    return e, (
        f"{relaxation_times:g} relaxation times τ = {why} = {tau:.4g} steps at B = {batch_size}"
    )


def example_grid(
    examples: int, batch_size: int, target_batch_size: int, points: int = DEFAULT_POINTS
) -> tuple[list[int], list[int], int]:
    """The shared grid: ``(base steps, target steps, target total steps)`` at each grid point.

    The target branch runs T' = max(1, round(E/B')) steps, so it sees E' = T'·B' examples; the grid
    is ``points`` + 1 evenly spaced target steps t_j (all of them when T' ≤ points), and the base
    branch is evaluated after s_j = round(t_j·B'/B) steps. The two see the same examples at every
    grid point when B' is a multiple of B; otherwise within B/2 (each branch records its own).
    """
    if examples < 1:
        raise UsageError(f"{{examples}} must be >= 1, got {examples}", examples="examples")
    if points < 1:
        raise UsageError(f"{{points}} must be >= 1, got {points}", points="points")
    total = max(1, round(examples / target_batch_size))
    target = sorted({round(j * total / points) for j in range(points + 1)})
    base = [round(t * target_batch_size / batch_size) for t in target]
    return base, target, total
