"""Adam's and RMSprop's preconditioner at a checkpoint, for the preconditioned noise (torch).

docs/theory.md §5 ("Preconditioned noise"): P = diag(1/(√v̂ + ε)) with v̂ the second-moment
EMA of the saved optimizer state (``exp_avg_sq``, bias-corrected by 1 − β₂^t; ``max_exp_avg_sq``
under amsgrad; RMSprop's ``square_avg``, not bias-corrected), held fixed during the measurement.
Which state key and whether it is bias-corrected comes from the optimizer registry
(:mod:`bscrit.optim.registry`).

An optimizer state names parameters by integer index in the order they were handed to the
optimizer. :mod:`bscrit.engine.params` matches them to the measured parameters (by order and
shape); the match is accepted only when the counts and every shape agree; otherwise there is no
preconditioner and the reason says why (never a guess).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo


@dataclass(frozen=True)
class Preconditioner:
    """P per trainable tensor (same order as the engine's parameters) and a short description."""

    factors: list[Tensor]
    description: str


def _state_of(state: Mapping, index: int) -> Mapping | None:
    st = state.get(index, state.get(str(index)))
    return st if isinstance(st, Mapping) else None


def build_preconditioner(
    params: Sequence[nn.Parameter],
    optimizer_state: Mapping | None,
    opt: OptimizerInfo | None,
    state_indices: Sequence[int] | None = None,
) -> tuple[Preconditioner | None, str | None]:
    """P = 1/(√v̂ + ε) for each of ``params`` from a saved optimizer state.

    ``state_indices``: each parameter's index in the optimizer state, as matched by
    :func:`bscrit.engine.params.select_parameters`; without it the state's indices, group after
    group, are matched to ``params`` in order.

    Returns:
        ``(preconditioner, None)``, or ``(None, reason)`` when there is none: not an adaptive
        optimizer, no saved state, or a state that cannot be matched to the parameters.
    """
    if opt is None:
        return None, "no optimizer is known (spec or checkpoint)"
    d = optim.get(opt.name)
    if d.second_moment is None:
        return None, f"{d.torch_class} has no preconditioner"
    if optimizer_state is None:
        return None, f"the checkpoint holds no optimizer state ({d.second_moment})"
    groups = optimizer_state.get("param_groups")
    state = optimizer_state.get("state")
    if not isinstance(groups, Sequence) or not isinstance(state, Mapping):
        return None, "the checkpoint's optimizer state has no param_groups/state"
    order: list[tuple[int, Mapping]] = [
        (int(i), g) for g in groups if isinstance(g, Mapping) for i in g.get("params", [])
    ]
    if state_indices is not None and len(state_indices) == len(params):
        group_of = dict(order)
        order = [(i, group_of[i]) for i in state_indices]
    if len(order) != len(params):
        return None, (
            f"the optimizer state covers {len(order)} tensors and the model has {len(params)} "
            "trainable ones: they cannot be matched by order"
        )
    factors: list[Tensor] = []
    steps: set[float] = set()
    for (index, group), p in zip(order, params):
        factor, why = _factor(p, _state_of(state, index), group, d, index)
        if factor is None:
            return None, why
        factors.append(factor[0])
        steps.add(factor[1])
    step = f"step {int(max(steps))}" if steps else "step ?"
    corrected = ", bias-corrected" if d.bias_corrected else ""
    return Preconditioner(
        factors, f"diag(1/(sqrt(v)+eps)) from {d.second_moment} at {step}{corrected}, fixed"
    ), None


def _factor(
    p: nn.Parameter, st: Mapping | None, group: Mapping, d: optim.OptimizerDef, index: int
) -> tuple[tuple[Tensor, float] | None, str | None]:
    key = d.second_moment
    assert key is not None
    if st is None or not isinstance(st.get(key), Tensor):
        return None, f"no {key} for parameter #{index} in the optimizer state"
    v: Any = st[key]
    if group.get("amsgrad") and isinstance(st.get("max_exp_avg_sq"), Tensor):
        v = st["max_exp_avg_sq"]
    if tuple(v.shape) != tuple(p.shape):
        return None, (
            f"{key} of parameter #{index} has shape {tuple(v.shape)}, the model's tensor "
            f"{tuple(p.shape)}: the state does not match the parameters in order"
        )
    step = float(st.get("step", 0))
    v = v.detach().to(device=p.device, dtype=torch.float64)
    if d.bias_corrected:
        if step <= 0:
            return None, f"parameter #{index} has step 0: no second moment yet"
        beta2 = float(group.get("betas", (0.9, 0.999))[1])
        v = v / (1.0 - beta2**step)
    eps = float(group.get("eps", d.defaults.get("eps", 1e-8)))
    return ((1.0 / (v.sqrt() + eps)).to(p.dtype), step), None
