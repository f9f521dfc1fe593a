"""Where the gradients of a SVAG step come from, and the test functions it is judged by (torch).

Two :class:`~bscrit.runs.svag.step.GradientOracle` implementations: :class:`ModelOracle` (a model, a
loss and a dataset: what ``bscrit svag`` uses) and :class:`GaussianNoiseOracle` (an analytic
gradient plus Gaussian noise: what the closed-form tests use). :class:`ModelEvaluator` computes
the test functions of [LMA21] Fig. 4 at the current weights.

BatchNorm and other running statistics: each of the two batches of a step gets its own forward
pass in train mode (its own batch statistics). The running statistics are updated **once per
step, by the first batch only**: every buffer of the model is saved before the second batch's
forward pass and restored after it (:class:`KeepBuffers`). The evaluation passes (training loss,
G, N in train mode) save and restore the buffers too, so they never change the running statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.engine.data import BatchSource
from bscrit.engine.objective import batch_gradient, batch_len, batch_loss, item_count
from bscrit.errors import BscritError, RunError, first_line
from bscrit.runs.svag.step import Grads
from bscrit.stats.estimators import estimate_g_n

__all__ = ["GaussianNoiseOracle", "KeepBuffers", "ModelEvaluator", "ModelOracle", "loss_gradient"]


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


class KeepBuffers:
    """Context manager: save every buffer (BatchNorm running stats, ...) and restore it on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers = [b for b in model.buffers() if b is not None]

    def __enter__(self) -> None:
        self.saved = [b.detach().clone() for b in self.buffers]

    def __exit__(self, *exc: Any) -> None:
        with torch.no_grad():
            for b, s in zip(self.buffers, self.saved, strict=True):
                b.copy_(s)


@contextlib.contextmanager
def forward_errors(where: str) -> Iterator[None]:
    """A forward/backward pass that fails (labels out of range, shape mismatch, CUDA error)
    becomes a :class:`RunError` naming ``where``; out-of-memory is left to the caller."""
    try:
        yield
    except (BscritError, KeyboardInterrupt, torch.cuda.OutOfMemoryError):
        raise
    except (RuntimeError, IndexError, ValueError, TypeError) as e:
        raise RunError(f"the forward/backward pass failed {where}: {first_line(e)}") from None


def _scalar_loss(loss: Any) -> Tensor:
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        got = f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
        raise RunError(f"the loss returned {got}; expected a scalar (the batch mean)")
    return loss


def loss_gradient(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    params: list[Tensor],
    x: Any,
    y: Any,
    micro: int | None = None,
) -> Grads:
    """∇ of the batch-mean loss (no weight decay) w.r.t. ``params``; None for unused ones.
    ``micro``: in chunks of at most this many examples (:mod:`bscrit.engine.objective`)."""
    _, grads = batch_gradient(
        model, loss_fn, params, x, y, micro=micro, check=lambda loss, *_: _scalar_loss(loss)
    )
    return [None if g is None else g.detach() for g in grads]


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

    def gradient(self, batch: tuple[Any, Any]) -> Grads:
        with forward_errors(f"at SVAG batch {self.batches}"):
            return loss_gradient(self.model, self.loss_fn, self._params, *batch, self.micro)

    def pair(self) -> tuple[Grads, Grads]:
        self.model.train()
        g1 = self.gradient(next(self.stream))
        self.batches += 1
        with KeepBuffers(self.model):
            g2 = self.gradient(next(self.stream))
        self.batches += 1
        return g1, g2


def _is_classification(logits: Any, y: Any) -> bool:
    return (
        isinstance(logits, Tensor)
        and isinstance(y, Tensor)
        and logits.dim() == 2
        and y.dim() == 1
        and not y.is_floating_point()
        and y.shape[0] == logits.shape[0]
    )


class _Accuracy:
    """Correct predictions so far, as long as every batch looks like class logits."""

    def __init__(self) -> None:
        self.correct, self.count, self.applies = 0, 0, True

    def add(self, logits: Any, y: Any) -> None:
        if self.applies and _is_classification(logits, y):
            self.correct += int((logits.detach().argmax(-1) == y).sum())
            self.count += int(y.numel())
        else:
            self.applies = False

    def value(self) -> float | None:
        return self.correct / self.count if self.applies and self.count else None


class ModelEvaluator:
    """Test functions of a model at its current weights ([LMA21] Fig. 4; docs/theory.md §6).

    - ``train_loss`` (and ``train_acc`` for class logits): mean over k fixed batches of the
      training set (drawn once, the same for every l), in the spec's measurement mode (train mode:
      batch statistics, running statistics restored afterwards);
    - ``G``, ``N``: the unbiased Ĝ, N̂ of :func:`bscrit.stats.estimators.estimate_g_n` from the k loss
      gradients on the same batches (N is N^{B'}, at the target batch size; no weight decay);
    - ``norm_sq``: ‖x‖² of the trainable parameters;
    - ``eval_loss``, ``eval_acc``: on a fixed set of held-out examples, eval mode, when given.

    ``seed`` seeds the DataLoader of a dataset that is not held in memory (worker seeds).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Any, Any], Tensor],
        train: BatchSource,
        fixed_batches: Sequence[list[int]],
        *,
        mode: str = "train",
        held_out: BatchSource | None = None,
        held_out_indices: Sequence[int] = (),
        eval_batch_size: int = 512,
        seed: int = 0,
        micro: int | None = None,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.train = train
        self.fixed_batches = list(fixed_batches)
        self.mode = mode
        self.held_out = held_out
        self.held_out_indices = list(held_out_indices)
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.micro = micro
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self) -> dict[str, float]:
        with forward_errors("on the fixed evaluation batches"):
            out = self._fixed_batches()
        with torch.no_grad():
            out["norm_sq"] = float(
                sum(float(p.detach().double().pow(2).sum()) for p in self.params)
            )
        if self.held_out is not None and self.held_out_indices:
            with forward_errors("on the held-out evaluation examples"):
                out.update(self._held_out())
        return out

    def _fixed_batches(self) -> dict[str, float]:
        """Training loss (accuracy), Ĝ and N̂ on the k fixed batches; buffers left unchanged."""
        model = self.model
        was_training = model.training
        k = len(self.fixed_batches)
        s = [torch.zeros_like(p, dtype=torch.float64) for p in self.params]
        q, loss_sum, acc = 0.0, 0.0, _Accuracy()
        rows = torch.as_tensor(self.fixed_batches, dtype=torch.long)
        with KeepBuffers(model):
            model.train(self.mode == "train")
            for x, y in self.train.batches(rows, self.seed):
                loss, grads = batch_gradient(
                    model, self.loss_fn, self.params, x, y, micro=self.micro,
                    check=lambda loss, *_: _scalar_loss(loss),
                    on_output=lambda out, _, ym: acc.add(out, ym),
                )  # fmt: skip
                sq = 0.0
                for total, g in zip(s, grads, strict=True):
                    if g is not None:
                        g64 = g.detach().double()
                        total.add_(g64)
                        sq += float(g64.pow(2).sum())
                q += sq
                loss_sum += float(loss.detach())
        model.train(was_training)
        out = {"train_loss": loss_sum / k}
        if acc.value() is not None:
            out["train_acc"] = acc.value()
        out["G"], out["N"] = estimate_g_n(float(sum(float(a.pow(2).sum()) for a in s)), q, k)
        return out

    @torch.no_grad()
    def _held_out(self) -> dict[str, float]:
        """Loss (accuracy) on the fixed held-out examples, in eval mode."""
        assert self.held_out is not None
        model = self.model
        was_training = model.training
        model.eval()
        total, weight, loss_sum, acc = 0, 0.0, 0.0, _Accuracy()
        idx = torch.as_tensor(self.held_out_indices, dtype=torch.long)
        rows = list(torch.split(idx, self.eval_batch_size))
        for x, y in self.held_out.batches(rows, self.seed):
            loss, logits = batch_loss(model, self.loss_fn, x, y)
            count = item_count(model, self.loss_fn, x, y)  # a mean over items: weigh by them
            n = batch_len(x, y)
            w = float(count) if count is not None else n
            loss_sum += float(loss) * w
            total += n
            weight += w
            acc.add(logits, y)
        model.train(was_training)
        out = {"eval_loss": loss_sum / weight}
        if acc.applies:
            out["eval_acc"] = acc.correct / total
        return out
