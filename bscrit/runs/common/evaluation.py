"""The test functions every run is judged by, and the loss gradient they and the runs share (torch).

:class:`ModelEvaluator` computes the test functions of [LMA21] Fig. 4 at the current weights on
the k fixed training batches and the held-out examples of a plan (the same for every SVAG l and
for both branches of ``bscrit confirm``); :func:`loss_gradient` is the gradient of the batch-mean
loss every step is built from; :func:`forward_errors` names a forward/backward pass that fails.

BatchNorm and other running statistics: the evaluation passes (training loss, G, N in train
mode) save and restore every buffer (:class:`KeepBuffers`), so they never change the running
statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.engine.data import BatchSource
from bscrit.engine.objective import batch_gradient, batch_len, batch_loss, item_count
from bscrit.errors import BscritError, RunError, UserCodeError, first_line
from bscrit.stats.estimators import estimate_g_n

__all__ = ["Grads", "KeepBuffers", "ModelEvaluator", "forward_errors", "loss_gradient"]

#: Per-parameter gradients; None for a parameter the loss does not use.
Grads = list[Tensor | None]


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
    """A forward/backward pass that fails (labels out of range, shape mismatch, CUDA error), or
    the user's model, loss, dataset item or collate function raising (a
    :class:`~bscrit.errors.UserCodeError`, which names which), becomes a :class:`RunError` naming
    ``where``; out-of-memory is left to the caller."""
    try:
        yield
    except UserCodeError as e:
        raise RunError(e.at(where)) from e.error
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
    - ``G``, ``N``: the unbiased Ĝ, N̂ of :func:`bscrit.stats.estimators.estimate_g_n` from the k
      loss gradients on the same batches (N is N^{B'}, at the target batch size; no weight decay);
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
