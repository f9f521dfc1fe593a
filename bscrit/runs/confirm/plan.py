"""From a spec to a confirmation plan: both branches' hyperparameters, the grid of example counts,
the optimizer state at the branch point and the cost, all known before anything runs (torch).

The base branch trains at the spec's ``batch_size`` B with the run's optimizer (spec
``optimizer``, else the checkpoint's ``param_groups``); the target branch at B' = κB with it scaled
by the optimizer's rule, the function ``bscrit scale`` uses
(:func:`bscrit.theory.scaling.scale_optimizer`:
linear for SGD, square-root for Adam / AdamW / RMSprop). ``--lr`` etc. replace target values. The
schedule is the spec's, in base steps for the base branch and divided by κ for the target (same
epochs, :func:`bscrit.runs.common.optimizer.target_schedule`). Running the plan:
:func:`bscrit.runs.confirm.run.run_confirm`. The checkpoint file is only read; each branch trains a
deep copy of the model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import Tensor

from bscrit.checker import check_batch_size
from bscrit.errors import UsageError
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.optim.state import entry
from bscrit.runs.common.optimizer import target_schedule
from bscrit.runs.common.plan import RunPlan, Start, fixed_batches, load_start, scaled_target
from bscrit.runs.confirm.budget import (
    DECAY_FRACTION,
    DEFAULT_POINTS,
    DEFAULT_RELAXATION_TIMES,
    default_examples,
    example_grid,
)
from bscrit.runs.confirm.verdict import DECAY_TAIL_POINTS, DEFAULT_TAIL_POINTS
from bscrit.theory.scaling import (
    ADAM_RULE_TEXT,
    DEFAULT_ADAM_RULE,
    check_adam_rule,
)

if TYPE_CHECKING:
    from bscrit.specfile.document import Spec

__all__ = ["ConfirmPlan", "prepare_confirm"]

PathLike = str | os.PathLike[str]

#: The saved state keys that must be present, per optimizer, to start from the checkpoint's state.
STATE_KEYS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum_buffer",),
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
    "rmsprop": ("square_avg",),
}


@dataclass(kw_only=True)
class ConfirmPlan(RunPlan):
    """Everything needed to run both branches, and what it will cost (:func:`prepare_confirm`).

    ``schedule`` is in base steps; ``start_step`` is the checkpoint's step in the base run."""

    base_optimizer: OptimizerInfo
    base_batches: list[list[int]]  # k batches of size B (the base branch's warm start only)
    target_schedule: dict[str, Any]  # in target steps
    examples: int  # requested
    examples_why: str
    grid_base: list[int]  # base steps at each grid point
    grid_target: list[int]  # target steps at each grid point
    seeds: tuple[int, ...]
    decay: bool = False
    tail_points: int = DEFAULT_TAIL_POINTS
    saved_state: list[Mapping[str, Any]] | None = None  # per trained parameter, the checkpoint's
    state_why: str = ""  # why the checkpoint's optimizer state is (not) used

    @property
    def steps_base(self) -> int:
        return self.grid_base[-1]

    @property
    def steps_target(self) -> int:
        return self.grid_target[-1]

    @property
    def examples_target(self) -> int:
        return self.steps_target * self.target_batch_size

    @property
    def decay_text(self) -> str | None:
        if not self.decay:
            return None
        return f"LR × a linear ramp to 0 over the last {DECAY_FRACTION:.0%} of each branch's steps"

    def uses_warm_start(self) -> bool:
        return (self.saved_state is None and self.warm_start
                and optim.get(self.base_optimizer.name).adaptive)  # fmt: skip

    def forward_backward(self) -> dict[str, int]:
        """Passes per branch over all seeds: training steps + evaluations (+ warm start)."""
        k = len(self.fixed_batches)
        evals = len(self.grid_base) * k
        warm = k if self.uses_warm_start() else 0
        return {
            "base": len(self.seeds) * (self.steps_base + evals) + warm,
            "target": len(self.seeds) * (self.steps_target + evals) + warm,
        }

    def training_examples(self) -> int:
        return len(self.seeds) * (
            self.steps_base * self.batch_size + self.steps_target * self.target_batch_size
        )

    @property
    def total_steps(self) -> int:
        """Optimizer steps over all seeds and both branches (the progress bar's total)."""
        return len(self.seeds) * (self.steps_base + self.steps_target)


def _target_optimizer(
    base: OptimizerInfo,
    overrides: Mapping[str, float | None],
    kappa: float,
    groups: tuple[int, ...] | None = None,
    adam_rule: str = DEFAULT_ADAM_RULE,
) -> tuple[OptimizerInfo, str, str, list[str]]:
    """``(target, rule, reference, notes)``: the base scaled to B' by its rule, then overridden."""
    d = optim.scalable(base.name)
    if d.name not in STATE_KEYS:
        runs = ", ".join(STATE_KEYS)
        raise UsageError(
            f"bscrit confirm runs {runs}, not {d.name} (the optimizer state at the branch point "
            "is defined for those); use `bscrit scale` for its scaled hyperparameters"
        )
    target, notes = scaled_target(
        base, overrides, kappa, overridden="target overridden on the command line",
        runs="both branches", groups=groups, adam_rule=adam_rule,
    )  # fmt: skip
    reference = d.rule_reference
    if d.adaptive and adam_rule != DEFAULT_ADAM_RULE:
        reference += f", --adam-rule {adam_rule}: {ADAM_RULE_TEXT[adam_rule]}"
    return target, d.rule, reference, notes


def _saved_state(
    opt_state: Mapping | None, indices: Sequence[int] | None, name: str, momentum: float
) -> tuple[list[Mapping[str, Any]] | None, str]:
    """Per trained parameter, the checkpoint's optimizer state when it is complete for ``name``."""
    keys = STATE_KEYS[name]
    if name == "sgd" and momentum <= 0:
        return None, "SGD without momentum has no optimizer state"
    if opt_state is None:
        return None, "the checkpoint holds no optimizer state"
    if indices is None:
        return None, "the checkpoint's optimizer state could not be matched to the parameters"
    out = []
    for i in indices:
        st = entry(opt_state, i)
        if st is None or not all(isinstance(st.get(k), Tensor) for k in keys):
            return None, f"the checkpoint's optimizer state lacks {'/'.join(keys)} (parameter {i})"
        out.append(st)
    return out, f"from the checkpoint's optimizer state ({'/'.join(keys)})"


def _check_options(target_batch_size: int, seeds: int, examples: int | None, k: int) -> None:
    check_batch_size(target_batch_size, "target_batch_size")
    if seeds < 1:
        raise UsageError(f"{{seeds}} must be >= 1, got {seeds}", seeds="seeds")
    if examples is not None and examples < 1:
        raise UsageError(f"{{examples}} must be >= 1, got {examples}", examples="examples")
    if k < 2:
        raise UsageError(
            f"{{eval_batches}} must be >= 2 (N needs two batches), got {k}",
            eval_batches="eval_batches",
        )


def _check_sizes(n: int, target_batch_size: int, batch_size: int) -> list[str]:
    """A UsageError when B' or B exceeds the n training examples (a batch holds distinct ones)."""
    for size, key in ((target_batch_size, "target_batch_size"), (batch_size, "batch_size")):
        if size > n:
            raise UsageError(
                f"{{{key}}} {size} exceeds the {n} training examples: a batch holds distinct "
                "examples",
                **{key: key},
            )
    return []


def _base_optimizer(start: Start) -> tuple[OptimizerInfo, list[str]]:
    """The run's optimizer (the base branch trains with it) and a note when the checkpoint's LR
    is not the schedule's base LR (its peak)."""
    base = start.base
    if base is None:
        raise UsageError(
            f"{start.spec.path}: no optimizer: neither the spec (optimizer:) nor the checkpoint "
            "names one; give optimizer: {name, lr, ...} in the spec (the base branch trains "
            "with it)"
        )
    if base.lr_current is not None and not math.isclose(base.lr_current, base.lr, rel_tol=1e-6):
        return base, [
            f"the LR at the checkpoint is {base.lr_current:.6g}, the schedule's base (peak) "
            f"{base.lr:.6g}: the rule scales the base; the runs follow the schedule from the "
            "checkpoint's step (--start-step)"
        ]
    return base, []


def prepare_confirm(
    spec: Spec,
    *,
    target_batch_size: int,
    examples: int | None = None,
    seeds: int = 3,
    checkpoint: str | Path | None = None,
    overrides: Mapping[str, float | None] | None = None,
    decay: bool = True,
    points: int = DEFAULT_POINTS,
    tail_points: int | None = None,
    relaxation_times: float = DEFAULT_RELAXATION_TIMES,
    eval_batches: int = 8,
    eval_examples: int | None = 2048,
    start_step: float | None = None,
    seed: int | None = None,
    device: str | None = None,
    warm_start: bool = True,
    unsafe: bool = False,
    adam_rule: str = DEFAULT_ADAM_RULE,
) -> ConfirmPlan:
    """Load the checkpoint and data of a spec and plan both branches.

    Args:
        examples: training examples per branch and seed (default: ``relaxation_times`` relaxation
            times 1/(2ηλ) at B, × B; 5 epochs when it is unknown). The target runs
            round(examples/B') steps; the base the same examples.
        seeds: K; seed i (from ``seed``, default the spec's ``measure.seed``) sets the batch order
            and the global torch seed (dropout) of both branches.
        tail_points: the final loss is the mean over this many last grid points (default 5 of
            21; 1 with ``decay``, the loss at the end of the decay).
        start_step: the checkpoint's step in the base run (the schedule); default the step saved
            in the checkpoint, else 0.
        adam_rule: the square-root rule's variant for Adam/AdamW/RMSprop
            (:data:`~bscrit.theory.scaling.ADAM_RULES`).

    Raises:
        UsageError: B' larger than the training set, no optimizer, an optimizer confirm does not
            run, bad counts.
        DataError, CheckpointError: the spec's data or checkpoint cannot be loaded.
    """
    _check_options(target_batch_size, seeds, examples, eval_batches)
    if tail_points is None:
        tail_points = DECAY_TAIL_POINTS if decay else DEFAULT_TAIL_POINTS
    if not 1 <= tail_points:
        raise UsageError(f"tail_points must be >= 1, got {tail_points}")
    b = spec.batch_size
    start = load_start(
        spec, checkpoint, seed=seed, device=device, unsafe=unsafe,
        check_size=lambda n: _check_sizes(n, target_batch_size, b),
    )  # fmt: skip
    base, lr_warnings = _base_optimizer(start)
    kappa = target_batch_size / b
    target, rule, reference, notes = _target_optimizer(
        base, dict(overrides or {}), kappa, start.param_groups, check_adam_rule(adam_rule)
    )
    schedule, sched_notes = start.schedule()
    notes += sched_notes
    n = start.dataset_size
    if examples is None:
        examples, why = default_examples(base, b, n, relaxation_times)
    else:
        why = "given (--examples)"
    grid_base, grid_target, _ = example_grid(examples, b, target_batch_size, points)
    if target_batch_size % b and kappa > 1:
        notes.append(f"B'/B = {kappa:.4g} is not an integer: the base branch's examples at each "
                     f"grid point are rounded to whole steps at B (within {b // 2})")  # fmt: skip
    if start_step is None:
        start_step = start.default_start_step()
    saved, state_why = _saved_state(
        start.checkpoint.optimizer_state, start.selection.state_indices, base.name,
        optim.flat(base).get("momentum", 0.0),
    )  # fmt: skip
    shared = start.plan_fields(target_batch_size, eval_batches, eval_examples)
    if shared["held_out"] is None:
        notes.append("no eval_data in the spec: the verdict uses the loss on the fixed training "
                     "batches")  # fmt: skip
    shared["warnings"] = shared["warnings"] + lr_warnings
    return ConfirmPlan(
        **shared, rule=rule, rule_reference=reference, base_optimizer=base,
        target_optimizer=target, schedule=target_schedule(schedule, 1.0),
        target_schedule=target_schedule(schedule, kappa), start_step=float(start_step),
        base_batches=fixed_batches(n, b, eval_batches, start.seed), examples=int(examples),
        examples_why=why, grid_base=grid_base, grid_target=grid_target,
        seeds=tuple(start.seed + i for i in range(seeds)), decay=decay, tail_points=tail_points,
        saved_state=saved, state_why=state_why, warm_start=warm_start, notes=notes,
    )  # fmt: skip
