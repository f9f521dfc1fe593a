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
(:mod:`bscrit.engine.groups`); from there on everything is pure arithmetic (:mod:`bscrit.stats.summary`,
:mod:`bscrit.stats.estimators`).

The model is never modified: parameters are only read, ``torch.autograd.grad`` leaves ``.grad``
alone, every buffer (BatchNorm running statistics and ``num_batches_tracked`` included) is restored
bitwise afterwards, the train/eval flag is restored, and the global RNG state is forked.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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
from bscrit.engine.groups import (
    GramCache,
    SumsPlan,
    deal,
    norm64,
    open_sums,
    per_tensor_sums,
    plan_sums,
    total_sums,
)
from bscrit.engine.objective import batch_gradient, batchnorm_warning
from bscrit.engine.sanity import check_finite, check_loss, sum_check
from bscrit.errors import BscritError, DataError, MeasurementError, UsageError, first_line
from bscrit.stats.estimators import GroupSums
from bscrit.stats.summary import TensorSums, default_tau

LossFn = Callable[[Tensor, Tensor], Tensor]
Progress = Callable[[int], None]
#: Called once with the measured seconds per batch (see :func:`measure_model`).
Estimate = Callable[[float], None]
#: ``(extensions so far, GroupSums so far) -> more rows or None`` (:attr:`LoopHooks.next_rows`).
NextRows = Callable[[int, GroupSums], Tensor | BatchPlan | None]

#: The scale-invariance test Σ|⟨W, g⟩| ≤ τ Σ‖W‖‖g‖ (docs/theory.md §3) reads all of W; it runs
#: on the first few batches of every group (m × this many in all), not on every batch: the ratio of
#: sums is as informative (⟨W, g⟩ = 0 holds batch by batch) at a fraction of the memory traffic.
INVARIANCE_BATCHES = 2
#: A group longer than this is run in blocks of at most this many batches: it bounds the index
#: rows and per-batch norms held at once and the stretch between two synchronisations (NaN/Inf
#: check); default runs (k ≤ 1024 m) keep one block per group.
BLOCK_BATCHES = 1024
#: The progress bar advances at most this often (seconds), not after every batch.
PROGRESS_S = 0.25


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
    if amp not in (None, "bf16"):
        raise UsageError(f"amp: expected 'bf16' or none, got {amp!r}")
    if amp == "bf16" and device.type != "cuda":
        raise UsageError(
            "{amp} bf16 needs a CUDA device; drop {amp} or use {device} cuda", amp="amp",
            device="device",
        )  # fmt: skip


def measure_model(
    model: nn.Module,
    dataset: Any,
    loss_fn: LossFn,
    *,
    batch_size: int,
    num_batches: int | None = None,
    groups: int = 10,
    seed: int = 0,
    device: torch.device | str = "cpu",
    mode: str = "train",
    amp: str | None = None,
    num_workers: int = 0,
    progress: Progress | None = None,
    tau: float | None = None,
    batch_rows: Tensor | BatchPlan | None = None,
    hooks: LoopHooks | None = None,
    compile: bool = False,
    prefetch: int | None = None,
    estimate: Estimate | None = None,
    preconditioner: Sequence[Tensor] | None = None,
    micro_batch_size: int | None = None,
    host_memory: int | None = None,
    spill_dir: str | None = None,
    on_plan: Callable[[SumsPlan], None] | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> RawMeasurement:
    """Measure the streaming sums of k batch gradients of ``model`` at its current weights.

    Args:
        model: the network at the checkpoint's weights. Not modified (see module docstring). If it
            is not on ``device``, a deep copy is moved there.
        dataset: map-style dataset of (input, target) pairs; n = len(dataset).
        loss_fn: ``loss_fn(output, target)`` → the *mean* loss of the batch (a scalar).
        batch_size: B, the batch size of the run the checkpoint comes from.
        num_batches: k; default max(200, ceil(n/B)); at most ``data.MAX_BATCHES``.
        groups: m, the number of jackknife groups (≥ 2; k ≥ 2m).
        seed: seeds the batch indices and the model's randomness (dropout), not the global RNG.
        device: where to run.
        mode: "train" (BatchNorm with batch statistics, as in training) or "eval".
        amp: None or "bf16" (CUDA autocast).
        num_workers: DataLoader workers for datasets that are not in-memory tensors.
        progress: called with the batches done since the last call (every ``PROGRESS_S`` s).
        tau: scale-invariance tolerance (default 1e-4; 2e-2 under bf16 autocast or for bf16/fp16
            parameters, :func:`~bscrit.stats.summary.default_tau`).
        batch_rows: explicit k × B index rows or a :class:`~bscrit.engine.data.BatchPlan` (tests, ranks);
            default ``BatchPlan(n, B, k, seed)``, drawn as the loop goes.
        hooks: extension points of the hot loop (:class:`LoopHooks`).
        compile: run the forward pass through ``torch.compile`` (the backward follows).
        prefetch: DataLoader ``prefetch_factor`` (batches per worker; default 4).
        estimate: called once, early, with the measured seconds per batch (not for short runs).
        preconditioner: a fixed P per trainable tensor (:mod:`bscrit.engine.precondition`): the sums of
            P g are kept too (docs/theory.md §5, "Preconditioned noise"): one more norm per
            batch; the group sums of P g are P S_j, formed at the end.
        micro_batch_size: run each batch as B / this chunks (gradient accumulation, a divisor
            of B); the chunks' gradients are weighted into the batch-B gradient
            (:mod:`bscrit.engine.objective`), so the statistics are the same up to float rounding
            (not with train-mode BatchNorm, which then sees the chunks: a warning says so).
        host_memory: bytes the m group sums may take in host memory (default: half the memory
            available); beyond it they spill to a temporary file (:func:`~bscrit.engine.groups.plan_sums`).
        spill_dir: the folder of that file (default: the system's temporary folder, $TMPDIR).
        on_plan: told where the group sums live (:class:`~bscrit.engine.groups.SumsPlan`), before the
            first batch.
        collate_fn: how a DataLoader collates the examples of a batch (default torch's).

    Returns:
        A :class:`RawMeasurement` of per-tensor Gram matrices, Q_j and invariance sums.

    Raises:
        DataError: dataset smaller than B, bad items. UsageError: bad arguments, or group sums
        that fit neither the host memory nor the spill folder.
        MeasurementError: non-scalar or non-finite loss, NaN/Inf gradient (names the batch and
        the parameter), out of memory.
    """
    device = torch.device(device)
    n = len(dataset)
    _validate(n, batch_size, groups, mode, amp, device, micro_batch_size)
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

    if not all(p.device == device for p in model.parameters()):
        model = copy.deepcopy(model).to(device)
    named = trainable_parameters(model)
    if not named:
        raise MeasurementError("model: has no trainable parameters (all requires_grad=False)")
    tau = tau if tau is not None else default_tau((str(p.dtype) for _, p in named), amp)

    hooks = hooks or LoopHooks()
    most_groups = max(groups, hooks.max_groups if hooks.next_rows is not None else 0)
    weights = [p.detach() for _, p in named]
    sums_plan = plan_sums(weights, most_groups, host_memory, spill_dir)
    if on_plan is not None:
        on_plan(sums_plan)
    loop = _HotLoop(
        model=torch.compile(model) if compile else model,  # same parameters and buffers
        named=named,
        source=BatchSource(dataset, device, num_workers, prefetch, collate_fn),
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
        tensors=_tensor_sums(named, result),
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


def _tensor_sums(named: list[tuple[str, nn.Parameter]], r: LoopResult) -> list[TensorSums]:
    """Per-tensor sums of a finished loop, with ‖W‖² in float64 (no float64 copy of W)."""
    f64_norms = [norm64(p) for _, p in named]
    return [
        TensorSums(
            name=nm,
            shape=tuple(p.shape),
            sums=r.sums[i],
            norm_sq=float(f64_norms[i]) ** 2,
            abs_dot=r.abs_dot[i],
            norm_prod=r.norm_prod[i],
            preconditioned=r.preconditioned[i] if r.preconditioned is not None else None,
        )
        for i, (nm, p) in enumerate(named)
    ]


@dataclass
class LoopHooks:
    """Extension points of the hot loop (used by the distributed and adaptive paths).

    The loop works in *blocks*: consecutive batches of one group j (a group longer than
    ``BLOCK_BATCHES`` is several; batches dealt into the groups are a block per group).

    Attributes:
        local_rows: ``(group j, rows of a block of group j) -> rows this process computes``,
            called once per block, in order. Default: all. A distributed run gives rank r the
            rows ``r::world_size`` of every block.
        reduce: in-place sum of a list of tensors across processes. Called once at the end of
            every block with ``[*block_sum, q_block]`` and once at the end with the invariance
            sums; every process calls it the same number of times.
        next_rows: ``(extensions so far, GroupSums of all tensors so far) -> more rows, or None
            to stop``, called after the planned batches and after each extension (a run goes on
            to a target precision). The rows form a new group while there are fewer than
            ``max_groups``, else are dealt round-robin into the groups (sizes within one batch):
            host memory and the cost of a call stop growing.
        max_groups: the most groups ``next_rows`` may grow the run to (0: never a new group).
    """

    local_rows: Callable[[int, Tensor], Tensor] | None = None
    reduce: Callable[[list[Tensor]], None] | None = None
    next_rows: NextRows | None = None
    max_groups: int = 0


@dataclass(frozen=True)
class LoopResult:
    """What the hot loop returns: per-tensor group sums, invariance sums, counts, mean loss."""

    sums: list[GroupSums]
    abs_dot: list[float]
    norm_prod: list[float]
    counts: tuple[int, ...]
    mean_loss: float
    preconditioned: list[GroupSums] | None = None  # sums of P g per tensor, when P was given


class _Clock:
    """Throttled progress (every ``PROGRESS_S`` seconds, not every batch) and the one estimate
    of the time per batch, measured after the first batch (which pays for warm-up)."""

    def __init__(self, progress: Progress | None, estimate: Estimate | None, device: Any) -> None:
        self.progress, self.estimate, self.device = progress, estimate, device
        self.pending, self.after_first, self.last = 0, 0, time.perf_counter()
        self.first_done: float | None = None

    def tick(self) -> None:
        now = time.perf_counter()
        self.pending += 1
        if self.progress is not None and now - self.last >= PROGRESS_S:
            self.flush(now)
        if self.estimate is None:
            return
        if self.first_done is None:
            self.first_done = now
            return
        self.after_first += 1
        if self.after_first >= 2 and (now - self.first_done >= 0.5 or self.after_first >= 50):
            if self.device.type == "cuda":  # once: the time of the work, not of its launch
                torch.cuda.synchronize(self.device)
                now = time.perf_counter()
            self.estimate((now - self.first_done) / self.after_first)
            self.estimate = None

    def flush(self, now: float | None = None) -> None:
        if self.progress is not None and self.pending:
            self.progress(self.pending)
        self.pending = 0
        self.last = time.perf_counter() if now is None else now


class _HotLoop:
    """The loop over blocks of batches: forward, backward, fold the gradient into the sums (on
    the device until the end of each block, then into its group's host sum; module docstring)."""

    def __init__(
        self,
        *,
        model: nn.Module,
        named: list[tuple[str, nn.Parameter]],
        source: BatchSource,
        loss_fn: LossFn,
        device: torch.device,
        amp: str | None,
        groups: int,
        clock: _Clock,
        seed: int,
        hooks: LoopHooks,
        preconditioner: Sequence[Tensor] | None = None,
        micro: int | None = None,
        sums_plan: SumsPlan | None = None,
    ) -> None:
        self.model, self.source, self.loss_fn, self.device = model, source, loss_fn, device
        self.micro = micro  # examples per forward/backward chunk; None: the whole batch
        params = [p for _, p in named]
        self.precond = None
        if preconditioner is not None:
            self.precond = [
                f.to(device=device, dtype=p.dtype) for f, p in zip(preconditioner, params)
            ]
        if preconditioner is not None and len(preconditioner) != len(named):
            raise UsageError(f"preconditioner: {len(self.precond)} tensors for {len(named)}")
        self.clock, self.seed, self.hooks = clock, seed, hooks
        self.names = [nm for nm, _ in named]
        self.params = [p for _, p in named]
        self.warnings: list[str] = []
        f64 = dict(dtype=torch.float64, device=device)
        self.weights = [p.detach() for p in self.params]
        self.w_flat = [w.reshape(-1) for w in self.weights]
        self.w_norm = torch.stack([norm64(w) for w in self.weights])
        self.group_sum = [torch.zeros_like(w) for w in self.weights]
        self.host = open_sums(self.weights, device, sums_plan)  # group j's sum (host or file)
        self.q_rows: list[Tensor] = []  # group j's Q_j per tensor (float64, on the device)
        self.qp_rows: list[Tensor] = []  # the same for P g (stays 0 without a preconditioner)
        self.qp_batch = torch.zeros(len(self.params), dtype=torch.float64, device=device)
        self.counts: list[int] = []
        self.invariance_done: list[int] = []  # batches of group j run with the invariance test
        for _ in range(groups):
            self._new_group()
        self.abs_dot = torch.zeros(len(self.params), **f64)
        self.norm_prod = torch.zeros(len(self.params), **f64)
        self.loss_sum = torch.zeros(2, **f64)  # (Σ loss, number of batches) for the mean loss
        self.zero_grads: dict[int, Tensor] = {}
        self.autocast = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16)
            if amp == "bf16"
            else torch.autocast(device_type=device.type, enabled=False)
        )
        self.cache = GramCache() if hooks.next_rows is not None else None
        self.first = True
        self.batch_index = 0  # global index of the next batch

    def _new_group(self) -> int:
        self.q_rows.append(torch.zeros(len(self.params), dtype=torch.float64, device=self.device))
        self.qp_rows.append(torch.zeros(len(self.params), dtype=torch.float64, device=self.device))
        self.counts.append(0)
        self.invariance_done.append(0)
        return len(self.counts) - 1

    def run(self, blocks: Iterable[tuple[int, Tensor]]) -> LoopResult:
        for j, rows in blocks:
            self._block(j, rows)
        if self.hooks.next_rows is not None and self.cache is not None:
            self._extend(self.hooks.next_rows)
        if self.hooks.reduce is not None:
            self.hooks.reduce([self.abs_dot, self.norm_prod, self.loss_sum])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        loss_n = float(self.loss_sum[1])
        return LoopResult(
            sums=per_tensor_sums(self.host, self.q_rows, self.counts, cache=self.cache),
            abs_dot=self.abs_dot.cpu().tolist(),
            norm_prod=self.norm_prod.cpu().tolist(),
            counts=tuple(self.counts),
            mean_loss=float(self.loss_sum[0]) / loss_n if loss_n > 0 else math.nan,
            preconditioned=self._preconditioned_sums(),
        )

    def _preconditioned_sums(self) -> list[GroupSums] | None:
        """GroupSums of P g per tensor: the group sums are P S_j (P is fixed), their Gram in
        float64 from the host sums; Q_P from the per-batch norms (docs/theory.md §5)."""
        if self.precond is None:
            return None
        factors = [f.detach().to("cpu") for f in self.precond]
        return per_tensor_sums(self.host, self.qp_rows, self.counts, scales=factors)

    def _extend(self, next_rows: NextRows) -> None:
        """Ask for more rows until told to stop: new groups up to ``max_groups``, then dealt
        round-robin into the groups, continuing from the first of the smaller ones."""
        assert self.cache is not None
        start, extension = -1, 0  # start: the next group to deal into (-1: not dealing yet)
        while True:
            if self.device.type == "cuda":  # the host sums are complete before they are read
                torch.cuda.synchronize(self.device)
            sums = total_sums(self.host, self.q_rows, self.counts, self.cache)
            rows = next_rows(extension, sums)
            if rows is None:
                return
            grow = len(self.counts) < self.hooks.max_groups
            j_new = self._new_group() if grow else -1
            m = len(self.counts)
            if not grow and start < 0:
                start = self.counts.index(min(self.counts))
            for chunk in rows.chunks() if isinstance(rows, BatchPlan) else [rows]:
                parts = [(j_new, chunk)]
                if not grow:
                    parts, start = deal(chunk, start, m), (start + len(chunk)) % m
                for j, part in parts:
                    for lo in range(0, len(part), BLOCK_BATCHES):
                        self._block(j, part[lo : lo + BLOCK_BATCHES])
            extension += 1

    def _block(self, j: int, rows_j: Tensor) -> None:
        """One block of group j: its batches, one synchronisation (finite check), reduce, and
        its sum added to group j's sum in host memory."""
        batch_index = self.batch_index
        local = self.hooks.local_rows(j, rows_j) if self.hooks.local_rows is not None else rows_j
        f64 = dict(dtype=torch.float64, device=self.device)
        q_j = torch.zeros(len(self.params), **f64)
        qp_start = self.qp_batch.clone()
        norms_j = torch.zeros(max(len(local), 1), len(self.params), **f64)
        losses_j = torch.zeros(max(len(local), 1), **f64)
        done = self.invariance_done[j]
        for i, (x, y) in enumerate(self.source.batches(local, self.seed + j)):
            n64, loss = self._batch(x, y, batch_index + i, done + i < INVARIANCE_BATCHES)
            norms_j[i] = n64
            losses_j[i] = loss
            q_j += n64 * n64
            self.clock.tick()
        self.invariance_done[j] += len(local)
        check_finite(norms_j[: len(local)], losses_j[: len(local)], batch_index, self.names)
        self.loss_sum[0] += losses_j[: len(local)].sum()
        self.loss_sum[1] += len(local)
        qp_j = self.qp_batch - qp_start
        if self.hooks.reduce is not None:
            self.hooks.reduce([*self.group_sum, q_j, qp_j])
        self.group_sum = self.host.add(j, self.group_sum)
        self.q_rows[j] += q_j
        self.qp_rows[j] += qp_j
        self.counts[j] += len(rows_j)
        if self.cache is not None:
            self.cache.changed(j)
        self.batch_index += len(rows_j)
        self.clock.flush()

    def _first_check(self, b: int) -> Callable[[Tensor, Any, Any], None]:
        """The first batch's checks, on each of its micro-batches: a scalar mean loss that
        depends on the parameters (every chunk), not a sum over the batch (the first)."""
        chunks = [0]

        def check(loss: Tensor, x: Any, y: Any) -> None:
            check_loss(loss, b)
            if not chunks[0]:
                sum_check(self.model, self.loss_fn, x, y, loss, self.autocast, self.warnings)
            chunks[0] += 1

        return check

    def _batch(self, x: Any, y: Any, b: int, invariance: bool) -> tuple[Tensor, Tensor]:
        """Forward, backward and fold batch ``b`` in; returns (per-tensor ‖g‖ float64, loss)."""
        try:
            with self.autocast:
                loss, grads = batch_gradient(
                    self.model, self.loss_fn, self.params, x, y, micro=self.micro,
                    check=self._first_check(b) if self.first else None,
                )  # fmt: skip
            self.first = False
        except (BscritError, KeyboardInterrupt):
            raise
        except torch.cuda.OutOfMemoryError:
            raise MeasurementError(
                f"out of GPU memory at batch {b}; try {{amp}} bf16, a micro_batch_size, or a "
                "smaller model/input",
                amp="amp",
            ) from None
        except (RuntimeError, IndexError, ValueError, TypeError) as e:
            # IndexError/ValueError: e.g. cross_entropy with class labels out of range for the
            # model's output, or a target of the wrong shape; TypeError: a dict batch with a key
            # the model's forward does not take (dict examples are passed as model(**batch))
            raise MeasurementError(
                f"the forward/backward pass failed at batch {b}: {first_line(e)}"
            ) from None
        for t, g in enumerate(grads):
            if g is None:
                if t not in self.zero_grads:
                    self.zero_grads[t] = torch.zeros_like(self.weights[t])
                grads[t] = self.zero_grads[t]
        n64 = torch.stack(torch._foreach_norm(grads)).double()
        if invariance:  # the invariance test reads W: a few batches per group
            dots = [torch.dot(wf, g.reshape(-1).to(wf.dtype)) for wf, g in zip(self.w_flat, grads)]
            self.abs_dot.add_(torch.stack(dots).double().abs())
            self.norm_prod.add_(self.w_norm * n64)
        torch._foreach_add_(self.group_sum, grads)
        if self.precond is not None:  # Q_P: one more norm per batch
            pn = torch.stack(torch._foreach_norm(torch._foreach_mul(grads, self.precond))).double()
            self.qp_batch += pn * pn
        return n64, loss.detach().double()
