"""The memory plan line printed before a measurement's first batch
(:class:`bscrit.stats.memory_plan.MemoryPlan`: per-rank components and totals)."""

from __future__ import annotations

from bscrit.stats.memory_plan import NOT_INCLUDED, MemoryPlan, format_bytes

#: The plan is printed before the first batch when a rank's total reaches this many bytes (or
#: the run is sharded); smaller runs record it in the JSON only (``extra.memory_plan``).
MEMORY_LINE_MIN_BYTES = 1 << 30


def _where(plan: MemoryPlan, where: str) -> str:
    parts = [c for c in plan.components if c.where == where]
    text = " + ".join(f"{c.name} {format_bytes(c.bytes)}" for c in parts)
    return f"{text} = {format_bytes(sum(c.bytes for c in parts))}"


def memory_line(plan: MemoryPlan, force: bool = False) -> str | None:
    """``"memory plan per rank (2 ranks, replicated): host: model 389 MiB + ... = 4.94 GiB;
    activations, ... not included"``; None below ``MEMORY_LINE_MIN_BYTES`` unless ``force`` or
    sharded."""
    i = plan.inputs
    if not (force or i.sharded or plan.total >= MEMORY_LINE_MIN_BYTES):
        return None
    how = "sharded" if i.sharded else "replicated"
    many = "s" * (i.world_size > 1)
    ranks = f" ({i.world_size} rank{many}, {how})" if i.world_size > 1 or i.sharded else ""
    places = [w for w in ("device", "host") if any(c.where == w for c in plan.components)]
    body = "; ".join(f"{w}: {_where(plan, w)}" for w in places)
    return f"memory plan per rank{ranks}, {i.groups} group sums: {body}; {NOT_INCLUDED}"
