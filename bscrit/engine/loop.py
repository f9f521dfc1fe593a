"""The measurement engine: k independent batch gradients at fixed weights → streaming sums.

The estimators are those of docs/theory.md §2.

This is bscrit's only hot loop. For each of k batches (B distinct examples, drawn independently of
the other batches) it computes the gradient of the mean batch loss — without the weight-decay term
and without touching ``.grad`` — and folds it into:

- one running group sum per trainable tensor, on the device (the only extra device memory, 1× the
  parameters; the batch gradient itself is the other 1×);
- per-tensor float64 scalars on the device: Q_j (Σ‖g‖² of the group), Σ|⟨W, g⟩| and Σ‖W‖‖g‖ (the
  scale-invariance test of docs/theory.md §3, on the first ``INVARIANCE_BATCHES`` batches of
  each group);
- at the end of each block — a group, or a piece of at most ``BLOCK_BATCHES`` of a longer one —
  the sum is moved to its group's sum in host memory (pinned and asynchronous on CUDA; on CPU
  the tensor itself is kept) and reset. One host-device synchronisation per block checks for
  NaN/Inf. When the m sums (m × the parameter bytes) would not fit the host-memory budget they
  go to a temporary file instead (:func:`bscrit.engine.groups.plan_sums`, decided before any batch).

The k × B example indices are drawn as the loop goes (:class:`~bscrit.engine.data.BatchPlan`), never
all at once, so k costs time, not memory; k is capped at ``data.MAX_BATCHES``.

Per-batch cost beyond forward+backward: one ``_foreach_norm`` and one ``_foreach_add_`` over the
gradient (docs/performance.md has the benchmarks). Extension points: :class:`LoopHooks`
(distributed ranks, adaptive stopping via :func:`adaptive_hooks`); the per-example estimator
(:mod:`bscrit.engine.per_example`) adds its own hooks on the model.

After the loop, the m×m Gram matrix ⟨S_a, S_b⟩ of every tensor is formed in float64 on the host
(:mod:`bscrit.engine.groups`); from there on everything is pure arithmetic
(:mod:`bscrit.stats.summary`, :mod:`bscrit.stats.estimators`).

The model is never modified: parameters are only read, ``torch.autograd.grad`` leaves ``.grad``
alone, every buffer (BatchNorm running statistics and ``num_batches_tracked`` included) is restored
bitwise afterwards, the train/eval flag is restored, and the global RNG state is forked.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.checker import check_batch_size
from bscrit.engine.data import (
    BatchPlan,
    BatchSource,
    check_num_batches,
    default_num_batches,
    group_blocks,
    group_counts,
)
from bscrit.engine.groups import SumsPlan
from bscrit.engine.hot_loop import (
    BLOCK_BATCHES,
    Estimate,
    LoopHooks,
    LoopResult,
    LossFn,
    Progress,
    _Clock,
    _HotLoop,
)
from bscrit.engine.memory import plan_run
from bscrit.engine.objective import batchnorm_warning
from bscrit.engine.precision import WEIGHT_DTYPES, check_precision, place_model
from bscrit.errors import DataError, MeasurementError, UsageError
from bscrit.stats.summary import TensorSums, default_tau


@dataclass(frozen=True)
class RawMeasurement:
    """Torch-free output of :func:`measure_model` for one checkpoint."""

    tensors: list[TensorSums]
    batch_size: int
    dataset_size: int
    num_batches: int
    groups: int
    counts: tuple[int, ...]
    seed: int
    device: str
    mode: str
    amp: str | None
    elapsed_s: float
    mean_loss: float
    tau: float
    warnings: tuple[str, ...] = ()


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _validate(
    n: int,
    batch_size: int,
    groups: int,
    mode: str,
    amp: str | None,
    device: torch.device,
    micro: int | None = None,
    weights: str | None = None,
) -> None:
    """Every argument check of :func:`measure_model` that needs no work (before any batch)."""
    check_batch_size(batch_size)
    if micro is not None and (micro < 1 or batch_size % micro):
        raise UsageError(
            f"micro_batch_size {micro} does not divide the batch size B = {batch_size} (the "
            "micro-batches of one batch must be equal)"
        )
    if n < batch_size:
        raise DataError(
            f"data: the dataset has {n} examples, fewer than the batch size B={batch_size}"
        )
    if n == batch_size:
        raise DataError(
            f"data: the batch size B={batch_size} is the whole dataset: every batch is the same, "
            "so there is no gradient noise to measure (N = 0); use B < n"
        )
    if groups < 2:
        raise UsageError(f"groups: the jackknife needs at least 2 groups, got {groups}")
    if mode not in ("train", "eval"):
        raise UsageError(f"mode: expected 'train' or 'eval', got {mode!r}")
    check_precision(amp, weights, device)


@dataclass(frozen=True)
class LoopSettings:
    """How the engine measures, everything but the model, the data, the loss and the callbacks:
    the one typed object that the command line's options (through
    :class:`~bscrit.workflows.plan.MeasurePlan`) and the Python API's arguments end in.

    Attributes:
        batch_size: B, the batch size of the run the checkpoint comes from.
        num_batches: k; default max(200, ceil(n/B)); at most ``data.MAX_BATCHES``.
        groups: m, the number of jackknife groups (≥ 2; k ≥ 2m).
        seed: seeds the batch indices and the model's randomness (dropout), not the global RNG.
        device: where to run.
        mode: "train" (BatchNorm with batch statistics, as in training) or "eval".
        amp: None or "bf16": ``torch.autocast`` in bfloat16 on CPU or CUDA, weights as they are.
        weights: None (as the model is), "bf16" or "fp32": the model copied in that dtype for the
            forward/backward (``--precision bf16-weights``: how sharded runs keep them); the
            gradients are cast to float32 before any sum (:mod:`bscrit.engine.precision`).
        num_workers: DataLoader workers for datasets that are not in-memory tensors.
        prefetch: DataLoader ``prefetch_factor`` (batches per worker; default 4).
        compile: run the forward pass through ``torch.compile`` (the backward follows).
        micro_batch_size: run each batch as B / this chunks (gradient accumulation, a divisor
            of B); the chunks' gradients are weighted into the batch-B gradient
            (:mod:`bscrit.engine.objective`), so the statistics are the same up to float rounding
            (not with train-mode BatchNorm, which then sees the chunks: a warning says so).
        host_memory: bytes the m group sums may take in host memory (default: half the memory
            available); beyond it they spill to a temporary file
            (:func:`~bscrit.engine.groups.plan_sums`).
        spill_dir: the folder of that file (default: the system's temporary folder, $TMPDIR).
        tau: scale-invariance tolerance (default 1e-4; 2e-2 under bf16 autocast or for bf16/fp16
            parameters, :func:`~bscrit.stats.summary.default_tau`).
        collate_fn: how a DataLoader collates the examples of a batch (default torch's).
    """

    batch_size: int
    num_batches: int | None = None
    groups: int = 10
    seed: int = 0
    device: Any = "cpu"  # torch.device or its name
    mode: str = "train"
    amp: str | None = None
    weights: str | None = None
    num_workers: int = 0
    prefetch: int | None = None
    compile: bool = False
    micro_batch_size: int | None = None
    host_memory: int | None = None  # bytes
    spill_dir: str | None = None
    tau: float | None = None
    collate_fn: Callable[[list[Any]], Any] | None = None


def measure_model(
    model: nn.Module,
    dataset: Any,
    loss_fn: LossFn,
    settings: LoopSettings | None = None,
    *,
    progress: Progress | None = None,
    batch_rows: Tensor | BatchPlan | None = None,
    hooks: LoopHooks | None = None,
    estimate: Estimate | None = None,
    preconditioner: Sequence[Tensor] | None = None,
    on_plan: Callable[[SumsPlan], None] | None = None,
    **fields: Any,
) -> RawMeasurement:
    """Measure the streaming sums of k batch gradients of ``model`` at its current weights.

    Args:
        model: the network at the checkpoint's weights. Not modified (see module docstring). If it
            is not on ``device``, a deep copy is moved there.
        dataset: map-style dataset of (input, target) pairs; n = len(dataset).
        loss_fn: ``loss_fn(output, target)`` → the *mean* loss of the batch (a scalar).
        settings: how to measure (:class:`LoopSettings`); ``fields`` (its attribute names, e.g.
            ``batch_size=128, groups=10``) replace its values, or make it when it is None.
        progress: called with the batches done since the last call (every ``PROGRESS_S`` s).
        batch_rows: explicit k × B index rows or a :class:`~bscrit.engine.data.BatchPlan`
            (tests, ranks); default ``BatchPlan(n, B, k, seed)``, drawn as the loop goes.
        hooks: extension points of the hot loop (:class:`~bscrit.engine.hot_loop.LoopHooks`).
        estimate: called once, early, with the measured seconds per batch (not for short runs).
        preconditioner: a fixed P per trainable tensor (:mod:`bscrit.engine.precondition`): the
            sums of P g are kept too (docs/theory.md §5, "Preconditioned noise"): one more norm
            per batch; the group sums of P g are P S_j, formed at the end.
        on_plan: told where the group sums live (:class:`~bscrit.engine.groups.SumsPlan`),
            before the first batch.

    Returns:
        A :class:`RawMeasurement` of per-tensor Gram matrices, Q_j and invariance sums.

    Raises:
        DataError: dataset smaller than B, bad items. UsageError: bad arguments, or group sums
        that fit neither the host memory nor the spill folder.
        MeasurementError: non-scalar or non-finite loss, NaN/Inf gradient (names the batch and
        the parameter), out of memory.
    """
    s = replace(settings, **fields) if settings is not None else LoopSettings(**fields)
    batch_size, groups, seed, mode, amp = s.batch_size, s.groups, s.seed, s.mode, s.amp
    num_batches, micro_batch_size, tau = s.num_batches, s.micro_batch_size, s.tau
    device = torch.device(s.device)
    n = len(dataset)
    _validate(n, batch_size, groups, mode, amp, device, micro_batch_size, s.weights)
    micro = micro_batch_size if micro_batch_size and micro_batch_size < batch_size else None
    k = len(batch_rows) if batch_rows is not None else (
        num_batches if num_batches is not None else default_num_batches(n, batch_size)
    )  # fmt: skip
    check_num_batches(k)
    if k < 2 * groups:
        raise UsageError(
            f"batches: need at least 2 batches per group ({2 * groups} for {groups} groups), "
            f"got {k}"
        )
    rows = batch_rows if batch_rows is not None else BatchPlan(n, batch_size, k, seed)
    chunks = rows.chunks() if isinstance(rows, BatchPlan) else [rows]

    source, model = model, place_model(model, device, s.weights)
    named = trainable_parameters(model)
    if not named:
        raise MeasurementError("model: has no trainable parameters (all requires_grad=False)")
    tau = tau if tau is not None else default_tau((str(p.dtype) for _, p in named), amp)

    hooks = hooks or LoopHooks()
    most_groups = max(groups, hooks.max_groups if hooks.next_rows is not None else 0)
    weights = [p.detach() for _, p in named]
    sums_plan = plan_run(model, source, weights, most_groups, s, device, preconditioner)
    if on_plan is not None:
        on_plan(sums_plan)
    loop = (hooks.loop or _HotLoop)(
        model=torch.compile(model) if s.compile else model,  # same parameters and buffers
        named=named,
        source=BatchSource(dataset, device, s.num_workers, s.prefetch, s.collate_fn),
        loss_fn=loss_fn,
        device=device,
        amp=amp,
        groups=groups,
        clock=_Clock(progress, estimate, device),
        seed=seed,
        hooks=hooks,
        preconditioner=preconditioner,
        micro=micro,
        sums_plan=sums_plan,
        input_dtype=WEIGHT_DTYPES.get(s.weights or ""),
    )
    if (bn := batchnorm_warning(model, micro, mode, batch_size)) is not None:
        loop.warnings.append(bn)
    was_training = model.training
    buffers = {nm: b.detach().clone() for nm, b in model.named_buffers()}
    t0 = time.perf_counter()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            model.train(mode == "train")
            result = loop.run(group_blocks(chunks, group_counts(k, groups), BLOCK_BATCHES))
    except BaseException:
        with contextlib.suppress(RuntimeError):  # a device that failed may refuse the copies
            _restore(model, buffers, was_training)
        raise
    finally:
        loop.host.close()  # a spill file is deleted
    _restore(model, buffers, was_training)
    return RawMeasurement(
        tensors=_tensor_sums(named, result, loop.w_norm),
        batch_size=batch_size,
        dataset_size=n,
        num_batches=sum(result.counts),
        groups=len(result.counts),
        counts=result.counts,
        seed=seed,
        device=str(device),
        mode=mode,
        amp=amp,
        elapsed_s=time.perf_counter() - t0,
        mean_loss=result.mean_loss,
        tau=tau,
        warnings=tuple(loop.warnings),
    )


def _restore(model: nn.Module, buffers: dict[str, Tensor], was_training: bool) -> None:
    model.train(was_training)
    with torch.no_grad():
        for nm, b in model.named_buffers():
            if nm in buffers:
                b.copy_(buffers[nm])


def _tensor_sums(
    named: list[tuple[str, nn.Parameter]], r: LoopResult, w_norm: Tensor
) -> list[TensorSums]:
    """Per-tensor sums of a finished loop, with ‖W‖² in float64 (the loop's ``w_norm``: no
    float64 copy of W; a sharded loop's is summed over the ranks), shapes the global ones."""
    f64_norms = w_norm.cpu().tolist()
    return [
        TensorSums(
            name=nm,
            shape=tuple(p.shape),
            sums=r.sums[i],
            norm_sq=f64_norms[i] ** 2,
            abs_dot=r.abs_dot[i],
            norm_prod=r.norm_prod[i],
            preconditioned=r.preconditioned[i] if r.preconditioned is not None else None,
        )
        for i, (nm, p) in enumerate(named)
    ]
