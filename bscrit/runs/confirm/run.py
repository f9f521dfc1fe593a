"""Running the branches of a :class:`~bscrit.runs.confirm.plan.ConfirmPlan`: every seed, base then
target, evaluated on the shared grid of example counts, then the verdict (torch).

Each branch trains a deep copy of the checkpoint's model with PyTorch's own optimizer, one batch
of B (base) or B' (target) distinct random examples per step, drawn independently from step to
step by a generator seeded with the seed (the setting of [LMA21] Thm 4.3, as in ``bscrit svag``);
the global torch seed (dropout, augmentation) is set to the seed inside
``torch.random.fork_rng``, so the caller's RNG is untouched. BatchNorm running statistics are
updated by every training step, as in training; the evaluations restore them
(:class:`~bscrit.runs.common.evaluation.ModelEvaluator`).

Optimizer state at the branch point (docs/confirm.md):

- SGD: the checkpoint's momentum buffers for both branches when it holds them (the buffer
  estimates ḡ/(1 − μ), the same at every batch size; its noise part is forgotten within
  1/(1 − μ) steps), else fresh;
- Adam / AdamW / RMSprop: the checkpoint's state when it holds one: the base branch as is; the
  target branch with the first moment unchanged and the second moment divided by κ
  ([MLPA22] Thm 5.3: the SDE state is (θ, m, u = v/σ²) and σ² ∝ 1/B); else the warm start of
  ``bscrit svag`` (:func:`bscrit.runs.common.warm.warm_start`) from the gradient moments
  estimated at each branch's batch size.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from bscrit.errors import RunError
from bscrit.optim import registry as optim
from bscrit.runs.common.evaluation import forward_errors, loss_gradient
from bscrit.runs.common.loop import replica, train_on_grid
from bscrit.runs.common.optimizer import lr_factor, make_optimizer
from bscrit.runs.common.warm import (
    SECOND_MOMENT_KEYS,
    GradientMoments,
    model_gradient_moments,
    warm_start,
)
from bscrit.runs.confirm.budget import DECAY_FRACTION
from bscrit.runs.confirm.plan import ConfirmPlan
from bscrit.runs.confirm.results import Branch, ConfirmResult
from bscrit.runs.confirm.verdict import (
    DIVERGENCE_FACTOR,
    LOSS_METRICS,
    ConfirmVerdict,
    decide,
    difference,
    tolerance_and_unit,
)

__all__ = ["decay_factor", "load_saved_state", "run_branch", "run_confirm"]

#: What every result says about the running statistics.
BUFFERS_NOTE = (
    "BatchNorm running statistics: updated by every training step, as in training; the "
    "evaluation passes restore them"
)
#: Why the Adam/RMSprop second moment is divided by κ at the branch point.
SECOND_MOMENT_NOTE = (
    "second moment v/κ at the branch point: [MLPA22] Thm 5.3 compares runs whose SDE states "
    "(θ, m, u = v/σ²) agree, and the gradient noise σ² ∝ 1/B, so at B' = κB the same u is v/κ; "
    "the first moment m is kept"
)


def decay_factor(step: int, total: int, fraction: float = DECAY_FRACTION) -> float:
    """``--decay``: LR multiplier of step ``step`` (0-based) of ``total``: 1, then a linear ramp
    to 0 over the last ``fraction`` of the steps (the step's end point: the last step gets 1/D)."""
    d = max(1, round(fraction * total))
    return min(1.0, (total - step) / d)


def load_saved_state(
    optimizer: torch.optim.Optimizer,
    saved: Sequence[Mapping[str, Any]],
    kappa: float = 1.0,
    params: Sequence[Tensor] | None = None,
) -> None:
    """Give ``optimizer`` the checkpoint's per-parameter state, with every second moment
    (``exp_avg_sq``, ``square_avg``) divided by ``kappa`` ([MLPA22] Thm 5.3; κ = 1 for the base
    branch). ``saved`` follows ``params`` (the trained parameters in the model's order); the
    optimizer may hold them in several param groups (its ``state_dict`` numbers them group by
    group), so each parameter gets its own state by identity. Without ``params`` the optimizer's
    order is ``saved``'s. The hyperparameters stay ``optimizer``'s; PyTorch's
    ``load_state_dict`` moves the tensors to each parameter's device and dtype. Other keys
    (momentum buffers, ``exp_avg``, ``grad_avg``, ``step``) are copied."""
    sd = optimizer.state_dict()
    order = [p for g in optimizer.param_groups for p in g["params"]]
    at = {id(p): i for i, p in enumerate(params)} if params is not None else None
    state: dict[int, dict[str, Any]] = {}
    for j, p in enumerate(order):
        st = saved[at[id(p)] if at is not None else j]
        new: dict[str, Any] = {}
        for k, v in st.items():
            if isinstance(v, Tensor):
                v = v.detach().clone()
                if k in SECOND_MOMENT_KEYS:
                    v = v / kappa
            new[k] = v
        state[j] = new
    sd["state"] = state
    optimizer.load_state_dict(sd)


def _start(
    plan: ConfirmPlan, which: str, moments: dict[str, GradientMoments]
) -> Callable[[torch.optim.Optimizer, list[Tensor]], None]:
    """How the optimizer of branch ``which`` starts (applied after it is built)."""
    if plan.saved_state is not None:
        kappa = plan.kappa if which == "target" else 1.0
        saved = plan.saved_state
        return lambda opt, params: load_saved_state(opt, saved, kappa, params)
    if which in moments:
        m = moments[which]
        return lambda opt, params: warm_start(opt, params, m, 1)
    return lambda opt, params: None


def _state_note(plan: ConfirmPlan) -> str:
    name = plan.base_optimizer.name
    adaptive = optim.get(name).adaptive
    if plan.saved_state is not None:
        if adaptive:
            return f"{name} state {plan.state_why}: base as saved; target: {SECOND_MOMENT_NOTE}"
        return (f"SGD momentum buffers {plan.state_why}, unchanged for both branches (the "
                "buffer estimates ḡ/(1 − μ) at any batch size)")  # fmt: skip
    if not adaptive:
        return f"SGD momentum starts fresh in both branches ({plan.state_why})"
    if plan.warm_start:
        return (
            f"{name} state warm-started as in `bscrit svag` ({plan.state_why}): m0 = mean "
            f"gradient, v0 = mean squared gradient over {len(plan.fixed_batches)} fixed batches "
            f"at each branch's batch size (B for the base, B' for the target)"
        )
    return f"{name} state starts from zeros in both branches ({plan.state_why})"


def _moments(plan: ConfirmPlan) -> dict[str, GradientMoments]:
    """The gradient moments that warm-start an adaptive optimizer, at B and at B'."""
    if not plan.uses_warm_start():
        return {}
    model = copy.deepcopy(plan.model).to(plan.device)
    out = {}
    for which, batches in (("base", plan.base_batches), ("target", plan.fixed_batches)):
        out[which] = model_gradient_moments(
            model, plan.loss_fn, plan.train, batches, plan.mode, seed=plan.seeds[0],
            micro=plan.micro_batch_size,
        )  # fmt: skip
    return out


def _blown_up(values: Mapping[str, float], start: Mapping[str, float]) -> str:
    """The losses above ``DIVERGENCE_FACTOR`` × their value at the checkpoint ("" if none)."""
    return ", ".join(
        f"{k} = {values[k]:.4g} > {DIVERGENCE_FACTOR:g} × {start[k]:.4g}"
        for k in LOSS_METRICS
        if k in values and k in start and values[k] > DIVERGENCE_FACTOR * abs(start[k])
    )


def run_branch(
    plan: ConfirmPlan,
    which: str,
    seed: int,
    *,
    start: Callable[[torch.optim.Optimizer, list[Tensor]], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> Branch:
    """Train branch ``which`` ("base" or "target") of ``seed`` from the checkpoint (a deep copy)
    and evaluate it at the grid points. A non-finite test function, or a loss above
    ``DIVERGENCE_FACTOR`` × its value at the checkpoint, stops the branch (``diverged_at``; the
    remaining points are NaN).

    Raises:
        RunError: a test function is not finite at the checkpoint itself (before any step), out
            of memory, a forward/backward pass that fails.
    """
    if which == "base":
        bsz, opt, sched, grid = plan.batch_size, plan.base_optimizer, plan.schedule, plan.grid_base
        s0 = plan.start_step
    else:
        bsz, opt, sched = plan.target_batch_size, plan.target_optimizer, plan.target_schedule
        grid, s0 = plan.grid_target, plan.start_step / plan.kappa
    total = grid[-1]
    where = f"confirm {which} branch (B = {bsz}), seed {seed}"
    with replica(plan, seed, where, bsz) as (model, loss_fn):
        params = [p for p in model.parameters() if p.requires_grad]
        stream = plan.train.stream(bsz, torch.Generator().manual_seed(seed))
        evaluate = plan.evaluator(model, loss_fn, plan.seeds[0])
        optimizer = make_optimizer(params, opt, plan.param_groups)
        if start is not None:
            start(optimizer, params)
        decay = plan.decay
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda k: (
                lr_factor(sched, s0 + k, s0 + k + 1, s0 + total)
                * (decay_factor(k, total) if decay else 1.0)
            ),
        )
        steps = 0

        def step() -> None:
            nonlocal steps
            with forward_errors(f"in the {where} at step {steps}"):
                x, y = next(stream)
                grads = loss_gradient(model, loss_fn, params, x, y, plan.micro_batch_size)
            for p, gr in zip(params, grads, strict=True):
                p.grad = gr
            optimizer.step()
            scheduler.step()
            steps += 1

        curve = train_on_grid(
            grid, step, evaluate, blown_up=lambda v, s: bool(_blown_up(v, s)), on_step=on_step,
            at_start=lambda bad: (f"{where}: {bad} at the checkpoint, before any step: the "
                                  "model or the loss is not finite at its weights"),
        )  # fmt: skip
    return Branch(
        name=which,
        seed=seed,
        batch_size=bsz,
        steps=tuple(grid),
        examples=tuple(g * bsz for g in grid),
        values=curve.values,
        diverged_at=None if curve.diverged is None else grid[curve.diverged] * bsz,
        elapsed_s=curve.elapsed_s,
    )


def _metric(plan: ConfirmPlan) -> str:
    return "eval_loss" if plan.held_out is not None and plan.held_out_indices else "train_loss"


def run_confirm(
    plan: ConfirmPlan,
    *,
    tolerance: float | None = None,
    tolerance_abs: float | None = None,
    on_step: Callable[[int], None] | None = None,
) -> ConfirmResult:
    """Run both branches for every seed of the plan and give the verdict.

    Args:
        tolerance: δ relative, a fraction of L_B on d = (L_B' − L_B)/L_B (default
            :data:`~bscrit.runs.confirm.verdict.DEFAULT_TOLERANCE`).
        tolerance_abs: δ absolute, in the loss's units (nats for a cross-entropy) on
            d = L_B' − L_B; not with ``tolerance`` (a :class:`UsageError`).
        on_step: called with the number of optimizer steps done (progress bars).

    Returns:
        The :class:`~bscrit.runs.confirm.results.ConfirmResult`.

    Raises:
        UsageError: both tolerances, or one not a finite number > 0.
        RunError: a base branch diverged (the run itself is unstable from this checkpoint: no
            verdict about B'), a non-finite start, out of memory, a failing forward pass.
    """
    tol, unit = tolerance_and_unit(tolerance, tolerance_abs)
    t0 = time.perf_counter()
    moments = _moments(plan)
    starts = {w: _start(plan, w, moments) for w in ("base", "target")}
    metric = _metric(plan)
    branches: list[Branch] = []
    d: list[float] = []
    diverged: list[str] = []
    for seed in plan.seeds:
        base = run_branch(plan, "base", seed, start=starts["base"], on_step=on_step)
        if base.diverged_at is not None:
            raise RunError(
                f"the base branch (B = {plan.batch_size}, {optim.describe(plan.base_optimizer)})"
                f" diverged at {base.diverged_at} examples with seed {seed}: the run's own "
                "hyperparameters are unstable from this checkpoint; no verdict about B'"
            )
        target = run_branch(plan, "target", seed, start=starts["target"], on_step=on_step)
        branches += [base, target]
        if target.diverged_at is not None:
            diverged.append(f"seed {seed} at {target.diverged_at} examples")
        d.append(difference(base.final(metric, plan.tail_points),
                            target.final(metric, plan.tail_points), unit))  # fmt: skip
    verdict = decide(d, tol, metric=metric, diverged=diverged, unit=unit,
                     target_batch_size=plan.target_batch_size)  # fmt: skip
    return _result(plan, branches, verdict, time.perf_counter() - t0)


def _result(
    plan: ConfirmPlan, branches: list[Branch], verdict: ConfirmVerdict, elapsed: float
) -> ConfirmResult:
    notes = list(plan.notes) + [
        "batches: B distinct random examples per step, independent from step to step; the seed "
        "sets them and the global torch seed (dropout), the same seeds for both branches",
        BUFFERS_NOTE,
    ]
    if plan.decay_text:
        notes.append(f"decay: {plan.decay_text}")
    return ConfirmResult(
        **plan.result_fields(), examples=plan.examples_target, examples_why=plan.examples_why,
        seeds=plan.seeds, branches=tuple(branches), verdict=verdict,
        tail_points=plan.tail_points, decay=plan.decay_text, dataset_size=plan.dataset_size,
        optimizer_state=_state_note(plan), elapsed_s=elapsed, notes=tuple(notes),
        warnings=tuple(plan.warnings),
    )  # fmt: skip
