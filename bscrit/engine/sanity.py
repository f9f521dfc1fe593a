"""The sanity checks of the hot loop (torch): the first batch's loss, and every block's gradients.

:func:`check_loss` and :func:`sum_check` run on the first batch (a scalar mean loss that depends
on the parameters; a warning when the loss looks like a sum over the batch, which would put G
and N off by B², docs/theory.md §2); :func:`check_finite` runs once per block, at the one
synchronisation, and names the first batch and parameter with a NaN/Inf gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.engine.objective import batch_loss
from bscrit.errors import MeasurementError, first_line

LossFn = Callable[[Tensor, Tensor], Tensor]


def check_loss(loss: Any, batch: int) -> Tensor:
    if not isinstance(loss, Tensor):
        raise MeasurementError(
            f"loss: expected a scalar tensor from the loss function, got {type(loss).__name__}"
        )
    if loss.dim() != 0:
        raise MeasurementError(
            f"loss: expected a scalar (the mean loss of the batch), got shape "
            f"{tuple(loss.shape)} at batch {batch}; use reduction='mean'"
        )
    if not loss.requires_grad:
        raise MeasurementError(
            "loss: does not depend on any trainable parameter (no requires_grad); "
            "are all parameters frozen?"
        )
    return loss


def check_finite(block: Tensor, lblock: Tensor, offset: int, names: Sequence[str]) -> None:
    """One sync per group: name the first batch and parameter with a NaN/Inf gradient.

    ``offset`` is the index of the group's first batch (batches are numbered from 0).
    """
    try:
        if bool(torch.isfinite(block).all()) and bool(torch.isfinite(lblock).all()):
            return
    except torch.cuda.OutOfMemoryError:
        raise MeasurementError(
            f"out of GPU memory in batches {offset}–{offset + len(block) - 1}"
        ) from None
    except RuntimeError as e:  # an asynchronous CUDA error (device-side assert) of these batches
        raise MeasurementError(
            f"the forward/backward pass failed in batches {offset}–{offset + len(block) - 1}: "
            f"{first_line(e)} (for the exact error and batch, rerun with {{device}} cpu)",
            device="device",
        ) from None
    bad_loss = (~torch.isfinite(lblock)).nonzero()
    if bad_loss.numel():
        i = int(bad_loss[0, 0])
        raise MeasurementError(
            f"non-finite loss ({float(lblock[i])}) at batch {offset + i}: the checkpoint or the "
            "data produce NaN/Inf"
        )
    bad = (~torch.isfinite(block)).nonzero()
    i, p = int(bad[0, 0]), int(bad[0, 1])
    raise MeasurementError(
        f"non-finite gradient (NaN/Inf) at batch {offset + i}, parameter '{names[p]}' "
        f"(loss of that batch {float(lblock[i]):.4g})"
    )


def sum_check(
    model: nn.Module,
    loss_fn: LossFn,
    x: Any,
    y: Any,
    loss: Tensor,
    autocast: Any,
    warnings: list[str],
) -> None:
    """Warn when the loss looks like a sum over the batch (the estimators assume a mean).

    A mean loss of the first half of a batch is about the loss of the whole batch; a sum is about
    half. Only for plain tensor inputs with B ≥ 16.
    """
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)) or x.shape[0] < 16:
        return
    half = x.shape[0] // 2
    with torch.no_grad(), autocast:
        part = float(batch_loss(model, loss_fn, x[:half], y[:half])[0])
    whole = float(loss.detach())
    if part > 0 and 1.6 <= whole / part <= 2.4:
        warnings.append(
            f"the loss of a whole batch is {whole / part:.2f}x that of its first half: it looks "
            "like a SUM over the batch; the estimators assume the batch MEAN (G and N would be "
            "off by B²)"
        )
