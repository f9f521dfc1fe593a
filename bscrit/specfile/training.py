"""The spec's ``optimizer`` and ``schedule`` sections: how the base run trained.

Validated into the same :class:`~bscrit.checker.Checker` as the rest of the spec, so their
problems are reported with the others, each with its key path. The optimizer's names, keys and
bounds come from the registry (:mod:`bscrit.optim.registry`). No torch import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bscrit.checker import Checker
from bscrit.checker import describe as _describe
from bscrit.checker import join as _join
from bscrit.optim import registry as optim
from bscrit.optim.registry import OptimizerInfo

SCHEDULE_KEYS = ("name", "warmup_steps", "milestones", "gamma", "total_steps")
SCHEDULE_NAMES = ("constant", "step", "cosine")
OPTIMIZER_NAMES = optim.NAMES
ALL_OPTIMIZER_KEYS = (
    "name",
    *dict.fromkeys(k for d in optim.REGISTRY.values() for k in d.spec_keys),
)


@dataclass(frozen=True)
class ScheduleSpec:
    """LR schedule of the base run, in optimizer steps (used by svag)."""

    name: str = "constant"  # constant | step | cosine
    warmup_steps: int = 0  # linear warm-up length, steps
    milestones: tuple[int, ...] = ()  # step: lr *= gamma at these steps
    gamma: float = 0.1
    total_steps: int | None = None  # cosine decay length, steps (None: the run's length)
    given: bool = True  # False: the spec has no schedule: (the checkpoint's scheduler is read)


def parse_optimizer(c: Checker, value: Any) -> OptimizerInfo | None:
    """The spec's ``optimizer:``: a name and the run's hyperparameters (``lr`` required), or the
    name alone, which settles an optimizer state that cannot tell (Adam, AdamW, RAdam keep the
    same state): its values are then read from the checkpoint
    (:data:`bscrit.optim.registry.NAME_ONLY`)."""
    path = "optimizer"
    if value is None:
        return None
    if isinstance(value, str):
        value = {"name": value}
    d = c.mapping(value, path)
    if d is None:
        return None
    c.unknown_keys(d, ALL_OPTIMIZER_KEYS, path)
    if d.get("name") is None:
        c.add("optimizer.name", f"missing required key ({', '.join(OPTIMIZER_NAMES)})")
        return None
    name = c.choice(d["name"], "optimizer.name", OPTIMIZER_NAMES)
    if name is None:
        return None
    spec_keys = optim.get(name).spec_keys
    for key in d:
        if key in ALL_OPTIMIZER_KEYS and key != "name" and key not in spec_keys:
            c.add(_join(path, key), f"not a hyperparameter of {name}")
    given = [k for k in d if k != "name" and d[k] is not None]
    if not given:  # the name alone: the rest comes from the checkpoint's optimizer state
        return OptimizerInfo(name=optim.get(name).name, lr=0.0, source=optim.NAME_ONLY)
    if d.get("lr") is None:
        c.add(
            "optimizer.lr",
            "missing required key (the learning rate of the run; or give optimizer.name alone "
            "to read every value from the checkpoint's optimizer state)",
        )
    values: dict[str, Any] = {}
    n_before = len(c.problems)
    for key in spec_keys:
        if d.get(key) is None:
            continue
        if key == "betas":
            b = d["betas"]
            if not isinstance(b, (list, tuple)) or len(b) != 2:
                c.add("optimizer.betas", f"expected two numbers [beta1, beta2], got {_describe(b)}")
                continue
            for i, (flat_key, x) in enumerate(zip(("beta1", "beta2"), b)):
                values[flat_key] = c.number(x, f"optimizer.betas[{i}]", **optim.bounds(flat_key))
        elif optim.HYPERPARAMETERS[key].kind == "bool":
            values[key] = c.boolean(d[key], _join(path, key))
        else:
            values[key] = c.number(d[key], _join(path, key), **optim.bounds(key))
    if values.get("nesterov") and not values.get("momentum"):
        c.add("optimizer.nesterov", "nesterov needs momentum > 0")
    if d.get("lr") is None or len(c.problems) > n_before:
        return None
    return optim.from_flat(name, values, source="spec")


def parse_schedule(c: Checker, value: Any) -> ScheduleSpec | None:
    path = "schedule"
    if value is None:
        return ScheduleSpec(given=False)
    if isinstance(value, str):
        value = {"name": value}
    d = c.mapping(value, path)
    if d is None:
        return None
    c.unknown_keys(d, SCHEDULE_KEYS, path)
    n_before = len(c.problems)
    name = "constant"
    if d.get("name") is not None:
        name = c.choice(d["name"], "schedule.name", SCHEDULE_NAMES) or "constant"
    warmup = 0
    if d.get("warmup_steps") is not None:
        warmup = c.integer(d["warmup_steps"], "schedule.warmup_steps", minimum=0) or 0
    milestones: list[int] = []
    ms = d.get("milestones")
    if ms is not None:
        if not isinstance(ms, list):
            c.add("schedule.milestones", f"expected a list of steps, got {_describe(ms)}")
        else:
            for i, m in enumerate(ms):
                v = c.integer(m, f"schedule.milestones[{i}]", minimum=0)
                if v is not None:
                    milestones.append(v)
            if milestones != sorted(milestones):
                c.add("schedule.milestones", "must be in increasing order")
    gamma = 0.1
    if d.get("gamma") is not None:
        gamma = (
            c.number(d["gamma"], "schedule.gamma", low=0.0, low_open=True, what="a positive number")
            or 0.1
        )
    total = None
    if d.get("total_steps") is not None:
        total = c.integer(d["total_steps"], "schedule.total_steps", minimum=1)
    if total is not None and warmup > total:
        c.add("schedule.warmup_steps", f"{warmup} is more than total_steps = {total}")
    if len(c.problems) > n_before:
        return None
    return ScheduleSpec(
        name=name,
        warmup_steps=warmup,
        milestones=tuple(milestones),
        gamma=gamma,
        total_steps=total,
    )
