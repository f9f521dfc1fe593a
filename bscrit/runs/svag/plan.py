"""From a spec to a SVAG plan: the target hyperparameters, the fixed evaluation batches and the
cost, all known before anything runs (torch).

Seeds: every l starts from the same checkpoint weights, the same optimizer state, the same batch
generator seed and the same global torch seed (dropout, augmentation), and is evaluated on the
same fixed batches and held-out examples (drawn here), so the runs differ only by l. The
checkpoint file is only read. Running the plan: :func:`bscrit.runs.svag.run.run_plan`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bscrit.boundary import INT64_MAX
from bscrit.checker import check_batch_size
from bscrit.errors import UsageError
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.runs.common.optimizer import target_schedule
from bscrit.runs.common.plan import RunPlan, load_start, scaled_target
from bscrit.runs.svag.verdict import DEFAULT_EFFECTIVE_STEPS, DEFAULT_RELAXATION_TIMES
from bscrit.stats.equilibrium import relaxation_steps
from bscrit.theory.scaling import DEFAULT_ADAM_RULE, check_adam_rule

#: Evaluation points per run by default (every E/40 effective steps): the tail window's blocks
#: of τ/2 need a few points each.
EVAL_POINTS = 40

if TYPE_CHECKING:
    from bscrit.specfile.document import Spec

__all__ = ["SvagPlan", "parse_ls", "prepare_svag"]


@dataclass(kw_only=True)
class SvagPlan(RunPlan):
    """Everything needed to run, and what it will cost; built by :func:`prepare_svag`.

    ``base_optimizer`` is None when the hyperparameters at B' all come from the command line."""

    ls: tuple[int, ...]
    effective_steps: int
    eval_every: int
    seed: int
    relaxation_steps: float | None = None  # τ = 1/(2η'λ) at B' (effective steps), if known
    sizing: str = ""  # how effective_steps was chosen

    @property
    def eval_points(self) -> int:
        return len(range(0, self.effective_steps, self.eval_every)) + 1

    def train_passes(self, l: int) -> int:  # noqa: E741
        """Forward-backward passes of the SVAG steps: 2 l per effective step."""
        return 2 * l * self.effective_steps

    def eval_passes(self) -> int:
        """Forward-backward passes of the evaluations (k fixed batches per evaluation point)."""
        return self.eval_points * len(self.fixed_batches)

    def forward_backward(self) -> dict[int, int]:
        return {lv: self.train_passes(lv) + self.eval_passes() for lv in self.ls}

    @property
    def total_steps(self) -> int:
        """SVAG steps over all runs (the progress bar's total)."""
        return sum(lv * self.effective_steps for lv in self.ls)


def parse_ls(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,2,4"`` → (1, 2, 4): distinct integers ≥ 1, at least three (sorted)."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",") if p.strip()]
        try:
            ls = [int(p) for p in parts]
        except ValueError:
            raise UsageError(
                f"{{l}} expects integers separated by commas (e.g. 1,2,4), got {text!r}", l="l"
            ) from None
    else:
        ls = [int(x) for x in text]
    if any(x < 1 or x > INT64_MAX for x in ls):
        raise UsageError(f"{{l}}: every l must be an integer in [1, 2⁶³ − 1], got {ls}", l="l")
    ls = sorted(set(ls))
    if len(ls) < 3:
        raise UsageError(
            "{l} needs at least three distinct values (e.g. 1,2,4) to tell 'SGD left the SDE' "
            f"from 'SVAG not converged', got {ls}",
            l="l",
        )
    return tuple(ls)


def run_length(
    target: OptimizerInfo, effective_steps: int | None, relaxation_times: float | None
) -> tuple[int, float | None, str]:
    """``(E, τ, how)``: the run length in effective steps, τ = 1/(2η'λ) at B' and how E was set.

    ``effective_steps`` given: that. Else ``relaxation_times`` (default
    :data:`~bscrit.runs.svag.verdict.DEFAULT_RELAXATION_TIMES`) × τ of the target optimizer
    ([LMA21] eq. (10), :func:`bscrit.stats.equilibrium.relaxation_steps`), at least 20; with no
    τ known, :data:`~bscrit.runs.svag.verdict.DEFAULT_EFFECTIVE_STEPS`.
    """
    tau, why = relaxation_steps(target)
    if relaxation_times is not None and not relaxation_times > 0:
        raise UsageError(
            f"{{relaxation_times}} must be > 0, got {relaxation_times}",
            relaxation_times="relaxation_times",
        )
    if effective_steps is not None:
        how = f"{effective_steps} effective steps (given)"
        if tau is not None:
            how += f" = {effective_steps / tau:.2g} relaxation times τ = {tau:.4g} ({why})"
        return int(effective_steps), tau, how
    if tau is None:
        return DEFAULT_EFFECTIVE_STEPS, None, (
            f"{DEFAULT_EFFECTIVE_STEPS} effective steps (the default: {why})"
        )  # fmt: skip
    k = DEFAULT_RELAXATION_TIMES if relaxation_times is None else float(relaxation_times)
    if not k * tau <= INT64_MAX:  # a tiny η'λ: τ beyond any step count (inf included)
        raise UsageError(
            f"{k:g} relaxation times τ = 1/(2η'λ) = {tau:.4g} at B' are more steps than int64 "
            "counts: give {effective_steps}",
            effective_steps="effective_steps",
        )
    e = max(20, math.ceil(k * tau))
    return e, tau, f"{e} effective steps = {k:g} relaxation times τ = 1/(2η'λ) = {tau:.4g} at B'"


def _check_lengths(target_batch_size: int, effective_steps: int | None, eval_batches: int) -> None:
    check_batch_size(target_batch_size, "target_batch_size")
    if effective_steps is not None and effective_steps < 1:
        raise UsageError(
            f"{{effective_steps}} must be >= 1, got {effective_steps}",
            effective_steps="effective_steps",
        )
    if eval_batches < 2:
        raise UsageError(
            f"{{eval_batches}} must be >= 2 (N needs two batches), got {eval_batches}",
            eval_batches="eval_batches",
        )


def _check_dataset_size(n: int, target_batch_size: int) -> list[str]:
    """A UsageError when B' > n (a batch holds distinct examples); a warning when B' > n/2."""
    if target_batch_size > n:
        raise UsageError(
            f"{{target_batch_size}} {target_batch_size} exceeds the {n} training examples: a "
            "batch holds distinct examples, so SVAG can only run at B' <= n",
            target_batch_size="target_batch_size",
        )
    if target_batch_size <= n // 2:
        return []
    return [
        f"B' = {target_batch_size} is more than half of the {n} training examples: the two "
        "batches of a SVAG step overlap heavily and the gradient noise is small "
        "(finite-population factor (n − B')/(n − 1))"
    ]


def _target_optimizer(
    base: OptimizerInfo | None,
    optimizer_name: str | None,
    overrides: dict[str, float | None],
    kappa: float,
    groups: tuple[int, ...] | None = None,
    adam_rule: str = DEFAULT_ADAM_RULE,
) -> tuple[OptimizerInfo, str, str, list[str]]:
    """``(target, rule, rule_reference, notes)``: the base optimizer scaled to B' by its rule and
    overridden, or (no base optimizer) the one given on the command line."""
    if base is not None and optimizer_name is not None and optimizer_name.lower() != base.name:
        raise UsageError(
            f"{{optimizer}} {optimizer_name} differs from the base run's "
            f"{base.name}; scaling one optimizer's hyperparameters into another is not defined "
            "(drop {optimizer})",
            optimizer="optimizer",
        )
    if base is None:
        if optimizer_name is None or overrides.get("lr") is None:
            raise UsageError(
                "no optimizer: neither the spec (optimizer:) nor the checkpoint names one; give "
                "{optimizer} and the target hyperparameters ({lr}, ...)",
                optimizer="optimizer",
                lr="lr",
            )
        _runnable(optimizer_name)
        target = optim.with_values(OptimizerInfo(name=optimizer_name.lower(), lr=1.0), overrides)
        notes = ["target hyperparameters given on the command line (no base optimizer)"]
        return target, "given", "hyperparameters given on the command line", notes
    d = _runnable(base.name)
    target, notes = scaled_target(
        base, overrides, kappa, overridden="overridden on the command line", runs="the SVAG runs",
        groups=groups, adam_rule=adam_rule,
    )  # fmt: skip
    if d.adaptive and adam_rule != DEFAULT_ADAM_RULE:
        return target, d.rule, f"{d.rule_reference}, --adam-rule {adam_rule}", notes
    return target, d.rule, d.rule_reference, notes


def _runnable(name: str) -> optim.OptimizerDef:
    """The registry entry of an optimizer bscrit's SVAG runs support; a clear error otherwise."""
    d = optim.scalable(name)
    if not d.svag:
        runs = ", ".join(n for n, o in optim.REGISTRY.items() if o.svag)
        raise UsageError(
            f"bscrit's SVAG runs support {runs}, not {d.name}: its SVAG form is not in "
            "[MLPA22] §6 (docs/theory.md §6); use `bscrit scale` for its scaled hyperparameters"
        )
    return d


def _momentum_note(target: OptimizerInfo) -> list[str]:
    """Momentum is kept unchanged for every l; say which theorem does not cover that."""
    if optim.flat(target).get("momentum", 0.0) <= 0:
        return []
    d = optim.get(target.name)
    if d.adaptive:
        return [f"{d.torch_class} momentum is kept unchanged for every l (not covered by [MLPA22])"]
    return [
        f"{d.torch_class} momentum {target.momentum:g} is kept unchanged for every l (a "
        "heuristic: the SVAG theorem [LMA21 Thm 4.3] covers plain SGD)"
    ]


def _schedule_note(sched: dict[str, Any], target_batch_size: int, start_step: float) -> list[str]:
    if sched["name"] == "read":
        return [f"schedule {sched['describe']}, continued from step {start_step:g} at B' = "
                f"{target_batch_size} (base-run step {start_step * sched['kappa']:g})"]  # fmt: skip
    if sched["name"] == "constant" and not sched["warmup_steps"]:
        return []
    return [
        f"schedule {sched['name']} (warm-up {sched['warmup_steps']}, milestones "
        f"{sched['milestones']}, total {sched['total_steps']}) in steps at B' = "
        f"{target_batch_size}, run on effective steps from step {start_step:g}"
    ]


def prepare_svag(
    spec: Spec,
    *,
    target_batch_size: int,
    ls: Sequence[int] = (1, 2, 4),
    effective_steps: int | None = None,
    relaxation_times: float | None = None,
    checkpoint: str | Path | None = None,
    optimizer_name: str | None = None,
    overrides: dict[str, float | None] | None = None,
    eval_every: int | None = None,
    eval_batches: int = 8,
    eval_examples: int | None = 2048,
    start_step: float | None = None,
    seed: int | None = None,
    device: str | None = None,
    warm_start: bool = True,
    unsafe: bool = False,
    adam_rule: str = DEFAULT_ADAM_RULE,
) -> SvagPlan:
    """Load the checkpoint and data of a spec and work out the target hyperparameters and cost.

    Target hyperparameters: the base run's optimizer (spec ``optimizer``, else the checkpoint's)
    at the spec's ``batch_size`` B, scaled to B' by its rule (linear for SGD, square-root for
    Adam / AdamW / RMSprop; :func:`bscrit.theory.scaling.scale_optimizer`); then the ``overrides``
    (``--lr`` etc.) replace target values. Without a known optimizer, ``optimizer_name`` and an
    ``lr`` override are needed (rule ``"given"``).

    Raises:
        UsageError: B' larger than the training set (a batch holds distinct examples), no
            optimizer, bad l, κ the square-root rule cannot take, ...
        DataError, CheckpointError: the spec's data or checkpoint cannot be loaded.
    """
    ls = parse_ls(ls)
    _check_lengths(target_batch_size, effective_steps, eval_batches)
    start = load_start(
        spec, checkpoint, seed=seed, device=device, unsafe=unsafe,
        check_size=lambda n: _check_dataset_size(n, target_batch_size),
    )  # fmt: skip
    kappa = target_batch_size / spec.batch_size
    target, rule, reference, notes = _target_optimizer(
        start.base, optimizer_name, dict(overrides or {}), kappa, start.param_groups,
        check_adam_rule(adam_rule),
    )  # fmt: skip
    notes += _momentum_note(target)
    steps, tau, sizing = run_length(target, effective_steps, relaxation_times)
    schedule, sched_notes = start.schedule()
    sched = target_schedule(schedule, kappa)
    if start_step is None:  # svag counts steps at B': the checkpoint's step in the base run / κ
        start_step = start.default_start_step() / kappa if isinstance(schedule, dict) else 0.0
    notes += sched_notes + _schedule_note(sched, target_batch_size, start_step)
    shared = start.plan_fields(target_batch_size, eval_batches, eval_examples)
    if shared["held_out"] is None:
        notes.append("no eval_data in the spec: no held-out loss/accuracy")
    every = int(eval_every) if eval_every is not None else max(1, steps // EVAL_POINTS)
    return SvagPlan(
        **shared, rule=rule, rule_reference=reference, base_optimizer=start.base,
        target_optimizer=target, schedule=sched, start_step=float(start_step), ls=ls,
        effective_steps=steps, eval_every=every, seed=start.seed, warm_start=warm_start,
        relaxation_steps=tau, sizing=sizing, notes=notes,
    )  # fmt: skip
