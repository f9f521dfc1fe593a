"""The m group sums in host memory and their float64 Gram matrices (torch).

The hot loop (:mod:`bscrit.engine`) folds every batch gradient into a running sum on the device
and, at the end of each block of batches, adds it to its group's sum S_j in host memory. Every
estimator needs only ⟨S_a, S_b⟩ and the Q_j (:class:`bscrit.estimators.GroupSums`), formed here
in float64, chunk by chunk (no m × numel float64 copy).

Adaptive runs read the sums after every few batches: :class:`GramCache` keeps the m×m matrices
and recomputes only the rows of the groups that changed since the last read, so a read costs the
same (at most m rows of m inner products) however long the run has been.
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


def gram_rows(vectors: Sequence[Tensor], rows: Sequence[int] | None = None) -> Tensor:
    """Rows ``rows`` (default: all) of the m×m float64 Gram matrix ⟨v_a, v_b⟩, shape (r, m).

    Converted to float64 chunk by chunk (no m × numel float64 copy).
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
        out.addmm_(block if rows is None else block[idx], block.T)
    return out


class GramCache:
    """Per-tensor m×m Gram matrices, updated row by row for the groups marked :meth:`changed`."""

    def __init__(self, m: int) -> None:
        self.m = m
        self.grams: list[Tensor] = []
        self.dirty: set[int] = set(range(m))

    def changed(self, j: int) -> None:
        self.dirty.add(j)

    def update(self, host_sums: Sequence[Sequence[Tensor]]) -> list[Tensor]:
        """The Gram matrices of ``host_sums[j][t]`` (group j, tensor t), recomputing the rows and
        columns of the groups changed since the last call only."""
        if not self.dirty:
            return self.grams
        idx = sorted(self.dirty)
        full = len(idx) == self.m or not self.grams
        if full:
            idx = list(range(self.m))
        grams = []
        for t in range(len(host_sums[0])):
            vectors = [host_sums[j][t].reshape(-1) for j in range(self.m)]
            rows = gram_rows(vectors, None if full else idx)
            if full:
                grams.append(rows)
                continue
            g = self.grams[t]
            g[idx, :] = rows
            g[:, idx] = rows.T
            grams.append(g)
        self.grams = grams
        self.dirty.clear()
        return grams


def per_tensor_sums(
    host_sums: Sequence[Sequence[Tensor]],
    q_rows: Sequence[Tensor],
    counts: Sequence[int],
    cache: GramCache | None = None,
) -> list[GroupSums]:
    """:class:`GroupSums` of every tensor (Gram matrices in float64; ``cache`` reused if given)."""
    if not host_sums:
        return []
    m = len(host_sums)
    q_host = torch.stack(list(q_rows)).cpu().tolist()
    grams = cache.update(host_sums) if cache is not None else None
    out = []
    for t in range(len(host_sums[0])):
        g64 = grams[t] if grams is not None else gram_rows([hs[t].reshape(-1) for hs in host_sums])
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
