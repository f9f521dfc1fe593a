"""The points ``bscrit measure`` measures, one after the other: each checkpoint loaded (its model
on the device, its optimizer, the parameters its optimizer updates), or the points of training
continued from one checkpoint (``--sample-steps``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo

if TYPE_CHECKING:
    from bscrit.engine.distributed import DistContext
    from bscrit.specfile.document import Spec
    from bscrit.stats.sample_plan import SamplePlan
    from bscrit.workflows.plan import MeasurePlan


def measured_points(
    plan: MeasurePlan,
    spec: Spec,
    dist: DistContext | None,
    on_checkpoint: Callable[[str], None] | None,
    on_sampling: Callable[[SamplePlan, OptimizerInfo], None] | None,
) -> Iterator[tuple[Any, OptimizerInfo | None, Mapping[str, Any] | None, Any, list[str]]]:
    """``(model on the device, its optimizer, the optimizer state, the parameter selection,
    warnings)`` at each point to measure:
    every checkpoint in turn, or the points of continued training from one (``--sample-steps``,
    :func:`bscrit.engine.sampling.sampled_points`, which also sets the plan's labels and steps)."""
    from bscrit.engine.params import select_parameters
    from bscrit.engine.sampling import sampled_points
    from bscrit.load.checkpoints import load_model
    from bscrit.load.optimizer import resolve_optimizer

    for path in plan.paths:
        if on_checkpoint is not None:
            on_checkpoint(str(path))
        if dist is not None:  # ready for this rank (sharded, under --shard)
            model, ckpt = dist.load_model(spec, path, unsafe=plan.options.unsafe_load)
        else:
            model, ckpt = load_model(spec, path, unsafe=plan.options.unsafe_load)
        opt, notes = resolve_optimizer(spec, ckpt)
        # the parameters the run's optimizer updates (docs/theory.md §1, "Which parameters")
        sel = select_parameters(model, ckpt.optimizer_state, f"checkpoint {path}")
        if opt is not None and sel.group_params:
            opt = optim.with_group_params(opt, sel.group_params)
        notes = ([sel.warning] if sel.warning else []) + list(notes)
        model.to(plan.device)
        if plan.options.sampling:
            for point in sampled_points(plan, model, sel, ckpt.optimizer_state, opt, on_sampling):
                yield (*point, sel, notes)
        else:
            yield model, opt, ckpt.optimizer_state, sel, notes
