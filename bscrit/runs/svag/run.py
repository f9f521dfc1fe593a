"""Running SVAG: one run per l at equal effective steps, then the comparison and verdict (torch).

l SVAG steps simulate one step of the original run, so every l is compared at equal effective
steps (SVAG steps / l); as l grows SVAG converges weakly to the SDE with error O(1/l) [LMA21 Thm
4.3; MLPA22 Thm 6.3]. Cost: 2 l forward-backward passes per effective step.

:func:`run_svag` is the loop for any :class:`~bscrit.runs.svag.step.GradientOracle` (the closed-form
tests use it with a synthetic oracle); :func:`run_plan` runs it once per l of a
:class:`~bscrit.runs.svag.plan.SvagPlan`, each l on a deep copy of the model under the same seeds,
and reads the runs (:mod:`bscrit.runs.svag.results`). Details and the verdict: docs/svag.md.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bscrit.errors import RunError, UsageError
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.runs.common.loop import non_finite, replica, train_on_grid
from bscrit.runs.common.optimizer import lr_factor, make_optimizer
from bscrit.runs.common.warm import GradientMoments, model_gradient_moments, warm_start
from bscrit.runs.svag.oracles import ModelOracle
from bscrit.runs.svag.plan import SvagPlan
from bscrit.runs.svag.results import SvagResult, SvagRun, svag_verdict
from bscrit.runs.svag.step import GradientOracle, svag_coefficients, svag_step
from bscrit.runs.svag.verdict import VerdictConfig
from bscrit.theory.scaling import svag_hyperparameters

__all__ = ["run_plan", "run_svag"]

#: What every result says about the running statistics (see :mod:`bscrit.runs.svag.oracles`).
BUFFERS_NOTE = (
    "BatchNorm running statistics: updated once per SVAG step, by the first of the two batches "
    "(buffers saved before the second forward pass and restored after it)"
)


def _optimizer_and_schedule(
    oracle: GradientOracle,
    hp: OptimizerInfo,
    l: int,  # noqa: E741
    moments: GradientMoments | None,
    schedule: dict[str, Any],
    start_step: float,
    end: float,
    groups: Sequence[int] | None = None,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """PyTorch's optimizer with the SVAG hyperparameters ``hp`` (warm-started from ``moments``)
    and its LR schedule, stepped once per SVAG step but read on effective steps."""
    optimizer = make_optimizer(oracle.params, hp, groups)
    if moments is not None:
        warm_start(optimizer, oracle.params, moments, l)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda k: lr_factor(schedule, start_step + k / l, start_step + (k + 1) / l, end),
    )
    return optimizer, scheduler


def run_svag(
    oracle: GradientOracle,
    opt: OptimizerInfo,
    l: int,  # noqa: E741
    effective_steps: int,
    *,
    evaluate: Callable[[], dict[str, float]],
    eval_every: int = 1,
    schedule: dict[str, Any] | None = None,
    start_step: float = 0.0,
    on_step: Callable[[int], None] | None = None,
    moments: GradientMoments | None = None,
    groups: Sequence[int] | None = None,
) -> SvagRun:
    """Run SVAG with parameter l for ``effective_steps`` effective steps (l × as many SVAG steps).

    Args:
        oracle: gradients of two independent batches per step (:class:`GradientOracle`).
        opt: the optimizer's hyperparameters *at the target batch size* (l = 1); the SVAG rule of
            docs/theory.md §6 (:func:`bscrit.theory.scaling.svag_hyperparameters`) is applied here.
        l: SVAG parameter ≥ 1.
        effective_steps: run length E in effective steps (steps at the target batch size).
        evaluate: test functions at the current point, called at effective steps 0, eval_every,
            2·eval_every, ..., E (the last point is always included).
        eval_every: effective steps between evaluations.
        schedule: target-batch schedule (:func:`~bscrit.runs.common.optimizer.target_schedule`);
            None = constant LR.
        start_step: effective step of the checkpoint in the schedule.
        on_step: called with 1 after every SVAG step (progress bars).
        moments: gradient moments at the start; given, Adam/AdamW/RMSprop start from them
            (:func:`~bscrit.runs.common.warm.warm_start`) rather than from a zero state.
        groups: per parameter of the oracle, its saved param group: each group trains with its
            own values (:func:`~bscrit.runs.common.optimizer.make_optimizer`).

    Returns:
        The :class:`~bscrit.runs.svag.results.SvagRun`; a non-finite test function stops the run
        (``diverged_at``) and the remaining points are NaN.

    Raises:
        RunError: a test function is not finite at effective step 0 (the starting point itself,
        before any step: nothing diverged), naming l and the test functions.
    """
    if effective_steps < 1:
        raise UsageError(
            f"{{effective_steps}} must be >= 1, got {effective_steps}",
            effective_steps="effective_steps",
        )
    if eval_every < 1:
        raise UsageError(f"{{eval_every}} must be >= 1, got {eval_every}", eval_every="eval_every")
    r1, r2 = svag_coefficients(l)
    hp = svag_hyperparameters(opt, l)
    optimizer, scheduler = _optimizer_and_schedule(
        oracle, hp, l, moments, schedule or {"name": "constant"}, start_step,
        start_step + effective_steps, groups,
    )  # fmt: skip

    def step() -> None:
        svag_step(oracle, optimizer, r1, r2)
        scheduler.step()

    points = list(range(0, effective_steps, eval_every)) + [effective_steps]
    curve = train_on_grid(
        [p * l for p in points], step, evaluate, on_step=on_step,
        at_start=lambda bad: (
            f"SVAG run l = {l}: {bad} at effective step 0, before any SVAG step: the model or "
            "the loss is not finite at the checkpoint's weights (a NaN/Inf weight, or data that "
            "give NaN); no run can start from there"
        ),
    )  # fmt: skip
    return SvagRun(
        l=int(l),
        optimizer=hp,
        steps=curve.steps,
        effective_steps=tuple(float(p) for p in points),
        values=curve.values,
        diverged_at=None if curve.diverged is None else float(points[curve.diverged]),
        elapsed_s=curve.elapsed_s,
    )


def _divergence(run: SvagRun) -> str:
    """Where and in what a diverged run first stopped being finite."""
    steps = run.effective_steps
    at = steps.index(run.diverged_at) if run.diverged_at in steps else -1
    what = non_finite({k: v[at] for k, v in run.values.items()}) if at >= 0 else ""
    return f"l = {run.l} at effective step {run.diverged_at:g}" + (f" ({what})" if what else "")


# ----------------------------------------------------------------------------------------------
# A plan: every l, then the verdict
# ----------------------------------------------------------------------------------------------


def _start_moments(plan: SvagPlan) -> tuple[GradientMoments | None, str]:
    """The gradient moments at the checkpoint that warm-start an adaptive optimizer (None
    otherwise), and the note that says how the optimizer state starts."""
    name = plan.target_optimizer.name
    if not optim.get(name).adaptive:
        return None, "optimizer state (momentum buffer) starts fresh for every l"
    if not plan.warm_start:
        return None, f"{name} state starts from zeros for every l"
    base = copy.deepcopy(plan.model).to(plan.device)
    moments = model_gradient_moments(
        base, plan.loss_fn, plan.train, plan.fixed_batches, plan.mode, seed=plan.seed,
        micro=plan.micro_batch_size,
    )  # fmt: skip
    note = (
        f"{name} state warm-started for every l from the gradient moments at the checkpoint on "
        f"the {len(plan.fixed_batches)} fixed batches: m0 = mean gradient, v0 = mean² + "
        "l·variance (bias corrections ≈ 1)"
    )
    return moments, note


def _run_one(
    plan: SvagPlan,
    l: int,  # noqa: E741
    moments: GradientMoments | None,
    on_step: Callable[[int], None] | None,
) -> SvagRun:
    """SVAG with parameter l from the plan's checkpoint (a deep copy), under the plan's seeds."""
    where = f"SVAG run l = {l}"
    with replica(plan, plan.seed, where, plan.target_batch_size) as (model, loss_fn):
        oracle = ModelOracle(model, loss_fn, plan.train, plan.target_batch_size,
                             torch.Generator().manual_seed(plan.seed),
                             micro=plan.micro_batch_size)  # fmt: skip
        try:
            return run_svag(
                oracle, plan.target_optimizer, l, plan.effective_steps,
                evaluate=plan.evaluator(model, loss_fn, plan.seed), eval_every=plan.eval_every,
                schedule=plan.schedule, start_step=plan.start_step, on_step=on_step,
                moments=moments, groups=plan.param_groups,
            )  # fmt: skip
        except RunError as e:
            if e.template.startswith(where):
                raise
            raise RunError(f"{where}: " + e.template, **e.options) from e.__cause__


def _run_warnings(plan: SvagPlan, runs: list[SvagRun]) -> list[str]:
    warnings = list(plan.warnings)
    if plan.ls[0] != 1:
        warnings.append(
            f"the smallest l is {plan.ls[0]}, not 1: the comparison is with SVAG l = "
            f"{plan.ls[0]}, not with the plain optimizer"
        )
    return warnings


def run_plan(
    plan: SvagPlan,
    *,
    on_step: Callable[[int], None] | None = None,
    config: VerdictConfig | None = None,
) -> SvagResult:
    """Run SVAG once per l of the plan (same seeds) and give the calibrated verdict
    (:mod:`bscrit.runs.svag.verdict`, thresholds ``config``).

    Raises:
        RunError: out of GPU memory at the target batch size, a loss that is not a scalar, a
        forward/backward pass that fails, test functions that are not finite at the checkpoint
        (effective step 0), or a run that diverged (a NaN/Inf test function: no verdict, the
        error names l, the effective step and the test functions).
    """
    t0 = time.perf_counter()
    moments, state_note = _start_moments(plan)
    runs = [_run_one(plan, lv, moments, on_step) for lv in plan.ls]
    diverged = [r for r in runs if r.diverged_at is not None]
    if diverged:
        raise RunError(
            "SVAG run diverged (non-finite test function): "
            + "; ".join(_divergence(r) for r in diverged)
            + f"; no verdict at B' = {plan.target_batch_size}: the learning rate "
            f"{plan.target_optimizer.lr:g} may be too large there (try a smaller "
            "{target_batch_size} or {lr}), or the model or data give NaN/Inf",
            target_batch_size="target_batch_size",
            lr="lr",
        )
    verdict, tau = svag_verdict(runs, plan.target_optimizer, plan.target_batch_size, config,
                                len(plan.fixed_batches))  # fmt: skip
    return SvagResult(
        **plan.result_fields(), ls=plan.ls, effective_steps=plan.effective_steps,
        eval_every=plan.eval_every, seed=plan.seed, runs=tuple(runs), verdict=verdict,
        relaxation_steps=tau, sizing=plan.sizing, elapsed_s=time.perf_counter() - t0,
        notes=(*plan.notes, state_note, BUFFERS_NOTE),
        warnings=tuple(_run_warnings(plan, runs)),
    )  # fmt: skip
