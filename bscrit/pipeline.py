"""From user inputs (spec, checkpoints, artifacts, options) to results: the orchestration.

The command line, the demo and the Python API call these functions, so that a batch size, a
measurement or a scaled set of hyperparameters is produced in one place only. Nothing here
prints; torch is imported lazily (``bscrit scale`` runs without it).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from . import optim
from .errors import BscritError, UsageError
from .optim import OptimizerInfo
from .scaling import ScaledHyperparameters, scale_hyperparameters

PathLike = str | os.PathLike[str]


def scale_request(
    target_batch_size: int,
    *,
    optimizer: str | None = None,
    batch_size: int | None = None,
    values: Mapping[str, float | None] | None = None,
    epochs: float | None = None,
    steps: int | None = None,
    warmup_steps: int | None = None,
    from_spec: PathLike | None = None,
    measurement: PathLike | None = None,
    c2: float = 2.0,
) -> ScaledHyperparameters:
    """``bscrit scale``: the base run's optimizer from a spec, a measurement or explicit values,
    scaled from B to B' by its rule (docs/theory.md §5).

    Precedence: explicit arguments over the spec over the measurement. ``optimizer`` different
    from the base's starts from that optimizer's defaults. With ``measurement``, warnings say
    when B' is past its recommended range.
    """
    from .predict import range_context
    from .results import load_measurement

    base: OptimizerInfo | None = None
    b = batch_size
    if from_spec is not None:
        from .spec import load_spec

        s = load_spec(from_spec)
        base = s.optimizer
        b = b if b is not None else s.batch_size
        if steps is None and s.schedule.total_steps is not None:
            steps = s.schedule.total_steps
        if warmup_steps is None and s.schedule.warmup_steps > 0:
            warmup_steps = s.schedule.warmup_steps
    m = load_measurement(measurement) if measurement is not None else None
    if m is not None:
        base = base if base is not None else m.optimizer
        b = b if b is not None else m.batch_size
    if optimizer is not None and (base is None or base.name != optimizer):
        base = OptimizerInfo(optim.get(optimizer).name, lr=base.lr if base else 0.0, source="cli")
    if base is None:
        raise UsageError(
            "no optimizer: give {optimizer} and {lr} (or {from_spec} spec.yaml)",
            optimizer="optimizer",
            lr="lr",
            from_spec="from_spec",
        )
    if b is None:
        raise UsageError(
            "no base batch size: give {batch_size} (or {from_spec} / {measurement})",
            batch_size="batch_size",
            from_spec="from_spec",
            measurement="measurement",
        )
    values = dict(values or {})
    if values.get("lr") is None and not base.lr > 0:
        raise UsageError(f"give the base run's learning rate with {{lr}} ({base.name})", lr="lr")
    opt = optim.with_values(base, values, source=base.source)
    warnings: list[str] = []
    nsr_target = None
    if m is not None:
        warnings, nsr_target = range_context(str(measurement), m, b, target_batch_size, c2)
    result = scale_hyperparameters(
        opt,
        b,
        target_batch_size,
        epochs=epochs,
        steps=steps,
        warmup_steps=warmup_steps,
        nsr_target=nsr_target,
    )
    return replace(result, warnings=tuple(warnings) + result.warnings)


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
    unsafe_load: bool = False
    estimator: str = "batch"  # "batch" | "per-example" (bscrit.per_example)
    target_rel_error: float | None = None  # adaptive: stop when NSR's 95% half-width <= this
    max_batches: int | None = None  # adaptive budget (default 5 x max(200, ceil(n/B)))
    compile: bool = False  # torch.compile the forward pass
    num_workers: int | None = None  # DataLoader workers (default: the spec's data.num_workers)
    prefetch: int | None = None  # DataLoader prefetch_factor


def run_measurement(
    spec: Any,
    checkpoints: Sequence[Any] | None = None,
    options: MeasureOptions | None = None,
    *,
    progress_factory: Callable[[str, int], Any] | None = None,
    on_checkpoint: Callable[[str], None] | None = None,
    dist: Any = None,
) -> Any:
    """Measure every checkpoint of a spec and pool them into a :class:`~bscrit.results.Measurement`.

    Args:
        spec: a :class:`bscrit.spec.Spec`.
        checkpoints: paths overriding the spec's ``checkpoint.path``.
        options: overrides of the spec's ``measure`` section.
        progress_factory: ``(description, total) -> context manager yielding advance(n)``.
        on_checkpoint: called with each checkpoint path before it is measured.
        dist: a :class:`bscrit.distributed.DistContext` when run by torchrun (its device, rows,
            seeds and reduction hooks), else None.
    """
    from pathlib import Path

    from . import __version__
    from .adaptive import adaptive_hooks, adaptive_plan
    from .data import default_num_batches
    from .engine import measure_model
    from .loading import build_dataset, build_loss, load_model, optimizer_for, resolve_device
    from .results import Measurement
    from .summary import equilibrium as equilibrium_of
    from .summary import pool_param_sets, summarize_checkpoint

    o = options or MeasureOptions()
    ms = spec.measure
    paths = [Path(p) for p in (checkpoints or spec.checkpoint.paths)]
    if not paths:
        raise BscritError(
            f"{spec.path}: no checkpoint: give --checkpoint PATH or set checkpoint.path in the spec"
        )
    batch_size = o.batch_size or spec.batch_size
    groups = o.groups or ms.groups
    seed = ms.seed if o.seed is None else o.seed
    mode = o.mode or ms.mode
    device = dist.device if dist is not None else resolve_device(o.device or ms.device)
    dataset = build_dataset(spec.data, spec.base_dir, "data")
    n = len(dataset)
    k = o.batches or ms.batches or default_num_batches(n, batch_size)
    if o.estimator not in ("batch", "per-example"):
        raise BscritError(f"--estimator: expected 'batch' or 'per-example', got {o.estimator!r}")
    adaptive = adaptive_plan(
        o.target_rel_error, o.max_batches, o.batches or ms.batches, groups, n, batch_size
    )
    if adaptive is not None:
        if len(paths) > 1:
            raise BscritError(
                "--target-rel-error measures one checkpoint at a time (pooled checkpoints need "
                "the same groups); give one --checkpoint, or use --batches for a fixed k"
            )
        k = adaptive.start
    loss_fn = build_loss(spec)
    if hasattr(loss_fn, "to"):  # an nn.Module loss, e.g. class weights of a CrossEntropyLoss
        loss_fn = loss_fn.to(device)

    summaries = []
    per_ex: list[tuple[Any, Any]] = []  # (all, scale-invariant) PerExampleStats per checkpoint
    warnings: list[str] = []
    mean_losses: list[float] = []
    opt = None
    elapsed = 0.0
    for ci, path in enumerate(paths):
        if on_checkpoint is not None:
            on_checkpoint(str(path))
        model, ckpt = load_model(spec, path, unsafe=o.unsafe_load)
        if dist is not None:
            model = dist.prepare_model(model)
        kw = dist.measure_kwargs(n, batch_size, k, seed + ci) if dist else {"seed": seed + ci}
        if ci == 0:
            opt = optimizer_for(spec, ckpt)
        model.to(device)
        desc = f"measure {path.name}" + (f" ({ci + 1}/{len(paths)})" if len(paths) > 1 else "")
        run_kw: dict[str, Any] = dict(
            batch_size=batch_size,
            num_batches=k,
            groups=groups,
            **kw,
            device=device,
            mode=mode,
            amp=o.amp,
            num_workers=spec.data.num_workers if o.num_workers is None else o.num_workers,
            prefetch=o.prefetch,
            compile=o.compile,
        )
        if adaptive is not None:
            run_kw["hooks"] = adaptive_hooks(
                adaptive, n, batch_size, seed + ci, run_kw.get("hooks")
            )
        total = adaptive.max_batches if adaptive is not None else k
        with progress_factory(desc, total) if progress_factory else _no_progress() as advance:
            if advance is not None:
                run_kw["progress"] = advance
            if o.estimator == "per-example":
                from .per_example import measure_per_example

                raw, pe_raw = measure_per_example(
                    model, dataset, loss_fn, adaptive=adaptive, **run_kw
                )
            else:
                raw = measure_model(model, dataset, loss_fn, **run_kw)
        elapsed += raw.elapsed_s
        mean_losses.append(raw.mean_loss)  # mean batch loss at this checkpoint
        warnings.extend(w for w in raw.warnings if w not in warnings)
        if o.estimator == "per-example":
            from . import per_example

            summ, pe_all, pe_si = per_example.summarize_checkpoint(
                str(path), raw.tensors, pe_raw, n, batch_size, opt, raw.elapsed_s, raw.tau
            )
            summaries.append(summ)
            per_ex.append((pe_all, pe_si))
        else:
            summaries.append(
                summarize_checkpoint(str(path), raw.tensors, opt, raw.elapsed_s, raw.tau)
            )
        del model

    first = summaries[0]
    if any(s.scale_invariant_names != first.scale_invariant_names for s in summaries[1:]):
        warnings.append(
            "the scale-invariant tensors differ between checkpoints; the pooled scale-invariant "
            "statistics mix different parameter sets"
        )
    all_pooled = pool_param_sets([s.stats.all for s in summaries])
    si_list = [s.stats.scale_invariant for s in summaries]
    si_pooled = pool_param_sets(si_list) if all(si_list) else None  # type: ignore[arg-type]
    eq_set, eq_name = (si_pooled, "scale_invariant") if si_pooled else (all_pooled, "all")
    eq, note = equilibrium_of(opt, eq_set, eq_name)
    if len(paths) > 1:
        note += f"; pooled over {len(paths)} checkpoints"
    if not all_pooled.signal_detected:
        warnings.append(
            "no signal detected at this precision: the 95% interval of G includes 0, so B* has "
            "no upper bound; measure more batches (--batches) to tighten it"
        )
    from .summary import EQUILIBRIUM_TOLERANCE

    if eq is not None and abs(eq.residual) > EQUILIBRIUM_TOLERANCE:
        warnings.append(
            f"equilibrium residual ρ = {eq.residual:+.2f} (|ρ| > {EQUILIBRIUM_TOLERANCE}): the "
            "checkpoint does not look like SGD equilibrium ([LMA21] eq. 11); the prediction is "
            "weaker (average several checkpoints of the constant-LR phase)"
        )
    if first.scale_invariant_fraction == 0:
        warnings.append(
            "no scale-invariant tensor found: the theorems of [LMA21] §5 assume a scale-invariant "
            "loss; the bounds are indicative only"
        )
    extra: dict[str, Any] = {}
    if adaptive is not None:
        extra["stopping"] = adaptive.to_dict()
        if adaptive.reason == "budget exhausted":
            warnings.append(
                f"--target-rel-error {adaptive.target:g} not reached within --max-batches "
                f"{adaptive.max_batches}: the NSR's relative 95% half-width is "
                f"{adaptive.rel_error:.3g}"
            )
    if per_ex:
        from .per_example import estimate_dict, pool_t1

        extra["T1"] = estimate_dict(pool_t1([a for a, _ in per_ex]))
        if all(si is not None for _, si in per_ex):
            extra["T1_scale_invariant"] = estimate_dict(pool_t1([si for _, si in per_ex]))
    return Measurement(
        batch_size=batch_size,
        dataset_size=n,
        num_batches=raw.num_batches if adaptive is not None else k,
        groups=raw.groups if adaptive is not None else groups,
        seed=seed,
        device=str(device),
        mode=mode,
        elapsed_s=elapsed,
        checkpoints=tuple(s.stats for s in summaries),
        all=all_pooled,
        scale_invariant=si_pooled,
        equilibrium=eq,
        equilibrium_note=note,
        optimizer=opt,
        per_parameter=tuple(first.rows),
        scale_invariant_fraction=first.scale_invariant_fraction,
        spec=str(spec.path),
        model=spec.model.name or spec.model.factory,
        amp=o.amp,
        estimator=o.estimator,
        warnings=tuple(warnings),
        bscrit_version=__version__,
        extra={"tau": raw.tau, "mean_loss": sum(mean_losses) / len(mean_losses)}
        | extra
        | ({} if dist is None else {"distributed": dist.describe(batch_size)}),
    )


@contextlib.contextmanager
def _no_progress() -> Iterator[None]:
    yield None
