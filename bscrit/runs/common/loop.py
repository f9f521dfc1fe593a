"""One run: a deep copy of the checkpoint's model under a seed, trained step by step and
evaluated at a grid of step counts until the end or a divergence (torch).

Every SVAG run (one l) and every branch of ``bscrit confirm`` (one seed at B or B') is one such
run: :func:`replica` gives the copy on the plan's device, with the global torch seed (dropout,
augmentation) set inside ``torch.random.fork_rng`` so the caller's RNG is untouched;
:func:`train_on_grid` steps and evaluates it. What a step is (a SVAG step, a plain optimizer
step) and when a run has diverged beyond a non-finite value are the caller's.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bscrit.errors import RunError
from bscrit.runs.common.plan import RunPlan

__all__ = ["Curve", "non_finite", "replica", "train_on_grid"]


@contextlib.contextmanager
def replica(
    plan: RunPlan, seed: int, where: str, batch_size: int
) -> Iterator[tuple[nn.Module, Callable[[Any, Any], Any]]]:
    """``(model, loss)``: a deep copy of the plan's model in train mode and the loss, on the
    plan's device, under the global torch seed ``seed``. Out of GPU memory inside is a
    :class:`RunError` naming ``where`` and ``batch_size``."""
    devices = [plan.device.index or 0] if plan.device.type == "cuda" else []
    model = copy.deepcopy(plan.model).to(plan.device)
    model.train()
    loss_fn = plan.loss_fn.to(plan.device) if isinstance(plan.loss_fn, nn.Module) else plan.loss_fn
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        try:
            yield model, loss_fn
        except torch.cuda.OutOfMemoryError:
            raise RunError(
                f"{where}: out of memory at batch size {batch_size} on {plan.device}"
            ) from None


def non_finite(values: Mapping[str, float]) -> str:
    """``"train_loss = nan, G = nan"``: the test functions that are not finite ("" if none)."""
    return ", ".join(f"{k} = {v}" for k, v in values.items() if not math.isfinite(v))


@dataclass(frozen=True)
class Curve:
    """What :func:`train_on_grid` recorded.

    Attributes:
        values: test function → its value at every grid point (NaN after a divergence).
        steps: steps taken (fewer than the last grid point after a divergence).
        diverged: the index of the grid point where the run diverged, or None.
        elapsed_s: wall time, evaluations included.
    """

    values: dict[str, tuple[float, ...]]
    steps: int
    diverged: int | None
    elapsed_s: float


def train_on_grid(
    grid: Sequence[int],
    step: Callable[[], None],
    evaluate: Callable[[], Mapping[str, float]],
    *,
    at_start: Callable[[str], str],
    blown_up: Callable[[Mapping[str, float], Mapping[str, float]], bool] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> Curve:
    """Take ``step`` until each of the step counts ``grid`` (from 0, increasing) and ``evaluate``
    there; stop at the first grid point where a test function is not finite or
    ``blown_up(values, values at grid point 0)``; the remaining points are NaN.

    Args:
        at_start: the message of the :class:`RunError` raised when a test function is not finite
            at grid point 0 (nothing has diverged: the start itself is broken), given the
            test functions that are not (:func:`non_finite`).
        on_step: called with 1 after every step, and with the steps skipped after a divergence.
    """
    t0 = time.perf_counter()
    values: dict[str, list[float]] = {}
    start: Mapping[str, float] = {}
    steps, diverged = 0, None
    for i, stop in enumerate(grid):
        while steps < stop:
            step()
            steps += 1
            if on_step is not None:
                on_step(1)
        vals = evaluate()
        bad = non_finite(vals)
        if i == 0 and bad:
            raise RunError(at_start(bad))
        for k, v in vals.items():
            values.setdefault(k, [math.nan] * i).append(float(v))
        start = start if i else vals
        if bad or (blown_up is not None and blown_up(vals, start)):
            diverged = i
            break
    if on_step is not None and steps < grid[-1]:
        on_step(grid[-1] - steps)  # skipped after divergence
    for vs in values.values():
        vs.extend([math.nan] * (len(grid) - len(vs)))
    return Curve({k: tuple(v) for k, v in values.items()}, steps, diverged,
                 time.perf_counter() - t0)  # fmt: skip
