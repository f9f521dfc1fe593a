"""Float64 Gram matrices ⟨S_a, S_b⟩ of the m group sums and float64 norms, formed chunk by chunk
(no m × numel float64 copy), and the :class:`~bscrit.stats.estimators.GroupSums` every estimator
reads. :class:`GramCache` keeps the m×m matrices across the reads of an adaptive run and
recomputes only the rows of the groups that changed (the sums themselves live in
:mod:`bscrit.engine.groups`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from bscrit.stats.estimators import GroupSums


class SumsStore(Protocol):
    """The m group sums as the Gram functions read them (:class:`bscrit.engine.groups.HostSums`
    and its spilled variant)."""

    @property
    def num_tensors(self) -> int: ...

    def __len__(self) -> int: ...

    def gram(
        self, t: int, rows: Sequence[int] | None = None, scale: Tensor | None = None
    ) -> Tensor: ...


#: Elements per chunk when the float64 Gram matrices are formed (bounded temporary memory).
GRAM_CHUNK = 1 << 16
#: Elements per chunk of a float64 norm (:func:`norm64`).
NORM_CHUNK = 1 << 22


def norm64(w: Tensor) -> Tensor:
    """‖w‖ in float64 on w's device, accumulated over chunks of ``NORM_CHUNK`` elements: no
    float64 copy of w (a 41M-element weight would take 330 MB more at the peak)."""
    flat = w.detach().reshape(-1)
    if flat.numel() <= NORM_CHUNK:
        return torch.linalg.vector_norm(flat, dtype=torch.float64)
    sq = torch.zeros((), dtype=torch.float64, device=flat.device)
    for lo in range(0, flat.numel(), NORM_CHUNK):
        sq += torch.linalg.vector_norm(flat[lo : lo + NORM_CHUNK], dtype=torch.float64).square()
    return sq.sqrt()


class _GramAccumulator:
    """Rows ``rows`` of an m×m float64 Gram matrix, accumulated over consecutive pieces of the
    vectors in ``GRAM_CHUNK``-element chunks (pieces of whole chunks give the same sums bit for
    bit as one pass over the whole vectors)."""

    def __init__(self, m: int, rows: Sequence[int] | None, numel: int) -> None:
        self.idx = None if rows is None else list(rows)
        self.out = torch.zeros(m if rows is None else len(self.idx or []), m, dtype=torch.float64)
        self.buf = torch.empty(m, min(GRAM_CHUNK, max(numel, 1)), dtype=torch.float64)

    def add(self, pieces: Sequence[Tensor], scale: Tensor | None) -> None:
        numel = pieces[0].numel() if pieces else 0
        for lo in range(0, numel, GRAM_CHUNK):
            hi = min(numel, lo + GRAM_CHUNK)
            block = self.buf[:, : hi - lo]
            for j, v in enumerate(pieces):
                block[j].copy_(v[lo:hi])
            if scale is not None:
                block.mul_(scale[lo:hi].to(torch.float64))
            self.out.addmm_(block if self.idx is None else block[self.idx], block.T)


def gram_rows(
    vectors: Sequence[Tensor], rows: Sequence[int] | None = None, scale: Tensor | None = None
) -> Tensor:
    """Rows ``rows`` (default: all) of the m×m float64 Gram matrix ⟨v_a, v_b⟩, shape (r, m).

    Converted to float64 chunk by chunk (no m × numel float64 copy). ``scale``: a fixed diagonal
    P (flat, like the vectors): the Gram matrix of P v_a instead, with no copy of the vectors.
    """
    acc = _GramAccumulator(len(vectors), rows, vectors[0].numel())
    acc.add(vectors, scale)
    return acc.out


class GramCache:
    """Per-tensor Gram matrices, updated row by row: for the groups marked :meth:`changed` and
    for groups added since the last :meth:`update` (all of it when that is most of the rows)."""

    def __init__(self) -> None:
        self.grams: list[Tensor] = []
        self.dirty: set[int] = set()

    def changed(self, j: int) -> None:
        self.dirty.add(j)

    def update(self, host: SumsStore) -> list[Tensor]:
        """The Gram matrices of the group sums of every tensor of ``host``."""
        m = len(host)
        old = self.grams[0].shape[0] if self.grams else 0
        idx = sorted(self.dirty | set(range(old, m)))
        self.dirty.clear()
        if not idx:
            return self.grams
        full = 2 * len(idx) >= m
        grams = []
        for t in range(host.num_tensors):
            rows = host.gram(t, None if full else idx)
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
    host: SumsStore,
    q_rows: Sequence[Tensor],
    counts: Sequence[int],
    cache: GramCache | None = None,
    scales: Sequence[Tensor] | None = None,
) -> list[GroupSums]:
    """:class:`GroupSums` of every tensor (Gram matrices in float64; ``cache`` reused if given).

    ``scales``: a fixed P per tensor; the sums are then those of P g (group sums P S_j), and
    ``q_rows`` must be the Q_j of P g.
    """
    m = len(host)
    if not m:
        return []
    q_host = torch.stack(list(q_rows)).cpu().tolist()
    if cache is not None and scales is not None:
        raise ValueError("the Gram cache holds unscaled sums: no cache with scales")
    grams = cache.update(host) if cache is not None else None
    out = []
    for t in range(host.num_tensors):
        scale = scales[t].reshape(-1) if scales is not None else None
        g64 = grams[t] if grams is not None else host.gram(t, scale=scale)
        out.append(
            GroupSums(
                gram=tuple(tuple(r) for r in g64.tolist()),
                q=tuple(q_host[j][t] for j in range(m)),
                counts=tuple(counts),
            )
        )
    return out


def total_sums(
    host: SumsStore, q_rows: Sequence[Tensor], counts: Sequence[int], cache: GramCache
) -> GroupSums:
    """:class:`GroupSums` of all tensors together (what the stopping rule reads): the per-tensor
    Gram matrices and Q_j added up in torch, so the cost does not grow with the run's length."""
    q = torch.stack(list(q_rows)).cpu().sum(dim=1).tolist()
    gram = torch.stack(cache.update(host)).sum(dim=0).tolist()
    return GroupSums(gram=tuple(tuple(r) for r in gram), q=tuple(q), counts=tuple(counts))
