"""How the forward/backward runs: bf16 autocast, or the model's weights in bf16 (or fp32).

``--precision`` (or ``measure.precision`` in the spec) names how the run computed its gradients:

- ``fp32``: the model in float32 (a copy when it was built in another floating dtype), no autocast.
- ``bf16-autocast`` (also ``--amp bf16``): ``torch.autocast`` in bfloat16 on CPU or CUDA; the
  weights stay as they are (float32 master weights), so the gradients come out in their dtype.
- ``bf16-weights``: a bfloat16 copy of the model runs the forward and the backward, as sharded
  runs keep their weights (FSDP2's ``MixedPrecisionPolicy(param_dtype=torch.bfloat16)``) or as a
  run trained in pure bf16; its gradients are cast to float32 right after the backward, so the
  group sums and everything after them are float32 sums and float64 reductions, as in an fp32
  measurement. The caller's model is not modified.

Nothing else changes: the same batches, the same estimator. ``benchmarks/bf16_error.py`` measures
the error of both bf16 modes against fp32 on the same batches (docs/performance.md).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from bscrit.errors import UsageError

#: ``--precision`` values → (amp, weights) of :class:`~bscrit.engine.loop.LoopSettings`.
PRECISIONS: dict[str, tuple[str | None, str | None]] = {
    "fp32": (None, "fp32"),
    "bf16-autocast": ("bf16", None),
    "bf16-weights": (None, "bf16"),
}
WEIGHT_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
#: Devices where ``torch.autocast`` runs in bfloat16.
AUTOCAST_DEVICES = ("cpu", "cuda")
#: Gradients of parameters in these dtypes are summed in float32.
HALF = (torch.bfloat16, torch.float16)


def resolve_precision(precision: str | None, amp: str | None) -> str | None:
    """One precision from ``--precision`` and ``--amp`` (``--amp bf16`` = ``bf16-autocast``).

    Raises:
        UsageError: an unknown value, or both options given with different meanings.
    """
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(
            f"{{precision}}: expected one of {', '.join(PRECISIONS)}, got {precision!r}",
            precision="precision",
        )
    if amp is not None and amp != "bf16":
        raise UsageError(f"{{amp}}: expected 'bf16', got {amp!r}", amp="amp")
    if amp is not None and precision not in (None, "bf16-autocast"):
        raise UsageError(
            f"{{amp}} bf16 (bf16 autocast) contradicts {{precision}} {precision}: give one of "
            "them (bf16 weights already run the forward/backward in bf16; fp32 means no autocast)",
            amp="amp",
            precision="precision",
        )
    return "bf16-autocast" if amp is not None else precision


def check_precision(amp: str | None, weights: str | None, device: torch.device) -> None:
    """The loop's ``amp`` and ``weights`` checked (before any batch)."""
    if amp not in (None, "bf16"):
        raise UsageError(f"amp: expected 'bf16' or none, got {amp!r}")
    if weights not in (None, *WEIGHT_DTYPES):
        raise UsageError(f"weights: expected 'bf16', 'fp32' or none, got {weights!r}")
    if amp is not None and weights is not None:
        raise UsageError(
            f"{{precision}}: bf16 autocast and {weights} weights together; choose one of "
            f"{', '.join(PRECISIONS)}",
            precision="precision",
        )
    if amp == "bf16" and device.type not in AUTOCAST_DEVICES:
        raise UsageError(
            f"{{precision}} bf16-autocast runs on cpu or cuda, not {device.type}; drop it or use "
            "{device} cpu/cuda",
            precision="precision",
            device="device",
        )


def place_model(model: nn.Module, device: torch.device, weights: str | None) -> nn.Module:
    """``model`` on ``device`` with its floating parameters and buffers in ``weights``'s dtype:
    itself when it already is, else a deep copy (the caller's model is never modified)."""
    dtype = WEIGHT_DTYPES[weights] if weights is not None else None
    tensors = [*model.parameters(), *model.buffers()]
    moved = any(p.device != device for p in model.parameters())
    cast = dtype is not None and any(t.is_floating_point() and t.dtype != dtype for t in tensors)
    if not (moved or cast):
        return model
    out = copy.deepcopy(model).to(device)
    return out.to(dtype) if cast else out


def sum_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a gradient of ``dtype`` is summed in: float32 for bf16/fp16, else its own."""
    return torch.float32 if dtype in HALF else dtype


def sum_templates(weights: list[Tensor]) -> list[Tensor]:
    """Tensors with the shape, device and summing dtype of ``weights`` (no memory: expanded
    scalars where the dtype differs), for the group sums' plan and host buffers."""
    return [
        w
        if sum_dtype(w.dtype) == w.dtype
        else torch.zeros((), dtype=sum_dtype(w.dtype), device=w.device).expand(w.shape)
        for w in weights
    ]


def to_sum_dtype(grads: list[Tensor]) -> list[Tensor]:
    """Gradients in their summing dtype (bf16/fp16 ones cast to float32; others as they are)."""
    return [g.float() if g.dtype in HALF else g for g in grads]


def cast_floating(x: object, dtype: torch.dtype) -> object:
    """``x`` (a tensor, or a dict/list/tuple of them) with its floating tensors in ``dtype``, as
    FSDP2's ``cast_forward_inputs`` does: a bf16 model takes bf16 inputs (ids and masks stay)."""
    if isinstance(x, Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: cast_floating(v, dtype) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(cast_floating(v, dtype) for v in x)
    return x
