"""Reading the run's LR scheduler from what its checkpoint saved (torch for ``scheduler.pt``).

Where a training framework keeps the scheduler (docs/theory.md §5, "The learning rate a rule
scales"):

- an HF Trainer ``checkpoint-N/``: ``scheduler.pt`` (a LambdaLR: the shape is a function, not
  saved) and ``trainer_state.json`` (``log_history``'s learning rates and ``max_steps``, from
  which the constant/linear/cosine shape and the warm-up are fitted);
- a Lightning checkpoint: ``lr_schedulers`` (one state_dict per scheduler);
- a plain ``torch.save`` dict: ``scheduler``, ``lr_scheduler``, ``scheduler_state_dict``,
  ``sched``.

The decoding itself is pure (:mod:`bscrit.optim.lr_schedule`); this module only finds and reads.
``scheduler.pt`` is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from bscrit.optim import lr_schedule
from bscrit.optim.lr_schedule import ScheduleReading
from bscrit.optim.state import groups_of

#: Keys of a plain checkpoint dict that hold a scheduler's state_dict.
SCHEDULER_KEYS = ("scheduler", "lr_scheduler", "scheduler_state_dict", "sched", "lr_schedulers")
TRAINER_SCHEDULER = "scheduler.pt"


def _main_group(opt_state: Mapping | None) -> Mapping[str, Any]:
    groups = groups_of(opt_state)
    return groups[0] if groups else {}


def _trainer_logs(folder: str) -> tuple[list[tuple[float, float]], int | None]:
    path = os.path.join(folder, "trainer_state.json")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError):
        return [], None
    if not isinstance(raw, Mapping):
        return [], None
    logged = [
        (float(e["step"]), float(e["learning_rate"]))
        for e in raw.get("log_history") or ()
        if isinstance(e, Mapping)
        and isinstance(e.get("step"), (int, float))
        and isinstance(e.get("learning_rate"), (int, float))
    ]
    total = raw.get("max_steps")
    return logged, total if isinstance(total, int) and total > 0 else None


def _torch_state(path: str) -> Mapping | None:
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # damaged or pickled: the schedule is then unknown, said in the note
        return None
    return obj if isinstance(obj, Mapping) else None


def read_folder_schedule(
    folder: str, opt_state: Mapping | None, step: int | None
) -> ScheduleReading:
    """An HF Trainer folder's schedule: ``scheduler.pt`` decoded when its class saves its shape,
    else fitted to ``trainer_state.json``'s logged learning rates."""
    group = _main_group(opt_state)
    sched_file = os.path.join(folder, TRAINER_SCHEDULER)
    state = _torch_state(sched_file) if os.path.isfile(sched_file) else None
    if state is not None:
        reading = lr_schedule.from_torch_state(state, group, TRAINER_SCHEDULER)
        if reading.schedule is not None:
            return reading
    logged, total = _trainer_logs(folder)
    if not logged:
        what = TRAINER_SCHEDULER if state is not None else "no scheduler"
        return ScheduleReading(None, what, None if state is None else (
            f"{sched_file}: a LambdaLR, whose shape is not saved, and trainer_state.json logs no "
            "learning rate"))  # fmt: skip
    base = lr_schedule.peak_of_group(group) or max(y for _, y in logged)
    reading = lr_schedule.fit_logged(logged, base, total, "trainer_state.json log_history")
    if reading.schedule is not None:
        return ScheduleReading({**reading.schedule, "step": step or 0}, reading.source)
    return reading


def _per_epoch(reading: ScheduleReading, root: Mapping) -> ScheduleReading:
    """A scheduler stepped once per epoch (Lightning's default ``interval: "epoch"``): its
    ``last_epoch`` is the checkpoint's ``epoch``, not its ``global_step``; its unit is then
    ``global_step / epoch`` optimizer steps."""
    s = reading.schedule
    step, epoch = root.get("global_step"), root.get("epoch")
    if s is None or not isinstance(step, int) or not isinstance(epoch, int) or epoch <= 0:
        return reading
    last = int(s.get("step", 0))
    if last == step or last not in (epoch, epoch + 1) or step % max(1, last):
        return reading
    unit = step // last
    note = (f"{reading.source} counts epochs ({last}, at optimizer step {step}): read as one "
            f"scheduler step per {unit} optimizer steps")  # fmt: skip
    return ScheduleReading({**s, "unit_steps": unit, "step": step}, reading.source, note)


def read_object_schedule(root: Any, opt_state: Mapping | None) -> ScheduleReading:
    """The scheduler state inside a loaded checkpoint dict (Lightning's ``lr_schedulers``, or a
    plain script's ``scheduler``), decoded; no schedule when there is none."""
    if not isinstance(root, Mapping):
        return ScheduleReading(None, "no scheduler")
    for key in SCHEDULER_KEYS:
        st = root.get(key)
        if isinstance(st, (list, tuple)) and st:
            if len(st) > 1:
                return ScheduleReading(None, key, f"the checkpoint's {key} holds {len(st)} "
                                       "schedulers: bscrit reads one")  # fmt: skip
            st = st[0]
        if isinstance(st, Mapping) and ("last_epoch" in st or "_schedulers" in st):
            where = f"the checkpoint's {key}"
            reading = lr_schedule.from_torch_state(st, _main_group(opt_state), where)
            return _per_epoch(reading, root)
    return ScheduleReading(None, "no scheduler")
