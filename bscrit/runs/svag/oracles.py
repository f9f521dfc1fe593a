"""Where the gradients of a SVAG step come from (torch).

Two :class:`~bscrit.runs.svag.step.GradientOracle` implementations: :class:`ModelOracle` (a model, a
loss and a dataset: what ``bscrit svag`` uses) and :class:`GaussianNoiseOracle` (an analytic
gradient plus Gaussian noise: what the closed-form tests use). The test functions the runs are
judged by: :class:`bscrit.runs.common.evaluation.ModelEvaluator`.

BatchNorm and other running statistics: each of the two batches of a step gets its own forward
pass in train mode (its own batch statistics). The running statistics are updated **once per
step, by the first batch only**: every buffer of the model is saved before the second batch's
forward pass and restored after it (:class:`~bscrit.runs.common.evaluation.KeepBuffers`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.engine.data import BatchSource
from bscrit.runs.common.evaluation import Grads, KeepBuffers, forward_errors, loss_gradient

__all__ = ["GaussianNoiseOracle", "ModelOracle"]


class GaussianNoiseOracle:
    """A synthetic oracle: g = ∇f(x) + ξ with Gaussian ξ, independent between calls.

    Args:
        params: the tensors to optimise (leaf tensors, ``requires_grad`` not needed).
        grad_fn: exact gradient ``params -> list of tensors``.
        sigma: isotropic noise standard deviation (ξ ~ N(0, σ² I)), or ...
        scale_tril: ... a d × d matrix A with ξ = A z, Cov ξ = A Aᵀ, applied along the last
            dimension (a parameter of shape (..., d) holds independent d-vectors).
        generator: torch generator of the noise (seed it for reproducible tests).
    """

    def __init__(
        self,
        params: Sequence[Tensor],
        grad_fn: Callable[[list[Tensor]], list[Tensor]],
        sigma: float = 1.0,
        *,
        scale_tril: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self._params = list(params)
        self.grad_fn = grad_fn
        self.sigma = float(sigma)
        self.scale_tril = scale_tril
        self.generator = generator

    @property
    def params(self) -> list[Tensor]:
        return self._params

    def sample(self) -> Grads:
        """One stochastic gradient at the current point."""
        with torch.no_grad():
            mean = self.grad_fn(self._params)
            out: Grads = []
            for m in mean:
                z = torch.randn(m.shape, generator=self.generator, dtype=m.dtype, device=m.device)
                out.append(
                    m + (z @ self.scale_tril.T if self.scale_tril is not None else self.sigma * z)
                )
            return out

    def pair(self) -> tuple[Grads, Grads]:
        return self.sample(), self.sample()


class ModelOracle:
    """Loss gradients of a model on independent random batches of size B (train mode).

    The running statistics (BatchNorm) are updated by the first batch of each pair only: the
    buffers are saved before the second batch's forward pass and restored after it.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        source: BatchSource,
        batch_size: int,
        generator: torch.Generator,
        micro: int | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.micro = micro
        self._params = [p for p in model.parameters() if p.requires_grad]
        self.stream = source.stream(batch_size, generator)
        self.batches = 0  # batches drawn so far (named when a forward/backward pass fails)

    @property
    def params(self) -> list[Tensor]:
        return self._params

    def gradient(self) -> Grads:
        """The loss gradient on the next batch of the stream."""
        with forward_errors(f"at SVAG batch {self.batches}"):
            x, y = next(self.stream)
            return loss_gradient(self.model, self.loss_fn, self._params, x, y, self.micro)

    def pair(self) -> tuple[Grads, Grads]:
        self.model.train()
        g1 = self.gradient()
        self.batches += 1
        with KeepBuffers(self.model):
            g2 = self.gradient()
        self.batches += 1
        return g1, g2
