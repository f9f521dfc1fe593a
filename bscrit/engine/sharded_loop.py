"""The hot loop of a sharded measurement (``--shard fsdp``): every rank takes part in every batch,
and keeps the group sums of its own shard of the parameters.

The model is sharded by FSDP2 (:mod:`bscrit.engine.sharded`). For each batch of B examples, drawn
from the global seed as in one process:

- the batch is cut into W·M chunks of c = B/(W·M) examples (c = B/W, or a ``micro_batch_size``
  that divides it), with the weights wₘ of :func:`bscrit.engine.objective.chunk_weights` over all
  of them (Σ wₘ = 1; by example, or by item count for token-mean losses), exactly the chunks and
  weights of one process with ``micro_batch_size = c``;
- rank r runs the chunks r·M … r·M + M − 1: forward, then ``(wₘ Lₘ).backward()``. FSDP2
  reduce-scatters the gradient after each backward, told to *sum* (divide factor 1, sum-only
  collectives): the mean is already in the weights wₘ, and FSDP's own averaging is not trusted
  over gloo (pytorch issue 162338). Each rank then holds its shard of g = Σₘ wₘ ∇Lₘ, the batch
  gradient, in the ``.grad`` of its sharded parameters (read, then cleared);
- the shard is folded into this rank's running group sum. ‖g‖² per tensor, ⟨W, g⟩ (the
  scale-invariance test) and the Gram matrices ⟨S_a, S_b⟩ of the group sums add over disjoint
  slices of a tensor, so each rank computes them on its shard and they are summed over the
  ranks in float64 (``all_reduce``): at the end of each block for ‖g‖² and ⟨W, g⟩, after the
  loop for the Gram matrices. The group sums themselves are never exchanged.

So a W-rank sharded measurement computes the same estimator over the same k batches as one
process with ``micro_batch_size = c``, up to the order of float additions. The group sums live
on the rank's device (m × parameters / W): in host memory on CPU, on the GPU on CUDA (or spilled
to a file when the plan says so, :func:`bscrit.engine.groups.plan_sums`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from bscrit.engine.data import user_code
from bscrit.engine.gram import GRAM_CHUNK
from bscrit.engine.groups import HostSums, SumsPlan
from bscrit.engine.hot_loop import _HotLoop
from bscrit.engine.objective import (
    batch_len,
    batch_loss,
    batchnorm_warning,
    chunk_weights,
    split_batch,
)
from bscrit.engine.sanity import check_loss
from bscrit.errors import MeasurementError


def local_factor(f: Tensor, p: Tensor) -> Tensor:
    """This rank's shard of a preconditioner factor ``f`` for the sharded parameter ``p``.

    ``f`` is a ``DTensor`` (from a sharded optimizer state: redistributed like ``p`` if its
    placement differs) or a whole tensor (from a whole state): then the rows of FSDP2's dim-0
    shard (``torch.chunk`` over the mesh), copied so that the whole tensor can be freed.
    """
    if not hasattr(p, "to_local"):
        return f.to_local() if hasattr(f, "to_local") else f
    local = p.to_local()
    if hasattr(f, "to_local"):
        if tuple(f.placements) != tuple(p.placements):  # type: ignore[attr-defined]
            f = f.redistribute(p.device_mesh, p.placements)  # type: ignore[attr-defined]
        part = f.to_local()  # type: ignore[attr-defined]
    else:
        mesh = p.device_mesh  # type: ignore[attr-defined]
        chunks = torch.chunk(f, mesh.size(), dim=0)
        rank = mesh.get_local_rank()
        part = chunks[rank] if rank < len(chunks) else f[:0]
        part = part.clone()
    if tuple(part.shape) != tuple(local.shape):
        raise MeasurementError(
            f"the preconditioner's shard has shape {tuple(part.shape)}, the parameter's "
            f"{tuple(local.shape)}: the optimizer state is not sharded like the model"
        )
    return part


class DeviceSums(HostSums):
    """The group sums of a sharded CUDA run, kept on the device (m × parameters / W): a group's
    first block is kept as it is, later ones added to it; the Gram matrices are formed on the
    device in float64, chunk by chunk."""

    def add(self, j: int, block: list[Tensor]) -> list[Tensor]:
        if j == len(self.sums):
            self.sums.append(block)
            return [torch.zeros_like(b) for b in block]
        torch._foreach_add_(self.sums[j], block)
        torch._foreach_zero_(block)
        return block

    def gram(
        self, t: int, rows: Sequence[int] | None = None, scale: Tensor | None = None
    ) -> Tensor:
        vectors = [s[t].reshape(-1) for s in self.sums]
        m, numel = len(vectors), vectors[0].numel()
        idx = list(range(m)) if rows is None else list(rows)
        out = torch.zeros(len(idx), m, dtype=torch.float64, device=vectors[0].device)
        for lo in range(0, numel, GRAM_CHUNK):
            block = torch.stack([v[lo : lo + GRAM_CHUNK] for v in vectors]).double()
            if scale is not None:
                block.mul_(scale[lo : lo + GRAM_CHUNK].to(block.device, torch.float64))
            out.addmm_(block[idx], block.T)
        return out.cpu()


class ReducedSums:
    """A rank's group sums (its shards) whose Gram matrices are summed over the ranks: the
    Gram matrix of whole tensors is the sum of the Gram matrices of their slices."""

    def __init__(self, inner: HostSums, ctx: Any) -> None:
        self.inner, self.ctx = inner, ctx

    def __len__(self) -> int:
        return len(self.inner)

    @property
    def num_tensors(self) -> int:
        return self.inner.num_tensors

    def add(self, j: int, block: list[Tensor]) -> list[Tensor]:
        return self.inner.add(j, block)

    def gram(
        self, t: int, rows: Sequence[int] | None = None, scale: Tensor | None = None
    ) -> Tensor:
        g = self.inner.gram(t, rows, scale)
        self.ctx.all_sum([g])
        return g

    def close(self) -> None:
        self.inner.close()


class ShardedLoop(_HotLoop):
    """:class:`~bscrit.engine.hot_loop._HotLoop` on a model sharded by FSDP2 (module docstring).

    ``ctx``: the :class:`~bscrit.engine.sharded.ShardedContext` (rank, world size, the sums
    across ranks and the status exchange).
    """

    def __init__(
        self,
        *,
        ctx: Any,
        preconditioner: Sequence[Tensor] | None = None,
        sums_plan: SumsPlan | None = None,
        **kwargs: Any,
    ) -> None:
        named = kwargs["named"]
        if preconditioner is not None:
            preconditioner = [local_factor(f, p) for f, (_, p) in zip(preconditioner, named)]
        super().__init__(preconditioner=preconditioner, sums_plan=sums_plan, **kwargs)
        self.ctx, self.rank, self.world = ctx, ctx.rank, ctx.world_size
        sq = self.w_norm.square()
        ctx.all_sum([sq])  # ‖W‖ of the whole tensors
        self.w_norm = sq.sqrt()
        inner = self.host
        if self.device.type == "cuda" and (sums_plan is None or not sums_plan.spilled):
            inner = DeviceSums(self.host.weights, self.device)
        self.host = ReducedSums(inner, ctx)  # type: ignore[assignment]
        self.pending: list[tuple[Tensor, Tensor]] = []  # (⟨W_r, g_r⟩, ‖g_r‖²) of the block

    def _gradient(self, x: Any, y: Any, b: int) -> tuple[Tensor, list[Tensor | None]]:
        """This rank's chunks of batch ``b``, each backward reduce-scattered (a sum): returns
        (this rank's part Σ wₘ Lₘ of the batch loss, this rank's shard of the batch gradient)."""
        per = batch_len(x, y) // self.world
        c = self.micro if self.micro is not None and self.micro < per else per
        chunks = split_batch(x, y, c)
        weights = chunk_weights(self.model, self.loss_fn, chunks) if len(chunks) > 1 else [1.0]
        mine = len(chunks) // self.world
        lo = self.rank * mine
        if self.first and len(chunks) > 1:  # train-mode BatchNorm sees c examples, not B
            mode = "train" if self.model.training else "eval"
            bn = batchnorm_warning(self.model, c, mode, batch_len(x, y))
            if bn is not None and bn not in self.warnings:
                self.warnings.append(bn)
        for p in self.params:
            p.grad = None
        total: Tensor | None = None
        for (xm, ym), w in zip(chunks[lo : lo + mine], weights[lo : lo + mine]):
            loss, out = batch_loss(self.model, self.loss_fn, xm, ym)
            del out
            if self.first:
                check_loss(loss, b)
            scaled = loss * (w.to(loss.device, loss.dtype) if isinstance(w, Tensor) else w)
            with user_code("the backward pass"):
                scaled.backward()
            total = scaled.detach() if total is None else total + scaled.detach()
        assert total is not None
        grads = [p.grad.to_local() if p.grad is not None else None for p in self.params]
        for p in self.params:
            p.grad = None
        return total, grads  # type: ignore[return-value]

    def _invariance(self, dots: Tensor, n64: Tensor) -> None:
        """⟨W, g⟩ and ‖g‖ need the whole tensors: kept until the block's sum over ranks."""
        self.pending.append((dots, n64 * n64))

    def _reduce_block(self, q_j: Tensor, qp_j: Tensor) -> None:
        """The status exchange, then Q_j, Q_P,j and the pending invariance terms summed over the
        ranks (the group sums stay each rank's own)."""
        extra = []
        if self.pending:
            extra = [torch.stack([d for d, _ in self.pending]),
                     torch.stack([s for _, s in self.pending])]  # fmt: skip
        self.ctx.reduce_scalars([q_j, qp_j, *extra])
        if extra:
            self.abs_dot.add_(extra[0].abs().sum(0))
            self.norm_prod.add_((self.w_norm * extra[1].sqrt()).sum(0))
        self.pending.clear()

    def _reduce_end(self) -> None:
        """The loss summed over the ranks (each rank counted every batch: once in all)."""
        self.ctx.reduce_scalars([self.loss_sum])
        self.loss_sum[1] /= self.world
