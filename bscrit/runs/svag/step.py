"""One SVAG step and the schedule it runs on (torch).

One SVAG step with parameter l ≥ 1 (l = 1 is the plain optimizer) [LMA21 eq. (5); MLPA22 Defs.
6.1–6.2; docs/theory.md §6]:

1. draw two independent batches γ₁, γ₂ of the target size B' and compute their loss gradients
   g₁, g₂ (weight decay is *not* part of g: the optimizer adds it);
2. ĝ = r₁ g₁ + r₂ g₂ with r₁,₂ = (1 ± √(2l − 1))/2, so r₁ + r₂ = 1 and r₁² + r₂² = l: ĝ has the
   mean of g and l times its covariance (:func:`svag_coefficients`, :func:`combine`);
3. write ĝ into ``p.grad`` and call PyTorch's own ``optimizer.step()`` (:func:`svag_step`) with the
   SVAG hyperparameters of :func:`bscrit.theory.scaling.svag_hyperparameters`;
4. advance the LR schedule on *effective steps* e = SVAG steps / l (:func:`lr_factor`).

The step sees the model only through :class:`GradientOracle` (``params`` and ``pair()``); the
implementations are in :mod:`bscrit.runs.svag.oracles`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from bscrit.errors import UsageError
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.theory.scaling import scale_steps

#: Per-parameter gradients; None for a parameter the loss does not use.
Grads = list[Tensor | None]

__all__ = [
    "GradientOracle",
    "Grads",
    "combine",
    "lr_factor",
    "make_optimizer",
    "svag_coefficients",
    "svag_step",
    "target_schedule",
]


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


def make_optimizer(params: Sequence[Tensor], opt: OptimizerInfo) -> torch.optim.Optimizer:
    """PyTorch's own optimizer with the hyperparameters of ``opt`` (one parameter group)."""
    cls, kwargs = optim.torch_kwargs(opt)
    return getattr(torch.optim, cls)(list(params), **kwargs)


def target_schedule(schedule: Any, kappa: float) -> dict[str, Any]:
    """The spec's schedule (in steps of the base run at batch size B) in steps at B' = κB.

    Training length is fixed in epochs (docs/theory.md §5), so warm-up, milestones and the cosine
    length are divided by κ (:func:`bscrit.theory.scaling.scale_steps`). ``schedule`` is a
    :class:`~bscrit.spec.document.ScheduleSpec` (or None: constant).
    """
    if schedule is None:
        return {"name": "constant", "warmup_steps": 0, "milestones": [], "gamma": 0.1,
                "total_steps": None}  # fmt: skip
    return {
        "name": schedule.name,
        "warmup_steps": scale_steps(schedule.warmup_steps, kappa) or 0,
        "milestones": [scale_steps(m, kappa) for m in schedule.milestones],
        "gamma": schedule.gamma,
        "total_steps": scale_steps(schedule.total_steps, kappa),
    }


def lr_factor(schedule: dict[str, Any], e: float, e_end: float, default_total: float) -> float:
    """LR multiplier at effective time ``e`` (steps at the target batch size).

    - warm-up: linear, factor ``min(1, e_end / W)`` where ``e_end`` is the effective time at the
      *end* of the step (so for l = 1 step k gets (k + 1)/W, PyTorch's usual ramp);
    - ``step``: × gamma for every milestone ≤ e (``MultiStepLR``);
    - ``cosine``: ½(1 + cos(π·min(1, (e − W)/(T − W)))) after the warm-up, T = ``total_steps`` or
      ``default_total``, decaying to 0 (``CosineAnnealingLR``).
    """
    name = schedule.get("name", "constant")
    w = float(schedule.get("warmup_steps") or 0)
    f = 1.0
    if w > 0 and e < w:
        f = min(1.0, e_end / w)
    if name == "step":
        f *= float(schedule.get("gamma", 0.1)) ** sum(
            1 for m in schedule.get("milestones", []) if m <= e + 1e-9
        )
    elif name == "cosine":
        t = float(schedule.get("total_steps") or default_total)
        if e >= w:
            frac = min(1.0, (e - w) / (t - w)) if t > w else 1.0
            f *= 0.5 * (1.0 + math.cos(math.pi * frac))
    return f
