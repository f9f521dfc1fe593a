"""The group sums in host memory, how batches are dealt into groups, and the float64 Gram matrices
(torch).

The hot loop (:mod:`bscrit.engine`) folds every batch gradient into a running sum on the device
and, at the end of each block of batches, adds it to its group's sum S_j in host memory
(:class:`HostSums`). Every estimator needs only ⟨S_a, S_b⟩ and the Q_j
(:class:`bscrit.estimators.GroupSums`), formed here in float64, chunk by chunk (no m × numel
float64 copy).

Adaptive runs read the sums after every few batches: :class:`GramCache` keeps the m×m matrices
and recomputes only the rows of the groups that changed or were added since the last read; with
the number of groups capped (:attr:`bscrit.engine.LoopHooks.max_groups`) a read costs the same
however long the run has been.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .estimators import GroupSums

#: Elements per chunk when the float64 Gram matrices are formed (bounded temporary memory).
GRAM_CHUNK = 1 << 16


def host_like(weights: Sequence[Tensor], pin: bool) -> list[Tensor]:
    """Host tensors shaped like ``weights``: one (pinned) allocation per dtype, one view each."""
    out: list[Tensor | None] = [None] * len(weights)
    for dtype in {w.dtype for w in weights}:
        idx = [i for i, w in enumerate(weights) if w.dtype == dtype]
        flat = torch.empty(sum(weights[i].numel() for i in idx), dtype=dtype, pin_memory=pin)
        offset = 0
        for i in idx:
            numel = weights[i].numel()
            out[i] = flat[offset : offset + numel].view(weights[i].shape)
            offset += numel
    return out  # type: ignore[return-value]


class HostSums:
    """Group j's sum of batch gradients, per tensor, in host memory (``sums[j][t]``).

    The first block of a group becomes its sum (on CPU the running tensor itself is kept; on CUDA
    it is copied into pinned memory, asynchronously); later blocks of the group (long groups,
    adaptive runs) are added to it through one pinned staging buffer.
    """

    def __init__(self, weights: Sequence[Tensor], device: torch.device) -> None:
        self.weights = list(weights)
        self.device = device
        self.sums: list[list[Tensor]] = []
        self.staging: list[Tensor] | None = None

    def add(self, j: int, block: list[Tensor]) -> list[Tensor]:
        """Add ``block`` (a running sum on the device) to group j (groups start in order, so a
        new j is ``len(sums)``); returns the zeroed running sum to use next."""
        cpu, pin = self.device.type == "cpu", self.device.type == "cuda"
        if j == len(self.sums):  # the group's first block
            if cpu:  # the sum is in host memory already: keep it, start anew
                self.sums.append(block)
                block = host_like(self.weights, False)
            else:
                host = host_like(self.weights, pin)
                for hs, gs in zip(host, block):
                    hs.copy_(gs, non_blocking=pin)
                self.sums.append(host)
        elif cpu:
            torch._foreach_add_(self.sums[j], block)
        else:
            if self.staging is None:
                self.staging = host_like(self.weights, pin)
            for st, gs in zip(self.staging, block):
                st.copy_(gs, non_blocking=pin)
            if pin:
                torch.cuda.synchronize(self.device)
            torch._foreach_add_(self.sums[j], self.staging)
        torch._foreach_zero_(block)
        return block


def deal(rows: Tensor, start: int, m: int) -> list[tuple[int, Tensor]]:
    """Row i of ``rows`` to group (start + i) mod m, as one block per group (groups in order
    from ``start``). Started at the first of the smaller groups, it keeps group sizes within one
    batch of each other (the batches are independent, so which block runs first is immaterial).
    """
    return [((start + d) % m, rows[d::m]) for d in range(min(len(rows), m))]


def gram_rows(
    vectors: Sequence[Tensor], rows: Sequence[int] | None = None, scale: Tensor | None = None
) -> Tensor:
    """Rows ``rows`` (default: all) of the m×m float64 Gram matrix ⟨v_a, v_b⟩, shape (r, m).

    Converted to float64 chunk by chunk (no m × numel float64 copy). ``scale``: a fixed diagonal
    P (flat, like the vectors): the Gram matrix of P v_a instead, with no copy of the vectors.
    """
    m, numel = len(vectors), vectors[0].numel()
    idx = list(range(m)) if rows is None else list(rows)
    out = torch.zeros(len(idx), m, dtype=torch.float64)
    buf = torch.empty(m, min(GRAM_CHUNK, max(numel, 1)), dtype=torch.float64)
    for lo in range(0, numel, GRAM_CHUNK):
        hi = min(numel, lo + GRAM_CHUNK)
        block = buf[:, : hi - lo]
        for j, v in enumerate(vectors):
            block[j].copy_(v[lo:hi])
        if scale is not None:
            block.mul_(scale[lo:hi].to(torch.float64))
        out.addmm_(block if rows is None else block[idx], block.T)
    return out


class GramCache:
    """Per-tensor Gram matrices, updated row by row: for the groups marked :meth:`changed` and
    for groups added since the last :meth:`update` (all of it when that is most of the rows)."""

    def __init__(self) -> None:
        self.grams: list[Tensor] = []
        self.dirty: set[int] = set()

    def changed(self, j: int) -> None:
        self.dirty.add(j)

    def update(self, host_sums: Sequence[Sequence[Tensor]]) -> list[Tensor]:
        """The Gram matrices of ``host_sums[j][t]`` (group j, tensor t)."""
        m = len(host_sums)
        old = self.grams[0].shape[0] if self.grams else 0
        idx = sorted(self.dirty | set(range(old, m)))
        self.dirty.clear()
        if not idx:
            return self.grams
        full = 2 * len(idx) >= m
        grams = []
        for t in range(len(host_sums[0])):
            rows = gram_rows([host_sums[j][t].reshape(-1) for j in range(m)], None if full else idx)
            if full:
                grams.append(rows)
                continue
            g = torch.zeros(m, m, dtype=torch.float64)
            g[:old, :old] = self.grams[t]
            g[idx, :] = rows
            g[:, idx] = rows.T
            grams.append(g)
        self.grams = grams
        return grams


def per_tensor_sums(
    host_sums: Sequence[Sequence[Tensor]],
    q_rows: Sequence[Tensor],
    counts: Sequence[int],
    cache: GramCache | None = None,
    scales: Sequence[Tensor] | None = None,
) -> list[GroupSums]:
    """:class:`GroupSums` of every tensor (Gram matrices in float64; ``cache`` reused if given).

    ``scales``: a fixed P per tensor; the sums are then those of P g (group sums P S_j), and
    ``q_rows`` must be the Q_j of P g.
    """
    if not host_sums:
        return []
    m = len(host_sums)
    q_host = torch.stack(list(q_rows)).cpu().tolist()
    if cache is not None and scales is not None:
        raise ValueError("the Gram cache holds unscaled sums: no cache with scales")
    grams = cache.update(host_sums) if cache is not None else None
    out = []
    for t in range(len(host_sums[0])):
        scale = scales[t].reshape(-1) if scales is not None else None
        vectors = [hs[t].reshape(-1) for hs in host_sums]
        g64 = grams[t] if grams is not None else gram_rows(vectors, scale=scale)
        out.append(
            GroupSums(
                gram=tuple(tuple(r) for r in g64.tolist()),
                q=tuple(q_host[j][t] for j in range(m)),
                counts=tuple(counts),
            )
        )
    return out


def total_sums(
    host_sums: Sequence[Sequence[Tensor]],
    q_rows: Sequence[Tensor],
    counts: Sequence[int],
    cache: GramCache,
) -> GroupSums:
    """:class:`GroupSums` of all tensors together (what the stopping rule reads): the per-tensor
    Gram matrices and Q_j added up in torch, so the cost does not grow with the run's length."""
    q = torch.stack(list(q_rows)).cpu().sum(dim=1).tolist()
    gram = torch.stack(cache.update(host_sums)).sum(dim=0).tolist()
    return GroupSums(gram=tuple(tuple(r) for r in gram), q=tuple(q), counts=tuple(counts))
