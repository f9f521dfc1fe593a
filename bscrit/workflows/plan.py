"""``bscrit measure``'s plan: the command line's options and the spec resolved, and checked, into
one :class:`MeasurePlan` before any work (checkpoints, batch size, groups, device, dataset, loss,
the adaptive budget), and the plan line printed before a long measurement. Nothing here prints;
torch is imported lazily.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bscrit.errors import UsageError

if TYPE_CHECKING:
    from bscrit.engine.adaptive import AdaptiveState
    from bscrit.engine.distributed import DistContext
    from bscrit.engine.loop import LoopSettings
    from bscrit.optim.registry import OptimizerInfo
    from bscrit.specfile.document import Spec
    from bscrit.workflows.assemble import RunFacts

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class MeasureOptions:
    """Command-line overrides of the spec's ``measure`` section (None = use the spec)."""

    batches: int | None = None
    groups: int | None = None
    seed: int | None = None
    device: str | None = None
    mode: str | None = None
    amp: str | None = None  # "bf16": the same as precision="bf16-autocast"
    precision: str | None = None  # fp32 | bf16-autocast | bf16-weights (bscrit.engine.precision)
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
    shard: str | None = None  # "fsdp": the model sharded over the ranks (bscrit.engine.sharded)

    @property
    def sampling(self) -> bool:
        """``--sample-steps``/``--samples``: equilibrium draws from one checkpoint."""
        return self.sample_steps is not None or self.samples is not None


@dataclass
class MeasurePlan:
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
    precision: str | None = None  # resolved: option, --amp, else the spec's measure.precision
    notes: list[str] = dataclasses.field(default_factory=list)  # warnings found while planning

    def __post_init__(self) -> None:
        self.labels = self.labels or [str(p) for p in self.paths]

    def loop_settings(self, ci: int) -> LoopSettings:
        """How the engine measures point number ``ci`` (its seed is the plan's + ci)."""
        from bscrit.engine.loop import LoopSettings
        from bscrit.engine.precision import PRECISIONS

        o = self.options
        amp, weights = PRECISIONS.get(self.precision or "", (None, None))
        return LoopSettings(
            batch_size=self.batch_size,
            num_batches=self.k,
            groups=self.groups,
            seed=self.seed + ci,
            device=self.device,
            mode=self.mode,
            amp=amp,
            weights=weights,
            num_workers=self.spec.data.num_workers if o.num_workers is None else o.num_workers,
            prefetch=o.prefetch,
            compile=o.compile,
            micro_batch_size=self.micro_batch_size,
            host_memory=None if o.host_memory is None else int(o.host_memory * 2**30),
        )

    def facts(
        self,
        opt: OptimizerInfo | None,
        parameters: Mapping[str, Any],
        notes: Sequence[str],
        preconditioned_reason: str | None,
        dist: DistContext | None,
    ) -> RunFacts:
        """The measurement's header (:class:`~bscrit.workflows.assemble.RunFacts`)."""
        from bscrit.workflows.assemble import RunFacts

        o, adaptive = self.options, self.adaptive is not None
        extra: dict[str, Any] = {}
        if dist is not None:
            extra["distributed"] = dist.describe(self.batch_size)
        if self.selection_note is not None:
            extra["selection"] = self.selection_note
        if self.sampling is not None:
            extra["sampling"] = self.sampling[0].to_dict() | {"notes": list(self.sampling[1])}
        return RunFacts(
            batch_size=self.batch_size,
            micro_batch_size=self.micro_batch_size,
            dataset_size=len(self.dataset),
            seed=self.seed,
            device=str(self.device),
            mode=self.mode,
            model=self.spec.model.label,
            parameters=parameters,
            optimizer=opt,
            num_batches=None if adaptive else self.k,
            groups=None if adaptive else self.groups,
            spec=str(self.spec.path),
            amp={"bf16-autocast": "bf16"}.get(self.precision or "", self.precision),
            estimator=o.estimator,
            adaptive=self.adaptive,
            what="sampled points" if o.sampling else "checkpoints",
            preconditioned_reason=preconditioned_reason,
            notes=tuple(notes),
            extra=extra,
        )


#: ``--host-memory`` in GiB: its bytes (× 2³⁰) must fit int64.
MAX_HOST_MEMORY_GIB = float(2**33 - 1)


#: At most this many DataLoader worker processes (``--num-workers``), and batches each one
#: prefetches (``--prefetch``): far beyond any machine's need, short of starting thousands.
MAX_WORKERS = 256
MAX_PREFETCH = 1024


def check_options(o: MeasureOptions) -> None:
    """Every number of ``o`` checked before the spec's data loads (:mod:`bscrit.boundary`): int64
    integers in their ranges, finite floats; every problem at once, naming its option.

    Raises:
        UsageError: listing each bad option.
    """
    from bscrit import boundary

    p = boundary.Problems()
    for key, low in (("batches", 1), ("batch_size", 1), ("micro_batch_size", 1), ("groups", 2),
                     ("max_batches", 4), ("last", 1), ("seed", 0), ("step", 0),
                     ("examples_seen", 0)):  # fmt: skip
        p.integer(key, getattr(o, key), minimum=low)
    # DataLoader processes and batches in flight: a typo must not start thousands of them
    p.integer("num_workers", o.num_workers, minimum=0, maximum=MAX_WORKERS)
    p.integer("prefetch", o.prefetch, minimum=1, maximum=MAX_PREFETCH)
    p.integer("samples", o.samples, minimum=2)
    if o.sample_steps != "auto":
        p.integer("sample_steps", o.sample_steps, minimum=1)
    p.number("target_rel_error", o.target_rel_error, low=0.0, low_open=True,
             what="a positive number")  # fmt: skip
    p.number("host_memory", o.host_memory, low=0.0, high=MAX_HOST_MEMORY_GIB, high_open=False,
             what=f"a number of GiB in [0, {MAX_HOST_MEMORY_GIB:,.0f}]")  # fmt: skip
    p.raise_any()


def plan_measurement(
    spec: Spec, checkpoints: Sequence[PathLike] | None, o: MeasureOptions, dist: DistContext | None
) -> MeasurePlan:
    """Resolve ``o`` with the spec into a :class:`MeasurePlan`, every option and value checked
    before any work (:func:`check_options` first)."""
    from bscrit.engine.adaptive import batches_per_point
    from bscrit.engine.data import check_batches
    from bscrit.engine.objective import check_examples
    from bscrit.engine.precision import resolve_precision
    from bscrit.load.device import resolve_device
    from bscrit.load.factories import build_dataset, build_loss
    from bscrit.load.selection import progress, select
    from bscrit.specfile.document import resolve_micro_batch_size

    check_options(o)
    ms = spec.measure
    precision = resolve_precision(o.precision, o.amp) or ms.precision
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
    if o.shard is not None:  # before the data loads
        if not getattr(dist, "sharded", False):
            raise UsageError(
                "{shard} fsdp: the model is sharded inside the session that measure_session "
                "opens (bscrit measure does); run_measurement alone would not shard it",
                shard="shard",
            )
        check_shard_options(o, spec, batch_size, dist.world_size if dist is not None else 1)
    groups = o.groups or ms.groups
    # an absurd k is refused before the data loads
    check_batches(o.batches, ms.batches, o.max_batches, f"{spec.path}: measure.batches")
    device = dist.device if dist is not None else resolve_device(o.device or ms.device)
    dataset = build_dataset(spec.data, spec.base_dir, "data", str(spec.path))
    loss_fn = build_loss(spec)
    check_examples(dataset, loss_fn, str(spec.path))
    n = len(dataset)
    k, adaptive = batches_per_point(
        o.batches or ms.batches, n, batch_size, groups, o.target_rel_error, o.max_batches,
        sampling=o.sampling, points=len(paths),
    )  # fmt: skip
    steps, from_epochs = chosen.steps_or_epochs(max(1, n // batch_size))
    notes = _batch_notes(paths, batch_size, None if spec.data.subset else n, o.batch_size)
    prog = progress(paths, steps, spec.batch_size, step=o.step, examples_seen=o.examples_seen)
    if hasattr(loss_fn, "to"):  # an nn.Module loss, e.g. class weights of a CrossEntropyLoss
        loss_fn = loss_fn.to(device)
    return MeasurePlan(
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
        notes=notes,
        precision=precision,
    )


def check_shard_options(o: MeasureOptions, spec: Spec, batch_size: int, world: int) -> None:
    """``--shard fsdp`` on ``world`` ranks: what it cannot do refused before any work
    (:func:`bscrit.engine.sharded.check_shard_plan`); also called before ``--nproc`` starts."""
    from bscrit.engine.precision import resolve_precision
    from bscrit.engine.sharded import check_shard_plan, require_fully_shard
    from bscrit.specfile.document import resolve_micro_batch_size

    if o.shard not in (None, "fsdp"):
        raise UsageError(f"{{shard}}: expected 'fsdp', got {o.shard!r}", shard="shard")
    require_fully_shard()
    check_shard_plan(
        world=world,
        batch_size=batch_size,
        micro=resolve_micro_batch_size(spec, o.micro_batch_size, batch_size),
        estimator=o.estimator,
        sampling=o.sampling,
        adaptive=o.target_rel_error is not None,
        compile=o.compile,
        precision=resolve_precision(o.precision, o.amp) or spec.measure.precision,
    )


def _batch_notes(
    paths: Sequence[Path], batch_size: int, dataset_size: int | None, given: int | None
) -> list[str]:
    """The first warning of an HF Trainer folder whose ``trainer_state.json`` disagrees with B
    (:func:`bscrit.load.hf.trainer_batch_warning`)."""
    from bscrit.load.hf import trainer_batch_warning

    key = "--batch-size" if given else "the spec's batch_size"
    for path in paths:
        if path.is_dir():
            warning = trainer_batch_warning(path, batch_size, dataset_size, key)
            if warning is not None:
                return [warning]
    return []


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
    plan: MeasurePlan,
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
    when = f"about {_duration(total)} in all"
    if a is not None:  # the run stops at the first check that meets the target: often the start
        first = _duration(seconds_per_batch * a.start * c / ranks)
        when = (
            f"about {first} for the first {a.start:,}, at most about {_duration(total)} if the "
            f"target needs all {k:,}"
        )
    line = f"plan: {what} of B = {b} in {groups}{each}, {per}: {when}"
    return line + (f"; {memory}" if memory else "")
