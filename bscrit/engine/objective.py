"""The loss of one batch and its gradient, in micro-batches when asked (torch).

The one place that says how the model is called and what its loss is (the measurement engine,
the sanity checks and the SVAG runs all come here):

================  =================  ======================  ==========================
examples          loss               the model is called     the loss is
================  =================  ======================  ==========================
``(x, y)`` pairs  a function         ``model(x)``            ``loss_fn(output, y)``
``(x, y)`` pairs  ``loss: model``    ``model(x, labels=y)``  ``output.loss``
dicts             ``loss: model``    ``model(**batch)``      ``output.loss``
dicts             a factory          ``model(**batch)``      ``loss_fn(output, batch)``
any batch         ``BatchLoss(fn)``  by ``fn``               ``fn(model, batch)``
================  =================  ======================  ==========================

``x`` that is a tuple is spread (``model(*x)``), a dict passed as keywords (``model(**x)``).
``model(x, labels=y)`` is the Hugging Face convention; ``output.loss`` is read as the attribute
or the ``"loss"`` key (a ``ModelOutput``, a dict, a dataclass) and must be a scalar: the MEAN loss
of the batch, as every loss in bscrit (docs/theory.md §2).

**Micro-batches** (``micro_batch_size``, gradient accumulation). A batch of B examples is run as
M = B / b chunks of b examples (tensors are split along their first dimension) and the batch
gradient is put together as ĝ = Σₘ wₘ ∇Lₘ with Σₘ wₘ = 1, the weights chosen so that Σₘ wₘ Lₘ is
exactly the loss of the whole batch. A mean over examples gives wₘ = 1/M. A mean over the items
that are not ignored (tokens whose label is −100 in Hugging Face models, padding) does not: the
batch loss is (Σ over items ℓ) / c with c the batch's item count, so wₘ = cₘ / c, cₘ the item
count of chunk m (:func:`item_count`; the same rule as the ``num_items_in_batch`` of Hugging
Face's ``Trainer``, which scales summed chunk losses by the batch's count). The gradient is then
that of the batch-B loss up to float rounding, whatever the padding. Each chunk's loss is scaled
by wₘ *before* the backward pass, so hooks that read per-example pieces (the per-example
estimator) see the pieces of the batch-B gradient. Things a chunk cannot reproduce: BatchNorm in
train mode normalises with the statistics of b examples, not B (as in a run that accumulates
micro-batches of b); dropout draws other masks (of the same law).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.engine.data import forward, user_code
from bscrit.errors import SpecError, SpecProblem

#: The label of an item that is not predicted (padding): Hugging Face's and torch's default.
IGNORE_INDEX = -100
#: Hugging Face loss types whose loss shifts the labels inside the model (causal LMs).
_SHIFTING = ("ForCausalLM", "ForConditionalGeneration")

LossFn = Callable[[Any, Any], Tensor]
#: ``(chunk loss, chunk inputs, chunk targets)``: checks a chunk's loss before its backward pass.
Check = Callable[[Tensor, Any, Any], None]
#: ``(output, chunk inputs, chunk targets)``: sees each chunk's model output (accuracy).
OnOutput = Callable[[Any, Any, Any], None]


@dataclass(frozen=True)
class ModelLoss:
    """``loss: model``: the model computes its own mean loss; ``source`` names the spec in
    errors. Called as a loss function, it reads the loss from the model's output."""

    source: str = "the spec"

    def __call__(self, output: Any, target: Any = None) -> Tensor:
        return self.read(output)

    def read(self, output: Any) -> Tensor:
        """``output.loss`` or ``output["loss"]``, a scalar tensor.

        Raises:
            SpecError: at key ``loss``, saying what the output holds instead.
        """
        if isinstance(output, Mapping):
            loss = output.get("loss")
            what = f"a {type(output).__name__} with keys {sorted(map(str, output.keys()))}"
        else:
            loss = getattr(output, "loss", None)
            what = _describe(output)
        if loss is None:
            hint = (
                " (a Hugging Face model returns a loss only when called with labels: give the "
                "examples a 'labels' key)"
                if hasattr(output, "logits") or (isinstance(output, Mapping) and "logits" in output)
                else ""
            )
            raise self._error(f"the model's output has no loss: got {what}{hint}")
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise self._error(
                f"the model's output.loss is {_describe(loss)}; expected a scalar tensor (the "
                "mean loss of the batch)"
            )
        return loss

    def _error(self, message: str) -> SpecError:
        return SpecError(
            self.source,
            [SpecProblem("loss", f"{message}; 'loss: model' reads output.loss or output['loss']")],
        )


@dataclass(frozen=True)
class BatchLoss:
    """A loss that calls the model itself: ``fn(model, batch)`` → the mean loss of the batch
    (the Python API's ``loss_fn(model, batch)``, a Lightning ``training_step``). ``batch`` is the
    collated batch: ``(inputs, targets)`` for pairs, else what the collate function returned.
    Micro-batches weigh by examples (:func:`chunk_weights`)."""

    fn: Callable[[nn.Module, Any], Any]

    def __call__(self, model: nn.Module, batch: Any) -> Tensor:
        return self.fn(model, batch)


def _describe(obj: Any) -> str:
    if isinstance(obj, Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__name__}"


# ----------------------------------------------------------------------------------------------
# One batch
# ----------------------------------------------------------------------------------------------


def call_model(model: nn.Module, loss_fn: Any, x: Any, y: Any) -> Any:
    """The model's output on a batch (the table in the module docstring)."""
    if not isinstance(loss_fn, ModelLoss) or y is None:
        return forward(model, x)
    if isinstance(x, (list, tuple)):
        return model(*x, labels=y)
    if isinstance(x, dict):
        return model(**x, labels=y)
    return model(x, labels=y)


def batch_loss(model: nn.Module, loss_fn: Any, x: Any, y: Any) -> tuple[Tensor, Any]:
    """``(loss, output)`` of one batch: the mean loss and the model's output (None for a
    :class:`BatchLoss`, which calls the model itself). What the model or the loss raises is a
    :class:`~bscrit.errors.UserCodeError` naming which."""
    if isinstance(loss_fn, BatchLoss):
        with user_code("the loss function"):
            return loss_fn(model, x if y is None else (x, y)), None
    with user_code("the model's forward"):
        out = call_model(model, loss_fn, x, y)
    if isinstance(loss_fn, ModelLoss):
        return loss_fn.read(out), out
    with user_code("the loss function"):
        return loss_fn(out, x if y is None and isinstance(x, Mapping) else y), out


def batch_len(x: Any, y: Any = None) -> int:
    """The number of examples in a batch: the first dimension of its first tensor."""
    t = _first_tensor(y) if isinstance(y, Tensor) else None
    t = t if t is not None else _first_tensor(x)
    return int(t.shape[0]) if t is not None and t.dim() > 0 else 1


def _first_tensor(obj: Any) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    items = (
        obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (list, tuple)) else ()
    )
    for o in items:
        t = _first_tensor(o)
        if t is not None:
            return t
    return None


# ----------------------------------------------------------------------------------------------
# Micro-batches
# ----------------------------------------------------------------------------------------------


def split_batch(x: Any, y: Any, micro: int | None) -> list[tuple[Any, Any]]:
    """The batch as chunks of ``micro`` examples (the last one shorter when ``micro`` does not
    divide B): every tensor whose first dimension is B is split along it, anything else is
    handed to every chunk as it is."""
    b = batch_len(x, y)
    if micro is None or micro >= b:
        return [(x, y)]
    starts = range(0, b, micro)

    def cut(obj: Any, s: int) -> Any:
        if isinstance(obj, Tensor):
            return obj[s : s + micro] if obj.dim() > 0 and obj.shape[0] == b else obj
        if isinstance(obj, (list, tuple)):
            return type(obj)(cut(o, s) for o in obj)
        if isinstance(obj, dict):
            return {k: cut(v, s) for k, v in obj.items()}
        return obj

    return [(cut(x, s), cut(y, s)) for s in starts]


def shifts_labels(model: nn.Module) -> bool:
    """Whether the model's own loss shifts its labels by one position (a Hugging Face causal LM:
    the logits at position i predict label i + 1, so a row's first label is never an item).

    Hugging Face's ``Trainer`` rule (``num_items_in_batch``), made to see the default: the
    model's ``loss_function`` is the causal-LM loss (GPT-2 gets it as the default, its
    ``loss_type`` being None) and the model is not an encoder-decoder. A model of your own that
    shifts its labels inside says so with ``loss_type = "ForCausalLM"``, or its batches carry
    ``shift_labels``.
    """
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(model, "loss_type", None) in _SHIFTING:
        return True
    hf = sys.modules.get("transformers.loss.loss_utils")  # loaded when the model is an HF one
    causal = getattr(hf, "ForCausalLMLoss", None)
    return causal is not None and getattr(model, "loss_function", None) is causal


def _loss_ignore(loss_fn: Any) -> tuple[int | None, Tensor | None]:
    """``(ignore_index, class weights)`` of a cross-entropy-like loss, else ``(None, None)``."""
    kwargs = getattr(loss_fn, "keywords", None)  # functools.partial(F.cross_entropy, ...)
    func = getattr(loss_fn, "func", loss_fn)
    if func in (nn.functional.cross_entropy, nn.functional.nll_loss):
        kwargs = kwargs or {}
        return int(kwargs.get("ignore_index", IGNORE_INDEX)), kwargs.get("weight")
    ignore = getattr(loss_fn, "ignore_index", None)  # nn.CrossEntropyLoss, nn.NLLLoss, ...
    if isinstance(ignore, int) and not isinstance(ignore, bool):
        weight = getattr(loss_fn, "weight", None)
        return ignore, weight if isinstance(weight, Tensor) else None
    return None, None


def item_count(model: nn.Module, loss_fn: Any, x: Any, y: Any) -> Tensor | None:
    """The number of items the mean loss of a chunk averages over, or None when it is a mean
    over examples (chunks of equal size then weigh the same).

    - ``loss: model``: the labels (the batch's ``shift_labels`` if it has them, else its
      ``labels``; ``y`` for pairs) that are not −100, counted from the second position on when
      the model shifts them (:func:`shifts_labels`);
    - a cross-entropy-like loss (``cross_entropy``, ``nn.CrossEntropyLoss``, ``nn.NLLLoss``, any
      loss with an ``ignore_index``): the integer targets that are not its ``ignore_index``, each
      counted with its class weight when the loss has class weights;
    - any other loss (``mse``, a plain function): None.
    """
    weight = None
    if isinstance(loss_fn, ModelLoss):
        ignore = IGNORE_INDEX
        batch = x if isinstance(x, Mapping) else {}
        labels = batch.get("shift_labels")
        if labels is None:
            labels = batch.get("labels") if isinstance(x, Mapping) else y
            if isinstance(labels, Tensor) and shifts_labels(model):
                labels = labels[..., 1:]
    else:
        ignore, weight = _loss_ignore(loss_fn)
        labels = x.get("labels") if y is None and isinstance(x, Mapping) else y
    if ignore is None or not isinstance(labels, Tensor):
        return None
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        return None
    valid = labels != ignore
    if weight is None:
        return valid.sum()
    return (weight.to(labels.device)[torch.where(valid, labels, 0)] * valid).sum()


def chunk_weights(
    model: nn.Module, loss_fn: Any, chunks: list[tuple[Any, Any]]
) -> list[Tensor | float]:
    """wₘ with Σ wₘ Lₘ = the batch loss: cₘ / Σ c by item count, else by examples."""
    counts = [item_count(model, loss_fn, x, y) for x, y in chunks]
    if all(c is not None for c in counts):
        total = torch.stack(counts).sum().double()  # type: ignore[arg-type]
        return [c.double() / total for c in counts]  # type: ignore[union-attr]
    sizes = [batch_len(x, y) for x, y in chunks]
    return [s / sum(sizes) for s in sizes]


def batch_gradient(
    model: nn.Module,
    loss_fn: Any,
    params: list[Tensor],
    x: Any,
    y: Any,
    *,
    micro: int | None = None,
    check: Check | None = None,
    on_output: OnOutput | None = None,
    float32_sums: bool = False,
) -> tuple[Tensor, list[Tensor | None]]:
    """``(loss, gradient)`` of the mean loss of a batch w.r.t. ``params`` (None: unused).

    With ``micro`` the batch runs in chunks of ``micro`` examples, their gradients combined
    with the weights of :func:`chunk_weights` (module docstring): the loss and gradient are
    those of the whole batch up to float rounding. ``.grad`` is left alone. ``float32_sums``:
    bf16/fp16 chunk gradients are summed in float32 (the measurement's hot loop; a training
    step keeps the parameters' dtype, which ``.grad`` needs).
    """
    chunks = split_batch(x, y, micro)
    weights = chunk_weights(model, loss_fn, chunks) if len(chunks) > 1 else [1.0]
    total: Tensor | None = None
    grads: list[Tensor | None] | None = None
    for (xm, ym), w in zip(chunks, weights):
        loss, out = batch_loss(model, loss_fn, xm, ym)
        if check is not None:
            check(loss, xm, ym)
        if on_output is not None:
            on_output(out, xm, ym)
        del out
        scaled = loss if isinstance(w, float) and w == 1.0 else loss * _as(w, loss)
        with user_code("the backward pass"):
            g = torch.autograd.grad(scaled, params, allow_unused=True)
        if grads is None:  # with float32_sums, bf16/fp16 chunks are accumulated in float32
            up = float32_sums and len(chunks) > 1
            grads = [to_float32(t) for t in g] if up else list(g)
        else:
            grads = _accumulate(grads, g)
        total = scaled.detach() if total is None else total + scaled.detach()
    assert total is not None and grads is not None
    return total, grads


def _as(w: Tensor | float, like: Tensor) -> Tensor | float:
    return w.to(device=like.device, dtype=like.dtype) if isinstance(w, Tensor) else w


def to_float32(t: Tensor | None) -> Tensor | None:
    """A bf16/fp16 gradient as float32 (others as they are; None stays None)."""
    return t.float() if t is not None and t.dtype in (torch.bfloat16, torch.float16) else t


def _accumulate(acc: list[Tensor | None], new: tuple[Tensor | None, ...]) -> list[Tensor | None]:
    both = [i for i, (a, b) in enumerate(zip(acc, new)) if a is not None and b is not None]
    if both:
        torch._foreach_add_([acc[i] for i in both], [new[i] for i in both])  # type: ignore[misc]
    return [b if a is None else a for a, b in zip(acc, new)]


def check_examples(dataset: Any, loss_fn: Any, source: str, key: str = "data") -> None:
    """Refuse dict examples with a loss that needs a separate target (``cross_entropy``,
    ``mse``), before any work; reads the first example only.

    Raises:
        SpecError: at key ``loss``, naming the example's keys and the two ways out.
    """
    try:
        first = dataset[0]
    except Exception:  # noqa: BLE001 - the DataLoader reports a broken dataset with its batch
        return
    if not isinstance(first, Mapping) or isinstance(loss_fn, ModelLoss):
        return
    func = getattr(loss_fn, "func", loss_fn)
    if func in (nn.functional.cross_entropy, nn.functional.mse_loss):
        keys = ", ".join(sorted(map(str, first.keys())))
        raise SpecError(
            source,
            [
                SpecProblem(
                    "loss",
                    f"the examples of {key} are dicts (keys: {keys}), so there is no separate "
                    f"target for {func.__name__}: use 'loss: model' (the model's own output.loss, "
                    "called as model(**batch)) or a loss factory, called as loss(output, batch)",
                )
            ],
        )


def batchnorm_warning(
    model: nn.Module, micro: int | None, mode: str, batch_size: int
) -> str | None:
    """The warning for micro-batches that train-mode BatchNorm normalises on their own."""
    from torch.nn.modules.batchnorm import _BatchNorm

    if micro is None or mode != "train":
        return None
    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        return None
    return (
        f"BatchNorm in train mode normalises each micro-batch of {micro} examples with its "
        f"own statistics, not the batch of B = {batch_size}: G and N are those of a run that "
        f"accumulates micro-batches of {micro} (measure.mode eval, or no micro_batch_size, "
        "for B-example statistics)"
    )
