"""Warm start of the adaptive optimizers' state from the gradient moments at the checkpoint (torch).

Adam/AdamW/RMSprop started from a zero state go through a start-up transient (the first steps
divide by a tiny √v) that depends on the run: on l for SVAG, on the batch size for the branches of
``bscrit confirm``. :func:`warm_start` starts them instead from the gradient moments at the
checkpoint (:func:`model_gradient_moments`), so that transient does not pass for a difference
between the runs compared (docs/svag.md). SGD starts with a fresh momentum buffer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.engine.data import BatchSource
from bscrit.errors import UsageError
from bscrit.optim import registry as optim
from bscrit.runs.common.evaluation import Grads, KeepBuffers, forward_errors, loss_gradient

#: Bias corrections 1 − β^step are set to 1 − e^(−WARM_START_HORIZON) ≈ 1 by the warm start.
WARM_START_HORIZON = 30.0

#: PyTorch's state tensors of the first moment (Adam; centred RMSprop) and the second moment.
_FIRST_MOMENT_KEYS = ("exp_avg", "grad_avg")
SECOND_MOMENT_KEYS = ("exp_avg_sq", "square_avg")


@dataclass
class GradientMoments:
    """Per-coordinate moments of the batch gradient at the starting point, from k samples.

    ``mean`` estimates ḡ, ``mean_sq`` = (1/k) Σ gᵢ² estimates ḡ² + diag Σ, ``var`` (the sample
    variance, k − 1 in the denominator) estimates diag Σ.
    """

    mean: Grads
    mean_sq: Grads
    var: Grads
    k: int

    def second_moment(self, l: int) -> Grads:  # noqa: E741
        """E[ĝ²] under SVAG l per coordinate: ḡ² + l·diag Σ = mean_sq + (l − 1)·var (≥ 0)."""
        return [
            None if m is None else m + (l - 1) * v
            for m, v in zip(self.mean_sq, self.var, strict=True)
        ]


def gradient_moments(samples: Iterable[Grads]) -> GradientMoments:
    """Per-coordinate mean, mean square and variance of k ≥ 2 gradient samples (float64 sums)."""
    s1: Grads | None = None
    s2: Grads = []
    k = 0
    for g in samples:
        if s1 is None:
            s1 = [None if t is None else torch.zeros_like(t, dtype=torch.float64) for t in g]
            s2 = [None if t is None else torch.zeros_like(t, dtype=torch.float64) for t in g]
        for a, b, t in zip(s1, s2, g, strict=True):
            if t is not None and a is not None and b is not None:
                t64 = t.detach().double()
                a.add_(t64)
                b.add_(t64 * t64)
        k += 1
    if s1 is None or k < 2:
        raise UsageError(f"need at least 2 gradient samples for the moments, got {k}")
    mean: Grads = []
    mean_sq: Grads = []
    var: Grads = []
    for a, b in zip(s1, s2, strict=True):
        if a is None or b is None:
            mean.append(None), mean_sq.append(None), var.append(None)
            continue
        m = a / k
        v = ((b - k * m * m) / (k - 1)).clamp_min_(0.0)
        mean.append(m.float()), mean_sq.append((b / k).float()), var.append(v.float())
    return GradientMoments(mean, mean_sq, var, k)


def model_gradient_moments(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    source: BatchSource,
    batches: Sequence[list[int]],
    mode: str = "train",
    seed: int = 0,
    micro: int | None = None,
) -> GradientMoments:
    """:class:`GradientMoments` of the loss gradient over fixed batches (running stats kept)."""
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    rows = torch.as_tensor(list(batches), dtype=torch.long)
    with KeepBuffers(model), forward_errors("on the fixed batches of the warm start"):
        model.train(mode == "train")
        moments = gradient_moments(
            loss_gradient(model, loss_fn, params, x, y, micro)
            for x, y in source.batches(rows, seed)
        )
    model.train(was_training)
    return moments


def _is_adaptive(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` runs one of the registry's adaptive (square-root rule) optimizers."""
    cls = type(optimizer).__name__
    return any(d.adaptive and d.torch_class == cls for d in optim.REGISTRY.values())


def _create_state(optimizer: torch.optim.Optimizer, params: Sequence[Tensor], used: Grads) -> None:
    """Let PyTorch create its state: one ``step()`` with zero gradients at LR 0 (nothing moves)."""
    lrs = [g["lr"] for g in optimizer.param_groups]
    saved = [p.grad for p in params]
    for g in optimizer.param_groups:
        g["lr"] = 0.0
    for p, m in zip(params, used, strict=True):
        p.grad = None if m is None else torch.zeros_like(p)
    optimizer.step()
    for g, lr in zip(optimizer.param_groups, lrs, strict=True):
        g["lr"] = lr
    for p, g in zip(params, saved, strict=True):
        p.grad = g


def _bias_correction_steps(optimizer: torch.optim.Optimizer) -> int:
    """A step count at which 1 − β^step ≈ 1 for the slowest β of the optimizer."""
    betas: list[float] = []
    for g in optimizer.param_groups:
        betas += list(g.get("betas", ())) + ([g["alpha"]] if "alpha" in g else [])
    return math.ceil(WARM_START_HORIZON / max(1e-12, 1.0 - max(betas)))


def warm_start(
    optimizer: torch.optim.Optimizer,
    params: Sequence[Tensor],
    moments: GradientMoments,
    l: int,  # noqa: E741
) -> None:
    """Start Adam/AdamW/RMSprop from the moments of the gradient at x₀ instead of zeros.

    Why: from a zero state, RMSprop's first 1/(1 − β) steps divide by a tiny √v, and Adam's first
    steps divide by a √v̂ estimated from very few samples; both transients depend on l (SVAG takes l
    times more, noisier steps per unit of time), so a fresh state makes the runs differ for a
    reason unrelated to the SDE. The SDE starts from a state (θ₀, m₀, u₀) [MLPA22 Defs. 4.1, 4.4];
    here every l starts from the same one: m₀ = ḡ (Adam ``exp_avg``, centred RMSprop
    ``grad_avg``) and v₀ = E[ĝ²] = ḡ² + l·diag Σ (``exp_avg_sq`` / ``square_avg``), estimated on
    the fixed batches, with the step counter set so Adam's bias corrections are ≈ 1.

    PyTorch creates the state in a first ``step()``: taken with zero gradients and LR 0 (the
    parameters do not move), then the state tensors are overwritten in place. Optimizers that are
    not adaptive (SGD) are left alone.
    """
    if not _is_adaptive(optimizer):
        return
    v0 = moments.second_moment(l)
    _create_state(optimizer, params, moments.mean)
    horizon = _bias_correction_steps(optimizer)
    with torch.no_grad():
        for p, m, v in zip(params, moments.mean, v0, strict=True):
            st = optimizer.state.get(p)
            if not st or m is None or v is None:
                continue
            m, v = m.to(p.device, p.dtype), v.to(p.device, p.dtype)
            for keys, val in ((_FIRST_MOMENT_KEYS, m), (SECOND_MOMENT_KEYS, v)):
                for key in keys:
                    if key in st:
                        st[key].copy_(val)
            if "exp_avg" in st:  # Adam: bias corrections ≈ 1
                if isinstance(st["step"], Tensor):
                    st["step"].fill_(float(horizon))
                else:
                    st["step"] = float(horizon)
