"""The hot loop itself: blocks of batches → forward, backward, the gradient folded into the group
sums on the device, moved to the host sums at the end of each block (:mod:`bscrit.engine.loop` has
the whole story); its extension points (:class:`LoopHooks`), the throttled clock, the result."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.engine.data import (
    BatchPlan,
    BatchSource,
)
from bscrit.engine.gram import GramCache, norm64, per_tensor_sums, total_sums
from bscrit.engine.groups import SumsPlan, deal, open_sums
from bscrit.engine.objective import batch_gradient
from bscrit.engine.precision import cast_floating, sum_dtype, sum_templates, to_sum_dtype
from bscrit.engine.sanity import check_finite, check_loss, sum_check
from bscrit.errors import BscritError, MeasurementError, UsageError, UserCodeError, first_line
from bscrit.stats.estimators import GroupSums

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
#: The time per batch of the plan line is measured after the first ``ESTIMATE_WARMUP`` batches
#: (they pay for allocations, kernel choice, DataLoader workers starting: 2-3x a later batch),
#: over at least ``ESTIMATE_S`` seconds or ``ESTIMATE_BATCHES`` batches.
ESTIMATE_WARMUP = 3
ESTIMATE_S = 1.0
ESTIMATE_BATCHES = 50


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
        loop: builds the hot loop in place of :class:`_HotLoop` (same keyword arguments): a
            sharded run's (:mod:`bscrit.engine.sharded_loop`).
    """

    local_rows: Callable[[int, Tensor], Tensor] | None = None
    reduce: Callable[[list[Tensor]], None] | None = None
    next_rows: NextRows | None = None
    max_groups: int = 0
    loop: Callable[..., _HotLoop] | None = None


@dataclass(frozen=True)
class LoopResult:
    """What the hot loop returns: per-tensor group sums, invariance sums, counts, mean loss."""

    sums: list[GroupSums]
    abs_dot: list[float]
    norm_prod: list[float]
    counts: tuple[int, ...]
    mean_loss: float
    preconditioned: list[GroupSums] | None = None  # sums of P g per tensor, when P was given


def local_tensor(t: Tensor) -> Tensor:
    """``t`` detached; for a ``DTensor`` (an FSDP2-sharded parameter) this rank's shard."""
    t = t.detach()
    return t.to_local() if hasattr(t, "to_local") else t


class _Clock:
    """Throttled progress (every ``PROGRESS_S`` seconds, not every batch) and the one estimate
    of the time per batch, measured after ``ESTIMATE_WARMUP`` batches (which pay for warm-up)."""

    def __init__(self, progress: Progress | None, estimate: Estimate | None, device: Any) -> None:
        self.progress, self.estimate, self.device = progress, estimate, device
        self.pending, self.done, self.last = 0, 0, time.perf_counter()
        self.start = 0.0  # when the warm-up batches were done

    def _now(self) -> float:
        if self.device.type == "cuda":  # the time of the work, not of its launch
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def tick(self) -> None:
        now = time.perf_counter()
        self.pending += 1
        if self.progress is not None and now - self.last >= PROGRESS_S:
            self.flush(now)
        if self.estimate is None:
            return
        self.done += 1
        if self.done == ESTIMATE_WARMUP:
            self.start = self._now()
            return
        n = self.done - ESTIMATE_WARMUP
        if n >= 2 and (now - self.start >= ESTIMATE_S or n >= ESTIMATE_BATCHES):
            self.estimate((self._now() - self.start) / n)
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
        input_dtype: torch.dtype | None = None,
    ) -> None:
        self.input_dtype = input_dtype  # floating inputs cast to the weights' dtype (bf16 weights)
        self.model, self.source, self.loss_fn, self.device = model, source, loss_fn, device
        self.micro = micro  # examples per forward/backward chunk; None: the whole batch
        params = [p for _, p in named]
        self.precond = None
        if preconditioner is not None:
            self.precond = [
                f.to(device=device, dtype=sum_dtype(p.dtype))
                for f, p in zip(preconditioner, params)
            ]
        if preconditioner is not None and len(preconditioner) != len(named):
            raise UsageError(f"preconditioner: {len(self.precond)} tensors for {len(named)}")
        self.clock, self.seed, self.hooks = clock, seed, hooks
        self.names = [nm for nm, _ in named]
        self.params = [p for _, p in named]
        self.warnings: list[str] = []
        f64 = dict(dtype=torch.float64, device=device)
        self.weights = [local_tensor(p) for p in self.params]  # a DTensor's own shard
        self.w_flat = [w.reshape(-1) for w in self.weights]
        self.w_norm = torch.stack([norm64(w) for w in self.weights])
        like = sum_templates(self.weights)  # bf16/fp16 gradients are summed in float32
        self.group_sum = [torch.zeros(t.shape, dtype=t.dtype, device=device) for t in like]
        self.host = open_sums(like, device, sums_plan)  # group j's sum (host or file)
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
            torch.autocast(device_type=device.type, dtype=torch.bfloat16)
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
        self._reduce_end()
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
        done, i = self.invariance_done[j], 0
        try:
            for x, y in self.source.batches(local, self.seed + j):
                n64, loss = self._batch(x, y, batch_index + i, done + i < INVARIANCE_BATCHES)
                norms_j[i] = n64
                losses_j[i] = loss
                q_j += n64 * n64
                i += 1
                self.clock.tick()
        except UserCodeError as e:  # a dataset item or the collate function, loading batch i
            raise MeasurementError(e.at(f"at batch {batch_index + i}")) from e.error
        self.invariance_done[j] += len(local)
        check_finite(norms_j[: len(local)], losses_j[: len(local)], batch_index, self.names)
        self.loss_sum[0] += losses_j[: len(local)].sum()
        self.loss_sum[1] += len(local)
        qp_j = self.qp_batch - qp_start
        self._reduce_block(q_j, qp_j)
        self.group_sum = self.host.add(j, self.group_sum)
        self.q_rows[j] += q_j
        self.qp_rows[j] += qp_j
        self.counts[j] += len(rows_j)
        if self.cache is not None:
            self.cache.changed(j)
        self.batch_index += len(rows_j)
        self.clock.flush()

    # -- what a sharded run does differently (bscrit.engine.sharded_loop overrides these) -------

    def _gradient(self, x: Any, y: Any, b: int) -> tuple[Tensor, list[Tensor | None]]:
        """(loss, gradient per tensor) of batch ``b``: the whole batch in this process."""
        return batch_gradient(
            self.model, self.loss_fn, self.params, x, y, micro=self.micro,
            check=self._first_check(b) if self.first else None, float32_sums=True,
        )  # fmt: skip

    def _invariance(self, dots: Tensor, n64: Tensor) -> None:
        """Fold one batch's ⟨W, g⟩ and ‖g‖ per tensor into the scale-invariance sums."""
        self.abs_dot.add_(dots.abs())
        self.norm_prod.add_(self.w_norm * n64)

    def _reduce_block(self, q_j: Tensor, qp_j: Tensor) -> None:
        """The end of a block: the block's sums summed across ranks (distributed runs)."""
        if self.hooks.reduce is not None:
            self.hooks.reduce([*self.group_sum, q_j, qp_j])

    def _reduce_end(self) -> None:
        """The end of the loop: the invariance sums and the loss summed across ranks."""
        if self.hooks.reduce is not None:
            self.hooks.reduce([self.abs_dot, self.norm_prod, self.loss_sum])

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
        if self.input_dtype is not None:
            x = cast_floating(x, self.input_dtype)
        try:
            with self.autocast:
                loss, grads = self._gradient(x, y, b)
            self.first = False
        except UserCodeError as e:  # the model, the loss or the backward pass raised
            raise MeasurementError(e.at(f"at batch {b}")) from e.error
        except (BscritError, KeyboardInterrupt):
            raise
        except torch.cuda.OutOfMemoryError:
            raise MeasurementError(
                f"out of GPU memory at batch {b}; try {{amp}} bf16, a micro_batch_size, or a "
                "smaller model/input",
                amp="amp",
            ) from None
        except (RuntimeError, IndexError, ValueError, TypeError) as e:
            # bscrit's own handling of the batch (micro-batches, item counts) on data it cannot
            # take; the user's code raising is a UserCodeError, above
            raise MeasurementError(
                f"the forward/backward pass failed at batch {b}: {first_line(e)}"
            ) from None
        for t, g in enumerate(grads):
            if g is None:
                if t not in self.zero_grads:
                    self.zero_grads[t] = torch.zeros_like(self.weights[t])
                grads[t] = self.zero_grads[t]
        grads = to_sum_dtype(grads)  # bf16 weights: float32 from here on
        n64 = torch.stack(torch._foreach_norm(grads)).double()
        if invariance:  # the invariance test reads W: a few batches per group
            dots = [torch.dot(wf.to(g.dtype), g.reshape(-1)) for wf, g in zip(self.w_flat, grads)]
            self._invariance(torch.stack(dots).double(), n64)
        torch._foreach_add_(self.group_sum, grads)
        if self.precond is not None:  # Q_P: one more norm per batch
            pn = torch.stack(torch._foreach_norm(torch._foreach_mul(grads, self.precond))).double()
            self.qp_batch += pn * pn
        return n64, loss.detach().double()
