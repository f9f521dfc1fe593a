"""From a spec to a confirmation plan: both branches' hyperparameters, the grid of example counts,
the optimizer state at the branch point and the cost, all known before anything runs (torch).

The base branch trains at the spec's ``batch_size`` B with the run's optimizer (spec
``optimizer``, else the checkpoint's ``param_groups``); the target branch at B' = κB with it scaled
by the optimizer's rule, the function ``bscrit scale`` uses (:func:`bscrit.theory.scaling.scale_optimizer`:
linear for SGD, square-root for Adam / AdamW / RMSprop). ``--lr`` etc. replace target values. The
schedule is the spec's, in base steps for the base branch and divided by κ for the target (same
epochs, :func:`bscrit.runs.svag.step.target_schedule`). Running the plan:
:func:`bscrit.runs.confirm.run.run_confirm`. The checkpoint file is only read; each branch trains a
deep copy of the model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from bscrit.checker import check_batch_size
from bscrit.engine.data import BatchSource
from bscrit.engine.params import select_parameters
from bscrit.errors import UsageError
from bscrit.load.checkpoints import load_model, resolve_optimizer
from bscrit.load.factories import build_dataset, resolve_device
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.optim.state import entry
from bscrit.runs.confirm.results import (
    DECAY_FRACTION,
    DECAY_TAIL_POINTS,
    DEFAULT_POINTS,
    DEFAULT_RELAXATION_TIMES,
    DEFAULT_TAIL_POINTS,
    default_examples,
    example_grid,
)
from bscrit.runs.svag.plan import evaluation_inputs, fixed_batches
from bscrit.runs.svag.step import target_schedule
from bscrit.theory.scaling import scale_optimizer

if TYPE_CHECKING:
    from bscrit.spec.document import Spec

__all__ = ["ConfirmPlan", "plan_confirm", "prepare_confirm"]

PathLike = str | os.PathLike[str]

#: The saved state keys that must be present, per optimizer, to start from the checkpoint's state.
STATE_KEYS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum_buffer",),
    "adam": ("exp_avg", "exp_avg_sq"),
    "adamw": ("exp_avg", "exp_avg_sq"),
    "rmsprop": ("square_avg",),
}
#: Second-moment state tensors, divided by κ for the target branch ([MLPA22] Thm 5.3).
SECOND_MOMENT_KEYS = ("exp_avg_sq", "square_avg")


@dataclass
class ConfirmPlan:
    """Everything needed to run both branches, and what it will cost (:func:`prepare_confirm`)."""

    model: nn.Module  # the loaded checkpoint, on CPU; never modified (each branch: a deep copy)
    loss_fn: Callable[[Any, Any], Tensor]
    train: BatchSource
    held_out: BatchSource | None
    held_out_indices: list[int]
    fixed_batches: list[list[int]]  # k training batches of size B' every evaluation uses
    base_batches: list[list[int]]  # k batches of size B (the base branch's warm start only)
    device: torch.device
    mode: str
    batch_size: int
    target_batch_size: int
    dataset_size: int
    kappa: float
    rule: str
    rule_reference: str
    base_optimizer: OptimizerInfo
    target_optimizer: OptimizerInfo
    schedule: dict[str, Any]  # in base steps
    target_schedule: dict[str, Any]  # in target steps
    start_step: float  # the checkpoint's step in the base run
    examples: int  # requested
    examples_why: str
    grid_base: list[int]  # base steps at each grid point
    grid_target: list[int]  # target steps at each grid point
    seeds: tuple[int, ...]
    decay: bool = False
    tail_points: int = DEFAULT_TAIL_POINTS
    saved_state: list[Mapping[str, Any]] | None = None  # per trained parameter, the checkpoint's
    state_why: str = ""  # why the checkpoint's optimizer state is (not) used
    warm_start: bool = True
    micro_batch_size: int | None = None
    spec: str | None = None
    checkpoint: str | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

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
    base: OptimizerInfo, overrides: Mapping[str, float | None], kappa: float
) -> tuple[OptimizerInfo, str, str, list[str]]:
    """``(target, rule, reference, notes)``: the base scaled to B' by its rule, then overridden."""
    d = optim.scalable(base.name)
    if d.name not in STATE_KEYS:
        runs = ", ".join(STATE_KEYS)
        raise UsageError(
            f"bscrit confirm runs {runs}, not {d.name} (the optimizer state at the branch point "
            "is defined for those); use `bscrit scale` for its scaled hyperparameters"
        )
    target = optim.with_values(scale_optimizer(base, kappa), dict(overrides))
    given = [k for k, v in overrides.items() if v is not None]
    notes = [f"target overridden on the command line: {', '.join(given)}"] if given else []
    if optim.group_optimizers(base):
        notes.append(
            f"the base run's {len(base.groups)} param groups have different values; both "
            "branches use the main group's for every parameter"
        )
    return target, d.rule, d.rule_reference, notes


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
    seed = spec.measure.seed if seed is None else int(seed)
    dev = resolve_device(device or spec.measure.device)
    model, ckpt = load_model(spec, checkpoint, unsafe=unsafe)
    train_ds = build_dataset(spec.data, spec.base_dir, "data")
    n = len(train_ds)
    b = spec.batch_size
    for size, key in ((target_batch_size, "target_batch_size"), (b, "batch_size")):
        if size > n:
            raise UsageError(
                f"{{{key}}} {size} exceeds the {n} training examples: a batch holds distinct "
                "examples",
                **{key: key},
            )
    sel = select_parameters(model, ckpt.optimizer_state, f"checkpoint {ckpt.path}")
    for name, p in model.named_parameters():  # bscrit's own copy of the model
        p.requires_grad_(name in sel.names)
    warnings = [sel.warning] if sel.warning else []
    base, opt_notes = resolve_optimizer(spec, ckpt)
    warnings += opt_notes
    if base is None:
        raise UsageError(
            f"{spec.path}: no optimizer: neither the spec (optimizer:) nor the checkpoint names "
            "one; give optimizer: {name, lr, ...} in the spec (the base branch trains with it)"
        )
    base = replace(base, name=base.name.lower())
    kappa = target_batch_size / b
    target, rule, reference, notes = _target_optimizer(base, dict(overrides or {}), kappa)
    if base.lr_current is not None and not math.isclose(base.lr_current, base.lr, rel_tol=1e-6):
        warnings.append(
            f"the checkpoint's LR is {base.lr_current:.6g}, the schedule's base {base.lr:.6g}: "
            "both branches follow the spec's schedule from --start-step"
        )
    if examples is None:
        examples, why = default_examples(base, b, n, relaxation_times)
    else:
        why = "given (--examples)"
    grid_base, grid_target, _ = example_grid(examples, b, target_batch_size, points)
    if target_batch_size % b and kappa > 1:
        notes.append(f"B'/B = {kappa:.4g} is not an integer: the base branch's examples at each "
                     f"grid point are rounded to whole steps at B (within {b // 2})")  # fmt: skip
    if start_step is None:
        start_step = float(ckpt.step or 0)
    saved, state_why = _saved_state(
        ckpt.optimizer_state, sel.state_indices, base.name, optim.flat(base).get("momentum", 0.0)
    )
    loss_fn, held_out, held_idx = evaluation_inputs(spec, dev, train_ds, eval_examples, seed)
    if held_out is None:
        notes.append("no eval_data in the spec: the verdict uses the loss on the fixed training "
                     "batches")  # fmt: skip
    return ConfirmPlan(
        model=model,
        loss_fn=loss_fn,
        train=BatchSource(train_ds, dev, spec.data.num_workers),
        held_out=held_out,
        held_out_indices=held_idx,
        fixed_batches=fixed_batches(n, target_batch_size, eval_batches, seed),
        base_batches=fixed_batches(n, b, eval_batches, seed),
        device=dev,
        mode=spec.measure.mode,
        batch_size=b,
        target_batch_size=int(target_batch_size),
        dataset_size=n,
        kappa=kappa,
        rule=rule,
        rule_reference=reference,
        base_optimizer=base,
        target_optimizer=target,
        schedule=target_schedule(spec.schedule, 1.0),
        target_schedule=target_schedule(spec.schedule, kappa),
        start_step=float(start_step),
        examples=int(examples),
        examples_why=why,
        grid_base=grid_base,
        grid_target=grid_target,
        seeds=tuple(seed + i for i in range(seeds)),
        decay=decay,
        tail_points=tail_points,
        saved_state=saved,
        state_why=state_why,
        warm_start=warm_start,
        micro_batch_size=spec.micro_batch_size,
        spec=str(spec.path),
        checkpoint=str(ckpt.path),
        notes=notes,
        warnings=warnings,
    )


def plan_confirm(
    spec_path: PathLike,
    *,
    target_batch_size: int | None = None,
    from_measurement: PathLike | None = None,
    c2: float = 2.0,
    on_target: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> ConfirmPlan:
    """``bscrit confirm``: the plan at B', given or read from a measurement.

    With ``from_measurement`` B' is :func:`~bscrit.theory.prediction.confirmation_target` of its
    prediction (the top of the recommended range, as ``svag --from-measurement``). ``kwargs`` go
    to :func:`prepare_confirm`; everything is checked before any run.
    """
    from bscrit.spec.document import load_spec
    from bscrit.theory.prediction import confirmation_target, predict_files

    if (target_batch_size is None) == (from_measurement is None):
        raise UsageError(
            "give exactly one of {t} and {m}", t="target_batch_size", m="from_measurement"
        )
    if from_measurement is not None:
        pred = predict_files([from_measurement], c2)
        target_batch_size, why = confirmation_target(pred)
        if on_target is not None:
            on_target(f"B' = {target_batch_size}: {why} of {from_measurement}")
    assert target_batch_size is not None
    return prepare_confirm(load_spec(spec_path), target_batch_size=target_batch_size, **kwargs)
