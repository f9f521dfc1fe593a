"""``measure``'s plan line: the time per batch measured after the warm-up batches, and an
adaptive run's time for its first check beside the whole budget's (issue 27: the estimate was
3-8x the actual time)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import bscrit.engine.hot_loop as hot_loop
from bscrit.engine.adaptive import AdaptiveState
from bscrit.workflows.plan import plan_line


def _clock_estimate(monkeypatch: pytest.MonkeyPatch, durations: list[float]) -> float | None:
    """The clock's estimate when batch i takes ``durations[i]`` seconds."""
    t = [0.0]
    monkeypatch.setattr(hot_loop.time, "perf_counter", lambda: t[0])
    told: list[float] = []
    clock = hot_loop._Clock(None, told.append, torch.device("cpu"))
    for d in durations:
        t[0] += d
        clock.tick()
    return told[0] if told else None


def test_the_time_per_batch_leaves_out_the_warm_up_batches(monkeypatch: pytest.MonkeyPatch):
    warm = hot_loop.ESTIMATE_WARMUP
    # the first batches pay for warm-up (3 s each), every later one takes 0.1 s
    est = _clock_estimate(monkeypatch, [3.0] * warm + [0.1] * 100)
    assert est == pytest.approx(0.1)
    # measured over at least ESTIMATE_S seconds: slow batches are still timed after two of them
    est = _clock_estimate(monkeypatch, [3.0] * warm + [2.0] * 5)
    assert est == pytest.approx(2.0)
    # a run too short to pass its warm-up gets no estimate (and so no plan line)
    assert _clock_estimate(monkeypatch, [1.0] * (warm + 1)) is None


def _plan(adaptive: AdaptiveState | None, k: int = 200, points: int = 1) -> SimpleNamespace:
    return SimpleNamespace(
        adaptive=adaptive,
        batch_size=16,
        groups=10,
        labels=[f"c{i}" for i in range(points)],
        k=k,
        options=SimpleNamespace(sampling=False),
    )


def test_an_adaptive_plan_line_gives_the_first_check_and_the_budget_apart():
    a = AdaptiveState(target=0.1, start=200, max_batches=1000, group_size=20)
    line = plan_line(_plan(a), 0.5)  # type: ignore[arg-type]
    assert line is not None
    # 200 x 0.5 s = 100 s before the first check; the budget, 1000 x 0.5 s, only as a bound
    assert ": about 1 min 40 s for the first 200, at most about 8 min 20 s if the target " in line
    assert line.endswith("needs all 1,000")
    fixed = plan_line(_plan(None, k=200, points=2), 0.5)  # type: ignore[arg-type]
    assert fixed is not None and fixed.endswith(": about 3 min 20 s in all")
    assert "at most" not in fixed
