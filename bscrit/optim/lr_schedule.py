"""The run's learning-rate schedule, read once from what a checkpoint saved (pure: no torch import).

One reader for every command (docs/theory.md §5, "The learning rate a rule scales"). Two learning
rates matter and are never confused:

- the **base LR**, the one a scaling rule scales: the schedule's *peak* (OneCycle's ``max_lr``,
  not its starting ``initial_lr`` = max_lr/25; a warm-up's target; a decay's starting value);
- the **LR at the checkpoint**, the one that sets time scales (the relaxation time 1/(2ηλ), the
  equilibrium a continued run samples): the param group's ``lr`` when it was saved.

A schedule is a plain mapping in the *base run's* optimizer steps, ``factor_at(s, t)`` being the
multiplier of the base LR for the optimizer step taken at step ``t`` (PyTorch's convention: after
t scheduler steps the LR is ``base · λ(t)``). A branch at B' = κB that continues the run continues
the *remaining* schedule: its step k (from the checkpoint at step t₀) takes ``rule(κ) · base ·
factor_at(s, t₀ + κk)``: the same epochs, the rule's scale.

:func:`from_torch_state` decodes a ``torch.optim.lr_scheduler`` state_dict (LambdaLR and
MultiplicativeLR save no function: their shape comes from logged learning rates,
:func:`fit_logged`, e.g. an HF Trainer's ``trainer_state.json``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "ScheduleReading",
    "decaying",
    "describe",
    "factor_at",
    "fit_logged",
    "from_torch_state",
    "peak_of_group",
]

#: Below this fraction of the base LR a point is "measured while the LR decays" (NSR is an
#: equilibrium statistic of a constant-LR phase: docs/theory.md §8).
DECAYED_FRACTION = 0.5
#: Largest relative error of a fitted schedule against the logged learning rates.
FIT_TOLERANCE = 0.02


@dataclass(frozen=True)
class ScheduleReading:
    """A schedule read from a checkpoint: the mapping (None when it cannot be read), where it
    came from, and a note for the warnings (what could not be read, what is approximated)."""

    schedule: Mapping[str, Any] | None
    source: str
    note: str | None = None


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


def _onecycle(s: Mapping[str, Any], t: float) -> float:
    """OneCycleLR's closed form; past its last step the LR stays at the end of the last phase
    (PyTorch refuses to step further)."""
    start = 0.0
    lrs = {"initial_lr": s["initial"], "max_lr": 1.0, "min_lr": s["minimum"]}
    phases = s["phases"]
    for i, ph in enumerate(phases):
        end = float(ph["end_step"])
        if t <= end or i == len(phases) - 1:
            pct = min(1.0, (t - start) / (end - start)) if end > start else 1.0
            a, b = lrs[ph["start_lr"]], lrs[ph["end_lr"]]
            if s.get("anneal", "cos") == "cos":
                return _cos_anneal(a, b, pct)
            return (b - a) * pct + a
        start = end
    return float(s["minimum"])  # pragma: no cover  (the loop always returns)


def _warmup_decay(s: Mapping[str, Any], t: float) -> float:
    w = float(s.get("warmup_steps") or 0)
    if w > 0 and t < w:
        return min(1.0, (t + float(s.get("warmup_offset", 0))) / w)
    total = s.get("total_steps")
    decay = s.get("decay", "constant")
    if decay == "constant" or total is None:
        return 1.0
    m = float(s.get("min_factor", 0.0))
    frac = min(1.0, max(0.0, (t - w) / max(1.0, float(total) - w)))
    if decay == "linear":
        return m + (1.0 - m) * (1.0 - frac)
    return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * frac))


def factor_at(s: Mapping[str, Any], t: float) -> float:
    """The multiplier of the base LR at base-run step ``t`` (``t`` ≥ 0, may be fractional).

    A scheduler stepped once per epoch (``unit_steps`` optimizer steps) holds its value for the
    whole epoch: it is read at ⌊t / unit_steps⌋."""
    unit = float(s.get("unit_steps") or 1)
    if unit != 1:
        return factor_at({k: v for k, v in s.items() if k != "unit_steps"},
                         math.floor(t / unit + 1e-9))  # fmt: skip
    name = s.get("name", "constant")
    if name == "constant":
        return float(s.get("level", 1.0))
    if name == "warmup_decay":
        return _warmup_decay(s, t)
    if name == "step":  # StepLR (step_size) or MultiStepLR (milestones)
        if s.get("step_size"):
            n = math.floor(t / float(s["step_size"]) + 1e-9)
        else:
            n = sum(1 for m in s.get("milestones", ()) if m <= t + 1e-9)
        return float(s.get("gamma", 0.1)) ** n
    if name == "exponential":
        return float(s["gamma"]) ** t
    if name == "cosine_annealing":  # CosineAnnealingLR's closed form
        m = float(s.get("min_factor", 0.0))
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * t / float(s["t_max"])))
    if name == "linear_ramp":  # LinearLR
        n = float(s["total_iters"])
        a, b = float(s["start_factor"]), float(s["end_factor"])
        return a + (b - a) * min(t, n) / n if n > 0 else b
    if name == "constant_factor":  # ConstantLR
        return float(s["factor"]) if t < float(s["total_iters"]) else 1.0
    if name == "onecycle":
        return _onecycle(s, t)
    if name == "sequential":
        parts, marks = s["parts"], list(s["milestones"])
        i = sum(1 for m in marks if m <= t + 1e-9)
        offset = marks[i - 1] if i else 0
        return factor_at(parts[i], t - offset)
    raise ValueError(f"unknown schedule {name!r}")


def peak_of_group(group: Mapping[str, Any]) -> float | None:
    """The base LR of a saved param group: OneCycle's ``max_lr`` where present, else the
    ``initial_lr`` a scheduler stored, else ``lr`` (None when none is a number)."""
    for k in ("max_lr", "initial_lr", "lr"):
        v = group.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            return float(v)
    return None


def _ratio(x: Any, base: Any) -> float:
    return float(x) / float(base) if base else 1.0


def _decode(st: Mapping[str, Any], group: Mapping[str, Any]) -> dict[str, Any] | None:
    """One torch scheduler state_dict as a schedule mapping (None: its shape is not saved)."""
    base = (st.get("base_lrs") or [group.get("initial_lr")])[0]
    if "_schedule_phases" in st:
        peak = group.get("max_lr")
        if not peak:
            return None
        return {"name": "onecycle", "phases": [dict(p) for p in st["_schedule_phases"]],
                "initial": _ratio(group.get("initial_lr", base), peak),
                "minimum": _ratio(group.get("min_lr", 0.0), peak),
                "anneal": st.get("_anneal_func_type", "cos"),
                "cycle_momentum": bool(st.get("cycle_momentum", False))}  # fmt: skip
    if "_schedulers" in st:
        parts = [_decode(p, group) for p in st["_schedulers"]]
        if any(p is None for p in parts):
            return None
        return {"name": "sequential", "parts": parts, "milestones": list(st["_milestones"])}
    if "T_max" in st:
        return {"name": "cosine_annealing", "t_max": float(st["T_max"]),
                "min_factor": _ratio(st.get("eta_min", 0.0), base)}  # fmt: skip
    if "step_size" in st:
        return {"name": "step", "step_size": int(st["step_size"]), "gamma": float(st["gamma"])}
    if "milestones" in st:
        ms = sorted(int(m) for m, c in dict(st["milestones"]).items() for _ in range(int(c)))
        return {"name": "step", "milestones": ms, "gamma": float(st["gamma"])}
    if "start_factor" in st:
        return {"name": "linear_ramp", "start_factor": float(st["start_factor"]),
                "end_factor": float(st["end_factor"]),
                "total_iters": float(st["total_iters"])}  # fmt: skip
    if "factor" in st and "total_iters" in st:
        return {"name": "constant_factor", "factor": float(st["factor"]),
                "total_iters": float(st["total_iters"])}  # fmt: skip
    if "gamma" in st:
        return {"name": "exponential", "gamma": float(st["gamma"])}
    return None


def from_torch_state(
    state: Mapping[str, Any], group: Mapping[str, Any], source: str
) -> ScheduleReading:
    """Decode a ``torch.optim.lr_scheduler`` state_dict (``group``: the main saved param group,
    where OneCycle keeps ``max_lr``/``initial_lr``/``min_lr``)."""
    try:
        s = _decode(state, group)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        s = None
    if s is None:
        return ScheduleReading(None, source, f"{source}: the scheduler's shape is not saved "
                               "(a LambdaLR or another function-based scheduler)")  # fmt: skip
    s["step"] = int(state.get("last_epoch", 0))
    s["source"] = source
    return ScheduleReading(s, source)


def _candidates(steps: Sequence[float], f: Sequence[float], total: int) -> list[dict[str, Any]]:
    ws = {0}
    for t, y in zip(steps, f, strict=True):
        if 0 < y < 0.999 and t > 0:
            for w in (t / y, (t + 1) / y):
                ws |= {math.floor(w), math.ceil(w)}
    ws = {w for w in ws if 0 <= w <= total}
    out = []
    for w in sorted(ws):
        for decay in ("constant", "linear", "cosine"):
            out.append({"name": "warmup_decay", "decay": decay, "warmup_steps": w,
                        "warmup_offset": 0, "total_steps": total, "min_factor": 0.0})  # fmt: skip
    return out


def fit_logged(
    logged: Sequence[tuple[float, float]], base_lr: float, total_steps: int | None, source: str
) -> ScheduleReading:
    """The schedule that explains logged ``(step, lr)`` pairs: constant, linear or cosine decay
    to 0 at ``total_steps``, after a linear warm-up from 0 (the Hugging Face Trainer's
    ``get_{constant,linear,cosine}_schedule_with_warmup``), each learning rate within
    :data:`FIT_TOLERANCE` of the base; a log line at step t may hold λ(t) or the LR step t used,
    λ(t − 1) (both are tried). None with a note when none fits."""
    pts = [(float(t), float(y) / base_lr) for t, y in logged if base_lr > 0]
    if len(pts) < 2 or not total_steps:
        why = f"too few logged learning rates ({len(pts)}) or no max_steps"
        return ScheduleReading(None, source, f"{source}: {why} to read the schedule from")
    best, err = None, math.inf
    for lag in (0, 1):  # a log line at step t holds λ(t), or (newer Trainers) λ(t − 1): its LR
        shifted = [(t - lag, y) for t, y in pts]
        steps, f = [t for t, _ in shifted], [y for _, y in shifted]
        for s in _candidates(steps, f, int(total_steps)):
            e = max(abs(factor_at(s, t) - y) for t, y in shifted)
            if e < err - 1e-12:
                best, err = s, e
    if best is None or err > FIT_TOLERANCE:
        return ScheduleReading(None, source, (
            f"{source}: the logged learning rates fit no constant, linear or cosine schedule "
            f"with warm-up (best within {err:.2g} of the base LR)"))  # fmt: skip
    return ScheduleReading({**best, "source": source}, source)


def describe(s: Mapping[str, Any] | None) -> str:
    """One phrase: ``"cosine decay to step 2000 after 100 warm-up steps (scheduler.pt)"``."""
    if s is None:
        return "constant"
    name = s.get("name", "constant")
    src = f" ({s['source']})" if s.get("source") else ""
    if name == "constant":
        level = float(s.get("level", 1.0))
        return ("constant" + (f" at {level:.3g}× the base LR" if level != 1.0 else "")) + src
    if name == "warmup_decay":
        w = int(s.get("warmup_steps") or 0)
        warm = f" after {w} warm-up steps" if w else ""
        if s.get("decay", "constant") == "constant":
            return f"constant{warm}{src}"
        return f"{s['decay']} decay to step {s.get('total_steps')}{warm}{src}"
    return f"{name}{src}"


def decaying(base_lr: float, lr_now: float | None) -> bool:
    """Whether the LR at a point is below :data:`DECAYED_FRACTION` of the base LR."""
    return lr_now is not None and base_lr > 0 and lr_now < DECAYED_FRACTION * base_lr
