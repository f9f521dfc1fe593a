"""Adaptive stopping (``--target-rel-error``): add batches until NSR is precise enough.

The run starts with a planned number of batches in m groups, then checks the relative half-width
of the 95% interval of NSR (docs/theory.md §2) and either stops or draws ``group_size`` more
independent batches, within a budget. The extra batches form one new group each time until there
are ``max_groups`` = max(m, 32) groups; from then on they are dealt round-robin into those groups
(:attr:`bscrit.engine.loop.LoopHooks.next_rows`; sizes never differ by more than one batch). Host
memory (one sum per group) and the cost of a check stop growing there, however long the run.

Why 32 and not m: a rule that stops on the interval's own width stops more often when the
jackknife happens to underestimate the error, and with few groups that estimate stays noisy for
the whole run (m − 1 degrees of freedom). Over 1,000 seeds of the tiny float64 problem of the
tests (ε = 0.3, 8 groups to start), the 95% intervals covered the exact NSR 90.5% of the time
with the groups fixed at 8, 93.3% when they grow to 32 (benchmarks/adaptive_scaling.py
``--coverage``); the rest is the bias of any rule that stops on the width.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from bscrit.engine.data import BatchPlan, default_num_batches
from bscrit.engine.hot_loop import LoopHooks
from bscrit.errors import UsageError
from bscrit.stats.estimators import GroupSums

#: With --target-rel-error and no --batches, the run starts with this many batches per group.
ADAPTIVE_START_PER_GROUP = 10
#: Default --max-batches: this many times the default k = max(200, ceil(n/B)).
ADAPTIVE_BUDGET_FACTOR = 5
#: Groups an adaptive run grows to (at least m); later batches are dealt into them.
ADAPTIVE_MAX_GROUPS = 32


def group_seed(seed: int, j: int) -> int:
    """Seed of the rows of extension j − m of an adaptive run (m groups): a hash of (seed, j)."""
    digest = hashlib.blake2b(f"bscrit-group:{seed}:{j}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class AdaptiveState:
    """Plan and outcome of an adaptive run: groups are added until the NSR is precise enough.

    The criterion is the 95% interval of NSR (asymmetric;
    :func:`bscrit.stats.estimators.nsr_interval`): ``rel_error = (hi − lo) / 2 / NSR``, infinite
    while Ĝ ≤ 0 or the interval is unbounded. It is checked after the planned batches and after
    every ``group_size`` added batches; batches are added only if all ``group_size`` of them fit in
    ``max_batches``.
    """

    target: float
    start: int  # batches planned before the first check
    max_batches: int
    group_size: int  # batches added between two checks (a new group, or dealt into the groups)
    max_groups: int = ADAPTIVE_MAX_GROUPS  # groups the run grows to before dealing
    reason: str | None = None  # "target reached" | "budget exhausted"
    rel_error: float = math.inf
    batches: int = 0
    groups: int = 0
    #: ``GroupSums -> (nsr, (lo, hi))`` of the reported estimator; default: the batch estimator.
    nsr_of: Callable[[GroupSums], tuple[float, tuple[float, float]]] | None = None

    def rel_error_of(self, sums: GroupSums) -> float:
        if self.nsr_of is not None:
            nsr, (lo, hi) = self.nsr_of(sums)
        else:
            from bscrit.stats.estimators import nsr_interval

            g, n = sums.full()
            if n <= 0:
                return math.inf
            nsr, (lo, hi) = nsr_interval(g, n, *sums.leave_one_out())
        if not (math.isfinite(nsr) and math.isfinite(hi) and nsr > 0):
            return math.inf
        return (hi - lo) / 2.0 / nsr

    def to_dict(self) -> dict[str, Any]:
        """The ``extra.stopping`` entry of the measurement JSON."""
        return {
            "reason": self.reason,
            "target_rel_error": self.target,
            "achieved_rel_error": self.rel_error if math.isfinite(self.rel_error) else None,
            "batches": self.batches,
            "groups": self.groups,
            "start_batches": self.start,
            "max_batches": self.max_batches,
            "group_size": self.group_size,
            "max_groups": self.max_groups,
        }


def adaptive_plan(
    target: float | None,
    max_batches: int | None,
    batches: int | None,
    groups: int,
    dataset_size: int,
    batch_size: int,
) -> AdaptiveState | None:
    """Validate the adaptive options; None when ``target`` is None (a fixed-k run).

    Starts with ``batches`` (default 10 per group), adds ceil(start / m) batches between checks
    (a new group until there are max(m, 32), then dealt into them), and stops at
    ``max_batches`` (default 5 × max(200, ceil(n/B))).
    """
    if target is None:
        if max_batches is not None:
            raise UsageError(
                "{max_batches} needs {target_rel_error} ({batches} sets a fixed k)",
                max_batches="max_batches",
                target_rel_error="target_rel_error",
                batches="batches",
            )
        return None
    if not target > 0:
        raise UsageError(
            f"{{target_rel_error}}: expected a positive number, got {target}",
            target_rel_error="target_rel_error",
        )
    start = batches or ADAPTIVE_START_PER_GROUP * groups
    budget = max_batches or max(
        start, ADAPTIVE_BUDGET_FACTOR * default_num_batches(dataset_size, batch_size)
    )
    if start > budget:
        raise UsageError(
            f"{{batches}} {start} is more than {{max_batches}} {budget}",
            batches="batches",
            max_batches="max_batches",
        )
    return AdaptiveState(
        target=target,
        start=start,
        max_batches=budget,
        group_size=math.ceil(start / groups),
        max_groups=max(groups, ADAPTIVE_MAX_GROUPS),
    )


def adaptive_hooks(
    state: AdaptiveState, dataset_size: int, batch_size: int, seed: int, base: Any = None
) -> LoopHooks:
    """LoopHooks whose ``next_rows`` adds batches until ``state``'s target or budget is reached.

    Extension i is ``group_size`` independent batches drawn with :func:`group_seed` (seed, m + i)
    (m: the planned groups), so a run is reproducible and every rank of a distributed
    run draws the same rows; the engine makes them a new group or deals them into the groups
    (``state.max_groups``).
    """

    planned: list[int] = []  # the number of groups before the first extension

    def next_rows(i: int, sums: GroupSums) -> BatchPlan | None:
        if not planned:
            planned.append(sums.m)
        state.rel_error = state.rel_error_of(sums)
        state.batches, state.groups = sums.k, sums.m
        if state.rel_error <= state.target:
            state.reason = "target reached"
            return None
        if sums.k + state.group_size > state.max_batches:
            state.reason = "budget exhausted"
            return None
        # drawn as the engine goes, like the planned rows (row for row sample_batches' rows)
        return BatchPlan(
            dataset_size, batch_size, state.group_size, group_seed(seed, planned[0] + i)
        )

    return replace(base or LoopHooks(), next_rows=next_rows, max_groups=state.max_groups)


def batches_per_point(
    given: int | None,
    n: int,
    batch_size: int,
    groups: int,
    target_rel_error: float | None,
    max_batches: int | None,
    *,
    sampling: bool,
    points: int,
) -> tuple[int, AdaptiveState | None]:
    """k, the batches per measured point (``given``, else the default max(200, n/B), a fraction
    of it for each ``--sample-steps`` point, or what an adaptive run starts with), and the
    adaptive plan (None: a fixed k).

    Raises:
        UsageError: k out of bounds, or an adaptive run asked for several points (pooled points
            need the same groups).
    """
    from bscrit.engine.data import check_num_batches

    k = given or default_num_batches(n, batch_size)
    if sampling and not given:
        from bscrit.stats.sample_plan import sample_batches

        k = sample_batches(k, groups)
    check_num_batches(k)
    adaptive = adaptive_plan(target_rel_error, max_batches, given, groups, n, batch_size)
    if adaptive is not None:
        if points > 1 or sampling:
            raise UsageError(
                "{target_rel_error} measures one checkpoint at a time (pooled checkpoints need "
                "the same groups); give one checkpoint, or use {batches} for a fixed k",
                target_rel_error="target_rel_error",
                batches="batches",
            )
        k = adaptive.start
    return k, adaptive
