"""``bscrit scale``: the base run's optimizer (from a spec, a measurement or explicit values)
and batch size → the hyperparameters scaled to B' by the optimizer's rule (docs/theory.md §5).

Pure: no torch import, so ``bscrit scale`` runs without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from bscrit import boundary
from bscrit.errors import UsageError
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.theory.scaled import ScaledHyperparameters, scale_hyperparameters

if TYPE_CHECKING:
    from bscrit.artifacts.measurement import Measurement

PathLike = str | os.PathLike[str]


def check_request(
    target_batch_size: object,
    batch_size: object,
    values: Mapping[str, object] | None,
    epochs: object,
    steps: object,
    warmup_steps: object,
    c2: object,
) -> None:
    """Every number ``bscrit scale`` is given, before any file is read (:mod:`bscrit.boundary`):
    batch sizes and step counts int64, epochs, C² and hyperparameters finite within their ranges,
    the warm-up no longer than the run; every problem at once.

    Raises:
        UsageError: listing each bad value, naming its option.
    """
    p = boundary.Problems()
    p.integer("target_batch_size", target_batch_size, minimum=1)
    if target_batch_size is None:
        p.add("target_batch_size", "expected a positive integer (a batch size), got None")
    p.integer("batch_size", batch_size, minimum=1)
    p.number("epochs", epochs, low=0.0, low_open=True, what="a positive number")
    s = p.integer("steps", steps, minimum=0)
    w = p.integer("warmup_steps", warmup_steps, minimum=0)
    if s is not None and w is not None and w > s:
        p.add("warmup_steps", f"{w} is more than the run's steps ({s})")
    p.number("c2", c2, low=1.0, low_open=True, what="a number > 1 (C > 1 in [LMA21] Def. 5.1)")
    for key, v in (values or {}).items():
        why = optim.check_value(key, v) if key in optim.HYPERPARAMETERS and v is not None else None
        if why:
            p.add(key, why)
    p.raise_any()


def _no_lr(base: OptimizerInfo, m: Measurement | None, source: str) -> str:
    """Why the base learning rate is unknown, and the ways to give it."""
    if base.source != optim.NAME_ONLY:
        return f"give the base run's learning rate with {{lr}} ({base.name})"
    if m is None:  # the spec names the optimizer; its values live in the checkpoint
        return (
            f"the spec names the optimizer ({base.name}) but not its values, which the "
            "checkpoint holds: give {measurement} with a measurement of that checkpoint "
            "(bscrit measure reads them from it), or the base run's learning rate with {lr}"
        )
    had = f"the values of {m.optimizer.name}" if m.optimizer is not None else "no optimizer"
    return (
        f"the spec names the optimizer ({base.name}) but not its values, and {source} holds "
        f"{had}: give the base run's learning rate with {{lr}}"
    )


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
    measurement: PathLike | Measurement | None = None,
    c2: float = 2.0,
    adam_rule: str = "full",
) -> ScaledHyperparameters:
    """``bscrit scale``: the base run's optimizer from a spec, a measurement or explicit values,
    scaled from B to B' by its rule (docs/theory.md §5).

    Precedence: explicit arguments over the spec over the measurement. ``optimizer`` different
    from the base's starts from that optimizer's defaults. With ``measurement``, warnings say
    when B' is past its recommended range. ``measurement`` is a path or a loaded
    :class:`~bscrit.artifacts.measurement.Measurement` (the Python API's :func:`bscrit.scale`).
    """
    from bscrit.artifacts.measurement import Measurement, load_measurement
    from bscrit.theory.targets import range_context

    check_request(target_batch_size, batch_size, values, epochs, steps, warmup_steps, c2)
    base: OptimizerInfo | None = None
    b = batch_size
    if from_spec is not None:
        from bscrit.specfile.document import load_spec

        s = load_spec(from_spec)
        base = s.optimizer
        b = b if b is not None else s.batch_size
        if steps is None and s.schedule.total_steps is not None:
            steps = s.schedule.total_steps
        if warmup_steps is None and s.schedule.warmup_steps > 0:
            warmup_steps = s.schedule.warmup_steps
    m = measurement if isinstance(measurement, Measurement) else None
    source = "the measurement" if m is not None else str(measurement)
    if measurement is not None and m is None:
        m = load_measurement(measurement)  # type: ignore[arg-type]
    if m is not None:
        named_only = base is not None and base.source == optim.NAME_ONLY
        if base is None or (named_only and m.optimizer and m.optimizer.name == base.name):
            base = m.optimizer  # a spec naming the optimizer only: the measured values
        b = b if b is not None else m.batch_size
    if optimizer is not None and (base is None or base.name != optimizer):
        base = OptimizerInfo(optim.get(optimizer).name, lr=base.lr if base else 0.0, source="cli")
    if base is None:
        where = (
            f"{from_spec} has no optimizer section"
            if from_spec is not None and m is None
            else f"{source} holds no optimizer"
            if m is not None
            else "no optimizer"
        )
        raise UsageError(
            f"{where}: give {{optimizer}} and {{lr}}"
            + (", or {measurement} with a measurement of a checkpoint that saved its optimizer"
               if m is None else "")
            + (" (or {from_spec} spec.yaml)" if from_spec is None else ""),
            optimizer="optimizer",
            lr="lr",
            from_spec="from_spec",
            measurement="measurement",
        )  # fmt: skip
    if b is None:
        raise UsageError(
            "no base batch size: give {batch_size} (or {from_spec} / {measurement})",
            batch_size="batch_size",
            from_spec="from_spec",
            measurement="measurement",
        )
    values = dict(values or {})
    if values.get("lr") is None and not base.lr > 0:
        raise UsageError(_no_lr(base, m, source), lr="lr", measurement="measurement")
    opt = optim.with_values(base, values, source=base.source)
    warnings: list[str] = []
    nsr_target = None
    if m is not None:
        warnings, nsr_target = range_context(source, m, b, target_batch_size, c2, adam_rule)
    result = scale_hyperparameters(
        opt,
        b,
        target_batch_size,
        epochs=epochs,
        steps=steps,
        warmup_steps=warmup_steps,
        nsr_target=nsr_target,
        adam_rule=adam_rule,
    )
    return replace(result, warnings=tuple(warnings) + result.warnings)
