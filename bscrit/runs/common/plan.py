"""From a spec to what every run plan holds: the checkpoint's model, the training data, the run's
optimizer and the one at B', the evaluation batches and the held-out examples (torch).

``bscrit svag`` and ``bscrit confirm`` plan alike: load the checkpoint and mark the parameters
the run trained (:func:`load_start`), scale the run's optimizer to B' by its rule
(:func:`scaled_target`), draw the fixed evaluation batches and held-out examples every run is
evaluated on (:meth:`Start.plan_fields`), all before anything runs. :class:`RunPlan` is the base
of :class:`~bscrit.runs.svag.plan.SvagPlan` and :class:`~bscrit.runs.confirm.plan.ConfirmPlan`. The
checkpoint file is only read; every run trains a deep copy of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from bscrit.engine.data import BatchSource
from bscrit.engine.objective import check_examples
from bscrit.engine.params import ParameterSelection, select_parameters
from bscrit.load.checkpoints import LoadedCheckpoint, load_model
from bscrit.load.device import resolve_device
from bscrit.load.factories import build_dataset, build_loss
from bscrit.load.optimizer import resolve_optimizer
from bscrit.optim import lr_schedule
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.optim.state import groups_of, indices
from bscrit.runs.common.evaluation import ModelEvaluator
from bscrit.theory.scaling import DEFAULT_ADAM_RULE, scale_groups, scale_optimizer

if TYPE_CHECKING:
    from bscrit.specfile.document import Spec

__all__ = ["RunPlan", "Start", "fixed_batches", "load_start", "scaled_target"]


@dataclass(kw_only=True)
class RunPlan:
    """What every run plan holds (its subclasses add their runs and cost)."""

    model: nn.Module  # the loaded checkpoint, on CPU; never modified (each run: a deep copy)
    loss_fn: Callable[[Any, Any], Tensor]
    train: BatchSource
    held_out: BatchSource | None
    held_out_indices: list[int]
    fixed_batches: list[list[int]]  # k training batches of size B' every evaluation uses
    device: torch.device
    mode: str
    batch_size: int
    target_batch_size: int
    dataset_size: int
    kappa: float
    rule: str
    rule_reference: str
    base_optimizer: OptimizerInfo | None
    target_optimizer: OptimizerInfo
    schedule: dict[str, Any]
    start_step: float
    warm_start: bool = True
    param_groups: tuple[int, ...] | None = None  # per trained parameter, its saved param group
    micro_batch_size: int | None = None  # gradients in chunks of at most this many examples
    spec: str | None = None
    checkpoint: str | None = None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def eval_examples(self) -> int | None:
        """Held-out examples evaluated (None without eval_data)."""
        return len(self.held_out_indices) if self.held_out is not None else None

    def forward_backward(self) -> dict[Any, int]:
        """Forward-backward passes of each run (training and evaluation), over all seeds."""
        raise NotImplementedError

    def result_fields(self) -> dict[str, Any]:
        """The fields of :class:`~bscrit.runs.common.result.RunResult` the plan settles."""
        return dict(
            batch_size=self.batch_size, target_batch_size=self.target_batch_size,
            kappa=self.kappa, rule=self.rule, rule_reference=self.rule_reference,
            base_optimizer=self.base_optimizer, target_optimizer=self.target_optimizer,
            schedule=self.schedule, start_step=self.start_step,
            eval_batches=len(self.fixed_batches), eval_examples=self.eval_examples,
            forward_backward=self.forward_backward(), device=str(self.device), spec=self.spec,
            checkpoint=self.checkpoint,
        )  # fmt: skip

    def evaluator(
        self, model: nn.Module, loss_fn: Callable[[Any, Any], Any], seed: int
    ) -> ModelEvaluator:
        """The test functions of ``model`` on the plan's fixed batches and held-out examples."""
        return ModelEvaluator(
            model, loss_fn, self.train, self.fixed_batches, mode=self.mode,
            held_out=self.held_out, held_out_indices=self.held_out_indices,
            eval_batch_size=min(self.target_batch_size, 1024), seed=seed,
            micro=self.micro_batch_size,
        )  # fmt: skip


def fixed_batches(n: int, batch_size: int, k: int, seed: int) -> list[list[int]]:
    """The k training batches every evaluation uses (the same for every run of a plan)."""
    gen = torch.Generator().manual_seed(seed + 1)
    return [torch.randperm(n, generator=gen)[:batch_size].tolist() for _ in range(k)]


def _held_out(
    spec: Spec, device: torch.device, eval_examples: int | None, seed: int
) -> tuple[BatchSource | None, list[int]]:
    """The spec's eval_data and the fixed random subset of ``eval_examples`` evaluated."""
    if spec.eval_data is None:
        return None, []
    eval_ds = build_dataset(spec.eval_data, spec.base_dir, "eval_data", str(spec.path))
    m = len(eval_ds)
    if eval_examples is None or eval_examples >= m:
        idx = list(range(m))
    else:
        gen = torch.Generator().manual_seed(seed + 2)
        idx = sorted(torch.randperm(m, generator=gen)[:eval_examples].tolist())
    return BatchSource(eval_ds, device, spec.eval_data.num_workers), idx


@dataclass
class Start:
    """What a run starts from: the checkpoint's model with the run's trained parameters marked
    (``requires_grad``), the training set and the run's optimizer at B (None when neither the
    spec nor the checkpoint names one)."""

    spec: Spec
    model: nn.Module
    checkpoint: LoadedCheckpoint
    train: Any  # the training dataset
    selection: ParameterSelection
    base: OptimizerInfo | None
    device: torch.device
    seed: int
    warnings: list[str]

    @property
    def param_groups(self) -> tuple[int, ...] | None:
        """Per trained parameter (in the model's order), the index of its saved param group;
        None when the optimizer state could not be matched to the model."""
        idx = self.selection.state_indices
        groups = groups_of(self.checkpoint.optimizer_state)
        if idx is None or not groups:
            return None
        where = {i: g for g, grp in enumerate(groups) for i in indices(grp)}
        found = tuple(where.get(i) for i in idx)
        return None if any(g is None for g in found) else found  # type: ignore[return-value]

    def default_start_step(self) -> float:
        """The checkpoint's step in the base run: the one it saved, else its scheduler's, else
        0."""
        if self.checkpoint.step is not None:
            return float(self.checkpoint.step)
        sched = self.checkpoint.schedule
        return float((sched or {}).get("step") or 0)

    def schedule(self) -> tuple[Any, list[str]]:
        """The base run's LR schedule, and notes on where it came from (docs/theory.md §5):
        the spec's ``schedule:``; else the one the checkpoint saved (its scheduler,
        :mod:`bscrit.load.scheduler`); else constant at the LR at the checkpoint."""
        ckpt, base = self.checkpoint, self.base
        if self.spec.schedule is not None and self.spec.schedule.given:
            return self.spec.schedule, []
        notes = [ckpt.schedule_note] if ckpt.schedule_note else []
        if ckpt.schedule is not None:
            notes.append(
                f"the base run's LR schedule, read from the checkpoint: "
                f"{lr_schedule.describe(ckpt.schedule)}; every run continues its "
                "remaining steps (at B': at κ × the step, scaled by the rule)"
            )
            if ckpt.schedule.get("cycle_momentum") and base is not None:
                notes.append("OneCycle also cycled the momentum: the runs keep the momentum it "
                             "pairs with the peak LR (base_momentum) at every step")  # fmt: skip
            return ckpt.schedule, notes
        if base is None or base.lr_current is None or base.lr <= 0:
            notes.append("no schedule in the spec or the checkpoint: every run uses a constant "
                         "LR (the base LR, scaled by the rule at B')")  # fmt: skip
            return None, notes
        level = base.lr_current / base.lr
        notes.append(f"no schedule in the spec or the checkpoint: every run uses a constant LR, "
                     f"the LR at the checkpoint ({base.lr_current:.4g}; scaled by the rule at "
                     "B')")  # fmt: skip
        return {"name": "constant", "level": level, "source": "the LR at the checkpoint"}, notes

    @property
    def dataset_size(self) -> int:
        return len(self.train)

    def plan_fields(
        self, target_batch_size: int, eval_batches: int, eval_examples: int | None
    ) -> dict[str, Any]:
        """The :class:`RunPlan` fields known from the start alone: the model, the data, the loss
        (checked on the training data and on eval_data, before any run), the k fixed batches of
        B', the held-out examples, B, B', κ and where it all came from."""
        spec, dev = self.spec, self.device
        held_out, held_idx = _held_out(spec, dev, eval_examples, self.seed)
        loss_fn = build_loss(spec)
        check_examples(self.train, loss_fn, str(spec.path))
        if held_out is not None:
            check_examples(held_out.dataset, loss_fn, str(spec.path), "eval_data")
        n = self.dataset_size
        train = BatchSource(self.train, dev, spec.data.num_workers)
        return dict(
            model=self.model, loss_fn=loss_fn, train=train, held_out=held_out,
            held_out_indices=held_idx,
            fixed_batches=fixed_batches(n, target_batch_size, eval_batches, self.seed),
            device=dev, mode=spec.measure.mode, batch_size=spec.batch_size,
            target_batch_size=int(target_batch_size), dataset_size=n,
            kappa=target_batch_size / spec.batch_size, micro_batch_size=spec.micro_batch_size,
            spec=str(spec.path), checkpoint=str(self.checkpoint.path), warnings=self.warnings,
            param_groups=self.param_groups,
        )  # fmt: skip


def load_start(
    spec: Spec,
    checkpoint: str | Path | None,
    *,
    seed: int | None,
    device: str | None,
    unsafe: bool,
    check_size: Callable[[int], list[str]],
) -> Start:
    """Load the checkpoint and the training data of a spec, mark the parameters the run trained
    (those of the checkpoint's optimizer state, docs/theory.md §1) and read the run's optimizer.

    ``check_size(n)`` is told the training set's size before anything else is read: it raises
    (a batch larger than the data) or returns warnings; ``seed`` defaults to the spec's
    ``measure.seed``, ``device`` to its ``measure.device``.

    Raises:
        DataError, CheckpointError: the spec's data or checkpoint cannot be loaded.
    """
    seed = spec.measure.seed if seed is None else int(seed)
    dev = resolve_device(device or spec.measure.device)
    model, ckpt = load_model(spec, checkpoint, unsafe=unsafe)
    train_ds = build_dataset(spec.data, spec.base_dir, "data", str(spec.path))
    warnings = check_size(len(train_ds))
    sel = select_parameters(model, ckpt.optimizer_state, f"checkpoint {ckpt.path}")
    for name, p in model.named_parameters():  # bscrit's own copy of the model
        p.requires_grad_(name in sel.names)
    warnings += [sel.warning] if sel.warning else []
    base, opt_notes = resolve_optimizer(spec, ckpt)
    base = None if base is None else replace(base, name=base.name.lower())
    return Start(spec, model, ckpt, train_ds, sel, base, dev, seed, warnings + opt_notes)


def scaled_target(
    base: OptimizerInfo,
    overrides: Mapping[str, float | None],
    kappa: float,
    *,
    overridden: str,
    runs: str,
    groups: tuple[int, ...] | None = None,
    adam_rule: str = DEFAULT_ADAM_RULE,
) -> tuple[OptimizerInfo, list[str]]:
    """The run's optimizer scaled to B' = κB by its rule (:func:`scale_optimizer`, each param
    group scaled alike: :func:`scale_groups`), then the ``overrides`` (``--lr`` etc.; None: not
    given), and the notes saying what was overridden (``overridden``: "overridden on the command
    line") and how ``runs`` ("both branches") treat the param groups (``groups``: each trained
    parameter's group, None when they could not be matched)."""
    scaled = scale_groups(base, scale_optimizer(base, kappa, adam_rule), kappa, adam_rule)
    if base.lr_current is not None and base.lr > 0:  # the LR at the checkpoint, scaled alike
        scaled = replace(scaled, lr_current=base.lr_current * scaled.lr / base.lr)
    target = optim.with_values(scaled, dict(overrides))
    given = [k for k, v in overrides.items() if v is not None]
    notes = [f"{overridden}: {', '.join(given)}"] if given else []
    if optim.group_optimizers(base):
        if groups is None:
            notes.append(f"the base run's {len(base.groups)} param groups have different values "
                         f"but could not be matched to the model's parameters; {runs} use the "
                         "main group's for every parameter")  # fmt: skip
        else:
            notes.append(f"{runs} train each of the base run's {len(base.groups)} param groups "
                         "with its own values (scaled by the rule at B')")  # fmt: skip
    return target, notes
