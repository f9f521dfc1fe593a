"""PyTorch's own optimizer and the LR schedule a run follows (torch).

Every run, a SVAG run at B' or a branch of ``bscrit confirm``, trains with PyTorch's optimizer
built from an :class:`~bscrit.optim.registry.OptimizerInfo` (:func:`make_optimizer`) and the spec's
schedule, converted to steps at the run's batch size (:func:`target_schedule`) and read as an LR
multiplier at any (effective) step (:func:`lr_factor`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from bscrit.optim import lr_schedule
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo
from bscrit.theory.scaling import scale_steps

__all__ = ["lr_factor", "make_optimizer", "target_schedule"]


def make_optimizer(
    params: Sequence[Tensor], opt: OptimizerInfo, groups: Sequence[int] | None = None
) -> torch.optim.Optimizer:
    """PyTorch's own optimizer with the hyperparameters of ``opt``.

    ``groups`` gives, per parameter of ``params``, the index of its saved param group: when the
    groups' values differ (:func:`bscrit.optim.registry.group_optimizers`), each parameter is
    trained with its own group's values (a no-decay group stays without decay), as the run was.
    Else (or without ``groups``) one group with ``opt``'s values.
    """
    per_group = optim.group_optimizers(opt)
    cls, kwargs = optim.torch_kwargs(opt)
    if not per_group or groups is None or len(groups) != len(params):
        return getattr(torch.optim, cls)(list(params), **kwargs)
    built = []
    for g, g_opt in per_group:
        mine = [p for p, i in zip(params, groups, strict=True) if i == g.index]
        if mine:
            built.append({"params": mine, **optim.torch_kwargs(g_opt)[1]})
    return getattr(torch.optim, cls)(built, **kwargs)


def target_schedule(schedule: Any, kappa: float) -> dict[str, Any]:
    """The run's schedule (in steps of the base run at batch size B) in steps at B' = κB.

    Training length is fixed in epochs (docs/theory.md §5), so warm-up, milestones and the cosine
    length are divided by κ (:func:`bscrit.theory.scaling.scale_steps`). ``schedule`` is a
    :class:`~bscrit.specfile.document.ScheduleSpec`, a schedule read from the checkpoint (a
    mapping of :mod:`bscrit.optim.lr_schedule`, evaluated at κ × the target step), or None
    (constant).
    """
    if isinstance(schedule, Mapping):
        return {"name": "read", "kappa": float(kappa), "base": dict(schedule),
                "describe": lr_schedule.describe(schedule)}  # fmt: skip
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
    if name == "read":  # the base run's own schedule, at the base-run step κe
        return lr_schedule.factor_at(schedule["base"], float(schedule["kappa"]) * e)
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
