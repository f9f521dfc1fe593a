"""From user inputs (spec, checkpoints, artifacts, options) to results: the orchestration.

The command line, the demo and the Python API call these functions, so that a batch size, a
measurement or a scaled set of hyperparameters is produced in one place only. Nothing here
prints; torch is imported lazily (``bscrit scale`` runs without it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bscrit.errors import UsageError
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo

if TYPE_CHECKING:
    from bscrit.artifacts.measurement import Equilibrium, Measurement, ParamSetStats
    from bscrit.engine.adaptive import AdaptiveState
    from bscrit.engine.distributed import DistContext
    from bscrit.engine.groups import SumsPlan
    from bscrit.engine.loop import RawMeasurement
    from bscrit.runs.svag.plan import SvagPlan
    from bscrit.spec.document import Spec
    from bscrit.stats.equilibrium import SamplePlan
    from bscrit.stats.summary import CheckpointSummary

PathLike = str | os.PathLike[str]
#: ``(description, total) -> context manager yielding advance(n)`` (a progress bar).
ProgressFactory = Callable[[str, int], Any]


@dataclass(frozen=True)
class MeasureOptions:
    """Command-line overrides of the spec's ``measure`` section (None = use the spec)."""

    batches: int | None = None
    groups: int | None = None
    seed: int | None = None
    device: str | None = None
    mode: str | None = None
    amp: str | None = None
    batch_size: int | None = None
    micro_batch_size: int | None = None  # forward/backward in chunks (default: the spec's)
    unsafe_load: bool = False
    estimator: str = "batch"  # "batch" | "per-example" (bscrit.engine.per_example)
    target_rel_error: float | None = None  # adaptive: stop when NSR's 95% half-width <= this
    max_batches: int | None = None  # adaptive budget (default 5 x max(200, ceil(n/B)))
    compile: bool = False  # torch.compile the forward pass
    num_workers: int | None = None  # DataLoader workers (default: the spec's data.num_workers)
    prefetch: int | None = None  # DataLoader prefetch_factor
    host_memory: float | None = None  # GiB the group sums may take in host memory, else spill
    last: int | None = None  # of a folder or glob of checkpoints, the last K by saved step
    sample_steps: int | str | None = None  # continue training T steps ("auto": 10τ), §8
    samples: int | None = None  # measure at K points over those T steps
    step: int | None = None  # the one checkpoint's training step (overrides the saved one)
    examples_seen: int | None = None  # its training examples consumed (default: step × B)

    @property
    def sampling(self) -> bool:
        """``--sample-steps``/``--samples``: equilibrium draws from one checkpoint."""
        return self.sample_steps is not None or self.samples is not None


@dataclass
class _MeasurePlan:
    """Everything a measurement needs, resolved from the spec and the options, before any work."""

    spec: Spec
    paths: list[Path]
    options: MeasureOptions
    batch_size: int
    micro_batch_size: int | None
    groups: int
    seed: int
    mode: str
    device: Any  # torch.device
    dataset: Any
    k: int
    adaptive: AdaptiveState | None
    loss_fn: Any
    steps: list[int | None]  # each checkpoint's saved step (None: not saved)
    seen: tuple[list[int | None], list[int | None]]  # each one's examples and tokens seen
    selection_note: str | None = None  # how a folder or glob was expanded
    labels: list[str] = dataclasses.field(default_factory=list)  # one per measured point
    sampling: Any = None  # (SamplePlan, notes) once --sample-steps has planned its points

    def __post_init__(self) -> None:
        self.labels = self.labels or [str(p) for p in self.paths]


def _plan_measurement(
    spec: Spec, checkpoints: Sequence[PathLike] | None, o: MeasureOptions, dist: DistContext | None
) -> _MeasurePlan:
    from bscrit.engine.adaptive import adaptive_plan
    from bscrit.engine.data import check_num_batches, default_num_batches
    from bscrit.engine.objective import check_examples
    from bscrit.load.factories import build_dataset, build_loss, resolve_device
    from bscrit.load.selection import progress, select
    from bscrit.spec.document import resolve_micro_batch_size

    ms = spec.measure
    if not (checkpoints or spec.checkpoint.paths):
        raise UsageError(
            f"{spec.path}: no checkpoint: give {{checkpoint}} PATH or set checkpoint.path in the "
            "spec",
            checkpoint="checkpoint",
        )
    if spec.model.hf is not None:  # transformers missing: said before the data loads
        from bscrit.load.hf import require_transformers

        require_transformers(str(spec.path))
    chosen = select(checkpoints or spec.checkpoint.paths, o.last)
    paths = list(chosen.paths)
    if o.sampling:
        from bscrit.engine.sampling import check_sampling

        check_sampling(paths, o, dist)
    if o.estimator not in ("batch", "per-example"):
        raise UsageError(
            f"{{estimator}}: expected 'batch' or 'per-example', got {o.estimator!r}",
            estimator="estimator",
        )
    batch_size = o.batch_size or spec.batch_size
    micro = resolve_micro_batch_size(spec, o.micro_batch_size, batch_size)
    groups = o.groups or ms.groups
    if o.batches is not None:  # an absurd k is refused before the data loads
        check_num_batches(o.batches)
    elif ms.batches is not None:
        check_num_batches(ms.batches, where=f"{spec.path}: measure.batches")
    if o.max_batches is not None:
        check_num_batches(o.max_batches, "max_batches")
    device = dist.device if dist is not None else resolve_device(o.device or ms.device)
    dataset = build_dataset(spec.data, spec.base_dir, "data")
    n = len(dataset)
    k = o.batches or ms.batches or default_num_batches(n, batch_size)
    if o.sampling and not (o.batches or ms.batches):
        from bscrit.stats.equilibrium import sample_batches

        k = sample_batches(k, groups)
    check_num_batches(k)
    adaptive = adaptive_plan(
        o.target_rel_error, o.max_batches, o.batches or ms.batches, groups, n, batch_size
    )
    if adaptive is not None:
        if len(paths) > 1 or o.sampling:
            raise UsageError(
                "{target_rel_error} measures one checkpoint at a time (pooled checkpoints need "
                "the same groups); give one checkpoint, or use {batches} for a fixed k",
                target_rel_error="target_rel_error",
                batches="batches",
            )
        k = adaptive.start
    steps, from_epochs = chosen.steps_or_epochs(max(1, n // batch_size))
    prog = progress(paths, steps, spec.batch_size, step=o.step, examples_seen=o.examples_seen)
    loss_fn = build_loss(spec)
    check_examples(dataset, loss_fn, str(spec.path))
    if hasattr(loss_fn, "to"):  # an nn.Module loss, e.g. class weights of a CrossEntropyLoss
        loss_fn = loss_fn.to(device)
    return _MeasurePlan(
        spec=spec,
        paths=paths,
        options=o,
        batch_size=batch_size,
        micro_batch_size=micro,
        groups=groups,
        seed=ms.seed if o.seed is None else o.seed,
        mode=o.mode or ms.mode,
        device=device,
        dataset=dataset,
        k=k,
        adaptive=adaptive,
        loss_fn=loss_fn,
        steps=prog.steps,
        seen=(prog.examples_seen, prog.tokens_seen),
        selection_note="; ".join(x for x in (chosen.note, from_epochs, prog.note) if x) or None,
    )


#: The plan line (batches, groups, time per batch and in all) is printed when the measurement is
#: projected to take at least this long (seconds).
PLAN_LINE_MIN_S = 30.0


def _duration(seconds: float) -> str:
    """``"2 h 05 min"``, ``"3 min 20 s"``, ``"42 s"``, ``"12 ms"``."""
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, sec = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days:,} d {hours} h"
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"


def plan_line(
    plan: _MeasurePlan,
    seconds_per_batch: float,
    ranks: int = 1,
    memory: str | None = None,
    spilled: bool = False,
) -> str | None:
    """One line before a long measurement: k batches of B in m groups, the measured time per
    batch (on each of ``ranks`` ranks), the projected total, and ``memory``
    (:meth:`~bscrit.engine.groups.SumsPlan.note`); None when the projection is under
    ``PLAN_LINE_MIN_S`` and the sums are not ``spilled``."""
    a, b, m, c = plan.adaptive, plan.batch_size, plan.groups, len(plan.labels)
    k = a.max_batches if a is not None else plan.k
    total = seconds_per_batch * k * c / ranks
    if total < PLAN_LINE_MIN_S and not spilled:
        return None
    what = f"{k:,} batches" if a is None else f"{a.start:,} to {k:,} batches (adaptive)"
    groups = f"{m} groups" if a is None else f"{m} to {max(m, a.max_groups)} groups"
    each = f" for each of {c} checkpoints" if c > 1 else ""
    each = f" at each of {c} sampled points" if c > 1 and plan.options.sampling else each
    per = f"about {_duration(seconds_per_batch)} a batch" + (
        f" on each of {ranks} ranks" * (ranks > 1)
    )
    about = "at most about" if a is not None else "about"
    line = f"plan: {what} of B = {b} in {groups}{each}, {per}: {about} {_duration(total)} in all"
    return line + (f"; {memory}" if memory else "")


def _memory_now(sums: SumsPlan, device: Any, ranks: int) -> str:
    """:meth:`~bscrit.engine.groups.SumsPlan.note` with this process's peaks so far (host; CUDA)."""
    from bscrit.engine.allocator import peak_rss

    device_peak = None
    if getattr(device, "type", None) == "cuda":
        import torch

        device_peak = int(torch.cuda.max_memory_allocated(device))
    return sums.note(peak_rss(), device_peak, ranks)


def _measure_one(
    plan: _MeasurePlan,
    ci: int,
    model: Any,
    opt: OptimizerInfo | None,
    progress_factory: ProgressFactory | None,
    dist: DistContext | None,
    on_info: Callable[[str], None] | None = None,
    preconditioner: Sequence[Any] | None = None,
) -> tuple[CheckpointSummary, RawMeasurement]:
    """Measure checkpoint number ``ci`` (its model already loaded) and summarise it."""
    from bscrit.engine.adaptive import adaptive_hooks
    from bscrit.engine.loop import measure_model
    from bscrit.stats.summary import PerExampleInput, summarize_checkpoint

    o, label, n, b = plan.options, plan.labels[ci], len(plan.dataset), plan.batch_size
    seed = plan.seed + ci
    kw = dist.measure_kwargs(n, b, plan.k, seed) if dist is not None else {"seed": seed}
    run_kw: dict[str, Any] = dict(
        batch_size=b,
        num_batches=plan.k,
        groups=plan.groups,
        **kw,
        device=plan.device,
        mode=plan.mode,
        amp=o.amp,
        num_workers=plan.spec.data.num_workers if o.num_workers is None else o.num_workers,
        prefetch=o.prefetch,
        compile=o.compile,
        preconditioner=preconditioner,
        micro_batch_size=plan.micro_batch_size,
    )
    if plan.adaptive is not None:
        run_kw["hooks"] = adaptive_hooks(plan.adaptive, n, b, seed, run_kw.get("hooks"))
    if o.host_memory is not None:
        run_kw["host_memory"] = int(o.host_memory * 2**30)
    if on_info is not None and ci == 0:
        sums: list[SumsPlan] = []  # told by the engine before the first batch
        run_kw["on_plan"] = sums.append

        def estimate(seconds_per_batch: float) -> None:
            ranks = dist.world_size if dist is not None else 1
            memory = _memory_now(sums[0], plan.device, ranks) if sums else None
            spilled = bool(sums) and sums[0].spilled
            line = plan_line(plan, seconds_per_batch, ranks, memory, spilled)
            if line is not None:
                on_info(line)

        run_kw["estimate"] = estimate
    total = plan.adaptive.max_batches if plan.adaptive is not None else plan.k
    many = len(plan.labels) > 1
    desc = f"measure {Path(label).name}" + (f" ({ci + 1}/{len(plan.labels)})" if many else "")
    pe = None
    with progress_factory(desc, total) if progress_factory else _no_progress() as advance:
        if advance is not None:
            run_kw["progress"] = advance
        if o.estimator == "per-example":
            from bscrit.engine.per_example import measure_per_example

            raw, pe_raw = measure_per_example(
                model, plan.dataset, plan.loss_fn, adaptive=plan.adaptive, **run_kw
            )
            pe = PerExampleInput(pe_raw, n, b)
        else:
            raw = measure_model(model, plan.dataset, plan.loss_fn, **run_kw)
    summary = summarize_checkpoint(label, raw.tensors, opt, raw.elapsed_s, raw.tau, pe)
    return summary, raw


def pooled_warnings(
    adaptive: AdaptiveState | None,
    summaries: Sequence[CheckpointSummary],
    all_pooled: ParamSetStats,
    eq: Equilibrium | None,
) -> list[str]:
    """The measurement's warnings about the pooled result (signal, equilibrium, invariance)."""
    from bscrit.theory.bounds import EQUILIBRIUM_RESIDUAL_MAX

    warnings: list[str] = []
    first = summaries[0]
    if any(s.scale_invariant_names != first.scale_invariant_names for s in summaries[1:]):
        warnings.append(
            "the scale-invariant tensors differ between checkpoints; the pooled scale-invariant "
            "statistics mix different parameter sets"
        )
    if not all_pooled.signal_detected:
        warnings.append(
            "no signal detected at this precision: the 95% interval of G includes 0, so B* has "
            "no upper bound; measure more batches (--batches) to tighten it"
        )
    if eq is not None and abs(eq.residual) > EQUILIBRIUM_RESIDUAL_MAX:
        warnings.append(
            f"equilibrium residual ρ = {eq.residual:+.2f} (|ρ| > {EQUILIBRIUM_RESIDUAL_MAX}): the "
            "checkpoint does not look like SGD equilibrium ([LMA21] eq. 11); the prediction is "
            "weaker (average several checkpoints of the constant-LR phase)"
        )
    if first.scale_invariant_fraction == 0:
        warnings.append(
            "no scale-invariant tensor found: the theorems of [LMA21] §5 assume a scale-invariant "
            "loss; the bounds are indicative only"
        )
    a = adaptive
    if a is not None and a.reason == "budget exhausted":
        warnings.append(
            f"--target-rel-error {a.target:g} not reached within --max-batches "
            f"{a.max_batches}: the NSR's relative 95% half-width is {a.rel_error:.3g}"
        )
    return warnings


def _per_example_extra(summaries: Sequence[CheckpointSummary]) -> dict[str, Any]:
    """``extra.T1`` (and ``T1_scale_invariant``) of a per-example measurement, pooled."""
    from bscrit.artifacts.measurement import estimate_dict
    from bscrit.stats.estimators import pool_t1

    pes = [s.per_example for s in summaries if s.per_example is not None]
    if not pes:
        return {}
    extra = {"T1": estimate_dict(pool_t1([a for a, _ in pes]))}
    si = [b for _, b in pes]
    if all(x is not None for x in si):
        extra["T1_scale_invariant"] = estimate_dict(pool_t1(si))  # type: ignore[arg-type]
    return extra


def _points(
    plan: _MeasurePlan,
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
    from bscrit.load.checkpoints import load_model, resolve_optimizer

    for path in plan.paths:
        if on_checkpoint is not None:
            on_checkpoint(str(path))
        model, ckpt = load_model(spec, path, unsafe=plan.options.unsafe_load)
        if dist is not None:
            model = dist.prepare_model(model)
        # the parameters the run's optimizer updates (docs/theory.md §1, "Which parameters")
        sel = select_parameters(model, ckpt.optimizer_state, f"checkpoint {path}")
        opt, notes = resolve_optimizer(spec, ckpt)
        if opt is not None and sel.group_params:
            opt = optim.with_group_params(opt, sel.group_params)
        notes = ([sel.warning] if sel.warning else []) + list(notes)
        model.to(plan.device)
        if plan.options.sampling:
            for point in sampled_points(plan, model, ckpt.optimizer_state, opt, on_sampling):
                yield (*point, sel, notes)
        else:
            yield model, opt, ckpt.optimizer_state, sel, notes


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
    """Measure every checkpoint of a spec and pool them into a :class:`~bscrit.artifacts.measurement.Measurement`.

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
    from bscrit import __version__
    from bscrit.artifacts.measurement import Measurement
    from bscrit.engine.loop import trainable_parameters
    from bscrit.engine.params import requires_grad_only
    from bscrit.engine.precondition import build_preconditioner
    from bscrit.stats.equilibrium import interval_warnings
    from bscrit.stats.summary import (
        equilibrium,
        equilibrium_intervals,
        equilibrium_set,
        pool_param_sets,
    )

    plan = _plan_measurement(spec, checkpoints, options or MeasureOptions(), dist)
    summaries: list[CheckpointSummary] = []
    warnings: list[str] = []
    mean_losses: list[float] = []
    opt: OptimizerInfo | None = None
    pre_notes: list[str | None] = []  # per checkpoint: P's description, or why there is none
    pre_reason: str | None = None
    selections = []
    points = _points(plan, spec, dist, on_checkpoint, on_sampling)
    for ci, (model, opt_ci, opt_state, sel, notes) in enumerate(points):
        opt = opt_ci if ci == 0 else opt
        selections.append(sel)
        warnings.extend(w for w in notes if w not in warnings)
        with requires_grad_only(model, sel.names):
            params = [p for _, p in trainable_parameters(model)]
            pre, why = build_preconditioner(params, opt_state, opt, sel.state_indices)
            pre_notes.append(pre.description if pre is not None else None)
            pre_reason = pre_reason or why
            factors = pre.factors if pre is not None else None
            summary, raw = _measure_one(
                plan, ci, model, opt, progress_factory, dist, on_info, preconditioner=factors
            )
        del model
        summaries.append(summary)
        mean_losses.append(raw.mean_loss)  # mean batch loss at this checkpoint
        warnings.extend(w for w in raw.warnings if w not in warnings)

    all_pooled = pool_param_sets([s.stats.all for s in summaries])
    si_list = [s.stats.scale_invariant for s in summaries]
    si_pooled = pool_param_sets(si_list) if all(si_list) else None  # type: ignore[arg-type]
    eq_set, eq_name = equilibrium_set(all_pooled, si_pooled)
    eq, note = equilibrium(opt, eq_set, eq_name)
    if len(plan.labels) > 1:
        what = "sampled points" if plan.options.sampling else "checkpoints"
        note += f"; pooled over {len(plan.labels)} {what}"
    warnings += pooled_warnings(plan.adaptive, summaries, all_pooled, eq)
    pre_sets = [s.preconditioned for s in summaries]
    pooled_pre = pool_param_sets(pre_sets) if all(pre_sets) else None  # type: ignore[arg-type]
    eqi = equilibrium_intervals(summaries, all_pooled, si_pooled, pooled_pre, plan.steps, opt)
    warnings += interval_warnings(eqi)
    extra: dict[str, Any] = {"tau": raw.tau, "mean_loss": sum(mean_losses) / len(mean_losses)}
    extra["parameters"] = selections[0].to_dict()
    if plan.adaptive is not None:
        extra["stopping"] = plan.adaptive.to_dict()
    extra |= _per_example_extra(summaries)
    if dist is not None:
        extra["distributed"] = dist.describe(plan.batch_size)
    adaptive = plan.adaptive is not None
    if plan.selection_note is not None:
        extra["selection"] = plan.selection_note
    if plan.sampling is not None:
        extra["sampling"] = plan.sampling[0].to_dict() | {"notes": list(plan.sampling[1])}
    return Measurement(
        batch_size=plan.batch_size,
        micro_batch_size=plan.micro_batch_size,
        dataset_size=len(plan.dataset),
        num_batches=raw.num_batches if adaptive else plan.k,
        groups=raw.groups if adaptive else plan.groups,
        seed=plan.seed,
        device=str(plan.device),
        mode=plan.mode,
        elapsed_s=sum(s.stats.elapsed_s for s in summaries),
        checkpoints=tuple(
            replace(s.stats, step=st, examples_seen=ex, tokens_seen=tk)
            for s, st, ex, tk in zip(summaries, plan.steps, *plan.seen, strict=True)
        ),
        all=all_pooled,
        scale_invariant=si_pooled,
        equilibrium=eq,
        equilibrium_note=note,
        optimizer=opt,
        per_parameter=tuple(summaries[0].rows),
        scale_invariant_fraction=summaries[0].scale_invariant_fraction,
        spec=str(spec.path),
        model=spec.model.label,
        amp=plan.options.amp,
        estimator=plan.options.estimator,
        warnings=tuple(warnings),
        bscrit_version=__version__,
        extra=extra,
        preconditioned=pooled_pre,
        preconditioner=pre_notes[0] if pooled_pre is not None else None,
        preconditioned_reason=None if pooled_pre is not None else pre_reason,
        equilibrium_interval=eqi,
    )


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
    from bscrit.engine.distributed import Session

    tune_cpu_allocator()
    device = options.device or spec.measure.device
    with Session(device, dist_timeout, on_error=on_error) as dist:
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


def plan_svag(
    spec_path: PathLike,
    *,
    target_batch_size: int | None = None,
    from_measurement: PathLike | None = None,
    c2: float = 2.0,
    ls: str | Sequence[int] = (1, 2, 4),
    on_target: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> SvagPlan:
    """``bscrit svag``: the SVAG plan at B', given or read from a measurement.

    With ``from_measurement`` B' is :func:`~bscrit.theory.prediction.confirmation_target` of its
    prediction (the same B' the demo confirms). ``kwargs`` go to
    :func:`~bscrit.runs.svag.plan.prepare_svag`. Everything is checked before any run.

    ``on_target`` is told where B' came from (when read from a measurement), before the
    checkpoint and data are loaded.
    """
    from bscrit.runs.svag.plan import parse_ls, prepare_svag
    from bscrit.spec.document import load_spec
    from bscrit.theory.prediction import confirmation_target, predict_files

    parsed = parse_ls(ls)
    if (target_batch_size is None) == (from_measurement is None):
        raise UsageError(
            "give exactly one of {t} and {m}", t="target_batch_size", m="from_measurement"
        )
    if from_measurement is not None:
        pred = predict_files([from_measurement], c2)
        target_batch_size, why = confirmation_target(pred)
        scope = pred.base.interval_note.split(";")[0]  # over the equilibrium, or one point
        if on_target is not None:
            on_target(f"B' = {target_batch_size}: {why} of {from_measurement} ({scope})")
    assert target_batch_size is not None
    return prepare_svag(
        load_spec(spec_path), target_batch_size=target_batch_size, ls=parsed, **kwargs
    )


@contextlib.contextmanager
def _no_progress() -> Iterator[None]:
    yield None
