"""One SVAG step (torch).

One SVAG step with parameter l ≥ 1 (l = 1 is the plain optimizer) [LMA21 eq. (5); MLPA22 Defs.
6.1–6.2; docs/theory.md §6]:

1. draw two independent batches γ₁, γ₂ of the target size B' and compute their loss gradients
   g₁, g₂ (weight decay is *not* part of g: the optimizer adds it);
2. ĝ = r₁ g₁ + r₂ g₂ with r₁,₂ = (1 ± √(2l − 1))/2, so r₁ + r₂ = 1 and r₁² + r₂² = l: ĝ has the
   mean of g and l times its covariance (:func:`svag_coefficients`, :func:`combine`);
3. write ĝ into ``p.grad`` and call PyTorch's own ``optimizer.step()`` (:func:`svag_step`) with the
   SVAG hyperparameters of :func:`bscrit.theory.scaling.svag_hyperparameters`;
4. advance the LR schedule on *effective steps* e = SVAG steps / l
   (:func:`bscrit.runs.common.optimizer.lr_factor`).

The step sees the model only through :class:`GradientOracle` (``params`` and ``pair()``); the
implementations are in :mod:`bscrit.runs.svag.oracles`.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from bscrit.errors import UsageError
from bscrit.runs.common.evaluation import Grads

__all__ = ["GradientOracle", "combine", "svag_coefficients", "svag_step"]


def svag_coefficients(l: int) -> tuple[float, float]:  # noqa: E741
    """r₁,₂ = (1 ± √(2l − 1))/2 [LMA21 eq. (5)]: r₁ + r₂ = 1 (mean kept), r₁² + r₂² = l
    (covariance × l, since g₁ and g₂ are independent)."""
    if isinstance(l, bool) or int(l) != l or l < 1:
        raise UsageError(f"the SVAG parameter {{l}} must be an integer >= 1, got {l}", l="l")
    s = math.sqrt(2 * l - 1)
    return (1.0 + s) / 2.0, (1.0 - s) / 2.0


def combine(g1: Grads, g2: Grads, r1: float, r2: float) -> Grads:
    """ĝ = r₁ g₁ + r₂ g₂ per tensor; None (an unused parameter) where both are None."""
    out: Grads = []
    for a, b in zip(g1, g2, strict=True):
        if a is None and b is None:
            out.append(None)
            continue
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        out.append(torch.add(a * r1, b, alpha=r2))
    return out


class GradientOracle(Protocol):
    """What a SVAG step needs: the tensors to update and loss gradients on two fresh batches."""

    @property
    def params(self) -> list[Tensor]:
        """The leaf tensors the optimizer updates (``requires_grad``)."""
        ...

    def pair(self) -> tuple[Grads, Grads]:
        """Loss gradients (no weight decay) of two independent batches at the current point."""
        ...


def svag_step(
    oracle: GradientOracle, optimizer: torch.optim.Optimizer, r1: float, r2: float
) -> None:
    """One SVAG step: two batches → ĝ = r₁g₁ + r₂g₂ → ``p.grad`` → PyTorch ``optimizer.step()``."""
    g1, g2 = oracle.pair()
    for p, g in zip(oracle.params, combine(g1, g2, r1, r2), strict=True):
        p.grad = g
    optimizer.step()
