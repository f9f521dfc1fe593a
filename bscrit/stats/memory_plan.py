"""Per-rank memory (and time) of a measurement, planned before the first batch (pure arithmetic).

What one rank holds while ``bscrit measure`` runs (docs/performance.md, "Memory plan"), from the
parameter counts, dtypes, the world size W and whether the model is sharded (FSDP2: each rank
holds 1/W of every parameter) or replicated (each rank holds all of it, today's torchrun mode):

- **model**: P × the bytes of a stored parameter (/ W sharded); a ``copy`` in the compute dtype
  beside it when the forward/backward runs on one (``--precision bf16-weights`` on an fp32 model);
- **gradient**: the batch gradient of the trainable parameters, in the compute dtype, and its
  float32 cast when that dtype is bf16/fp16 (/ W sharded: after the reduce-scatter);
- **running sum**: the device's running group sum, in the summing dtype (float32 for bf16/fp16,
  else the parameters' own; / W sharded);
- **group sums**: m × trainable × the summing dtype (/ W sharded). Replicated runs keep them in
  host memory (pinned on CUDA), or spill them to a file and keep only a read buffer; sharded runs
  keep each rank's shard of them on its device;
- **preconditioner**: the fixed Adam/RMSprop factors 1/(√v̂ + ε), one per trainable parameter in the
  summing dtype (/ W sharded), when the preconditioned reading is made;
- **gathered blocks** (sharded only): FSDP all-gathers one block (a wrapped module, or the root's
  own parameters) at a time and prefetches the next; counted as two blocks' full parameters and
  two blocks' full gradients (the one computing and the one prefetched or being reduce-scattered)
  of the largest block.

Not included, and said so wherever a plan is printed: the activations of a batch (they depend on
the model's code, not on its parameter count), the data, the Python/torch runtime (~0.3–0.6 GiB of
host memory per process), allocator slack. The totals are therefore a lower bound: a run the plan
says cannot fit does not fit; one it says fits may still run out of memory in its activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: What every printed plan says is missing from its totals.
NOT_INCLUDED = "activations, data and the Python/torch runtime not included"
#: Bytes of a spilled run's read buffer for the Gram matrices (bscrit.engine.groups).
SPILL_READ_BYTES = 64 << 20
#: Where group sums can live.
SUMS_WHERE = ("device", "host", "spilled")


@dataclass(frozen=True)
class MemoryInputs:
    """What the plan is computed from (counts in parameters, sizes in bytes per parameter).

    Attributes:
        params: P, every parameter of the model (the trainable ones included).
        trainable: the parameters measured (gradient, sums, preconditioner).
        weight_bytes: bytes of a parameter as the model stores it (fp32: 4, bf16: 2; a mean
            over the parameters where dtypes are mixed).
        compute_bytes: bytes of a parameter as forward/backward run (None: ``weight_bytes``).
        copy: the forward/backward runs on a copy in ``compute_bytes`` beside the stored model.
        world_size: W, the number of ranks.
        sharded: each rank holds 1/W of the parameters (FSDP2); else a whole replica.
        groups: m, the most group sums the run holds.
        sums: where the group sums live: "device", "host" or "spilled" (a file).
        preconditioner: the preconditioned reading is made (Adam's exp_avg_sq → P/W factors).
        largest_block: parameters of the largest unit all-gathered at once (sharded only).
        on_cpu: the device is the host (CPU): every component is host memory.
        spill_buffer: host bytes of spilled sums (read buffer, CUDA staging); None: the default.
    """

    params: int
    trainable: int
    weight_bytes: float = 4
    compute_bytes: float | None = None
    copy: bool = False
    world_size: int = 1
    sharded: bool = False
    groups: int = 10
    sums: str = "host"
    preconditioner: bool = False
    largest_block: int = 0
    on_cpu: bool = True
    spill_buffer: int | None = None

    def __post_init__(self) -> None:
        if self.params < 0 or self.trainable < 0:
            raise ValueError(f"params {self.params}, trainable {self.trainable}: need 0 ≤ both")
        if self.world_size < 1 or self.groups < 1:
            raise ValueError(f"world_size {self.world_size}, groups {self.groups}: need ≥ 1")
        if self.sums not in SUMS_WHERE:
            raise ValueError(f"sums {self.sums!r}: expected one of {', '.join(SUMS_WHERE)}")
        if self.weight_bytes < 1 or (self.compute_bytes or 1) < 1 or self.largest_block < 0:
            raise ValueError("weight_bytes, compute_bytes: need ≥ 1; largest_block ≥ 0")

    @property
    def shards(self) -> int:
        """What a sharded component is divided by: W sharded, else 1."""
        return self.world_size if self.sharded else 1

    @property
    def compute(self) -> float:
        return self.compute_bytes or self.weight_bytes

    @property
    def sum_bytes(self) -> float:
        """The summing dtype's bytes: float32 for bf16/fp16 gradients, else their own."""
        return max(4, self.compute)


@dataclass(frozen=True)
class MemoryComponent:
    """One line of the plan: bytes per rank, where ("device" or "host"), and whether it is
    allocated by the measurement loop (``run``) or exists before it (the model, the factors)."""

    name: str
    bytes: int
    where: str
    run: bool = True

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "bytes": self.bytes, "where": self.where, "run": self.run}


@dataclass(frozen=True)
class MemoryPlan:
    """Per-rank memory of a measurement (:func:`plan_memory`): its components and totals."""

    inputs: MemoryInputs
    components: tuple[MemoryComponent, ...]
    seconds: float | None = None

    def _sum(self, where: str | None = None, run_only: bool = False) -> int:
        return sum(
            c.bytes
            for c in self.components
            if (where is None or c.where == where) and (c.run or not run_only)
        )

    @property
    def total(self) -> int:
        """Every component, device and host together (per rank)."""
        return self._sum()

    @property
    def device_bytes(self) -> int:
        """On the device (0 on CPU, where the device is the host)."""
        return self._sum("device")

    @property
    def host_bytes(self) -> int:
        return self._sum("host")

    def to_come(self, where: str) -> int:
        """Bytes of ``where`` the measurement loop still allocates (the model exists already)."""
        return self._sum(where, run_only=True)

    def component(self, name: str) -> int:
        """Bytes of the component called ``name`` (0 when the plan has none)."""
        return sum(c.bytes for c in self.components if c.name == name)

    def to_dict(self) -> dict[str, object]:
        i = self.inputs
        return {
            "world_size": i.world_size,
            "sharded": i.sharded,
            "params": i.params,
            "trainable": i.trainable,
            "groups": i.groups,
            "sums": i.sums,
            "components": [c.to_dict() for c in self.components],
            "device_bytes": self.device_bytes,
            "host_bytes": self.host_bytes,
            "total_bytes": self.total,
            "seconds": self.seconds,
            "not_included": NOT_INCLUDED,
        }


def plan_memory(
    inputs: MemoryInputs, batches: int | None = None, seconds_per_batch: float | None = None
) -> MemoryPlan:
    """The per-rank components of a measurement (module docstring), and its time when the
    seconds a rank takes for one of its batches are known (:func:`estimate_seconds`)."""
    i, s = inputs, inputs.shards
    dev = "host" if i.on_cpu else "device"
    part = lambda n, size: math.ceil(math.ceil(n / s) * size)  # noqa: E731 - one shard of n
    parts = [MemoryComponent("model", part(i.params, i.weight_bytes), dev, run=False)]
    if i.copy:
        parts.append(MemoryComponent("model copy", part(i.params, i.compute), dev, run=False))
    if i.preconditioner:
        parts.append(MemoryComponent("preconditioner", part(i.trainable, i.sum_bytes), dev, False))
    cast = i.sum_bytes if i.compute < 4 else 0  # bf16/fp16 gradients cast to float32 to be summed
    parts.append(MemoryComponent("gradient", part(i.trainable, i.compute + cast), dev))
    parts.append(MemoryComponent("running sum", part(i.trainable, i.sum_bytes), dev))
    sums = i.groups * part(i.trainable, i.sum_bytes)
    if i.sums == "spilled":
        staging = part(i.trainable, i.sum_bytes) * (not i.on_cpu)
        buffer = i.spill_buffer if i.spill_buffer is not None else SPILL_READ_BYTES + staging
        parts.append(
            MemoryComponent("group sums (spilled: read buffer)", min(sums, buffer), "host")
        )
    else:
        parts.append(
            MemoryComponent("group sums", sums, "device" if i.sums == "device" else "host")
        )
    if i.sharded and i.world_size > 1 and i.largest_block:
        parts.append(
            MemoryComponent("gathered blocks", math.ceil(4 * i.largest_block * i.compute), dev)
        )
    if i.on_cpu:
        parts = [MemoryComponent(c.name, c.bytes, "host", c.run) for c in parts]
    seconds = None
    if batches is not None and seconds_per_batch is not None:
        seconds = estimate_seconds(batches, seconds_per_batch, i.world_size, i.sharded)
    return MemoryPlan(i, tuple(parts), seconds)


def estimate_seconds(
    batches: int, seconds_per_batch: float, world_size: int, sharded: bool
) -> float:
    """Seconds of the hot loop: the batches one rank computes × its seconds per batch.

    Replicated, the k batches are dealt over the W ranks (⌈k/W⌉ each, whole batches of B);
    sharded, every rank takes part in every batch (B/W examples of it), so it runs k of them.
    ``seconds_per_batch`` is what one rank takes for one of *its* batches (measured on the first
    batches, or assumed).
    """
    if batches < 0 or seconds_per_batch < 0 or world_size < 1:
        raise ValueError("batches, seconds_per_batch: need ≥ 0; world_size ≥ 1")
    per_rank = batches if sharded else math.ceil(batches / world_size)
    return per_rank * seconds_per_batch


def format_bytes(n: float) -> str:
    """``"4.6 GiB"``, ``"420 MiB"``, ``"12 KiB"``."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}" if n < 100 * size else f"{n / size:,.0f} {unit}"
    return f"{n:.0f} B"


def describe(plan: MemoryPlan, where: str | None = None) -> str:
    """``"model 388 MiB + gradient 388 MiB + ... = 4.93 GiB"`` (of ``where``, else all)."""
    parts = [c for c in plan.components if where is None or c.where == where]
    total = sum(c.bytes for c in parts)
    return " + ".join(f"{c.name} {format_bytes(c.bytes)}" for c in parts) + (
        f" = {format_bytes(total)}"
    )


def fit_problem(
    plan: MemoryPlan, device_free: int | None, host_free: int | None, hint: str = ""
) -> str | None:
    """Why the plan cannot fit, or None: the bytes the loop still allocates on the device (or
    the host) above what is free there (None: unknown, not checked). The model and the factors
    exist already when this is asked, so they are not compared with free memory again.

    ``hint``: what the user can do (appended to the message)."""
    for where, free in (("device", device_free), ("host", host_free)):
        need = plan.to_come(where)
        if free is None or need <= free:
            continue
        parts = [c for c in plan.components if c.where == where and c.run]
        what = ", ".join(f"{c.name} {format_bytes(c.bytes)}" for c in parts)
        each = " per rank" * (plan.inputs.world_size > 1)
        return (
            f"memory: the measurement needs at least {format_bytes(need)} more {where} memory"
            f"{each} ({what}; {NOT_INCLUDED}) and {format_bytes(free)} is free"
            + (f": {hint}" if hint else "")
        )
    return None
