"""``bscrit measure``'s work: each planned point (a checkpoint, or a point of training continued
from one) loaded, measured by the engine and summarised, then handed to
:func:`bscrit.workflows.assemble.build_measurement`; and the torchrun session around it.

The plan (:mod:`bscrit.workflows.plan`) is made and checked before any of this. Nothing here
prints; torch is imported lazily.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bscrit.optim.registry import OptimizerInfo
from bscrit.workflows.plan import MeasureOptions, MeasurePlan, plan_line, plan_measurement

if TYPE_CHECKING:
    from bscrit.artifacts.measurement import Measurement
    from bscrit.engine.distributed import DistContext
    from bscrit.engine.groups import SumsPlan
    from bscrit.specfile.document import Spec
    from bscrit.stats.sample_plan import SamplePlan
    from bscrit.workflows.assemble import MeasuredPoint

PathLike = str | os.PathLike[str]
#: ``(description, total) -> context manager yielding advance(n)`` (a progress bar).
ProgressFactory = Callable[[str, int], Any]


def _memory_now(sums: SumsPlan, device: Any, ranks: int) -> str:
    """:meth:`~bscrit.engine.groups.SumsPlan.note` with this process's peaks so far (host; CUDA)."""
    from bscrit.engine.allocator import peak_rss

    device_peak = None
    if getattr(device, "type", None) == "cuda":
        import torch

        device_peak = int(torch.cuda.max_memory_allocated(device))
    return sums.note(peak_rss(), device_peak, ranks)


def _estimator(
    plan: MeasurePlan,
    dist: DistContext | None,
    on_info: Callable[[str], None] | None,
    memory: list[Any] | None = None,
) -> tuple[Callable[[SumsPlan], None], Callable[[float], None]]:
    """``(on_plan, estimate)`` for the engine: told where the sums live (and the memory plan,
    kept in ``memory`` and printed when large), then the seconds per batch, they tell
    ``on_info`` the plan line of a long measurement."""
    from bscrit.report.memory_plan import memory_line
    from bscrit.stats.memory_plan import estimate_seconds

    sums: list[SumsPlan] = []  # told by the engine before the first batch

    def on_plan(s: SumsPlan) -> None:
        sums.append(s)
        if memory is not None and s.memory is not None:
            memory.append(s.memory)
        if s.memory is not None and on_info is not None:
            line = memory_line(s.memory)
            if line is not None:
                on_info(line)

    def estimate(seconds_per_batch: float) -> None:
        ranks = dist.world_size if dist is not None else 1
        now = _memory_now(sums[0], plan.device, ranks) if sums else None
        spilled = bool(sums) and sums[0].spilled
        sharing = 1 if getattr(dist, "sharded", False) else ranks  # sharded: all do every batch
        line = plan_line(plan, seconds_per_batch, sharing, now, spilled)
        if memory:  # the plan's time: the batches of one rank x its seconds per batch
            k, i = plan.adaptive.max_batches if plan.adaptive else plan.k, memory[0].inputs
            seconds = estimate_seconds(k, seconds_per_batch, i.world_size, i.sharded)
            memory[0] = replace(memory[0], seconds=seconds)
        if line is not None and on_info is not None:
            on_info(line)

    return on_plan, estimate


def _measure_one(
    plan: MeasurePlan,
    ci: int,
    model: Any,
    opt: OptimizerInfo | None,
    progress_factory: ProgressFactory | None,
    dist: DistContext | None,
    on_info: Callable[[str], None] | None = None,
    preconditioner: Any = None,
    memory: list[Any] | None = None,
) -> MeasuredPoint:
    """Measure point number ``ci`` (its model loaded) with the plan's
    :class:`~bscrit.engine.loop.LoopSettings` and summarise it."""
    from bscrit.engine.adaptive import adaptive_hooks
    from bscrit.engine.loop import measure_model
    from bscrit.stats.summary import PerExampleInput, summarize_checkpoint
    from bscrit.workflows.assemble import MeasuredPoint

    label, n, b = plan.labels[ci], len(plan.dataset), plan.batch_size
    settings, seed = plan.loop_settings(ci), plan.seed + ci
    runtime: dict[str, Any] = {"preconditioner": preconditioner}
    if dist is not None:  # the rows one process would draw, the model seed per rank
        runtime |= dist.measure_kwargs(n, b, plan.k, seed)
        settings = replace(settings, seed=runtime.pop("seed"))
    if plan.adaptive is not None:
        runtime["hooks"] = adaptive_hooks(plan.adaptive, n, b, seed, runtime.get("hooks"))
    if ci == 0:  # the memory plan (printed when large, kept for the JSON), the plan line
        runtime["on_plan"], runtime["estimate"] = _estimator(plan, dist, on_info, memory)
    total = plan.adaptive.max_batches if plan.adaptive is not None else plan.k
    many = len(plan.labels) > 1
    desc = f"measure {Path(label).name}" + (f" ({ci + 1}/{len(plan.labels)})" if many else "")
    pe = None
    with progress_factory(desc, total) if progress_factory else _no_progress() as advance:
        runtime["progress"] = advance
        if plan.options.estimator == "per-example":
            from bscrit.engine.per_example import measure_per_example

            raw, pe_raw = measure_per_example(
                model, plan.dataset, plan.loss_fn, settings, adaptive=plan.adaptive, **runtime
            )
            pe = PerExampleInput(pe_raw, n, b)
        else:
            raw = measure_model(model, plan.dataset, plan.loss_fn, settings, **runtime)
    summary = summarize_checkpoint(label, raw.tensors, opt, raw.elapsed_s, raw.tau, pe)
    step, (seen, tokens) = plan.steps[ci], (plan.seen[0][ci], plan.seen[1][ci])
    return MeasuredPoint(summary, raw, step, seen, tokens)


def run_measurement(
    spec: Spec,
    checkpoints: Sequence[PathLike] | None = None,
    options: MeasureOptions | None = None,
    *,
    progress_factory: ProgressFactory | None = None,
    on_checkpoint: Callable[[str], None] | None = None,
    dist: DistContext | None = None,
    on_info: Callable[[str], None] | None = None,
    on_sampling: Callable[[SamplePlan, OptimizerInfo], None] | None = None,
) -> Measurement:
    """Measure every checkpoint of a spec and pool them into a
    :class:`~bscrit.artifacts.measurement.Measurement`.

    Everything that can be checked before the work is (the plan: checkpoints, options, dataset,
    loss); then each checkpoint is loaded and measured in turn, and the checkpoints are pooled
    (mean of G and N, docs/theory.md §8).

    Args:
        spec: the parsed spec.
        checkpoints: paths overriding the spec's ``checkpoint.path``.
        options: overrides of the spec's ``measure`` section.
        progress_factory: ``(description, total) -> context manager yielding advance(n)``.
        on_checkpoint: called with each checkpoint path before it is measured.
        dist: the torchrun context (its device, rows, seeds and reduction hooks), else None.
        on_info: told the plan line (:func:`plan_line`) early in a long measurement.
        on_sampling: with ``options.sampling``, told the sampling plan (its cost) and the
            optimizer before the training starts; it may raise to stop there.
    """
    from bscrit.engine.loop import trainable_parameters
    from bscrit.engine.params import requires_grad_only
    from bscrit.engine.precondition import build_preconditioner
    from bscrit.workflows.assemble import build_measurement
    from bscrit.workflows.points import measured_points

    plan = plan_measurement(spec, checkpoints, options or MeasureOptions(), dist)
    measured: list[MeasuredPoint] = []
    memory: list[Any] = []  # the first point's memory plan (bscrit.stats.memory_plan)
    warnings: list[str] = list(plan.notes)
    opt: OptimizerInfo | None = None
    pre_reason: str | None = None  # why there is no preconditioned reading
    selections = []
    points = measured_points(plan, spec, dist, on_checkpoint, on_sampling)
    for ci, (model, opt_ci, opt_state, sel, notes) in enumerate(points):
        opt = opt_ci if ci == 0 else opt
        selections.append(sel)
        warnings.extend(w for w in notes if w not in warnings)
        with requires_grad_only(model, sel.names):
            params = [p for _, p in trainable_parameters(model)]
            pre, why = build_preconditioner(params, opt_state, opt, sel.state_indices)
            pre_reason = pre_reason or why
            factors = pre.factors if pre is not None else None
            point = _measure_one(
                plan, ci, model, opt, progress_factory, dist, on_info, factors, memory
            )
        del model
        described = pre.description if pre is not None else None
        measured.append(replace(point, preconditioner=described))
    facts = plan.facts(opt, selections[0].to_dict(), warnings, pre_reason, dist)
    if memory:
        facts = replace(facts, extra={**facts.extra, "memory_plan": memory[0].to_dict()})
    return build_measurement(measured, facts)


def measure_session(
    spec: Spec,
    checkpoints: Sequence[PathLike] | None,
    options: MeasureOptions,
    dist_timeout: float | None = None,
    *,
    progress_factory: ProgressFactory | None = None,
    on_rank: Callable[[bool], None] | None = None,
    on_error: Callable[[str], None] | None = None,
    on_info: Callable[[str], None] | None = None,
    on_sampling: Callable[[SamplePlan, OptimizerInfo], None] | None = None,
) -> Measurement | None:
    """``bscrit measure``: :func:`run_measurement` in one process or as one torchrun rank.

    Tunes the CPU allocator (no page faults per batch on CPU), joins the distributed session when
    run by torchrun (docs/distributed.md), and returns the measurement on rank 0 (or the only
    process), None on the other ranks. ``on_rank(is_main)`` is called once the rank is known;
    ``on_info`` (rank 0 only) is told the plan line of a long measurement.
    """
    from bscrit.engine.allocator import tune_cpu_allocator
    from bscrit.engine.session import Session

    tune_cpu_allocator()
    device = options.device or spec.measure.device
    blocks = spec.measure.shard_blocks
    shard = options.shard
    with Session(device, dist_timeout, on_error=on_error, shard=shard, blocks=blocks) as dist:
        main = dist is None or dist.is_main
        if on_rank is not None:
            on_rank(main)
        m = run_measurement(
            spec,
            checkpoints,
            options,
            progress_factory=progress_factory if main else None,
            dist=dist,
            on_info=on_info if main else None,
            on_sampling=on_sampling,
        )
    return m if main else None


@contextlib.contextmanager
def _no_progress() -> Iterator[None]:
    yield None
