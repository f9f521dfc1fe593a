"""One function builds every :class:`~bscrit.artifacts.measurement.Measurement`: the command line
(:func:`bscrit.workflows.measure.run_measurement`, one or several checkpoints or sampled points) and
the Python API (:func:`bscrit.api.measure`, a live model) hand it their measured points and the
facts of the run, and it pools the points, forms the equilibrium intervals and the warnings.
Pure: no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from bscrit.optim import lr_schedule

if TYPE_CHECKING:
    from bscrit.artifacts.measurement import Measurement
    from bscrit.artifacts.records import Equilibrium, ParamSetStats
    from bscrit.engine.adaptive import AdaptiveState
    from bscrit.optim.registry import OptimizerInfo
    from bscrit.stats.summary import CheckpointSummary


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


def zero_gradient_names(summaries: Sequence[CheckpointSummary]) -> list[str]:
    """The tensors whose gradient was zero on every batch of some point, in order."""
    names: list[str] = []
    for s in summaries:
        names.extend(n for n in s.zero_gradient_names if n not in names)
    return names


def zero_gradient_warning(names: Sequence[str]) -> str:
    """The warning naming the tensors left out because their gradient was always zero."""
    shown = ", ".join(names[:8]) + (f", … ({len(names) - 8} more)" if len(names) > 8 else "")
    return (
        f"{len(names)} parameter tensor(s) had a zero gradient on every batch (unused by the "
        f"loss: an unused head, a branch never run?): {shown}; they are left out of G, N, NSR and "
        "R (per tensor: G = N = 0, no NSR); freeze them (requires_grad=False) to silence this"
    )


def _per_example_extra(summaries: Sequence[CheckpointSummary]) -> dict[str, Any]:
    """``extra.T1`` (and ``T1_scale_invariant``) of a per-example measurement, pooled."""
    from bscrit.artifacts.jsonvalues import estimate_dict
    from bscrit.stats.estimators import pool_t1

    pes = [s.per_example for s in summaries if s.per_example is not None]
    if not pes:
        return {}
    extra = {"T1": estimate_dict(pool_t1([a for a, _ in pes]))}
    si = [b for _, b in pes]
    if all(x is not None for x in si):
        extra["T1_scale_invariant"] = estimate_dict(pool_t1(si))  # type: ignore[arg-type]
    return extra


@dataclass(frozen=True)
class MeasuredPoint:
    """One measured point (a checkpoint, a sampled point, or a live model): its summary, what the
    engine returned, and where it stands in training."""

    summary: CheckpointSummary
    raw: Any  # bscrit.engine.loop.RawMeasurement (torch-free)
    step: int | None = None
    examples_seen: int | None = None
    tokens_seen: int | None = None
    preconditioner: str | None = None  # P's description at this point, else None


@dataclass(frozen=True)
class RunFacts:
    """What a measurement was run with, besides its points: the record's header.

    ``num_batches`` / ``groups`` None: the engine's counts (an adaptive run decides them).
    ``notes``: warnings known before the first batch (parameter selection, optimizer).
    ``extra``: keys added after the measured ones (``distributed``, ``selection``, ``sampling``).
    """

    batch_size: int
    micro_batch_size: int | None
    dataset_size: int
    seed: int
    device: str
    mode: str
    model: str
    parameters: Mapping[str, Any]
    optimizer: OptimizerInfo | None = None
    num_batches: int | None = None
    groups: int | None = None
    spec: str | None = None
    amp: str | None = None
    estimator: str = "batch"
    adaptive: AdaptiveState | None = None
    what: str = "checkpoints"  # what several points are, in the equilibrium note
    preconditioned_reason: str | None = None  # why there is no preconditioned reading
    notes: Sequence[str] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


def _pooled(sets: Sequence[ParamSetStats | None]) -> ParamSetStats | None:
    """The sets pooled across points (one point: itself); None when a point has none."""
    from bscrit.stats.summary import pool_param_sets

    if not all(sets):
        return None
    return sets[0] if len(sets) == 1 else pool_param_sets(sets)  # type: ignore[arg-type]


def build_measurement(points: Sequence[MeasuredPoint], facts: RunFacts) -> Measurement:
    """Pool the measured points into the :class:`~bscrit.artifacts.measurement.Measurement`
    (mean of G and N across points, docs/theory.md §8), with the equilibrium, its intervals over
    the points and every warning, in the order they were found."""
    from bscrit import __version__
    from bscrit.artifacts.measurement import Measurement
    from bscrit.stats.equilibrium import interval_warnings
    from bscrit.stats.summary import equilibrium, equilibrium_intervals, equilibrium_set

    summaries = [p.summary for p in points]
    last, opt = points[-1].raw, facts.optimizer
    warnings = list(facts.notes)
    for p in points:
        warnings.extend(w for w in p.raw.warnings if w not in warnings)
    if opt is not None and lr_schedule.decaying(opt.lr, opt.lr_current):
        warnings.append(
            f"measured at LR {opt.lr_current:.3g}, {opt.lr_current / opt.lr:.0%} of the "  # type: ignore[operator]
            f"schedule's base LR {opt.lr:.3g}: NSR and B* are equilibrium statistics of a "
            "constant-LR phase ([LMA21] §5), and while the scheduler decays the LR the noise has "
            "not settled to it; read B* from checkpoints before the decay (`bscrit schedule` "
            "leaves such points out)"
        )
    zero = zero_gradient_names(summaries)
    if zero:
        warnings.append(zero_gradient_warning(zero))
    all_pooled = _pooled([s.stats.all for s in summaries])
    assert all_pooled is not None
    si_pooled = _pooled([s.stats.scale_invariant for s in summaries])
    eq, note = equilibrium(opt, *equilibrium_set(all_pooled, si_pooled))
    if len(points) > 1:
        note += f"; pooled over {len(points)} {facts.what}"
    warnings += pooled_warnings(facts.adaptive, summaries, all_pooled, eq)
    pooled_pre = _pooled([s.preconditioned for s in summaries])
    steps = [p.step for p in points]
    eqi = equilibrium_intervals(summaries, all_pooled, si_pooled, pooled_pre, steps, opt)
    warnings += interval_warnings(eqi)
    mean_loss = sum(p.raw.mean_loss for p in points) / len(points)
    extra: dict[str, Any] = {"tau": last.tau, "mean_loss": mean_loss}
    extra["parameters"] = dict(facts.parameters)
    if facts.adaptive is not None:
        extra["stopping"] = facts.adaptive.to_dict()
    extra |= _per_example_extra(summaries)
    if zero:
        extra["zero_gradient"] = zero
    extra |= dict(facts.extra)
    return Measurement(
        batch_size=facts.batch_size,
        micro_batch_size=facts.micro_batch_size,
        dataset_size=facts.dataset_size,
        num_batches=last.num_batches if facts.num_batches is None else facts.num_batches,
        groups=last.groups if facts.groups is None else facts.groups,
        seed=facts.seed,
        device=facts.device,
        mode=facts.mode,
        elapsed_s=sum(s.stats.elapsed_s for s in summaries),
        checkpoints=tuple(
            replace(
                p.summary.stats,
                step=p.step,
                examples_seen=p.examples_seen,
                tokens_seen=p.tokens_seen,
            )
            for p in points
        ),
        all=all_pooled,
        scale_invariant=si_pooled,
        equilibrium=eq,
        equilibrium_note=note,
        optimizer=opt,
        per_parameter=tuple(summaries[0].rows),
        scale_invariant_fraction=summaries[0].scale_invariant_fraction,
        spec=facts.spec,
        model=facts.model,
        amp=facts.amp,
        estimator=facts.estimator,
        warnings=tuple(warnings),
        bscrit_version=__version__,
        extra=extra,
        preconditioned=pooled_pre,
        preconditioner=points[0].preconditioner if pooled_pre is not None else None,
        preconditioned_reason=None if pooled_pre is not None else facts.preconditioned_reason,
        equilibrium_interval=eqi,
    )
