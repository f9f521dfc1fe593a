"""The Python API: measure a live model, predict from measurements, scale the hyperparameters.

``bscrit.measure``, ``bscrit.predict``, ``bscrit.scale`` and ``bscrit.load_measurement`` are
these functions (exposed lazily by ``bscrit/__init__``, so ``import bscrit`` loads no torch).
They are the library functions behind ``bscrit measure``, ``predict`` and ``scale``: the same
estimators, the same :class:`~bscrit.artifacts.measurement.Measurement` and the same JSON
(:meth:`~bscrit.artifacts.measurement.Measurement.save`). docs/api.md is the user's page.

The guarantees of the command line hold for a live model (docs/api.md, "Guarantees"): its
parameters, buffers, ``.grad``, ``requires_grad`` flags and train/eval mode, the global RNGs
(torch, CUDA, Python's ``random``, NumPy's) and the optimizer's state are the same, bitwise,
after :func:`measure` as before; training that goes on afterwards is the training that would
have happened without it.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from bscrit.errors import UsageError

if TYPE_CHECKING:
    from bscrit.artifacts.measurement import Measurement
    from bscrit.theory.prediction import Prediction
    from bscrit.theory.scaled import ScaledHyperparameters

PathLike = str | os.PathLike[str]
#: ``advance(n)``: told the batches done since the last call.
Advance = Callable[[int], None]


def measure(
    model: Any,
    data: Any,
    loss_fn: Any,
    batch_size: int,
    *,
    num_batches: int | None = None,
    groups: int = 10,
    seed: int = 0,
    device: Any = None,
    optimizer: Any = None,
    micro_batch_size: int | None = None,
    mode: str = "train",
    num_workers: int = 0,
    progress: bool | Advance = False,
    step: int | None = None,
    examples_seen: int | None = None,
    label: str | None = None,
) -> Measurement:
    """Measure G, N and NSR of ``model`` at its current weights (docs/theory.md §2).

    k batches of B distinct examples, drawn independently of one another, give k batch
    gradients of the mean loss; their group sums give Ĝ = ‖ḡ‖² − N̂/k, N̂ (the trace of the
    batch-gradient covariance, [LMA21] eq. 5 at batch size B) and NSR = N̂/Ĝ with jackknife 95%
    intervals over ``groups`` groups. Nothing of the model, its optimizer or the RNGs changes
    (module docstring).

    Args:
        model: a ``torch.nn.Module`` (a LightningModule, a Hugging Face model...).
        data: a map-style ``Dataset``, or a ``DataLoader`` (its dataset and ``collate_fn`` are
            used; its batch size, sampler and shuffling are not: the batches are bscrit's).
        loss_fn: the MEAN loss of a batch, in one of three forms
            (:func:`bscrit.workflows.live.resolve_loss`): ``"model"`` (the model's own
            ``output.loss``, called ``model(**batch)``); a torch loss (``nn.CrossEntropyLoss()``,
            ``F.cross_entropy``) or a function whose first parameter is named ``outputs`` /
            ``logits`` / ``preds``, called ``loss_fn(model(x), y)``; or any other function,
            called ``loss_fn(model, batch)`` with the collated batch.
        batch_size: B, the batch size of the training run (per optimizer step).
        num_batches: k (default max(200, ⌈n/B⌉), [LMA21] F.2).
        groups: m, jackknife groups (≥ 2, k ≥ 2m).
        seed: seeds bscrit's batches and the model's randomness (dropout) inside the
            measurement, not the global RNG.
        device: where to measure (default: where the model's parameters are; another device
            measures a copy).
        optimizer: the run's torch optimizer: its ``param_groups`` say which parameters count
            and its class and hyperparameters are recorded (``predict`` then scales them);
            Adam-like states also give the preconditioned noise (docs/theory.md §5). Only read.
        micro_batch_size: run each batch in chunks of this many examples (a divisor of B).
        mode: ``"train"`` (BatchNorm with batch statistics, dropout on) or ``"eval"``.
        num_workers: DataLoader workers for datasets that are not in-memory tensors.
        progress: False (default), True (a line on stderr), or ``advance(n)``.
        step: the training step of these weights (``checkpoints[0].step`` in the JSON).
        examples_seen: the training examples seen so far (recorded where the format has it).
        label: names the weights in the record (default ``"<ClassName>"``).

    Returns:
        The :class:`~bscrit.artifacts.measurement.Measurement` ``bscrit measure`` returns;
        ``.save(path)`` writes its JSON.

    Raises:
        UsageError, DataError: bad arguments or data, before any batch is drawn.
        MeasurementError: a non-finite loss or gradient, out of memory (names the batch).
    """
    import torch

    from bscrit.engine.loop import LoopSettings, measure_model
    from bscrit.engine.params import requires_grad_only
    from bscrit.engine.precondition import build_preconditioner
    from bscrit.load.factories import meta_message, meta_tensors
    from bscrit.stats.summary import summarize_checkpoint
    from bscrit.workflows.assemble import MeasuredPoint, RunFacts, build_measurement
    from bscrit.workflows.live import (
        check_arguments,
        check_targets,
        engine_collate,
        optimizer_selection,
        parameter_names,
        resolve_data,
        resolve_device,
        resolve_loss,
    )

    check_arguments(batch_size, num_batches, groups, micro_batch_size, mode, seed=seed,
                    step=step, examples_seen=examples_seen, num_workers=num_workers)  # fmt: skip
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    meta = meta_tensors(model)
    if meta:
        raise UsageError(f"model: {meta_message(meta)}")
    d = resolve_data(data)
    loss = resolve_loss(loss_fn)
    dev = resolve_device(model, device)
    view = optimizer_selection(model, optimizer)
    sel, opt = view.selection, view.info
    settings = LoopSettings(
        batch_size=batch_size,
        num_batches=num_batches,
        groups=groups,
        seed=seed,
        device=dev,
        mode=mode,
        num_workers=num_workers,
        micro_batch_size=micro_batch_size,
        collate_fn=engine_collate(d, loss),
    )
    with _kept_state(model), requires_grad_only(model, sel.names), _progress(progress) as adv:
        check_targets(d.dataset, loss)  # reads an example: inside, where the RNGs are kept
        params = parameter_names(model, sel.names)
        pre, why = build_preconditioner(params, view.state, opt, sel.state_indices)
        if optimizer is None:
            why = "no optimizer given (optimizer=...)"
        factors = pre.factors if pre is not None else None
        raw = measure_model(model, d.dataset, loss, settings, progress=adv, preconditioner=factors)
    summary = summarize_checkpoint(
        label or f"<{type(model).__name__}>", raw.tensors, opt, raw.elapsed_s, raw.tau
    )
    described = pre.description if pre is not None else None
    point = MeasuredPoint(summary, raw, step, examples_seen, preconditioner=described)
    facts = RunFacts(
        batch_size=batch_size,
        micro_batch_size=micro_batch_size if micro_batch_size != batch_size else None,
        dataset_size=raw.dataset_size,
        seed=seed,
        device=str(dev),
        mode=mode,
        model=type(model).__name__,
        parameters=sel.to_dict(),
        optimizer=opt,
        preconditioned_reason=why,
        notes=tuple(view.notes),
    )
    return build_measurement([point], facts)


@contextmanager
def _kept_state(model: Any) -> Iterator[None]:
    """Python's and NumPy's global RNG states restored on the way out (the engine forks
    torch's), and gradients enabled inside (a callback may run under ``no_grad``)."""
    import torch

    py = random.getstate()
    np = sys.modules.get("numpy")
    np_state = np.random.get_state() if np is not None else None
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        random.setstate(py)
        if np is not None and np_state is not None:
            np.random.set_state(np_state)


@contextmanager
def _progress(progress: bool | Advance) -> Iterator[Advance | None]:
    """``advance(n)``: the caller's, or one that rewrites a line on stderr (True), or None."""
    if callable(progress):
        yield progress
        return
    if not progress:
        yield None
        return
    done = [0]
    t0 = time.perf_counter()

    def advance(n: int) -> None:
        done[0] += n
        rate = done[0] / max(time.perf_counter() - t0, 1e-9)
        print(f"\rbscrit: {done[0]} batches ({rate:.1f}/s)", end="", file=sys.stderr, flush=True)

    try:
        yield advance
    finally:
        print(file=sys.stderr, flush=True)


def _as_measurement(item: Any, i: int) -> tuple[str, Measurement]:
    from bscrit.artifacts.measurement import Measurement, load_measurement

    if isinstance(item, Measurement):
        source = item.spec or (item.checkpoints[0].path if item.checkpoints else None)
        return source or f"<measurement {i}>", item
    if isinstance(item, (str, os.PathLike)):
        return str(item), load_measurement(item)
    raise UsageError(
        f"measurements[{i}]: expected a Measurement or the path of its JSON, got "
        f"{type(item).__name__}"
    )


def predict(measurements: Any, c2: float = 2.0) -> Prediction:
    """``bscrit predict``: B* with its interval, the recommended range and the base run's
    hyperparameters scaled to its top ([LMA21] Thms 5.2, 5.5, 5.6; docs/theory.md §4).

    Args:
        measurements: a :class:`~bscrit.artifacts.measurement.Measurement` or the path of its JSON,
            or a list of them (the first is the base run).
        c2: C² of [LMA21] (> 1): how much the noise may grow before the SDE breaks.
    """
    from bscrit.theory.prediction import predict as predict_measurements

    items = (
        [measurements]
        if not isinstance(measurements, (list, tuple))
        else list(measurements)
    )  # fmt: skip
    return predict_measurements([_as_measurement(m, i) for i, m in enumerate(items)], c2)


def scale(
    target_batch_size: int,
    measurement: Any = None,
    *,
    optimizer: str | None = None,
    batch_size: int | None = None,
    epochs: float | None = None,
    steps: int | None = None,
    warmup_steps: int | None = None,
    from_spec: PathLike | None = None,
    c2: float = 2.0,
    **hyperparameters: float,
) -> ScaledHyperparameters:
    """``bscrit scale``: the base run's hyperparameters scaled from B to B' by its optimizer's
    rule (linear for SGD, square root for Adam-like ones; docs/theory.md §5).

    Args:
        target_batch_size: B'.
        measurement: a :class:`~bscrit.artifacts.measurement.Measurement` or its JSON path: the base
            optimizer and B, and warnings when B' is past its recommended range.
        optimizer: the optimizer's name (``"sgd"``, ``"adamw"``...), overriding the base's.
        batch_size: the base B (default: the measurement's or the spec's).
        epochs, steps, warmup_steps: the run's length, scaled to keep the examples seen.
        from_spec: a spec whose ``optimizer`` and ``batch_size`` are the base run.
        c2: C² of [LMA21], for the range warnings.
        **hyperparameters: the base values (``lr=0.1, momentum=0.9``), overriding the others.
    """
    from bscrit.theory.rescale import scale_request

    return scale_request(
        target_batch_size,
        optimizer=optimizer,
        batch_size=batch_size,
        values=hyperparameters,
        epochs=epochs,
        steps=steps,
        warmup_steps=warmup_steps,
        from_spec=from_spec,
        measurement=measurement,
        c2=c2,
    )


def load_measurement(path: PathLike) -> Measurement:
    """Read and validate a measurement JSON (written by ``bscrit measure`` or ``.save``)."""
    from bscrit.artifacts.measurement import load_measurement as load

    return load(path)
